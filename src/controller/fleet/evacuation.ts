// Evacuation (drain) of a host or a site (docs/fleet.md "Evacuation"): puts its hosts in
// maintenance, plans every VM's destination and start (placement.ts, evacuation-plan.ts), and runs
// the plan under its concurrency limits through the controller's own admission (api.ts admit), so
// every move is an ordinary migration with its checks, hold, lightpath and rollback.
//
// Durable (store.ts): an item's request, with a requestId of its own per attempt, is written
// before admission ('starting'), its migration id after ('running'). A controller killed at any
// point finds each item where it was: 'starting' is admitted again with the same request (the
// requestId answers with the migration already made, if it was), 'running' follows its
// migration, so a VM is never moved twice nor forgotten.
import type { Clock, Ids } from '../../common/clock.ts';
import type { Logger } from '../../common/log.ts';
import type { HostInventory } from '../../common/agent-protocol.ts';
import { toVmtcError } from '../../common/errors.ts';
import { err } from '../errors.ts';
import { TERMINAL } from '../machine.ts';
import { hostUsage, locateVm } from '../capacity.ts';
import type { ControllerStore, MigrationRow } from '../store.ts';
import type { HubPort } from '../ports.ts';
import type { Admit, MigrationRequestIn } from '../api.ts';
import { decisionRecord, labelsOf, linkBetween, placeVm, type SiteLink } from './placement.ts';
import { planEvacuation, type PlanVm } from './evacuation-plan.ts';
import type { Bookings, BookingTarget } from './bookings.ts';
import { EVACUATION_ENDED, ITEM_ENDED, type EvacuationRequest, type EvacuationRow, type FleetStore, type ItemRow } from './store.ts';

/** Attempts per VM (a rollback the evacuation did not ask for is tried again, up to this). */
export const MAX_ATTEMPTS = 3;
/** Rollbacks after which the same path is tried again (nothing about the VM or the hosts said no). */
const TRANSIENT = new Set(['VMTC_CONTROLLER_RESTARTED', 'VMTC_AGENT_LOST', 'VMTC_DEADLINE_EXCEEDED', 'VMTC_HOST_NOT_CONNECTED']);
/** Admission refusals that another destination may not have. */
const REPLACE = new Set(['VMTC_INSUFFICIENT_MEMORY', 'VMTC_INSUFFICIENT_VCPUS', 'VMTC_INSUFFICIENT_DISK', 'VMTC_HOST_IN_MAINTENANCE', 'VMTC_HOST_NOT_CONNECTED', 'VMTC_HOST_NOT_FOUND', 'VMTC_SAME_HOST']);

export interface EvacuationDeps {
  fleet: FleetStore;
  store: ControllerStore;
  hub: HubPort;
  admit: Admit;
  /** The runner's events: 'finished' (migrationId, state). */
  runner: NodeJS.EventEmitter & { cancel(id: string): Promise<unknown> };
  clock: Clock;
  ids: Ids;
  logger: Logger;
  links: readonly SiteLink[];
  /** A VM's measured dirty rate (Mbit/s), when monitoring has one (over its label's). */
  dirtyMbps?(vmId: string): number | undefined;
  /** Advance reservations of the planned moves (bookings.ts); without it each move reserves at its start. */
  bookings?: Bookings;
}

type HostEntry = { inventory: HostInventory; connected: boolean };

export class Evacuations {
  private readonly chains = new Map<string, Promise<void>>();
  private readonly cancelAsked = new Set<string>();
  private closed = false;
  /** Bookings left by a previous run released once, before anything is booked (bookings.ts recover). */
  private recovery: Promise<void> | undefined;
  /** A pass at the next booking's window start, per evacuation. */
  private readonly wakeups = new Map<string, { at: number; timer: { cancel(): void } }>();

  constructor(private readonly d: EvacuationDeps) {
    d.runner.on('finished', this.onFinished);
    d.hub.on('connected', this.onConnected);
  }

  /** An agent (back) online: moves waiting for it may start (after a restart, every agent). */
  private readonly onConnected = (): void => {
    if (!this.closed) this.resume();
  };

  private readonly onFinished = (migrationId: string): void => {
    const it = this.d.fleet.itemByMigration(migrationId);
    if (it) this.pump(it.evacuationId);
  };

