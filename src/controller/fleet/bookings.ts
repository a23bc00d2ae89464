// Advance reservations for an evacuation's plan (docs/fleet.md "Bookings"): every planned live
// move between two sites gets its bandwidth booked in the broker's calendar when the evacuation
// starts (or re-plans), for the plan's window of that move, with a capability token of its own;
// the move's migration takes the booking over (claim(), called by effects-live.ts requestToken)
// and provisions it instead of reserving anew. Bookings not taken over (the evacuation cancelled,
// the move failed, re-placed elsewhere or started too late) are released.
//
// Grants: one per planned move, as today one per migration: the token names the VM, its project
// and the two sites (so a policy per VM still applies), its scope's window is the booking's, and
// its migrationId is the booking's name (EVAC.SEQ.bGEN). The migration adopts it (its jti is the
// one its record closes, docs/design.md#accounting); a booking released unused closes it here.
//
// Durable: the intent (idempotency key) is written before the broker is asked, the reservation id
// after. Tokens are secrets kept in memory only, so after a restart a booking not yet taken over
// cannot be provisioned: recover() releases every such booking (found by its key when the answer
// never came) and the evacuation books those moves again with new grants.
import type { Clock } from '../../common/clock.ts';
import type { Logger } from '../../common/log.ts';
import { toVmtcError } from '../../common/errors.ts';
import type { AuthorizationPort, BookingClaim, ClaimedLightpath, LightpathPort, LightpathRequest } from '../ports.ts';
import type { ControllerStore } from '../store.ts';
import type { EvacuationRow, FleetStore, ItemRow } from './store.ts';

export type BookingState = 'booking' | 'booked' | 'claimed' | 'released' | 'failed';

export interface BookingRow {
  evacuationId: string;
  seq: number;
  gen: number;
  batch: number | null;
  key: string;
  state: BookingState;
  reservationId: string | null;
  jti: string | null;
  src: string;
  dst: string;
  link: string | null;
  mbps: number;
  /** Epoch seconds, the broker's window. */
  windowStart: number;
  windowEnd: number;
  migrationId: string | null;
  error: Record<string, unknown> | null;
  updatedAt: number;
}

/** The plan's time line as booked: t ↦ stretch·t + slackS·(batches started before t). Each move's
 *  window is its planned one stretched, plus slackS at least (its own batch starts inside it),
 *  while g stays monotone, so moves that follow each other on one lightpath slot in the plan do
 *  not overlap in the calendar either (the plan's rates are estimates; the broker takes a circuit
 *  down at its window's end, docs/broker.md "Time"). */
export interface BookingTiming { stretch: number; slackS: number }
export const BOOKING_TIMING: BookingTiming = { stretch: 1.25, slackS: 60 };
/** A booking whose window ends within this many seconds is not taken over (a fresh one is asked). */
const CLAIM_MARGIN_S = 1;
/** Bookings per move at most (each attempt, restart or re-placement may book it again). */
export const MAX_BOOKINGS = 6;

type Raw = Record<string, unknown>;
function bookingRow(r: Raw): BookingRow {
  return {
    evacuationId: r.evacuation_id as string, seq: r.seq as number, gen: r.gen as number, batch: (r.batch as number | null) ?? null,
    key: r.idem_key as string, state: r.state as BookingState, reservationId: (r.reservation_id as string | null) ?? null, jti: (r.jti as string | null) ?? null,
    src: r.src as string, dst: r.dst as string, link: (r.link as string | null) ?? null, mbps: r.mbps as number,
    windowStart: r.window_start as number, windowEnd: r.window_end as number, migrationId: (r.migration_id as string | null) ?? null,
    error: typeof r.error === 'string' ? JSON.parse(r.error) : null, updatedAt: r.updated_at as number,
  };
}

/** Every booking of an evacuation, oldest first per item. */
export function bookingRows(fleet: FleetStore, evacuationId: string): BookingRow[] {
  return (fleet.db.prepare('SELECT * FROM evacuation_bookings WHERE evacuation_id = ? ORDER BY seq, gen').all(evacuationId) as Raw[]).map(bookingRow);
}

