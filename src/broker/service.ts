// The reservation runner: performs what the NSI state machines (nsi.ts) decide. Every transition
// goes through apply(), which checks it against the table, runs its bookkeeping effects,
// persists the reservation and the transition row in one SQLite transaction, logs it and
// publishes it on the event feed. Network elements are touched only through the driver, and
// peers only through PeerLinks, always after the token gate has accepted the request.
import { EventEmitter } from 'node:events';
import type { Clock, Ids } from '../common/clock.ts';
import { VmtcError, toVmtcError } from '../common/errors.ts';
import type { Logger } from '../common/log.ts';
import { Calendar } from './calendar.ts';
import { ReservationTimers } from './timers.ts';
import type { NetworkElementDriver } from './driver.ts';
import { brokerError } from './errors.ts';
import { next, transition, type Effect, type Machine, type MachineTypes } from './nsi.ts';
import { computePath } from './path.ts';
import type { PeerLinks } from './peer.ts';
import type { BrokerStore, Owner, Reservation, TransitionRow } from './store.ts';
import type { Topology } from './topology.ts';
import { checkReserve, type AdmissionPlan, type ReserveAuth, type ReserveInput } from './admission.ts';

export type { ReserveAuth, ReserveInput } from './admission.ts';
export { view } from './view.ts';

export interface FaultInjection {
  /** Test hook: every commit in this broker fails (to prove all-or-nothing commit). */
  failCommit?: boolean;
}

export interface BrokerServiceOptions {
  domain: string;
  topology: Topology;
  store: BrokerStore;
  driver: NetworkElementDriver;
  peers: PeerLinks;
  clock: Clock;
  ids: Ids;
  logger: Logger;
  holdTimeoutMs: number;
  faults?: FaultInjection;
}

export type BrokerEvent =
  | { type: 'stateChange'; reservationId: string; machine: Machine; from: string; to: string; event: string; at: number }
  | { type: 'dataPlaneStateChange'; reservationId: string; active: boolean; version: number; at: number; details?: Record<string, unknown> }
  | { type: 'error'; reservationId: string; code: string; message: string; at: number; details?: Record<string, unknown> };

const FIELD: Record<Machine, 'reservationState' | 'provisionState' | 'lifecycleState'> = {
  reservation: 'reservationState',
  provision: 'provisionState',
  lifecycle: 'lifecycleState',
};

export class BrokerService {
  readonly events = new EventEmitter();
  readonly calendar: Calendar;
  private readonly live = new Map<string, Reservation>();
  private readonly timers: ReservationTimers;
  private readonly log: Logger;
  private closed = false;

  constructor(private readonly o: BrokerServiceOptions) {
    this.calendar = new Calendar((l) => o.topology.links.get(l)?.capacityMbps ?? 0);
    this.timers = new ReservationTimers(o.clock);
    this.log = o.logger.child({ mod: 'reservations', domain: o.domain });
    this.events.setMaxListeners(1000);
  }

  private nowS(): number {
    return Math.floor(this.o.clock.now() / 1000);
  }

  // ---------------------------------------------------------------- the runner

  /** One transition: table check, effects, persist, log, publish. */
  private apply<M extends Machine>(r: Reservation, machine: M, event: MachineTypes[M]['event'], ctx: { error?: VmtcError } = {}): void {
    const field = FIELD[machine];
    const from = r[field] as MachineTypes[M]['state'];
    const rule = transition(machine, from, event, { reservationId: r.id, reservationState: r.reservationState, provisionState: r.provisionState, lifecycleState: r.lifecycleState });
    (r as unknown as Record<string, string>)[field] = rule.to;
    const at = this.o.clock.now();
    r.updatedAt = at;
    for (const eff of rule.effects ?? []) this.effect(r, eff, ctx);
    const row: Omit<TransitionRow, 'seq'> = { reservationId: r.id, machine, from, to: rule.to, event, at };
    if (ctx.error) row.details = { code: ctx.error.code, message: ctx.error.message };
    this.o.store.save(r, [row]);
    this.log.info({ reservationId: r.id, migrationId: r.migrationId, machine, from, to: rule.to, event }, 'nsi transition');
    this.publish({ type: 'stateChange', reservationId: r.id, machine, from, to: rule.to, event, at });
    if (r.lifecycleState === 'Terminated') {
      this.timers.clear(r.id);
      this.live.delete(r.id);
    }
  }

