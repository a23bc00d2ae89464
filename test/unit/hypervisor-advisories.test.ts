// Known-bad hypervisor releases: the version parser and matcher (src/common/hypervisor-advisories.ts)
// and the controller's pure pre-check over them (src/controller/capacity.ts). No servers.
import { describe, it, expect } from 'vitest';
import { HYPERVISOR_ADVISORIES, advisoriesFor, compareVersions, parseVersion, type HypervisorAdvisory } from '../../src/common/hypervisor-advisories.ts';
import { knownBadReleases, precheck, type PrecheckInput } from '../../src/controller/capacity.ts';
import type { HostInventory, HypervisorInfo } from '../../src/common/agent-protocol.ts';
import { VmtcError } from '../../src/common/errors.ts';
import { AGENT_EVENTS, inventoryFromStore } from '../../src/common/agent-schemas.ts';

const qemu = (version: string, accelerator?: string): HypervisorInfo => ({ type: 'qemu', version, ...(accelerator ? { accelerator } : {}) });
const ids = (hv: HypervisorInfo) => advisoriesFor(hv).map((a) => a.id);

describe('parseVersion and compareVersions', () => {
  it('reads what qemuVersion returns, a whole version line, Debian package versions and release candidates', () => {
    expect(parseVersion('7.2.0')).toEqual([7, 2, 0, Infinity]);
    expect(parseVersion('7.2.19')).toEqual([7, 2, 19, Infinity]);
    expect(parseVersion('7.2.19 (Debian 1:7.2+dfsg-7+deb12u18)')).toEqual([7, 2, 19, Infinity]);
    expect(parseVersion('QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)')).toEqual([7, 2, 22, Infinity]);
    expect(parseVersion('1:7.2+dfsg-7+deb12u18')).toEqual([7, 2, 0, Infinity]);
    expect(parseVersion('10.0.2+ds-1~bpo12+1')).toEqual([10, 0, 2, Infinity]);
    expect(parseVersion('9.0.0-rc1')).toEqual([9, 0, 0, 1]);
    expect(parseVersion('9.0.0~rc2+ds-1')).toEqual([9, 0, 0, 2]);
    // A Debian revision is not a pre-release.
    expect(parseVersion('9.0.0-1')).toEqual([9, 0, 0, Infinity]);
    expect(parseVersion('unknown')).toBeUndefined();
    expect(parseVersion('')).toBeUndefined();
    expect(parseVersion('version 9')).toBeUndefined();
  });

  it('orders releases numerically, a release candidate before its release', () => {
    const cmp = (a: string, b: string) => Math.sign(compareVersions(parseVersion(a)!, parseVersion(b)!));
    expect(cmp('7.2.19', '9.0.0')).toBe(-1);
    expect(cmp('8.2.91', '9.0.0')).toBe(-1); // QEMU's own number for 9.0.0-rc1
    expect(cmp('9.0.0-rc1', '9.0.0')).toBe(-1);
    expect(cmp('9.0.0-rc1', '9.0.0-rc2')).toBe(-1);
    expect(cmp('9.0.0', '9.0.0')).toBe(0);
    expect(cmp('10.0.2', '9.0.0')).toBe(1); // numeric, not string order
    expect(cmp('9.0.1', '9.0.0')).toBe(1);
    expect(cmp('9.0', '9.0.0')).toBe(0);
  });
});

describe('advisoriesFor with the shipped table', () => {
  it('TCG on QEMU below 9.0 matches the dirty-bitmap advisory; 9.0 and later, KVM, other hypervisors and unknowns do not', () => {
    for (const v of ['7.2.0', '7.2.19', '7.2.19 (Debian 1:7.2+dfsg-7+deb12u18)', '8.2.2', '8.2.91', '9.0.0-rc1']) {
      expect({ v, ids: ids(qemu(v, 'tcg')) }).toEqual({ v, ids: ['qemu-tcg-dirty-bitmap'] });
    }
    for (const v of ['9.0.0', '9.0.0-1', '9.2.0', '10.0.2', '10.0.2+ds-1~bpo12+1', '1:10.0.2+ds-2+deb13u1~bpo12+1', '10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)']) {
      expect({ v, ids: ids(qemu(v, 'tcg')) }).toEqual({ v, ids: [] });
    }
    expect(ids(qemu('7.2.19', 'kvm'))).toEqual([]);
    // An agent too old to report its accelerator is not matched.
    expect(ids(qemu('7.2.19'))).toEqual([]);
    expect(ids(qemu('unknown', 'tcg'))).toEqual([]);
    expect(ids({ type: 'double', version: '7.2.0', accelerator: 'tcg' })).toEqual([]);
  });

  it('names the fix: release, upstream commit, summary, and refuses live migration', () => {
    const [a] = advisoriesFor(qemu('7.2.22', 'tcg'));
    expect(a).toMatchObject({ hypervisor: 'qemu', accelerator: 'tcg', affected: { below: '9.0.0' }, fixedIn: '9.0.0', live: 'refuse' });
    expect(a!.commit).toMatch(/^03bfc2188f[0-9a-f]{30}$/);
    expect(a!.summary).toContain('dirty bitmap');
    expect(new Set(HYPERVISOR_ADVISORIES.map((x) => x.id)).size).toBe(HYPERVISOR_ADVISORIES.length);
    for (const x of HYPERVISOR_ADVISORIES) expect(parseVersion(x.affected.below)).toBeDefined();
  });
});

