// The disk-state backend interface (docs/disks.md): the paper's delta protocol for disks that
// two sites do not share (docs/design.md#disks) — take a point-in-time view, copy all of it to
// the destination while the VM runs, then again and again only the blocks written since the
// previous view, the last delta during stop-and-copy. Two backends implement it: QEMU's own
// copy-on-write (qemu-cow.ts: persistent dirty bitmaps and backup jobs on qcow2) and LVM thin
// snapshots (lvm-thin.ts: thin snapshots, thin_delta).
//
// A replica (the pre-seeding layer above this one) is: a destination store that was seeded
// once, the chain of checkpoints the source keeps (the last one the destination holds is the
// base of the next delta), and the lag (bytes written since that checkpoint, and its age). The
// interface is shaped for it: every transfer names the checkpoint it starts from and returns
// the one the destination now holds.

/** A disk as the source host knows it. */
export type SourceDisk =
  /** A qcow2 image used by a running QEMU (`device`: its drive/qdev id, e.g. `disk0`) or, with
   *  no `vmId`, one no VM runs (the cold path). */
  | { kind: 'qcow2'; image: string; vmId?: string; device?: string }
  /** A thin LV (`vg/lv`) in a thin pool. */
  | { kind: 'lvm-thin'; vg: string; lv: string };

/** A point-in-time view the source keeps so that the next delta can be computed from it. */
export interface Checkpoint {
  /** Caller-chosen, [A-Za-z0-9_.-]{1,48}; unique per disk. */
  id: string;
  /** 0 for the checkpoint the full copy was made from, +1 for every delta after it. */
  seq: number;
  /** Clock ms when the view was taken (the replica's lag in seconds is counted from it). */
  takenAt: number;
  /** What the backend uses to find it again: the dirty bitmap's name, the snapshot LV's name. */
  ref: string;
}

/** The blocks written between two checkpoints (or since one, until now). */
export interface ChangedBlocks {
  /** Bytes in the ranges below, or the bitmap's dirty count when the ranges are not listed. */
  bytes: number;
  /** Tracking granularity (bitmap granularity, thin-pool data block). */
  granularity: number;
  /** Sorted, disjoint [offset, length] ranges in bytes; `zeroed` ranges were discarded (thin:
   *  left_only) and read as zeros in the newer view. Absent where the backend only counts. */
  ranges?: { offset: number; length: number; zeroed?: boolean }[];
}

/** What one full copy or delta moved. */
export interface TransferReport {
  kind: 'full' | 'delta';
  /** The checkpoint the destination holds now (the base of the next delta). */
  checkpoint: Checkpoint;
  /** The checkpoint the delta started from (deltas only). */
  from?: Checkpoint;
  /** Guest-visible size of the disk. */
  diskBytes: number;
  /** Bytes of disk data the backend sent (what crosses the WAN, before transport framing). */
  bytes: number;
  /** Time the copy took, by the injected clock. */
  ms: number;
}

/** A digest of a disk's guest-visible bytes, computed where the disk is, so that source and
 *  destination can be compared by exchanging digests rather than disks (digest.ts). */
export interface DiskDigest {
  mode: 'merkle' | 'sampled';
  algorithm: 'sha256';
  size: number;
  chunkBytes: number;
  /** Merkle root (mode merkle) or the hash of the sampled leaves in order (mode sampled). */
  root: string;
  /** Chunk hashes (merkle: every chunk, in order; sampled: the sampled ones). */
  leaves: string[];
  /** Sampled chunk indices (mode sampled). */
  indices?: number[];
}

export interface DigestOptions {
  mode?: 'merkle' | 'sampled';
  /** Default 1 MiB. */
  chunkBytes?: number;
  /** Mode sampled: how many chunks (default 64), chosen from `seed` the same way at both ends. */
  samples?: number;
  seed?: string;
}

/**
 * One backend of disk state. The source side: `seed` (a full copy from a fresh checkpoint),
 * `changedSince`, `sendDelta`, `removeCheckpoint`; the destination side: `applyDelta` (make a
 * received delta part of the destination store and record its checkpoint); both: `digest`.
 * `D` is the backend's destination (an NBD export for QEMU, a thin LV and a delta file for LVM).
 * Every method fails with a VMTC_HOST_DISK_* code (agents/host/errors.ts).
 */
export interface DiskStateBackend<D> {
  readonly kind: 'qemu-cow' | 'lvm-thin';
  /** Take checkpoint `id` (a point-in-time view) and copy all of the disk as of that instant
   *  to `dest`. Change tracking starts at that same instant. */
  seed(disk: SourceDisk, id: string, dest: D): Promise<TransferReport>;
  /** What was written since `from` (until now, or until `to`). */
  changedSince(disk: SourceDisk, from: Checkpoint, to?: Checkpoint): Promise<ChangedBlocks>;
  /** Take checkpoint `id` and send only the blocks written between `from` and it. `from` stays
   *  until `removeCheckpoint`: a delta that failed can be sent again from it. */
  sendDelta(disk: SourceDisk, from: Checkpoint, id: string, dest: D): Promise<TransferReport>;
  /** At the destination: apply what `sendDelta` produced, checking that the store holds `from`,
   *  and record `checkpoint` as what it holds now. */
  applyDelta(dest: D, report: TransferReport): Promise<void>;
  /** Drop a checkpoint the chain no longer needs. Idempotent: an unknown one is not an error. */
  removeCheckpoint(disk: SourceDisk, cp: Checkpoint): Promise<void>;
  /** Drop every checkpoint of this layer the disk carries (any replica's), with no VM running
   *  it: the VM left the host for good (a committed move), so no chain continues from them.
   *  Returns their refs (bitmap or snapshot names). Idempotent. */
  removeAllCheckpoints(disk: SourceDisk): Promise<string[]>;
  /** Digest of the source disk's guest-visible bytes (take it with the VM paused, or of a
   *  checkpoint's view where the backend keeps one: `at`). */
  digestSource(disk: SourceDisk, opts?: DigestOptions, at?: Checkpoint): Promise<DiskDigest>;
  /** Digest of what the destination store holds, computed at the destination. */
  digestDestination(dest: D, opts?: DigestOptions): Promise<DiskDigest>;
}

/** Checkpoint ids become bitmap and LV names: keep them to a safe alphabet. */
export const CHECKPOINT_ID = /^[A-Za-z0-9_.-]{1,48}$/;