  private effect(r: Reservation, eff: Effect, ctx: { error?: VmtcError }): void {
    switch (eff) {
      case 'armHoldTimer':
        r.heldAt = this.o.clock.now();
        this.armHold(r, this.o.holdTimeoutMs);
        break;
      case 'cancelHoldTimer':
        this.timers.cancel(r.id, 'hold');
        break;
      case 'unbook':
        this.calendar.unbook(r.id);
        r.booked = false;
        break;
      case 'markCommitted':
        r.committed = true;
        break;
      case 'armEndTimer':
        this.armEnd(r);
        break;
      case 'cancelTimers':
        this.timers.clear(r.id);
        break;
      case 'recordDataPlaneError':
        if (ctx.error) {
          r.dataPlane.error = { code: ctx.error.code, message: ctx.error.message, at: this.o.clock.now() };
          if (ctx.error.details) r.dataPlane.error.details = ctx.error.details;
        }
        break;
    }
  }

  private publish(e: BrokerEvent): void {
    this.events.emit('event', e);
  }

  private setDataPlane(r: Reservation, active: boolean, details?: Record<string, unknown>): void {
    const before = r.dataPlane.active;
    r.dataPlane = { ...r.dataPlane, active, version: r.dataPlane.version + 1 };
    if (active) {
      delete r.dataPlane.error;
      if (details) r.dataPlane.details = details;
    } else delete r.dataPlane.details;
    const at = this.o.clock.now();
    r.updatedAt = at;
    this.o.store.save(r, [{ reservationId: r.id, machine: 'dataPlane', from: before ? 'active' : 'inactive', to: active ? 'active' : 'inactive', event: active ? 'activated' : 'deactivated', at }]);
    const evt: BrokerEvent = { type: 'dataPlaneStateChange', reservationId: r.id, active, version: r.dataPlane.version, at };
    if (details) evt.details = details;
    this.publish(evt);
  }

  private publishError(r: Reservation, e: VmtcError): void {
    const evt: BrokerEvent = { type: 'error', reservationId: r.id, code: e.code, message: e.message, at: this.o.clock.now() };
    if (e.details) evt.details = e.details;
    this.log.warn({ reservationId: r.id, migrationId: r.migrationId, code: e.code, details: e.details }, 'reservation error');
    this.publish(evt);
  }

  // ---------------------------------------------------------------- timers

  private armHold(r: Reservation, ms: number): void {
    this.timers.arm(r.id, 'hold', ms, () => this.onHoldTimeout(r.id));
  }

  private armEnd(r: Reservation): void {
    this.timers.arm(r.id, 'end', r.end * 1000 - this.o.clock.now(), () => void this.onEndTime(r.id));
  }

  /** GFD.212: a held reservation that is not committed in time times out and frees its capacity. */
  private onHoldTimeout(id: string): void {
    const r = this.live.get(id);
    if (this.closed || !r || r.reservationState !== 'ReserveHeld') return;
    this.apply(r, 'reservation', 'timeout');
    if (r.downstream) void this.bestEffortPeer(r, 'abort');
  }

  /** End of the window: life cycle PassedEndTime, calendar freed, data plane down. */
  private async onEndTime(id: string): Promise<void> {
    const r = this.live.get(id);
    if (this.closed || !r || r.lifecycleState !== 'Created') return;
    this.apply(r, 'lifecycle', 'endTime');
    await this.releaseDataPlane(r);
  }

  // ---------------------------------------------------------------- queries

  get(id: string): Reservation | undefined {
    return this.live.get(id) ?? this.o.store.get(id);
  }

  mustGet(id: string): Reservation {
    const r = this.get(id);
    if (!r) throw brokerError('VMTC_RESERVATION_NOT_FOUND', { reservationId: id });
    return r;
  }

  list(): Reservation[] {
    return this.o.store.list().map((r) => this.live.get(r.id) ?? r);
  }

  /** The owner's reservation made with this idempotency key, in whatever state it is. */
  byKey(owner: Owner, key: string): Reservation | undefined {
    const r = this.o.store.byKey(owner, key);
    return r ? this.live.get(r.id) ?? r : undefined;
  }

