// The bandwidth calendar: for every link, the booked load as a step function of time, so that
// "is there room for B Mbps on this link over [s, e)?" is a binary search plus a scan of the
// breakpoints inside the window (not of every booking on the link). A link is never booked past
// its capacity at any instant: admission checks the *peak* of the overlapping bookings over the
// whole window, not their sum or their load at the start.
//
// Times are plain numbers (the broker uses epoch seconds). Windows are half-open [start, end).
//
// Two classes (classes.ts): migration bookings are the step functions above; background bookings
// are kept apart and never counted against a migration's admission: each gets, instant by
// instant, what the migration bookings leave (grantsAt), so a migration admitted over them
// squeezes them instead of being refused.

import { backgroundGrants, type BackgroundBooking } from './classes.ts';

const EPS = 1e-9;

/** Booked load on one link as a step function: loads[i] holds on [times[i], times[i+1]). */
export class StepLoad {
  readonly times: number[] = [];
  readonly loads: number[] = [];

  /** Index of the last breakpoint <= t, or -1. */
  private floor(t: number): number {
    let lo = 0, hi = this.times.length - 1, ans = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (this.times[mid]! <= t) { ans = mid; lo = mid + 1; } else hi = mid - 1;
    }
    return ans;
  }

  private ensureBreak(t: number): number {
    const i = this.floor(t);
    if (i >= 0 && this.times[i] === t) return i;
    const load = i >= 0 ? this.loads[i]! : 0;
    this.times.splice(i + 1, 0, t);
    this.loads.splice(i + 1, 0, load);
    return i + 1;
  }

  /** Highest load at any instant of [start, end). */
  peak(start: number, end: number): number {
    let i = this.floor(start);
    let max = i >= 0 ? this.loads[i]! : 0;
    for (i = i + 1; i < this.times.length && this.times[i]! < end; i++) if (this.loads[i]! > max) max = this.loads[i]!;
    return max;
  }

  add(start: number, end: number, mbps: number): void {
    const i = this.ensureBreak(start);
    const j = this.ensureBreak(end);
    for (let k = i; k < j; k++) {
      const v = this.loads[k]! + mbps;
      this.loads[k] = Math.abs(v) < EPS ? 0 : v;
    }
    // Merge breakpoints that no longer change the load, so freed bookings leave nothing behind.
    for (const t of [end, start]) {
      const k = this.floor(t);
      if (k < 0 || this.times[k] !== t) continue;
      const prev = k > 0 ? this.loads[k - 1]! : 0;
      if (this.loads[k] === prev) { this.times.splice(k, 1); this.loads.splice(k, 1); }
    }
  }

  get breakpoints(): number {
    return this.times.length;
  }

  /** The load at instant t. */
  at(t: number): number {
    const i = this.floor(t);
    return i >= 0 ? this.loads[i]! : 0;
  }

  /** The first breakpoint after t (Infinity if none). */
  nextAfter(t: number): number {
    const i = this.floor(t) + 1;
    return i < this.times.length ? this.times[i]! : Infinity;
  }
}

export interface Booking {
  id: string;
  links: string[];
  start: number;
  end: number;
  mbps: number;
}

export class Calendar {
  private readonly perLink = new Map<string, StepLoad>();
  private readonly bookings = new Map<string, Booking>();
  /** Background-class bookings (classes.ts), in admission order: never in perLink, so migration
   *  admission does not see them. */
  private readonly background = new Map<string, BackgroundBooking>();
  /** Increases on every change of either class (the service re-computes background grants). */
  version = 0;

  constructor(private readonly capacity: (linkId: string) => number) {}

  /** Free bandwidth on a link over the whole window (capacity minus the peak booked load). */
  free(linkId: string, start: number, end: number): number {
    const load = this.perLink.get(linkId);
    return this.capacity(linkId) - (load ? load.peak(start, end) : 0);
  }

  fits(links: string[], start: number, end: number, mbps: number): boolean {
    return links.every((l) => this.free(l, start, end) + EPS >= mbps);
  }

