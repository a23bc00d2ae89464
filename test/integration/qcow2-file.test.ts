// The in-process qcow2 reader (agents/host/disks/qcow2-file.ts) on real images made by qemu-img
// and written by qemu-io, compared with what QEMU itself reads: guest bytes with `qemu-img
// convert -O raw` (whole disks and seeded unaligned ranges across cluster and L2 boundaries),
// persistent dirty bitmaps with qemu-storage-daemon's NBD export of them (nbd-client.ts
// blockStatus), an in_use bitmap while a storage daemon holds the image read-write, and
// openImageReader (image-reader.ts) on its native path and on its fallback to qemu-img for a
// compressed image. Last, a seeded fuzz of mutations of a real small image, some of them checked
// against what qemu-img reads of the same mutated file.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, open as openFile, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { digestDisk } from '../../agents/host/disks/digest.ts';
import { digestImageByMap, openImageReader, openImageReaderByMap } from '../../agents/host/disks/image-reader.ts';
import { systemRunner, type CommandRunner } from '../../agents/host/disks/io.ts';
import { connectNbd } from '../../agents/host/disks/nbd-client.ts';
import { openQcow2, type Qcow2Image } from '../../agents/host/disks/qcow2-file.ts';
import { sleep, systemClock } from '../../src/common/clock.ts';
import { VmtcError } from '../../src/common/errors.ts';
import { run } from '../../src/common/proc.ts';
import { cleanupsAfterEach } from '../helpers/cleanups.ts';
import { codedFailure as failure, memoryQcow2Io, seededRandom as rng } from '../helpers/qcow2-helpers.ts';

const cleanups = cleanupsAfterEach();
const KiB = 1024;
const MiB = 1024 * KiB;

async function tmp(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'vmtc-qcow2-'));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

const qemuImg = (...args: string[]) => run(['qemu-img', ...args], { timeoutMs: 120_000 });
const qemuIo = (image: string, cmds: string[], format = 'qcow2') => run(['qemu-io', '-f', format, ...cmds.flatMap((c) => ['-c', c]), image], { timeoutMs: 120_000 });

async function openImage(path: string): Promise<Qcow2Image> {
  const q = await openQcow2(path);
  cleanups.push(() => q.close());
  return q;
}

/** `qemu-img convert -O raw` of the image, as a file to read ranges of. */
async function qemuRaw(image: string): Promise<{ size: number; read(offset: number, length: number): Promise<Buffer> }> {
  const raw = `${image}.raw`;
  await qemuImg('convert', '-U', '-O', 'raw', image, raw);
  const fh = await openFile(raw, 'r');
  cleanups.push(() => fh.close());
  const size = (await fh.stat()).size;
  return {
    size,
    async read(offset, length) {
      const out = Buffer.alloc(Math.max(0, Math.min(size, offset + length) - offset));
      for (let got = 0; got < out.length;) {
        const { bytesRead } = await fh.read(out, got, out.length - got, offset + got);
        if (!bytesRead) break;
        got += bytesRead;
      }
      return out;
    },
  };
}

/** The whole disk in 16 MiB reads, seeded unaligned ranges, and the ranges around every cluster
 *  and L2 table boundary named in `around`, each as qemu-img reads it. */
async function sameAsQemu(q: Qcow2Image, image: string, o: { seed: number; around?: number[]; ranges?: number } = { seed: 1 }): Promise<void> {
  const raw = await qemuRaw(image);
  expect(q.size).toBe(raw.size);
  for (let at = 0; at < q.size; at += 16 * MiB) {
    const got = await q.read(at, 16 * MiB);
    expect(got.equals(await raw.read(at, 16 * MiB)), `whole disk at ${at}`).toBe(true);
  }
  const rand = rng(o.seed);
  const ranges: [number, number][] = [];
  for (const b of o.around ?? []) ranges.push([Math.max(0, b - 7), q.clusterBytes + 13], [Math.max(0, b - q.clusterBytes - 1), 3 * q.clusterBytes]);
  for (let i = 0; i < (o.ranges ?? 60); i++) ranges.push([Math.floor(rand() * q.size), 1 + Math.floor(rand() * 3 * Math.max(q.clusterBytes, 64 * KiB))]);
  ranges.push([q.size - 5, 100], [q.size, 10]);
  // Several at once, as the digest reads.
  for (let i = 0; i < ranges.length; i += 4) {
    const batch = ranges.slice(i, i + 4);
    const got = await Promise.all(batch.map(([off, len]) => q.read(off, len)));
    for (let k = 0; k < batch.length; k++) {
      const [off, len] = batch[k]!;
      expect(got[k]!.equals(await raw.read(off, len)), `range ${off}+${len}`).toBe(true);
    }
  }
}

