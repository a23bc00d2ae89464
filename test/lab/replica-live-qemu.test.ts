// Live migration with a warm replica, real QEMU (TCG) through a real controller and two host
// agents with the QEMU driver, on loopback (the replica's stores listen on the migration address,
// 127.0.0.1 here; no lightpath): a replica of a running guest's qcow2 disk is seeded, the guest's
// disk is written, and a live move to the replica's host boots the incoming QEMU from the
// replica's store (no drive-mirror): the delta since the store's checkpoint goes while memory is
// pre-copied and the last one in the pause before the switchover, the digests of both sides are
// compared there, and `qemu-img compare` finds B's disk equal to the source's final state. A
// corrupt store cancels the move and the VM runs on at the source. The mirror path without a
// replica: test/lab/qemu-storage-migration.test.ts, test/lab/e2e-storage.test.ts.
import { open } from 'node:fs/promises';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startController, type Controller } from '../../src/controller/index.ts';
import { startHostAgent, type HostAgent } from '../../agents/host/index.ts';
import { QemuDriver } from '../../agents/host/qemu/driver.ts';
import { silentLogger } from '../../src/common/log.ts';
import { buildGuestImage, guestAppend, type GuestImage } from '../../lab/guest/build.ts';
import { exec, guestSpec, shortId, testLogger, waitForLine, teardownDrivers } from './qemu-helpers.ts';

const MiB = 1024 * 1024;

