// The cold (offline) path, EGI-Engage D4.4, through the controller's REST API against real host
// agents (DoubleDriver hypervisor double; the disks are real files fetched over real mutual-TLS
// HTTPS between the two agents).
import { describe, it, expect, afterEach } from 'vitest';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { startHarness, vmSpec, type Harness } from '../helpers/controller-harness.ts';
import { refusedPort } from '../helpers/proc.ts';

let h: Harness | undefined;
const servers: Server[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) await new Promise((r) => s.close(r));
  await h?.close();
  h = undefined;
});

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** A VM spec with one real raw disk of `mb` MiB of random bytes. */
function diskVm(harness: Harness, vmId: string, mb = 3) {
  const dir = join(harness.dir, 'images');
  mkdirSync(dir, { recursive: true });
  const path = join(dir, `${vmId}.raw`);
  const bytes = randomBytes(mb * 1024 * 1024);
  writeFileSync(path, bytes);
  return { spec: { ...vmSpec(vmId), disks: [{ path, format: 'raw' as const }] }, bytes, path };
}

/** Files under the agent's own disk store for a VM (where the cold import puts its copies). */
function agentDisks(harness: Harness, hostId: string, vmId: string): string[] {
  const d = join(harness.dir, `agent-${hostId}`, 'disks', vmId);
  return existsSync(d) ? readdirSync(d).map((f) => join(d, f)) : [];
}

async function vmPlaces(harness: Harness, vmId: string) {
  return (await harness.api('GET', '/v1/vms')).body.vms.filter((v: any) => v.vmId === vmId).map((v: any) => `${v.hostId}:${v.state}`);
}


const COLD_STATES = ['prechecking', 'reserved', 'cold_exporting', 'cold_importing', 'cold_verifying', 'activating', 'cleanup', 'completed'];