function inv(hostId: string, hypervisor: HypervisorInfo, vms: HostInventory['vms'] = []): HostInventory {
  return {
    hostId, hypervisor, cpu: { model: 'm', features: ['sse2'], vcpus: 8 }, memoryMb: 16384, diskGb: 500,
    sharedStorage: true, vms, agentVersion: 'test',
  };
}
const vm1 = { vmId: 'vm1', project: 'p', state: 'running' as const, vcpus: 1, memoryMb: 256, diskGb: 2, spec: { vmId: 'vm1', project: 'p', vcpus: 1, memoryMb: 256, diskGb: 2 } };

function input(src: HypervisorInfo, dst: HypervisorInfo, over: Partial<PrecheckInput> = {}): PrecheckInput {
  return {
    vmId: 'vm1', mode: 'live', destinationHostId: 'B', holds: [], inFlight: undefined,
    hosts: [{ inventory: inv('A', src, [vm1]), connected: true }, { inventory: inv('B', dst), connected: true }],
    ...over,
  };
}
function refusal(fn: () => unknown): VmtcError {
  try { fn(); } catch (e) { return e as VmtcError; }
  throw new Error('expected a refusal');
}

describe('precheck with known-bad releases', () => {
  it('refuses a live migration from an affected source with the code and the advisory in details', () => {
    const e = refusal(() => precheck(input(qemu('7.2.19', 'tcg'), qemu('10.0.2', 'tcg'))));
    expect(e.code).toBe('VMTC_HYPERVISOR_VERSION_INCOMPATIBLE');
    expect(e.status).toBe(409);
    expect(e.details).toMatchObject({
      reason: 'known-bad-version', hostId: 'A', role: 'source', hypervisor: 'qemu', version: '7.2.19', accelerator: 'tcg',
      advisory: 'qemu-tcg-dirty-bitmap', fixedIn: '9.0.0', override: 'overrideAdvisories',
    });
    expect(String(e.details!.commit)).toMatch(/^03bfc2188f/);
  });

  it('refuses an affected destination too, and names every affected host', () => {
    // Same release both ends (the version check passes), both affected.
    const both = refusal(() => precheck(input(qemu('8.2.2', 'tcg'), qemu('8.2.2', 'tcg'))));
    expect(both.details).toMatchObject({ hostId: 'A', role: 'source', also: [{ hostId: 'B', advisory: 'qemu-tcg-dirty-bitmap' }] });
    const dest = refusal(() => precheck(input(qemu('7.2.0', 'kvm'), qemu('7.2.0', 'tcg'))));
    expect(dest.details).toMatchObject({ hostId: 'B', role: 'destination', accelerator: 'tcg' });
  });

  it('the override lets it go ahead live with one warning per affected host', () => {
    const r = precheck(input(qemu('7.2.19', 'tcg'), qemu('7.2.19', 'tcg'), { overrideAdvisories: ['qemu-tcg-dirty-bitmap'] }));
    expect(r.path).toBe('live');
    expect(r.checks).toContain('known-bad-hypervisor-accepted');
    expect(r.warnings.map((w) => [w.code, w.details?.hostId, w.details?.advisory, w.details?.overridden])).toEqual([
      ['VMTC_HYPERVISOR_VERSION_INCOMPATIBLE', 'A', 'qemu-tcg-dirty-bitmap', true],
      ['VMTC_HYPERVISOR_VERSION_INCOMPATIBLE', 'B', 'qemu-tcg-dirty-bitmap', true],
    ]);
    // Overriding some other id does not accept this one.
    expect(refusal(() => precheck(input(qemu('7.2.19', 'tcg'), qemu('10.0.2', 'tcg'), { overrideAdvisories: ['something-else'] }))).code)
      .toBe('VMTC_HYPERVISOR_VERSION_INCOMPATIBLE');
  });

  it('accepts KVM 7.2, TCG 10.0.2 and a cold move from an affected host, without warnings', () => {
    for (const [src, dst, mode] of [
      [qemu('7.2.19', 'kvm'), qemu('7.2.19', 'kvm'), 'live'],
      [qemu('10.0.2', 'tcg'), qemu('10.0.2', 'tcg'), 'live'],
      [qemu('7.2.19', 'tcg'), qemu('7.2.19', 'tcg'), 'cold'],
    ] as const) {
      const r = precheck(input(src, dst, { mode }));
      expect({ src, mode, path: r.path, warnings: r.warnings }).toEqual({ src, mode, path: mode, warnings: [] });
    }
  });

  it('mode=auto takes the cold path instead, with a warning saying why', () => {
    const r = precheck(input(qemu('7.2.19', 'tcg'), qemu('10.0.2', 'tcg'), { mode: 'auto' }));
    expect(r.path).toBe('cold');
    expect(r.checks).toContain('known-bad-hypervisor-cold-chosen');
    expect(r.warnings).toHaveLength(1);
    expect(r.warnings[0]!.details).toMatchObject({ hostId: 'A', advisory: 'qemu-tcg-dirty-bitmap', coldChosen: true });
    // With the override, auto stays live.
    expect(precheck(input(qemu('7.2.19', 'tcg'), qemu('10.0.2', 'tcg'), { mode: 'auto', overrideAdvisories: ['qemu-tcg-dirty-bitmap'] })).path).toBe('live');
  });

  it('a warn-only advisory admits the migration with a warning, without an override', () => {
    const table: HypervisorAdvisory[] = [{ ...HYPERVISOR_ADVISORIES[0]!, id: 'warn-only', live: 'warn' }];
    const r = knownBadReleases(inv('A', qemu('7.2.0', 'tcg')), inv('B', qemu('10.0.2', 'tcg')), [], table);
    expect(r.refusing).toEqual([]);
    expect(r.accepted).toEqual([expect.objectContaining({ hostId: 'A', advisory: 'warn-only' })]);
    const p = precheck(input(qemu('7.2.0', 'tcg'), qemu('10.0.2', 'tcg'), { advisories: table }));
    expect(p.path).toBe('live');
    expect(p.warnings.map((w) => w.details?.advisory)).toEqual(['warn-only']);
  });

  it('an older destination is still refused with the same code, reason older-destination', () => {
    const e = refusal(() => precheck(input(qemu('10.0.2', 'kvm'), qemu('9.2.0', 'kvm'))));
    expect(e.code).toBe('VMTC_HYPERVISOR_VERSION_INCOMPATIBLE');
    expect(e.details).toMatchObject({ reason: 'older-destination', source: '10.0.2', destination: '9.2.0' });
  });
});

