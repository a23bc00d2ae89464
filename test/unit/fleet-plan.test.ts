// The evacuation scheduler (src/controller/fleet/evacuation-plan.ts), pure.
import { describe, it, expect } from 'vitest';
import { allAtOnceMakespan, moveSeconds, oneAtATimeMakespan, planEvacuation, type PlanInput, type PlanVm } from '../../src/controller/fleet/evacuation-plan.ts';

let seed = 11;
const rnd = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);

function fleet(n: number, dests: string[], dirty: () => number): PlanInput {
  const vms: PlanVm[] = Array.from({ length: n }, (_, i) => ({
    vmId: `v${i}`, sourceHostId: `s${i % 3}`, memoryMb: 512 * (1 + Math.floor(rnd() * 8)), vcpus: 1, diskGb: 0, dirtyMbps: dirty(),
    candidates: dests.map((hostId) => ({ hostId, path: 'live' as const })),
  }));
  return {
    vms, links: [{ id: 'ab', a: 'a', b: 'b', mbps: 1000 }, { id: 'ac', a: 'a', b: 'c', mbps: 10_000 }],
    hosts: [
      ...['s0', 's1', 's2'].map((hostId) => ({ hostId, site: 'a', free: { vcpus: 0, memoryMb: 0, diskGb: 0 } })),
      ...dests.map((hostId, i) => ({ hostId, site: i % 2 ? 'c' : 'b', free: { vcpus: 1000, memoryMb: 200_000, diskGb: 1000 } })),
    ],
    limits: { perSourceHost: 2, perDestinationHost: 2, perLightpath: 3 }, order: 'smallest-first', allowCold: false,
  };
}

/** The most items running at one instant per key (at every start). */
function peak(items: { start: number; end: number }[], key: (x: any) => string): number {
  let max = 0;
  for (const a of items) max = Math.max(max, items.filter((b) => key(b) === key(a) && b.start <= a.start && a.start < b.end).length);
  return max;
}

