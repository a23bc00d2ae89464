// Live migration without shared storage between two real QEMU processes (TCG), over loopback:
// the destination creates empty copies of the disks and exports them over NBD, the source
// mirrors each disk into them (bulk copy, then the blocks written since) and ends the mirrors
// during stop-and-copy. Proves: the copy arrives byte for byte, writes made during the mirror
// (through the source's block layer, as a guest write) arrive too, and a cancel during the mirror
// keeps the source running on its own disk while the destination's copies are removed with it.
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QemuDriver } from '../../agents/host/qemu/driver.ts';
import type { MigrationProgress } from '../../src/common/agent-protocol.ts';
import { buildGuestImage, guestAppend, type GuestImage } from '../../lab/guest/build.ts';
import { continueAtSwitchover, exec, guestSpec, readSerial, shortId, testLogger, waitForLine, teardownDrivers } from './qemu-helpers.ts';

const MiB = 1024 * 1024;

/** The tuning the controller gives the destination when the hosts share no storage. */
const COPY_STORAGE = { tuning: { copyStorage: true } };

/** qemu-io on an image (read-only, shared: its QEMU may still hold it); throws if a read -P
 *  finds other bytes ("Pattern verification failed"). */
async function qemuIo(path: string, cmd: string): Promise<string> {
  const { stdout } = await exec('qemu-io', ['-r', '-U', '-f', 'qcow2', '-c', cmd, path]);
  if (/verification failed|error|failed/i.test(stdout)) throw new Error(`qemu-io ${cmd} on ${path}: ${stdout}`);
  return stdout;
}

const sha256 = async (p: string) => createHash('sha256').update(await readFile(p)).digest('hex');

