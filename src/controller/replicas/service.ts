// Replicas (docs/disks.md#replicas): a VM's disks copied to another host while the VM runs and
// kept warm with a delta every interval, so that a migration there has only the last delta to
// move. The controller drives the protocol, one step at a time per replica, and the agents each
// do one step when asked (agents/host/replicas.ts):
//   seed    destination replica.openStore (expect null: a new store) -> source replica.send
//           (from null: a full copy) -> destination replica.closeStore with the transfer (the
//           store records the checkpoint it holds)
//   delta   source replica.dropCheckpoints (keep the one the store holds: a step that broke off
//           leaves no stray one) -> destination openStore (expect it) -> source send (from it)
//           -> destination closeStore with the transfer -> source dropCheckpoints (keep the new one)
//   remove  destination replica.removeStore, source replica.dropCheckpoints (none kept)
// A step that fails closes the destination's export without recording anything, so the store
// still holds the last checkpoint and the source still has it: the next interval retries from it.
// The state machine is machine.ts; the records are durable (store.ts).
import type { ReplicaCheckpoint, ReplicaStoreHandoff, ReplicaTransfer } from '../../common/agent-protocol.ts';
import type { Clock, Ids } from '../../common/clock.ts';
import { VmtcError, toVmtcError } from '../../common/errors.ts';
import type { Logger } from '../../common/log.ts';
import { locateVm } from '../capacity.ts';
import { err } from '../errors.ts';
import type { AgentHub } from '../hub.ts';
import type { ControllerStore } from '../store.ts';
import { replicaNext, replicaStep, type ReplicaError, type ReplicaEvent, type ReplicaRow } from './machine.ts';
import { ReplicaStore } from './store.ts';
import type { ReplicaBandwidth, ReplicaBandwidthStatus } from './bandwidth.ts';
import { TERMINAL } from '../machine.ts';

/** The replica service of a controller, by its hub: how the migration effects find it
 *  (replicas/migration.ts) without a new field in the runner's effect context. */
const SERVICES = new WeakMap<object, ReplicaService>();
export const replicaServiceOf = (hub: object): ReplicaService | undefined => SERVICES.get(hub);

export const REPLICA_DEFAULTS = {
  intervalS: 60,
  /** Longest a seed or a delta may take (the agent's request timeout). */
  transferTimeoutMs: 3_600_000,
  /** Longest a GET waits for the source's count of bytes written since the last delta. */
  lagTimeoutMs: 2_000,
  /** Retry period of a removal a host did not answer (and of steps while a host is away). */
  retryMs: 5_000,
  /** Where a destination without a migrationAddress exports its store. */
  listenHost: '127.0.0.1',
} as const;

export interface ReplicaServiceOptions {
  store: ControllerStore;
  hub: AgentHub;
  clock: Clock;
  ids: Ids;
  logger: Logger;
  options?: Partial<typeof REPLICA_DEFAULTS>;
  /** With a broker: every periodic seed and delta runs under a background reservation
   *  (bandwidth.ts, docs/disks.md#replicas); without: unreserved, at the agent's own rate. */
  bandwidth?: ReplicaBandwidth;
}

const checkpointId = (replicaId: string, seq: number) => `${replicaId}-${seq}`;

function errorOf(e: unknown): ReplicaError {
  const v = e instanceof VmtcError ? e : toVmtcError(e);
  return { code: v.code, message: v.message, ...(v.details ? { details: v.details as Record<string, unknown> } : {}) };
}

/** What the source said as it stopped a follow's mirrors (ReplicaService.unfollowSource). */
export interface SourceUnfollowed {
  transfer?: ReplicaTransfer;
  mirrored: { bytes: number; following: boolean; error?: string; cut?: boolean; stoppedAtCut?: boolean };
}

export interface UnfollowOutcome {
  row: ReplicaRow | null;
  mirroredBytes: number;
  recorded: boolean;
  error?: string;
  cut?: boolean;
}