  private hosts(): HostEntry[] {
    return this.d.store.hosts().map((h) => ({ inventory: this.d.hub.inventory(h.inventory.hostId) ?? h.inventory, connected: this.d.hub.isConnected(h.inventory.hostId) }));
  }

  /** POST /v1/evacuations: validate, plan, persist (with maintenance) in one transaction, start. */
  create(req: EvacuationRequest, by: string | undefined): EvacuationRow {
    const hosts = this.hosts();
    if ((req.host === undefined) === (req.site === undefined)) throw err('VMTC_EVACUATION_TARGET_INVALID', { field: req.host === undefined ? 'host|site' : 'site', reason: 'exactly one of host or site' });
    const sources = req.host !== undefined ? hosts.filter((h) => h.inventory.hostId === req.host) : hosts.filter((h) => h.inventory.site === req.site);
    if (sources.length === 0) throw err('VMTC_EVACUATION_TARGET_INVALID', req.host !== undefined ? { field: 'host', host: req.host } : { field: 'site', site: req.site });
    const sourceIds = new Set(sources.map((h) => h.inventory.hostId));
    for (const ev of this.d.fleet.activeEvacuations()) {
      const theirs = new Set(this.d.fleet.items(ev.id).map((i) => i.sourceHostId));
      const maint = this.d.fleet.maintenance();
      const clash = [...sourceIds].find((h) => theirs.has(h) || maint.get(h)?.evacuationId === ev.id);
      if (clash) throw err('VMTC_EVACUATION_CONFLICT', { evacuationId: ev.id, hostId: clash });
    }
    const maintenance = new Set([...this.d.fleet.maintenance().keys(), ...sourceIds]);
    const holds = this.d.store.holds();
    const mode = req.allowCold ? 'auto' : 'live';
    const planVms: PlanVm[] = [];
    const decisions = new Map<string, Record<string, unknown>>();
    const skipped: { vmId: string; sourceHostId: string; reason: string }[] = [];
    const busy = new Set(this.d.store.activeMigrations(TERMINAL).map((m) => m.vmId));
    const usage = new Map<string, ReturnType<typeof hostUsage>>();
    for (const src of sources) {
      for (const vm of src.inventory.vms) {
        if (vm.state === 'incoming') continue;
        if (busy.has(vm.vmId)) { skipped.push({ vmId: vm.vmId, sourceHostId: src.inventory.hostId, reason: 'migration-in-flight' }); continue; }
        if (vm.state !== 'running' && !(req.allowCold && vm.state === 'stopped')) { skipped.push({ vmId: vm.vmId, sourceHostId: src.inventory.hostId, reason: `vm-${vm.state}` }); continue; }
        const dec = placeVm({ vm, source: src.inventory, mode: vm.state === 'stopped' ? 'cold' : mode, hosts, holds, maintenance, ...(req.toSites ? { toSites: req.toSites } : {}), links: this.d.links, usage, ...this.dirty(vm.vmId) });
        decisions.set(vm.vmId, decisionRecord(dec));
        const shared = (h: string) => src.inventory.sharedStorage && !!hosts.find((x) => x.inventory.hostId === h)?.inventory.sharedStorage;
        planVms.push({
          vmId: vm.vmId, sourceHostId: src.inventory.hostId, memoryMb: vm.memoryMb, vcpus: vm.vcpus,
          // Disk counts when any candidate lacks shared storage (the copy needs room there).
          diskGb: dec.candidates.every((c) => shared(c.hostId)) && vm.state === 'running' ? 0 : vm.diskGb,
          dirtyMbps: dec.dirtyMbps, priority: req.priorities?.[vm.vmId] ?? labelsOf(vm).priority ?? 0,
          candidates: dec.candidates.map((c) => ({ hostId: c.hostId, path: vm.state === 'stopped' ? 'cold' : c.path })),
        });
      }
    }
    const plan = planEvacuation({
      vms: planVms, links: this.d.links, limits: req.limits, order: req.order, allowCold: req.allowCold,
      hosts: hosts.map((h) => ({ hostId: h.inventory.hostId, site: h.inventory.site ?? h.inventory.hostId, free: hostUsage(h.inventory, holds.filter((x) => x.hostId === h.inventory.hostId)).available })),
    });
    const now = this.d.clock.now();
    const id = this.d.ids.next('evac');
    const items: Omit<ItemRow, 'evacuationId' | 'updatedAt'>[] = plan.items.map((it) => ({
      seq: it.seq, vmId: it.vmId, sourceHostId: it.sourceHostId, destinationHostId: it.destinationHostId, link: it.link, path: it.path, rateMbps: it.rateMbps,
      plannedStart: it.start, plannedEnd: it.end, batch: it.batch, state: 'planned', attempt: 0, migrationId: null, migrationIds: [], request: null, error: null,
      placement: decisions.get(it.vmId) ?? null,
    }));
    let seq = items.length;
    for (const u of plan.unplaced) {
      const vm = planVms.find((v) => v.vmId === u.vmId)!;
      const dec = decisions.get(u.vmId);
      items.push({ seq: seq++, vmId: u.vmId, sourceHostId: vm.sourceHostId, destinationHostId: null, link: null, path: null, rateMbps: null, plannedStart: null, plannedEnd: null, batch: null, state: 'unplaced', attempt: 0, migrationId: null, migrationIds: [], request: null, error: err('VMTC_NO_FEASIBLE_HOST', { vmId: u.vmId, reason: u.reason, refused: (dec?.refused as unknown[] | undefined)?.slice(0, 50) ?? [] }).toJSON() as unknown as Record<string, unknown>, placement: dec ?? null });
    }
    for (const s of skipped) {
      items.push({ seq: seq++, vmId: s.vmId, sourceHostId: s.sourceHostId, destinationHostId: null, link: null, path: null, rateMbps: null, plannedStart: null, plannedEnd: null, batch: null, state: 'unplaced', attempt: 0, migrationId: null, migrationIds: [], request: null, error: { code: 'VMTC_VM_NOT_RUNNING', message: 'not moved by this evacuation', details: { reason: s.reason } }, placement: null });
    }
    const row: EvacuationRow = {
      id, targetKind: req.host !== undefined ? 'host' : 'site', target: (req.host ?? req.site)!, request: req, state: 'running',
      plan: { makespanS: plan.makespan, bound: plan.bound, batches: plan.batches },
      cancelRunning: null, createdBy: by ?? null, createdAt: now, updatedAt: now, endedAt: null,
    };
    this.d.fleet.createEvacuation(row, items, [...sourceIds]);
    this.d.logger.info({ evacuationId: id, target: row.target, vms: items.length, planned: plan.items.length, makespanS: plan.makespan }, 'evacuation planned');
    this.pump(id);
    return this.d.fleet.evacuation(id)!;
  }

