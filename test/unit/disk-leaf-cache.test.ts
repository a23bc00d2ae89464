// Incremental digests (docs/disks.md#incremental-digests): the chunks byte ranges touch, a digest
// from kept leaves with some chunks read again (agents/host/disks/leaf-cache.ts), the leaves a
// host keeps between the digests of one move (kept-leaves.ts), and reading an image through its
// `qemu-img map` (image-reader.ts) with a runner that answers as qemu-img does, over real files.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { digestDisk, type ReadAt } from '../../agents/host/disks/digest.ts';
import { chunksOfRanges, refreshLeaves } from '../../agents/host/disks/leaf-cache.ts';
import { KeptLeaves } from '../../agents/host/disks/kept-leaves.ts';
import { openImageReader, parseMap } from '../../agents/host/disks/image-reader.ts';
import type { CommandRunner } from '../../agents/host/disks/io.ts';
import { cleanupsAfterEach } from '../helpers/cleanups.ts';

const MiB = 1024 * 1024;
const readerOf = (buf: Buffer): ReadAt => async (off, len) => buf.subarray(off, Math.min(buf.length, off + len));

describe('leaf caches', () => {
  it('chunksOfRanges: every chunk a range touches, once, sorted, clipped to the disk', () => {
    expect(chunksOfRanges([{ offset: 3 * MiB - 1, length: 2 }, { offset: 0, length: 1 }, { offset: 0, length: 4096 }, { offset: 5 * MiB, length: 0 }], MiB, 8 * MiB)).toEqual([0, 2, 3]);
    expect(chunksOfRanges([{ offset: 7 * MiB, length: 64 * MiB }], MiB, 8 * MiB + 512)).toEqual([7, 8]);
    expect(() => chunksOfRanges([{ offset: -1, length: 5 }], MiB, 8 * MiB)).toThrow(expect.objectContaining({ code: 'VMTC_HOST_BAD_PARAMS' }));
  });

  it('refreshLeaves: kept leaves plus the written chunks read again give the digest of the disk now', async () => {
    const before = Buffer.alloc(8 * MiB + 4096, 0x11);
    const kept = await digestDisk(readerOf(before), before.length);
    const after = Buffer.from(before);
    after.fill(0x22, 2 * MiB + 5, 2 * MiB + 70_000);
    after[after.length - 1] = 7; // the short last chunk
    const full = await digestDisk(readerOf(after), after.length);
    const reads: number[] = [];
    const inc = await refreshLeaves(kept, chunksOfRanges([{ offset: 2 * MiB + 5, length: 69_995 }, { offset: after.length - 1, length: 1 }], MiB, after.length), async (o, l) => {
      reads.push(o);
      return readerOf(after)(o, l);
    });
    expect(inc).toEqual(full);
    expect(reads).toEqual([2 * MiB, 8 * MiB]);
    expect(kept.root).not.toBe(full.root); // the cache itself is left as it was
    // The leaves are only as good as the list of written chunks: one left out stays stale.
    expect((await refreshLeaves(kept, [2], readerOf(after))).root).not.toBe(full.root);
  });

  it('refreshLeaves refuses chunks outside the disk, a cache of another shape and a short read', async () => {
    const d = Buffer.alloc(2 * MiB, 1);
    const kept = await digestDisk(readerOf(d), d.length);
    await expect(refreshLeaves(kept, [2], readerOf(d))).rejects.toMatchObject({ code: 'VMTC_HOST_BAD_PARAMS' });
    await expect(refreshLeaves({ ...kept, leaves: kept.leaves.slice(1) }, [0], readerOf(d))).rejects.toMatchObject({ code: 'VMTC_HOST_BAD_PARAMS' });
    await expect(refreshLeaves(kept, [1], async () => Buffer.alloc(10))).rejects.toMatchObject({ code: 'VMTC_HOST_DISK_UNREADABLE' });
  });

  it('KeptLeaves: taken once, and only at the very checkpoint they were kept at', async () => {
    const k = new KeptLeaves();
    const digest = { disks: [{ index: 0, size: MiB, chunkBytes: MiB, root: 'r', leaves: ['a'] }] };
    const cp = { id: 'rep_1-3', seq: 3, takenAt: 1, ref: 'x' };
    k.keep('source', 'rep_1', cp, digest);
    expect(k.take('store', 'rep_1', cp)).toBeUndefined();
    expect(k.take('source', 'rep_1', { ...cp, seq: 4 })).toBeUndefined();
    expect(k.take('source', 'rep_1', cp)).toBeUndefined(); // a wrong take used them up
    k.keep('source', 'rep_1', cp, digest);
    digest.disks[0]!.leaves[0] = 'changed after keep';
    expect(k.take('source', 'rep_1', cp)).toEqual([{ size: MiB, chunkBytes: MiB, leaves: ['a'] }]);
    expect(k.take('source', 'rep_1', cp)).toBeUndefined();
    k.keep('store', 'rep_2', cp, digest);
    k.forget('rep_2');
    expect(k.take('store', 'rep_2', cp)).toBeUndefined();
  });
});

