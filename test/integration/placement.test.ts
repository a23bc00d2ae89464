// Placement through the real controller and in-process host agents (DoubleDriver): a migration
// request without a destination gets a feasible host chosen and the reasons recorded, and one
// that fits nowhere is refused with VMTC_NO_FEASIBLE_HOST naming why each host was refused.
import { describe, it, expect, afterEach } from 'vitest';
import { join } from 'node:path';
import { startHarness, vmSpec, type Harness } from '../helpers/controller-harness.ts';
import { cleanupsAfterEach } from '../helpers/cleanups.ts';
import { startHostAgent } from '../../agents/host/index.ts';
import { DoubleDriver } from '../../agents/host/double-driver.ts';
import { silentLogger } from '../../src/common/log.ts';

let h: Harness | undefined;
afterEach(async () => { await h?.close(); h = undefined; });
const cleanups = cleanupsAfterEach();

describe('placement: POST /v1/migrations without destinationHostId', () => {
  it('picks the one feasible host, records candidates and refusals, and the VM ends there', async () => {
    h = await startHarness();
    await h.addHost('A', { vms: [vmSpec('vm1', { memoryMb: 1024 })] }, 'site-a');
    await h.addHost('B', { memoryMb: 512 }, 'site-b'); // too small
    await h.addHost('C', { memoryMb: 8192 }, 'site-c'); // fits, but in maintenance
    await h.addHost('D', { memoryMb: 8192, cpu: { model: 'other', features: [], vcpus: 8 } }, 'site-d'); // fits, lacks CPU features
    await h.addHost('E', { memoryMb: 8192 }, 'site-e'); // the one
    expect((await h.api('PUT', '/v1/hosts/C/maintenance', { reason: 'test' })).status).toBe(200);
    const res = await h.api('POST', '/v1/migrations', { vmId: 'vm1', mode: 'live' });
    expect(res.status, JSON.stringify(res.body)).toBe(202);
    expect(res.body.destinationHostId).toBe('E');
    expect(res.body.request.destinationHostId).toBe('E');
    const p = res.body.placement;
    expect(p.chosen).toBe('E');
    expect(p.candidates.map((c: any) => c.hostId)).toEqual(['E']);
    expect(p.candidates[0].weights).toEqual(expect.objectContaining({ free: expect.any(Number), network: expect.any(Number), cost: expect.any(Number) }));
    const reasons = Object.fromEntries(p.refused.map((r: any) => [r.hostId, r.reason]));
    expect(reasons).toEqual({ A: 'source', B: 'insufficient-capacity', C: 'maintenance', D: 'cpu-incompatible' });
    const done = await h.waitState(res.body.id, ['completed', 'rolled_back', 'failed']);
    expect(done.state).toBe('completed');
    expect(done.placement.chosen).toBe('E');
    await h.waitFor(async () => {
      const list = (await h!.api('GET', '/v1/vms')).body.vms.filter((v: any) => v.vmId === 'vm1');
      return list.length === 1 && list[0].hostId === 'E';
    }, 'vm1 only at E');
  });

  it('prefers more room, keeps to toSites, and honours anti-affinity', async () => {
    h = await startHarness();
    const anti = { placement: { antiAffinityGroup: 'db' } };
    await h.addHost('A', { vms: [{ ...vmSpec('vm1'), extra: anti }] }, 'site-a');
    await h.addHost('B', { memoryMb: 4096, vms: [{ ...vmSpec('vm2'), extra: anti }] }, 'site-b'); // a db member runs there
    await h.addHost('C', { memoryMb: 2048 }, 'site-b');
    await h.addHost('D', { memoryMb: 65536 }, 'site-d');
    const bySite = await h.api('POST', '/v1/migrations', { vmId: 'vm1', toSites: ['site-b'] });
    expect(bySite.status, JSON.stringify(bySite.body)).toBe(202);
    expect(bySite.body.destinationHostId).toBe('C');
    const reasons = Object.fromEntries(bySite.body.placement.refused.map((r: any) => [r.hostId, r.reason]));
    expect(reasons).toEqual({ A: 'source', B: 'anti-affinity', D: 'site-not-requested' });
    await h.waitState(bySite.body.id, ['completed']);
    await h.waitFor(async () => {
      const list = (await h!.api('GET', '/v1/vms')).body.vms.filter((v: any) => v.vmId === 'vm1');
      return list.length === 1 && list[0].hostId === 'C';
    }, 'vm1 only at C');
    // Back from C with no site asked: A and D are free of db members; D has more room left
    // (A has the double's default 16 GiB).
    const free = await h.api('POST', '/v1/migrations', { vmId: 'vm1' });
    expect(free.status, JSON.stringify(free.body)).toBe(202);
    expect(free.body.placement.candidates.map((c: any) => c.hostId)).toEqual(['D', 'A']);
    expect(free.body.destinationHostId).toBe('D');
    await h.waitState(free.body.id, ['completed']);
  });

  it('refuses with VMTC_NO_FEASIBLE_HOST and why each host was refused; a named host in maintenance is refused too', async () => {
    h = await startHarness();
    await h.addHost('A', { vms: [vmSpec('vm1', { memoryMb: 1024 })] }, 'site-a');
    await h.addHost('B', { memoryMb: 512 }, 'site-b');
    await h.addHost('C', { memoryMb: 8192 }, 'site-c');
    expect((await h.api('PUT', '/v1/hosts/C/maintenance', {})).status).toBe(200);
    const res = await h.api('POST', '/v1/migrations', { vmId: 'vm1' });
    expect(res.status).toBe(409);
    expect(res.body.code).toBe('VMTC_NO_FEASIBLE_HOST');
    expect(res.body.details.refused).toEqual(expect.arrayContaining([
      expect.objectContaining({ hostId: 'B', reason: 'insufficient-capacity', details: expect.objectContaining({ resource: 'memoryMb' }) }),
      expect.objectContaining({ hostId: 'C', reason: 'maintenance' }),
    ]));
    const named = await h.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'C' });
    expect(named.status).toBe(409);
    expect(named.body.code).toBe('VMTC_HOST_IN_MAINTENANCE');
    // Maintenance over: C is chosen.
    expect((await h.api('DELETE', '/v1/hosts/C/maintenance')).body.maintenance).toBe(false);
    const ok = await h.api('POST', '/v1/migrations', { vmId: 'vm1' });
    expect(ok.status).toBe(202);
    expect(ok.body.destinationHostId).toBe('C');
    await h.waitState(ok.body.id, ['completed']);
    // Bad input: an unknown host's maintenance, an empty site list.
    expect((await h.api('PUT', '/v1/hosts/nope/maintenance', {})).body.code).toBe('VMTC_HOST_NOT_FOUND');
    const bad = await h.api('POST', '/v1/migrations', { vmId: 'vm1', toSites: [] });
    expect(bad.status).toBe(400);
    expect(bad.body.code).toMatch(/^VMTC_/);
  });

  it('weighs the dirty rate monitoring measured over the label, with the lightpaths configured', async () => {
    h = await startHarness({ fleet: { links: [{ a: 'site-a', b: 'site-b', mbps: 1000 }, { a: 'site-a', b: 'site-c', mbps: 10_000 }] } });
    // B has far more room, C the faster lightpath; the VM's label says it is quiet.
    await h.addHost('B', { memoryMb: 262_144 }, 'site-b');
    await h.addHost('C', {}, 'site-c');
    const quiet = { placement: { dirtyMbps: 10 } };
    const driver = new DoubleDriver({ vms: [{ ...vmSpec('vm1'), extra: quiet }], load: { vms: { vm1: { dirtyRateMBps: 200 } } } });
    cleanups.push(() => driver.close());
    const agent = await startHostAgent({
      controllerUrl: h.controller.url, enrollToken: h.controller.hub.mintEnrollToken({ kind: 'host', hostId: 'A' }).token, dataDir: join(h.dir, 'agent-A'), driver,
      logger: silentLogger(), site: 'site-a', migrationAddress: '127.0.0.1', statsIntervalMs: 200, backoff: { initialMs: 50, maxMs: 500, jitter: 0.2 },
    });
    cleanups.push(() => agent.close());
    // Until a measurement arrives the label counts (10 Mbit/s); then the measured 200 MB/s.
    await h.waitFor(async () => (await h!.api('GET', '/v1/vms/vm1/profile')).body?.dirtyRateMBps?.samples > 0, 'a measured dirty rate of vm1');
    const res = await h.api('POST', '/v1/migrations', { vmId: 'vm1' });
    expect(res.status, JSON.stringify(res.body)).toBe(202);
    const p = res.body.placement;
    expect(p.dirtyMbps).toBe(1600);
    const byHost = Object.fromEntries(p.candidates.map((c: any) => [c.hostId, c]));
    // 1.6 Gbit/s of dirtying never converges over the 1 Gbit/s lightpath to B.
    expect(byHost.B.expectedSeconds).toBeNull();
    expect(byHost.B.weights.cost).toBe(0);
    expect(byHost.C.expectedSeconds).toBeCloseTo((256 * 8 * 1.048576) / (10_000 - 1600), 2);
    expect(p.chosen).toBe('C');
    await h.waitState(res.body.id, ['completed', 'rolled_back', 'failed']);
  }, 60_000);
});
