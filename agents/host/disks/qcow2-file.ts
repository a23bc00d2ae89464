// A qcow2 image read in the agent's own process (docs/disks.md#reading-images-in-process): its
// guest-visible bytes through the backing chain, and the byte ranges its persistent dirty
// bitmaps mark, without spawning qemu-img or asking QEMU. The format is parsed by
// qcow2-format.ts; this file reads the files: the header and the active L1 table once at open,
// L2 tables when a read needs them (a small cache of the promises, so reads running at once
// share one read of a table), and each file of the chain opened once. It reads what the file
// holds now: a QEMU that has the image open read-write may hold newer metadata in memory (the
// caller flushes it first, or reads only files no QEMU holds), and its bitmaps are marked in_use
// then, which `dirtyRanges` refuses.
import { open, realpath } from 'node:fs/promises';
import { dirname, isAbsolute, join } from 'node:path';
import { VmtcError } from '../../../src/common/errors.ts';
import { hostError } from '../errors.ts';
import type { ReadAt } from './digest.ts';
import {
  addSetBits, BITMAP_ONES, BITMAP_ZEROS, bitmapTableEntry, checkBitmap, L2_COMPRESSED, L2_UNALLOCATED, l2Lookup, parseBitmapDirectory,
  parseExtensions, parseHeader, parseL1, QCOW2_MAGIC, RangeList, unionRanges, unreadable, unsupported,
  type BitmapEntry, type Qcow2Header, type Range,
} from './qcow2-format.ts';

const MiB = 1024 * 1024;

export const QCOW2_FILE_DEFAULTS = {
  /** Files in a backing chain, the image included. */
  maxChain: 16,
  /** L2 tables kept (at least 2 tables whatever the cluster size). */
  l2CacheBytes: 4 * MiB,
  /** The most one `read` returns (its buffer is allocated whole). */
  maxReadBytes: 1024 * MiB,
} as const;

/** The files the reader opens, injected (docs/contributing.md#real-things-in-tests): the real
 *  file system by default; a unit test gives it images held in memory. */
export interface Qcow2Io {
  open(path: string): Promise<Qcow2FileHandle>;
  realpath(path: string): Promise<string>;
}
export interface Qcow2FileHandle {
  size(): Promise<number>;
  /** Like FileHandle.read: the bytes read, 0 at the end of the file. */
  read(into: Buffer, at: number, length: number, position: number): Promise<number>;
  close(): Promise<void>;
}

export const fsQcow2Io: Qcow2Io = {
  async open(path) {
    const fh = await open(path, 'r');
    return {
      size: async () => (await fh.stat()).size,
      read: async (into, at, length, position) => (await fh.read(into, at, length, position)).bytesRead,
      close: () => fh.close(),
    };
  },
  realpath: (p) => realpath(p),
};

export interface Qcow2Bitmap {
  name: string;
  /** Guest bytes one bit covers. */
  granularity: number;
  /** QEMU holds the bitmap, or stopped without storing it: its contents cannot be trusted. */
  inUse: boolean;
  /** Enabled: QEMU records writes in it whenever it opens the image read-write. */
  auto: boolean;
}

export interface Qcow2Image {
  /** Virtual size in bytes. */
  size: number;
  clusterBytes: number;
  /** Guest-visible bytes (short only at the end of the disk). */
  read: ReadAt;
  bitmaps: Qcow2Bitmap[];
  /** The union of the named bitmaps' set bits as sorted, merged byte ranges within the disk. */
  dirtyRanges(names: string[]): Promise<Range[]>;
  /** Idempotent. */
  close(): Promise<void>;
}

export interface Qcow2OpenOptions {
  maxChain?: number;
  l2CacheBytes?: number;
  io?: Qcow2Io;
}

/** An errno failure of the file system as a coded error; anything else is left as it is (a bug
 *  here should show as one). */
function fsError(e: unknown, image: string, file: string): unknown {
  if (e instanceof VmtcError) return e;
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  if (typeof code !== 'string') return e;
  if (code === 'ENOENT') return hostError('VMTC_HOST_DISK_NOT_FOUND', { image, ...(file !== image ? { file } : {}) }, { cause: e });
  return hostError('VMTC_HOST_DISK_UNREADABLE', { image, file, reason: `${code}: ${(e as Error).message}` }, { cause: e });
}

/** One open file of the chain, with the size it was last seen to have. */
class ImageFile {
  constructor(readonly path: string, private readonly fh: Qcow2FileHandle, public size: number) {}

  /** The size again: a file QEMU still appends to grows while it is read. */
  async refresh(): Promise<void> {
    this.size = await this.fh.size();
  }

