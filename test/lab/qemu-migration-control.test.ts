// An operator's control of a running migration with real QEMU (TCG) and the lab guest's dirty
// load, through the controller's REST API: a controller and two host agents (QEMU driver) on
// loopback, the guest's memory rewritten faster than the migration's bandwidth carries it, so
// the copy never converges by itself. PATCH changes the limits QEMU runs with (read back over
// QMP); force-complete ends the copy, by post-copy (the migration allowed it) and by a pause
// (it did not: the destination lands paused and the controller resumes it). The guest's memory
// check finds nothing wrong at either destination. Run through the lab lock, one file at a time.
import { mkdtemp, rm } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QemuDriver } from '../../agents/host/qemu/driver.ts';
import { startHostAgent, type HostAgent } from '../../agents/host/index.ts';
import { startController, type Controller } from '../../src/controller/index.ts';
import { buildGuestImage, guestAppend } from '../../lab/guest/build.ts';
import { guestSpec, readSerial, shortId, teardownDrivers, testLogger, waitForLine } from './qemu-helpers.ts';

describe('force-complete and tune a live migration with real QEMU and a dirty guest', () => {
  let tmp: string;
  let controller: Controller | undefined;
  const agents: HostAgent[] = [];
  const drivers = new Map<string, QemuDriver>();
  const pids = new Set<number>();
  const vmId = `vm-${shortId()}`;

  const api = async (method: string, path: string, body?: unknown) => {
    const res = await fetch(controller!.url + path, {
      method, headers: { authorization: `Bearer ${controller!.adminToken}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    });
    const text = await res.text();
    return { status: res.status, body: text ? JSON.parse(text) : undefined };
  };
  /** Poll the migration until `ok` says so (bounded by `ms`). */
  const until = async (id: string, ok: (r: any) => boolean, ms: number, what: string): Promise<any> => {
    const end = Date.now() + ms;
    let r: any;
    for (;;) {
      r = (await api('GET', `/v1/migrations/${id}`)).body;
      if (ok(r)) return r;
      if (r.terminal || Date.now() > end) throw new Error(`${what}: state ${r.state}, progress ${JSON.stringify(r.progress)}, error ${JSON.stringify(r.error)}`);
      await new Promise((res) => setTimeout(res, 250));
    }
  };
  /** Where the agents report the VM, once their inventories show it in one place (they report
   *  changes a moment after the migration ends), or as they are after 10 s. */
  const places = async () => {
    let seen: { hostId: string; state: string }[] = [];
    for (let i = 0; i < 40; i++) {
      seen = (await api('GET', '/v1/vms')).body.vms.filter((v: any) => v.vmId === vmId).map((v: any) => ({ hostId: v.hostId, state: v.state }));
      if (seen.length === 1) break;
      await new Promise((r) => setTimeout(r, 250));
    }
    return seen;
  };
  const memBad = async (hostId: string) => readFileSync((await drivers.get(hostId)!.paths(vmId)).console, 'utf8').split('\n').filter((l) => l.includes('VMTC-MEM-BAD'));

  beforeAll(async () => {
    const img = await buildGuestImage();
    tmp = await mkdtemp(join(tmpdir(), 'vmtc-qmc-'));
    controller = await startController({
      dataDir: join(tmp, 'controller'), listen: { host: '127.0.0.1', port: 0 }, agentListen: { host: '127.0.0.1', port: 0 },
      logger: testLogger(), runner: { statusPollMs: 200, destinationRunTimeoutMs: 60_000 },
    });
    for (const hostId of ['A', 'B']) {
      const driver = new QemuDriver({ dataDir: join(tmp, `qemu-${hostId}`), logger: testLogger(), pollMs: 100 });
      drivers.set(hostId, driver);
      const tok = controller.hub.mintEnrollToken({ kind: 'host', hostId });
      agents.push(await startHostAgent({
        controllerUrl: controller.url, enrollToken: tok.token, dataDir: join(tmp, `agent-${hostId}`), driver,
        logger: testLogger(), site: `site-${hostId}`, migrationAddress: '127.0.0.1',
      }));
    }
    for (let i = 0; i < 100 && !(controller.hub.inventory('A') && controller.hub.inventory('B')); i++) await new Promise((r) => setTimeout(r, 100));
    // 48 MiB of the 128 MiB guest rewritten (and checked) every 500 ms: far more than 8 or 100
    // Mbit/s carry, so no copy converges by itself.
    const spec = guestSpec(vmId, img.kernel, img.initrd, guestAppend({ heartbeatMs: 10, dirtyMb: 48, dirtyPeriodMs: 500 }));
    const started = await api('POST', '/v1/vms', { hostId: 'A', spec });
    expect(started.status).toBe(201);
    pids.add((await drivers.get('A')!.pid(vmId))!);
    const consoleA = (await drivers.get('A')!.paths(vmId)).console;
    await waitForLine(consoleA, /VMTC-GUEST-READY/, 120_000);
    await waitForLine(consoleA, /VMTC-MEM /, 60_000);
  }, 300_000);

  afterAll(async () => {
    for (const a of agents) await a.close().catch(() => undefined);
    await teardownDrivers(drivers.values(), pids);
    await controller?.close().catch(() => undefined);
    if (tmp) await rm(tmp, { recursive: true, force: true });
  }, 120_000);

  it('PATCH sets QEMU\'s max-bandwidth and downtime-limit (read back over QMP); force-complete switches a copy that cannot converge to post-copy, and it completes', async () => {
    const res = await api('POST', '/v1/migrations', { vmId, destinationHostId: 'B', mode: 'live', bandwidthMbps: 8, maxDowntimeMs: 30, postcopy: true });
    expect(res.status).toBe(202);
    const id = res.body.id;
    const t0 = Date.now();
    await until(id, (r) => r.state === 'precopy' && (r.progress?.transferredBytes ?? 0) > 2 * 1024 * 1024, 120_000, 'pre-copy under way');
    const a = drivers.get('A')!;
    expect(await a.migrationLimits(vmId)).toEqual({ bandwidthMbps: 8, maxDowntimeMs: 30 });

    const tuned = await api('PATCH', `/v1/migrations/${id}`, { bandwidthMbps: 16, maxDowntimeMs: 2000 });
    expect(tuned.status).toBe(200);
    expect(tuned.body.tuning).toMatchObject({ bandwidthMbps: 16, maxDowntimeMs: 2000, postcopy: true });
    expect(tuned.body.changes).toMatchObject([{ what: 'tune', limits: { bandwidthMbps: 16, maxDowntimeMs: 2000 }, previous: { bandwidthMbps: 8, maxDowntimeMs: 30 }, reported: { bandwidthMbps: 16, maxDowntimeMs: 2000 } }]);
    // Over QMP: query-migrate-parameters, and HMP's view of the same in QEMU's own units.
    expect(await a.migrationLimits(vmId)).toEqual({ bandwidthMbps: 16, maxDowntimeMs: 2000 });
    const hmp = await a.humanMonitor(vmId, 'info migrate_parameters');
    expect(hmp).toMatch(/max-bandwidth: 2000000 bytes\/second/);
    expect(hmp).toMatch(/downtime-limit: 2000 ms/);

    // Still far from converging: at 2 MB/s against a guest dirtying ~100 MB/s.
    await new Promise((r) => setTimeout(r, 3000));
    const before = (await api('GET', `/v1/migrations/${id}`)).body;
    expect(before.state).toBe('precopy');
    expect(before.progress.remainingBytes).toBeGreaterThan(16 * 1024 * 1024);

    const tf = Date.now();
    const forced = await api('POST', `/v1/migrations/${id}/force-complete`);
    expect(forced.status).toBe(202);
    expect(forced.body.changes.at(-1)).toMatchObject({ what: 'force-complete', mode: 'postcopy', by: 'admin' });
    const done = await until(id, (r) => r.terminal, 180_000, 'the forced migration to end');
    expect({ state: done.state, error: done.error }).toEqual({ state: 'completed', error: null });
    expect(done.changes.map((c: any) => c.what)).toEqual(['tune', 'force-complete']);
    expect(await places()).toEqual([{ hostId: 'B', state: 'running' }]);
    expect(await readSerial((await drivers.get('B')!.paths(vmId)).serial[0]!, 500)).toMatch(/hb \d+\n/);
    await waitForLine((await drivers.get('B')!.paths(vmId)).console, /VMTC-MEM /, 60_000);
    expect(await memBad('B')).toEqual([]);
    console.log(`[numbers] post-copy forced after ${tf - t0} ms of pre-copy (${before.progress.transferredBytes} bytes sent, ${before.progress.remainingBytes} remaining); force → completed ${Date.now() - tf} ms; QEMU downtime ${done.result.downtimeMs} ms, total ${done.result.totalTimeMs} ms`);
  });

  it('force-complete without post-copy pauses the guest: the copy converges, the destination is resumed, the pause is a downtime warning', async () => {
    const res = await api('POST', '/v1/migrations', { vmId, destinationHostId: 'A', mode: 'live', bandwidthMbps: 100, maxDowntimeMs: 30 });
    expect(res.status).toBe(202);
    const id = res.body.id;
    const t0 = Date.now();
    // Pass after pass without converging.
    const before = await until(id, (r) => r.state === 'precopy' && (r.progress?.pass ?? 0) >= 3, 180_000, 'three passes of pre-copy');
    const tf = Date.now();
    const refused = await api('POST', `/v1/migrations/${id}/force-complete`, { mode: 'postcopy' });
    expect({ status: refused.status, code: refused.body.code }).toEqual({ status: 409, code: 'VMTC_MIGRATION_NOT_FORCEABLE' });
    const forced = await api('POST', `/v1/migrations/${id}/force-complete`);
    expect(forced.status).toBe(202);
    expect(forced.body.changes).toMatchObject([{ what: 'force-complete', mode: 'pause' }]);
    const done = await until(id, (r) => r.terminal, 180_000, 'the paused migration to end');
    expect({ state: done.state, error: done.error }).toEqual({ state: 'completed', error: null });
    const w = done.warnings.find((x: any) => x.code === 'VMTC_DOWNTIME_ABOVE_LIMIT');
    expect(w).toMatchObject({ details: { maxDowntimeMs: 30, forcedPauseMs: expect.any(Number) } });
    // QEMU hands the destination the source's run state (paused): the controller resumed it.
    expect(await places()).toEqual([{ hostId: 'A', state: 'running' }]);
    expect(await readSerial((await drivers.get('A')!.paths(vmId)).serial[0]!, 500)).toMatch(/hb \d+\n/);
    await waitForLine((await drivers.get('A')!.paths(vmId)).console, /VMTC-MEM /, 60_000);
    expect(await memBad('A')).toEqual([]);
    console.log(`[numbers] pause forced after ${tf - t0} ms and ${before.progress.pass} passes; force → completed ${Date.now() - tf} ms; guest paused ≥ ${w.details.forcedPauseMs} ms, QEMU downtime ${done.result.downtimeMs} ms`);
  });
});
