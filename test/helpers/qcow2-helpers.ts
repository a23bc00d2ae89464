// What the tests of the in-process qcow2 reader share (agents/host/disks/qcow2-file.ts): a double
// of the files it opens (Qcow2Io), images held in memory under absolute paths with counts of what
// was opened and read, so tests can build hostile images in Buffers and mutate them thousands of
// times without writing files; a seeded random source for the fuzz; and a check that a call
// failed with a coded error. Not a test file itself.
import { posix } from 'node:path';
import type { Qcow2FileHandle, Qcow2Io } from '../../agents/host/disks/qcow2-file.ts';
import { VmtcError } from '../../src/common/errors.ts';

/** xorshift32 in [0, 1): the same sequence for the same seed on every run. */
export function seededRandom(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13; s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5; s >>>= 0;
    return s / 0x1_0000_0000;
  };
}

/** The coded error a call failed with; throws when it succeeded or threw anything else. */
export async function codedFailure(p: Promise<unknown>): Promise<VmtcError> {
  try {
    await p;
  } catch (e) {
    if (!(e instanceof VmtcError)) throw new Error(`not a coded error: ${String(e)}`, { cause: e });
    return e;
  }
  throw new Error('did not fail');
}

export interface MemoryQcow2Io extends Qcow2Io {
  files: Map<string, Buffer>;
  /** Opens per path. */
  opens: Map<string, number>;
  /** Reads: path, position and length. */
  reads: { path: string; position: number; length: number }[];
  /** Handles not closed yet. */
  openHandles(): number;
}

const enoent = (path: string) => Object.assign(new Error(`ENOENT: no such file, open '${path}'`), { code: 'ENOENT' });

export function memoryQcow2Io(files: Record<string, Buffer> = {}): MemoryQcow2Io {
  const map = new Map(Object.entries(files));
  const opens = new Map<string, number>();
  const reads: MemoryQcow2Io['reads'] = [];
  let live = 0;
  return {
    files: map, opens, reads,
    openHandles: () => live,
    async realpath(p) {
      const n = posix.normalize(p);
      if (!map.has(n)) throw enoent(p);
      return n;
    },
    async open(p): Promise<Qcow2FileHandle> {
      const n = posix.normalize(p);
      if (!map.has(n)) throw enoent(p);
      opens.set(n, (opens.get(n) ?? 0) + 1);
      live++;
      let closed = false;
      return {
        size: async () => map.get(n)!.length,
        async read(into, at, length, position) {
          if (closed) throw Object.assign(new Error('EBADF: file closed'), { code: 'EBADF' });
          reads.push({ path: n, position, length });
          const b = map.get(n)!;
          if (position >= b.length) return 0;
          return b.copy(into, at, position, Math.min(b.length, position + length));
        },
        async close() {
          if (!closed) live--;
          closed = true;
        },
      };
    },
  };
}