/** Granule-aligned ranges of some writes, merged: what a bitmap of granularity `g` must mark. */
function aligned(writes: [number, number][], g: number, size: number): { offset: number; length: number }[] {
  const spans = writes.map(([o, l]) => [Math.floor(o / g) * g, Math.min(size, Math.ceil((o + l) / g) * g)] as [number, number]).sort((a, b) => a[0] - b[0]);
  const out: { offset: number; length: number }[] = [];
  for (const [s, e] of spans) {
    const last = out.at(-1);
    if (last && s <= last.offset + last.length) last.length = Math.max(last.length, e - last.offset);
    else out.push({ offset: s, length: e - s });
  }
  return out;
}

/** qemu-storage-daemon on the image; killed by pid after the test if it is still running. */
async function storageDaemon(args: string[], wait: string): Promise<{ stop(): Promise<void> }> {
  const child = spawn('qemu-storage-daemon', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d) => { stderr += d; });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null && child.pid) {
      process.kill(child.pid, 'SIGTERM');
      await exited;
    }
  };
  cleanups.push(stop);
  for (let i = 0; i < 400 && !existsSync(wait); i++) {
    if (child.exitCode !== null) throw new Error(`qemu-storage-daemon exited: ${stderr}`);
    await sleep(25);
  }
  if (!existsSync(wait)) throw new Error(`qemu-storage-daemon did not start: ${stderr}`);
  return { stop };
}