describe('live migration with a warm replica, real QEMU (loopback)', () => {
  let img: GuestImage;
  let tmp: string;
  let ctl: Controller | undefined;
  const drivers = new Map<string, QemuDriver>();
  const agents: HostAgent[] = [];
  const pids = new Set<number>();
  const vmId = `rl-${shortId()}`;
  let data: string;

  async function api(method: string, path: string, body?: unknown): Promise<{ status: number; body: any }> {
    const res = await fetch(ctl!.url + path, {
      method, headers: { authorization: `Bearer ${ctl!.adminToken}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    });
    const text = await res.text();
    return { status: res.status, body: text ? JSON.parse(text) : undefined };
  }
  async function waitFor<T>(fn: () => Promise<T | undefined | false>, what: string, ms = 120_000): Promise<T> {
    const until = Date.now() + ms;
    for (;;) {
      const v = await fn();
      if (v) return v;
      if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  async function migrate(to: string, during?: (migrationId: string) => Promise<void>, bandwidthMbps?: number): Promise<any> {
    const res = await api('POST', '/v1/migrations', { vmId, destinationHostId: to, mode: 'live', ...(bandwidthMbps ? { bandwidthMbps } : {}) });
    expect(res.status, JSON.stringify(res.body)).toBe(202);
    if (during) await during(res.body.id);
    return waitFor(async () => {
      const r = (await api('GET', `/v1/migrations/${res.body.id}`)).body;
      return ['completed', 'rolled_back', 'failed'].includes(r.state) ? r : undefined;
    }, 'the live move', 300_000);
  }
  async function diskOf(host: string): Promise<string> {
    return (await drivers.get(host)!.describe(vmId)).spec.disks![0]!.path;
  }
  async function addHost(hostId: string): Promise<void> {
    const drv = new QemuDriver({ dataDir: join(tmp, hostId, 'qemu'), logger: testLogger(), pollMs: 100 });
    drivers.set(hostId, drv);
    const tok = ctl!.hub.mintEnrollToken({ kind: 'host', hostId });
    agents.push(await startHostAgent({ controllerUrl: ctl!.url, enrollToken: tok.token, dataDir: join(tmp, hostId, 'agent'), driver: drv, logger: silentLogger(), migrationAddress: '127.0.0.1', backoff: { initialMs: 50, maxMs: 500, jitter: 0.2 } }));
    await waitFor(async () => ctl!.hub.inventory(hostId), `inventory of ${hostId}`);
  }

  beforeAll(async () => {
    img = await buildGuestImage();
    tmp = await mkdtemp(join(tmpdir(), 'vmtc-rl-'));
    ctl = await startController({ dataDir: join(tmp, 'controller'), listen: { host: '127.0.0.1', port: 0 }, agentListen: { host: '127.0.0.1', port: 0 }, logger: silentLogger(), runner: { statusPollMs: 200, destinationRunTimeoutMs: 60_000 } });
    await addHost('A');
    await addHost('B');
    // The guest's data disk: 64 MiB qcow2, 16 MiB of 0x5a.
    data = join(tmp, 'data.qcow2');
    await exec('qemu-img', ['create', '-q', '-f', 'qcow2', data, '64M']);
    await exec('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x5a 0 16M', data]);
    const a = drivers.get('A')!;
    await a.start(guestSpec(vmId, img.kernel, img.initrd, guestAppend({ heartbeatMs: 50 }), { disks: [{ path: data, format: 'qcow2' }] }));
    pids.add((await a.pid(vmId))!);
    await waitForLine((await a.paths(vmId)).console, /VMTC-GUEST-READY/, 90_000);
    await waitFor(async () => ctl!.hub.inventory('A')?.vms.some((v) => v.vmId === vmId && v.state === 'running'), 'the VM in A\'s inventory');
  }, 300_000);

  afterAll(async () => {
    for (const ag of agents.splice(0)) await ag.close().catch(() => undefined);
    await ctl?.close().catch(() => undefined);
    await teardownDrivers(drivers.values(), pids, tmp);
  }, 120_000);

  async function warmReplica(to: string): Promise<any> {
    const res = await api('POST', `/v1/vms/${vmId}/replicas`, { destinationHostId: to, intervalS: 3600 });
    expect(res.status, JSON.stringify(res.body)).toBe(202);
    const warm = await waitFor(async () => {
      const r = (await api('GET', `/v1/vms/${vmId}/replicas/${res.body.id}`)).body;
      return r.state === 'warm' || r.state === 'failed' ? r : undefined;
    }, 'replica warm');
    expect({ state: warm.state, error: warm.error }).toEqual({ state: 'warm', error: null });
    return warm;
  }

  it('seeds, the guest writes, a live move to the replica sends only the deltas and B runs from the store: qemu-img compare equal', async () => {
    const warm = await warmReplica('B');
    const rid = warm.id as string;
    // Writes through the guest's block layer after the seed (interval 1 h: no periodic delta).
    const written = 3 * MiB + 64 * 1024;
    await drivers.get('A')!.humanMonitor(vmId, 'qemu-io disk0 "write -P 0x33 20M 2M"');
    await drivers.get('A')!.humanMonitor(vmId, 'qemu-io disk0 "write -P 0x44 40M 1M"');
    await drivers.get('A')!.humanMonitor(vmId, 'qemu-io disk0 "write -P 0x55 50M 64k"');

    // More writes while memory is pre-copied (40 Mbit/s: seconds of it), after the pre-copy delta
    // went: only the last delta, in the pause before the switchover, can carry them.
    const late = 512 * 1024;
    let wroteLate = false;
    const rec = await migrate('B', async (mid) => {
      await waitFor(async () => (await api('GET', `/v1/vms/${vmId}/replicas/${rid}`)).body.deltas === warm.deltas + 1, 'the pre-copy delta', 120_000);
      const m = (await api('GET', `/v1/migrations/${mid}`)).body;
      if (m.state !== 'precopy') return;
      await drivers.get('A')!.humanMonitor(vmId, 'qemu-io disk0 "write -P 0x66 52M 512k"');
      wroteLate = true;
    }, 40);
    expect({ state: rec.state, error: rec.error }).toEqual({ state: 'completed', error: null });
    expect(wroteLate, 'the pre-copy outlasted the pre-copy delta').toBe(true);
    const used = rec.steps.incoming.replica;
    expect(used.lastDeltaBytes).toBe(late);
    expect(used.precopyDeltaBytes).toBe(written);
    expect(used, JSON.stringify(rec.steps.incoming)).toMatchObject({ replicaId: rid, disks: 1 });
    // No drive-mirror: nothing was exported by the destination for one, nothing mirrored.
    expect(rec.steps.incoming.storage).toBeUndefined();
    expect(rec.result?.storageBytes ?? 0).toBe(0);
    const moved = used.precopyDeltaBytes + used.lastDeltaBytes;
    expect(moved).toBeLessThanOrEqual(1.2 * (written + late));
    const bDisk = await diskOf('B');
    expect(bDisk).toBe(join(tmp, 'B', 'qemu', 'replicas', rid, 'disk0.qcow2'));
    pids.add((await drivers.get('B')!.pid(vmId))!);
    await exec('qemu-img', ['compare', '-U', '-f', 'qcow2', '-F', 'qcow2', data, bDisk]);
    // The guest at B reads what it wrote at A.
    for (const [pat, at, len] of [['0x55', '50M', '64k'], ['0x66', '52M', '512k']]) {
      const r = await drivers.get('B')!.humanMonitor(vmId, `qemu-io disk0 "read -P ${pat} ${at} ${len}"`);
      expect(r).not.toMatch(/Pattern verification failed|error/i);
    }
    await waitFor(async () => (await api('GET', `/v1/vms/${vmId}/replicas/${rid}`)).status === 404, 'the consumed replica removed', 60_000);
    await exec('qemu-img', ['compare', '-U', '-f', 'qcow2', '-F', 'qcow2', data, bDisk]);
    console.log(`[numbers] live move with a replica: seed ${warm.seedBytes} B before; at migration time disk bytes moved ${moved} B (pre-copy delta ${used.precopyDeltaBytes} B, last delta at the pause ${used.lastDeltaBytes} B in ${used.lastDeltaMs} ms, digests ${used.digestMs} ms) for ${written + late} B written (${written} before the move, ${late} during the pre-copy; ${(moved / (written + late)).toFixed(4)}x); memory ${rec.result?.transferredBytes} B, hypervisor downtime ${rec.result?.downtimeMs} ms`);
  }, 600_000);

  it('a corrupt replica is caught by the digests at the pause: the live move rolls back and the VM runs on at the source', async () => {
    // The VM is at B now: a replica at A, a byte of guest data flipped in A's store.
    const warm = await warmReplica('A');
    const rid = warm.id as string;
    const store = join(tmp, 'A', 'qemu', 'replicas', rid, 'disk0.qcow2');
    const { stdout } = await exec('qemu-img', ['map', '--output=json', store]);
    const ext = (JSON.parse(stdout) as { start: number; length: number; data: boolean; offset?: number }[]).find((x) => x.data && x.start <= 4 * MiB && x.start + x.length > 4 * MiB)!;
    const fh = await open(store, 'r+');
    const at = ext.offset! + (4 * MiB - ext.start) + 777;
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, at);
    b[0] ^= 0xff;
    await fh.write(b, 0, 1, at);
    await fh.close();

    const rec = await migrate('A');
    expect(rec.state).toBe('rolled_back');
    expect(rec.error).toMatchObject({ code: 'VMTC_MIGRATION_FAILED', details: { phase: 'digest', replica: rid, cause: { code: 'VMTC_HOST_DISK_DIGEST_MISMATCH', details: { disks: [{ index: 0, chunks: [4] }] } } } });
    expect((await drivers.get('B')!.describe(vmId)).state).toBe('running');
    await expect(drivers.get('A')!.describe(vmId)).rejects.toMatchObject({ code: expect.stringMatching(/VM_NOT_FOUND$/) });
    const r = await drivers.get('B')!.humanMonitor(vmId, 'qemu-io disk0 "read -P 0x55 50M 64k"');
    expect(r).not.toMatch(/Pattern verification failed|error/i);
    expect((await api('GET', `/v1/vms/${vmId}/replicas/${rid}`)).body).toMatchObject({ state: 'failed', error: { code: 'VMTC_HOST_DISK_DIGEST_MISMATCH' } });
    await api('DELETE', `/v1/vms/${vmId}/replicas/${rid}`);
  }, 600_000);
});
