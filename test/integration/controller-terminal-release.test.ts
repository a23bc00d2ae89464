// Every end releases what it holds (docs/design.md#rollback, #accounting), with a real AAA and a
// real broker (its network elements are the MemoryDoubleDriver test double) and host agents on
// the DoubleDriver hypervisor test double: the lightpath, the capacity hold and the grant's
// accounting, on every path (completed, cancelled, a rollback that ends failed, a controller
// killed with -9 in the middle); what an end keeps for an operator is in the record with why.
import { describe, it, expect } from 'vitest';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { queryAccounting } from '../../src/aaa/client.ts';
import { loadControllerKey } from '../../src/controller/integrations.ts';
import { cleanupsAfterEach } from '../helpers/cleanups.ts';
import { tempDir, until } from '../helpers/agent-fixture.ts';
import { startHarness, vmSpec, type Harness } from '../helpers/controller-harness.ts';
import { startControllerProcess } from '../helpers/controller-process.ts';
import { startLightpathServices, type LightpathServices } from '../helpers/lightpath-services.ts';

const cleanups = cleanupsAfterEach();
const ENDED = ['completed', 'rolled_back', 'failed', 'cancelled'];

/** The AAA's accounting records of one migration, as the controller (a requester) reads them. */
async function accounting(svc: LightpathServices, controllerDir: string, migrationId: string) {
  const { key } = loadControllerKey(controllerDir);
  return (await queryAccounting(svc.aaaUrl, key, { migrationId })).events;
}

async function harnessWithServices(b: Parameters<Harness['addHost']>[1] = {}) {
  let svc!: LightpathServices;
  const h = await startHarness({ heartbeatMs: 5000 }, async (controllerDir) => {
    svc = await startLightpathServices(controllerDir);
    return { options: { aaaUrl: svc.aaaUrl, brokerUrl: svc.broker.url }, cleanup: () => svc.close() };
  });
  cleanups.push(() => h.close());
  await h.addHost('A', { vms: [vmSpec('vm1'), vmSpec('vm2')] }, 'site-A');
  await h.addHost('B', b, 'site-B');
  return { h, svc, controllerDir: join(h.dir, 'controller') };
}

describe('every end releases what it holds', () => {
  it('a rollback that ends failed (the destination may run the VM) still releases the lightpath, the hold and the accounting, and says what it kept', async () => {
    // The destination cannot say its VM runs, and cannot be cleaned: the copy completed, so the
    // rollback must leave both copies alone.
    const { h, svc, controllerDir } = await harnessWithServices({ failures: { failWaitRunning: true, failDestroy: true } });
    const res = await h.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B', bandwidthMbps: 500 });
    expect(res.status).toBe(202);
    const done = await h.waitState(res.body.id, ENDED);
    expect({ state: done.state, code: done.error?.code }).toEqual({ state: 'failed', code: 'VMTC_HOST_FAULT_INJECTED' });
    // Kept, and said so: both copies, as they are.
    expect(done.kept).toEqual([expect.stringMatching(/^destination VM/), expect.stringMatching(/^source VM/), expect.stringMatching(/^tunnel bicast/)]);
    expect((await h.agents.get('B')!.driver.describe('vm1')).state).toBe('running');
    expect((await h.agents.get('A')!.driver.describe('vm1')).state).toBe('postmigrate');
    // Released: the lightpath at the broker, the capacity hold, the grant's accounting.
    expect(done.steps.lightpath).toMatchObject({ provisioned: true, released: true });
    const r = (await svc.reservations()).find((x) => x.id === done.steps.lightpath.reservationId)!;
    expect(r.provisionState).toBe('Released');
    expect((await h.api('GET', '/v1/hosts/B')).body.held.memoryMb).toBe(0);
    expect(done.steps.token).toMatchObject({ jti: expect.any(String), accountingClosed: true });
    const kinds = (await accounting(svc, controllerDir, res.body.id)).map((e) => [e.kind, e.jti]);
    expect(kinds).toContainEqual(['release', done.steps.token.jti]);
  });

  it('closes the accounting of a completed and of a cancelled migration', async () => {
    const { h, svc, controllerDir } = await harnessWithServices();
    const ok = await h.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B', bandwidthMbps: 500 });
    expect((await h.waitState(ok.body.id, ENDED)).state).toBe('completed');
    const slow = await h.api('POST', '/v1/migrations', { vmId: 'vm2', destinationHostId: 'B', bandwidthMbps: 1 });
    await h.waitState(slow.body.id, ['precopy']);
    expect((await h.api('POST', `/v1/migrations/${slow.body.id}/cancel`)).status).toBe(202);
    expect((await h.waitState(slow.body.id, ENDED)).state).toBe('cancelled');
    for (const id of [ok.body.id, slow.body.id]) {
      const rec = (await h.api('GET', `/v1/migrations/${id}`)).body;
      expect(rec.steps.token.accountingClosed).toBe(true);
      expect(rec.kept).toBeUndefined();
      const events = await accounting(svc, controllerDir, id);
      expect(events.filter((e) => e.kind === 'release').map((e) => e.jti)).toEqual([rec.steps.token.jti]);
    }
  });

  it('a controller killed with -9 mid-migration and restarted still closes the accounting when the migration completes', async () => {
    const dir = tempDir('vmtc-acct-restart-');
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const ctlDir = join(dir, 'ctl');
    const svc = await startLightpathServices(ctlDir);
    cleanups.push(() => svc.close());
    const ctl = await startControllerProcess(ctlDir, ['--aaa', svc.aaaUrl, '--broker', svc.broker.url], cleanups);
    await ctl.addDoubleAgents(dir, [['A', { vms: [vmSpec('vm1')], bytesPerMb: 16 * 1024 }], ['B', { bytesPerMb: 16 * 1024 }]]);
    // ~5.5 MB at 8 Mbit/s: a few seconds of pre-copy, with the token granted and the lightpath up.
    const m = await ctl.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B', bandwidthMbps: 8 });
    expect(m.status).toBe(202);
    // Killed once the source is copying (not merely asked to: that is another story, src/controller/migration/source-lost.ts).
    await until(async () => {
      const r = (await ctl.api('GET', `/v1/migrations/${m.body.id}`)).body;
      return r.state === 'precopy' && r.progress?.transferredBytes > 0;
    }, 15_000, 'pre-copy under way');

    await ctl.proc().stop('SIGKILL');
    await ctl.start();

    let last: any;
    await until(async () => {
      last = (await ctl.api('GET', `/v1/migrations/${m.body.id}`)).body;
      return ENDED.includes(last.state);
    }, 40_000, 'the end of the migration');
    expect({ state: last.state, error: last.error }).toEqual({ state: 'completed', error: null });
    const jti = last.steps.token.jti;
    expect(last.steps.token.accountingClosed).toBe(true);
    const events = await accounting(svc, ctlDir, m.body.id);
    expect(events.filter((e) => e.kind === 'release').map((e) => e.jti)).toEqual([jti]);
  }, 90_000);
});
