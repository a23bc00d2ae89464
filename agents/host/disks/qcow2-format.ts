// The qcow2 format parsed from Buffers, no I/O (docs/disks.md#reading-images-in-process): the
// header and its extensions, L1 and L2 entries, the bitmap directory and bitmap tables, and the
// byte ranges a bitmap's set bits mark. The layout is the qcow2 image format specification
// QEMU publishes ("the qcow2 spec"; versions 2 and 3); qcow2-file.ts reads the files. Every
// number read from an image is checked before it is used for an offset or a size: a hostile
// image gives a coded error, never an exception of another kind, a hang or an allocation larger
// than the file. What the reader does not
// implement is refused with `needsQemuImg`, so a caller can let qemu-img read the image instead.
import { hostError } from '../errors.ts';
import type { VmtcError } from '../../../src/common/errors.ts';

export const QCOW2_MAGIC = 0x514649fb; // "QFI\xfb"
export const QCOW2_LIMITS = {
  /** 512 B .. 2 MiB clusters (QEMU opens no others). */
  minClusterBits: 9,
  maxClusterBits: 21,
  /** QEMU's QCOW_MAX_L1_SIZE. */
  maxL1Bytes: 32 * 1024 * 1024,
  maxBackingName: 1023,
  /** QEMU's QCOW2_MAX_BITMAPS and QCOW2_MAX_BITMAP_DIRECTORY_SIZE. */
  maxBitmaps: 65535,
  maxBitmapDirectoryBytes: 1024 * 65535,
  maxBitmapName: 1023,
  /** Bitmap granularities QEMU supports (2^9 .. 2^31 bytes a bit). */
  minGranularityBits: 9,
  maxGranularityBits: 31,
  /** QEMU's BME_MAX_TABLE_SIZE. */
  maxBitmapTableEntries: 0x8000000,
} as const;

const EXT_END = 0;
const EXT_BACKING_FORMAT = 0xe2792aca;
const EXT_BITMAPS = 0x23852875;
const EXT_DATA_FILE = 0x44415441;

/** incompatible_features bits (the qcow2 spec, "Header"): 0 dirty (refcounts only: fine for
 *  reading), 1 corrupt, 2 external data file, 3 compression type (matters only for compressed
 *  clusters, which are refused when met), 4 extended L2 entries. */
const INCOMPAT_KNOWN = 0b11111;
const INCOMPAT_UNSUPPORTED: [number, string][] = [[1 << 1, 'the corrupt bit is set'], [1 << 2, 'an external data file'], [1 << 4, 'extended L2 entries (subclusters)']];
const AUTOCLEAR_BITMAPS = 1;

/** A coded error for an image that is not well-formed (or not readable as one). */
export const unreadable = (image: string, reason: string, extra: Record<string, unknown> = {}): VmtcError => hostError('VMTC_HOST_DISK_UNREADABLE', { image, reason, ...extra });
/** A coded error for a well-formed image using what this reader does not implement: qemu-img can. */
export const unsupported = (image: string, reason: string, extra: Record<string, unknown> = {}): VmtcError => hostError('VMTC_HOST_DISK_UNREADABLE', { image, needsQemuImg: true, reason, ...extra });

/** True for the error `unsupported` makes. */
export const needsQemuImg = (e: unknown): boolean => (e as { details?: { needsQemuImg?: unknown } } | undefined)?.details?.needsQemuImg === true;

/** A big-endian 64-bit field as a number; `Infinity` when it is 2^53 or more (no offset or size
 *  in a file this reader opens can be, so every check against a file size fails on it). */
export function u64(buf: Buffer, at: number): number {
  const hi = buf.readUInt32BE(at);
  if (hi >= 0x200000) return Number.POSITIVE_INFINITY;
  return hi * 0x1_0000_0000 + buf.readUInt32BE(at + 4);
}

/** Bits 9..55 of a 64-bit table entry (the offset field of L1, L2 and bitmap table entries). */
function offsetField(buf: Buffer, at: number): number {
  return (buf.readUInt32BE(at) & 0x00ff_ffff) * 0x1_0000_0000 + ((buf.readUInt32BE(at + 4) & 0xffff_fe00) >>> 0);
}