  /** POST /v1/evacuations/:id/cancel: nothing more starts; running moves finish or roll back. */
  async cancel(id: string, running: 'finish' | 'rollback'): Promise<EvacuationRow> {
    const ev = this.d.fleet.evacuation(id);
    if (!ev) throw err('VMTC_EVACUATION_NOT_FOUND', { evacuationId: id });
    if (EVACUATION_ENDED.has(ev.state)) throw err('VMTC_EVACUATION_NOT_CANCELLABLE', { evacuationId: id, state: ev.state });
    const now = this.d.clock.now();
    this.d.fleet.db.transaction(() => {
      this.d.fleet.setEvacuationState(id, 'cancelling', now, running);
      for (const it of this.d.fleet.items(id)) if (it.state === 'planned') this.d.fleet.endItem(id, it.seq, 'cancelled', null, now);
    })();
    await this.pump(id);
    return this.d.fleet.evacuation(id)!;
  }

  /** After a restart (once the runner reconciled its migrations): go on with every evacuation. */
  resume(): void {
    for (const ev of this.d.fleet.activeEvacuations()) this.pump(ev.id);
  }

  /** One pass at a time per evacuation; passes asked meanwhile run after it. */
  pump(id: string): Promise<void> {
    const next = (this.chains.get(id) ?? Promise.resolve()).then(() => this.step(id)).catch((e: unknown) => {
      this.d.logger.warn({ evacuationId: id, err: e }, 'evacuation step failed');
    });
    this.chains.set(id, next);
    return next;
  }