describe('QEMU driver: live migration with storage copy (no shared storage)', () => {
  let img: GuestImage;
  let tmp: string;
  let a: QemuDriver;
  let b: QemuDriver;
  let srcDisk: string;
  const pids = new Set<number>();
  const vmId = `vs-${shortId()}`;

  beforeAll(async () => {
    img = await buildGuestImage();
    tmp = await mkdtemp(join(tmpdir(), 'vmtc-qs-'));
    a = new QemuDriver({ dataDir: join(tmp, 'a'), logger: testLogger(), pollMs: 100 });
    b = new QemuDriver({ dataDir: join(tmp, 'b'), logger: testLogger(), pollMs: 100 });
    // The operator's disk: 64 MiB virtual, the first 32 MiB holding a known pattern.
    srcDisk = join(tmp, 'data.qcow2');
    await exec('qemu-img', ['create', '-q', '-f', 'qcow2', srcDisk, '64M']);
    await exec('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x5a 0 32M', srcDisk]);
  });

  afterAll(async () => {
    await teardownDrivers([a, b], pids, tmp);
  });

  it('copies the disk while the VM runs: byte-identical copy in the destination driver\'s dir, progress storage then ram, source disk untouched', async () => {
    const before = await sha256(srcDisk);
    const spec = guestSpec(vmId, img.kernel, img.initrd, guestAppend({ heartbeatMs: 10 }), { disks: [{ path: srcDisk, format: 'qcow2' }] });
    await a.start(spec);
    pids.add((await a.pid(vmId))!);
    await waitForLine((await a.paths(vmId)).console, /VMTC-GUEST-READY/, 60_000);
    const srcSpec = (await a.describe(vmId)).spec;
    expect((srcSpec.extra as { diskBytes: number[] }).diskBytes).toEqual([64 * MiB]);

    const prep = await b.prepareIncoming(srcSpec, 'mig-s1', '127.0.0.1', COPY_STORAGE);
    pids.add((await b.pid(vmId))!);
    expect(prep.storage).toEqual({ nbd: { host: '127.0.0.1', port: expect.any(Number) }, exports: [{ device: 'disk0', name: 'disk0' }] });
    const dstPath = (await b.describe(vmId)).spec.disks![0]!.path;
    expect(dstPath.startsWith(join(tmp, 'b', 'disks', vmId) + '/')).toBe(true);

    const progress: MigrationProgress[] = [];
    const t0 = Date.now();
    let readyAt = 0;
    const result = await a.migrate(vmId, prep.uri, { migrationId: 'mig-s1', storage: prep.storage! }, continueAtSwitchover(a, vmId, 'mig-s1', (p) => {
      if (p.phase === 'ram' && !readyAt) readyAt = Date.now();
      progress.push(p);
    }));
    expect(result.status).toBe('completed');
    const phases = progress.map((p) => p.phase);
    expect(phases[0]).toBe('storage');
    expect(phases.lastIndexOf('storage')).toBeLessThan(phases.indexOf('ram'));
    expect(progress.find((p) => p.phase === 'storage')!.totalBytes).toBe(64 * MiB);
    expect(result.storageBytes).toBeGreaterThanOrEqual(64 * MiB);

    expect((await a.describe(vmId)).state).toBe('postmigrate');
    expect((await b.waitRunning(vmId, 30_000)).state).toBe('running');
    expect(await readSerial((await b.paths(vmId)).serial[0]!, 300)).toMatch(/hb \d+\n/);
    // The copy holds the pattern and equals the source image as the guest sees it.
    await qemuIo(dstPath, 'read -P 0x5a 0 32M');
    await qemuIo(dstPath, 'read -P 0 32M 32M');
    await exec('qemu-img', ['compare', '-U', '-f', 'qcow2', '-F', 'qcow2', srcDisk, dstPath]);
    const storageMs = readyAt - t0;
    console.log(`[numbers] storage mirror: 64 MiB disk (32 MiB data) READY after ${storageMs} ms (${((64 * MiB) / 1e6 / (storageMs / 1000)).toFixed(0)} MB/s of disk, ${((32 * MiB) / 1e6 / (storageMs / 1000)).toFixed(0)} MB/s of data); migration total ${Date.now() - t0} ms, QEMU downtime ${result.downtimeMs} ms, RAM ${result.transferredBytes} B, disk ${result.storageBytes} B`);

    // Commit: the source goes, its disk stays exactly as it was.
    await a.destroy(vmId);
    expect(existsSync(srcDisk)).toBe(true);
    expect(await sha256(srcDisk)).toBe(before);
  });

  it('writes made during the mirror (bulk copy and after READY) reach the destination', async () => {
    // The VM now runs on b from b's own copy; move it back to a, writing through b's block layer.
    const srcSpec = (await b.describe(vmId)).spec;
    const bCopy = srcSpec.disks![0]!.path;
    const prep = await a.prepareIncoming(srcSpec, 'mig-s2', '127.0.0.1', COPY_STORAGE);
    pids.add((await a.pid(vmId))!);
    const writes: Promise<string>[] = [];
    let bulkWriteAt = -1;
    // 200 Mbit/s paces the mirror's data (and the RAM), so the bulk copy takes a while.
    const result = await b.migrate(vmId, prep.uri, { migrationId: 'mig-s2', storage: prep.storage!, bandwidthMbps: 200 }, continueAtSwitchover(b, vmId, 'mig-s2', (p) => {
      if (p.phase === 'storage' && p.transferredBytes >= 4 * MiB && bulkWriteAt < 0) {
        // [1M, 2M) has been copied already: only the mirror's dirty bitmap can bring this over.
        bulkWriteAt = p.transferredBytes;
        writes.push(b.humanMonitor(vmId, 'qemu-io disk0 "write -P 0x33 1M 1M"'));
      }
      if (p.phase === 'ram' && p.status === 'active' && writes.length === 1) {
        // After READY, while RAM moves: a delta the running mirror or its final sync carries.
        writes.push(b.humanMonitor(vmId, 'qemu-io disk0 "write -P 0x44 40M 1M"'));
      }
    }));
    expect(result.status).toBe('completed');
    expect(writes).toHaveLength(2);
    // HMP's qemu-io prints its report on QEMU's stdout: an empty reply means the command was
    // accepted; the bytes are checked at the destination below.
    expect(await Promise.all(writes)).toEqual(['', '']);
    // Every re-copied block counts again: at least the 1 MiB written after READY.
    expect(result.storageBytes).toBeGreaterThanOrEqual(65 * MiB);
    expect((await a.waitRunning(vmId, 30_000)).state).toBe('running');
    const aCopy = (await a.describe(vmId)).spec.disks![0]!.path;
    expect(aCopy.startsWith(join(tmp, 'a', 'disks', vmId) + '/')).toBe(true);
    await qemuIo(aCopy, 'read -P 0x5a 0 1M');
    await qemuIo(aCopy, 'read -P 0x33 1M 1M');
    await qemuIo(aCopy, 'read -P 0x5a 2M 30M');
    await qemuIo(aCopy, 'read -P 0x44 40M 1M');
    await exec('qemu-img', ['compare', '-U', '-f', 'qcow2', '-F', 'qcow2', bCopy, aCopy]);
    console.log(`[numbers] deltas: bulk-phase write sent at mirror offset ${bulkWriteAt} B; disk bytes mirrored ${result.storageBytes} (disk 64 MiB); total ${result.totalTimeMs} ms RAM phase, downtime ${result.downtimeMs} ms`);

    // Commit: b's VM goes, and with it the copy b's driver made (it owns it); the operator's
    // original disk from the first test is still there.
    await b.destroy(vmId);
    expect(existsSync(bCopy)).toBe(false);
    expect(existsSync(srcDisk)).toBe(true);
  });

  it('cancel during the mirror: the source keeps running on its disk, the destination goes with its copies', async () => {
    const srcSpec = (await a.describe(vmId)).spec;
    const aCopy = srcSpec.disks![0]!.path;
    const prep = await b.prepareIncoming(srcSpec, 'mig-s3', '127.0.0.1', COPY_STORAGE);
    pids.add((await b.pid(vmId))!);
    const bCopy = (await b.describe(vmId)).spec.disks![0]!.path;
    expect(existsSync(bCopy)).toBe(true);
    let cancelled = false;
    const seen: MigrationProgress[] = [];
    // 8 Mbit/s: 32 MiB of data would take half a minute.
    const result = await a.migrate(vmId, prep.uri, { migrationId: 'mig-s3', storage: prep.storage!, bandwidthMbps: 8 }, (p) => {
      seen.push(p);
      if (!cancelled && p.phase === 'storage' && p.transferredBytes > 0) {
        cancelled = true;
        void a.cancelMigration(vmId);
      }
    });
    expect(cancelled).toBe(true);
    expect(result.status).toBe('cancelled');
    expect(seen.every((p) => p.phase === 'storage')).toBe(true);
    expect((await a.describe(vmId)).state).toBe('running');
    expect(await readSerial((await a.paths(vmId)).serial[0]!, 300)).toMatch(/hb \d+\n/);
    // The source's disk is whole and its own; it can still be written (no job holds it).
    await qemuIo(aCopy, 'read -P 0x33 1M 1M');
    await a.humanMonitor(vmId, 'qemu-io disk0 "write -P 0x55 48M 64k"');
    await a.humanMonitor(vmId, 'qemu-io disk0 "flush"');
    await qemuIo(aCopy, 'read -P 0x55 48M 64k');
    expect(await a.migrationStatus(vmId)).toMatchObject({ status: 'cancelled' });
    // The controller's rollback destroys the destination: its copies go with it.
    await b.destroy(vmId);
    expect(existsSync(bCopy)).toBe(false);
    expect(existsSync(join(tmp, 'b', 'disks', vmId))).toBe(false);
    expect(existsSync(aCopy)).toBe(true);
  });

  it('a destination killed during the mirror fails the migration in the storage phase; the source keeps running', async () => {
    const srcSpec = (await a.describe(vmId)).spec;
    const prep = await b.prepareIncoming(srcSpec, 'mig-s4', '127.0.0.1', COPY_STORAGE);
    const destPid = (await b.pid(vmId))!;
    pids.add(destPid);
    const bCopy = (await b.describe(vmId)).spec.disks![0]!.path;
    let killed = false;
    const result = await a.migrate(vmId, prep.uri, { migrationId: 'mig-s4', storage: prep.storage!, bandwidthMbps: 8 }, (p) => {
      if (!killed && p.phase === 'storage' && p.transferredBytes > 0) {
        killed = true;
        process.kill(destPid, 'SIGKILL');
      }
    });
    expect(killed).toBe(true);
    expect(result.status).toBe('failed');
    expect(result.error).toMatchObject({ code: 'VMTC_QEMU_MIGRATION_FAILED', details: { phase: 'storage' } });
    expect((await a.describe(vmId)).state).toBe('running');
    expect(await readSerial((await a.paths(vmId)).serial[0]!, 300)).toMatch(/hb \d+\n/);
    for (let i = 0; i < 50 && (await b.describe(vmId)).state !== 'crashed'; i++) await new Promise((r) => setTimeout(r, 100));
    expect((await b.describe(vmId)).state).toBe('crashed');
    await b.destroy(vmId);
    expect(existsSync(bCopy)).toBe(false);
  });
});
