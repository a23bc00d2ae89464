// The monitoring planners (src/controller/monitoring/): the hotspot detector's k-of-n window,
// SandPiper's volume and volume-to-size ranking, the least loaded feasible destination,
// consolidation packing and "follow the moon". Pure functions over synthetic fleets.
import { describe, expect, it } from 'vitest';
import type { HostInventory, VmInfo } from '../../src/common/agent-protocol.ts';
import { detectHotspots, planHotspots, type HostObservation } from '../../src/controller/monitoring/hotspots.ts';
import { planConsolidation } from '../../src/controller/monitoring/consolidation.ts';
import { isNight, moonRank, volume, type Fleet, type Use } from '../../src/controller/monitoring/model.ts';
import { monitoringOptions } from '../../src/controller/monitoring/options.ts';
import { profileOf } from '../../src/controller/monitoring/profile.ts';

const vm = (vmId: string, memoryMb = 1024, vcpus = 2): VmInfo => ({
  vmId, project: 'p', state: 'running', vcpus, memoryMb, diskGb: 1, spec: { vmId, project: 'p', vcpus, memoryMb, diskGb: 1 },
});
const host = (hostId: string, vms: VmInfo[], site = `site-${hostId}`, over: Partial<HostInventory> = {}): HostInventory => ({
  hostId, site, hypervisor: { type: 'double', version: '1.0.0' }, cpu: { model: 'm', features: ['a'], vcpus: 8 },
  memoryMb: 16_384, diskGb: 100, sharedStorage: true, vms, agentVersion: 't', ...over,
});

/** A fleet where each VM's use is given (cores, MiB, Mbit/s) and each host's is the sum of its VMs'. */
function fleet(hosts: HostInventory[], use: Record<string, Use>, extra: Partial<Fleet> = {}): Fleet {
  const hostUse = new Map<string, Use>();
  for (const h of hosts) {
    const u = { cpu: 0, memory: 0, net: 0 };
    for (const v of h.vms) { const x = use[v.vmId]!; u.cpu += x.cpu; u.memory += x.memory; u.net += x.net; }
    hostUse.set(h.hostId, u);
  }
  return {
    hosts: hosts.map((inventory) => ({ inventory, connected: true })), holds: [], inFlight: new Set(), hostUse,
    vmLoad: new Map(Object.entries(use).map(([vmId, u]) => [vmId, { vmId, use: u }])), ...extra,
  };
}

const obs = (shares: [number, number, number][]): HostObservation[] => shares.map(([cpu, memory, net], i) => ({ at: 1000 * (i + 1), shares: { cpu, memory, net } }));

describe('hotspot detector (k of n)', () => {
  const o = monitoringOptions({ thresholds: { cpu: 0.75, memory: 0.9, net: 0.75 }, sustain: { k: 3, n: 5 } });

  it('flags a resource over its threshold in k of the last n observations, detected at the k-th', () => {
    const hs = detectHotspots(new Map([['h1', obs([[0.2, 0.1, 0], [0.9, 0.1, 0], [0.5, 0.1, 0], [0.95, 0.1, 0], [0.8, 0.1, 0]])]]), o);
    expect(hs).toHaveLength(1);
    expect(hs[0]!.resources).toEqual([{ resource: 'cpu', over: 3, of: 5, latest: 0.8, threshold: 0.75 }]);
    expect(hs[0]!.detectedAt).toBe(5000);
  });

  it('does not flag k-1 overs, nor overs that fell out of the window', () => {
    expect(detectHotspots(new Map([['h1', obs([[0.9, 0, 0], [0.9, 0, 0], [0.1, 0, 0], [0.1, 0, 0], [0.1, 0, 0]])]]), o)).toEqual([]);
    // Two more readings push the first two overs out of the last 5.
    expect(detectHotspots(new Map([['h1', obs([[0.9, 0, 0], [0.9, 0, 0], [0.9, 0, 0], [0.1, 0, 0], [0.1, 0, 0], [0.1, 0, 0], [0.9, 0, 0]])]]), o)).toEqual([]);
    expect(detectHotspots(new Map([['h1', obs([[0.9, 0, 0], [0.9, 0, 0], [0.1, 0, 0]])]]), o)).toEqual([]);
  });

  it('thresholds are per resource and configurable', () => {
    const mem = obs([[0, 0.95, 0], [0, 0.95, 0], [0, 0.95, 0]]);
    expect(detectHotspots(new Map([['h', mem]]), o)[0]!.resources.map((r) => r.resource)).toEqual(['memory']);
    expect(detectHotspots(new Map([['h', mem]]), monitoringOptions({ thresholds: { memory: 0.96 } as never }))).toEqual([]);
    expect(() => monitoringOptions({ sustain: { k: 6, n: 5 } })).toThrow(/sustain.k/);
  });
});

