// The host agent over a real hub link, with the DoubleDriver test double (whose live migration is
// real TCP between the two agents' drivers): inventory updates, a full migration with progress,
// cancellation, a destination killed mid-stream, injected faults, the tuning a destination
// is prepared with, and the pause before the final state (docs/design.md#switchover).
import { describe, it, expect, afterEach } from 'vitest';
import { rmSync } from 'node:fs';
import type { MigrationProgress, MigrationResult, VmSpec } from '../../src/common/agent-protocol.ts';
import { startHostAgent, type HostAgent } from '../../agents/host/index.ts';
import { DoubleDriver, type DoubleDriverConfig } from '../../agents/host/double-driver.ts';
import { FINAL_STATE_BYTES } from '../../agents/host/double-stream.ts';
import { startHub, tempDir, waitFor, until, type HubFixture } from '../helpers/agent-fixture.ts';

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

const spec = (vmId: string, memoryMb = 32): VmSpec => ({ vmId, project: 'demo', vcpus: 1, memoryMb, diskGb: 1 });

async function setup(cfgA: DoubleDriverConfig = {}, cfgB: DoubleDriverConfig = {}) {
  const f: HubFixture = await startHub();
  cleanups.push(() => f.close());
  const agent = async (hostId: string, cfg: DoubleDriverConfig) => {
    const driver = new DoubleDriver(cfg);
    cleanups.push(() => driver.close());
    const d = tempDir();
    cleanups.push(() => rmSync(d, { recursive: true, force: true }));
    const inv = waitFor(f.hub, 'inventory', (h) => h === hostId);
    const a: HostAgent = await startHostAgent({ controllerUrl: f.controllerUrl, enrollToken: f.hub.mintEnrollToken({ kind: 'host', hostId }).token, dataDir: d, driver, site: hostId, backoff: { initialMs: 20, maxMs: 200 } });
    cleanups.push(() => a.close());
    await inv;
    return { agent: a, driver };
  };
  const A = await agent('host-a', cfgA);
  const B = await agent('host-b', cfgB);
  const events: { hostId: string; name: string; data: any }[] = [];
  f.hub.on('event', (hostId: string, name: string, data: unknown) => events.push({ hostId, name, data }));
  return { f, A, B, events };
}

/** Starts a migration host-a -> host-b; like the controller, lets the source continue as soon as
 *  it pauses before its final state (unless `decide` is false: the test decides). */
async function startMigration(f: HubFixture, vmId: string, migrationId: string, bandwidthMbps: number, decide = true) {
  const vm = await f.hub.request('host-a', 'vm.describe', { vmId });
  const { uri } = await f.hub.request('host-b', 'vm.prepareIncoming', { spec: vm.spec, migrationId, listenHost: '127.0.0.1' });
  expect(uri).toMatch(/^tcp:127\.0\.0\.1:\d+$/);
  if (decide) {
    void waitFor(f.hub, 'event', (h, name, d) => h === 'host-a' && name === 'migration.progress' && d.migrationId === migrationId && d.status === 'pre-switchover', 20_000)
      .then(() => f.hub.request('host-a', 'vm.continueMigration', { vmId, migrationId }))
      .catch(() => undefined);
  }
  const done = waitFor(f.hub, 'event', (h, name, d) => h === 'host-a' && name === 'migration.done' && d.migrationId === migrationId, 20_000);
  expect(await f.hub.request('host-a', 'vm.migrate', { vmId, uri, params: { migrationId, bandwidthMbps } })).toEqual({ started: true });
  return done.then((args) => args[2] as MigrationResult);
}