export interface BookingDeps {
  fleet: FleetStore;
  store: ControllerStore;
  aaa: AuthorizationPort;
  clock: Clock;
  logger: Logger;
  timing?: BookingTiming;
}

/** The move a booking is for: the item with the sites and project it needs. */
export interface BookingTarget { item: ItemRow; src: string; dst: string; project: string }

/** The window of a move's booking (epoch seconds): g (above) of its planned start and end, from
 *  the evacuation's start, shifted later by `shiftS` (moves booked again after a delay keep
 *  their places on the time line relative to each other). */
export function bookingWindow(evacuationStartMs: number, batchStarts: readonly number[], item: Pick<ItemRow, 'plannedStart' | 'plannedEnd'>, shiftS = 0, timing: BookingTiming = BOOKING_TIMING): { start: number; end: number } {
  const g = bookedTime(batchStarts, timing);
  const t0 = evacuationStartMs / 1000 + shiftS;
  const ps = item.plannedStart ?? 0;
  const pe = Math.max(item.plannedEnd ?? ps, ps + 1e-3);
  // Rounded alike, so that a window ending where the next one on its slot starts still does.
  return { start: Math.round(t0 + g(ps)), end: Math.round(t0 + g(pe)) };
}

/** g: seconds of the plan to seconds of the booked time line. */
export function bookedTime(batchStarts: readonly number[], timing: BookingTiming = BOOKING_TIMING): (t: number) => number {
  return (t) => timing.stretch * t + timing.slackS * batchStarts.filter((b) => b < t - 1e-6).length;
}

/** The controller's lightpath port with bookings: setup/teardown/find go to the broker's port;
 *  book/provision too; claim() hands a booking to the migration of its move. */
export class Bookings implements LightpathPort {
  /** Tokens of bookings not taken over yet, by key: memory only. */
  private readonly tokens = new Map<string, { token: string; jti: string; expiresAt: number }>();
  readonly find?: LightpathPort['find'];
  readonly provision?: LightpathPort['provision'];

  constructor(private readonly base: LightpathPort, private readonly d: BookingDeps) {
    if (base.find) this.find = (k) => base.find!(k);
    if (base.provision) this.provision = (id, t) => base.provision!(id, t);
  }

  /** Whether bookings can be made (a broker port that books, and an AAA to grant them). */
  get enabled(): boolean {
    return !!(this.base.book && this.base.provision);
  }

  setup(req: LightpathRequest, token: string, opts?: { idempotencyKey?: string }) {
    return this.base.setup(req, token, opts);
  }

  teardown(reservationId: string, token: string) {
    return this.base.teardown(reservationId, token);
  }

  book(req: LightpathRequest, token: string, opts: { idempotencyKey: string }) {
    return this.base.book!(req, token, opts);
  }

  // ---- rows
  bookings(evacuationId: string): BookingRow[] {
    return bookingRows(this.d.fleet, evacuationId);
  }
  /** The item's booking that may still be used (booked, or its intent recorded), if any. */
  live(evacuationId: string, seq: number): BookingRow | undefined {
    const r = this.d.fleet.db.prepare("SELECT * FROM evacuation_bookings WHERE evacuation_id = ? AND seq = ? AND state IN ('booking', 'booked') ORDER BY gen DESC LIMIT 1").get(evacuationId, seq) as Raw | undefined;
    return r && bookingRow(r);
  }
  private set(b: Pick<BookingRow, 'evacuationId' | 'seq' | 'gen'>, patch: { state: BookingState; reservationId?: string | null; migrationId?: string | null; error?: Record<string, unknown> | null }): void {
    this.d.fleet.db.prepare(`UPDATE evacuation_bookings SET state = ?, reservation_id = coalesce(?, reservation_id), migration_id = coalesce(?, migration_id),
      error = coalesce(?, error), updated_at = ? WHERE evacuation_id = ? AND seq = ? AND gen = ?`)
      .run(patch.state, patch.reservationId ?? null, patch.migrationId ?? null, patch.error ? JSON.stringify(patch.error) : null, this.d.clock.now(), b.evacuationId, b.seq, b.gen);
  }

