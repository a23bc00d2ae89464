// The Merkle leaves a host keeps between the digests of one live move with a replica
// (docs/disks.md#incremental-digests): a full digest taken off the pause is kept under the
// checkpoint it was taken at, and the digest at the pause takes it (once) to re-read only the
// chunks written since. Kept in the agent's memory: an agent that restarted has none, and the
// digest at the pause is then a full one (slower, as sound).
import type { ReplicaCheckpoint, ReplicaDigest } from '../../../src/common/agent-protocol.ts';
import type { LeafCache } from './leaf-cache.ts';

export interface DigestNote {
  side: 'source' | 'store';
  replicaId: string;
  /** incremental: only `chunks` chunks were read; full: every one. */
  mode: 'full' | 'incremental';
  chunks: number;
}

export class KeptLeaves {
  private readonly kept = new Map<string, { at: ReplicaCheckpoint; disks: LeafCache[] }>();
  /** The latest digests taken, newest last (at most 32): what the lab tests look at. */
  readonly notes: DigestNote[] = [];

  constructor(private readonly max = 64) {}

  keep(side: DigestNote['side'], replicaId: string, at: ReplicaCheckpoint, digest: ReplicaDigest): void {
    this.kept.delete(`${side}:${replicaId}`);
    if (this.kept.size >= this.max) this.kept.delete(this.kept.keys().next().value!);
    this.kept.set(`${side}:${replicaId}`, { at: { ...at }, disks: digest.disks.map((d) => ({ size: d.size, chunkBytes: d.chunkBytes, leaves: [...d.leaves] })) });
  }

  /** The leaves kept at exactly `since` (id and seq), removed: they serve one digest. */
  take(side: DigestNote['side'], replicaId: string, since: ReplicaCheckpoint): LeafCache[] | undefined {
    const k = this.kept.get(`${side}:${replicaId}`);
    this.kept.delete(`${side}:${replicaId}`);
    return k && k.at.id === since.id && k.at.seq === since.seq ? k.disks : undefined;
  }

  /** The leaves kept at exactly `since`, left kept. */
  peek(side: DigestNote['side'], replicaId: string, since: ReplicaCheckpoint): LeafCache[] | undefined {
    const k = this.kept.get(`${side}:${replicaId}`);
    return k && k.at.id === since.id && k.at.seq === since.seq ? k.disks : undefined;
  }

  forget(replicaId: string): void {
    this.kept.delete(`source:${replicaId}`);
    this.kept.delete(`store:${replicaId}`);
  }

  note(n: DigestNote): void {
    this.notes.push(n);
    if (this.notes.length > 32) this.notes.shift();
  }
}
