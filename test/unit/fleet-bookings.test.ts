// The booked time line of an evacuation (src/controller/fleet/bookings.ts bookingWindow): moves
// that follow each other on one lightpath slot in the plan never overlap in the broker's
// calendar, every window covers its planned one with at least the slack, and a late booking
// keeps the spacing; and the fleet options `vmtc controller --fleet` reads (options.ts).
import { describe, it, expect } from 'vitest';
import { bookingWindow, BOOKING_TIMING } from '../../src/controller/fleet/bookings.ts';
import { planEvacuation, type PlanVm } from '../../src/controller/fleet/evacuation-plan.ts';
import { parseFleetOptions } from '../../src/controller/fleet/options.ts';
import { VmtcError } from '../../src/common/errors.ts';

const GiB = 1024;

function plan(perLightpath: number) {
  const vms: PlanVm[] = Array.from({ length: 12 }, (_, i) => ({
    vmId: `v${i}`, sourceHostId: 'A', memoryMb: (1 + (i % 5)) * GiB, vcpus: 1, diskGb: 0, dirtyMbps: 10 * (i % 3),
    candidates: [{ hostId: 'B', path: 'live' as const }],
  }));
  return planEvacuation({
    vms, links: [{ a: 's1', b: 's2', mbps: 1000 }], limits: { perSourceHost: 12, perDestinationHost: 12, perLightpath }, order: 'smallest-first', allowCold: false,
    hosts: [{ hostId: 'A', site: 's1', free: { vcpus: 64, memoryMb: 256 * GiB, diskGb: 1000 } }, { hostId: 'B', site: 's2', free: { vcpus: 64, memoryMb: 256 * GiB, diskGb: 1000 } }],
  });
}

describe('bookingWindow', () => {
  for (const perLightpath of [1, 2, 3]) {
    it(`never books more than the lightpath at one instant (perLightpath ${perLightpath}) and covers each planned window with the slack`, () => {
      const p = plan(perLightpath);
      expect(p.items).toHaveLength(12);
      const t0 = 1_800_000_000_123;
      const starts = p.batches.map((b) => b.start);
      const w = p.items.map((it) => ({ it, ...bookingWindow(t0, starts, { plannedStart: it.start, plannedEnd: it.end }) }));
      for (const x of w) {
        expect(x.start).toBeGreaterThanOrEqual(Math.round(t0 / 1000 + x.it.start) - 1);
        expect(x.end).toBeGreaterThanOrEqual(t0 / 1000 + x.it.end);
        expect(x.end - x.start).toBeGreaterThanOrEqual(Math.floor(BOOKING_TIMING.stretch * (x.it.end - x.it.start) + BOOKING_TIMING.slackS) - 1);
      }
      // The booked Mbit/s at every window start stays within the lightpath (half-open windows).
      for (const a of w) {
        const load = w.filter((b) => b.start <= a.start && a.start < b.end).reduce((s, b) => s + b.it.rateMbps, 0);
        expect(load, `at ${a.start}`).toBeLessThanOrEqual(1000 + 1e-6);
      }
    });
  }

  it('shifted together, late bookings keep their order and spacing', () => {
    const p = plan(1);
    const starts = p.batches.map((b) => b.start);
    const a = p.items.map((it) => bookingWindow(0, starts, { plannedStart: it.start, plannedEnd: it.end }));
    const b = p.items.map((it) => bookingWindow(0, starts, { plannedStart: it.start, plannedEnd: it.end }, 500));
    expect(b.map((x, i) => [x.start - a[i]!.start, x.end - a[i]!.end])).toEqual(a.map(() => [500, 500]));
  });
});

describe('parseFleetOptions', () => {
  it('takes links and booking timing', () => {
    expect(parseFleetOptions({ links: [{ a: 'x', b: 'y', mbps: 10000, id: 'xy', distance: 2 }], booking: { slackS: 30 } }))
      .toEqual({ links: [{ a: 'x', b: 'y', mbps: 10000, id: 'xy', distance: 2 }], booking: { slackS: 30 } });
    expect(parseFleetOptions({})).toEqual({});
  });

  it('refuses each bad field with VMTC_CONFIG_INVALID naming it', () => {
    const cases: [unknown, string][] = [
      [[], 'fleet'],
      [{ link: [] }, 'fleet.link'],
      [{ links: {} }, 'fleet.links'],
      [{ links: [{ a: 'x', b: 'y' }] }, 'fleet.links[0].mbps'],
      [{ links: [{ a: 'x', b: 'x', mbps: 1 }] }, 'fleet.links[0].b'],
      [{ links: [{ a: 'x', b: 'y', mbps: 1, speed: 2 }] }, 'fleet.links[0].speed'],
      [{ links: [{ a: 'x', b: 'y', mbps: 1, available: 'yes' }] }, 'fleet.links[0].available'],
      [{ booking: { stretch: 0.5 } }, 'fleet.booking.stretch'],
      [{ booking: { slackS: -1 } }, 'fleet.booking.slackS'],
    ];
    for (const [v, field] of cases) {
      let e: unknown;
      try { parseFleetOptions(v); } catch (x) { e = x; }
      expect(e, field).toBeInstanceOf(VmtcError);
      expect({ code: (e as VmtcError).code, field: (e as VmtcError).details?.field }).toEqual({ code: 'VMTC_CONFIG_INVALID', field });
    }
  });
});