describe('guest bytes of real qcow2 images, as qemu-img reads them', () => {
  it('an empty image, and one of size 0', async () => {
    const dir = await tmp();
    const img = join(dir, 'e.qcow2');
    await qemuImg('create', '-q', '-f', 'qcow2', img, '64M');
    const q = await openImage(img);
    expect(q.size).toBe(64 * MiB);
    expect(q.clusterBytes).toBe(64 * KiB);
    expect(q.bitmaps).toEqual([]);
    await sameAsQemu(q, img, { seed: 2, ranges: 10 });
    const zero = join(dir, 'z.qcow2');
    await qemuImg('create', '-q', '-f', 'qcow2', zero, '0');
    const z = await openImage(zero);
    expect(z.size).toBe(0);
    expect((await z.read(0, 10)).length).toBe(0);
  });

  it('data at several offsets, zero clusters (write -z, write -z -u, discard), unaligned ranges', async () => {
    const dir = await tmp();
    const img = join(dir, 'd.qcow2');
    await qemuImg('create', '-q', '-f', 'qcow2', img, '64M');
    await qemuIo(img, [
      'write -P 0x11 0 100k', 'write -P 0x22 1M 64k', 'write -P 0x33 3000000 5000', 'write -P 0x44 8M 1M', 'write -P 0x55 63M 1M',
      'write -z 8256k 128k', // over data: the cluster keeps its host offset, flagged zero
      'write -z -u 8704k 128k', // unmapped: flagged zero, no offset
      'discard 8960k 64k',
      'write -z 20M 64k', // over unallocated
    ]);
    const map = JSON.parse((await qemuImg('map', '--output=json', img)).stdout) as { start: number; zero: boolean; data: boolean }[];
    expect(map.some((e) => e.start === 8256 * KiB && e.zero && !e.data)).toBe(true); // the zero flag is there to be read
    const q = await openImage(img);
    await sameAsQemu(q, img, { seed: 3, around: [1 * MiB, 8 * MiB, 8256 * KiB, 8704 * KiB, 8960 * KiB, 20 * MiB, 3000000] });
    expect((await q.read(8256 * KiB, 4)).every((b) => b === 0)).toBe(true);
    expect((await q.read(8 * MiB + 100, 4)).every((b) => b === 0x44)).toBe(true);
  });

  it('an internal snapshot (only the active L1 table counts), preallocated metadata, lazy refcounts', async () => {
    const dir = await tmp();
    const snap = join(dir, 's.qcow2');
    await qemuImg('create', '-q', '-f', 'qcow2', snap, '16M');
    await qemuIo(snap, ['write -P 0xd1 0 1M', 'write -P 0xd2 4M 64k']);
    await qemuImg('snapshot', '-c', 's1', snap);
    await qemuIo(snap, ['write -P 0xd3 512k 1M', 'discard 4M 64k', 'write -P 0xd4 9M 64k']);
    const s = await openImage(snap);
    await sameAsQemu(s, snap, { seed: 9, around: [512 * KiB, 1 * MiB, 4 * MiB] });
    expect((await s.read(4 * MiB, 2)).every((b) => b === 0)).toBe(true); // discarded after the snapshot
    for (const opts of ['preallocation=metadata', 'preallocation=falloc', 'lazy_refcounts=on']) {
      const img = join(dir, `${opts.replace('=', '-')}.qcow2`);
      await qemuImg('create', '-q', '-f', 'qcow2', '-o', opts, img, '8M');
      await qemuIo(img, ['write -P 0xd5 1M 100k', 'write -z 3M 64k', 'write -P 0xd6 7M 1M']);
      const q = await openImage(img);
      await sameAsQemu(q, img, { seed: 10, ranges: 20, around: [1 * MiB, 3 * MiB] });
    }
  });

  it('a version 2 image (compat=0.10)', async () => {
    const dir = await tmp();
    const img = join(dir, 'v2.qcow2');
    await qemuImg('create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', img, '32M');
    await qemuIo(img, ['write -P 0x61 0 70k', 'write -P 0x62 5M 64k', 'write -z 5M 32k', 'discard 0 64k', 'write -P 0x63 31M 1M']);
    const q = await openImage(img);
    await sameAsQemu(q, img, { seed: 4, around: [64 * KiB, 5 * MiB] });
  });

  it('4 KiB clusters (an L2 table maps 2 MiB) and 2 MiB clusters', async () => {
    const dir = await tmp();
    const small = join(dir, 'c4k.qcow2');
    await qemuImg('create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', small, '16M');
    await qemuIo(small, ['write -P 0x71 0 10k', 'write -P 0x72 2044k 8k', 'write -P 0x73 4095k 3M', 'write -z 5M 8k', 'write -P 0x74 15M 1M']);
    const s = await openImage(small);
    expect(s.clusterBytes).toBe(4096);
    await sameAsQemu(s, small, { seed: 5, around: [2 * MiB, 4 * MiB, 6 * MiB, 5 * MiB] });
    const big = join(dir, 'c2m.qcow2');
    await qemuImg('create', '-q', '-f', 'qcow2', '-o', 'cluster_size=2M', big, '24M');
    await qemuIo(big, ['write -P 0x75 1M 2M', 'write -P 0x76 7M 100k', 'write -z -u 2M 2M', 'write -P 0x77 22M 2M']);
    const b = await openImage(big);
    expect(b.clusterBytes).toBe(2 * MiB);
    await sameAsQemu(b, big, { seed: 6, around: [2 * MiB, 4 * MiB, 6 * MiB, 22 * MiB] });
  });

  it('a backing chain of three: qcow2 over qcow2 over a smaller raw, relative names; a missing backing format is probed', async () => {
    const dir = await tmp();
    await mkdir(join(dir, 'sub'));
    const base = join(dir, 'base.raw');
    const mid = join(dir, 'sub', 'mid.qcow2');
    const top = join(dir, 'top.qcow2');
    await qemuImg('create', '-q', '-f', 'raw', base, '6M');
    await qemuIo(base, ['write -P 0x81 0 6M'], 'raw');
    await qemuImg('create', '-q', '-f', 'qcow2', '-b', '../base.raw', '-F', 'raw', mid, '16M');
    await qemuIo(mid, ['write -P 0x82 1M 64k', 'write -z 2M 128k', 'write -P 0x83 10M 1M']);
    await qemuImg('create', '-q', '-f', 'qcow2', '-b', 'sub/mid.qcow2', '-F', 'qcow2', top, '32M');
    await qemuIo(top, ['write -P 0x84 1M 4k', 'write -P 0x85 5M 2M', 'write -P 0x86 30M 64k']);
    const q = await openImage(top);
    expect(q.size).toBe(32 * MiB);
    await sameAsQemu(q, top, { seed: 7, around: [1 * MiB, 2 * MiB, 6 * MiB, 10 * MiB, 16 * MiB, 30 * MiB] });
    expect((await q.read(6 * MiB - 2, 4)).equals(Buffer.from([0x85, 0x85, 0x85, 0x85]))).toBe(true);
    expect((await q.read(7 * MiB - 2, 4)).equals(Buffer.from([0x85, 0x85, 0, 0]))).toBe(true); // past the raw base's end
    expect((await q.read(2 * MiB, 2))[0]).toBe(0); // zero in the middle layer hides the base
    // Without backing format extensions (their type renamed to an unknown one): probed by magic.
    const expected = await q.read(0, q.size);
    for (const f of [top, mid]) {
      const b = await readFile(f);
      const at = b.subarray(0, 64 * KiB).indexOf(Buffer.from([0xe2, 0x79, 0x2a, 0xca]));
      expect(at).toBeGreaterThan(0);
      b.writeUInt32BE(0x12345678, at);
      await writeFile(f, b);
    }
    const p = await openImage(top);
    expect((await p.read(0, p.size)).equals(expected)).toBe(true);
  });

  it('an image larger than one L2 table maps (1 GiB, 64 KiB clusters: 512 MiB a table), written in both halves', async () => {
    const dir = await tmp();
    const img = join(dir, 'g.qcow2');
    await qemuImg('create', '-q', '-f', 'qcow2', img, '1G');
    await qemuIo(img, ['write -P 0x91 1M 1M', 'write -P 0x92 511M 2M', 'write -P 0x93 700M 64k', 'write -P 0x94 1023M 1M']);
    const q = await openImage(img);
    await sameAsQemu(q, img, { seed: 8, around: [512 * MiB, 511 * MiB, 513 * MiB, 1023 * MiB] });
  });
});

