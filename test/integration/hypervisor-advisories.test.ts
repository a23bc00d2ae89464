// Known-bad hypervisor releases (src/common/hypervisor-advisories.ts) through the real controller
// and real host agents: DoubleDriver standing in for QEMU releases (hypervisorType 'qemu', its
// version and accelerator), real mutual-TLS agent links, real TCP migration streams.
import { describe, it, expect, afterEach } from 'vitest';
import { startHarness, vmSpec, type Harness } from '../helpers/controller-harness.ts';
import { formatMigrationDetail } from '../../src/cli/client/format.ts';

let h: Harness | undefined;
afterEach(async () => { await h?.close(); h = undefined; });

const TCG_7_2 = { hypervisorType: 'qemu', version: '7.2.19', accelerator: 'tcg' } as const;
const KVM_7_2 = { hypervisorType: 'qemu', version: '7.2.19', accelerator: 'kvm' } as const;
const TCG_10 = { hypervisorType: 'qemu', version: '10.0.2', accelerator: 'tcg' } as const;
const ADVISORY = 'qemu-tcg-dirty-bitmap';
const ENDS = ['completed', 'rolled_back', 'failed', 'cancelled'];

async function placesOf(harness: Harness, vmId: string): Promise<string[]> {
  return (await harness.api('GET', '/v1/vms')).body.vms.filter((v: any) => v.vmId === vmId).map((v: any) => `${v.hostId}:${v.state}`);
}