  /** Exactly [pos, pos + len) into `dst` at `at`: metadata, which must lie within the file. */
  async readExact(dst: Buffer, at: number, len: number, pos: number, what: string): Promise<void> {
    if (pos + len > this.size) await this.refresh();
    if (pos + len > this.size) throw unreadable(this.path, `${what} lies past the end of the file`, { offset: pos, length: len, fileSize: this.size });
    for (let got = 0; got < len;) {
      const n = await this.fh.read(dst, at + got, len - got, pos + got);
      if (n === 0) throw unreadable(this.path, `the file ends inside ${what}`, { offset: pos + got });
      got += n;
    }
  }

  /** What the file holds of [pos, pos + len); the bytes past its end stay zeros, as QEMU reads
   *  them (its file driver fills a read short at the end of the file with zeros). */
  async readData(dst: Buffer, at: number, len: number, pos: number): Promise<void> {
    for (let got = 0; got < len;) {
      const n = await this.fh.read(dst, at + got, len - got, pos + got);
      if (n === 0) return;
      got += n;
    }
  }

  close(): Promise<void> {
    return this.fh.close();
  }
}

/** A layer of the chain: `readInto` fills dst[at, at + length) with guest bytes from `offset`,
 *  within the layer's size, into a buffer that is zeros there to begin with. */
interface Layer {
  readonly size: number;
  readInto(dst: Buffer, at: number, offset: number, length: number): Promise<void>;
}

class RawLayer implements Layer {
  constructor(private readonly file: ImageFile, readonly size: number) {}

  readInto(dst: Buffer, at: number, offset: number, length: number): Promise<void> {
    return this.file.readData(dst, at, length, offset);
  }
}

class Qcow2Layer implements Layer {
  readonly size: number;
  private readonly tables = new Map<number, Promise<Buffer>>();
  private readonly maxTables: number;

  constructor(
    readonly file: ImageFile,
    readonly h: Qcow2Header,
    private readonly l1: Float64Array,
    private readonly backing: Layer | undefined,
    readonly bitmapDir: BitmapEntry[],
    readonly bitmapsInconsistent: boolean,
    l2CacheBytes: number,
  ) {
    this.size = h.size;
    this.maxTables = Math.max(2, Math.floor(l2CacheBytes / h.clusterBytes));
  }

  /** The L2 table of L1 entry `i` (undefined: not allocated), read once while it is cached. */
  private table(i: number): Promise<Buffer> | undefined {
    const off = this.l1[i]!;
    if (off === 0) return undefined;
    const cached = this.tables.get(i);
    if (cached) {
      this.tables.delete(i); // most recently used last
      this.tables.set(i, cached);
      return cached;
    }
    const p = (async () => {
      const b = Buffer.allocUnsafe(this.h.clusterBytes);
      await this.file.readExact(b, 0, b.length, off, 'an L2 table');
      return b;
    })();
    p.catch(() => {
      if (this.tables.get(i) === p) this.tables.delete(i);
    });
    this.tables.set(i, p);
    if (this.tables.size > this.maxTables) this.tables.delete(this.tables.keys().next().value!);
    return p;
  }

  async readInto(dst: Buffer, at: number, offset: number, length: number): Promise<void> {
    const { clusterBytes: cb, l2Entries } = this.h;
    const end = offset + length;
    const endCl = Math.ceil(end / cb);
    for (let pos = offset; pos < end;) {
      const cl = Math.floor(pos / cb);
      const l1i = Math.floor(cl / l2Entries);
      const first = l1i * l2Entries;
      const tableEnd = Math.min(first + l2Entries, endCl);
      const tp = this.table(l1i);
      const table = tp ? await tp : undefined;
      const kind = table ? l2Lookup(table, cl - first, this.h, this.file.path) : L2_UNALLOCATED;
      // A run of clusters of one kind in this table; data ones contiguous in the file (one read),
      // each starting within it.
      let runEnd = cl + 1;
      if (!table) runEnd = tableEnd;
      else if (kind >= 0 && kind >= this.file.size) await this.file.refresh();
      if (table && kind >= 0 && kind >= this.file.size) throw unreadable(this.file.path, 'an L2 entry points past the end of the file', { guestOffset: cl * cb, offset: kind, fileSize: this.file.size });
      if (kind === L2_COMPRESSED) throw unsupported(this.file.path, 'a compressed cluster', { guestOffset: cl * cb });
      while (table && runEnd < tableEnd) {
        const k = l2Lookup(table, runEnd - first, this.h, this.file.path);
        if (kind >= 0 ? k !== kind + (runEnd - cl) * cb || k >= this.file.size : k !== kind) break;
        runEnd++;
      }
      const to = Math.min(end, runEnd * cb);
      const dstAt = at + (pos - offset);
      if (kind >= 0) await this.file.readData(dst, dstAt, to - pos, kind + (pos - cl * cb));
      else if (kind === L2_UNALLOCATED && this.backing && pos < this.backing.size) await this.backing.readInto(dst, dstAt, pos, Math.min(to, this.backing.size) - pos);
      // L2_ZERO, or unallocated without backing data: the zeros already there.
      pos = to;
    }
  }
}