export class ReplicaService {
  readonly records: ReplicaStore;
  private readonly o: typeof REPLICA_DEFAULTS;
  private readonly log: Logger;
  /** One step at a time per replica: the chain of its steps, and its next timer. */
  private readonly running = new Map<string, Promise<void>>();
  private readonly timers = new Map<string, { cancel(): void }>();
  /** Replicas a migration is using: no periodic step until it lets go (release or an event). */
  private readonly held = new Set<string>();
  /** A store export opened ahead of the delta that will use it (openAhead). */
  private readonly ahead = new Map<string, { expect: ReplicaCheckpoint; store: ReplicaStoreHandoff }>();
  /** Live moves' follows under way (followStep): the catch-up delta, recorded at unfollowStep. */
  private readonly following = new Map<string, ReplicaTransfer>();
  private closed = false;

  constructor(private readonly d: ReplicaServiceOptions) {
    this.records = new ReplicaStore(d.store.db);
    this.o = { ...REPLICA_DEFAULTS, ...(d.options ?? {}) };
    this.log = d.logger;
    SERVICES.set(d.hub, this);
  }

  /** Feed an event of a migration's use of the replica (replicas/migration.ts). */
  event(replicaId: string, ev: ReplicaEvent): ReplicaRow | null {
    const r = this.records.get(replicaId);
    if (!r) throw err('VMTC_REPLICA_NOT_FOUND', { replicaId });
    const next = this.apply(r, ev);
    this.held.delete(replicaId);
    if (next?.state === 'removing') this.schedule(replicaId, 0);
    return next;
  }

  /** After a start: a seed the previous process did not see end failed (its store and
   *  checkpoints go on removal); warm replicas continue; removals are retried. */
  resume(): void {
    // Background reservations a step of the previous process left (killed mid-step).
    void this.d.bandwidth?.cleanup().catch((e: unknown) => this.log.warn({ code: toVmtcError(e).code }, 'replica reservations left by the previous run not cleaned up'));
    for (const r of this.records.all()) {
      // Lent to a live move (LENT): held while that migration runs; returned if it ended without
      // committing (a commit consumed it), so deltas go on.
      const lentTo = r.state === 'warm' && r.migrationId ? this.d.store.migration(r.migrationId) : undefined;
      if (lentTo && !TERMINAL.has(lentTo.state)) this.held.add(r.id);
      else if (lentTo && lentTo.state === 'completed') this.event(r.id, { type: 'CONSUMED', migrationId: lentTo.id });
      else if (r.state === 'warm' && r.migrationId) {
        this.apply(r, { type: 'RETURNED' });
        this.schedule(r.id, 0);
      } else if (r.state === 'seeding') this.apply(r, { type: 'SEED_FAILED', error: errorOf(err('VMTC_REPLICA_INTERRUPTED', { replicaId: r.id })) });
      else if (r.state !== 'failed') this.schedule(r.id, 0);
    }
  }