describe('evacuation plan', () => {
  it('places every VM once, within capacity, and never above a limit at any instant', () => {
    const inp = fleet(120, ['d0', 'd1', 'd2', 'd3'], () => Math.floor(rnd() * 100));
    const plan = planEvacuation(inp);
    expect(plan.unplaced).toEqual([]);
    expect(new Set(plan.items.map((i) => i.vmId)).size).toBe(120);
    expect(peak(plan.items, (x) => x.sourceHostId)).toBeLessThanOrEqual(2);
    expect(peak(plan.items, (x) => x.destinationHostId)).toBeLessThanOrEqual(2);
    expect(peak(plan.items, (x) => x.link)).toBeLessThanOrEqual(3);
    for (const d of ['d0', 'd1', 'd2', 'd3']) {
      const mem = plan.items.filter((i) => i.destinationHostId === d).reduce((s, i) => s + inp.vms.find((v) => v.vmId === i.vmId)!.memoryMb, 0);
      expect(mem).toBeLessThanOrEqual(200_000);
    }
    // Items are in start order, each batch's bookings never above its lightpath.
    expect(plan.items.map((i) => i.start)).toEqual([...plan.items.map((i) => i.start)].sort((a, b) => a - b));
    for (const it of plan.items) {
      const onLink = plan.items.filter((o) => o.link === it.link && o.start <= it.start && it.start < o.end).reduce((s, o) => s + o.rateMbps, 0);
      expect(onLink).toBeLessThanOrEqual(it.link === 'a~b' || it.link === 'ab' ? 1000 + 1e-6 : 10_000 + 1e-6);
    }
    expect(plan.batches.flatMap((b) => b.vmIds).sort()).toEqual(plan.items.map((i) => i.vmId).sort());
    expect(plan.makespan).toBeGreaterThanOrEqual(plan.bound.bound);
  });

  it('a capacity the fleet cannot hold leaves VMs unplaced with a reason', () => {
    const inp = fleet(10, ['d0'], () => 0);
    inp.hosts.find((h) => h.hostId === 'd0')!.free.memoryMb = 2048;
    const plan = planEvacuation(inp);
    expect(plan.items.length).toBeGreaterThan(0);
    expect(plan.unplaced.length).toBe(10 - plan.items.length);
    expect(plan.unplaced.every((u) => u.reason === 'no-capacity-left')).toBe(true);
    expect(planEvacuation({ ...inp, vms: [{ ...inp.vms[0]!, candidates: [] }] }).unplaced).toEqual([{ vmId: 'v0', reason: 'no-feasible-host' }]);
  });

  it('equal quiet VMs on one lightpath: the makespan is the bound (bytes ÷ bandwidth)', () => {
    const vms: PlanVm[] = Array.from({ length: 12 }, (_, i) => ({ vmId: `v${i}`, sourceHostId: 's', memoryMb: 1000, vcpus: 1, diskGb: 0, dirtyMbps: 0, candidates: [{ hostId: 'd', path: 'live' }] }));
    const plan = planEvacuation({
      vms, links: [{ a: 'a', b: 'b', mbps: 1000 }], order: 'smallest-first', allowCold: false,
      hosts: [{ hostId: 's', site: 'a', free: { vcpus: 0, memoryMb: 0, diskGb: 0 } }, { hostId: 'd', site: 'b', free: { vcpus: 100, memoryMb: 100_000, diskGb: 100 } }],
      limits: { perSourceHost: 4, perDestinationHost: 4, perLightpath: 4 },
    });
    expect(plan.makespan).toBeCloseTo(plan.bound.bytesBound, 3);
    expect(plan.batches).toHaveLength(3);
    expect(plan.batches[0]!.bookings).toEqual([{ link: 'a~b', mbps: 1000, start: 0, end: plan.batches[0]!.bookings[0]!.end }]);
    const byId = new Map(vms.map((v) => [v.vmId, v]));
    // With no dirtying, one at a time at the whole link takes as long; all at once too.
    expect(oneAtATimeMakespan(plan, byId, 4)).toBeCloseTo(plan.makespan, 3);
    expect(allAtOnceMakespan(plan, byId, 4).makespan).toBeCloseTo(plan.makespan, 3);
  });

  it('orders smallest and least dirty first, or by priority', () => {
    const vms: PlanVm[] = [
      { vmId: 'big', sourceHostId: 's', memoryMb: 4000, vcpus: 1, diskGb: 0, dirtyMbps: 0, priority: 5, candidates: [{ hostId: 'd', path: 'live' }] },
      { vmId: 'dirty', sourceHostId: 's', memoryMb: 1000, vcpus: 1, diskGb: 0, dirtyMbps: 50, priority: 1, candidates: [{ hostId: 'd', path: 'live' }] },
      { vmId: 'quiet', sourceHostId: 's', memoryMb: 1000, vcpus: 1, diskGb: 0, dirtyMbps: 0, priority: 0, candidates: [{ hostId: 'd', path: 'live' }] },
    ];
    const base: PlanInput = {
      vms, links: [{ a: 'a', b: 'b', mbps: 1000 }], order: 'smallest-first', allowCold: false,
      hosts: [{ hostId: 's', site: 'a', free: { vcpus: 0, memoryMb: 0, diskGb: 0 } }, { hostId: 'd', site: 'b', free: { vcpus: 100, memoryMb: 100_000, diskGb: 100 } }],
      limits: { perSourceHost: 1, perDestinationHost: 1, perLightpath: 1 },
    };
    expect(planEvacuation(base).items.map((i) => i.vmId)).toEqual(['quiet', 'dirty', 'big']);
    expect(planEvacuation({ ...base, order: 'priority' }).items.map((i) => i.vmId)).toEqual(['big', 'dirty', 'quiet']);
  });

  it('a VM dirtying faster than its share moves cold when allowed, else stays unplaced', () => {
    const vms: PlanVm[] = [{ vmId: 'hot', sourceHostId: 's', memoryMb: 1000, vcpus: 1, diskGb: 1, dirtyMbps: 600, candidates: [{ hostId: 'd', path: 'live' }] }];
    const base: PlanInput = {
      vms, links: [{ a: 'a', b: 'b', mbps: 1000 }], order: 'smallest-first', allowCold: false,
      hosts: [{ hostId: 's', site: 'a', free: { vcpus: 0, memoryMb: 0, diskGb: 0 } }, { hostId: 'd', site: 'b', free: { vcpus: 100, memoryMb: 100_000, diskGb: 100 } }],
      limits: { perSourceHost: 2, perDestinationHost: 2, perLightpath: 2 },
    };
    expect(planEvacuation(base).unplaced).toEqual([{ vmId: 'hot', reason: 'does-not-converge' }]);
    const cold = planEvacuation({ ...base, allowCold: true });
    expect(cold.items[0]!.path).toBe('cold');
    expect(cold.items[0]!.end).toBeCloseTo(moveSeconds(vms[0]!, 'cold', 500), 3);
  });

  it('sends the bulk over the faster lightpath (earliest finish), close to the bound', () => {
    seed = 3;
    const inp = fleet(200, ['d0', 'd1', 'd2', 'd3'], () => Math.floor(rnd() * 30));
    // Host limits loose enough that the lightpaths are the bottleneck (the bound knows only them).
    const plan = planEvacuation({ ...inp, limits: { perSourceHost: 4, perDestinationHost: 3, perLightpath: 3 } });
    const fast = plan.items.filter((i) => i.link === 'ac').length;
    expect(fast).toBeGreaterThan(plan.items.length * 0.8);
    expect(plan.makespan / plan.bound.bound).toBeLessThan(1.15);
  });
});