describe('the accelerator on the agent link and in the store', () => {
  it('an inventory with or without hypervisor.accelerator fits the schema; a wrong type does not', () => {
    const ok = inv('A', qemu('7.2.19', 'tcg'));
    expect(AGENT_EVENTS.inventory!.problems(ok)).toEqual([]);
    expect(AGENT_EVENTS.inventory!.problems(inv('A', qemu('7.2.19')))).toEqual([]);
    const bad = { ...ok, hypervisor: { ...ok.hypervisor, accelerator: 7 } };
    expect(AGENT_EVENTS.inventory!.problems(bad).map((p) => p.path)).toContain('/hypervisor/accelerator');
  });

  it('a stored inventory keeps the accelerator, and one stored without it reads without it', () => {
    const round = (h: HostInventory) => inventoryFromStore(JSON.parse(JSON.stringify(h)), h.hostId).hypervisor;
    expect(round(inv('A', qemu('7.2.19', 'tcg')))).toEqual({ type: 'qemu', version: '7.2.19', accelerator: 'tcg' });
    expect(round(inv('A', qemu('7.2.19')))).toEqual({ type: 'qemu', version: '7.2.19' });
    expect(inventoryFromStore({ hypervisor: { type: 'qemu', version: '7.2.19', accelerator: 3 } }, 'A').hypervisor).toEqual({ type: 'qemu', version: '7.2.19' });
  });
});