  transitions(id: string): TransitionRow[] {
    return this.o.store.transitions(id);
  }

  /** Operations on a terminated (or terminating) reservation are illegal, naming the state. */
  private mustBeLive(id: string, event: string): Reservation {
    const r = this.mustGet(id);
    const live = this.live.get(id);
    if (!live || r.lifecycleState !== 'Created') {
      throw brokerError('VMTC_ILLEGAL_TRANSITION', { machine: 'lifecycle', state: r.lifecycleState, event, reservationId: id }, { message: `${event} is not allowed: the lifecycle state is ${r.lifecycleState}` });
    }
    return live;
  }

  /** Checks that need no state (admission.ts); throws before anything is created. */
  validate(input: ReserveInput, auth: Pick<ReserveAuth, 'domains' | 'upstream'>): AdmissionPlan {
    return checkReserve({ topology: this.o.topology, domain: this.o.domain, peers: this.o.peers, nowS: this.nowS() }, input, auth);
  }

  // ---------------------------------------------------------------- NSI operations

  /**
   * NSI reserve: ReserveStart -> ReserveChecking -> ReserveHeld (or ReserveFailed). Checking is
   * local path computation and calendar admission (synchronous, so concurrent requests cannot
   * overbook) followed by the hold of the next domain's segment, which recursively holds the rest.
   */
  async reserve(input: ReserveInput, auth: ReserveAuth): Promise<Reservation> {
    const plan = this.validate(input, auth);
    const now = this.o.clock.now();
    const r: Reservation = {
      id: this.o.ids.next('rsv'),
      src: input.src,
      dst: input.dst,
      bandwidthMbps: input.bandwidthMbps,
      start: input.start,
      end: input.end,
      path: { nodes: [], links: [], cost: 0, alternative: false },
      reservationState: 'ReserveStart',
      provisionState: 'Released',
      lifecycleState: 'Created',
      committed: false,
      booked: false,
      owner: auth.owner,
      tokenJti: auth.jti,
      dataPlane: { active: false, version: 0 },
      createdAt: now,
      updatedAt: now,
    };
    if (input.migrationId) r.migrationId = input.migrationId;
    if (input.idempotencyKey !== undefined) {
      // The route answers a reused key with its reservation before it gets here; this holds the
      // rule for any other caller (one reservation per owner and key).
      const used = this.o.store.byKey(auth.owner, input.idempotencyKey);
      if (used) throw brokerError('VMTC_IDEMPOTENCY_KEY_REUSED', { idempotencyKey: input.idempotencyKey, reservationId: used.id });
      r.idempotencyKey = input.idempotencyKey;
    }
    if (auth.upstream) r.upstream = auth.upstream;
    // The jti is consumed in the same SQLite transaction that creates the reservation: of two
    // concurrent requests with one token, exactly one gets past this line.
    if (!this.o.store.create(r, { jti: auth.jti, iss: auth.iss, exp: auth.exp })) throw brokerError('VMTC_TOKEN_REPLAYED', { jti: auth.jti });
    this.live.set(r.id, r);
    this.apply(r, 'reservation', 'reserve');

    const found = computePath(this.o.topology, input.src, plan.targets, (l) => this.calendar.free(l, input.start, input.end) + 1e-9 >= input.bandwidthMbps);
    if (!found.path || !this.calendar.book({ id: r.id, links: found.path.links, start: input.start, end: input.end, mbps: input.bandwidthMbps })) {
      const e = brokerError('VMTC_NO_PATH', { reservationId: r.id, src: input.src, dst: input.dst, bandwidthMbps: input.bandwidthMbps, window: { start: input.start, end: input.end }, domain: this.o.domain });
      this.failReserve(r, e);
      throw e;
    }
    r.booked = true;
    r.path = { ...found.path, alternative: found.alternative };
    this.o.store.save(r);

    if (plan.nextDomain) {
      const egress = r.path.nodes[r.path.nodes.length - 1]!;
      try {
        const body: Record<string, unknown> = {
          src: plan.stpPeer!.get(egress)!,
          dst: input.dst,
          bandwidthMbps: input.bandwidthMbps,
          window: { start: input.start, end: input.end },
          upstream: { domain: this.o.domain, reservationId: r.id },
        };
        if (input.migrationId) body.migrationId = input.migrationId;
        const seg = await this.o.peers.call<{ id: string }>(plan.nextDomain, 'POST', '/v1/reservations', body, auth.token);
        r.downstream = { domain: plan.nextDomain, reservationId: seg.id };
        this.o.store.save(r);
      } catch (err) {
        const cause = toVmtcError(err);
        const e = brokerError('VMTC_PEER_SEGMENT_FAILED', { reservationId: r.id, domain: (cause.details?.domain as string | undefined) ?? plan.nextDomain, peerCode: cause.code, peerMessage: cause.message, peerDetails: cause.details }, { cause: err });
        this.failReserve(r, e);
        throw e;
      }
    }
    if (this.closed) throw brokerError('VMTC_SHUTTING_DOWN');
    this.apply(r, 'reservation', 'reserveConfirmed');
    return r;
  }