describe('controller: known-bad hypervisor releases', () => {
  it('GET /v1/hosts shows the advisory of a TCG QEMU 7.2 host; a live move from it is refused, naming the bug, and changes nothing', async () => {
    h = await startHarness();
    await h.addHost('A', { ...TCG_7_2, vms: [vmSpec('vm1')] });
    await h.addHost('B', TCG_10);
    const hosts = (await h.api('GET', '/v1/hosts')).body.hosts as any[];
    const a = hosts.find((x) => x.hostId === 'A');
    const b = hosts.find((x) => x.hostId === 'B');
    expect(a.hypervisor).toEqual({ type: 'qemu', version: '7.2.19', accelerator: 'tcg' });
    expect(a.advisories).toEqual([expect.objectContaining({ id: ADVISORY, accelerator: 'tcg', affectedBelow: '9.0.0', fixedIn: '9.0.0', live: 'refuse' })]);
    expect(a.advisories[0].commit).toMatch(/^03bfc2188f/);
    expect(b.advisories).toEqual([]);
    expect((await h.api('GET', '/v1/hosts/A')).body.advisories.map((x: any) => x.id)).toEqual([ADVISORY]);

    const r = await h.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B', mode: 'live' });
    expect(r.status).toBe(409);
    expect(r.body.code).toBe('VMTC_HYPERVISOR_VERSION_INCOMPATIBLE');
    expect(r.body.details).toMatchObject({
      reason: 'known-bad-version', hostId: 'A', role: 'source', hypervisor: 'qemu', version: '7.2.19', accelerator: 'tcg',
      advisory: ADVISORY, fixedIn: '9.0.0', override: 'overrideAdvisories',
    });
    expect(r.body.details.commit).toMatch(/^03bfc2188f/);
    expect((await h.api('GET', '/v1/migrations')).body.migrations).toHaveLength(0);
    expect((await h.api('GET', '/v1/hosts/B')).body.held.memoryMb).toBe(0);
    expect(await placesOf(h, 'vm1')).toEqual(['A:running']);
    // An affected destination is refused too.
    await h.addHost('C', { ...TCG_10, vms: [vmSpec('vm2')] });
    await h.addHost('D', { ...TCG_7_2, version: '7.2.22' });
    const toOld = await h.api('POST', '/v1/migrations', { vmId: 'vm2', destinationHostId: 'D' });
    // 10.0.2 -> 7.2.22 is also an older destination, which is checked first.
    expect(toOld.body).toMatchObject({ code: 'VMTC_HYPERVISOR_VERSION_INCOMPATIBLE', details: { reason: 'older-destination' } });
    const toAffected = await h.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'D', overrideAdvisories: ['some-other-advisory'] });
    expect(toAffected.status).toBe(409);
    expect(toAffected.body.details).toMatchObject({ hostId: 'A', role: 'source', also: [{ hostId: 'D', advisory: ADVISORY }] });
  });

  it('with overrideAdvisories the live move goes ahead, completes, and the record (and the CLI) carries the warning', async () => {
    h = await startHarness();
    await h.addHost('A', { ...TCG_7_2, vms: [vmSpec('vm1')] });
    await h.addHost('B', TCG_10);
    const r = await h.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B', mode: 'live', overrideAdvisories: [ADVISORY] });
    expect(r.status).toBe(202);
    expect(r.body.path).toBe('live');
    expect(r.body.steps.checks).toContain('known-bad-hypervisor-accepted');
    const done = await h.waitState(r.body.id, ENDS);
    expect(done.state).toBe('completed');
    expect(done.request.overrideAdvisories).toEqual([ADVISORY]);
    expect(done.warnings).toEqual([expect.objectContaining({
      code: 'VMTC_HYPERVISOR_VERSION_INCOMPATIBLE',
      details: expect.objectContaining({ step: 'precheck', hostId: 'A', role: 'source', advisory: ADVISORY, version: '7.2.19', accelerator: 'tcg', overridden: true }),
    })]);
    expect(formatMigrationDetail(done)).toMatch(new RegExp(`warning: VMTC_HYPERVISOR_VERSION_INCOMPATIBLE: .*${ADVISORY}`));
    await h.waitFor(async () => (await placesOf(h!, 'vm1')).join() === 'B:running', 'vm1 running only at B');
  });

  it('accepts KVM QEMU 7.2 and TCG QEMU 10.0.2 live, and a cold move from TCG QEMU 7.2, without warnings; mode=auto goes cold', async () => {
    h = await startHarness();
    await h.addHost('K1', { ...KVM_7_2, vms: [vmSpec('vmk')] });
    await h.addHost('K2', KVM_7_2);
    await h.addHost('N1', { ...TCG_10, vms: [vmSpec('vmn')] });
    await h.addHost('N2', TCG_10);
    await h.addHost('T1', { ...TCG_7_2, vms: [vmSpec('vmc'), vmSpec('vma')] });
    await h.addHost('T2', TCG_10);
    const cases: [string, string, string, string][] = [['vmk', 'K2', 'live', 'live'], ['vmn', 'N2', 'live', 'live'], ['vmc', 'T2', 'cold', 'cold']];
    for (const [vmId, dest, mode, path] of cases) {
      const r = await h.api('POST', '/v1/migrations', { vmId, destinationHostId: dest, mode });
      expect({ vmId, status: r.status, code: r.body.code }).toEqual({ vmId, status: 202, code: undefined });
      const done = await h.waitState(r.body.id, ENDS);
      expect({ vmId, state: done.state, path: done.path, warnings: done.warnings, error: done.error }).toEqual({ vmId, state: 'completed', path, warnings: [], error: null });
    }
    // mode=auto from the affected host: the cold path, with a warning saying why.
    const auto = await h.api('POST', '/v1/migrations', { vmId: 'vma', destinationHostId: 'T2', mode: 'auto' });
    expect(auto.status).toBe(202);
    expect(auto.body.path).toBe('cold');
    expect(auto.body.steps.checks).toContain('known-bad-hypervisor-cold-chosen');
    const done = await h.waitState(auto.body.id, ENDS);
    expect(done.state).toBe('completed');
    expect(done.warnings).toEqual([expect.objectContaining({ code: 'VMTC_HYPERVISOR_VERSION_INCOMPATIBLE', details: expect.objectContaining({ advisory: ADVISORY, hostId: 'T1', coldChosen: true }) })]);
  });

  it('validates overrideAdvisories: not a list of ids is a 400 naming the field', async () => {
    h = await startHarness();
    await h.addHost('A', { ...TCG_7_2, vms: [vmSpec('vm1')] });
    await h.addHost('B', TCG_10);
    for (const bad of [true, 'qemu-tcg-dirty-bitmap', ['Not An Id'], [ADVISORY, ADVISORY]]) {
      const r = await h.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B', overrideAdvisories: bad });
      expect({ bad, status: r.status, code: r.body.code }).toEqual({ bad, status: 400, code: 'VMTC_VALIDATION' });
      expect(r.body.details.reason).toMatch(/^body\/overrideAdvisories/);
    }
    expect((await h.api('GET', '/v1/migrations')).body.migrations).toHaveLength(0);
  });
});