  /** A replica of `vmId` at `destinationHostId`; an existing one (not being removed) is returned
   *  as it is (created false). */
  create(vmId: string, destinationHostId: string, intervalS: number = this.o.intervalS): { created: boolean; row: ReplicaRow } {
    const hosts = this.d.store.hosts();
    const loc = locateVm(hosts.filter((h) => h.connected).map((h) => h.inventory), vmId) ?? locateVm(hosts.map((h) => h.inventory), vmId);
    if (!loc) throw err('VMTC_VM_NOT_FOUND', { vmId });
    const dest = hosts.find((h) => h.inventory.hostId === destinationHostId);
    if (!dest) throw err('VMTC_HOST_NOT_FOUND', { hostId: destinationHostId, field: 'destinationHostId' });
    if (loc.host.hostId === destinationHostId) throw err('VMTC_SAME_HOST', { hostId: destinationHostId });
    for (const [role, hostId] of [['source', loc.host.hostId], ['destination', destinationHostId]] as const) {
      if (!this.d.hub.isConnected(hostId)) throw err('VMTC_HOST_NOT_CONNECTED', { hostId, role });
    }
    const now = this.d.clock.now();
    const row: ReplicaRow = {
      id: this.d.ids.next('rep'), vmId, sourceHostId: loc.host.hostId, destinationHostId, intervalS, state: 'seeding', checkpoint: null,
      diskBytes: 0, seedBytes: 0, lastDeltaBytes: 0, deltas: 0, bytesSent: 0, lastSyncAt: null, lagBytes: 0, migrationId: null, error: null, createdAt: now, updatedAt: now,
    };
    const out = this.records.create(row);
    if (out.created) {
      this.log.info({ replicaId: row.id, vmId, sourceHostId: row.sourceHostId, destinationHostId, intervalS }, 'replica created: seeding');
      this.schedule(row.id, 0);
    }
    return out;
  }

  /** Start removing (idempotent); the record goes once both hosts did their part. */
  remove(vmId: string, replicaId: string): ReplicaRow {
    const r = this.records.get(replicaId);
    if (!r || r.vmId !== vmId) throw err('VMTC_REPLICA_NOT_FOUND', { vmId, replicaId });
    const next = this.apply(r, { type: 'REMOVE' })!;
    this.schedule(replicaId, 0);
    return next;
  }

  get(vmId: string, replicaId: string): ReplicaRow {
    const r = this.records.get(replicaId);
    if (!r || r.vmId !== vmId) throw err('VMTC_REPLICA_NOT_FOUND', { vmId, replicaId });
    return r;
  }

  /** The VM's replicas, with the lag of warm ones asked of the source now (the last known when it
   *  does not answer in time). */
  async list(vmId: string): Promise<ReplicaRow[]> {
    const rows = this.records.forVm(vmId);
    return Promise.all(rows.map((r) => this.withLag(r)));
  }

  async withLag(r: ReplicaRow): Promise<ReplicaRow> {
    if (r.state !== 'warm' || !r.checkpoint || !this.d.hub.isConnected(r.sourceHostId)) return r;
    try {
      const { bytes } = await this.d.hub.request(r.sourceHostId, 'replica.lag', { replicaId: r.id, vmId: r.vmId, from: r.checkpoint }, this.o.lagTimeoutMs);
      return { ...r, lagBytes: bytes };
    } catch {
      return r;
    }
  }

  /** The warm replica of `vmId` at `hostId`, if there is one. */
  warmAt(vmId: string, hostId: string): ReplicaRow | undefined {
    return this.records.forVm(vmId).find((r) => r.destinationHostId === hostId && r.state === 'warm' && r.checkpoint && !r.migrationId);
  }

  /** The replica lent to live migration `migrationId`, if any. */
  lentTo(vmId: string, migrationId: string): ReplicaRow | undefined {
    return this.records.forVm(vmId).find((r) => r.migrationId === migrationId && r.state !== 'removing');
  }

  /** A live move boots from the replica's store: recorded (LENT), no periodic step until it is
   *  given back or consumed. Call with the replica held. */
  lend(replicaId: string, migrationId: string): ReplicaRow {
    const r = this.records.get(replicaId);
    if (!r) throw err('VMTC_REPLICA_NOT_FOUND', { replicaId });
    this.held.add(replicaId);
    return this.apply(r, { type: 'LENT', migrationId })!;
  }

