// The in-process qcow2 reader (agents/host/disks/qcow2-format.ts, qcow2-file.ts) on images built
// here in Buffers, byte by byte from the qcow2 image format specification QEMU publishes, and
// served from memory (test/helpers/qcow2-helpers.ts): reads through L1/L2, zero and unallocated
// clusters and a backing file; bitmaps; hostile and truncated headers, tables and bitmaps, each a
// coded error (VMTC_..., with `needsQemuImg` exactly where qemu-img could still read the image);
// and a seeded fuzz of mutations where every outcome is a correct read or a coded error. Real
// images made by qemu-img are test/integration/qcow2-file.test.ts's.
import { describe, expect, it } from 'vitest';
import { VmtcError } from '../../src/common/errors.ts';
import { openQcow2, type Qcow2Image } from '../../agents/host/disks/qcow2-file.ts';
import { addSetBits, bitmapTableEntries, RangeList, unionRanges } from '../../agents/host/disks/qcow2-format.ts';
import { codedFailure as failure, memoryQcow2Io, seededRandom as rng, type MemoryQcow2Io } from '../helpers/qcow2-helpers.ts';

interface BuildBitmap {
  name: string;
  granularityBits?: number;
  flags?: number;
  type?: number;
  extraData?: number;
  /** Bits set in the data. */
  bits?: number[];
  /** The bitmap table's first entry as "all ones" (offset 0, bit 0). */
  allOnesFirst?: boolean;
  tableSize?: number;
}

interface BuildOptions {
  version?: 2 | 3;
  clusterBits?: number;
  size: number;
  /** Guest clusters: filled with a byte, zero-flagged, or marked compressed. */
  clusters?: { guest: number; fill?: number; zero?: boolean; compressed?: boolean }[];
  backing?: { name: string; format?: string };
  bitmaps?: BuildBitmap[];
  incompatible?: number;
  autoclear?: number;
}

interface Built {
  buf: Buffer;
  clusterBytes: number;
  l1Offset: number;
  l2Offsets: number[];
  data: Map<number, number>;
  bitmapDirOffset: number;
  bitmapTableOffsets: number[];
  extAt: number;
}

/** A qcow2 image: header (v3: 112 bytes), extensions, backing name in cluster 0; then the L1
 *  table, L2 tables, data clusters, the bitmap directory, each bitmap's table and data. No
 *  refcounts: the reader never reads them. */
