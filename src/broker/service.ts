// The reservation service: the public NSI operations and queries, and the runner that performs
// what the NSI state machines (nsi.ts) decide. Every transition goes through apply(), which checks
// it against the table, runs its bookkeeping effects, persists the reservation and the transition
// row in one SQLite transaction, logs it and publishes it on the event feed. Network elements are
// touched only through the driver (data-plane.ts), peers only through PeerLinks (downstream.ts),
// always after the token gate has accepted the request. The parts share one context (runner.ts);
// deadlines.ts holds the hold and end timers, restore.ts restart recovery, record.ts new records.
import { EventEmitter } from 'node:events';
import { VmtcError, toVmtcError } from '../common/errors.ts';
import type { Logger } from '../common/log.ts';
import { Calendar } from './calendar.ts';
import { ReservationTimers } from './timers.ts';
import { brokerError } from './errors.ts';
import { next, transition, type Effect, type Machine, type MachineTypes } from './nsi.ts';
import { computePath } from './path.ts';
import type { BrokerStore, Owner, Reservation, TransitionRow } from './store.ts';
import { checkReserve, type AdmissionPlan, type ReserveAuth, type ReserveInput } from './admission.ts';
import { activate, armActivation, deactivate, releaseDataPlane } from './data-plane.ts';
import { armEnd, armHold } from './deadlines.ts';
import { bestEffortPeer, callSegment, holdNextSegment } from './downstream.ts';
import { restore } from './restore.ts';
import { newReservation, notCommitted, notLive } from './record.ts';
import { endUncommitted, failReserve, publishError, type Apply, type BrokerEvent, type BrokerServiceOptions, type Runner } from './runner.ts';

export type { ReserveAuth, ReserveInput } from './admission.ts';
export type { BrokerEvent, BrokerServiceOptions, FaultInjection } from './runner.ts';
export { view } from './view.ts';

