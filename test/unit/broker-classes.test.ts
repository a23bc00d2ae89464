// The broker's reservation classes (src/broker/classes.ts, calendar.ts; docs/broker.md "Classes"):
// a background booking gets only what migration bookings leave, instant by instant, shared in
// admission order with floors; a migration is admitted as if background bookings were not there.
import { describe, expect, it } from 'vitest';
import { backgroundGrants, classAllowed, type BackgroundBooking } from '../../src/broker/classes.ts';
import { Calendar } from '../../src/broker/calendar.ts';

const bg = (id: string, mbps: number, o: Partial<BackgroundBooking> = {}): BackgroundBooking => ({ id, links: ['l1'], start: 0, end: 100, mbps, minMbps: 0, ...o });

describe('backgroundGrants (pure)', () => {
  it('serves background bookings in order from what migrations leave, each up to what it asked', () => {
    const g = backgroundGrants(10, [bg('a', 300), bg('b', 500), bg('c', 400)], () => 1000);
    expect(Object.fromEntries(g)).toEqual({ a: 300, b: 500, c: 200 });
  });

  it('takes the narrowest link of the path and counts each link once per booking', () => {
    const left: Record<string, number> = { l1: 1000, l2: 250 };
    const g = backgroundGrants(10, [bg('a', 300, { links: ['l1', 'l2'] }), bg('b', 300, { links: ['l1'] })], (l) => left[l]!);
    expect(Object.fromEntries(g)).toEqual({ a: 250, b: 300 });
  });

  it('a grant below the floor is 0 (suspended) and leaves its share to the ones after it', () => {
    const g = backgroundGrants(10, [bg('a', 300, { minMbps: 100 }), bg('b', 300, { minMbps: 10 })], () => 60);
    expect(Object.fromEntries(g)).toEqual({ a: 0, b: 60 });
  });

  it('a booking whose window does not hold the instant gets 0, and takes nothing', () => {
    const g = backgroundGrants(150, [bg('past', 300), bg('now', 300, { start: 100, end: 200 })], () => 1000);
    expect(Object.fromEntries(g)).toEqual({ past: 0, now: 300 });
  });

  it('nothing is granted where migrations took everything (or more)', () => {
    expect(backgroundGrants(10, [bg('a', 300)], () => -5).get('a')).toBe(0);
  });
});

describe('classAllowed', () => {
  it('a background token books only background; a token without a class books either', () => {
    expect(classAllowed('background', 'background')).toBe(true);
    expect(classAllowed('background', 'migration')).toBe(false);
    expect(classAllowed(undefined, 'background')).toBe(true);
    expect(classAllowed(undefined, 'migration')).toBe(true);
    expect(classAllowed('migration', 'migration')).toBe(true);
  });
});

describe('Calendar with both classes', () => {
  const cal = () => new Calendar(() => 1000);

  it('a migration is admitted at full bandwidth over a link a background booking fills; the background one is squeezed for the migration window only', () => {
    const c = cal();
    expect(c.bookBackground(bg('seed', 1000, { start: 0, end: 1000 }), 0)).toBe(true);
    expect(c.grantsAt(5).get('seed')).toBe(1000);
    // Background traffic does not count against a migration's admission.
    expect(c.fits(['l1'], 100, 200, 900)).toBe(true);
    expect(c.book({ id: 'mig', links: ['l1'], start: 100, end: 200, mbps: 900 })).toBe(true);
    expect(c.grantsAt(50).get('seed')).toBe(1000);
    expect(c.grantsAt(150).get('seed')).toBe(100);
    expect(c.grantsAt(200).get('seed')).toBe(1000);
    // The instants a grant may change: the migration's start, then its end, then the seed's end.
    expect(c.nextGrantChange(0)).toBe(100);
    expect(c.nextGrantChange(100)).toBe(200);
    expect(c.nextGrantChange(200)).toBe(1000);
    // A second migration takes the rest: the seed is suspended, never the migration refused.
    expect(c.book({ id: 'mig2', links: ['l1'], start: 120, end: 180, mbps: 100 })).toBe(true);
    expect(c.grantsAt(150).get('seed')).toBe(0);
    // Freed again when the migrations go.
    c.unbook('mig');
    c.unbook('mig2');
    expect(c.grantsAt(150).get('seed')).toBe(1000);
  });

  it('a background booking is admitted only from what migrations leave at its first instant, above its floor', () => {
    const c = cal();
    expect(c.book({ id: 'mig', links: ['l1'], start: 0, end: 100, mbps: 1000 })).toBe(true);
    expect(c.bookBackground(bg('seed', 100), 10)).toBe(false);
    expect(c.has('seed')).toBe(false);
    c.unbook('mig');
    expect(c.book({ id: 'mig', links: ['l1'], start: 0, end: 100, mbps: 950 })).toBe(true);
    expect(c.bookBackground(bg('seed', 100, { minMbps: 60 }), 10)).toBe(false);
    expect(c.bookBackground(bg('seed', 100, { minMbps: 50 }), 10)).toBe(true);
    expect(c.grantsAt(10).get('seed')).toBe(50);
    // A second background booking finds nothing left.
    expect(c.bookBackground(bg('seed2', 100), 10)).toBe(false);
  });

  it('background bookings never change what migrations see as free, and unbook frees them', () => {
    const c = cal();
    const v0 = c.version;
    c.forceBackground(bg('seed', 700));
    expect(c.version).toBeGreaterThan(v0);
    expect(c.free('l1', 0, 100)).toBe(1000);
    expect(c.peak('l1', 0, 100)).toBe(0);
    expect(c.unbook('seed')).toBe(true);
    expect(c.has('seed')).toBe(false);
    expect(c.backgroundIds).toEqual([]);
  });
});
