// Digests of disks (agents/host/disks/digest.ts) and the parsers of LVM's and thin_delta's
// output (agents/host/disks/lvm-parse.ts): pure functions.
import { describe, expect, it } from 'vitest';
import { compareDigests, digestDisk, merkleRoot, sampleIndices, type ReadAt } from '../../agents/host/disks/digest.ts';
import { changedRanges, parseLvsJson, parseThinDelta } from '../../agents/host/disks/lvm-parse.ts';

const MiB = 1024 * 1024;
const readerOf = (buf: Buffer): ReadAt => async (off, len) => buf.subarray(off, Math.min(buf.length, off + len));

describe('disk digests', () => {
  const disk = Buffer.alloc(8 * MiB + 4096, 0);
  disk.fill(0x5a, 1 * MiB, 3 * MiB);

  it('Merkle: equal disks give equal roots; one changed byte changes the root and names its chunk', async () => {
    const a = await digestDisk(readerOf(disk), disk.length);
    expect(a.leaves).toHaveLength(9); // 8 whole chunks and a short last one
    expect(compareDigests(a, await digestDisk(readerOf(Buffer.from(disk)), disk.length))).toEqual({ equal: true, differing: [] });
    const b = Buffer.from(disk);
    b[5 * MiB + 17] = 1;
    const d = await digestDisk(readerOf(b), b.length);
    expect(d.root).not.toBe(a.root);
    expect(compareDigests(a, d)).toEqual({ equal: false, differing: [5] });
    // The last, short chunk counts too.
    const c = Buffer.from(disk);
    c[c.length - 1] = 9;
    expect(compareDigests(a, await digestDisk(readerOf(c), c.length)).differing).toEqual([8]);
  });

  it('two swapped chunks do not hash alike (the index is part of the leaf)', async () => {
    const x = Buffer.alloc(2 * MiB);
    x.fill(1, 0, MiB);
    const y = Buffer.alloc(2 * MiB);
    y.fill(1, MiB);
    expect((await digestDisk(readerOf(x), x.length)).root).not.toBe((await digestDisk(readerOf(y), y.length)).root);
  });

  it('sampled: both ends pick the same chunks from a seed; another seed picks others; a mismatch in a sampled chunk is found', async () => {
    expect(sampleIndices(1000, 10, 's')).toEqual(sampleIndices(1000, 10, 's'));
    expect(sampleIndices(1000, 10, 's')).not.toEqual(sampleIndices(1000, 10, 't'));
    expect(sampleIndices(1000, 10, 's')).toHaveLength(10);
    expect(sampleIndices(5, 10, 's')).toEqual([0, 1, 2, 3, 4]);
    const a = await digestDisk(readerOf(disk), disk.length, { mode: 'sampled', samples: 3, seed: 'k' });
    const i = a.indices![1]!;
    const b = Buffer.from(disk);
    b[i * MiB] ^= 0xff;
    expect(compareDigests(a, await digestDisk(readerOf(b), b.length, { mode: 'sampled', samples: 3, seed: 'k' })).differing).toEqual([i]);
    expect(compareDigests(a, await digestDisk(readerOf(disk), disk.length, { mode: 'sampled', samples: 3, seed: 'other' }))).toMatchObject({ equal: false, incomparable: expect.stringContaining('seed') });
  });

  it('different sizes or chunking are incomparable, never equal; a short read and bad options are coded errors', async () => {
    const a = await digestDisk(readerOf(disk), disk.length);
    expect(compareDigests(a, await digestDisk(readerOf(disk), disk.length - 4096))).toMatchObject({ equal: false, incomparable: expect.stringContaining('size') });
    expect(compareDigests(a, await digestDisk(readerOf(disk), disk.length, { chunkBytes: 65536 }))).toMatchObject({ equal: false, incomparable: expect.stringContaining('chunkBytes') });
    await expect(digestDisk(readerOf(disk), disk.length + 1)).rejects.toMatchObject({ code: 'VMTC_HOST_DISK_UNREADABLE' });
    await expect(digestDisk(readerOf(disk), disk.length, { chunkBytes: 1000 })).rejects.toMatchObject({ code: 'VMTC_HOST_BAD_PARAMS' });
    await expect(digestDisk(readerOf(disk), disk.length, { mode: 'x' as 'merkle' })).rejects.toMatchObject({ code: 'VMTC_HOST_BAD_PARAMS' });
    expect(merkleRoot([])).toMatch(/^[0-9a-f]{64}$/);
  });
});

