// Merkle leaves kept between two digests of the same disk (docs/disks.md#incremental-digests): a
// full digest read off the critical path is kept as a cache, and a later digest re-reads only the
// chunks written since, takes the other leaves from the cache and recomputes the root. The cache
// is only as good as the list of written chunks: the callers take that list from the change
// tracking that also drives the deltas (a QEMU dirty bitmap), and a full digest is what catches
// a chunk that changed without being tracked (e.g. a byte flipped on the store's disk).
import type { DiskDigest } from './backend.ts';
import { leafHash, merkleRoot, type ReadAt } from './digest.ts';
import { hostError } from '../errors.ts';

/** The leaves of one disk as of a point the caller names (a checkpoint). */
export interface LeafCache {
  size: number;
  chunkBytes: number;
  leaves: readonly string[];
}

/** Chunks read at once by refreshLeaves. */
const READ_AHEAD = 4;

/** The chunks that byte ranges touch: sorted, distinct, within the disk. */
export function chunksOfRanges(ranges: readonly { offset: number; length: number }[], chunkBytes: number, size: number): number[] {
  const chunks = Math.ceil(size / chunkBytes);
  const out = new Set<number>();
  for (const r of ranges) {
    if (!(Number.isSafeInteger(r.offset) && Number.isSafeInteger(r.length) && r.offset >= 0 && r.length >= 0)) throw hostError('VMTC_HOST_BAD_PARAMS', { field: 'ranges', reason: 'byte offsets and lengths', range: r });
    if (r.length === 0) continue;
    const first = Math.floor(r.offset / chunkBytes);
    const last = Math.min(chunks - 1, Math.floor((r.offset + r.length - 1) / chunkBytes));
    for (let c = first; c <= last; c++) out.add(c);
  }
  return [...out].sort((a, b) => a - b);
}

/** A Merkle digest of the disk now: the cache's leaves, with `chunks` read again through `read`.
 *  The cache is not changed. */
export async function refreshLeaves(cache: LeafCache, chunks: readonly number[], read: ReadAt): Promise<DiskDigest> {
  const n = Math.ceil(cache.size / cache.chunkBytes);
  if (cache.leaves.length !== n) throw hostError('VMTC_HOST_BAD_PARAMS', { field: 'cache.leaves', reason: `${n} leaves for ${cache.size} B in ${cache.chunkBytes} B chunks`, got: cache.leaves.length });
  const leaves = [...cache.leaves];
  for (const i of chunks) if (!(Number.isInteger(i) && i >= 0 && i < n)) throw hostError('VMTC_HOST_BAD_PARAMS', { field: 'chunks', reason: `chunk indices 0 .. ${n - 1}`, got: i });
  // A few reads in flight while earlier chunks are hashed (an NBD export answers each read a
  // round trip later); at most READ_AHEAD chunks held at once.
  const leafOf = async (i: number) => {
    const want = Math.min(cache.chunkBytes, cache.size - i * cache.chunkBytes);
    const data = await read(i * cache.chunkBytes, want);
    if (data.length !== want) throw hostError('VMTC_HOST_DISK_UNREADABLE', { offset: i * cache.chunkBytes, wanted: want, got: data.length });
    leaves[i] = leafHash(i, data);
  };
  let next = 0;
  const worker = async () => {
    while (next < chunks.length) await leafOf(chunks[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(READ_AHEAD, chunks.length) }, worker));
  return { mode: 'merkle', algorithm: 'sha256', size: cache.size, chunkBytes: cache.chunkBytes, root: merkleRoot(leaves), leaves };
}