export interface Qcow2Header {
  version: 2 | 3;
  clusterBits: number;
  clusterBytes: number;
  /** Virtual size in bytes. */
  size: number;
  l1Size: number;
  l1Offset: number;
  /** Guest clusters an L2 table maps. */
  l2Entries: number;
  headerLength: number;
  backingFileOffset: number;
  backingFileSize: number;
  autoclear: number;
}

/** The fixed header (the first 72 bytes of v2, `header_length` of v3) from the start of the file. */
export function parseHeader(buf: Buffer, fileSize: number, image: string): Qcow2Header {
  if (buf.length < 4 || buf.readUInt32BE(0) !== QCOW2_MAGIC) throw unsupported(image, 'not a qcow2 image (no QFI\\xfb magic)');
  if (buf.length < 72) throw unreadable(image, 'the file ends inside the qcow2 header', { fileSize });
  const version = buf.readUInt32BE(4);
  if (version !== 2 && version !== 3) throw unsupported(image, `qcow2 version ${version}`);
  if (version === 3 && buf.length < 104) throw unreadable(image, 'the file ends inside the qcow2 header', { fileSize });
  const clusterBits = buf.readUInt32BE(20);
  if (clusterBits < QCOW2_LIMITS.minClusterBits || clusterBits > QCOW2_LIMITS.maxClusterBits) throw unreadable(image, `cluster_bits ${clusterBits} is outside ${QCOW2_LIMITS.minClusterBits}..${QCOW2_LIMITS.maxClusterBits}`);
  const clusterBytes = 2 ** clusterBits;
  const l2Entries = clusterBytes / 8;
  const size = u64(buf, 24);
  if (!Number.isSafeInteger(size)) throw unreadable(image, 'the virtual size is too large', { field: 'size' });
  if (buf.readUInt32BE(32) !== 0) throw unsupported(image, 'encrypted (crypt_method is not 0)', { cryptMethod: buf.readUInt32BE(32) });
  const l1Size = buf.readUInt32BE(36);
  if (l1Size * 8 > QCOW2_LIMITS.maxL1Bytes) throw unreadable(image, 'the L1 table is larger than QEMU allows', { l1Size });
  const reach = clusterBytes * l2Entries;
  if (l1Size < Math.ceil(size / reach)) throw unreadable(image, 'the L1 table is too small for the virtual size', { l1Size, size });
  const l1Offset = u64(buf, 40);
  if (l1Size > 0 && (l1Offset % clusterBytes !== 0 || l1Offset === 0 || l1Offset + l1Size * 8 > fileSize)) throw unreadable(image, 'the L1 table is not a cluster-aligned range within the file', { l1Offset, l1Size, fileSize });
  let headerLength = 72;
  let autoclear = 0;
  if (version === 3) {
    headerLength = buf.readUInt32BE(100);
    if (headerLength < 104 || headerLength % 8 !== 0 || headerLength > clusterBytes) throw unreadable(image, `header_length ${headerLength} is not a multiple of 8 between 104 and the cluster size`);
    if (buf.length < headerLength) throw unreadable(image, 'the file ends inside the qcow2 header', { fileSize });
    const incompatHi = buf.readUInt32BE(72);
    const incompat = buf.readUInt32BE(76);
    if (incompatHi !== 0 || (incompat & ~INCOMPAT_KNOWN) !== 0) throw unsupported(image, 'unknown incompatible feature bits', { incompatibleFeatures: `0x${incompatHi.toString(16)}${incompat.toString(16).padStart(8, '0')}` });
    for (const [bit, what] of INCOMPAT_UNSUPPORTED) if (incompat & bit) throw unsupported(image, what, { incompatibleFeatures: incompat });
    autoclear = buf.readUInt32BE(92);
  }
  const backingFileOffset = u64(buf, 8);
  const backingFileSize = buf.readUInt32BE(16);
  if (backingFileOffset !== 0) {
    if (backingFileSize > QCOW2_LIMITS.maxBackingName) throw unreadable(image, 'the backing file name is too long', { backingFileSize });
    // QEMU keeps the name in the first cluster, after the header extensions.
    if (backingFileOffset < headerLength || backingFileOffset + backingFileSize > clusterBytes || backingFileOffset + backingFileSize > fileSize) throw unreadable(image, 'the backing file name is not within the first cluster', { backingFileOffset, backingFileSize });
  }
  return { version, clusterBits, clusterBytes, size, l1Size, l1Offset, l2Entries, headerLength, backingFileOffset, backingFileSize, autoclear };
}