  /** The live move that borrowed it ended without committing: deltas go on (a failed replica
   *  stays failed). */
  giveBack(replicaId: string): void {
    const r = this.records.get(replicaId);
    // A store opened ahead for a last delta that never ran: closed (the next step opens its own).
    if (this.ahead.delete(replicaId) && r && this.d.hub.isConnected(r.destinationHostId)) {
      void this.d.hub.request(r.destinationHostId, 'replica.closeStore', { replicaId }).catch((e: unknown) => this.log.warn({ replicaId, code: toVmtcError(e).code }, 'closing a store opened ahead failed'));
    }
    // A follow the move did not end (it failed during the pre-copy): the source's mirrors stop,
    // nothing is recorded; before any next step (they run one at a time).
    if (r && this.following.has(replicaId)) {
      void this.exclusive(replicaId, () => this.unfollowStep(r, { record: false }))
        .then((o) => this.log.info({ replicaId, mirroredBytes: o.mirroredBytes, ...(o.error ? { error: o.error } : {}) }, 'the move gave the replica back: its mirrors stopped'))
        .catch((e: unknown) => this.log.warn({ replicaId, code: toVmtcError(e).code }, 'stopping the mirrors of a replica given back failed: its next delta stops them'));
    }
    if (r?.state === 'warm' && r.migrationId) this.apply(r, { type: 'RETURNED' });
    this.release(replicaId);
  }

  /** Run `fn` as this replica's next step once the one running ends (steps never overlap: a
   *  migration's last delta waits for a periodic one). */
  exclusive<T>(replicaId: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.running.get(replicaId) ?? Promise.resolve();
    const p = prev.then(fn, fn);
    const tail = p.then(() => undefined, () => undefined);
    this.running.set(replicaId, tail);
    void tail.then(() => { if (this.running.get(replicaId) === tail) this.running.delete(replicaId); });
    return p;
  }

  close(): void {
    this.closed = true;
    if (SERVICES.get(this.d.hub) === this) SERVICES.delete(this.d.hub);
    for (const t of this.timers.values()) t.cancel();
    this.timers.clear();
  }

  // ---- the steps ------------------------------------------------------------------------------

  private apply(r: ReplicaRow, ev: ReplicaEvent): ReplicaRow | null {
    const next = replicaNext(r, ev, this.d.clock.now());
    if (next === null) this.records.delete(r.id);
    else this.records.save(next);
    const lvl = ev.type.endsWith('FAILED') ? 'warn' : 'info';
    this.log[lvl]({ replicaId: r.id, vmId: r.vmId, from: r.state, to: next?.state ?? 'removed', event: ev.type, ...('error' in ev ? { code: ev.error.code } : {}) }, 'replica transition');
    return next;
  }

  /** A migration uses the replica: its periodic steps stop until release() or event(). */
  hold(replicaId: string): void {
    this.held.add(replicaId);
    this.timers.get(replicaId)?.cancel();
    this.timers.delete(replicaId);
  }

  /** The migration let go of the replica without consuming it: deltas go on. */
  release(replicaId: string): void {
    if (!this.held.delete(replicaId)) return;
    const r = this.records.get(replicaId);
    if (r && replicaStep(r.state) !== 'none') this.schedule(replicaId, r.state === 'warm' ? r.intervalS * 1000 : 0);
  }

  private schedule(replicaId: string, ms: number): void {
    if (this.closed || this.held.has(replicaId)) return;
    this.timers.get(replicaId)?.cancel();
    this.timers.set(replicaId, this.d.clock.setTimeout(() => {
      this.timers.delete(replicaId);
      void this.exclusive(replicaId, () => this.tick(replicaId)).catch((e: unknown) => this.log.error({ replicaId, err: e }, 'replica step failed unexpectedly'));
    }, ms));
  }

