// Placement's filters and weighers (src/controller/fleet/placement.ts), pure.
import { describe, it, expect } from 'vitest';
import type { HostInventory, VmInfo } from '../../src/common/agent-protocol.ts';
import { expectedCopySeconds, placeVm, type PlacementInput } from '../../src/controller/fleet/placement.ts';

function vm(vmId: string, over: Partial<VmInfo> = {}, placement?: Record<string, unknown>): VmInfo {
  return { vmId, project: 'p', state: 'running', vcpus: 1, memoryMb: 1024, diskGb: 10, spec: { vmId, project: 'p', vcpus: 1, memoryMb: 1024, diskGb: 10, ...(placement ? { extra: { placement } } : {}) }, ...over };
}
function host(hostId: string, site: string, over: Partial<HostInventory> = {}): HostInventory {
  return { hostId, site, hypervisor: { type: 'qemu', version: '9.0.0' }, cpu: { model: 'x', features: ['a', 'b'], vcpus: 16 }, memoryMb: 8192, diskGb: 100, sharedStorage: false, vms: [], agentVersion: 't', ...over };
}
function input(hosts: HostInventory[], over: Partial<PlacementInput> = {}): PlacementInput {
  const source = hosts[0]!;
  return { vm: source.vms[0]!, source, mode: 'live', hosts: hosts.map((inventory) => ({ inventory, connected: true })), holds: [], maintenance: new Set(), ...over };
}
const reasons = (d: ReturnType<typeof placeVm>) => Object.fromEntries(d.refused.map((r) => [r.hostId, r.reason]));

describe('placement filters', () => {
  it('refuses each unfit host with its own reason and chooses the one left', () => {
    const src = host('S', 'a', { vms: [vm('v')] });
    const hosts = [
      src,
      host('off', 'b'),
      host('maint', 'b'),
      host('farsite', 'z'),
      host('xen', 'b', { hypervisor: { type: 'double', version: '9.0.0' } }),
      host('old', 'b', { hypervisor: { type: 'qemu', version: '8.2.0' } }),
      host('cpu', 'b', { cpu: { model: 'y', features: ['a'], vcpus: 16 } }),
      host('small', 'b', { memoryMb: 512 }),
      host('held', 'b'),
      host('ok', 'b'),
    ];
    const inp = input(hosts, {
      maintenance: new Set(['maint']), toSites: ['a', 'b'],
      holds: [{ migrationId: 'm', hostId: 'held', project: 'p', vcpus: 1, memoryMb: 7800, diskGb: 0 }],
    });
    inp.hosts.find((h) => h.inventory.hostId === 'off')!.connected = false;
    const d = placeVm(inp);
    expect(reasons(d)).toEqual({
      S: 'source', off: 'not-connected', maint: 'maintenance', farsite: 'site-not-requested', xen: 'hypervisor-mismatch',
      old: 'hypervisor-older', cpu: 'cpu-incompatible', small: 'insufficient-capacity', held: 'insufficient-capacity',
    });
    expect(d.refused.find((r) => r.hostId === 'held')!.details).toEqual({ resource: 'memoryMb', need: 1024, available: 392 });
    expect(d.chosen).toBe('ok');
  });

  it('mode auto takes a host with fewer CPU features on the cold path', () => {
    const d = placeVm(input([host('S', 'a', { vms: [vm('v')] }), host('cpu', 'b', { cpu: { model: 'y', features: ['a'], vcpus: 16 } })], { mode: 'auto' }));
    expect(d.chosen).toBe('cpu');
    expect(d.candidates[0]!.path).toBe('cold');
  });

  it('storage: a VM labelled shared goes only where storage is shared; disk counts only when copied', () => {
    const big = vm('v', { diskGb: 500 }, { storage: 'shared' });
    const hosts = [host('S', 'a', { vms: [big], sharedStorage: true }), host('local', 'b', { diskGb: 1000 }), host('shared', 'b', { sharedStorage: true, diskGb: 10 })];
    const d = placeVm(input(hosts));
    expect(reasons(d)).toEqual({ S: 'source', local: 'storage-unreachable' });
    expect(d.chosen).toBe('shared');
    // The same VM unlabelled, cold: its disk is copied, so 'shared' (10 GB) is too small.
    const cold = placeVm(input([host('S', 'a', { vms: [vm('v', { diskGb: 500 })], sharedStorage: true }), hosts[2]!], { mode: 'cold' }));
    expect(reasons(cold).shared).toBe('insufficient-capacity');
  });

  it('anti-affinity keeps group members apart; affinity follows them; planned moves count', () => {
    const hosts = [
      host('S', 'a', { vms: [vm('v', {}, { antiAffinityGroup: 'db', affinityGroup: 'web' })] }),
      host('hasdb', 'b', { vms: [vm('d2', {}, { antiAffinityGroup: 'db' })] }),
      host('hasweb', 'b', { vms: [vm('w2', {}, { affinityGroup: 'web' })] }),
      host('empty', 'b'),
    ];
    const d = placeVm(input(hosts));
    expect(reasons(d)).toEqual({ S: 'source', hasdb: 'anti-affinity', empty: 'affinity' });
    expect(d.chosen).toBe('hasweb');
    // A db member planned onto hasweb by the same evacuation rules it out too.
    const planned = new Map([['hasweb', { vcpus: 0, memoryMb: 0, diskGb: 0, groups: ['anti:db'] }]]);
    expect(placeVm(input(hosts, { planned })).chosen).toBeUndefined();
    // Capacity planned for others counts as used.
    const full = new Map([['hasweb', { vcpus: 0, memoryMb: 7500, diskGb: 0 }]]);
    expect(reasons(placeVm(input(hosts, { planned: full }))).hasweb).toBe('insufficient-capacity');
  });

  it('refuses every host when none fits: no choice, every reason listed', () => {
    const d = placeVm(input([host('S', 'a', { vms: [vm('v', { memoryMb: 9000 })] }), host('b1', 'b'), host('b2', 'b')]));
    expect(d.chosen).toBeUndefined();
    expect(d.candidates).toEqual([]);
    expect(reasons(d)).toEqual({ S: 'source', b1: 'insufficient-capacity', b2: 'insufficient-capacity' });
  });
});

