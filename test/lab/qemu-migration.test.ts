// Live migration between two real QEMU processes on this machine (TCG), over loopback:
// completion (source postmigrate, destination running and still producing its heartbeat),
// cancel during pre-copy, the destination killed during pre-copy, and a restarted driver that
// re-attaches to a running VM.
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QemuDriver } from '../../agents/host/qemu/driver.ts';
import type { MigrationProgress } from '../../src/common/agent-protocol.ts';
import { buildGuestImage, guestAppend, type GuestImage } from '../../lab/guest/build.ts';
import { continueAtSwitchover, guestSpec, readSerial, shortId, testLogger, waitForLine, teardownDrivers } from './qemu-helpers.ts';

describe('QEMU driver: live migration over loopback', () => {
  let img: GuestImage;
  let tmp: string;
  const drivers: QemuDriver[] = [];
  const pids = new Set<number>();
  const mkDriver = (dir: string) => {
    const d = new QemuDriver({ dataDir: join(tmp, dir), logger: testLogger(), pollMs: 100, postcopyAfterPass: 1 });
    drivers.push(d);
    return d;
  };
  const vmId = `vm-${shortId()}`;
  const append = guestAppend({ heartbeatMs: 10 });

  beforeAll(async () => {
    img = await buildGuestImage();
    tmp = await mkdtemp(join(tmpdir(), 'vmtc-qm-'));
  });

  afterAll(async () => {
    await teardownDrivers(drivers, pids, tmp);
  });

  it('boots, migrates with progress, leaves the source postmigrate and the destination running', async () => {
    const a = mkDriver('a');
    const b = mkDriver('b');
    const changes: string[] = [];
    a.onChange(() => changes.push('a'));
    const spec = guestSpec(vmId, img.kernel, img.initrd, append);
    const t0 = Date.now();
    const started = await a.start(spec);
    pids.add((await a.pid(vmId))!);
    expect(started.state).toBe('running');
    expect((started.spec.extra as { machine: string }).machine).toMatch(/^pc-i440fx-/);
    await waitForLine((await a.paths(vmId)).console, /VMTC-GUEST-READY/, 60_000);
    const bootMs = Date.now() - t0;

    // The destination gets the spec the source reports (with the resolved machine type).
    const srcSpec = (await a.describe(vmId)).spec;
    const { uri } = await b.prepareIncoming(srcSpec, 'mig-1', '127.0.0.1');
    pids.add((await b.pid(vmId))!);
    expect(uri).toMatch(/^tcp:127\.0\.0\.1:\d+$/);
    expect((await b.describe(vmId)).state).toBe('incoming');

    const progress: MigrationProgress[] = [];
    const result = await a.migrate(vmId, uri, { migrationId: 'mig-1', maxDowntimeMs: 300, autoConverge: true }, continueAtSwitchover(a, vmId, 'mig-1', (p) => progress.push(p)));
    expect(result.status).toBe('completed');
    expect(result.downtimeMs).toEqual(expect.any(Number));
    expect(result.totalTimeMs).toBeGreaterThan(0);
    expect(result.transferredBytes).toBeGreaterThan(0);
    expect(progress.length).toBeGreaterThan(0);
    expect(progress.at(-1)!.status).toBe('completed');
    expect(progress.some((p) => p.totalBytes >= 128 * 1024 * 1024 * 0.9)).toBe(true);

    // Commit protocol: the source is paused and still there until the controller destroys it.
    expect((await a.describe(vmId)).state).toBe('postmigrate');
    expect(await a.migrationStatus(vmId)).toMatchObject({ status: 'completed' });
    const running = await b.waitRunning(vmId, 30_000);
    expect(running.state).toBe('running');
    expect(changes.length).toBeGreaterThan(0);

    // The guest keeps running at the destination: its serial heartbeat arrives there.
    const hb = await readSerial((await b.paths(vmId)).serial[0]!, 500);
    expect(hb).toMatch(/hb \d+\n/);
    console.log(`[numbers] boot-to-ready ${bootMs} ms; migration total ${result.totalTimeMs} ms, QEMU downtime ${result.downtimeMs} ms, setup ${result.setupTimeMs} ms, ${result.transferredBytes} bytes, ${progress.length} progress reports`);

    await a.destroy(vmId);
    expect(await a.list()).toEqual([]);
  });

  it('cancel during pre-copy leaves the source running', async () => {
    const a = drivers[0]!;
    const b = drivers[1]!;
    // Now the VM lives on b; move it back to a slowly (1 Mbit/s) and cancel midway.
    const { uri } = await a.prepareIncoming((await b.describe(vmId)).spec, 'mig-2', '127.0.0.1');
    pids.add((await a.pid(vmId))!);
    let cancelled = false;
    let seen = 0;
    const result = await b.migrate(vmId, uri, { migrationId: 'mig-2', bandwidthMbps: 1 }, (p) => {
      if (p.status === 'active' && p.transferredBytes > 0) seen++;
      if (seen >= 2 && !cancelled) {
        cancelled = true;
        void b.cancelMigration(vmId);
      }
    });
    expect(cancelled).toBe(true);
    expect(result.status).toBe('cancelled');
    expect((await b.describe(vmId)).state).toBe('running');
    expect(await readSerial((await b.paths(vmId)).serial[0]!, 300)).toMatch(/hb \d+\n/);
    // The destination QEMU gives up when its stream breaks; the controller then destroys it.
    await a.destroy(vmId);
  });

  it('killing the destination during pre-copy fails the migration and the source keeps running', async () => {
    const a = drivers[0]!;
    const b = drivers[1]!;
    const { uri } = await a.prepareIncoming((await b.describe(vmId)).spec, 'mig-3', '127.0.0.1');
    const destPid = (await a.pid(vmId))!;
    pids.add(destPid);
    let killed = false;
    const result = await b.migrate(vmId, uri, { migrationId: 'mig-3', bandwidthMbps: 1 }, (p) => {
      if (!killed && p.status === 'active' && p.transferredBytes > 0) {
        killed = true;
        process.kill(destPid, 'SIGKILL');
      }
    });
    expect(killed).toBe(true);
    expect(result.status).toBe('failed');
    expect(result.error?.code).toBe('VMTC_QEMU_MIGRATION_FAILED');
    expect((await b.describe(vmId)).state).toBe('running');
    // The driver noticed its QEMU died.
    for (let i = 0; i < 50 && (await a.describe(vmId)).state !== 'crashed'; i++) await new Promise((r) => setTimeout(r, 100));
    expect((await a.describe(vmId)).state).toBe('crashed');
    await a.destroy(vmId);
  });

  it('migrates with multifd (set on both ends through the migration\'s tuning) and back with post-copy', async () => {
    const a = drivers[0]!;
    const b = drivers[1]!;
    const base = (await b.describe(vmId)).spec;
    const { uri } = await a.prepareIncoming(base, 'mig-4', '127.0.0.1', { tuning: { multifd: true, multifdChannels: 2 } });
    pids.add((await a.pid(vmId))!);
    const r1 = await b.migrate(vmId, uri, { migrationId: 'mig-4', multifd: true }, continueAtSwitchover(b, vmId, 'mig-4'));
    expect(r1.status).toBe('completed');
    expect((await a.waitRunning(vmId, 30_000)).state).toBe('running');
    await b.destroy(vmId);

    // Post-copy: switched on after the first pass; both ends need the capability.
    const back = await b.prepareIncoming(base, 'mig-5', '127.0.0.1', { tuning: { postcopy: true } });
    pids.add((await b.pid(vmId))!);
    const passes: number[] = [];
    const statuses = new Set<string>();
    const r2 = await a.migrate(vmId, back.uri, { migrationId: 'mig-5', postcopy: true, bandwidthMbps: 100 }, continueAtSwitchover(a, vmId, 'mig-5', (p) => {
      passes.push(p.pass ?? 0);
      statuses.add(p.status);
    }));
    expect(r2.status).toBe('completed');
    // The switch itself, as QEMU accepted it (an idle guest's post-copy phase can end between
    // two progress polls, so the 'postcopy-active' status may or may not be seen).
    expect(r2.postcopy).toBe(true);
    expect(r2.postcopyRequests).toEqual(expect.any(Number));
    expect((await b.waitRunning(vmId, 30_000)).state).toBe('running');
    expect(await readSerial((await b.paths(vmId)).serial[0]!, 300)).toMatch(/hb \d+\n/);
    console.log(`[numbers] multifd: total ${r1.totalTimeMs} ms, downtime ${r1.downtimeMs} ms; post-copy: total ${r2.totalTimeMs} ms, downtime ${r2.downtimeMs} ms, passes seen ${Math.max(...passes)}, statuses ${[...statuses].join(',')}`);
    await a.destroy(vmId);
  });

  it('a restarted driver re-attaches to the running VM, and notices when its QEMU is killed', async () => {
    const b = drivers[1]!;
    await b.close();
    const b2 = mkDriver('b');
    const vms = await b2.list();
    expect(vms.map((v) => [v.vmId, v.state])).toEqual([[vmId, 'running']]);
    const pid = (await b2.pid(vmId))!;
    const changed = new Promise<void>((r) => b2.onChange(r));
    process.kill(pid, 'SIGKILL');
    await changed;
    expect((await b2.describe(vmId)).state).toBe('crashed');
    // A third driver finds it on disk without a QEMU: crashed, and destroy cleans up.
    await b2.close();
    const b3 = mkDriver('b');
    expect((await b3.describe(vmId)).state).toBe('crashed');
    await b3.destroy(vmId);
    expect(await b3.list()).toEqual([]);
  });
});