  private async tick(replicaId: string): Promise<void> {
    const r = this.records.get(replicaId);
    if (!r || this.closed) return;
    const step = replicaStep(r.state);
    if (step === 'none') return;
    if (step === 'remove') {
      const next = await this.removeStep(r);
      if (next) this.schedule(replicaId, this.o.retryMs);
      return;
    }
    if (this.d.bandwidth) {
      // Under a background reservation; none to be had (refused, or no answer): the step waits
      // and is tried again (docs/disks.md#replicas).
      const out = await this.d.bandwidth.around(r, (rateBytesPerS) => this.transferStep(r, { rateBytesPerS }));
      if (!out.ran) return this.schedule(replicaId, r.state === 'warm' ? r.intervalS * 1000 : this.o.retryMs);
      if (out.value && replicaStep(out.value.state) === 'delta') this.schedule(replicaId, out.value.intervalS * 1000);
      return;
    }
    const next = await this.transferStep(r);
    if (next && replicaStep(next.state) === 'delta') this.schedule(replicaId, next.intervalS * 1000);
  }

  /** The background reservation of the replica's current step (or why it waits), if any. */
  bandwidthOf(replicaId: string): ReplicaBandwidthStatus | undefined {
    return this.d.bandwidth?.of(replicaId);
  }

  /** Open the destination's store now for the next delta from the checkpoint it holds, so that
   *  the delta does not wait for it: a live move opens it during the pre-copy for the last delta,
   *  which runs in the pause (docs/disks.md#replicas). The next transferStep from that checkpoint
   *  uses it; any other step's openStore replaces it, removeStore closes it. Call under
   *  exclusive(). */
  async openAhead(r: ReplicaRow): Promise<ReplicaStoreHandoff | undefined> {
    if (r.state !== 'warm' || !r.checkpoint) return undefined;
    const vm = locateVm([this.d.hub.inventory(r.sourceHostId)].filter((x) => !!x), r.vmId)?.vm;
    if (!vm) return undefined;
    const listenHost = this.d.hub.inventory(r.destinationHostId)?.migrationAddress ?? this.o.listenHost;
    const { store } = await this.d.hub.request(r.destinationHostId, 'replica.openStore', { replicaId: r.id, spec: vm.spec, listenHost, expect: r.checkpoint });
    this.ahead.set(r.id, { expect: r.checkpoint, store });
    return store;
  }

  /** One seed or delta (the protocol above). Also what a migration runs for its last delta:
   *  `keepFrom` leaves the checkpoint the delta started from at the source (its bitmap names
   *  what the delta carried, which the digests at a live move's pause read,
   *  docs/disks.md#incremental-digests); the next step's first dropCheckpoints removes it. */
  async transferStep(r: ReplicaRow, opts: { keepFrom?: boolean; rateBytesPerS?: number } = {}): Promise<ReplicaRow | null> {
    const seed = r.state === 'seeding';
    const from: ReplicaCheckpoint | null = seed ? null : r.checkpoint;
    const seq = from ? from.seq + 1 : 0;
    const ask = { replicaId: r.id };
    let transfer: ReplicaTransfer | undefined;
    try {
      const vm = locateVm([this.d.hub.inventory(r.sourceHostId)].filter((x) => !!x), r.vmId)?.vm;
      if (!vm) throw err('VMTC_VM_NOT_FOUND', { vmId: r.vmId, hostId: r.sourceHostId, reason: 'the VM is no longer at the replica\'s source' });
      const ahead = this.ahead.get(r.id);
      this.ahead.delete(r.id);
      let store: ReplicaStoreHandoff;
      if (ahead && from && ahead.expect.id === from.id && ahead.expect.seq === from.seq) store = ahead.store;
      else {
        if (from) await this.d.hub.request(r.sourceHostId, 'replica.dropCheckpoints', { ...ask, vmId: r.vmId, keep: from });
        const listenHost = this.d.hub.inventory(r.destinationHostId)?.migrationAddress ?? this.o.listenHost;
        store = (await this.d.hub.request(r.destinationHostId, 'replica.openStore', { ...ask, spec: vm.spec, listenHost, expect: from })).store;
      }
      transfer = await this.d.hub.request(r.sourceHostId, 'replica.send', { ...ask, vmId: r.vmId, store, from, checkpointId: checkpointId(r.id, seq), ...(opts.rateBytesPerS !== undefined ? { rateBytesPerS: opts.rateBytesPerS } : {}) }, this.o.transferTimeoutMs);
      await this.d.hub.request(r.destinationHostId, 'replica.closeStore', { ...ask, transfer });
      if (from && !opts.keepFrom) await this.d.hub.request(r.sourceHostId, 'replica.dropCheckpoints', { ...ask, vmId: r.vmId, keep: transfer.checkpoint }).catch(() => undefined);
    } catch (e) {
      const error = errorOf(e);
      // Nothing is recorded at the destination: its store still holds `from`.
      if (this.d.hub.isConnected(r.destinationHostId)) await this.d.hub.request(r.destinationHostId, 'replica.closeStore', ask).catch(() => undefined);
      // A seed that failed leaves the source without checkpoints of this replica.
      if (seed && this.d.hub.isConnected(r.sourceHostId)) await this.d.hub.request(r.sourceHostId, 'replica.dropCheckpoints', { ...ask, vmId: r.vmId }).catch(() => undefined);
      const now = this.records.get(r.id);
      if (!now || now.state === 'removing') return now ?? null;
      return this.apply(now, seed ? { type: 'SEED_FAILED', error } : { type: 'DELTA_FAILED', error });
    }
    const now = this.records.get(r.id);
    if (!now || now.state === 'removing') return now ?? null;
    return this.apply(now, seed ? { type: 'SEEDED', transfer } : { type: 'DELTA_SENT', transfer });
  }