  /** Book the targets (planned moves) that have no live booking. A refusal (the AAA's or the
   *  broker's: the calendar full, no path) is recorded and the move will reserve at its start, as
   *  a lone migration does. `busy`: the items running now (their claimed windows come first). */
  async bookAll(ev: EvacuationRow, targets: BookingTarget[], busy: ReadonlySet<number> = new Set()): Promise<void> {
    if (!this.enabled) return;
    // A planned move without a live booking is booked (at creation; after a restart released
    // those whose tokens were lost; after an attempt rolled back or a re-placement), at most
    // MAX_BOOKINGS times. When one is, the rest of the time line is booked again with it (the
    // planned moves' unused bookings released first), shifted as one so that it starts after
    // what runs now: a move booked late does not collide with the next ones on its slot.
    const bookable = targets.filter((t) => t.item.state === 'planned' && t.item.path === 'live' && !!t.item.rateMbps && t.src !== t.dst);
    const rows = this.bookings(ev.id);
    const of = (seq: number) => rows.filter((b) => b.seq === seq);
    const isLive = (b: BookingRow) => b.state === 'booking' || b.state === 'booked';
    const needs = bookable.filter((t) => !of(t.item.seq).some(isLive) && of(t.item.seq).length < MAX_BOOKINGS);
    if (!needs.length) return;
    const nowS = this.d.clock.now() / 1000;
    const again = bookable.filter((t) => of(t.item.seq).some(isLive) && of(t.item.seq).length < MAX_BOOKINGS);
    for (const t of again) await this.releaseUnused(ev.id, (seq) => seq === t.item.seq, 'time line booked again');
    const todo = [...needs, ...again.filter((t) => !this.live(ev.id, t.item.seq))]
      .map((t) => ({ ...t, gen: Math.max(0, ...of(t.item.seq).map((b) => b.gen)) + 1 }))
      .sort((a, b) => (a.item.plannedStart ?? 0) - (b.item.plannedStart ?? 0) || a.item.seq - b.item.seq);
    const batchStarts = ((ev.plan.batches ?? []) as { start: number }[]).map((b) => b.start);
    const g = bookedTime(batchStarts, this.d.timing);
    const busyUntil = Math.max(nowS, ...rows.filter((b) => b.state === 'claimed' && busy.has(b.seq)).map((b) => b.windowEnd));
    const shiftS = Math.max(0, busyUntil - (ev.createdAt / 1000 + g(todo[0]!.item.plannedStart ?? 0)));
    for (const t of todo) {
      const { item: it, gen } = t;
      const key = `${ev.id}.${it.seq}.b${gen}`;
      const window = bookingWindow(ev.createdAt, batchStarts, it, shiftS, this.d.timing);
      const now = this.d.clock.now();
      this.d.fleet.db.prepare(`INSERT INTO evacuation_bookings (evacuation_id, seq, gen, batch, idem_key, state, reservation_id, jti, src, dst, link, mbps, window_start, window_end, migration_id, error, updated_at)
        VALUES (?, ?, ?, ?, ?, 'booking', NULL, NULL, ?, ?, ?, ?, ?, ?, NULL, NULL, ?)`).run(ev.id, it.seq, gen, it.batch, key, t.src, t.dst, it.link, it.rateMbps, window.start, window.end, now);
      const req: LightpathRequest = { migrationId: key, vmId: it.vmId, project: t.project, src: t.src, dst: t.dst, bandwidthMbps: it.rateMbps!, window };
      let grant: { token: string; jti: string; expiresAt: number } | undefined;
      try {
        grant = await this.d.aaa.authorize(req);
        this.d.fleet.db.prepare('UPDATE evacuation_bookings SET jti = ? WHERE evacuation_id = ? AND seq = ? AND gen = ?').run(grant.jti, ev.id, it.seq, gen);
        const { reservationId } = await this.base.book!(req, grant.token, { idempotencyKey: key });
        this.tokens.set(key, grant);
        this.set({ evacuationId: ev.id, seq: it.seq, gen }, { state: 'booked', reservationId });
      } catch (e) {
        const ve = toVmtcError(e);
        this.d.logger.info({ evacuationId: ev.id, vmId: it.vmId, code: ve.code }, 'move not booked ahead: it will reserve at its start');
        this.set({ evacuationId: ev.id, seq: it.seq, gen }, { state: 'failed', error: ve.toJSON() as unknown as Record<string, unknown> });
        if (grant) await this.closeGrant(grant.jti, { booking: key, step: 'booking-failed' });
      }
    }
  }

