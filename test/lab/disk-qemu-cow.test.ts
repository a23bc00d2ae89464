// The QEMU copy-on-write disk backend (agents/host/disks/qemu-cow.ts) against a real QEMU guest
// (TCG) started by the QEMU driver, and real qemu-storage-daemon destination stores: a full seed
// of a qcow2 disk with a backing chain, writes in the guest's disk (HMP qemu-io, through the
// block layer as guest writes), an incremental delta that carries only about the written bytes
// (counted on the wire by a TCP relay in front of the destination's NBD export), `qemu-img
// compare` equal; a destination killed mid-delta fails it without losing a write; a corrupt
// destination is found by the digests; the cold path (no VM) sends its delta through a storage
// daemon from the bitmaps the VM left in the image.
import { existsSync } from 'node:fs';
import { mkdtemp, open } from 'node:fs/promises';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Checkpoint } from '../../agents/host/disks/backend.ts';
import { assertSameDisk, compareDigests } from '../../agents/host/disks/digest.ts';
import { backingChain } from '../../agents/host/disks/qemu-images.ts';
import { QemuCowBackend } from '../../agents/host/disks/qemu-cow.ts';
import { QemuStore, type NbdDestination } from '../../agents/host/disks/qemu-store.ts';
import { QmpClient } from '../../agents/host/qemu/qmp.ts';
import { QemuDriver } from '../../agents/host/qemu/driver.ts';
import { systemRunner } from '../../agents/host/disks/io.ts';
import { buildGuestImage, guestAppend, type GuestImage } from '../../lab/guest/build.ts';
import { exec, guestSpec, shortId, testLogger, waitForLine, teardownDrivers } from './qemu-helpers.ts';

const KiB = 1024;
const MiB = 1024 * KiB;

/** A TCP relay in front of a unix-socket NBD export that counts the bytes the source sends:
 *  what would cross the WAN. */