describe('host agent with the DoubleDriver', () => {
  it('re-sends its inventory when a VM changes', async () => {
    const { f } = await setup();
    const inv = waitFor(f.hub, 'inventory', (h, i) => h === 'host-a' && i.vms.some((v: any) => v.vmId === 'vm-new' && v.state === 'running'));
    const info = await f.hub.request('host-a', 'vm.start', { spec: spec('vm-new') });
    expect(info.state).toBe('running');
    await inv;
    const stopped = waitFor(f.hub, 'inventory', (h, i) => h === 'host-a' && i.vms.some((v: any) => v.vmId === 'vm-new' && v.state === 'stopped'));
    await f.hub.request('host-a', 'vm.stop', { vmId: 'vm-new' });
    await stopped;
    expect(f.hub.inventory('host-a')!.vms.find((v) => v.vmId === 'vm-new')!.state).toBe('stopped');
    await expect(f.hub.request('host-a', 'vm.start', { spec: { ...spec('vm-big'), memoryMb: 10_000_000 } })).rejects.toMatchObject({ code: 'VMTC_HOST_INSUFFICIENT_RESOURCES' });
    await expect(f.hub.requestRaw('host-a', 'vm.start', { spec: { vmId: 1 } })).rejects.toMatchObject({ code: 'VMTC_HOST_BAD_PARAMS' });
  });

  it('moves a VM between two host agents over TCP with progress events', async () => {
    const { f, events } = await setup({ vms: [spec('vm-1', 32)] });
    const result = await startMigration(f, 'vm-1', 'mig-1', 1000);
    expect(result).toMatchObject({ migrationId: 'mig-1', vmId: 'vm-1', status: 'completed' });
    // 32 MiB in passes of 1, 1/4, 1/16, then the final state: all of it crossed the socket.
    expect(result.transferredBytes).toBe((32 + 8 + 2) * 1024 * 1024 + FINAL_STATE_BYTES);
    expect(result.downtimeMs).toBeGreaterThanOrEqual(0);
    const progress = events.filter((e) => e.name === 'migration.progress').map((e) => e.data as MigrationProgress);
    expect(progress.length).toBeGreaterThanOrEqual(3);
    expect(progress.every((p) => p.migrationId === 'mig-1' && p.totalBytes === result.transferredBytes)).toBe(true);
    const sent = progress.map((p) => p.transferredBytes);
    expect([...sent].sort((a, b) => a - b)).toEqual(sent);
    expect(new Set(progress.map((p) => p.pass).filter(Boolean))).toEqual(new Set([1, 2, 3]));
    expect(progress.some((p) => p.status === 'device')).toBe(true);
    expect(progress.filter((p) => p.status === 'pre-switchover')).toHaveLength(1);
    expect(events.filter((e) => e.name === 'migration.done')).toHaveLength(1);

    expect((await f.hub.request('host-a', 'vm.describe', { vmId: 'vm-1' })).state).toBe('postmigrate');
    expect((await f.hub.request('host-b', 'vm.waitRunning', { vmId: 'vm-1', timeoutMs: 5000 })).state).toBe('running');
    expect(await f.hub.request('host-a', 'vm.migrationStatus', { vmId: 'vm-1' })).toMatchObject({ status: 'completed', migrationId: 'mig-1' });
    // Commit: the source copy goes; both inventories say so.
    await f.hub.request('host-a', 'vm.destroy', { vmId: 'vm-1' });
    await until(() => f.hub.inventory('host-a')!.vms.length === 0 && f.hub.inventory('host-b')!.vms.some((v) => v.vmId === 'vm-1' && v.state === 'running'), 5000, 'inventories');
  });

  it('cancel stops the stream: source back to running, incoming VM removed', async () => {
    const { f } = await setup({ vms: [spec('vm-2', 256)] });
    const firstProgress = waitFor(f.hub, 'event', (h, n, d) => h === 'host-a' && n === 'migration.progress' && d.status === 'active');
    const done = startMigration(f, 'vm-2', 'mig-2', 200);
    await firstProgress;
    await expect(f.hub.request('host-a', 'vm.migrate', { vmId: 'vm-2', uri: 'tcp:127.0.0.1:1', params: { migrationId: 'again' } })).rejects.toMatchObject({ code: 'VMTC_HOST_MIGRATION_IN_PROGRESS' });
    await f.hub.request('host-a', 'vm.cancelMigration', { vmId: 'vm-2' });
    const r = await done;
    expect(r.status).toBe('cancelled');
    expect(r.transferredBytes).toBeLessThan(256 * 1024 * 1024);
    expect((await f.hub.request('host-a', 'vm.describe', { vmId: 'vm-2' })).state).toBe('running');
    await until(async () => (await f.hub.request('host-b', 'vm.describe', { vmId: 'vm-2' }).catch((e) => e.code)) === 'VMTC_HOST_VM_NOT_FOUND', 5000, 'incoming VM removed');
    await expect(f.hub.request('host-a', 'vm.cancelMigration', { vmId: 'vm-2' })).rejects.toMatchObject({ code: 'VMTC_HOST_MIGRATION_NOT_FOUND' });
  });

  it('the source waits before its final state until told; a cancel while it waits leaves the destination without it', async () => {
    const { f, B } = await setup({ vms: [spec('vm-11', 16), spec('vm-12', 16)] });
    // Waiting: nothing happens until the controller decides.
    const ready = waitFor(f.hub, 'event', (h, n, d) => h === 'host-a' && n === 'migration.progress' && d.migrationId === 'mig-11' && d.status === 'pre-switchover');
    const done = startMigration(f, 'vm-11', 'mig-11', 2000, false);
    await ready;
    await expect(f.hub.request('host-a', 'vm.continueMigration', { vmId: 'vm-11', migrationId: 'another' })).rejects.toMatchObject({ code: 'VMTC_HOST_MIGRATION_NOT_FOUND' });
    await new Promise((r) => setTimeout(r, 300));
    expect((await f.hub.request('host-b', 'vm.describe', { vmId: 'vm-11' })).state).toBe('incoming');
    expect(await f.hub.request('host-a', 'vm.migrationStatus', { vmId: 'vm-11' })).toMatchObject({ status: 'pre-switchover' });
    await f.hub.request('host-a', 'vm.cancelMigration', { vmId: 'vm-11' });
    expect((await done).status).toBe('cancelled');
    expect((await f.hub.request('host-a', 'vm.describe', { vmId: 'vm-11' })).state).toBe('running');
    await until(async () => (await B.driver.list()).length === 0, 5000, 'incoming VM removed');
    expect(B.driver.landed('mig-11')).toBe(false);
    await expect(f.hub.request('host-a', 'vm.continueMigration', { vmId: 'vm-11', migrationId: 'mig-11' })).rejects.toMatchObject({ code: 'VMTC_HOST_MIGRATION_NOT_FOUND', details: { status: 'cancelled' } });

    // Told to continue: the final state goes, no cancel from there; continue again answers ok.
    const ready2 = waitFor(f.hub, 'event', (h, n, d) => h === 'host-a' && n === 'migration.progress' && d.migrationId === 'mig-12' && d.status === 'pre-switchover');
    const done2 = startMigration(f, 'vm-12', 'mig-12', 2000, false);
    await ready2;
    await f.hub.request('host-a', 'vm.continueMigration', { vmId: 'vm-12', migrationId: 'mig-12' });
    expect((await done2).status).toBe('completed');
    expect(B.driver.landed('mig-12')).toBe(true);
    expect(await f.hub.request('host-a', 'vm.continueMigration', { vmId: 'vm-12', migrationId: 'mig-12' })).toEqual({ ok: true });
  });

  it('a destination killed mid-stream fails the migration and the source keeps running', async () => {
    const { f } = await setup({ vms: [spec('vm-3', 256)] });
    const firstProgress = waitFor(f.hub, 'event', (h, n, d) => h === 'host-a' && n === 'migration.progress' && d.status === 'active');
    const done = startMigration(f, 'vm-3', 'mig-3', 200);
    await firstProgress;
    await f.hub.request('host-b', 'vm.destroy', { vmId: 'vm-3' });
    const r = await done;
    expect(r.status).toBe('failed');
    expect(r.error?.code).toBe('VMTC_HOST_MIGRATION_FAILED');
    expect((await f.hub.request('host-a', 'vm.describe', { vmId: 'vm-3' })).state).toBe('running');
    expect(await f.hub.request('host-a', 'vm.migrationStatus', { vmId: 'vm-3' })).toMatchObject({ status: 'failed' });
  });

  it('injected faults: source drops the stream, destination drops it, prepareIncoming refuses', async () => {
    const { f } = await setup({ vms: [spec('vm-4', 16), spec('vm-5', 16)], failures: { failMigrateAfterBytes: 1024 * 1024 } }, { failures: { dropIncomingAfterBytes: 2 * 1024 * 1024 } });
    const r = await startMigration(f, 'vm-4', 'mig-4', 2000);
    expect(r).toMatchObject({ status: 'failed', error: { code: 'VMTC_HOST_FAULT_INJECTED' } });
    expect((await f.hub.request('host-a', 'vm.describe', { vmId: 'vm-4' })).state).toBe('running');

    // The same double with no source fault but a destination that cuts at 2 MiB.
    const a = new DoubleDriver({ vms: [spec('vm-6', 16)] });
    const b = new DoubleDriver({ failures: { dropIncomingAfterBytes: 2 * 1024 * 1024 } });
    cleanups.push(() => a.close(), () => b.close());
    const { uri } = await b.prepareIncoming(spec('vm-6', 16), 'mig-6', '127.0.0.1');
    const r6 = await a.migrate('vm-6', uri, { migrationId: 'mig-6' }, () => {});
    expect(r6.status).toBe('failed');
    expect((await a.describe('vm-6')).state).toBe('running');
    await until(async () => (await b.list()).length === 0, 5000, 'incoming removed');
    const c = new DoubleDriver({ failures: { failPrepareIncoming: true } });
    await expect(c.prepareIncoming(spec('vm-7'), 'm', '127.0.0.1')).rejects.toMatchObject({ code: 'VMTC_HOST_FAULT_INJECTED' });
    await expect(a.migrate('vm-6', 'http://x', { migrationId: 'm' }, () => {})).rejects.toMatchObject({ code: 'VMTC_HOST_MIGRATION_URI' });
  });

  it('vm.prepareIncoming hands this migration\'s tuning to the driver, never into the spec, and refuses a malformed one naming the field', async () => {
    const { f, B } = await setup({ vms: [spec('vm-9', 16)] });
    const vm = await f.hub.request('host-a', 'vm.describe', { vmId: 'vm-9' });
    const tuning = { multifd: true, multifdChannels: 4, postcopy: true, copyStorage: true, suspend: false };
    await f.hub.request('host-b', 'vm.prepareIncoming', { spec: vm.spec, migrationId: 'mig-9', listenHost: '127.0.0.1', tuning });
    expect(B.driver.lastIncomingTuning('vm-9')).toEqual(tuning);
    expect((await f.hub.request('host-b', 'vm.describe', { vmId: 'vm-9' })).spec).toEqual(vm.spec);
    const other = { ...vm.spec, vmId: 'vm-10' };
    for (const [bad, field] of [[{ multifd: 'yes' }, 'tuning.multifd'], [{ multifdChannels: -1 }, 'tuning.multifdChannels'], [[true], 'tuning']] as const) {
      await expect(f.hub.requestRaw('host-b', 'vm.prepareIncoming', { spec: other, migrationId: 'mig-10', listenHost: '127.0.0.1', tuning: bad })).rejects.toMatchObject({ code: 'VMTC_HOST_BAD_PARAMS', details: { field } });
    }
    expect(B.driver.lastIncomingTuning('vm-10')).toBeUndefined();
  });

  it('a migration that ends while the controller link is down reports its end after reconnecting', async () => {
    const { f, A } = await setup({ vms: [spec('vm-8', 64)] });
    const port = Number(new URL(f.hub.url).port);
    const ready = waitFor(f.hub, 'event', (h, n, d) => h === 'host-a' && n === 'migration.progress' && d.status === 'pre-switchover');
    const vm = await f.hub.request('host-a', 'vm.describe', { vmId: 'vm-8' });
    const { uri } = await f.hub.request('host-b', 'vm.prepareIncoming', { spec: vm.spec, migrationId: 'mig-8', listenHost: '127.0.0.1' });
    await f.hub.request('host-a', 'vm.migrate', { vmId: 'vm-8', uri, params: { migrationId: 'mig-8', bandwidthMbps: 400 } });
    await ready;
    await f.stop(); // the controller goes away; the VM keeps moving host to host
    // The decision reached the source just before the link went down.
    await A.driver.continueMigration('vm-8', 'mig-8');
    await until(async () => (await A.driver.describe('vm-8')).state === 'postmigrate', 15_000, 'migration to finish');
    const f2 = await startHub({ dir: f.dir, db: f.db, port });
    cleanups.push(() => f2.stop());
    const [, , result] = await waitFor(f2.hub, 'event', (h, n) => h === 'host-a' && n === 'migration.done', 15_000);
    expect(result).toMatchObject({ migrationId: 'mig-8', status: 'completed' });
    expect(await f2.hub.request('host-a', 'vm.migrationStatus', { vmId: 'vm-8' })).toMatchObject({ status: 'completed' });
  });
});