  /** ReserveChecking -> ReserveFailed; a never-committed reservation then ends (Terminated). */
  private failReserve(r: Reservation, e: VmtcError): void {
    this.apply(r, 'reservation', 'reserveFailed', { error: e });
    this.publishError(r, e);
    this.endUncommitted(r);
  }

  private endUncommitted(r: Reservation): void {
    if (r.committed || r.lifecycleState !== 'Created') return;
    this.apply(r, 'lifecycle', 'terminate');
    this.apply(r, 'lifecycle', 'terminateConfirmed');
  }

  /**
   * NSI reserveCommit: ReserveHeld -> ReserveCommitting -> ReserveStart (committed). The next
   * domain commits first (recursively, to the last domain); only when all of them have committed
   * does this one. A failure anywhere makes every domain give its hold back (all or none).
   */
  async commit(id: string): Promise<Reservation> {
    const r = this.mustBeLive(id, 'commit');
    this.apply(r, 'reservation', 'commit');
    try {
      if (this.o.faults?.failCommit) throw brokerError('VMTC_COMMIT_FAILED', { domain: this.o.domain, reason: 'injected fault' });
      if (r.downstream) await this.o.peers.call(r.downstream.domain, 'POST', `/v1/reservations/${encodeURIComponent(r.downstream.reservationId)}/commit`);
    } catch (err) {
      const cause = toVmtcError(err);
      const e = cause.code === 'VMTC_COMMIT_FAILED' ? cause : brokerError('VMTC_COMMIT_FAILED', { reservationId: r.id, domain: (cause.details?.domain as string | undefined) ?? r.downstream?.domain, peerCode: cause.code, peerMessage: cause.message }, { cause: err });
      this.apply(r, 'reservation', 'commitFailed', { error: e });
      this.publishError(r, e);
      // The next domain cleans up after its own failure; if it could not even answer, tell it to
      // let go of whatever it holds.
      if (r.downstream && cause.details?.domain === undefined) void this.bestEffortPeer(r, 'terminate');
      this.endUncommitted(r);
      throw new VmtcError(e.code, e.status, e.message, { ...(e.details ?? {}), reservationId: r.id }, err);
    }
    this.apply(r, 'reservation', 'commitConfirmed');
    return r;
  }

  /** NSI reserveAbort: ReserveHeld / ReserveFailed / ReserveTimeout -> ReserveAborting -> ReserveStart. */
  async abort(id: string): Promise<Reservation> {
    const r = this.mustBeLive(id, 'abort');
    this.apply(r, 'reservation', 'abort');
    if (r.downstream) await this.bestEffortPeer(r, 'abort');
    this.apply(r, 'reservation', 'abortConfirmed');
    this.endUncommitted(r);
    return r;
  }