describe('placement weighers', () => {
  it('prefers a faster lightpath, then more room after placement', () => {
    const hosts = [host('S', 'a', { vms: [vm('v')] }), host('slow', 'b', { memoryMb: 65536 }), host('fast', 'c')];
    const links = [{ a: 'a', b: 'b', mbps: 1000 }, { a: 'a', b: 'c', mbps: 10_000 }];
    const d = placeVm(input(hosts, { links }));
    expect(d.candidates.map((c) => c.hostId)).toEqual(['fast', 'slow']);
    expect(d.candidates[0]!.weights.network).toBeGreaterThan(d.candidates[1]!.weights.network);
    expect(d.candidates[1]!.weights.free).toBeGreaterThan(d.candidates[0]!.weights.free);
    // The link to c unavailable: b wins.
    const down = placeVm(input(hosts, { links: [links[0]!, { ...links[1]!, available: false }] }));
    expect(down.chosen).toBe('slow');
  });

  it('expected migration cost: memory ÷ (bandwidth − dirty rate); a VM dirtying faster than a link never converges there', () => {
    expect(expectedCopySeconds(1000, 0, 8 * 1.048576 * 1000)).toBeCloseTo(1, 6);
    expect(expectedCopySeconds(1000, 500, 1000)).toBeCloseTo((1000 * 8 * 1.048576) / 500, 6);
    expect(expectedCopySeconds(1000, 1000, 1000)).toBe(Infinity);
    const hosts = [host('S', 'a', { vms: [vm('v', {}, { dirtyMbps: 2000 })] }), host('slow', 'b', { memoryMb: 65536 }), host('fast', 'c')];
    const d = placeVm(input(hosts, { links: [{ a: 'a', b: 'b', mbps: 1000 }, { a: 'a', b: 'c', mbps: 10_000 }] }));
    expect(d.dirtyMbps).toBe(2000);
    const slow = d.candidates.find((c) => c.hostId === 'slow')!;
    expect(slow.expectedSeconds).toBe(Infinity);
    expect(slow.weights.cost).toBe(0);
    expect(d.chosen).toBe('fast');
  });
});