interface ChainContext {
  image: string;
  io: Qcow2Io;
  maxChain: number;
  l2CacheBytes: number;
  depth: number;
  seen: Set<string>;
  files: ImageFile[];
}

/** A backing name QEMU would read through a protocol driver (`nbd://…`, `json:{…}`, `file:…`):
 *  a colon before any slash. */
const hasProtocol = (name: string): boolean => /^[^/]*:/.test(name);

async function openLayer(path: string, format: string | undefined, ctx: ChainContext): Promise<Layer> {
  let real: string;
  try {
    real = await ctx.io.realpath(path);
  } catch (e) {
    throw fsError(e, ctx.image, path);
  }
  if (ctx.seen.has(real)) throw unreadable(ctx.image, 'the backing chain loops', { file: path });
  ctx.seen.add(real);
  let file: ImageFile;
  try {
    const fh = await ctx.io.open(path);
    file = new ImageFile(path, fh, 0);
    ctx.files.push(file);
    await file.refresh();
  } catch (e) {
    throw fsError(e, ctx.image, path);
  }
  if (format === undefined) {
    // No backing format named: probe, as QEMU does, qcow2 by its magic and raw otherwise.
    const magic = Buffer.alloc(4);
    if (file.size >= 4) await file.readExact(magic, 0, 4, 0, 'the magic');
    format = magic.readUInt32BE(0) === QCOW2_MAGIC ? 'qcow2' : 'raw';
  }
  if (format === 'raw') return new RawLayer(file, file.size);
  if (format !== 'qcow2') throw unsupported(ctx.image, `a backing file of format ${format}`, { file: path });
  let first = Buffer.alloc(Math.min(file.size, 64 * 1024));
  await file.readExact(first, 0, first.length, 0, 'the header');
  const h = parseHeader(first, file.size, path);
  if (h.clusterBytes > first.length && file.size > first.length) {
    first = Buffer.alloc(Math.min(file.size, h.clusterBytes));
    await file.readExact(first, 0, first.length, 0, 'the first cluster');
  }
  const ext = parseExtensions(first, h, file.size, path);
  const l1Bytes = Buffer.alloc(h.l1Size * 8);
  await file.readExact(l1Bytes, 0, l1Bytes.length, h.l1Offset, 'the L1 table');
  const l1 = parseL1(l1Bytes, h, path);
  let bitmapDir: BitmapEntry[] = [];
  if (ext.bitmaps) {
    const dir = Buffer.alloc(ext.bitmaps.directoryBytes);
    await file.readExact(dir, 0, dir.length, ext.bitmaps.directoryOffset, 'the bitmap directory');
    bitmapDir = parseBitmapDirectory(dir, ext.bitmaps.count, path);
  }
  let backing: Layer | undefined;
  if (ext.backingName !== undefined) {
    const name = ext.backingName;
    if (hasProtocol(name)) throw unsupported(ctx.image, 'a backing file named through a protocol', { file: path, backing: name });
    if (ctx.depth >= ctx.maxChain) throw unsupported(ctx.image, `a backing chain longer than ${ctx.maxChain} files`, { file: path });
    // A relative name is relative to the directory of the image that names it (as QEMU opened it).
    const next = isAbsolute(name) ? name : join(dirname(path), name);
    backing = await openLayer(next, ext.backingFormat, { ...ctx, depth: ctx.depth + 1 });
  }
  return new Qcow2Layer(file, h, l1, backing, bitmapDir, ext.bitmapsInconsistent === true, ctx.l2CacheBytes);
}

const bad = (field: string, reason: string) => hostError('VMTC_HOST_BAD_PARAMS', { field, reason });

/** Opens a qcow2 image and its backing chain for reading. What this reader does not implement
 *  (compression met while reading, encryption, external data files, extended L2 entries, the
 *  corrupt bit, backing formats other than qcow2 and raw) is VMTC_HOST_DISK_UNREADABLE with
 *  `needsQemuImg`; a malformed image is the same code without it. */