function build(o: BuildOptions): Built {
  const version = o.version ?? 3;
  const cb = 2 ** (o.clusterBits ?? 9);
  const l2e = cb / 8;
  const l1Size = Math.max(1, Math.ceil(o.size / (cb * l2e)));
  const clusters: Buffer[] = [Buffer.alloc(cb)];
  const alloc = (n = 1) => {
    const at = clusters.length * cb;
    for (let i = 0; i < n; i++) clusters.push(Buffer.alloc(cb));
    return at;
  };
  const l1Offset = alloc(Math.ceil((l1Size * 8) / cb));
  const l2Offsets: number[] = [];
  const data = new Map<number, number>();
  const put = (off: number, f: (b: Buffer, at: number) => void) => f(clusters[Math.floor(off / cb)]!, off % cb);
  const w64 = (off: number, v: bigint) => put(off, (b, at) => b.writeBigUInt64BE(v, at));
  for (const c of o.clusters ?? []) {
    const l1i = Math.floor(c.guest / l2e);
    if (!l2Offsets[l1i]) {
      l2Offsets[l1i] = alloc();
      w64(l1Offset + l1i * 8, BigInt(l2Offsets[l1i]!) | (1n << 63n));
    }
    const entryAt = l2Offsets[l1i]! + (c.guest % l2e) * 8;
    if (c.zero) w64(entryAt, 1n);
    else if (c.compressed) w64(entryAt, (1n << 62n) | BigInt(alloc()));
    else {
      const d = alloc();
      clusters[d / cb]!.fill(c.fill ?? 0);
      data.set(c.guest, d);
      w64(entryAt, BigInt(d) | (1n << 63n));
    }
  }
  let bitmapDirOffset = 0;
  const bitmapTableOffsets: number[] = [];
  let dirBytes = 0;
  if (o.bitmaps?.length) {
    const entries: Buffer[] = [];
    for (const b of o.bitmaps) {
      const gb = b.granularityBits ?? 16;
      const tableSize = b.tableSize ?? bitmapTableEntries(o.size, Math.min(63, Math.max(0, gb)), cb);
      const table = alloc(Math.max(1, Math.ceil((tableSize * 8) / cb)));
      bitmapTableOffsets.push(table);
      const dataClusters = new Map<number, number>();
      for (const bit of b.bits ?? []) {
        const byte = Math.floor(bit / 8);
        const ci = Math.floor(byte / cb);
        if (!dataClusters.has(ci)) {
          dataClusters.set(ci, alloc());
          w64(table + ci * 8, BigInt(dataClusters.get(ci)!));
        }
        put(dataClusters.get(ci)! + (byte % cb), (buf, at) => { buf[at]! |= 1 << bit % 8; });
      }
      if (b.allOnesFirst) w64(table, 1n);
      const name = Buffer.from(b.name);
      const extra = b.extraData ?? 0;
      const e = Buffer.alloc(Math.ceil((24 + extra + name.length) / 8) * 8);
      e.writeBigUInt64BE(BigInt(table), 0);
      e.writeUInt32BE(tableSize, 8);
      e.writeUInt32BE(b.flags ?? 2, 12);
      e[16] = b.type ?? 1;
      e[17] = gb;
      e.writeUInt16BE(name.length, 18);
      e.writeUInt32BE(extra, 20);
      name.copy(e, 24 + extra);
      entries.push(e);
    }
    const dir = Buffer.concat(entries);
    dirBytes = dir.length;
    bitmapDirOffset = alloc(Math.ceil(dir.length / cb));
    for (let i = 0; i < dir.length; i++) put(bitmapDirOffset + i, (b, at) => { b[at] = dir[i]!; });
  }
  const buf = Buffer.concat(clusters);
  // Header.
  buf.writeUInt32BE(0x514649fb, 0);
  buf.writeUInt32BE(version, 4);
  buf.writeUInt32BE(Math.log2(cb), 20);
  buf.writeBigUInt64BE(BigInt(o.size), 24);
  buf.writeUInt32BE(l1Size, 36);
  buf.writeBigUInt64BE(BigInt(l1Offset), 40);
  let at = 72;
  if (version === 3) {
    buf.writeBigUInt64BE(BigInt(o.incompatible ?? 0), 72);
    buf.writeBigUInt64BE(BigInt(o.autoclear ?? (o.bitmaps?.length ? 1 : 0)), 88);
    buf.writeUInt32BE(4, 96);
    buf.writeUInt32BE(112, 100);
    at = 112;
  }
  const extAt = at;
  const ext = (type: number, payload: Buffer) => {
    buf.writeUInt32BE(type, at);
    buf.writeUInt32BE(payload.length, at + 4);
    payload.copy(buf, at + 8);
    at += 8 + Math.ceil(payload.length / 8) * 8;
  };
  if (o.backing?.format) ext(0xe2792aca, Buffer.from(o.backing.format));
  if (o.bitmaps?.length) {
    const p = Buffer.alloc(24);
    p.writeUInt32BE(o.bitmaps.length, 0);
    p.writeBigUInt64BE(BigInt(dirBytes), 8);
    p.writeBigUInt64BE(BigInt(bitmapDirOffset), 16);
    ext(0x23852875, p);
  }
  at += 8; // end of extensions (zeros)
  if (o.backing) {
    const n = Buffer.from(o.backing.name);
    buf.writeBigUInt64BE(BigInt(at), 8);
    buf.writeUInt32BE(n.length, 16);
    n.copy(buf, at);
  }
  return { buf, clusterBytes: cb, l1Offset, l2Offsets, data, bitmapDirOffset, bitmapTableOffsets, extAt };
}

const IMG = '/m/img.qcow2';

async function open(io: MemoryQcow2Io, path = IMG, o: { maxChain?: number } = {}): Promise<Qcow2Image> {
  return openQcow2(path, { ...o, io });
}

async function openFailure(buf: Buffer, extra: Record<string, Buffer> = {}): Promise<VmtcError> {
  return failure(open(memoryQcow2Io({ [IMG]: buf, ...extra })));
}

/** Reads everything after opening: the failure, if any. */
async function readFailure(buf: Buffer): Promise<VmtcError> {
  const io = memoryQcow2Io({ [IMG]: buf });
  return failure(open(io).then((q) => q.read(0, q.size)));
}

const MiB = 1024 * 1024;
const set32 = (b: Buffer, at: number, v: number) => { b.writeUInt32BE(v >>> 0, at); return b; };
const set64 = (b: Buffer, at: number, v: bigint) => { b.writeBigUInt64BE(v, at); return b; };