  /** A live move's follow (docs/disks.md#following), over the export openAhead opened for the
   *  delta from the checkpoint the store holds: the source mirrors the VM's writes into the store
   *  and sends that delta (the catch-up). The export stays open and nothing is recorded until
   *  unfollowStep. Throws (the export closed, the store still holding its checkpoint: what the
   *  mirror wrote is in the source's bitmaps from it, so the next delta sends it again). Call
   *  under exclusive(). */
  async followStep(r: ReplicaRow): Promise<ReplicaTransfer> {
    const from = r.checkpoint;
    const ahead = this.ahead.get(r.id);
    this.ahead.delete(r.id);
    const ask = { replicaId: r.id };
    try {
      if (r.state !== 'warm' || !from || !ahead || ahead.expect.id !== from.id || ahead.expect.seq !== from.seq) throw err('VMTC_REPLICA_STATE', { replicaId: r.id, state: r.state, reason: 'no store export opened ahead for the delta from its checkpoint' });
      const transfer = await this.d.hub.request(r.sourceHostId, 'replica.follow', { ...ask, vmId: r.vmId, store: ahead.store, from, checkpointId: checkpointId(r.id, from.seq + 1) }, this.o.transferTimeoutMs);
      this.following.set(r.id, transfer);
      return transfer;
    } catch (e) {
      // A source that cannot follow did nothing: the export serves the last delta as planned.
      if (ahead && toVmtcError(e).code === 'VMTC_HOST_DISK_UNSUPPORTED') this.ahead.set(r.id, ahead);
      else if (this.d.hub.isConnected(r.destinationHostId)) await this.d.hub.request(r.destinationHostId, 'replica.closeStore', ask).catch(() => undefined);
      throw e;
    }
  }

  /** End a follow (the VM paused, or the move given up): the source stops its mirrors, the
   *  destination records the catch-up delta's checkpoint (the mirrors carried everything since)
   *  unless a mirror failed or `record` is false, and closes the export. Returns the record and
   *  the mirrors' bytes; `recorded` false when the store still holds the older checkpoint (the
   *  next delta, from it, sends what the mirrors wrote again). Call under exclusive(). */
  async unfollowStep(r: ReplicaRow, opts: { record: boolean }): Promise<UnfollowOutcome> {
    const s = await this.unfollowSource(r);
    return this.closeFollowedStore(r, s, opts);
  }