  /**
   * Book `mbps` on every link over [start, end), all or nothing. Synchronous: the check and the
   * booking happen in one turn of the event loop, so concurrent requests cannot both pass the check.
   */
  book(b: Booking): boolean {
    if (this.bookings.has(b.id)) return true;
    if (!this.fits(b.links, b.start, b.end, b.mbps)) return false;
    this.force(b);
    return true;
  }

  /** Book without checking (rebuilding the calendar from the store at start). */
  force(b: Booking): void {
    if (this.bookings.has(b.id)) return;
    for (const l of b.links) {
      let load = this.perLink.get(l);
      if (!load) this.perLink.set(l, (load = new StepLoad()));
      load.add(b.start, b.end, b.mbps);
    }
    this.bookings.set(b.id, { ...b, links: [...b.links] });
    this.version++;
  }

  unbook(id: string): boolean {
    if (this.background.delete(id)) {
      this.version++;
      return true;
    }
    const b = this.bookings.get(id);
    if (!b) return false;
    for (const l of b.links) this.perLink.get(l)?.add(b.start, b.end, -b.mbps);
    this.bookings.delete(id);
    this.version++;
    return true;
  }

  has(id: string): boolean {
    return this.bookings.has(id) || this.background.has(id);
  }

  // ---- the background class (classes.ts): what the migration bookings leave, shared in order

  /** Capacity of a link left by migration bookings at instant t. */
  leftAt(linkId: string, t: number): number {
    return this.capacity(linkId) - (this.perLink.get(linkId)?.at(t) ?? 0);
  }

  /** Grants of the background bookings at instant t (0 for those not active then). */
  grantsAt(t: number): Map<string, number> {
    return backgroundGrants(t, [...this.background.values()], (l) => this.leftAt(l, t));
  }

  /** What a new background booking over `links` would be granted at instant t. */
  wouldGrant(b: Omit<BackgroundBooking, 'id'>, t: number): number {
    return this.grantOf({ ...b, id: '\0new' }, t, [...this.background.values(), { ...b, id: '\0new' }]);
  }

  /** Book a background reservation if it would be granted at least its floor (and more than 0)
   *  at `t0` (its first instant); false and nothing booked otherwise. */
  bookBackground(b: BackgroundBooking, t0: number): boolean {
    if (this.background.has(b.id)) return true;
    if (!(this.wouldGrant(b, t0) > 0)) return false;
    this.forceBackground(b);
    return true;
  }

  /** Book without checking (rebuilding the calendar from the store at start). */
  forceBackground(b: BackgroundBooking): void {
    if (this.background.has(b.id)) return;
    this.background.set(b.id, { ...b, links: [...b.links] });
    this.version++;
  }

  /** The grant of background booking `id` (booked or not) at instant t. */
  grantOf(b: BackgroundBooking, t: number, all: BackgroundBooking[] = [...this.background.values()]): number {
    return backgroundGrants(t, all, (l) => this.leftAt(l, t)).get(b.id) ?? 0;
  }

  /** The first instant after t at which some background grant may change: a breakpoint of the
   *  migration load on a background booking's links, or a background window's start or end. */
  nextGrantChange(t: number): number {
    let next = Infinity;
    for (const b of this.background.values()) {
      if (b.end <= t) continue;
      if (b.start > t) next = Math.min(next, b.start);
      else next = Math.min(next, b.end);
      for (const l of b.links) next = Math.min(next, this.perLink.get(l)?.nextAfter(t) ?? Infinity);
    }
    return next;
  }

  get backgroundIds(): string[] {
    return [...this.background.keys()];
  }

  /** Peak booked load on a link over a window (for tests and GET /v1/links). */
  peak(linkId: string, start: number, end: number): number {
    return this.perLink.get(linkId)?.peak(start, end) ?? 0;
  }

  get size(): number {
    return this.bookings.size + this.background.size;
  }
}