describe('reading guest bytes of images built in Buffers', () => {
  it('data clusters, zero-flagged clusters and unallocated ones read as they should, across L2 tables, with unaligned ranges', async () => {
    // 512 B clusters: an L2 table maps 64 clusters (32 KiB), so 256 KiB spans 8 tables.
    const size = 256 * 1024;
    const clusters = [
      { guest: 0, fill: 0x11 }, { guest: 1, fill: 0x12 }, { guest: 63, fill: 0x13 }, { guest: 64, fill: 0x14 }, // across a table boundary
      { guest: 65, zero: true }, { guest: 300, fill: 0x15 }, { guest: 511, fill: 0x16 },
    ];
    const b = build({ size, clusters });
    const q = await open(memoryQcow2Io({ [IMG]: b.buf }));
    const expected = Buffer.alloc(size);
    for (const c of clusters) if (c.fill) expected.fill(c.fill, c.guest * 512, (c.guest + 1) * 512);
    expect(q.size).toBe(size);
    expect(q.clusterBytes).toBe(512);
    expect(await q.read(0, size)).toEqual(expected);
    for (const [o, l] of [[1, 1], [500, 30], [63 * 512 - 7, 700], [32 * 1024 - 1, 2], [100_000, 70_000], [size - 3, 10]]) {
      expect(await q.read(o!, l!)).toEqual(expected.subarray(o!, Math.min(size, o! + l!)));
    }
    expect((await q.read(size, 10)).length).toBe(0);
    await q.close();
    await q.close();
    expect((await failure(q.read(0, 1))).details).toMatchObject({ reason: 'the reader is closed' });
  });

  it('a backing file: unallocated clusters read from it (zeros past its end), zero-flagged ones do not; a v2 image', async () => {
    const size = 64 * 1024;
    const base = Buffer.alloc(10_000, 0xbb); // smaller than the image
    for (const version of [2, 3] as const) {
      const clusters = version === 3 ? [{ guest: 0, fill: 0x01 }, { guest: 2, zero: true }] : [{ guest: 0, fill: 0x01 }];
      const b = build({ version, size, clusters, backing: { name: 'sub/../base.raw', format: 'raw' } });
      const q = await open(memoryQcow2Io({ [IMG]: b.buf, '/m/base.raw': base }));
      const expected = Buffer.alloc(size);
      base.copy(expected);
      expected.fill(0x01, 0, 512);
      if (version === 3) expected.fill(0, 1024, 1536);
      expect(await q.read(0, size)).toEqual(expected);
      await q.close();
    }
  });

  it('opens each file of the chain once, reads each L2 table once for reads running at once, and closes every file', async () => {
    const size = 128 * 1024;
    const b = build({ size, clusters: Array.from({ length: 200 }, (_, i) => ({ guest: i, fill: i })), backing: { name: 'mid.qcow2' } });
    const mid = build({ size: 120 * 1024, clusters: [{ guest: 220, fill: 0x77 }], backing: { name: '/m/base.raw' } });
    const io = memoryQcow2Io({ [IMG]: b.buf, '/m/mid.qcow2': mid.buf, '/m/base.raw': Buffer.alloc(1000, 0xcc) });
    const q = await open(io);
    const parts = await Promise.all(Array.from({ length: 8 }, (_, i) => q.read(i * 16 * 1024, 16 * 1024)));
    const all = Buffer.concat(parts);
    expect(all[199 * 512]).toBe(199);
    expect(all[220 * 512]).toBe(0x77);
    expect(all[230 * 512]).toBe(0); // the middle layer's unallocated cluster, past the base's end
    expect(all[245 * 512]).toBe(0); // past the middle layer's end
    expect(all[300]).toBe(0); // the top's own cluster 0 (filled with 0) hides the base's 0xcc
    expect([...io.opens.values()]).toEqual([1, 1, 1]);
    for (const l2 of b.l2Offsets) expect(io.reads.filter((r) => r.path === IMG && r.position === l2).length).toBe(1);
    // Contiguous data clusters are read at once: 200 clusters in 8 reads, each split at most where
    // an L2 table lies between its data clusters in the file.
    const dataAt = new Set(b.data.values());
    const dataReads = io.reads.filter((r) => r.path === IMG && dataAt.has(r.position));
    expect(dataReads.reduce((n, r) => n + r.length, 0)).toBe(200 * 512);
    expect(dataReads.length).toBeLessThanOrEqual(16);
    await q.close();
    expect(io.openHandles()).toBe(0);
  });

  it('the L2 cache is bounded and a table is read again once evicted', async () => {
    const size = 64 * 64 * 512; // 64 tables
    const b = build({ size, clusters: Array.from({ length: 64 }, (_, i) => ({ guest: i * 64, fill: i + 1 })) });
    const io = memoryQcow2Io({ [IMG]: b.buf });
    const q = await openQcow2(IMG, { io, l2CacheBytes: 4 * 512 });
    for (let i = 0; i < 64; i++) expect((await q.read(i * 64 * 512, 1))[0]).toBe(i + 1);
    expect((await q.read(0, 1))[0]).toBe(1);
    expect(io.reads.filter((r) => r.position === b.l2Offsets[0]).length).toBe(2);
    expect(io.reads.filter((r) => r.position === b.l2Offsets[63]).length).toBe(1);
    await q.close();
  });
});