  private async step(id: string): Promise<void> {
    if (this.closed) return;
    const ev = this.d.fleet.evacuation(id);
    if (!ev || EVACUATION_ENDED.has(ev.state)) return;
    const bookings = this.d.bookings?.enabled ? this.d.bookings : undefined;
    if (bookings) await (this.recovery ??= bookings.recover());
    // Items whose migration ended (also while the controller was down).
    for (const it of this.d.fleet.items(id)) {
      if (it.state !== 'running' || !it.migrationId) continue;
      const m = this.d.store.migration(it.migrationId);
      if (m && TERMINAL.has(m.state)) this.settle(ev, it, m);
      else if (m && ev.state === 'cancelling' && ev.cancelRunning === 'rollback' && !this.cancelAsked.has(m.id)) {
        this.cancelAsked.add(m.id);
        await this.d.runner.cancel(m.id).catch((e: unknown) => this.d.logger.info({ evacuationId: id, migrationId: m.id, code: toVmtcError(e).code }, 'running move not cancelled'));
      }
    }
    // Items admitted when the controller died: ask again with the same request (its requestId
    // finds the migration if it was made). Cancelled meanwhile: only find it, make none.
    for (const it of this.d.fleet.items(id)) {
      if (it.state !== 'starting' || this.closed) continue;
      if (ev.state === 'running') { await this.start(ev, it); continue; }
      const made = typeof it.request?.requestId === 'string' ? this.d.store.migrationByRequestId(it.request.requestId)?.row : undefined;
      if (made) this.d.fleet.markRunning(id, it.seq, made.id, made.destinationHostId, this.d.clock.now());
      else this.d.fleet.endItem(id, it.seq, 'cancelled', null, this.d.clock.now());
    }
    // The plan's time line in the broker's calendar: book the planned moves not booked yet (at
    // creation, after a re-placement, after a restart released what its tokens were lost with).
    if (bookings && ev.state === 'running') {
      const items = this.d.fleet.items(id);
      await bookings.bookAll(ev, this.bookingTargets(items), new Set(items.filter((i) => i.state === 'running' || i.state === 'starting').map((i) => i.seq)));
    }
    // A refused admission puts its item back to planned (another host or path): start again,
    // bounded (each item has MAX_ATTEMPTS).
    if (ev.state === 'running') {
      for (let pass = 0, n = this.d.fleet.items(id).length * MAX_ATTEMPTS + 1; pass < n && !this.closed; pass++) {
        if (!(await this.startReady(ev))) break;
      }
    }
    const items = this.d.fleet.items(id);
    // Bookings of moves that ended without taking theirs over (failed, cancelled, moved cold).
    if (bookings) {
      const ended = new Set(items.filter((i) => ITEM_ENDED.has(i.state)).map((i) => i.seq));
      await bookings.releaseUnused(id, (seq) => ended.has(seq));
    }
    if (items.every((i) => ITEM_ENDED.has(i.state))) {
      const state = ev.state === 'cancelling' ? 'cancelled' : items.every((i) => i.state === 'completed') ? 'completed' : 'completed_with_errors';
      this.d.fleet.setEvacuationState(id, state, this.d.clock.now());
      this.d.logger.info({ evacuationId: id, state }, 'evacuation ended');
    }
  }