async function relay(unixPath: string): Promise<{ port: number; sent(): number; close(): Promise<void> }> {
  let sent = 0;
  const socks = new Set<Socket>();
  const server: Server = createServer((c) => {
    const up = connect(unixPath);
    socks.add(c).add(up);
    c.on('data', (d: Buffer) => {
      sent += d.length;
    });
    c.pipe(up).pipe(c);
    const end = () => {
      c.destroy();
      up.destroy();
    };
    c.on('error', end).on('close', end);
    up.on('error', end).on('close', end);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as { port: number }).port,
    sent: () => sent,
    close: async () => {
      for (const s of socks) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

describe('QEMU copy-on-write disk backend (real QEMU, real storage daemons)', () => {
  let img: GuestImage;
  let tmp: string;
  let drv: QemuDriver;
  let qmp: QmpClient | undefined;
  let backend: QemuCowBackend;
  let store: QemuStore;
  let top: string;
  let last: Checkpoint;
  const pids = new Set<number>();
  const closers: (() => Promise<void>)[] = [];
  const vmId = `dk-${shortId()}`;
  const disk = () => ({ kind: 'qcow2' as const, image: top, vmId, device: 'disk0' });

  /** Export the store for one transfer behind a counting relay; returns the source's view. */
  async function exportStore(expect: Checkpoint | null) {
    const ex = await store.export({ type: 'unix' }, expect);
    const r = await relay((ex.dest.nbd as { path: string }).path);
    const close = async () => {
      await r.close();
      await ex.close();
    };
    closers.push(close);
    const dest: NbdDestination = { ...ex.dest, nbd: { type: 'inet', host: '127.0.0.1', port: r.port } };
    return { dest, sent: r.sent, close, pid: ex.daemon.pid };
  }

  beforeAll(async () => {
    img = await buildGuestImage();
    tmp = await mkdtemp(join(tmpdir(), 'vmtc-dk-'));
    drv = new QemuDriver({ dataDir: join(tmp, 'a'), logger: testLogger(), pollMs: 100 });
    // The operator's disk: a base image (16 MiB of 0x5a) and an overlay on it (4 MiB of 0x6b).
    const base = join(tmp, 'base.qcow2');
    top = join(tmp, 'data.qcow2');
    await exec('qemu-img', ['create', '-q', '-f', 'qcow2', base, '64M']);
    await exec('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x5a 0 16M', base]);
    await exec('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top]);
    await exec('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x6b 32M 4M', top]);
    // A second QMP monitor for the backend (the driver keeps its own connection).
    const qmpPath = join(tmp, 'backend-qmp.sock');
    const spec = guestSpec(vmId, img.kernel, img.initrd, guestAppend({ heartbeatMs: 50 }), {
      disks: [{ path: top, format: 'qcow2' }],
      extra: { qemuArgs: ['-chardev', `socket,id=qmpb,path=${qmpPath},server=on,wait=off`, '-mon', 'chardev=qmpb,mode=control'] },
    });
    await drv.start(spec);
    pids.add((await drv.pid(vmId))!);
    await waitForLine((await drv.paths(vmId)).console, /VMTC-GUEST-READY/, 90_000);
    qmp = await QmpClient.connect(qmpPath, { logger: testLogger(), commandTimeoutMs: 60_000 });
    backend = new QemuCowBackend({ qmpFor: async () => qmp!, logger: testLogger(), tmpDir: tmp, pollMs: 20 });
    store = new QemuStore(join(tmp, 'replica.qcow2'));
  });

  afterAll(async () => {
    for (const c of closers.splice(0).reverse()) await c().catch(() => undefined);
    qmp?.close();
    await teardownDrivers([drv], pids, tmp);
  });

  it('seeds a full copy of the running disk, backing chain included, into a storage daemon\'s export', async () => {
    const chain = await backingChain(systemRunner, top);
    expect(chain.map((c) => c.format)).toEqual(['qcow2', 'qcow2']);
    expect(chain[1]!.filename).toBe(join(tmp, 'base.qcow2'));
    await store.create(chain[0]!.virtualSize);
    const ex = await exportStore(null);
    const full = await backend.seed(disk(), 'c0', ex.dest).finally(ex.close);
    await backend.applyDelta(ex.dest, full);
    last = full.checkpoint;
    expect(full).toMatchObject({ kind: 'full', diskBytes: 64 * MiB, checkpoint: { id: 'c0', seq: 0, ref: 'vmtc-cp.c0' } });
    // Both layers' data crossed: 16 MiB from the base, 4 MiB from the overlay; zeros did not.
    expect(ex.sent()).toBeGreaterThanOrEqual(20 * MiB);
    expect(ex.sent()).toBeLessThan(21 * MiB);
    await exec('qemu-img', ['compare', '-U', '-f', 'qcow2', '-F', 'qcow2', top, store.image]);
    // The destination is one flat image: no backing file to bring along.
    expect((await backingChain(systemRunner, store.image)).length).toBe(1);
    expect((await store.held())!.checkpoint.id).toBe('c0');
    console.log(`[numbers] seed: 64 MiB disk (20 MiB data in 2 layers): ${ex.sent()} B on the wire, job ${full.bytes} B, ${full.ms} ms`);
  });

  it('sends only the blocks written since the checkpoint: bytes on the wire ≤ 1.2 × written + 64 KiB, and the copy equals the source', async () => {
    const writes: [number, string, number][] = [[0x33, '1M', 1 * MiB], [0x44, '40M', 2 * MiB], [0x55, '60M', 64 * KiB]];
    for (const [p, off, len] of writes) await drv.humanMonitor(vmId, `qemu-io disk0 "write -P 0x${p.toString(16)} ${off} ${len}"`);
    const written = writes.reduce((n, w) => n + w[2], 0);
    await backend.flush(disk()); // so that qemu-img compare, from outside, reads the guest's writes
    const pending = await backend.changedSince(disk(), last);
    expect(pending).toEqual({ bytes: written, granularity: 64 * KiB });
    const ex = await exportStore(last);
    const d1 = await backend.sendDelta(disk(), last, 'c1', ex.dest).finally(ex.close);
    await backend.applyDelta(ex.dest, d1);
    expect(d1).toMatchObject({ kind: 'delta', from: { id: 'c0' }, checkpoint: { id: 'c1', seq: 1 }, bytes: written });
    expect(ex.sent()).toBeGreaterThanOrEqual(written);
    expect(ex.sent()).toBeLessThanOrEqual(1.2 * written + 64 * KiB);
    await exec('qemu-img', ['compare', '-U', '-f', 'qcow2', '-F', 'qcow2', top, store.image]);
    console.log(`[numbers] delta: ${written} B written in the guest, ${ex.sent()} B on the wire (${(ex.sent() / written).toFixed(3)}×), job ${d1.bytes} B, ${d1.ms} ms`);
    // The old checkpoint goes; the new one records the writes after it.
    await backend.removeCheckpoint(disk(), last);
    await expect(backend.changedSince(disk(), last)).rejects.toMatchObject({ code: 'VMTC_HOST_DISK_CHECKPOINT_MISSING' });
    expect((await backend.changedSince(disk(), d1.checkpoint)).bytes).toBe(0);
    last = d1.checkpoint;
  });

  it('a destination killed in the middle of a delta fails it with VMTC_HOST_DISK_COPY_FAILED; no write is lost and the retry from the same checkpoint completes', async () => {
    await drv.humanMonitor(vmId, 'qemu-io disk0 "write -P 0x66 8M 8M"');
    // 2 MiB/s: the 8 MiB delta takes seconds, long enough to kill the destination inside it.
    const slow = new QemuCowBackend({ qmpFor: async () => qmp!, logger: testLogger(), tmpDir: tmp, pollMs: 20, speed: 2 * MiB });
    const ex = await exportStore(last);
    const killer = setInterval(() => {
      if (ex.sent() > 1 * MiB) {
        clearInterval(killer);
        process.kill(ex.pid, 'SIGKILL');
      }
    }, 20);
    const e = await slow.sendDelta(disk(), last, 'c2', ex.dest).catch((x: unknown) => x);
    clearInterval(killer);
    await ex.close();
    expect(e).toMatchObject({ code: 'VMTC_HOST_DISK_COPY_FAILED' });
    // The failed checkpoint is gone, `last` records again and still holds all 8 MiB.
    const after = await qmp!.execute<{ 'node-name': string; 'dirty-bitmaps'?: { name: string; recording: boolean; count: number }[] }[]>('query-named-block-nodes', { flat: true });
    const bitmaps = after.flatMap((n) => n['dirty-bitmaps'] ?? []);
    expect(bitmaps.map((b) => b.name)).toEqual([last.ref]);
    expect(bitmaps[0]).toMatchObject({ recording: true, count: 8 * MiB });
    // The store still says it holds `last` (the transfer was never recorded): the retry is let in.
    expect((await store.held())!.checkpoint.id).toBe(last.id);
    const ex2 = await exportStore(last);
    const d2 = await backend.sendDelta(disk(), last, 'c2', ex2.dest).finally(ex2.close);
    await backend.applyDelta(ex2.dest, d2);
    expect(d2.bytes).toBe(8 * MiB);
    console.log(`[numbers] killed mid-delta after ${ex.sent()} B on the wire; retry sent ${ex2.sent()} B for 8 MiB written`);
    await backend.flush(disk());
    await exec('qemu-img', ['compare', '-U', '-f', 'qcow2', '-F', 'qcow2', top, store.image]);
    await backend.removeCheckpoint(disk(), last);
    last = d2.checkpoint;
  });

  it('digests: equal for equal disks; a byte flipped in the destination image is found and its chunk named; a store at another checkpoint is refused', async () => {
    const s = await backend.digestSource(disk());
    const d = await backend.digestDestination({ image: store.image, exportName: 'x', nbd: { type: 'unix', path: '/nonexistent' } });
    assertSameDisk(s, d);
    expect(s.leaves).toHaveLength(64);
    // Flip one byte of guest data inside the destination's qcow2 file, where qemu-img map says
    // the guest's offset 40 MiB is stored.
    const { stdout } = await exec('qemu-img', ['map', '--output=json', store.image]);
    const ext = (JSON.parse(stdout) as { start: number; length: number; data: boolean; offset?: number }[]).find((x) => x.data && x.start <= 40 * MiB && x.start + x.length > 40 * MiB)!;
    const fh = await open(store.image, 'r+');
    const at = ext.offset! + (40 * MiB - ext.start) + 12345;
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, at);
    b[0] ^= 0xff;
    await fh.write(b, 0, 1, at);
    await fh.close();
    const bad = await backend.digestDestination({ image: store.image, exportName: 'x', nbd: { type: 'unix', path: '/nonexistent' } });
    expect(compareDigests(s, bad)).toEqual({ equal: false, differing: [40] });
    expect(() => assertSameDisk(s, bad)).toThrow(expect.objectContaining({ code: 'VMTC_HOST_DISK_DIGEST_MISMATCH' }));
    // The sampled digest, with every chunk sampled, agrees.
    const ss = await backend.digestSource(disk(), { mode: 'sampled', samples: 64, seed: 'x' });
    const sd = await backend.digestDestination({ image: store.image, exportName: 'x', nbd: { type: 'unix', path: '/nonexistent' } }, { mode: 'sampled', samples: 64, seed: 'x' });
    expect(compareDigests(ss, sd).differing).toEqual([40]);
    await expect(exec('qemu-img', ['compare', '-U', '-f', 'qcow2', '-F', 'qcow2', top, store.image])).rejects.toThrow();
    // A delta from an older checkpoint is refused before the store is exported.
    await expect(store.export({ type: 'unix' }, { id: 'c0', seq: 0, takenAt: 0, ref: 'vmtc-cp.c0' })).rejects.toMatchObject({ code: 'VMTC_HOST_DISK_DELTA_REJECTED', details: { holds: { id: 'c2', seq: 2 } } });
    // Repair: write the source's bytes back over the flipped one (what a re-send of chunk 40 does).
    const fix = await open(store.image, 'r+');
    b[0] ^= 0xff;
    await fix.write(b, 0, 1, at);
    await fix.close();
  });

  it('cold path: with the VM powered off, a delta of the writes made offline goes through a storage daemon using the bitmap the VM left in the image', async () => {
    await drv.stop(vmId);
    const info = (await backingChain(systemRunner, top))[0]!;
    expect(info.bitmaps.map((b) => b.name)).toEqual([last.ref]);
    // Offline writes (as an operator's tool would make them) are tracked by the persistent bitmap.
    await exec('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x77 20M 1M', top]);
    const cold = { kind: 'qcow2' as const, image: top };
    expect((await backend.changedSince(cold, last)).bytes).toBe(1 * MiB);
    const ex = await exportStore(last);
    const d3 = await backend.sendDelta(cold, last, 'c3', ex.dest).finally(ex.close);
    await backend.applyDelta(ex.dest, d3);
    expect(d3.bytes).toBe(1 * MiB);
    expect(ex.sent()).toBeLessThanOrEqual(1.2 * MiB + 64 * KiB);
    console.log(`[numbers] cold delta: 1 MiB written offline, ${ex.sent()} B on the wire, ${d3.ms} ms including the storage daemon`);
    await exec('qemu-img', ['compare', '-f', 'qcow2', '-F', 'qcow2', top, store.image]);
    assertSameDisk(await backend.digestSource(cold), await backend.digestDestination({ image: store.image, exportName: 'x', nbd: { type: 'unix', path: '/nonexistent' } }));
    await backend.removeCheckpoint(cold, last);
    expect((await backingChain(systemRunner, top))[0]!.bitmaps.map((b) => b.name)).toEqual(['vmtc-cp.c3']);
    expect(existsSync(store.recordPath)).toBe(true);
  });
});