describe('hostile and unsupported images give coded errors', () => {
  const base = () => build({ size: 64 * 1024, clusters: [{ guest: 0, fill: 1 }, { guest: 5, fill: 2 }] });

  it('headers: not qcow2, truncated, unknown version, cluster_bits, size, L1 bounds, header_length', async () => {
    const cases: [string, Buffer, { reason: RegExp; needsQemuImg?: boolean }][] = [
      ['empty file', Buffer.alloc(0), { reason: /not a qcow2 image/, needsQemuImg: true }],
      ['garbage', Buffer.alloc(4096, 0x5a), { reason: /not a qcow2 image/, needsQemuImg: true }],
      ['truncated inside the v2 fields', base().buf.subarray(0, 60), { reason: /ends inside the qcow2 header/ }],
      ['truncated inside the v3 fields', base().buf.subarray(0, 90), { reason: /ends inside the qcow2 header/ }],
      ['version 4', set32(base().buf, 4, 4), { reason: /version 4/, needsQemuImg: true }],
      ['cluster_bits 8', set32(base().buf, 20, 8), { reason: /cluster_bits 8/ }],
      ['cluster_bits 22', set32(base().buf, 20, 22), { reason: /cluster_bits 22/ }],
      ['cluster_bits 2^32-1', set32(base().buf, 20, 0xffffffff), { reason: /cluster_bits/ }],
      ['size 2^63', set64(base().buf, 24, 1n << 63n), { reason: /virtual size is too large/ }],
      ['L1 too small for the size', set64(base().buf, 24, 1n << 40n), { reason: /L1 table is too small/ }],
      ['huge l1_size', set32(base().buf, 36, 0xffffffff), { reason: /L1 table is larger/ }],
      ['l1_size past the end of the file', set32(base().buf, 36, 4_000_000), { reason: /L1 table is not a cluster-aligned range within the file/ }],
      ['L1 offset unaligned', set64(base().buf, 40, 513n), { reason: /L1 table is not a cluster-aligned/ }],
      ['L1 offset past the end', set64(base().buf, 40, 1n << 50n), { reason: /L1 table is not/ }],
      ['L1 offset 2^64-1', set64(base().buf, 40, (1n << 64n) - 1n), { reason: /L1 table is not/ }],
      ['header_length 100', set32(base().buf, 100, 100), { reason: /header_length 100/ }],
      ['header_length 113', set32(base().buf, 100, 113), { reason: /header_length 113/ }],
      ['header_length past the cluster', set32(base().buf, 100, 1024), { reason: /header_length 1024/ }],
    ];
    for (const [what, buf, want] of cases) {
      const e = await openFailure(buf);
      expect(e.code, what).toBe('VMTC_HOST_DISK_UNREADABLE');
      expect(e.details?.reason, what).toMatch(want.reason);
      expect(e.details?.needsQemuImg === true, what).toBe(want.needsQemuImg === true);
    }
  });

  it('features: encryption, the corrupt bit, external data files, extended L2 and unknown bits need qemu-img; the dirty bit is fine', async () => {
    const cases: [string, Buffer, RegExp][] = [
      ['AES', set32(base().buf, 32, 1), /encrypted/],
      ['LUKS', set32(base().buf, 32, 2), /encrypted/],
      ['corrupt bit', set64(base().buf, 72, 2n), /corrupt bit/],
      ['external data file bit', set64(base().buf, 72, 4n), /external data file/],
      ['extended L2 bit', set64(base().buf, 72, 16n), /extended L2/],
      ['unknown bit 5', set64(base().buf, 72, 32n), /unknown incompatible/],
      ['unknown bit 63', set64(base().buf, 72, 1n << 63n), /unknown incompatible/],
    ];
    for (const [what, buf, reason] of cases) {
      const e = await openFailure(buf);
      expect(e.details, what).toMatchObject({ needsQemuImg: true });
      expect(e.details?.reason, what).toMatch(reason);
    }
    const dirty = set64(base().buf, 72, 1n | 8n); // dirty + compression type (only compressed clusters care)
    const q = await open(memoryQcow2Io({ [IMG]: dirty }));
    expect((await q.read(5 * 512, 1))[0]).toBe(2);
    // An external data file named by its extension.
    const b = base();
    set32(b.buf, b.extAt, 0x44415441);
    set32(b.buf, b.extAt + 4, 4);
    expect((await openFailure(b.buf)).details).toMatchObject({ needsQemuImg: true, reason: 'an external data file' });
    // An extension that runs past the first cluster.
    const c = base();
    set32(c.buf, c.extAt, 0x12345678);
    set32(c.buf, c.extAt + 4, 0xfffffff0);
    expect((await openFailure(c.buf)).details?.reason).toMatch(/runs past the header area/);
    // Unknown extensions are skipped.
    const u = base();
    set32(u.buf, u.extAt, 0x12345678);
    set32(u.buf, u.extAt + 4, 5);
    expect((await (await open(memoryQcow2Io({ [IMG]: u.buf }))).read(0, 1))[0]).toBe(1);
  });

  it('L1 and L2 entries: unaligned, past the end of the file, a v2 zero flag, a compressed cluster (met while reading)', async () => {
    // With 4 KiB clusters an offset can be a multiple of 512 (bits 0-8 are not offset bits) and
    // still not be aligned.
    const big = () => build({ clusterBits: 12, size: 64 * 1024, clusters: [{ guest: 0, fill: 1 }, { guest: 5, fill: 2 }] });
    const l1 = big();
    set64(l1.buf, l1.l1Offset, 4096n * 3n + 512n);
    expect((await openFailure(l1.buf)).details?.reason).toMatch(/L1 entry points to an unaligned L2 table/);
    const l1far = base();
    set64(l1far.buf, l1far.l1Offset, 1n << 40n);
    expect((await readFailure(l1far.buf)).details?.reason).toMatch(/an L2 table lies past the end of the file/);
    const l2 = big();
    set64(l2.buf, l2.l2Offsets[0]!, 4096n + 1024n);
    expect((await readFailure(l2.buf)).details?.reason).toMatch(/unaligned cluster/);
    const l2far = base();
    set64(l2far.buf, l2far.l2Offsets[0]! + 5 * 8, (1n << 55n) - 512n);
    expect((await readFailure(l2far.buf)).details?.reason).toMatch(/points past the end of the file/);
    const v2 = build({ version: 2, size: 64 * 1024, clusters: [{ guest: 3, fill: 1 }] });
    set64(v2.buf, v2.l2Offsets[0]!, 1n);
    expect((await readFailure(v2.buf)).details?.reason).toMatch(/zero cluster entry in a version 2 image/);
    const comp = build({ size: 64 * 1024, clusters: [{ guest: 0, fill: 9 }, { guest: 3, compressed: true }] });
    const q = await open(memoryQcow2Io({ [IMG]: comp.buf }));
    expect((await q.read(0, 512))[0]).toBe(9); // what is not compressed still reads
    expect((await failure(q.read(1000, 2048))).details).toMatchObject({ needsQemuImg: true, reason: 'a compressed cluster', guestOffset: 1536 });
  });

  it('backing chains: a loop, too long, missing, another format, a protocol name; probing raw and qcow2 without a format', async () => {
    const a = build({ size: 4096, backing: { name: 'b.qcow2', format: 'qcow2' } });
    const b = build({ size: 4096, backing: { name: '/m/./img.qcow2', format: 'qcow2' } });
    expect((await openFailure(a.buf, { '/m/b.qcow2': b.buf })).details).toMatchObject({ reason: 'the backing chain loops' });
    const self = build({ size: 4096, backing: { name: 'img.qcow2' } });
    expect((await openFailure(self.buf)).details).toMatchObject({ reason: 'the backing chain loops' });
    const files: Record<string, Buffer> = { '/m/l0.raw': Buffer.alloc(4096, 0xee) };
    for (let i = 1; i <= 16; i++) files[`/m/l${i}.qcow2`] = build({ size: 4096, backing: { name: i === 1 ? 'l0.raw' : `l${i - 1}.qcow2` } }).buf;
    const long = await failure(openQcow2('/m/l16.qcow2', { io: memoryQcow2Io(files) }));
    expect(long.details).toMatchObject({ needsQemuImg: true, reason: 'a backing chain longer than 16 files' });
    const ok = await openQcow2('/m/l16.qcow2', { io: memoryQcow2Io(files), maxChain: 17 });
    expect((await ok.read(0, 4096)).equals(Buffer.alloc(4096, 0xee))).toBe(true); // probed: 15 qcow2, then raw
    expect((await failure(openQcow2('/m/l3.qcow2', { io: memoryQcow2Io(files), maxChain: 3 }))).details?.reason).toBe('a backing chain longer than 3 files');
    expect((await failure(openQcow2(IMG, { io: memoryQcow2Io({}), maxChain: 0 }))).code).toBe('VMTC_HOST_BAD_PARAMS');
    const missing = build({ size: 4096, backing: { name: 'gone.raw', format: 'raw' } });
    expect(await openFailure(missing.buf)).toMatchObject({ code: 'VMTC_HOST_DISK_NOT_FOUND', details: { image: IMG, file: '/m/gone.raw' } });
    expect((await failure(open(memoryQcow2Io({}))))).toMatchObject({ code: 'VMTC_HOST_DISK_NOT_FOUND', details: { image: IMG } });
    const vmdk = build({ size: 4096, backing: { name: 'x.vmdk', format: 'vmdk' } });
    expect((await openFailure(vmdk.buf, { '/m/x.vmdk': Buffer.alloc(512) })).details).toMatchObject({ needsQemuImg: true, reason: 'a backing file of format vmdk' });
    for (const name of ['nbd://host/x', 'json:{"file":{}}', 'file:foo']) {
      const p = build({ size: 4096, backing: { name } });
      expect((await openFailure(p.buf)).details, name).toMatchObject({ needsQemuImg: true, reason: 'a backing file named through a protocol' });
    }
    const longName = build({ size: 4096, backing: { name: 'x' } });
    set32(longName.buf, 16, 1024);
    expect((await openFailure(longName.buf)).details?.reason).toMatch(/backing file name is too long/);
    const outside = build({ size: 4096, backing: { name: 'x' } });
    set64(outside.buf, 8, 4000n);
    expect((await openFailure(outside.buf)).details?.reason).toMatch(/not within the first cluster/);
  });
});