describe('persistent dirty bitmaps of real images, as QEMU exports them', () => {
  const SIZE = 64 * MiB;
  const W1: [number, number][] = [[5 * MiB, 4 * KiB], [9 * MiB + 100, 10_000], [30 * MiB, 128 * KiB], [63 * MiB + 1, 1]];
  const W2: [number, number][] = [[40 * MiB, 64 * KiB], [5 * MiB + 64 * KiB, 1 * KiB], [30 * MiB + 200 * KiB, 3 * KiB]];
  const io = (writes: [number, number][], p: number) => writes.map(([o, l]) => `write -P ${p} ${o} ${l}`);

  /** b1 (64 KiB) and g4k (4 KiB), g1m (1 MiB) from before W1; bx only during W1; b2 from after W1. */
  async function bitmapImage(dir: string): Promise<string> {
    const img = join(dir, 'b.qcow2');
    await qemuImg('create', '-q', '-f', 'qcow2', img, String(SIZE));
    await qemuIo(img, ['write -P 0x10 1M 64k']);
    await qemuImg('bitmap', '--add', img, 'b1');
    await qemuImg('bitmap', '--add', '-g', '4096', img, 'g4k');
    await qemuImg('bitmap', '--add', '-g', '1M', img, 'g1m');
    await qemuImg('bitmap', '--add', img, 'bx');
    await qemuIo(img, io(W1, 0x20));
    await qemuImg('bitmap', '--disable', img, 'bx');
    await qemuImg('bitmap', '--add', img, 'b2');
    await qemuIo(img, io(W2, 0x30));
    return img;
  }

  it('dirtyRanges names the granule-aligned ranges written while each bitmap recorded, alone and in unions, as the NBD export of the bitmaps says', async () => {
    const dir = await tmp();
    const img = await bitmapImage(dir);
    const q = await openImage(img);
    expect(q.bitmaps.map((b) => [b.name, b.granularity, b.inUse, b.auto])).toEqual([
      ['b1', 64 * KiB, false, true], ['g4k', 4 * KiB, false, true], ['g1m', MiB, false, true], ['bx', 64 * KiB, false, false], ['b2', 64 * KiB, false, true],
    ]);
    const all = [...W1, ...W2];
    const want: Record<string, { offset: number; length: number }[]> = {
      b1: aligned(all, 64 * KiB, SIZE), g4k: aligned(all, 4 * KiB, SIZE), g1m: aligned(all, MiB, SIZE), bx: aligned(W1, 64 * KiB, SIZE), b2: aligned(W2, 64 * KiB, SIZE),
    };
    for (const [name, ranges] of Object.entries(want)) expect(await q.dirtyRanges([name]), name).toEqual(ranges);
    expect(await q.dirtyRanges(['bx', 'b2'])).toEqual(want.b1);
    expect(await q.dirtyRanges(['b2', 'g4k'])).toEqual(aligned([...want.b2!, ...want.g4k!].map((r) => [r.offset, r.length] as [number, number]), 1, SIZE));
    // What QEMU exports for the same bitmaps (a copy with them disabled: a read-only export
    // refuses a bitmap that still records).
    const copy = join(dir, 'copy.qcow2');
    await copyFile(img, copy);
    for (const b of ['b1', 'g4k', 'g1m', 'b2']) await qemuImg('bitmap', '--disable', copy, b);
    const sock = join(dir, 'nbd.sock');
    await storageDaemon([
      '--blockdev', `driver=file,node-name=f,filename=${copy},read-only=on`,
      '--blockdev', 'driver=qcow2,node-name=disk,file=f,read-only=on',
      '--nbd-server', `addr.type=unix,addr.path=${sock}`,
      '--export', JSON.stringify({ type: 'nbd', id: 'e', 'node-name': 'disk', name: 'x', writable: false, bitmaps: Object.keys(want) }),
    ], sock);
    const c = await connectNbd({ path: sock }, 'x', { clock: systemClock, timeoutMs: 10_000, metaContexts: Object.keys(want).map((n) => `qemu:dirty-bitmap:${n}`) });
    cleanups.push(() => c.close());
    for (const name of Object.keys(want)) {
      const dirty = (await c.blockStatus(`qemu:dirty-bitmap:${name}`, 0, SIZE)).filter((e) => e.flags & 1).map((e) => ({ offset: e.offset, length: e.length }));
      expect(await q.dirtyRanges([name]), `${name} as exported`).toEqual(dirty);
    }
  });

  it('a bitmap QEMU holds (a storage daemon has the image read-write) is in_use: a coded error, while guest bytes still read; stored back when it exits', async () => {
    const dir = await tmp();
    const img = await bitmapImage(dir);
    const qmp = join(dir, 'qmp.sock');
    const d = await storageDaemon([
      '--blockdev', `driver=file,node-name=f,filename=${img}`,
      '--blockdev', 'driver=qcow2,node-name=disk,file=f',
      '--chardev', `socket,id=m,path=${qmp},server=on,wait=off`, '--monitor', 'chardev=m',
    ], qmp);
    const held = await openImage(img);
    expect(held.bitmaps.every((b) => b.inUse)).toBe(true);
    expect(await failure(held.dirtyRanges(['b2']))).toMatchObject({ code: 'VMTC_HOST_DISK_BITMAP_IN_USE', details: { image: img, bitmap: 'b2' } });
    expect((await held.read(5 * MiB, 4)).every((b) => b === 0x20)).toBe(true);
    await d.stop();
    const after = await openImage(img);
    expect(after.bitmaps.some((b) => b.inUse)).toBe(false);
    expect(await after.dirtyRanges(['b2'])).toEqual(aligned(W2, 64 * KiB, SIZE));
  });

  it('a name the image does not have is a coded error', async () => {
    const dir = await tmp();
    const img = join(dir, 'n.qcow2');
    await qemuImg('create', '-q', '-f', 'qcow2', img, '8M');
    await qemuImg('bitmap', '--add', img, 'b1');
    const q = await openImage(img);
    expect(await q.dirtyRanges(['b1'])).toEqual([]);
    expect(await failure(q.dirtyRanges(['b1', 'nope']))).toMatchObject({ code: 'VMTC_HOST_DISK_CHECKPOINT_MISSING', details: { image: img, bitmap: 'nope' } });
  });
});