export interface BitmapsExtension {
  count: number;
  directoryBytes: number;
  directoryOffset: number;
}

export interface Qcow2Extensions {
  /** The backing file's name as stored, when there is one. */
  backingName?: string;
  /** The backing file's format (the backing format extension), when the image names one. */
  backingFormat?: string;
  /** Absent when there is none, or when the autoclear bit says a program without bitmap support
   *  wrote the image since (QEMU then ignores the bitmaps too). */
  bitmaps?: BitmapsExtension;
  /** True when a bitmaps extension was there but is inconsistent (autoclear bit clear). */
  bitmapsInconsistent?: boolean;
}

/** The header extensions and the backing file name, from the first cluster (`buf` holds it, or
 *  the whole file when that is shorter). */
export function parseExtensions(buf: Buffer, h: Qcow2Header, fileSize: number, image: string): Qcow2Extensions {
  const out: Qcow2Extensions = {};
  const end = Math.min(h.backingFileOffset || h.clusterBytes, buf.length);
  let at = h.headerLength;
  while (at + 8 <= end) {
    const type = buf.readUInt32BE(at);
    const len = buf.readUInt32BE(at + 4);
    if (type === EXT_END) break;
    const data = at + 8;
    if (data + len > end) throw unreadable(image, 'a header extension runs past the header area', { extension: `0x${type.toString(16)}`, at, length: len });
    if (type === EXT_BACKING_FORMAT) {
      if (len > 255) throw unreadable(image, 'the backing format name is too long', { length: len });
      out.backingFormat = buf.toString('latin1', data, data + len);
    } else if (type === EXT_DATA_FILE) {
      throw unsupported(image, 'an external data file');
    } else if (type === EXT_BITMAPS) {
      if (len !== 24) throw unreadable(image, 'the bitmaps extension is not 24 bytes', { length: len });
      if (!(h.autoclear & AUTOCLEAR_BITMAPS)) {
        out.bitmapsInconsistent = true;
      } else {
        const count = buf.readUInt32BE(data);
        const directoryBytes = u64(buf, data + 8);
        const directoryOffset = u64(buf, data + 16);
        if (count < 1 || count > QCOW2_LIMITS.maxBitmaps) throw unreadable(image, `the bitmaps extension counts ${count} bitmaps`);
        if (buf.readUInt32BE(data + 4) !== 0) throw unreadable(image, 'the bitmaps extension has non-zero reserved bytes');
        if (directoryBytes < 24 * count || directoryBytes > QCOW2_LIMITS.maxBitmapDirectoryBytes) throw unreadable(image, 'the bitmap directory size does not fit the bitmap count', { count, directoryBytes });
        if (directoryOffset === 0 || directoryOffset % h.clusterBytes !== 0 || directoryOffset + directoryBytes > fileSize) throw unreadable(image, 'the bitmap directory is not a cluster-aligned range within the file', { directoryOffset, directoryBytes, fileSize });
        out.bitmaps = { count, directoryBytes, directoryOffset };
      }
    }
    // Others (the feature name table, unknown ones) are ignored, as the qcow2 spec allows.
    at = data + Math.ceil(len / 8) * 8;
  }
  if (h.backingFileOffset !== 0 && h.backingFileSize > 0) {
    if (h.backingFileOffset + h.backingFileSize > buf.length) throw unreadable(image, 'the file ends inside the backing file name');
    out.backingName = buf.toString('utf8', h.backingFileOffset, h.backingFileOffset + h.backingFileSize);
  }
  return out;
}

/** The host offsets of the active L1 table's L2 tables (0: not allocated). */
export function parseL1(buf: Buffer, h: Qcow2Header, image: string): Float64Array {
  const out = new Float64Array(h.l1Size);
  for (let i = 0; i < h.l1Size; i++) {
    const off = offsetField(buf, i * 8);
    if (off % h.clusterBytes !== 0) throw unreadable(image, 'an L1 entry points to an unaligned L2 table', { l1Index: i, offset: off });
    out[i] = off;
  }
  return out;
}

/** What an L2 entry says of its guest cluster (`l2Lookup`): a host offset (>= 0) or one of these. */
export const L2_UNALLOCATED = -1;
export const L2_ZERO = -2;
export const L2_COMPRESSED = -3;

