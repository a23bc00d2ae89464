// Reading an image's guest-visible bytes without converting it (docs/disks.md#digests). A qcow2
// image is read in this process (qcow2-file.ts: no spawn); what that reader does not implement
// (`needsQemuImg`: compressed clusters, encryption, ...) and other formats go through qemu-img:
// `qemu-img map --output=json` lists, for each extent of the guest disk, whether it reads as zeros or
// where its data lies (the host offset, in the layer of the backing chain `depth` names); the
// chunks a digest wants are then read straight from those files. For a running VM the caller
// flushes QEMU's cached qcow2 metadata first (qemu-cow.ts flush). An extent whose data has no
// host offset (a compressed cluster) cannot be read this way (VMTC_HOST_DISK_UNREADABLE with
// `needsConvert`): a digest then converts the image instead (qemu-images.ts digestImage).
import { existsSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { isAbsolute, join, dirname } from 'node:path';
import { hostError } from '../errors.ts';
import type { DigestOptions, DiskDigest } from './backend.ts';
import { digestDisk, type ReadAt } from './digest.ts';
import { runOk, type CommandRunner } from './io.ts';
import { needsQemuImg } from './qcow2-format.ts';
import { openQcow2, type Qcow2Image } from './qcow2-file.ts';
import { backingChain, digestImage } from './qemu-images.ts';

export interface MapExtent {
  start: number;
  length: number;
  depth: number;
  zero: boolean;
  data: boolean;
  /** Host offset of the data in the layer at `depth`. */
  offset?: number;
}

/** `qemu-img map --output=json` entries, checked: contiguous from 0, each either zeros or data. */
export function parseMap(json: string): MapExtent[] {
  let doc: unknown;
  try {
    doc = JSON.parse(json);
  } catch {
    throw hostError('VMTC_HOST_DISK_TOOL_FAILED', { tool: 'qemu-img map', reason: 'not JSON', output: json.slice(0, 300) });
  }
  if (!Array.isArray(doc)) throw hostError('VMTC_HOST_DISK_TOOL_FAILED', { tool: 'qemu-img map', reason: 'not a list' });
  let at = 0;
  return doc.map((e: Record<string, unknown>) => {
    const x: MapExtent = { start: Number(e.start), length: Number(e.length), depth: Number(e.depth ?? 0), zero: e.zero === true, data: e.data === true };
    if (typeof e.offset === 'number') x.offset = e.offset;
    if (x.start !== at || !(Number.isSafeInteger(x.length) && x.length > 0)) throw hostError('VMTC_HOST_DISK_TOOL_FAILED', { tool: 'qemu-img map', reason: 'extents not contiguous', at, extent: e });
    at += x.length;
    return x;
  });
}

export interface ImageReader {
  size: number;
  read: ReadAt;
  close(): Promise<void>;
}

/** A reader of `image`'s guest-visible bytes as of now: a qcow2 image in this process (its header
 *  and L1 table read here, its L2 tables when a read needs them), falling back to qemu-img's map
 *  where the in-process reader meets what it does not implement, at open or at a read (a
 *  compressed cluster: the map path then refuses the image with `needsConvert`, as before). */
export async function openImageReader(run: CommandRunner, image: string, format: string): Promise<ImageReader> {
  if (format !== 'qcow2') return openImageReaderByMap(run, image, format);
  let q: Qcow2Image;
  try {
    q = await openQcow2(image);
  } catch (e) {
    if (needsQemuImg(e)) return openImageReaderByMap(run, image, format);
    throw e;
  }
  let fallback: Promise<ImageReader> | undefined; // opened once, also when reads run at once
  const read: ReadAt = async (offset, length) => {
    if (!fallback) {
      try {
        return await q.read(offset, length);
      } catch (e) {
        if (!needsQemuImg(e)) throw e;
        fallback ??= openImageReaderByMap(run, image, format);
      }
    }
    return (await fallback).read(offset, length);
  };
  return {
    size: q.size, read,
    close: async () => {
      await q.close();
      if (fallback) await fallback.then((r) => r.close(), () => undefined);
    },
  };
}

/** A reader of `image`'s guest-visible bytes through `qemu-img info --backing-chain` and `qemu-img
 *  map` (its map is read once, here). */
export async function openImageReaderByMap(run: CommandRunner, image: string, format: string): Promise<ImageReader> {
  const [chain, map] = await Promise.all([
    backingChain(run, image),
    runOk(run, ['qemu-img', 'map', '-U', '-f', format, '--output=json', image], { image }, 10 * 60_000).then((r) => parseMap(r.stdout)),
  ]);
  const size = chain[0]!.virtualSize;
  const mapped = map.reduce((n, e) => n + e.length, 0);
  if (mapped !== size) throw hostError('VMTC_HOST_DISK_TOOL_FAILED', { tool: 'qemu-img map', image, reason: `maps ${mapped} B of ${size} B` });
  for (const e of map) {
    if (e.data && (e.offset === undefined || e.depth >= chain.length)) throw hostError('VMTC_HOST_DISK_UNREADABLE', { image, needsConvert: true, reason: 'an extent without a host offset (compressed?)', extent: e });
    if (!e.data && !e.zero) throw hostError('VMTC_HOST_DISK_UNREADABLE', { image, needsConvert: true, reason: 'an extent neither data nor zeros', extent: e });
  }
  const files = chain.map((c) => (isAbsolute(c.filename) ? c.filename : join(dirname(image), c.filename)));
  // Each layer opened once, also when reads run at once (the promise is what is kept).
  const handles = new Map<number, Promise<FileHandle>>();
  const handle = (depth: number): Promise<FileHandle> => {
    let h = handles.get(depth);
    if (!h) {
      h = open(files[depth]!, 'r');
      handles.set(depth, h);
    }
    return h;
  };
  const read: ReadAt = async (offset, length) => {
    const end = Math.min(size, offset + length);
    const out = Buffer.alloc(Math.max(0, end - offset));
    // The first extent that ends after `offset` (binary search), then on until `end`.
    let lo = 0;
    let hi = map.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (map[mid]!.start + map[mid]!.length <= offset) lo = mid + 1;
      else hi = mid;
    }
    for (let i = lo; i < map.length && map[i]!.start < end; i++) {
      const e = map[i]!;
      if (!e.data) continue; // zeros: the buffer is zeroed
      const from = Math.max(offset, e.start);
      const to = Math.min(end, e.start + e.length);
      const h = await handle(e.depth);
      let got = 0;
      while (got < to - from) {
        const { bytesRead } = await h.read(out, from - offset + got, to - from - got, e.offset! + (from - e.start) + got);
        if (bytesRead === 0) throw hostError('VMTC_HOST_DISK_UNREADABLE', { image: files[e.depth], offset: e.offset! + (from - e.start) + got, reason: 'the file ends before the data its map names' });
        got += bytesRead;
      }
    }
    return out;
  };
  return {
    size, read,
    close: async () => {
      for (const h of handles.values()) await h.then((f) => f.close()).catch(() => undefined);
      handles.clear();
    },
  };
}

/** A digest of an image's guest-visible bytes read through its map; an image the map cannot
 *  serve (compressed clusters) is converted to a raw scratch file instead. */
export async function digestImageByMap(run: CommandRunner, image: string, format: string, tmpDir: string, opts: DigestOptions = {}): Promise<DiskDigest> {
  if (!existsSync(image)) throw hostError('VMTC_HOST_DISK_NOT_FOUND', { image });
  let r: ImageReader;
  try {
    r = await openImageReader(run, image, format);
  } catch (e) {
    if ((e as { details?: { needsConvert?: boolean } }).details?.needsConvert) return digestImage(run, image, format, tmpDir, opts);
    throw e;
  }
  try {
    return await digestDisk(r.read, r.size, opts);
  } catch (e) {
    // A compressed cluster met while reading: the map path behind the reader refused the image.
    if ((e as { details?: { needsConvert?: boolean } }).details?.needsConvert) return await digestImage(run, image, format, tmpDir, opts);
    throw e;
  } finally {
    await r.close();
  }
}