describe('openImageReader', () => {
  /** The system runner, recording what it is asked to run. */
  const recording = () => {
    const calls: string[][] = [];
    const r: CommandRunner = (argv, o) => {
      calls.push([...argv]);
      return systemRunner(argv, o);
    };
    return { run: r, calls };
  };

  it('reads a qcow2 chain in process, with the same bytes as the qemu-img path, spawning nothing', async () => {
    const dir = await tmp();
    const base = join(dir, 'base.qcow2');
    const top = join(dir, 'top.qcow2');
    await qemuImg('create', '-q', '-f', 'qcow2', base, '16M');
    await qemuIo(base, ['write -P 0xa1 0 3M', 'write -P 0xa2 9M 100k']);
    await qemuImg('create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', top, '16M');
    await qemuIo(top, ['write -P 0xa3 1M 64k', 'write -z 2M 64k']);
    const rec = recording();
    const native = await openImageReader(rec.run, top, 'qcow2');
    cleanups.push(() => native.close());
    const old = await openImageReaderByMap(systemRunner, top, 'qcow2');
    cleanups.push(() => old.close());
    expect(native.size).toBe(old.size);
    for (let at = 0; at < native.size; at += MiB) expect((await native.read(at, MiB)).equals(await old.read(at, MiB)), `chunk at ${at}`).toBe(true);
    expect((await native.read(2 * MiB + 10, 4)).every((b) => b === 0)).toBe(true);
    expect(rec.calls).toEqual([]);
  });

  it('a compressed image falls back to the qemu-img path when a read meets a compressed cluster; its digest is still right', async () => {
    const dir = await tmp();
    const src = join(dir, 'src.qcow2');
    const comp = join(dir, 'comp.qcow2');
    await qemuImg('create', '-q', '-f', 'qcow2', src, '8M');
    await qemuIo(src, ['write -P 0xb1 0 1M', 'write -P 0xb2 5M 64k']);
    await qemuImg('convert', '-c', '-O', 'qcow2', src, comp);
    const native = await openImage(comp);
    expect((await failure(native.read(0, 4096))).details).toMatchObject({ needsQemuImg: true, reason: 'a compressed cluster' });
    const rec = recording();
    const r = await openImageReader(rec.run, comp, 'qcow2');
    cleanups.push(() => r.close());
    expect((await r.read(3 * MiB, 4096)).every((b) => b === 0)).toBe(true); // unallocated: read in process
    expect(rec.calls).toEqual([]);
    // The map path refuses an image with compressed clusters, as it did before.
    expect((await failure(r.read(0, 4096))).details).toMatchObject({ needsConvert: true });
    expect(rec.calls.map((c) => c.slice(0, 2).join(' ')).sort()).toEqual(['qemu-img info', 'qemu-img map']);
    const raw = await qemuRaw(comp);
    const want = await digestDisk((o, l) => raw.read(o, l), raw.size, { chunkBytes: MiB });
    expect(await digestImageByMap(systemRunner, comp, 'qcow2', dir, { chunkBytes: MiB })).toEqual(want);
    // And an uncompressed image's digest is the same through the native path.
    const srcRaw = await qemuRaw(src);
    expect(await digestImageByMap(systemRunner, src, 'qcow2', dir, { chunkBytes: MiB })).toEqual(await digestDisk((o, l) => srcRaw.read(o, l), srcRaw.size, { chunkBytes: MiB }));
  });
});