describe('volume and the migration manager', () => {
  const o = monitoringOptions({ sustain: { k: 1, n: 1 } });

  it("SandPiper's volume grows with every resource's share", () => {
    expect(volume({ cpu: 0, memory: 0, net: 0 })).toBe(1);
    expect(volume({ cpu: 0.5, memory: 0, net: 0 })).toBe(2);
    expect(volume({ cpu: 0.5, memory: 0.5, net: 0.5 })).toBe(8);
    expect(Number.isFinite(volume({ cpu: 1, memory: 1, net: 1 }))).toBe(true);
  });

  it('moves the highest volume-to-size VM first, to the least loaded feasible host, until the hotspot is relieved', () => {
    // h1: 7.2 of 8 cores busy (0.9). big: 4 cores but 8 GiB; small: 2 cores in 1 GiB (higher VSR).
    const hosts = [host('h1', [vm('big', 8192, 4), vm('small', 1024, 2), vm('idle', 1024, 1)]), host('h2', [vm('x', 1024, 2)]), host('h3', [vm('y', 1024, 2)])];
    const f = fleet(hosts, { big: { cpu: 4, memory: 4096, net: 0 }, small: { cpu: 2, memory: 512, net: 0 }, idle: { cpu: 1.2, memory: 512, net: 0 }, x: { cpu: 3, memory: 512, net: 0 }, y: { cpu: 1, memory: 512, net: 0 } });
    const hs = detectHotspots(new Map([['h1', [{ at: 1, shares: { cpu: 0.9, memory: 0.3, net: 0 } }]]]), o);
    const plan = planHotspots(f, hs, o, 0);
    // small alone brings h1 to 5.2/8 = 0.65 < 0.75: one move, to h3 (less loaded than h2).
    expect(plan.moves.map((m) => [m.vmId, m.from, m.to])).toEqual([['small', 'h1', 'h3']]);
    expect(plan.moves[0]!.vsr).toBeGreaterThan(0);
    expect(plan.unresolved).toEqual([]);
  });

  it('skips destinations that fail the admission pre-checks or would become hot, and reports what it cannot relieve', () => {
    const hosts = [
      host('h1', [vm('a', 1024, 2)]),
      host('h2', [], 's2', { hypervisor: { type: 'qemu', version: '10.0.0' } }), // another hypervisor
      host('h3', [vm('z', 1024, 2)]),
    ];
    const f = fleet(hosts, { a: { cpu: 5, memory: 512, net: 0 }, z: { cpu: 6, memory: 512, net: 0 } });
    (f.hostUse as Map<string, Use>).set('h1', { cpu: 7, memory: 512, net: 0 }); // the host's own overhead on top
    const hs = detectHotspots(new Map([['h1', [{ at: 1, shares: { cpu: 0.875, memory: 0, net: 0 } }]]]), o);
    const plan = planHotspots(f, hs, o, 0);
    expect(plan.moves).toEqual([]);
    expect(plan.unresolved.map((u) => u.hostId)).toEqual(['h1']);
    // With h3 idle, a goes there (h2 still refused: hypervisor mismatch).
    const f2 = fleet(hosts, { a: { cpu: 5, memory: 512, net: 0 }, z: { cpu: 0, memory: 512, net: 0 } });
    (f2.hostUse as Map<string, Use>).set('h1', { cpu: 7, memory: 512, net: 0 });
    expect(planHotspots(f2, hs, o, 0).moves.map((m) => m.to)).toEqual(['h3']);
    // A VM with a migration in flight is never planned.
    expect(planHotspots({ ...f2, inFlight: new Set(['a']) }, hs, o, 0).moves).toEqual([]);
  });
});