  /**
   * NSI provision: Released -> Provisioning -> Provisioned. The data plane comes up now if the
   * window has started, otherwise at its start. The next domain is provisioned too; if it fails,
   * this domain's data plane is taken down again and the provision state returns to Released.
   */
  async provision(id: string): Promise<Reservation> {
    const r = this.mustBeLive(id, 'provision');
    if (!r.committed || r.reservationState !== 'ReserveStart') {
      throw brokerError('VMTC_ILLEGAL_TRANSITION', { machine: 'provision', state: r.provisionState, event: 'provision', reservationState: r.reservationState, committed: r.committed, reservationId: r.id, reason: 'the reservation is not committed' }, { message: `provision is not allowed: the reservation state is ${r.reservationState} and it has not been committed` });
    }
    this.apply(r, 'provision', 'provision');
    try {
      if (this.nowS() >= r.start) await this.activate(r);
      if (r.downstream) await this.o.peers.call(r.downstream.domain, 'POST', `/v1/reservations/${encodeURIComponent(r.downstream.reservationId)}/provision`);
      // Terminated (or ended) while we waited for the driver: do not leave a circuit up.
      if (r.lifecycleState !== 'Created') throw brokerError('VMTC_PROVISION_FAILED', { reason: `the reservation ended (${r.lifecycleState}) while provisioning` });
    } catch (err) {
      const cause = toVmtcError(err);
      const e = cause.code === 'VMTC_PROVISION_FAILED' ? cause : brokerError('VMTC_PROVISION_FAILED', { reservationId: r.id, domain: (cause.details?.domain as string | undefined) ?? this.o.domain, peerCode: cause.code, reason: cause.message }, { cause: err });
      await this.deactivate(r);
      if (r.provisionState === 'Provisioning') this.apply(r, 'provision', 'provisionFailed', { error: e });
      this.publishError(r, e);
      throw new VmtcError(e.code, e.status, e.message, { ...(e.details ?? {}), reservationId: r.id, provisionState: r.provisionState }, err);
    }
    this.apply(r, 'provision', 'provisionConfirmed');
    if (!r.dataPlane.active) this.armActivation(r);
    return r;
  }

  private armActivation(r: Reservation): void {
    this.timers.arm(r.id, 'activate', r.start * 1000 - this.o.clock.now(), () => void this.onActivate(r.id));
  }

  /** Start of the window of a provisioned advance reservation: bring the data plane up. */
  private async onActivate(id: string): Promise<void> {
    const r = this.live.get(id);
    if (this.closed || !r || r.provisionState !== 'Provisioned' || r.dataPlane.active || r.lifecycleState !== 'Created') return;
    try {
      await this.activate(r);
    } catch (err) {
      const e = brokerError('VMTC_PROVISION_FAILED', { reservationId: r.id, domain: this.o.domain, reason: toVmtcError(err).message }, { cause: err });
      if (r.provisionState === 'Provisioned') this.apply(r, 'provision', 'activationFailed', { error: e });
      this.publishError(r, e);
    }
  }

  /** NSI release: Provisioned -> Releasing -> Released; the data plane goes down in every domain. */
  async release(id: string): Promise<Reservation> {
    const r = this.mustBeLive(id, 'release');
    this.apply(r, 'provision', 'release');
    this.timers.cancel(r.id, 'activate');
    await this.deactivate(r);
    if (r.downstream) await this.bestEffortPeer(r, 'release');
    this.apply(r, 'provision', 'releaseConfirmed');
    return r;
  }

  /** NSI terminate: Created / PassedEndTime / Failed -> Terminating -> Terminated, everywhere. */
  async terminate(id: string): Promise<Reservation> {
    const r = this.live.get(id);
    if (!r) {
      const old = this.mustGet(id);
      throw brokerError('VMTC_ILLEGAL_TRANSITION', { machine: 'lifecycle', state: old.lifecycleState, event: 'terminate', reservationId: id }, { message: `terminate is not allowed: the lifecycle state is ${old.lifecycleState}` });
    }
    this.apply(r, 'lifecycle', 'terminate');
    await this.releaseDataPlane(r);
    if (r.reservationState === 'ReserveHeld') this.timers.cancel(r.id, 'hold');
    if (r.downstream) await this.bestEffortPeer(r, 'terminate');
    this.apply(r, 'lifecycle', 'terminateConfirmed');
    return r;
  }

  /** Take the data plane down and walk the provision machine back to Released. */
  private async releaseDataPlane(r: Reservation): Promise<void> {
    this.timers.cancel(r.id, 'activate');
    if (r.provisionState === 'Provisioned') this.apply(r, 'provision', 'release');
    await this.deactivate(r);
    if (r.provisionState === 'Releasing') this.apply(r, 'provision', 'releaseConfirmed');
  }