describe('persistent dirty bitmaps of images built in Buffers', () => {
  const size = 4 * MiB;

  it('bit k covers [k*g, (k+1)*g), counted from the least significant bit of each byte; ranges merged, sorted, clipped to the disk', async () => {
    const b = build({
      size: size - 1000, // the last granule is partly past the end
      bitmaps: [
        { name: 'a', granularityBits: 16, bits: [0, 2, 3, 9, 63] },
        { name: 'b', granularityBits: 12, bits: [1, 1023] },
        { name: 'c', granularityBits: 9, allOnesFirst: true, bits: [512 * 8 + 1] },
      ],
    });
    const q = await open(memoryQcow2Io({ [IMG]: b.buf }));
    const K = 65536;
    expect(q.bitmaps).toEqual([
      { name: 'a', granularity: 65536, inUse: false, auto: true },
      { name: 'b', granularity: 4096, inUse: false, auto: true },
      { name: 'c', granularity: 512, inUse: false, auto: true },
    ]);
    expect(await q.dirtyRanges(['a'])).toEqual([{ offset: 0, length: K }, { offset: 2 * K, length: 2 * K }, { offset: 9 * K, length: K }, { offset: 63 * K, length: K - 1000 }]);
    expect(await q.dirtyRanges(['b'])).toEqual([{ offset: 4096, length: 4096 }, { offset: 1023 * 4096, length: 4096 - 1000 }]);
    // An all-ones table entry covers a whole bitmap cluster: 512 B * 8 bits * 512 B.
    expect(await q.dirtyRanges(['c'])).toEqual([{ offset: 0, length: 2 * MiB }, { offset: (512 * 8 + 1) * 512, length: 512 }]);
    expect(await q.dirtyRanges(['b', 'a'])).toEqual(await q.dirtyRanges(['a'])); // b's granules lie within a's
    expect(await q.dirtyRanges(['a', 'c'])).toEqual([{ offset: 0, length: 2 * MiB }, { offset: (512 * 8 + 1) * 512, length: 512 }, { offset: 63 * K, length: K - 1000 }]);
    expect(await q.dirtyRanges([])).toEqual([]);
  });

  it('in_use, missing, unusable and malformed bitmaps give coded errors; guest reads are not affected by per-bitmap problems', async () => {
    const b = build({
      size,
      clusters: [{ guest: 0, fill: 3 }],
      bitmaps: [
        { name: 'used', flags: 1 | 2, bits: [1] },
        { name: 'type2', type: 2 },
        { name: 'extra', extraData: 8 },
        { name: 'extra-ok', extraData: 8, flags: 4, bits: [5] },
        { name: 'gran8', granularityBits: 8 },
        { name: 'gran40', granularityBits: 40 },
        { name: 'short', tableSize: 0 },
        { name: 'flags', flags: 8 },
        { name: 'plain', bits: [7], flags: 0 },
      ],
    });
    const io = memoryQcow2Io({ [IMG]: b.buf });
    const q = await open(io);
    expect((await q.read(0, 1))[0]).toBe(3);
    expect(q.bitmaps.find((x) => x.name === 'used')).toEqual({ name: 'used', granularity: 65536, inUse: true, auto: true });
    expect(q.bitmaps.find((x) => x.name === 'plain')!.auto).toBe(false);
    expect(await failure(q.dirtyRanges(['plain', 'used']))).toMatchObject({ code: 'VMTC_HOST_DISK_BITMAP_IN_USE', details: { image: IMG, bitmap: 'used' } });
    expect(await failure(q.dirtyRanges(['nope']))).toMatchObject({ code: 'VMTC_HOST_DISK_CHECKPOINT_MISSING', details: { bitmap: 'nope' } });
    const want: [string, RegExp, boolean][] = [
      ['type2', /type 2/, true], ['extra', /extra data/, true], ['flags', /unknown flags/, true],
      ['gran8', /granularity of 2\^8/, false], ['gran40', /granularity of 2\^40/, false], ['short', /table size does not match/, false],
    ];
    for (const [name, reason, needs] of want) {
      const e = await failure(q.dirtyRanges([name]));
      expect(e.code, name).toBe('VMTC_HOST_DISK_UNREADABLE');
      expect(e.details?.reason, name).toMatch(reason);
      expect(e.details?.needsQemuImg === true, name).toBe(needs);
    }
    expect(await q.dirtyRanges(['extra-ok', 'plain'])).toEqual([{ offset: 5 * 65536, length: 65536 }, { offset: 7 * 65536, length: 65536 }]);
    expect(await failure(q.dirtyRanges('x' as unknown as string[]))).toMatchObject({ code: 'VMTC_HOST_BAD_PARAMS' });
    // Table entries: reserved bits, an unaligned or far offset.
    const t = build({ size, bitmaps: [{ name: 'x', bits: [3] }] });
    for (const [v, reason] of [[(1n << 60n) | 512n, /reserved bits/], [2n, /reserved bits/], [513n, /reserved bits|not a cluster-aligned/], [1024n | 1n, /not a cluster-aligned/], [1n << 50n, /past the end of the file/]] as const) {
      const copy = Buffer.from(t.buf);
      set64(copy, t.bitmapTableOffsets[0]!, v);
      const e = await failure(open(memoryQcow2Io({ [IMG]: copy })).then((x) => x.dirtyRanges(['x'])));
      expect(e.details?.reason, String(v)).toMatch(reason);
    }
  });

  it('a bitmaps extension the autoclear bit says is stale is ignored, as QEMU does; a malformed directory fails the open', async () => {
    const stale = build({ size, bitmaps: [{ name: 'x', bits: [1] }], autoclear: 0 });
    const q = await open(memoryQcow2Io({ [IMG]: stale.buf }));
    expect(q.bitmaps).toEqual([]);
    expect((await failure(q.dirtyRanges(['x']))).details?.reason).toMatch(/autoclear bit clear/);
    const dir = (mut: (b: Built) => void) => {
      const b = build({ size, bitmaps: [{ name: 'x', bits: [1] }, { name: 'y' }] });
      mut(b);
      return b.buf;
    };
    const extData = (b: Built) => b.extAt + 8;
    const cases: [string, Buffer, RegExp][] = [
      ['extension length 16', dir((b) => set32(b.buf, b.extAt + 4, 16)), /not 24 bytes/],
      ['no bitmaps counted', dir((b) => set32(b.buf, extData(b), 0)), /counts 0 bitmaps/],
      ['70000 bitmaps', dir((b) => set32(b.buf, extData(b), 70000)), /counts 70000/],
      ['reserved bytes', dir((b) => set32(b.buf, extData(b) + 4, 1)), /reserved/],
      ['directory past the end', dir((b) => set64(b.buf, extData(b) + 16, 1n << 40n)), /bitmap directory is not/],
      ['directory size too small', dir((b) => set64(b.buf, extData(b) + 8, 8n)), /does not fit the bitmap count/],
      ['directory size too large', dir((b) => set64(b.buf, extData(b) + 8, 1n << 62n)), /does not fit the bitmap count/],
      ['directory larger than its entries', dir((b) => set64(b.buf, extData(b) + 8, 80n)), /does not match its entries/],
      ['a name of 0 bytes', dir((b) => b.buf.writeUInt16BE(0, b.bitmapDirOffset + 18)), /a bitmap name of 0 bytes/],
      ['a name running past the directory', dir((b) => b.buf.writeUInt16BE(1000, b.bitmapDirOffset + 18)), /ends inside an entry/],
      ['two names alike', dir((b) => { b.buf[b.bitmapDirOffset + 24 + 32] = 'x'.charCodeAt(0); }), /same name/],
    ];
    for (const [what, buf, reason] of cases) {
      const e = await openFailure(buf);
      expect(e.code, what).toBe('VMTC_HOST_DISK_UNREADABLE');
      expect(e.details?.reason, what).toMatch(reason);
    }
  });

  it('range helpers: set bits of a run of bytes, union of lists, clipping', () => {
    const l = new RangeList(100);
    addSetBits(l, Buffer.from([0b1000_0001, 0xff, 0x00, 0b0000_0011]), 0, 1);
    expect(l.ranges).toEqual([{ offset: 0, length: 1 }, { offset: 7, length: 9 }, { offset: 24, length: 2 }]);
    const m = new RangeList(20);
    addSetBits(m, Buffer.from([0xff, 0xff]), 1, 2); // bits 8..23 of granularity 2: [16, 48) clipped to 20
    expect(m.ranges).toEqual([{ offset: 16, length: 4 }]);
    expect(unionRanges([[{ offset: 10, length: 5 }, { offset: 40, length: 1 }], [{ offset: 0, length: 10 }, { offset: 30, length: 11 }]])).toEqual([{ offset: 0, length: 15 }, { offset: 30, length: 11 }]);
    expect(bitmapTableEntries(64 * MiB, 16, 65536)).toBe(1);
    expect(bitmapTableEntries(2 ** 40, 9, 512)).toBe(2 ** 40 / 512 / 8 / 512);
  });
});

