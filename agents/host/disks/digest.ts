// Digests of a disk's guest-visible bytes (docs/disks.md#digests). Each side reads its own disk
// once, locally; only the digests cross the WAN: a Merkle tree's leaves are 32 bytes per chunk
// (32 KiB for 1 GiB in 1 MiB chunks), and comparing the leaves names the chunks that differ, so
// a stale or corrupt destination can be repaired by re-sending those chunks rather than the disk.
// The sampled mode reads only `samples` chunks chosen from a seed both ends share: a cheap check
// that catches a wrong or stale disk with high probability, not a proof.
import { createHash } from 'node:crypto';
import type { DigestOptions, DiskDigest } from './backend.ts';
import { hostError } from '../errors.ts';

/** Read `length` bytes at `offset` (a short read only at the end of the disk). */
export type ReadAt = (offset: number, length: number) => Promise<Buffer>;

export const DIGEST_DEFAULTS = { chunkBytes: 1024 * 1024, samples: 64 } as const;

const sha = (...parts: (Buffer | string)[]) => {
  const h = createHash('sha256');
  for (const p of parts) h.update(p);
  return h.digest('hex');
};

/** The sampled chunk indices for a seed: the same at both ends, distinct, sorted. */
export function sampleIndices(chunks: number, samples: number, seed: string): number[] {
  if (samples >= chunks) return Array.from({ length: chunks }, (_, i) => i);
  const picked = new Set<number>();
  for (let i = 0; picked.size < samples && i < samples * 64; i++) {
    picked.add(Number(BigInt(`0x${sha(seed, ':', String(i)).slice(0, 13)}`) % BigInt(chunks)));
  }
  return [...picked].sort((a, b) => a - b);
}

/** The Merkle root over leaf hashes: pairs hashed level by level; an odd one is carried up. */
export function merkleRoot(leaves: readonly string[]): string {
  if (!leaves.length) return sha('vmtc-empty');
  let level: Buffer[] = leaves.map((l) => Buffer.from(l, 'hex'));
  while (level.length > 1) {
    const next: Buffer[] = [];
    for (let i = 0; i < level.length; i += 2) next.push(i + 1 < level.length ? Buffer.from(sha(Buffer.from([1]), level[i]!, level[i + 1]!), 'hex') : level[i]!);
    level = next;
  }
  return level[0]!.toString('hex');
}

/** The hash of chunk `index`: the index is part of the leaf, so two swapped chunks do not hash
 *  alike. */
export const leafHash = (index: number, data: Buffer): string => sha(Buffer.from([0]), String(index), ':', data);

export async function digestDisk(read: ReadAt, size: number, opts: DigestOptions = {}): Promise<DiskDigest> {
  const chunkBytes = opts.chunkBytes ?? DIGEST_DEFAULTS.chunkBytes;
  const mode = opts.mode ?? 'merkle';
  if (!(Number.isSafeInteger(size) && size >= 0)) throw hostError('VMTC_HOST_BAD_PARAMS', { field: 'size', reason: 'a byte count' });
  if (!(Number.isInteger(chunkBytes) && chunkBytes >= 4096 && chunkBytes <= 64 * 1024 * 1024 && chunkBytes % 512 === 0)) throw hostError('VMTC_HOST_BAD_PARAMS', { field: 'chunkBytes', reason: '4 KiB .. 64 MiB, a multiple of 512' });
  const chunks = Math.ceil(size / chunkBytes);
  const leafOf = async (i: number) => {
    const want = Math.min(chunkBytes, size - i * chunkBytes);
    const data = await read(i * chunkBytes, want);
    if (data.length !== want) throw hostError('VMTC_HOST_DISK_UNREADABLE', { offset: i * chunkBytes, wanted: want, got: data.length });
    return leafHash(i, data);
  };
  if (mode === 'merkle') {
    const leaves: string[] = [];
    for (let i = 0; i < chunks; i++) leaves.push(await leafOf(i));
    return { mode, algorithm: 'sha256', size, chunkBytes, root: merkleRoot(leaves), leaves };
  }
  if (mode !== 'sampled') throw hostError('VMTC_HOST_BAD_PARAMS', { field: 'mode', reason: 'merkle or sampled' });
  const samples = opts.samples ?? DIGEST_DEFAULTS.samples;
  if (!(Number.isInteger(samples) && samples >= 1 && samples <= 1_000_000)) throw hostError('VMTC_HOST_BAD_PARAMS', { field: 'samples', reason: '1 .. 1,000,000' });
  const seed = opts.seed ?? '';
  const indices = sampleIndices(chunks, samples, seed);
  const leaves: string[] = [];
  for (const i of indices) leaves.push(await leafOf(i));
  return { mode, algorithm: 'sha256', size, chunkBytes, root: sha(seed, ':', leaves.join('')), leaves, indices };
}

export interface DigestComparison {
  equal: boolean;
  /** Why they cannot be compared, when they cannot (different size, chunking or mode). */
  incomparable?: string;
  /** Chunk indices whose hashes differ (as many as both digests show). */
  differing: number[];
}

/** Compare the source's digest with the destination's. */
export function compareDigests(src: DiskDigest, dst: DiskDigest): DigestComparison {
  for (const k of ['mode', 'size', 'chunkBytes'] as const) {
    if (src[k] !== dst[k]) return { equal: false, incomparable: `${k}: ${src[k]} vs ${dst[k]}`, differing: [] };
  }
  if (src.mode === 'sampled' && JSON.stringify(src.indices) !== JSON.stringify(dst.indices)) return { equal: false, incomparable: 'sampled different chunks (seed)', differing: [] };
  const differing: number[] = [];
  for (let i = 0; i < Math.max(src.leaves.length, dst.leaves.length); i++) {
    if (src.leaves[i] !== dst.leaves[i]) differing.push(src.mode === 'sampled' ? src.indices![i]! : i);
  }
  return { equal: src.root === dst.root && differing.length === 0, differing };
}

/** Throws VMTC_HOST_DISK_DIGEST_MISMATCH unless the two digests are equal. */
export function assertSameDisk(src: DiskDigest, dst: DiskDigest, details: Record<string, unknown> = {}): void {
  const c = compareDigests(src, dst);
  if (!c.equal) throw hostError('VMTC_HOST_DISK_DIGEST_MISMATCH', { ...details, mode: src.mode, differingChunks: c.differing.slice(0, 64), differingCount: c.differing.length, chunkBytes: src.chunkBytes, ...(c.incomparable ? { incomparable: c.incomparable } : {}) });
}