  private async activate(r: Reservation): Promise<void> {
    const nodes: Record<string, Record<string, unknown>> = {};
    for (const n of r.path.nodes) nodes[n] = { ...(this.o.topology.nodes.get(n)?.driver ?? {}) };
    const seg = await this.o.driver.provision({ connectionId: r.id, path: [...r.path.nodes], nodes, bandwidthMbps: r.bandwidthMbps });
    this.setDataPlane(r, true, seg.details);
  }

  private async deactivate(r: Reservation): Promise<void> {
    if (!r.dataPlane.active) return;
    try {
      await this.o.driver.release(r.id);
    } catch (err) {
      // The driver contract says release must not fail for a known id; if it does, say so loudly
      // but still consider the data plane gone from the broker's point of view.
      this.publishError(r, toVmtcError(err));
    }
    this.setDataPlane(r, false);
  }

  private async bestEffortPeer(r: Reservation, op: 'abort' | 'release' | 'terminate'): Promise<void> {
    if (!r.downstream) return;
    try {
      await this.o.peers.call(r.downstream.domain, 'POST', `/v1/reservations/${encodeURIComponent(r.downstream.reservationId)}/${op}`);
    } catch (err) {
      const e = toVmtcError(err);
      // An illegal transition means the peer already is where we want it (e.g. it timed out).
      if (e.code !== 'VMTC_ILLEGAL_TRANSITION') this.log.warn({ reservationId: r.id, domain: r.downstream.domain, op, code: e.code }, 'peer segment did not answer');
    }
  }

  // ---------------------------------------------------------------- restart

  /**
   * Rebuild the calendar and the timers from the store after a (re)start, and settle operations a
   * crash interrupted half-way (the driver is idempotent, so an active data plane is re-applied).
   */
  async restore(): Promise<void> {
    for (const r of this.o.store.live()) {
      this.live.set(r.id, r);
      if (r.booked) this.calendar.force({ id: r.id, links: r.path.links, start: r.start, end: r.end, mbps: r.bandwidthMbps });
    }
    for (const r of [...this.live.values()]) {
      try {
        switch (r.reservationState) {
          case 'ReserveChecking':
            this.failReserve(r, brokerError('VMTC_SHUTTING_DOWN', { reason: 'the broker restarted while checking' }));
            continue;
          case 'ReserveCommitting':
            this.apply(r, 'reservation', 'commitFailed', { error: brokerError('VMTC_SHUTTING_DOWN', { reason: 'the broker restarted while committing' }) });
            this.endUncommitted(r);
            continue;
          case 'ReserveAborting':
            this.apply(r, 'reservation', 'abortConfirmed');
            this.endUncommitted(r);
            continue;
          case 'ReserveHeld':
            this.armHold(r, (r.heldAt ?? 0) + this.o.holdTimeoutMs - this.o.clock.now());
            break;
        }
        if (r.lifecycleState === 'Terminating') {
          await this.releaseDataPlane(r);
          this.apply(r, 'lifecycle', 'terminateConfirmed');
          continue;
        }
        if (r.provisionState === 'Provisioning') this.apply(r, 'provision', 'provisionFailed', { error: brokerError('VMTC_SHUTTING_DOWN', { reason: 'the broker restarted while provisioning' }) });
        if (r.provisionState === 'Releasing') {
          await this.deactivate(r);
          this.apply(r, 'provision', 'releaseConfirmed');
        }
        if (r.lifecycleState === 'Created' && r.committed) this.armEnd(r);
        if (r.provisionState === 'Provisioned' && r.lifecycleState === 'Created') {
          if (r.dataPlane.active) {
            r.dataPlane.active = false; // re-apply: the driver is idempotent
            await this.onActivate(r.id);
          } else this.armActivation(r);
        }
      } catch (err) {
        this.log.error({ err, reservationId: r.id }, 'could not restore reservation');
      }
    }
  }

  close(): void {
    this.closed = true;
    this.timers.clearAll();
  }

  /** For tests and the bench: whether an event is allowed (the pure table, no side effects). */
  static allowed<M extends Machine>(machine: M, state: MachineTypes[M]['state'], event: MachineTypes[M]['event']): boolean {
    return next(machine, state, event) !== undefined;
  }
}