  /** The first half of unfollowStep: the source stops its mirrors. Call under exclusive(). */
  async unfollowSource(r: ReplicaRow): Promise<SourceUnfollowed> {
    const transfer = this.following.get(r.id);
    this.following.delete(r.id);
    let mirrored: SourceUnfollowed['mirrored'] = { bytes: 0, following: false };
    try {
      mirrored = await this.d.hub.request(r.sourceHostId, 'replica.unfollow', { replicaId: r.id, vmId: r.vmId });
    } catch (e) {
      mirrored.error = errorOf(e).message;
    }
    return { mirrored, ...(transfer ? { transfer } : {}) };
  }

  /** The second half: the destination closes the export (once its clients left, after mirrors
   *  cut at the VM's stop) and records the catch-up's checkpoint when it may. Call under
   *  exclusive(). */
  async closeFollowedStore(r: ReplicaRow, s: SourceUnfollowed, opts: { record: boolean; activateVmId?: string }): Promise<UnfollowOutcome> {
    const { transfer, mirrored } = s;
    const ask = { replicaId: r.id, ...(opts.activateVmId ? { activateVmId: opts.activateVmId } : {}) };
    const record = opts.record && !!transfer && !mirrored.error;
    // Mirrors cut at the VM's stop have writes on their way: the export closes once they are in.
    const wait = mirrored.cut ? { waitClients: true } : {};
    try {
      if (record) await this.d.hub.request(r.destinationHostId, 'replica.closeStore', { ...ask, transfer, ...wait });
      else await this.d.hub.request(r.destinationHostId, 'replica.closeStore', { ...ask, ...wait });
    } catch (e) {
      if (record) await this.d.hub.request(r.destinationHostId, 'replica.closeStore', { replicaId: r.id }).catch(() => undefined);
      const now = this.records.get(r.id);
      return { row: now ? this.apply(now, { type: 'DELTA_FAILED', error: errorOf(e) }) : null, mirroredBytes: mirrored.bytes, recorded: false, error: errorOf(e).message };
    }
    const now = this.records.get(r.id);
    if (!record || !transfer || !now || now.state !== 'warm') return { row: now ?? null, mirroredBytes: mirrored.bytes, recorded: false, ...(mirrored.error ? { error: mirrored.error } : {}) };
    return { row: this.apply(now, { type: 'DELTA_SENT', transfer: { ...transfer, bytes: transfer.bytes + mirrored.bytes } }), mirroredBytes: mirrored.bytes, recorded: true, ...(mirrored.cut ? { cut: true } : {}) };
  }

  /** Whether a live move's follow of the replica is under way (followStep, not yet ended). */
  isFollowed(replicaId: string): boolean {
    return this.following.has(replicaId);
  }

  private async removeStep(r: ReplicaRow): Promise<ReplicaRow | null> {
    // A store a migration booted from: the source's checkpoints go once that migration ended (a
    // rollback starts the source VM again, which must not find its image held for them).
    const m = r.migrationId ? this.d.store.migration(r.migrationId) : undefined;
    if (m && !TERMINAL.has(m.state)) return r;
    // A committed live move runs its VM from the store's images: only the store's records go.
    const keepImages = !!m && m.state === 'completed' && m.ctx.path === 'live';
    try {
      await this.d.hub.request(r.destinationHostId, 'replica.removeStore', { replicaId: r.id, ...(keepImages ? { keepImages } : {}) });
      // A VM no longer at the source (it moved, and its source copy went) has no checkpoints left.
      await this.d.hub.request(r.sourceHostId, 'replica.dropCheckpoints', { replicaId: r.id, vmId: r.vmId }).catch((e: unknown) => {
        if (!(e instanceof VmtcError && /_VM_NOT_FOUND$/.test(e.code))) throw e;
      });
    } catch (e) {
      return this.apply(r, { type: 'REMOVE_FAILED', error: errorOf(e) });
    }
    return this.apply(r, { type: 'REMOVED' });
  }
}