/** One standard L2 entry (the qcow2 spec, "Cluster mapping"): bit 62 compressed; bit 0 of a v3
 *  entry reads as zeros (with or without a preallocated offset); offset 0 unallocated. */
export function l2Lookup(table: Buffer, index: number, h: Qcow2Header, image: string): number {
  const hi = table.readUInt32BE(index * 8);
  if (hi & 0x4000_0000) return L2_COMPRESSED;
  const zero = (table.readUInt32BE(index * 8 + 4) & 1) === 1;
  if (zero) {
    // QEMU refuses the flag in a v2 image ("Zero cluster entry found in pre-v3 image").
    if (h.version < 3) throw unreadable(image, 'a zero cluster entry in a version 2 image', { l2Index: index });
    return L2_ZERO;
  }
  const off = offsetField(table, index * 8);
  if (off === 0) return L2_UNALLOCATED;
  if (off % h.clusterBytes !== 0) throw unreadable(image, 'an L2 entry points to an unaligned cluster', { l2Index: index, offset: off });
  return off;
}

export interface BitmapEntry {
  name: string;
  tableOffset: number;
  tableSize: number;
  flags: number;
  type: number;
  granularityBits: number;
  extraDataSize: number;
  inUse: boolean;
  auto: boolean;
  extraDataCompatible: boolean;
}

const BME_IN_USE = 1;
const BME_AUTO = 2;
const BME_EXTRA_DATA_COMPATIBLE = 4;

/** The bitmap directory (the qcow2 spec, "Bitmap directory"): `count` entries that fill it
 *  exactly, with distinct names. What each bitmap may be used for is `checkBitmap`'s to say. */
export function parseBitmapDirectory(buf: Buffer, count: number, image: string): BitmapEntry[] {
  const out: BitmapEntry[] = [];
  const names = new Set<string>();
  let at = 0;
  for (let i = 0; i < count; i++) {
    if (at + 24 > buf.length) throw unreadable(image, 'the bitmap directory ends inside an entry', { entry: i });
    const nameSize = buf.readUInt16BE(at + 18);
    const extraDataSize = buf.readUInt32BE(at + 20);
    if (nameSize === 0 || nameSize > QCOW2_LIMITS.maxBitmapName) throw unreadable(image, `a bitmap name of ${nameSize} bytes`, { entry: i });
    const next = at + Math.ceil((24 + extraDataSize + nameSize) / 8) * 8;
    if (next > buf.length) throw unreadable(image, 'the bitmap directory ends inside an entry', { entry: i });
    const nameAt = at + 24 + extraDataSize;
    const name = buf.toString('utf8', nameAt, nameAt + nameSize);
    if (names.has(name)) throw unreadable(image, 'two bitmaps have the same name', { bitmap: name });
    names.add(name);
    const flags = buf.readUInt32BE(at + 12);
    out.push({
      name, tableOffset: u64(buf, at), tableSize: buf.readUInt32BE(at + 8), flags, type: buf[at + 16]!, granularityBits: buf[at + 17]!, extraDataSize,
      inUse: (flags & BME_IN_USE) !== 0, auto: (flags & BME_AUTO) !== 0, extraDataCompatible: (flags & BME_EXTRA_DATA_COMPATIBLE) !== 0,
    });
    at = next;
  }
  if (at !== buf.length) throw unreadable(image, 'the bitmap directory size does not match its entries', { directoryBytes: buf.length, entriesEnd: at });
  return out;
}

/** Entries a bitmap's table must have for a disk of `size` bytes. */
export function bitmapTableEntries(size: number, granularityBits: number, clusterBytes: number): number {
  const bits = Math.ceil(size / 2 ** granularityBits);
  return Math.ceil(Math.ceil(bits / 8) / clusterBytes);
}

/** Refuses a bitmap whose contents cannot be used, or whose table does not fit the disk and the
 *  file. The in_use check is the caller's (it has its own code). */