  /** Hand the move's booking to its migration: marked claimed (with the migration id) before it is
   *  returned, so recover() knows whose it is. Undefined when there is none fit for it. */
  async claim(m: BookingClaim): Promise<ClaimedLightpath | undefined> {
    const seq = m.evacuationId && m.requestId?.startsWith(`${m.evacuationId}/`) ? Number(m.requestId.split('/')[1]) : NaN;
    if (!m.evacuationId || !Number.isInteger(seq)) return undefined;
    const b = this.live(m.evacuationId, seq);
    if (!b || b.state !== 'booked' || !b.reservationId) return undefined;
    const grant = this.tokens.get(b.key);
    const nowS = this.d.clock.now() / 1000;
    const fits = grant && b.src === m.src && b.dst === m.dst && b.mbps >= m.bandwidthMbps && b.windowEnd - CLAIM_MARGIN_S > nowS;
    if (!fits) {
      await this.releaseOne(b, grant ? 'unfit' : 'token-lost');
      return undefined;
    }
    this.set(b, { state: 'claimed', migrationId: m.migrationId });
    this.tokens.delete(b.key);
    this.d.logger.info({ evacuationId: b.evacuationId, seq, migrationId: m.migrationId, reservationId: b.reservationId }, 'booked lightpath taken over');
    return { key: b.key, reservationId: b.reservationId, token: grant!.token, jti: grant!.jti, expiresAt: grant!.expiresAt };
  }

  /** Release the live bookings of an evacuation's items that `which` selects (default: all). */
  async releaseUnused(evacuationId: string, which: (seq: number) => boolean = () => true, reason = 'unused'): Promise<void> {
    for (const b of this.bookings(evacuationId)) {
      if ((b.state === 'booking' || b.state === 'booked') && which(b.seq)) await this.releaseOne(b, reason);
    }
  }

  /** After a restart: bookings whose token is gone are released (their moves are booked again by
   *  the evacuation), and so are bookings marked claimed whose migration never recorded them. */
  async recover(): Promise<void> {
    const rows = (this.d.fleet.db.prepare("SELECT * FROM evacuation_bookings WHERE state IN ('booking', 'booked', 'claimed')").all() as Raw[]).map(bookingRow);
    for (const b of rows) {
      if (b.state === 'claimed') {
        const m = b.migrationId ? this.d.store.migration(b.migrationId) : undefined;
        if (m && m.ctx.lightpath?.reservationId === b.reservationId) continue; // the migration's now
        await this.releaseOne(b, 'claim-not-recorded');
      } else if (!this.tokens.has(b.key)) await this.releaseOne(b, 'restart');
    }
  }

  private async releaseOne(b: BookingRow, reason: string): Promise<void> {
    try {
      const rid = b.reservationId ?? (this.base.find ? (await this.base.find(b.key))?.reservationId : undefined);
      if (rid) await this.base.teardown(rid, this.tokens.get(b.key)?.token ?? '');
      this.set(b, { state: 'released', ...(rid ? { reservationId: rid } : {}) });
      this.tokens.delete(b.key);
      if (b.jti) await this.closeGrant(b.jti, { booking: b.key, reservationId: rid, step: reason });
      this.d.logger.info({ evacuationId: b.evacuationId, seq: b.seq, reservationId: rid, reason }, 'booking released');
    } catch (e) {
      // Left as it is: the next pass (or restart) tries again.
      this.d.logger.warn({ evacuationId: b.evacuationId, seq: b.seq, code: toVmtcError(e).code }, 'booking not released');
    }
  }

  private async closeGrant(jti: string, details: Record<string, unknown>): Promise<void> {
    if (!this.d.aaa.release) return;
    await this.d.aaa.release(jti, details).catch((e: unknown) => this.d.logger.warn({ jti, code: toVmtcError(e).code }, 'booking grant not closed'));
  }
}
