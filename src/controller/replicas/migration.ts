// A migration's use of a warm replica (docs/disks.md#replicas): once the source is paused or
// powered off, only the last delta crosses, and the destination's store must then equal the
// source's disks, digest against digest (agents/host/disks/digest.ts: each side reads its own
// disks, only the Merkle trees cross), before the destination boots from it. Without a warm
// replica the migration takes its usual path (a full copy); a last delta that failed or digests
// that differ make the cold path roll back (effects-cold.ts): never a wrong disk.
import type { ReplicaDigest } from '../../common/agent-protocol.ts';
import type { Clock } from '../../common/clock.ts';
import { VmtcError, toVmtcError } from '../../common/errors.ts';
import type { Logger } from '../../common/log.ts';
import type { HubPort } from '../ports.ts';
import { replicaServiceOf } from './service.ts';

/** What the migration record keeps of it. */
export interface ReplicaUse {
  replicaId: string;
  /** Bytes the last delta sent (after the source stopped) and how long it took. */
  lastDeltaBytes: number;
  lastDeltaMs: number;
  /** Bytes the replica had sent before the migration (seed and deltas). */
  preSeededBytes: number;
  digestMs: number;
  disks: number;
}
export type ReplicaPlan =
  | { use: ReplicaUse }
  /** `touched`: the last delta ran against the source's disks (a cold source's image then has a
   *  new checkpoint in it, so its published checksums no longer hold: the move rolls back). */
  | { fallback: { replicaId: string; code: string; message: string; details?: Record<string, unknown>; touched: boolean } }
  | null;

const DIGEST_TIMEOUT_MS = 30 * 60_000;

/** The disks whose digests differ (sizes, chunking or roots), with up to 16 differing chunks each. */
export function digestsDiffer(src: ReplicaDigest, dst: ReplicaDigest): { index: number; chunks: number[] }[] {
  const out: { index: number; chunks: number[] }[] = [];
  const n = Math.max(src.disks.length, dst.disks.length);
  for (let i = 0; i < n; i++) {
    const a = src.disks[i];
    const b = dst.disks[i];
    if (!a || !b || a.size !== b.size || a.chunkBytes !== b.chunkBytes || a.leaves.length !== b.leaves.length) {
      out.push({ index: i, chunks: [] });
      continue;
    }
    if (a.root === b.root) continue;
    const chunks: number[] = [];
    for (let c = 0; c < a.leaves.length && chunks.length < 16; c++) if (a.leaves[c] !== b.leaves[c]) chunks.push(c);
    out.push({ index: i, chunks });
  }
  return out;
}

/**
 * With the VM stopped at the source: the last delta of its warm replica at `destinationHostId`
 * and the digest check. `use` when the store equals the source's disks (the replica is held:
 * call consumed() or released()); `fallback` with why otherwise; null without a warm replica.
 */
export async function lastDeltaAndVerify(hub: HubPort, clock: Clock, log: Logger, m: { vmId: string; sourceHostId: string; destinationHostId: string }): Promise<ReplicaPlan> {
  const svc = replicaServiceOf(hub);
  const r = svc?.warmAt(m.vmId, m.destinationHostId);
  if (!svc || !r || r.sourceHostId !== m.sourceHostId) return null;
  svc.hold(r.id);
  const fallback = (e: unknown): ReplicaPlan => {
    const v = e instanceof VmtcError ? e : toVmtcError(e);
    log.warn({ replicaId: r.id, code: v.code }, 'the replica cannot be used: full copy');
    return { fallback: { replicaId: r.id, code: v.code, message: v.message, ...(v.details ? { details: v.details as Record<string, unknown> } : {}), touched: true } };
  };
  try {
    const t0 = clock.now();
    let touched = false;
    const next = await svc.exclusive(r.id, async () => {
      const cur = svc.records.get(r.id);
      if (!cur || cur.state !== 'warm') return cur ?? null;
      touched = true;
      return svc.transferStep(cur);
    });
    const t1 = clock.now();
    if (!next || next.state !== 'warm' || next.error) {
      svc.release(r.id);
      return { fallback: { replicaId: r.id, code: next?.error?.code ?? 'VMTC_REPLICA_STATE', message: next?.error?.message ?? `the replica is ${next?.state ?? 'gone'}`, touched } };
    }
    const [src, dst] = await Promise.all([
      hub.request(m.sourceHostId, 'replica.digest', { replicaId: r.id, side: 'source', vmId: m.vmId }, DIGEST_TIMEOUT_MS),
      hub.request(m.destinationHostId, 'replica.digest', { replicaId: r.id, side: 'store' }, DIGEST_TIMEOUT_MS),
    ]);
    const differ = digestsDiffer(src, dst);
    if (differ.length) {
      const error = { code: 'VMTC_HOST_DISK_DIGEST_MISMATCH', message: "the replica's store differs from the source's disks", details: { disks: differ } };
      svc.event(r.id, { type: 'VERIFY_FAILED', error });
      log.warn({ replicaId: r.id, disks: differ }, 'the replica differs from the source: full copy');
      return { fallback: { replicaId: r.id, ...error, touched: true } };
    }
    const use: ReplicaUse = { replicaId: r.id, lastDeltaBytes: next.lastDeltaBytes, lastDeltaMs: t1 - t0, preSeededBytes: r.bytesSent, digestMs: clock.now() - t1, disks: src.disks.length };
    log.info({ ...use }, 'replica verified: the destination boots from it');
    return { use };
  } catch (e) {
    svc.release(r.id);
    return fallback(e);
  }
}

/** The destination booted from the replica's store: the replica goes once the migration ended. */
export function replicaConsumed(hub: HubPort, replicaId: string, migrationId: string): void {
  replicaServiceOf(hub)?.event(replicaId, { type: 'CONSUMED', migrationId });
}

/** The migration did not use the replica after all: its deltas go on. */
export function replicaReleased(hub: HubPort, replicaId: string): void {
  replicaServiceOf(hub)?.release(replicaId);
}