describe('a seeded fuzz of mutations', () => {
  it('2,000 mutations of an image with a backing file and bitmaps: each a correct read or a coded error', async () => {
    const size = 192 * 1024;
    const clusters: NonNullable<BuildOptions['clusters']> = Array.from({ length: 40 }, (_, i) => ({ guest: (i * 37) % 384, fill: 0x20 + i }));
    clusters.push({ guest: 200, zero: true });
    const b = build({ size, clusters: [...new Map(clusters.map((c) => [c.guest, c])).values()], backing: { name: 'base.raw', format: 'raw' }, bitmaps: [{ name: 'x', granularityBits: 9, bits: [1, 2, 3, 100, 383] }, { name: 'y', granularityBits: 12, allOnesFirst: true }] });
    const baseRaw = Buffer.alloc(100_000, 0x99);
    const fresh = await open(memoryQcow2Io({ [IMG]: b.buf, '/m/base.raw': baseRaw }));
    const expected = await fresh.read(0, size);
    // Host byte -> guest byte for data clusters, to know what a mutation of data must read as.
    const hostToGuest = new Map<number, number>();
    for (const [g, h] of b.data) hostToGuest.set(h / 512, g);
    const rand = rng(20);
    const pick = (n: number) => Math.floor(rand() * n);
    const counts = { ok: 0, coded: 0, dataChecked: 0 };
    for (let i = 0; i < 2000; i++) {
      const m = Buffer.from(b.buf);
      const kind = pick(4);
      const at = pick(kind === 3 ? m.length : Math.min(m.length, 12 * 512)); // mostly the metadata clusters
      if (kind === 0) m[at] = pick(256);
      else if (kind === 1) m[at]! ^= 1 << pick(8);
      else if (kind === 2) m.writeBigUInt64BE(BigInt.asUintN(64, BigInt(Math.floor(rand() * 2 ** 53)) << BigInt(pick(12))), Math.min(at - (at % 8), m.length - 8));
      else m[at] = pick(256);
      const io = memoryQcow2Io({ [IMG]: m, '/m/base.raw': baseRaw });
      let q: Qcow2Image | undefined;
      try {
        q = await open(io);
        const got = await q.read(0, size);
        expect(got.length).toBe(size);
        const g = hostToGuest.get(Math.floor(at / 512));
        if (kind !== 2 && g !== undefined) {
          // Only a data byte changed: that byte reads as changed, the rest as before.
          const want = Buffer.from(expected);
          want[g * 512 + (at % 512)] = m[at]!;
          expect(got.equals(want), `mutation ${i}`).toBe(true);
          counts.dataChecked++;
        }
        for (const names of [['x'], ['y'], ['x', 'y']]) {
          try {
            const r = await q.dirtyRanges(names);
            for (let k = 0; k < r.length; k++) {
              expect(r[k]!.length).toBeGreaterThan(0);
              expect(r[k]!.offset + r[k]!.length).toBeLessThanOrEqual(size);
              if (k) expect(r[k]!.offset).toBeGreaterThan(r[k - 1]!.offset + r[k - 1]!.length);
            }
          } catch (e) {
            if (!(e instanceof VmtcError)) throw e;
          }
        }
        counts.ok++;
      } catch (e) {
        if (!(e instanceof VmtcError)) throw new Error(`mutation ${i} (kind ${kind} at ${at}) threw ${String(e)}`, { cause: e });
        expect(e.code).toMatch(/^VMTC_HOST_/);
        counts.coded++;
      } finally {
        await q?.close();
      }
      expect(io.openHandles(), `mutation ${i} left files open`).toBe(0);
    }
    console.log(`[numbers] fuzz outcomes: ${JSON.stringify(counts)}`);
    expect(counts.ok).toBeGreaterThan(100);
    expect(counts.coded).toBeGreaterThan(100);
    expect(counts.dataChecked).toBeGreaterThan(20);
  });
});