describe('a seeded fuzz of mutations of a real small image', () => {
  it('each mutation reads right, or gives a coded error; where qemu-img also reads a mutated file, the bytes agree', async () => {
    const dir = await tmp();
    const img = join(dir, 'f.qcow2');
    // 512 B clusters: the header, L1, refcounts, L2 tables and the bitmap's metadata are all in
    // the first few KiB, which is where most mutations land.
    await qemuImg('create', '-q', '-f', 'qcow2', '-o', 'cluster_size=512', img, '2M');
    await qemuIo(img, ['write -P 0xc1 0 3k', 'write -P 0xc2 100k 10k', 'write -z 101k 2k']);
    await qemuImg('bitmap', '--add', '-g', '4096', img, 'b');
    await qemuIo(img, ['write -P 0xc3 1M 7k', 'write -P 0xc4 2047k 1k']);
    const original = await readFile(img);
    const expected = await (await qemuRaw(img)).read(0, 2 * MiB);
    const map = JSON.parse((await qemuImg('map', '--output=json', img)).stdout) as { start: number; length: number; data: boolean; offset?: number }[];
    const hostToGuest = (h: number): number | undefined => {
      for (const e of map) if (e.data && e.offset !== undefined && h >= e.offset && h < e.offset + e.length) return e.start + (h - e.offset);
      return undefined;
    };
    const rand = rng(2020);
    const pick = (n: number) => Math.floor(rand() * n);
    const counts = { ok: 0, coded: 0, data: 0, checkedByQemu: 0 };
    for (let i = 0; i < 2000; i++) {
      const m = Buffer.from(original);
      const kind = pick(3);
      const at = pick(kind === 2 ? m.length : Math.min(m.length, 16 * KiB));
      if (kind === 1) m.writeBigUInt64BE(BigInt.asUintN(64, BigInt(Math.floor(rand() * 2 ** 53)) << BigInt(pick(12))), Math.min(at - (at % 8), m.length - 8));
      else m[at] = pick(256);
      const io = memoryQcow2Io({ '/f/f.qcow2': m });
      let q: Qcow2Image | undefined;
      let got: Buffer | undefined;
      try {
        q = await openQcow2('/f/f.qcow2', { io });
        got = await q.read(0, q.size);
        expect(got.length).toBe(q.size);
        const g = kind !== 1 ? hostToGuest(at) : undefined;
        if (g !== undefined) {
          const want = Buffer.from(expected);
          want[g] = m[at]!;
          expect(got.equals(want), `mutation ${i}: data at ${at}`).toBe(true);
          counts.data++;
        }
        try {
          await q.dirtyRanges(['b']);
        } catch (e) {
          if (!(e instanceof VmtcError)) throw e;
        }
        counts.ok++;
      } catch (e) {
        if (!(e instanceof VmtcError)) throw new Error(`mutation ${i} (kind ${kind} at ${at}) threw ${String(e)}`, { cause: e });
        counts.coded++;
      } finally {
        await q?.close();
      }
      expect(io.openHandles()).toBe(0);
      // Every 50th that read: what qemu-img reads of the same file, when it reads it at all.
      if (got && i % 50 === 0) {
        const f = join(dir, `m${i}.qcow2`);
        await writeFile(f, m);
        const theirs = await run(['qemu-img', 'convert', '-U', '-f', 'qcow2', '-O', 'raw', f, `${f}.raw`]).then(() => readFile(`${f}.raw`), () => undefined);
        if (theirs && theirs.length === got.length) {
          expect(got.equals(theirs), `mutation ${i} (kind ${kind} at ${at}) against qemu-img`).toBe(true);
          counts.checkedByQemu++;
        }
        await rm(f, { force: true });
        await rm(`${f}.raw`, { force: true });
      }
    }
    console.log(`[numbers] fuzz outcomes: ${JSON.stringify(counts)}`);
    expect(counts.ok).toBeGreaterThan(100);
    expect(counts.coded).toBeGreaterThan(100);
    expect(counts.data).toBeGreaterThan(10);
    expect(counts.checkedByQemu).toBeGreaterThan(5);
  }, 120_000);
});