  /** Start the planned items the limits allow now, in plan order. True when one of them was
   *  refused and is planned again (worth another pass). */
  private async startReady(ev: EvacuationRow): Promise<boolean> {
    let replanned = false;
    const lim = ev.request.limits;
    const items = this.d.fleet.items(ev.id);
    const count = (key: (i: ItemRow) => string | null) => {
      const m = new Map<string, number>();
      for (const i of items) if (i.state === 'running' || i.state === 'starting') { const k = key(i); if (k !== null) m.set(k, (m.get(k) ?? 0) + 1); }
      return m;
    };
    const bySrc = count((i) => i.sourceHostId);
    const byDst = count((i) => i.destinationHostId);
    const byLink = count((i) => i.link);
    const planned = items.filter((i) => i.state === 'planned').sort((a, b) => (a.plannedStart ?? 0) - (b.plannedStart ?? 0) || a.seq - b.seq);
    for (const it of planned) {
      if (this.closed) return false;
      if ((bySrc.get(it.sourceHostId) ?? 0) >= lim.perSourceHost) continue;
      const dst = it.destinationHostId;
      const link = it.link;
      if (dst === null || (byDst.get(dst) ?? 0) >= lim.perDestinationHost || (link !== null && (byLink.get(link) ?? 0) >= lim.perLightpath)) continue;
      // An agent not connected (yet: after a restart they come back one by one) is waited for,
      // not counted as a refusal; its connection pumps again.
      if (!this.d.hub.isConnected(it.sourceHostId) || !this.d.hub.isConnected(dst)) continue;
      // A move booked ahead starts when its booking does (the plan's time line); a pass is due then.
      const booked = this.d.bookings?.live(ev.id, it.seq);
      if (booked?.state === 'booked' && booked.windowStart * 1000 > this.d.clock.now()) { this.wakeAt(ev.id, booked.windowStart * 1000); continue; }
      const now = this.d.clock.now();
      const attempt = it.attempt + 1;
      const request: MigrationRequestIn = {
        vmId: it.vmId, destinationHostId: dst, mode: it.path === 'cold' ? 'cold' : ev.request.mode,
        ...(it.rateMbps ? { bandwidthMbps: it.rateMbps } : {}), requestId: `${ev.id}/${it.seq}/${attempt}`,
      };
      this.d.fleet.markStarting(ev.id, it.seq, attempt, request as unknown as Record<string, unknown>, now);
      bySrc.set(it.sourceHostId, (bySrc.get(it.sourceHostId) ?? 0) + 1);
      byDst.set(dst, (byDst.get(dst) ?? 0) + 1);
      if (link !== null) byLink.set(link, (byLink.get(link) ?? 0) + 1);
      await this.start(ev, { ...it, state: 'starting', attempt, request: request as unknown as Record<string, unknown> });
      if (this.d.fleet.items(ev.id).find((i) => i.seq === it.seq)?.state === 'planned') replanned = true;
    }
    return replanned;
  }

  /** Admit an item's recorded request; on a refusal, try another host or path, or end it. */
  private async start(ev: EvacuationRow, it: ItemRow): Promise<void> {
    const request = it.request as unknown as MigrationRequestIn;
    try {
      const { row } = await this.d.admit(request, { ...(ev.createdBy ? { by: ev.createdBy } : {}), evacuationId: ev.id });
      this.d.fleet.markRunning(ev.id, it.seq, row.id, row.destinationHostId, this.d.clock.now());
      if (TERMINAL.has(row.state)) this.settle(ev, { ...it, state: 'running', migrationId: row.id }, row);
    } catch (e) {
      const ve = toVmtcError(e);
      const now = this.d.clock.now();
      this.d.logger.info({ evacuationId: ev.id, vmId: it.vmId, code: ve.code }, 'evacuation move refused at admission');
      const where = this.whereIs(it.vmId);
      if (where && !this.d.fleet.maintenance().has(where) && where !== it.sourceHostId) {
        this.d.fleet.endItem(ev.id, it.seq, 'completed', null, now);
        return;
      }
      if (it.attempt >= MAX_ATTEMPTS) { this.d.fleet.endItem(ev.id, it.seq, 'failed', ve.toJSON() as unknown as Record<string, unknown>, now); return; }
      if (REPLACE.has(ve.code) || ve.code === 'VMTC_CPU_INCOMPATIBLE' || ve.code === 'VMTC_HYPERVISOR_VERSION_INCOMPATIBLE') {
        const again = this.replace(ev, it);
        if (again) {
          // Its booking names the old destination's site: given back; the move reserves at its start.
          await this.d.bookings?.releaseUnused(ev.id, (seq) => seq === it.seq, 're-placed');
          this.d.fleet.db.prepare('UPDATE evacuation_items SET dest_host = ?, link = ?, placement = ? WHERE evacuation_id = ? AND seq = ?').run(again.hostId, again.link, JSON.stringify(again.placement), ev.id, it.seq);
          this.d.fleet.markRetry(ev.id, it.seq, again.path, ve.toJSON() as unknown as Record<string, unknown>, now);
          return;
        }
      }
      this.d.fleet.endItem(ev.id, it.seq, 'failed', ve.toJSON() as unknown as Record<string, unknown>, now);
    }
  }