describe('reading an image through its map', () => {
  const cleanups = cleanupsAfterEach();

  it('parseMap refuses extents that are not contiguous from 0, and output that is not a map', () => {
    expect(parseMap('[{"start":0,"length":10,"depth":0,"zero":true,"data":false}]')).toEqual([{ start: 0, length: 10, depth: 0, zero: true, data: false }]);
    expect(() => parseMap('[{"start":5,"length":10,"depth":0,"zero":true,"data":false}]')).toThrow(expect.objectContaining({ code: 'VMTC_HOST_DISK_TOOL_FAILED' }));
    expect(() => parseMap('nope')).toThrow(expect.objectContaining({ code: 'VMTC_HOST_DISK_TOOL_FAILED' }));
  });

  async function chain(map: unknown[]): Promise<{ run: CommandRunner; top: string }> {
    const dir = await mkdtemp(join(tmpdir(), 'vmtc-leaf-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    const top = join(dir, 'top.img');
    const base = join(dir, 'base.img');
    await writeFile(top, Buffer.concat([Buffer.alloc(4096, 0xaa), Buffer.alloc(4096, 0xbb)]));
    await writeFile(base, Buffer.alloc(16384, 0xcc));
    const info = [{ filename: top, format: 'qcow2', 'virtual-size': 16384, 'backing-filename': 'base.img' }, { filename: 'base.img', format: 'raw', 'virtual-size': 16384 }];
    const run: CommandRunner = async (argv) => {
      if (argv[1] === 'info') return { code: 0, stdout: JSON.stringify(info), stderr: '' };
      if (argv[1] === 'map') return { code: 0, stdout: JSON.stringify(map), stderr: '' };
      return { code: 1, stdout: '', stderr: 'unexpected' };
    };
    return { run, top };
  }

  it('reads data from the layer and host offset the map names, zeros elsewhere, across extents', async () => {
    const { run, top } = await chain([
      { start: 0, length: 4096, depth: 0, present: true, zero: false, data: true, offset: 4096 }, // top's second block (0xbb)
      { start: 4096, length: 4096, depth: 1, present: true, zero: false, data: true, offset: 8192 }, // base (relative name)
      { start: 8192, length: 4096, depth: 0, present: true, zero: true, data: false },
      { start: 12288, length: 4096, depth: 0, present: true, zero: false, data: true, offset: 0 }, // top's first block (0xaa)
    ]);
    const r = await openImageReader(run, top, 'qcow2');
    cleanups.push(() => r.close());
    expect(r.size).toBe(16384);
    const all = await r.read(0, 16384);
    expect(all).toEqual(Buffer.concat([Buffer.alloc(4096, 0xbb), Buffer.alloc(4096, 0xcc), Buffer.alloc(4096, 0), Buffer.alloc(4096, 0xaa)]));
    expect(await r.read(4000, 200)).toEqual(all.subarray(4000, 4200));
    expect(await r.read(16000, 1000)).toEqual(all.subarray(16000)); // short only at the end of the disk
  });

  it('an extent of data without a host offset (compressed) or a map that does not cover the disk is refused', async () => {
    const c = await chain([{ start: 0, length: 16384, depth: 0, zero: false, data: true, compressed: true }]);
    await expect(openImageReader(c.run, c.top, 'qcow2')).rejects.toMatchObject({ code: 'VMTC_HOST_DISK_UNREADABLE', details: { needsConvert: true } });
    const s = await chain([{ start: 0, length: 8192, depth: 0, zero: true, data: false }]);
    await expect(openImageReader(s.run, s.top, 'qcow2')).rejects.toMatchObject({ code: 'VMTC_HOST_DISK_TOOL_FAILED' });
  });
});