export function checkBitmap(b: BitmapEntry, h: Qcow2Header, fileSize: number, image: string): void {
  const d = { bitmap: b.name };
  if (b.flags & ~(BME_IN_USE | BME_AUTO | BME_EXTRA_DATA_COMPATIBLE)) throw unsupported(image, 'a bitmap with unknown flags', { ...d, flags: b.flags });
  if (b.type !== 1) throw unsupported(image, `a bitmap of type ${b.type} (not a dirty tracking bitmap)`, d);
  if (b.extraDataSize > 0 && !b.extraDataCompatible) throw unsupported(image, 'a bitmap with extra data it may not be used without', d);
  if (b.granularityBits < QCOW2_LIMITS.minGranularityBits || b.granularityBits > QCOW2_LIMITS.maxGranularityBits) throw unreadable(image, `a bitmap granularity of 2^${b.granularityBits} bytes`, d);
  const want = bitmapTableEntries(h.size, b.granularityBits, h.clusterBytes);
  if (b.tableSize !== want || b.tableSize > QCOW2_LIMITS.maxBitmapTableEntries) throw unreadable(image, 'the bitmap table size does not match the disk', { ...d, tableSize: b.tableSize, expected: want });
  if (b.tableSize > 0 && (b.tableOffset === 0 || b.tableOffset % h.clusterBytes !== 0 || b.tableOffset + b.tableSize * 8 > fileSize)) throw unreadable(image, 'the bitmap table is not a cluster-aligned range within the file', { ...d, tableOffset: b.tableOffset, fileSize });
}

/** A bitmap table entry (the qcow2 spec, "Bitmap table"): a data cluster's offset, or, with
 *  offset 0, a cluster of all zeros (bit 0 clear) or all ones (bit 0 set). */
export const BITMAP_ZEROS = -1;
export const BITMAP_ONES = -2;
export function bitmapTableEntry(table: Buffer, index: number, h: Qcow2Header, image: string): number {
  const hi = table.readUInt32BE(index * 8);
  const lo = table.readUInt32BE(index * 8 + 4);
  if ((hi & 0xff00_0000) !== 0 || (lo & 0x1fe) !== 0) throw unreadable(image, 'a bitmap table entry has reserved bits set', { index });
  const off = offsetField(table, index * 8);
  if (off === 0) return lo & 1 ? BITMAP_ONES : BITMAP_ZEROS;
  if (lo & 1 || off % h.clusterBytes !== 0) throw unreadable(image, 'a bitmap table entry is not a cluster-aligned offset', { index, offset: off });
  return off;
}

export interface Range {
  offset: number;
  length: number;
}

/** Appends byte ranges to a sorted list, merging those that touch; clipped to `limit`. */
export class RangeList {
  readonly ranges: Range[] = [];
  constructor(private readonly limit: number) {}

  add(start: number, end: number): void {
    const e = Math.min(end, this.limit);
    if (e <= start) return;
    const last = this.ranges.at(-1);
    if (last && start <= last.offset + last.length) {
      last.length = Math.max(last.length, e - last.offset);
      return;
    }
    this.ranges.push({ offset: start, length: e - start });
  }
}

/** The guest byte ranges the set bits of `data` mark, `data` being the bitmap's bytes from byte
 *  `firstByte` on: bit k of the bitmap (byte k/8, bit k%8 counted from the least significant,
 *  as QEMU stores them) covers guest bytes [k*granularity, (k+1)*granularity). */
export function addSetBits(into: RangeList, data: Buffer, firstByte: number, granularity: number): void {
  let runStart = -1;
  for (let i = 0; i < data.length; i++) {
    const v = data[i]!;
    if (v === 0 || v === 0xff) {
      if (v === 0 && runStart >= 0) {
        into.add(runStart * granularity, (firstByte + i) * 8 * granularity);
        runStart = -1;
      } else if (v === 0xff && runStart < 0) {
        runStart = (firstByte + i) * 8;
      }
      continue;
    }
    for (let b = 0; b < 8; b++) {
      const bit = (firstByte + i) * 8 + b;
      if ((v >> b) & 1) {
        if (runStart < 0) runStart = bit;
      } else if (runStart >= 0) {
        into.add(runStart * granularity, bit * granularity);
        runStart = -1;
      }
    }
  }
  if (runStart >= 0) into.add(runStart * granularity, (firstByte + data.length) * 8 * granularity);
}

/** The union of sorted, merged range lists, sorted and merged. */
export function unionRanges(lists: readonly (readonly Range[])[]): Range[] {
  const all = lists.flat().sort((a, b) => a.offset - b.offset);
  const out = new RangeList(Number.POSITIVE_INFINITY);
  for (const r of all) out.add(r.offset, r.offset + r.length);
  return out.ranges;
}