/** The timer of the next background grant change (not a reservation's id). */
const GRANTS_TIMER = '\0grants';

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
  /** The calendar's version the background grants were last computed for (regrant). */
  private grantedFor = -1;
  /** What the runner's parts (data-plane.ts, deadlines.ts, downstream.ts, restore.ts) act on. */
  private readonly rn: Runner;

  constructor(private readonly o: BrokerServiceOptions) {
    this.calendar = new Calendar((l) => o.topology.links.get(l)?.capacityMbps ?? 0);
    this.timers = new ReservationTimers(o.clock);
    this.log = o.logger.child({ mod: 'reservations', domain: o.domain });
    this.events.setMaxListeners(1000);
    const { domain, topology, store, driver, peers, clock, holdTimeoutMs } = o;
    const apply: Apply = (r, machine, event, ctx) => this.apply(r, machine, event, ctx);
    const publish = (e: BrokerEvent): void => void this.events.emit('event', e);
    this.rn = { domain, topology, store, driver, peers, clock, holdTimeoutMs, log: this.log, calendar: this.calendar, timers: this.timers, live: this.live, closed: false, apply, publish };
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
    this.rn.publish({ type: 'stateChange', reservationId: r.id, machine, from, to: rule.to, event, at });
    if (r.lifecycleState === 'Terminated') {
      this.timers.clear(r.id);
      this.live.delete(r.id);
    }
    if (this.calendar.version !== this.grantedFor) this.regrant();
  }

  /**
   * Background grants (classes.ts): each booked background reservation's grant now (at its start
   * when its window has not begun), recorded and published when it changed; then a timer for the
   * next instant a grant may change (a migration's window starting or ending on its links).
   */
  private regrant(): void {
    if (this.rn.closed) return;
    this.grantedFor = this.calendar.version;
    const now = this.nowS();
    const at = new Map<number, Reservation[]>();
    for (const id of this.calendar.backgroundIds) {
      const r = this.live.get(id);
      if (!r) continue;
      const t = Math.max(now, r.start);
      at.set(t, [...(at.get(t) ?? []), r]);
    }
    for (const [t, rs] of at) {
      const grants = this.calendar.grantsAt(t);
      for (const r of rs) this.setGrant(r, grants.get(r.id) ?? 0);
    }
    const next = this.calendar.nextGrantChange(now);
    if (Number.isFinite(next)) this.timers.arm(GRANTS_TIMER, 'regrant', next * 1000 - this.o.clock.now(), () => this.regrant());
    else this.timers.cancel(GRANTS_TIMER, 'regrant');
  }

  private setGrant(r: Reservation, g: number): void {
    const prev = r.grantedMbps ?? 0;
    if (prev === g) return;
    r.grantedMbps = g;
    const at = this.o.clock.now();
    r.updatedAt = at;
    const event = g === 0 ? 'suspended' : g < prev ? 'squeezed' : 'raised';
    this.o.store.save(r, [{ reservationId: r.id, machine: 'grant', from: String(prev), to: String(g), event, at }]);
    this.log.info({ reservationId: r.id, from: prev, to: g, event }, 'background grant changed');
    this.rn.publish({ type: 'grantChange', reservationId: r.id, class: 'background', grantedMbps: g, previousMbps: prev, bandwidthMbps: r.bandwidthMbps, at });
  }

  private effect(r: Reservation, eff: Effect, ctx: { error?: VmtcError }): void {
    switch (eff) {
      case 'armHoldTimer':
        r.heldAt = this.o.clock.now();
        armHold(this.rn, r, this.o.holdTimeoutMs);
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
        armEnd(this.rn, r);
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
    if (!live || r.lifecycleState !== 'Created') throw notLive(id, r.lifecycleState, event);
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
    const r = newReservation(this.o.ids.next('rsv'), this.o.clock.now(), input, auth);
    if (input.idempotencyKey !== undefined) {
      // The route answers a reused key with its reservation before it gets here; this holds the
      // rule for any other caller (one reservation per owner and key).
      const used = this.o.store.byKey(auth.owner, input.idempotencyKey);
      if (used) throw brokerError('VMTC_IDEMPOTENCY_KEY_REUSED', { idempotencyKey: input.idempotencyKey, reservationId: used.id });
    }
    // The jti is consumed in the same SQLite transaction that creates the reservation: of two
    // concurrent requests with one token, exactly one gets past this line.
    if (!this.o.store.create(r, { jti: auth.jti, iss: auth.iss, exp: auth.exp })) throw brokerError('VMTC_TOKEN_REPLAYED', { jti: auth.jti });
    this.live.set(r.id, r);
    this.apply(r, 'reservation', 'reserve');

    const found = input.class === 'background' ? this.bookBackground(r.id, input, plan) : this.bookMigration(r.id, input, plan);
    if (!found) {
      const e = brokerError('VMTC_NO_PATH', { reservationId: r.id, src: input.src, dst: input.dst, bandwidthMbps: input.bandwidthMbps, window: { start: input.start, end: input.end }, domain: this.o.domain, class: input.class ?? 'migration' });
      failReserve(this.rn, r, e);
      throw e;
    }
    r.booked = true;
    r.path = found;
    if (input.class === 'background') r.grantedMbps = this.calendar.grantOf({ id: r.id, links: found.links, start: input.start, end: input.end, mbps: input.bandwidthMbps, minMbps: input.minMbps ?? 0 }, Math.max(this.nowS(), input.start));
    this.o.store.save(r);

    if (plan.nextDomain) await holdNextSegment(this.rn, r, input, plan.nextDomain, plan.stpPeer!, auth.token);
    if (this.rn.closed) throw brokerError('VMTC_SHUTTING_DOWN');
    this.apply(r, 'reservation', 'reserveConfirmed');
    return r;
  }

  /** A migration's path and booking: the whole bandwidth over the whole window, background
   *  bookings not counted (they are squeezed instead). */
  private bookMigration(id: string, input: ReserveInput, plan: AdmissionPlan): Reservation['path'] | undefined {
    const found = computePath(this.o.topology, input.src, plan.targets, (l) => this.calendar.free(l, input.start, input.end) + 1e-9 >= input.bandwidthMbps);
    if (!found.path || !this.calendar.book({ id, links: found.path.links, start: input.start, end: input.end, mbps: input.bandwidthMbps })) return undefined;
    return { ...found.path, alternative: found.alternative };
  }

  /** A background reservation's path and booking: admitted when, at its first instant, what the
   *  migrations and the background reservations before it leave on every link is above its floor. */
  private bookBackground(id: string, input: ReserveInput, plan: AdmissionPlan): Reservation['path'] | undefined {
    const t0 = Math.max(this.nowS(), input.start);
    const b = { id, start: input.start, end: input.end, mbps: input.bandwidthMbps, minMbps: input.minMbps ?? 0 };
    const found = computePath(this.o.topology, input.src, plan.targets, (l) => this.calendar.wouldGrant({ ...b, links: [l] }, t0) > 0);
    if (!found.path || !this.calendar.bookBackground({ ...b, links: found.path.links }, t0)) return undefined;
    return { ...found.path, alternative: found.alternative };
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
      await callSegment(this.rn, r, 'commit');
    } catch (err) {
      const cause = toVmtcError(err);
      const e = cause.code === 'VMTC_COMMIT_FAILED' ? cause : brokerError('VMTC_COMMIT_FAILED', { reservationId: r.id, domain: (cause.details?.domain as string | undefined) ?? r.downstream?.domain, peerCode: cause.code, peerMessage: cause.message }, { cause: err });
      this.apply(r, 'reservation', 'commitFailed', { error: e });
      publishError(this.rn, r, e);
      // The next domain cleans up after its own failure; if it could not even answer, tell it to
      // let go of whatever it holds.
      if (r.downstream && cause.details?.domain === undefined) void bestEffortPeer(this.rn, r, 'terminate');
      endUncommitted(this.rn, r);
      throw new VmtcError(e.code, e.status, e.message, { ...(e.details ?? {}), reservationId: r.id }, err);
    }
    this.apply(r, 'reservation', 'commitConfirmed');
    return r;
  }

  /** NSI reserveAbort: ReserveHeld / ReserveFailed / ReserveTimeout -> ReserveAborting -> ReserveStart. */
  async abort(id: string): Promise<Reservation> {
    const r = this.mustBeLive(id, 'abort');
    this.apply(r, 'reservation', 'abort');
    if (r.downstream) await bestEffortPeer(this.rn, r, 'abort');
    this.apply(r, 'reservation', 'abortConfirmed');
    endUncommitted(this.rn, r);
    return r;
  }

  /**
   * NSI provision: Released -> Provisioning -> Provisioned. The data plane comes up now if the
   * window has started, otherwise at its start. The next domain is provisioned too; if it fails,
   * this domain's data plane is taken down again and the provision state returns to Released.
   */
  async provision(id: string): Promise<Reservation> {
    const r = this.mustBeLive(id, 'provision');
    const refused = notCommitted(r);
    if (refused) throw refused;
    if (r.class === 'background') throw brokerError('VMTC_CLASS_UNSUPPORTED', { reservationId: r.id, class: 'background', event: 'provision', reason: 'a background reservation has no data plane of its own: its holder sends at the granted rate (docs/broker.md "Classes")' });
    this.apply(r, 'provision', 'provision');
    try {
      if (this.nowS() >= r.start) await activate(this.rn, r);
      await callSegment(this.rn, r, 'provision');
      // Terminated (or ended) while we waited for the driver: do not leave a circuit up.
      if (r.lifecycleState !== 'Created') throw brokerError('VMTC_PROVISION_FAILED', { reason: `the reservation ended (${r.lifecycleState}) while provisioning` });
    } catch (err) {
      const cause = toVmtcError(err);
      const e = cause.code === 'VMTC_PROVISION_FAILED' ? cause : brokerError('VMTC_PROVISION_FAILED', { reservationId: r.id, domain: (cause.details?.domain as string | undefined) ?? this.o.domain, peerCode: cause.code, reason: cause.message }, { cause: err });
      await deactivate(this.rn, r);
      if (r.provisionState === 'Provisioning') this.apply(r, 'provision', 'provisionFailed', { error: e });
      publishError(this.rn, r, e);
      throw new VmtcError(e.code, e.status, e.message, { ...(e.details ?? {}), reservationId: r.id, provisionState: r.provisionState }, err);
    }
    this.apply(r, 'provision', 'provisionConfirmed');
    if (!r.dataPlane.active) armActivation(this.rn, r);
    return r;
  }

  /** NSI release: Provisioned -> Releasing -> Released; the data plane goes down in every domain. */
  async release(id: string): Promise<Reservation> {
    const r = this.mustBeLive(id, 'release');
    this.apply(r, 'provision', 'release');
    this.timers.cancel(r.id, 'activate');
    await deactivate(this.rn, r);
    if (r.downstream) await bestEffortPeer(this.rn, r, 'release');
    this.apply(r, 'provision', 'releaseConfirmed');
    return r;
  }

  /** NSI terminate: Created / PassedEndTime / Failed -> Terminating -> Terminated, everywhere. */
  async terminate(id: string): Promise<Reservation> {
    const r = this.live.get(id);
    if (!r) throw notLive(id, this.mustGet(id).lifecycleState, 'terminate');
    this.apply(r, 'lifecycle', 'terminate');
    await releaseDataPlane(this.rn, r);
    if (r.reservationState === 'ReserveHeld') this.timers.cancel(r.id, 'hold');
    if (r.downstream) await bestEffortPeer(this.rn, r, 'terminate');
    this.apply(r, 'lifecycle', 'terminateConfirmed');
    return r;
  }

  // ---------------------------------------------------------------- restart

  /** Rebuild calendar and timers from the store after a (re)start; settle what a crash cut short. */
  async restore(): Promise<void> {
    await restore(this.rn);
    this.regrant();
  }

  close(): void {
    this.rn.closed = true;
    this.timers.clearAll();
  }

  /** For tests and the bench: whether an event is allowed (the pure table, no side effects). */
  static allowed<M extends Machine>(machine: M, state: MachineTypes[M]['state'], event: MachineTypes[M]['event']): boolean {
    return next(machine, state, event) !== undefined;
  }
}