describe('consolidation and follow the moon', () => {
  const base = { sustain: { k: 1, n: 1 }, consolidateBelow: 0.3, packTo: 0.6 };

  it('packs the least loaded hosts onto the others and reports the emptied ones for power-down', () => {
    const hosts = [host('h1', [vm('a'), vm('b')]), host('h2', [vm('c')]), host('h3', [vm('d')])];
    const u = { cpu: 0.5, memory: 1024, net: 0 };
    const f = fleet(hosts, { a: u, b: u, c: u, d: u });
    const plan = planConsolidation(f, monitoringOptions(base), 0);
    expect(plan.fleetLoad).toBeLessThan(0.3);
    // h2 and h3 (one VM each) are emptied into h1, the fullest that takes them.
    expect(plan.powerDown.sort()).toEqual(['h2', 'h3']);
    expect(plan.moves.map((m) => [m.vmId, m.to]).sort()).toEqual([['c', 'h1'], ['d', 'h1']]);
  });

  it('does nothing while the fleet is busy, and never past packTo', () => {
    const hosts = [host('h1', [vm('a')]), host('h2', [vm('b')])];
    const busy = planConsolidation(fleet(hosts, { a: { cpu: 4, memory: 1024, net: 0 }, b: { cpu: 4, memory: 1024, net: 0 } }), monitoringOptions(base), 0);
    expect(busy.moves).toEqual([]);
    expect(busy.reason).toMatch(/not below/);
    // Each host at 0.25 CPU: together 0.5 fits packTo 0.6; with packTo 0.4 it does not.
    const f = fleet(hosts, { a: { cpu: 2, memory: 1024, net: 0 }, b: { cpu: 2, memory: 1024, net: 0 } });
    expect(planConsolidation(f, monitoringOptions(base), 0).powerDown).toHaveLength(1);
    expect(planConsolidation(f, monitoringOptions({ ...base, packTo: 0.4 }), 0).powerDown).toEqual([]);
  });

  it('follow the moon: night is by the site offset; day sites are emptied first into night sites', () => {
    const o = monitoringOptions({ ...base, followTheMoon: true, siteUtcOffsetMinutes: { tokyo: 540, paris: 60 } });
    const noonUtc = Date.UTC(2026, 0, 1, 14, 0); // 23:00 in Tokyo, 15:00 in Paris
    expect(isNight('tokyo', noonUtc, o)).toBe(true);
    expect(isNight('paris', noonUtc, o)).toBe(false);
    expect(isNight('nowhere', noonUtc, o)).toBeUndefined();
    expect([moonRank('tokyo', noonUtc, o), moonRank('nowhere', noonUtc, o), moonRank('paris', noonUtc, o)]).toEqual([0, 1, 2]);
    // Same load at both: without the moon h-paris (alphabetically first) would receive; with it, tokyo's host does.
    const hosts = [host('h-paris', [vm('a')], 'paris'), host('h-tokyo', [vm('b')], 'tokyo')];
    const u = { cpu: 0.5, memory: 1024, net: 0 };
    const plan = planConsolidation(fleet(hosts, { a: u, b: u }), o, noonUtc);
    expect(plan.powerDown).toEqual(['h-paris']);
    expect(plan.moves.map((m) => [m.vmId, m.to])).toEqual([['a', 'h-tokyo']]);
    const off = planConsolidation(fleet(hosts, { a: u, b: u }), monitoringOptions(base), noonUtc);
    expect(off.powerDown).toEqual(['h-paris']); // least loaded tie: by id
    // Hotspot destinations too: tokyo (night) first although it is more loaded than paris.
    const hs = [host('hot', [vm('v', 1024, 4)], 'x'), host('p', [], 'paris'), host('t', [vm('w')], 'tokyo')];
    const f = fleet(hs, { v: { cpu: 3, memory: 512, net: 0 }, w: { cpu: 0.5, memory: 512, net: 0 } });
    (f.hostUse as Map<string, Use>).set('hot', { cpu: 7.2, memory: 512, net: 0 }); // the host's own overhead on top
    const det = detectHotspots(new Map([['hot', [{ at: 1, shares: { cpu: 0.9, memory: 0, net: 0 } }]]]), o);
    expect(planHotspots(f, det, o, noonUtc).moves.map((m) => m.to)).toEqual(['t']);
    expect(planHotspots(f, det, monitoringOptions(base), noonUtc).moves.map((m) => m.to)).toEqual(['p']);
  });
});

describe('profiles', () => {
  it('mean, p50, p95 and the trend per hour of each resource', () => {
    const s = Array.from({ length: 20 }, (_, i) => ({ at: i * 180_000, hostId: 'h', cpu: i / 20, memoryMb: 1000, memoryUsedMb: 500, netMbps: 10, diskMBps: 1, ...(i % 5 === 0 ? { dirtyRateMBps: 4 } : {}) }));
    const p = profileOf('v', s);
    expect(p.samples).toBe(20);
    expect(p.cpu.mean).toBeCloseTo(0.475, 3);
    expect(p.cpu.p50).toBeCloseTo(0.45, 3);
    expect(p.cpu.p95).toBeCloseTo(0.9, 3);
    // cpu rises 0.05 per 3 minutes: 1.0 per hour.
    expect(p.cpu.trendPerHour).toBeCloseTo(1, 3);
    expect(p.memory.mean).toBe(0.5);
    expect(p.netMbps.trendPerHour).toBe(0);
    expect(p.dirtyRateMBps).toMatchObject({ samples: 4, mean: 4 });
    expect(profileOf('none', [])).toMatchObject({ samples: 0, cpu: { mean: 0 } });
  });
});