describe('controller: the cold path', () => {
  it('mode cold: powers off at A, copies the disk over HTTPS, boots and verifies at B, then removes A', async () => {
    h = await startHarness();
    const vm = diskVm(h, 'vm1');
    await h.addHost('A', { vms: [vm.spec] });
    await h.addHost('B');
    // A TCP service "in the guest" that verification must reach.
    const svc = createServer((c) => c.end());
    servers.push(svc);
    await new Promise<void>((r) => svc.listen(0, '127.0.0.1', r));
    const port = (svc.address() as { port: number }).port;

    const res = await h.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B', mode: 'cold', verifyTcp: { host: '127.0.0.1', port } });
    expect(res.status).toBe(202);
    expect(res.body.path).toBe('cold');
    const done = await h.waitState(res.body.id, ['completed', 'rolled_back', 'failed']);
    expect({ state: done.state, error: done.error }).toEqual({ state: 'completed', error: null });
    expect(done.transitions.map((t: any) => t.to)).toEqual(COLD_STATES);
    expect(done.steps.cold).toMatchObject({ exportRequested: true, importRequested: true, verified: true, priorState: 'running', totalBytes: vm.bytes.length });
    // The destination was asked about the verify address before A powered the VM off.
    expect(done.steps.cold.reach).toMatchObject({ checked: true, route: 'found', probe: 'open' });
    expect(done.steps.cold.disks).toEqual([{ index: 0, format: 'raw', sizeBytes: vm.bytes.length, sha256: sha(vm.bytes) }]);
    expect(done.steps.cold.imported.bytes).toBe(vm.bytes.length);
    // No disk URL (a secret) is in the record.
    expect(JSON.stringify(done)).not.toMatch(/https:\/\//);

    await h.waitFor(async () => (await vmPlaces(h!, 'vm1')).join() === 'B:running', 'vm1 running only at B');
    // B runs from its own byte-identical copy; A's image is untouched (not the agent's to delete).
    const copies = agentDisks(h, 'B', 'vm1');
    expect(copies).toHaveLength(1);
    expect(sha(readFileSync(copies[0]!))).toBe(sha(vm.bytes));
    const atB = await h.controller.hub.request('B', 'vm.describe', { vmId: 'vm1' });
    expect(atB.spec.disks?.[0]?.path).toBe(copies[0]);
    expect(sha(readFileSync(vm.path))).toBe(sha(vm.bytes));
    expect((await h.api('GET', '/v1/hosts/B')).body.held.memoryMb).toBe(0);
  });

  it('moves it back from B to A, where the copy now comes from B\'s own store', async () => {
    h = await startHarness();
    const vm = diskVm(h, 'vm1', 1);
    await h.addHost('A', { vms: [vm.spec] });
    await h.addHost('B');
    const there = await h.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B', mode: 'cold' });
    expect((await h.waitState(there.body.id, ['completed', 'rolled_back', 'failed'])).state).toBe('completed');
    await h.waitFor(async () => (await vmPlaces(h!, 'vm1')).join() === 'B:running', 'vm1 at B');
    const back = await h.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'A', mode: 'cold' });
    expect(back.status).toBe(202);
    const done = await h.waitState(back.body.id, ['completed', 'rolled_back', 'failed']);
    expect({ state: done.state, error: done.error }).toEqual({ state: 'completed', error: null });
    await h.waitFor(async () => (await vmPlaces(h!, 'vm1')).join() === 'A:running', 'vm1 back at A only');
    // B's agent-owned copy went with the VM it belonged to.
    expect(agentDisks(h, 'B', 'vm1')).toEqual([]);
    expect(sha(readFileSync(agentDisks(h, 'A', 'vm1')[0]!))).toBe(sha(vm.bytes));
  });

  it('mode auto with incompatible CPUs goes cold from the start and completes', async () => {
    h = await startHarness();
    const vm = diskVm(h, 'vm1', 1);
    await h.addHost('A', { vms: [vm.spec], cpu: { model: 'x', features: ['avx512f', 'sse2'], vcpus: 8 } });
    await h.addHost('B', { cpu: { model: 'y', features: ['sse2'], vcpus: 8 } });
    const live = await h.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B', mode: 'live' });
    expect(live.body.code).toBe('VMTC_CPU_INCOMPATIBLE');
    const res = await h.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B', mode: 'auto' });
    expect(res.body.path).toBe('cold');
    const done = await h.waitState(res.body.id, ['completed', 'rolled_back', 'failed']);
    expect(done.state).toBe('completed');
    expect(done.transitions.map((t: any) => t.to)).toEqual(COLD_STATES);
    await h.waitFor(async () => (await vmPlaces(h!, 'vm1')).join() === 'B:running', 'vm1 only at B');
  });

  it('mode auto falls back to cold when the live attempt fails, keeping the destination held', async () => {
    h = await startHarness();
    const vm = diskVm(h, 'vm1', 1);
    await h.addHost('A', { vms: [vm.spec], failures: { failMigrateAfterBytes: 100_000 } });
    await h.addHost('B');
    const res = await h.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B', mode: 'auto' });
    expect(res.body.path).toBe('live');
    const done = await h.waitState(res.body.id, ['completed', 'rolled_back', 'failed']);
    expect({ state: done.state, error: done.error }).toEqual({ state: 'completed', error: null });
    expect(done.path).toBe('cold');
    const to = done.transitions.map((t: any) => t.to);
    expect(to.slice(to.indexOf('rolling_back'))).toEqual(['rolling_back', 'cold_exporting', 'cold_importing', 'cold_verifying', 'activating', 'cleanup', 'completed']);
    // The live attempt's failure is kept, as a warning.
    expect(done.warnings).toContainEqual(expect.objectContaining({ code: 'VMTC_HOST_FAULT_INJECTED', details: expect.objectContaining({ step: 'live-attempt' }) }));
    await h.waitFor(async () => (await vmPlaces(h!, 'vm1')).join() === 'B:running', 'vm1 only at B');
    expect((await h.api('GET', '/v1/hosts/B')).body.held.memoryMb).toBe(0);
  });

  it('a verification that fails rolls back: the copy at B goes, the VM runs again at A only', async () => {
    h = await startHarness();
    const vm = diskVm(h, 'vm1', 1);
    await h.addHost('A', { vms: [vm.spec] });
    await h.addHost('B');
    const port = await refusedPort();
    const res = await h.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B', mode: 'cold', verifyTcp: { host: '127.0.0.1', port } });
    const done = await h.waitState(res.body.id, ['completed', 'rolled_back', 'failed'], 30_000);
    expect(done.state).toBe('rolled_back');
    expect(done.error.code).toBe('VMTC_COLD_VERIFICATION_FAILED');
    expect(done.transitions.map((t: any) => t.to)).toContain('cold_verifying');
    // Without verifyTcp.timeoutMs the controller's destinationRunTimeoutMs bounds it (the harness's).
    expect(done.error.details.cause.details.timeoutMs).toBe(5000);
    await h.waitFor(async () => (await vmPlaces(h!, 'vm1')).join() === 'A:running', 'vm1 running again only at A');
    expect(agentDisks(h, 'B', 'vm1')).toEqual([]);
    expect((await h.api('GET', '/v1/hosts/B')).body.held.memoryMb).toBe(0);
  });

  it('a verify address the destination has no route to is refused before the source is powered off', async () => {
    h = await startHarness();
    const vm = diskVm(h, 'vm1', 1);
    const a = await h.addHost('A', { vms: [vm.spec] });
    // The double's model: B's VM network is loopback only (agents/host/double-driver.ts).
    await h.addHost('B', { networks: ['127.0.0.0/8'] });
    const res = await h.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B', mode: 'cold', verifyTcp: { host: '192.0.2.7', port: 7 } });
    expect(res.status).toBe(202);
    const done = await h.waitState(res.body.id, ['completed', 'rolled_back', 'failed']);
    expect(done.state).toBe('rolled_back');
    expect(done.error.code).toBe('VMTC_VERIFY_TARGET_UNREACHABLE');
    expect(done.error.details).toMatchObject({ host: '192.0.2.7', port: 7, destinationHostId: 'B', route: 'none' });
    expect(done.error.details.reason).toMatch(/no route/);
    expect(done.transitions.map((t: any) => t.to)).not.toContain('cold_importing');
    // Never powered off: the double's record of stops, and the VM still runs at A only.
    expect(a.stops('vm1')).toBe(0);
    expect((await h.controller.hub.request('A', 'vm.describe', { vmId: 'vm1' })).state).toBe('running');
    expect(await vmPlaces(h, 'vm1')).toEqual(['A:running']);
    expect(done.steps.cold?.exportRequested ?? false).toBe(false);
  });

  it('a reachable address whose port never answers rolls back at the request\'s timeout, its attempts in the progress meanwhile', async () => {
    h = await startHarness();
    const vm = diskVm(h, 'vm1', 1);
    await h.addHost('A', { vms: [vm.spec] });
    await h.addHost('B', { networks: ['127.0.0.0/8'] });
    const port = await refusedPort();
    const res = await h.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B', mode: 'cold', verifyTcp: { host: '127.0.0.1', port, timeoutMs: 2000 } });
    expect(res.status).toBe(202);
    let seen: any;
    await h.waitFor(async () => {
      const m = (await h!.api('GET', `/v1/migrations/${res.body.id}`)).body;
      if (m.state === 'cold_verifying' && m.progress?.verify?.attempts >= 1) seen = m.progress;
      return seen !== undefined || ['rolled_back', 'completed', 'failed'].includes(m.state);
    }, 'verification attempts in the progress');
    expect(seen).toMatchObject({ phase: 'verify', verify: { timeoutMs: 2000, lastError: expect.stringMatching(/no connection/) } });
    expect(seen.verify.attempts).toBeGreaterThanOrEqual(1);
    const done = await h.waitState(res.body.id, ['completed', 'rolled_back', 'failed']);
    expect(done.state).toBe('rolled_back');
    expect(done.error.code).toBe('VMTC_COLD_VERIFICATION_FAILED');
    expect(done.error.details.cause).toMatchObject({ code: 'VMTC_HOST_COLD_TCP_CHECK_FAILED', details: { timeoutMs: 2000, port } });
    expect(done.error.details.cause.details.attempts).toBeGreaterThanOrEqual(seen.verify.attempts);
    expect(done.steps.cold.reach).toMatchObject({ checked: true, probe: 'refused' });
    await h.waitFor(async () => (await vmPlaces(h!, 'vm1')).join() === 'A:running', 'vm1 running again only at A');
  });

  it('verifyTcp.timeoutMs out of bounds is refused at the API with a coded error', async () => {
    h = await startHarness();
    const vm = diskVm(h, 'vm1', 1);
    await h.addHost('A', { vms: [vm.spec] });
    await h.addHost('B');
    for (const [timeoutMs, why] of [[999, 'must be >= 1000'], [600_001, 'must be <= 600000'], ['x', 'must be integer']] as const) {
      const res = await h.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B', mode: 'cold', verifyTcp: { host: '127.0.0.1', port: 7, timeoutMs } });
      expect(res.status).toBe(400);
      expect(res.body.code).toBe('VMTC_VALIDATION');
      expect(res.body.details.reason).toBe(`body/verifyTcp/timeoutMs ${why}`);
    }
  });

  it('never restarts the source while a booted copy at an unreachable destination may run: failed, for an operator', async () => {
    h = await startHarness({ runner: { statusPollMs: 200, destinationRunTimeoutMs: 20_000, agentLostMs: 60_000 } });
    const vm = diskVm(h, 'vm1', 1);
    await h.addHost('A', { vms: [vm.spec] });
    await h.addHost('B');
    const port = await refusedPort();
    const res = await h.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B', mode: 'cold', verifyTcp: { host: '127.0.0.1', port } });
    await h.waitState(res.body.id, ['cold_verifying']);
    // B's agent goes while its hypervisor runs the booted copy.
    await h.agents.get('B')!.agent.close();
    const done = await h.waitState(res.body.id, ['completed', 'rolled_back', 'failed', 'cancelled'], 30_000);
    expect(done.state).toBe('failed');
    expect(done.transitions.at(-1).detail.reason).toMatch(/may be running/);
    expect((await h.agents.get('B')!.driver.describe('vm1')).state).toBe('running');
    // The source was left powered off, not started a second time.
    expect((await h.controller.hub.request('A', 'vm.describe', { vmId: 'vm1' })).state).toBe('stopped');
  });

  it('a destination that cannot boot the copy rolls back with the boot code and keeps a stopped VM stopped', async () => {
    h = await startHarness();
    const vm = diskVm(h, 'vm1', 1);
    await h.addHost('A', { vms: [vm.spec] });
    await h.addHost('B', { failures: { failStart: true } });
    await h.controller.hub.request('A', 'vm.stop', { vmId: 'vm1' });
    await h.waitFor(async () => (await vmPlaces(h!, 'vm1')).join() === 'A:stopped', 'vm1 stopped at A');
    const res = await h.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B', mode: 'cold' });
    expect(res.status).toBe(202);
    const done = await h.waitState(res.body.id, ['completed', 'rolled_back', 'failed']);
    expect(done.state).toBe('rolled_back');
    expect(done.error.code).toBe('VMTC_COLD_BOOT_FAILED');
    expect(done.error.details.cause.code).toBe('VMTC_HOST_FAULT_INJECTED');
    await h.waitFor(async () => (await vmPlaces(h!, 'vm1')).join() === 'A:stopped', 'vm1 still stopped, only at A');
    expect(agentDisks(h, 'B', 'vm1')).toEqual([]);
  });

  it('a stopped VM moved cold arrives stopped', async () => {
    h = await startHarness();
    const vm = diskVm(h, 'vm1', 1);
    await h.addHost('A', { vms: [vm.spec] });
    await h.addHost('B');
    await h.controller.hub.request('A', 'vm.stop', { vmId: 'vm1' });
    await h.waitFor(async () => (await vmPlaces(h!, 'vm1')).join() === 'A:stopped', 'vm1 stopped at A');
    const live = await h.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B', mode: 'live' });
    expect(live.body.code).toBe('VMTC_VM_NOT_RUNNING');
    const res = await h.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B', mode: 'cold' });
    const done = await h.waitState(res.body.id, ['completed', 'rolled_back', 'failed']);
    expect({ state: done.state, error: done.error }).toEqual({ state: 'completed', error: null });
    expect(done.steps.cold.priorState).toBe('stopped');
    await h.waitFor(async () => (await vmPlaces(h!, 'vm1')).join() === 'B:stopped', 'vm1 stopped, only at B');
  });
});