  /** A migration of an item ended: done, or another attempt, or failed. */
  private settle(ev: EvacuationRow, it: ItemRow, m: MigrationRow): void {
    const now = this.d.clock.now();
    if (m.state === 'completed') { this.d.fleet.endItem(ev.id, it.seq, 'completed', null, now); return; }
    if (ev.state === 'cancelling') { this.d.fleet.endItem(ev.id, it.seq, 'cancelled', m.error as unknown as Record<string, unknown> | null, now); return; }
    // failed: the rollback could not confirm where the VM runs; an operator must look.
    if (m.state === 'failed' || it.attempt >= MAX_ATTEMPTS) { this.d.fleet.endItem(ev.id, it.seq, 'failed', (m.error ?? { code: 'VMTC_MIGRATION_FAILED', message: m.state }) as unknown as Record<string, unknown>, now); return; }
    const code = m.error?.code ?? '';
    const path = TRANSIENT.has(code) || !ev.request.allowCold ? (it.path ?? 'live') : 'cold';
    this.d.fleet.markRetry(ev.id, it.seq, path, m.error as unknown as Record<string, unknown> | null, now);
  }

  /** A new destination for an item, among hosts not in maintenance and under their inbound limit. */
  private replace(ev: EvacuationRow, it: ItemRow): { hostId: string; link: string; path: 'live' | 'cold'; placement: Record<string, unknown> } | undefined {
    const hosts = this.hosts();
    const loc = locateVm(hosts.map((h) => h.inventory), it.vmId);
    if (!loc) return undefined;
    const full = new Map<string, number>();
    for (const i of this.d.fleet.items(ev.id)) if ((i.state === 'running' || i.state === 'starting') && i.destinationHostId) full.set(i.destinationHostId, (full.get(i.destinationHostId) ?? 0) + 1);
    const maintenance = new Set([...this.d.fleet.maintenance().keys(), ...[...full].filter(([, n]) => n >= ev.request.limits.perDestinationHost).map(([h]) => h), ...(it.destinationHostId ? [it.destinationHostId] : [])]);
    const dec = placeVm({ vm: loc.vm, source: loc.host, mode: ev.request.mode, hosts, holds: this.d.store.holds(), maintenance, ...(ev.request.toSites ? { toSites: ev.request.toSites } : {}), links: this.d.links, ...this.dirty(it.vmId) });
    const c = dec.candidates[0];
    if (!c) return undefined;
    const dst = hosts.find((h) => h.inventory.hostId === c.hostId)!.inventory;
    const l = linkBetween(this.d.links, loc.host.site, dst.site);
    const site = loc.host.site ?? loc.host.hostId;
    return { hostId: c.hostId, link: l?.id ?? `${site}~${site}`, path: c.path, placement: decisionRecord(dec) };
  }

  private wakeAt(id: string, at: number): void {
    const cur = this.wakeups.get(id);
    if (this.closed || (cur && cur.at <= at)) return;
    cur?.timer.cancel();
    const timer = this.d.clock.setTimeout(() => { this.wakeups.delete(id); this.pump(id); }, Math.max(0, at - this.d.clock.now()));
    this.wakeups.set(id, { at, timer });
  }

  /** The planned moves with the sites and project their bookings name (site() in migration/context.ts). */
  private bookingTargets(items: ItemRow[]): BookingTarget[] {
    const out: BookingTarget[] = [];
    for (const it of items) {
      if (it.state !== 'planned' || !it.destinationHostId) continue;
      const src = this.d.hub.inventory(it.sourceHostId) ?? this.d.store.host(it.sourceHostId)?.inventory;
      const dst = this.d.hub.inventory(it.destinationHostId) ?? this.d.store.host(it.destinationHostId)?.inventory;
      const vm = src?.vms.find((v) => v.vmId === it.vmId);
      if (!src || !dst || !vm) continue;
      out.push({ item: it, src: src.site ?? src.hostId, dst: dst.site ?? dst.hostId, project: vm.project });
    }
    return out;
  }

  private dirty(vmId: string): { dirtyMbps?: number } {
    const d = this.d.dirtyMbps?.(vmId);
    return d !== undefined ? { dirtyMbps: d } : {};
  }

  private whereIs(vmId: string): string | undefined {
    return locateVm(this.hosts().filter((h) => h.connected).map((h) => h.inventory), vmId)?.host.hostId;
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const w of this.wakeups.values()) w.timer.cancel();
    this.wakeups.clear();
    this.d.runner.off('finished', this.onFinished);
    this.d.hub.off('connected', this.onConnected);
    await Promise.all([...this.chains.values()]);
  }
}
