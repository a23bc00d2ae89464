// Reservation classes (docs/broker.md "Classes"): `migration` (the default) is booked in the
// calendar (calendar.ts) and admitted against migration bookings only; `background` (replica
// seeding and deltas) gets only what the migration bookings leave, and is squeezed, down to 0
// (suspended), when a migration is admitted over its links. Pure: the capacity left by the
// migration bookings at the instant comes in as a function.
//
// At an instant t, the background bookings active then ([start, end) contains t) are served in
// admission order: each gets min(its bandwidth, what is left on every link of its path after the
// migration bookings and the background bookings before it); a grant below its floor (minMbps)
// is 0, so a reservation that cannot get a useful rate leaves what it would take to the ones after it.

export type ReservationClass = 'migration' | 'background';
export const RESERVATION_CLASSES: readonly ReservationClass[] = ['migration', 'background'];

export interface BackgroundBooking {
  id: string;
  links: string[];
  /** Epoch seconds, half-open [start, end). */
  start: number;
  end: number;
  /** What it asks for: the most it is ever granted. */
  mbps: number;
  /** Below this it gets 0 (suspended); 0 = any rate above 0 will do. */
  minMbps: number;
}

const EPS = 1e-9;

/** The grant of each background booking at instant t, in the order given (the admission order). */
export function backgroundGrants(t: number, bookings: readonly BackgroundBooking[], leftByMigrations: (linkId: string) => number): Map<string, number> {
  const left = new Map<string, number>();
  const leftOf = (l: string) => {
    let v = left.get(l);
    if (v === undefined) left.set(l, (v = Math.max(0, leftByMigrations(l))));
    return v;
  };
  const out = new Map<string, number>();
  for (const b of bookings) {
    if (!(b.start <= t && t < b.end)) {
      out.set(b.id, 0);
      continue;
    }
    let g = b.mbps;
    for (const l of b.links) g = Math.min(g, leftOf(l));
    if (g < Math.max(b.minMbps, EPS)) g = 0;
    // Whole kbit/s: a grant is a rate told to a holder, not a float's noise.
    g = Math.floor(g * 1000 + EPS) / 1000;
    out.set(b.id, g);
    if (g > 0) for (const l of b.links) left.set(l, leftOf(l) - g);
  }
  return out;
}

/** Whether a token's class allows a request's: a background token reserves only background; a
 *  token without a class (every migration's) may reserve either. */
export function classAllowed(tokenClass: ReservationClass | undefined, requested: ReservationClass): boolean {
  return tokenClass !== 'background' || requested === 'background';
}