describe('LVM and thin_delta output', () => {
  it('reads thin_delta\'s simple and --verbose XML alike, in pool blocks, into byte ranges to send', () => {
    const simple = `<superblock uuid="" time="3" transaction="5" version="2" data_block_size="128" nr_data_blocks="1024">
  <diff left="1" right="2">
    <same begin="0" length="16"/>
    <different begin="16" length="2"/>
    <left_only begin="20" length="1"/>
    <right_only begin="30" length="4"/>
  </diff>
</superblock>`;
    const verbose = `<superblock uuid="" time="3" transaction="5" version="2" data_block_size="128" nr_data_blocks="1024">
  <diff left="1" right="2">
    <same>
      <range begin="0" data_begin="7" length="16"/>
    </same>
    <different>
      <range begin="16" left_data_begin="1" right_data_begin="2" length="2"/>
    </different>
    <left_only>
      <range begin="20" data_begin="3" length="1"/>
    </left_only>
    <right_only>
      <range begin="30" data_begin="9" length="4"/>
    </right_only>
  </diff>
</superblock>`;
    const want = [{ offset: 16 * 65536, length: 2 * 65536 }, { offset: 20 * 65536, length: 65536, zeroed: true }, { offset: 30 * 65536, length: 4 * 65536 }];
    for (const x of [simple, verbose]) {
      const d = parseThinDelta(x);
      expect(d).toMatchObject({ dataBlockSectors: 128, left: 1, right: 2 });
      expect(changedRanges(d)).toEqual(want);
    }
    expect(() => parseThinDelta('<superblock data_block_size="128"><diff left="1" right="2"><different begin="1" length="2"/>')).toThrow(expect.objectContaining({ code: 'VMTC_HOST_DISK_TOOL_FAILED' }));
    expect(() => parseThinDelta('garbage')).toThrow(expect.objectContaining({ code: 'VMTC_HOST_DISK_TOOL_FAILED' }));
    expect(() => parseThinDelta('<superblock data_block_size="128"><diff left="1" right="2"><different begin="-1" length="2"/></diff></superblock>')).toThrow(expect.objectContaining({ code: 'VMTC_HOST_DISK_TOOL_FAILED' }));
  });

  it('reads lvs --reportformat json in bytes', () => {
    const out = JSON.stringify({ report: [{ lv: [{ lv_name: 'root', vg_name: 'vg0', lv_attr: 'Vwi-aotz--', lv_size: '1073741824', pool_lv: 'pool0', origin: '', thin_id: '3', lv_tags: 'a,vmtc_cp.2.c2', data_percent: '12.50', metadata_percent: '' }] }] });
    expect(parseLvsJson(out)).toEqual([{ name: 'root', vg: 'vg0', attr: 'Vwi-aotz--', sizeBytes: 1073741824, pool: 'pool0', origin: '', thinId: 3, tags: ['a', 'vmtc_cp.2.c2'], dataPercent: 12.5, metadataPercent: null }]);
    expect(() => parseLvsJson('{"report":[{"lv":[{"lv_name":"x","lv_size":"1.00g"}]}]}')).toThrow(expect.objectContaining({ code: 'VMTC_HOST_DISK_TOOL_FAILED' }));
    expect(() => parseLvsJson('nope')).toThrow(expect.objectContaining({ code: 'VMTC_HOST_DISK_TOOL_FAILED' }));
  });
});