export async function openQcow2(path: string, o: Qcow2OpenOptions = {}): Promise<Qcow2Image> {
  const maxChain = o.maxChain ?? QCOW2_FILE_DEFAULTS.maxChain;
  if (!(Number.isInteger(maxChain) && maxChain >= 1 && maxChain <= 1024)) throw bad('maxChain', '1 .. 1024');
  const l2CacheBytes = o.l2CacheBytes ?? QCOW2_FILE_DEFAULTS.l2CacheBytes;
  if (!(Number.isSafeInteger(l2CacheBytes) && l2CacheBytes >= 0)) throw bad('l2CacheBytes', 'a byte count');
  const ctx: ChainContext = { image: path, io: o.io ?? fsQcow2Io, maxChain, l2CacheBytes, depth: 1, seen: new Set(), files: [] };
  let top: Qcow2Layer;
  const closeAll = async () => {
    for (const f of ctx.files.splice(0)) await f.close().catch(() => undefined);
  };
  try {
    const layer = await openLayer(path, 'qcow2', ctx);
    top = layer as Qcow2Layer;
  } catch (e) {
    await closeAll();
    throw fsError(e, path, path);
  }
  let closed = false;
  const live = () => {
    if (closed) throw unreadable(path, 'the reader is closed');
  };
  const read: ReadAt = async (offset, length) => {
    if (!(Number.isSafeInteger(offset) && offset >= 0)) throw bad('offset', 'a byte offset');
    if (!(Number.isSafeInteger(length) && length >= 0)) throw bad('length', 'a byte count');
    live();
    const end = Math.min(top.size, offset + length);
    if (end - offset > QCOW2_FILE_DEFAULTS.maxReadBytes) throw bad('length', `at most ${QCOW2_FILE_DEFAULTS.maxReadBytes} bytes a read`);
    const out = Buffer.alloc(Math.max(0, end - offset));
    try {
      if (out.length) await top.readInto(out, 0, offset, out.length);
    } catch (e) {
      throw fsError(e, path, path);
    }
    return out;
  };
  const dirtyRanges = async (names: string[]): Promise<Range[]> => {
    if (!Array.isArray(names) || !names.every((n) => typeof n === 'string')) throw bad('names', 'a list of bitmap names');
    live();
    try {
      return await bitmapRanges(top, names, path);
    } catch (e) {
      throw fsError(e, path, path);
    }
  };
  return {
    size: top.size,
    clusterBytes: top.h.clusterBytes,
    read,
    bitmaps: top.bitmapDir.map((b) => ({ name: b.name, granularity: 2 ** b.granularityBits, inUse: b.inUse, auto: b.auto })),
    dirtyRanges,
    close: async () => {
      closed = true;
      await closeAll();
    },
  };
}

/** The union of the named bitmaps' set bits (the qcow2 spec, "Bitmap data"), read from the file. */
async function bitmapRanges(top: Qcow2Layer, names: string[], image: string): Promise<Range[]> {
  const { h, file } = top;
  await file.refresh();
  const lists: Range[][] = [];
  for (const name of names) {
    const b = top.bitmapDir.find((x) => x.name === name);
    if (!b) throw hostError('VMTC_HOST_DISK_CHECKPOINT_MISSING', { image, bitmap: name, ...(top.bitmapsInconsistent ? { reason: 'the bitmaps extension is inconsistent: a program without bitmap support wrote the image (autoclear bit clear)' } : {}) });
    if (b.inUse) throw hostError('VMTC_HOST_DISK_BITMAP_IN_USE', { image, bitmap: name });
    checkBitmap(b, h, file.size, image);
    const granularity = 2 ** b.granularityBits;
    const bitmapBytes = Math.ceil(Math.ceil(h.size / granularity) / 8);
    const table = Buffer.alloc(b.tableSize * 8);
    await file.readExact(table, 0, table.length, b.tableOffset, 'a bitmap table');
    const list = new RangeList(h.size);
    const clusterSpan = h.clusterBytes * 8 * granularity; // guest bytes one bitmap cluster covers
    const data = Buffer.alloc(Math.min(h.clusterBytes, bitmapBytes));
    for (let i = 0; i < b.tableSize; i++) {
      const e = bitmapTableEntry(table, i, h, image);
      if (e === BITMAP_ZEROS) continue;
      if (e === BITMAP_ONES) {
        list.add(i * clusterSpan, (i + 1) * clusterSpan);
        continue;
      }
      const n = Math.min(h.clusterBytes, bitmapBytes - i * h.clusterBytes);
      await file.readExact(data, 0, n, e, 'bitmap data');
      addSetBits(list, data.subarray(0, n), i * h.clusterBytes, granularity);
    }
    lists.push(list.ranges);
  }
  return unionRanges(lists);
}
