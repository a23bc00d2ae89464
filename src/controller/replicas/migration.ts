// A migration's use of a warm replica (docs/disks.md#replicas): once the source is paused or
// powered off, only the last delta crosses, and the destination's store must then equal the
// source's disks, digest against digest (agents/host/disks/digest.ts: each side reads its own
// disks, only the Merkle trees cross), before the destination boots from it. Without a warm
// replica the migration takes its usual path (a full copy); a last delta that failed or digests
// that differ make the cold path roll back (effects-cold.ts): never a wrong disk.
import type { ReplicaCheckpoint, ReplicaDigest, VmSpec } from '../../common/agent-protocol.ts';
import { err } from '../errors.ts';
import type { Clock } from '../../common/clock.ts';
import { VmtcError, toVmtcError } from '../../common/errors.ts';
import type { Logger } from '../../common/log.ts';
import type { HubPort } from '../ports.ts';
import { replicaServiceOf } from './service.ts';
import type { ColdReplicaUse, LiveReplicaUse } from '../migration/record.ts';
import type { ReplicaRow } from './machine.ts';

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
  /** Which digest each side took after the power-off (incremental: from the leaves kept before
   *  it, `readChunks` chunks re-read a side; full: every chunk). */
  digest: { source: DigestKind; store: DigestKind };
  readChunks?: number;
}
export type DigestKind = 'incremental' | 'full';
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

/** An answer's kind: incremental only if every disk was (docs/disks.md#incremental-digests). */
export const digestKind = (d: ReplicaDigest): DigestKind => (d.disks.length > 0 && d.disks.every((x) => x.changed) ? 'incremental' : 'full');

/** Both sides' digests of the replica's disks, the source paused or off (the live pause, the
 *  cold power-off). `since`: the checkpoint the last delta started from, where both sides kept
 *  leaves: the source finds the chunks written since in its change tracking and the store is told
 *  them (only with every disk's list can the store's digest be incremental); each side falls
 *  back to a full digest on its own. Without `since` both read every chunk, at once. */
async function bothDigests(hub: HubPort, m: DigestSides & { since?: ReplicaCheckpoint | null }): Promise<readonly [ReplicaDigest, ReplicaDigest]> {
  if (!m.since) return Promise.all([sourceDigest(hub, m), storeDigest(hub, m)]);
  const s = await sourceDigest(hub, m, m.since);
  return [s, await storeDigest(hub, m, m.since, changedOf(s))] as const;
}

export interface DigestSides { vmId: string; sourceHostId: string; destinationHostId: string; replicaId: string }

/** The source's digest (incremental from `since` where it kept leaves there). */
export const sourceDigest = (hub: HubPort, m: DigestSides, since?: ReplicaCheckpoint | null, changed?: number[][]) =>
  hub.request(m.sourceHostId, 'replica.digest', { replicaId: m.replicaId, side: 'source', vmId: m.vmId, ...(since ? { since } : {}), ...(since && changed ? { changed } : {}) }, DIGEST_TIMEOUT_MS);

/** The store's digest: incremental only with `since` and the source's lists of changed chunks. */
export const storeDigest = (hub: HubPort, m: DigestSides, since?: ReplicaCheckpoint | null, changed?: number[][]) =>
  hub.request(m.destinationHostId, 'replica.digest', { replicaId: m.replicaId, side: 'store', ...(since && changed ? { since, changed } : {}) }, DIGEST_TIMEOUT_MS);

/** The source's changed chunks per disk, when its digest was incremental on every disk. */
export const changedOf = (s: ReplicaDigest): number[][] | undefined => (s.disks.every((d) => d.changed) ? s.disks.map((d) => d.changed!) : undefined);
/** Both sides take a full digest of the replica's disks and keep its leaves at `keepAs`, the
 *  checkpoint the store holds (docs/disks.md#incremental-digests, step 1). False when either
 *  could not: the later digests are then full (as sound, slower). */
async function keepDigests(hub: HubPort, log: Logger, r: { id: string; vmId: string; sourceHostId: string; destinationHostId: string }, keepAs: ReplicaCheckpoint): Promise<boolean> {
  return Promise.all([
    hub.request(r.sourceHostId, 'replica.digest', { replicaId: r.id, side: 'source', vmId: r.vmId, keepAs }, DIGEST_TIMEOUT_MS),
    hub.request(r.destinationHostId, 'replica.digest', { replicaId: r.id, side: 'store', keepAs }, DIGEST_TIMEOUT_MS),
  ]).then(
    () => true,
    (e: unknown) => {
      log.warn({ replicaId: r.id, code: toVmtcError(e).code }, 'digest leaves not kept: the later digests read every chunk');
      return false;
    },
  );
}

/** A cold move's warm replica before the power-off (ColdReplicaUse's first fields). */
export type ColdReplicaPrep = Required<Pick<ColdReplicaUse, 'replicaId' | 'preSeededBytes' | 'precopyDeltaBytes' | 'precopyDeltaMs' | 'keptDigestMs'>> & Pick<ColdReplicaUse, 'keptAt' | 'connectAheadMs'>;

/**
 * A cold move with a warm replica at its destination, while the VM still runs (before the
 * power-off: docs/disks.md "Cold move with a warm replica"): the replica is lent to migration
 * `migrationId` (no periodic delta until it ends: finish() gives it back unless consumed), one
 * delta brings the store close, and both sides take their full digests and keep the leaves at
 * the checkpoint it took, as a live move's pre-copy does; after the power-off the last delta and
 * digests of only what it carried (lastDeltaAndVerify) are then the downtime. Null without a
 * warm replica or when it cannot be lent; a delta that failed leaves it lent without kept
 * leaves (the last delta retries from the store's checkpoint, the digests read every chunk).
 */
export async function prepareColdReplica(hub: HubPort, clock: Clock, log: Logger, m: { migrationId: string; vmId: string; sourceHostId: string; destinationHostId: string }): Promise<ColdReplicaPrep | null> {
  const svc = replicaServiceOf(hub);
  const r = svc?.warmAt(m.vmId, m.destinationHostId);
  if (!svc || !r || r.sourceHostId !== m.sourceHostId) return null;
  svc.hold(r.id);
  const t0 = clock.now();
  let next: ReplicaRow | null | undefined;
  try {
    // After a periodic step under way, under the same lock.
    next = await svc.exclusive(r.id, async () => {
      const cur = svc.records.get(r.id);
      if (!cur || cur.state !== 'warm' || cur.migrationId) return undefined;
      return svc.transferStep(svc.lend(r.id, m.migrationId));
    });
  } catch (e) {
    log.warn({ replicaId: r.id, code: toVmtcError(e).code }, 'the replica could not be lent to the cold move');
    svc.giveBack(r.id);
    return null;
  }
  if (next === undefined) {
    svc.release(r.id);
    return null;
  }
  const t1 = clock.now();
  const prep: ColdReplicaPrep = { replicaId: r.id, preSeededBytes: r.bytesSent, precopyDeltaBytes: 0, precopyDeltaMs: t1 - t0, keptDigestMs: 0 };
  if (!next || next.state !== 'warm' || next.error || !next.checkpoint) {
    log.warn({ replicaId: r.id, code: next?.error?.code }, 'the delta before the power-off failed: the last delta sends it, the digests read every chunk');
    return prep;
  }
  prep.precopyDeltaBytes = next.lastDeltaBytes;
  const keepAs = next.checkpoint;
  if (await keepDigests(hub, log, next, keepAs)) prep.keptAt = { id: keepAs.id, seq: keepAs.seq };
  prep.keptDigestMs = clock.now() - t1;
  // The last delta's store export, opened now, and the source connected to it (its relays pay
  // the path's round trips now, not after the power-off); either failing only costs time then.
  const t2 = clock.now();
  await svc.exclusive(r.id, async () => {
    const cur = svc.records.get(r.id);
    const store = cur ? await svc.openAhead(cur) : undefined;
    if (store) await hub.request(m.sourceHostId, 'replica.preconnect', { replicaId: r.id, vmId: m.vmId, store });
  }).catch((e: unknown) => log.warn({ replicaId: r.id, code: toVmtcError(e).code }, 'the last delta\'s store could not be opened or connected ahead: it is, after the power-off'));
  prep.connectAheadMs = clock.now() - t2;
  log.info({ ...prep }, 'cold move: replica delta and kept digests done before the power-off');
  return prep;
}

/**
 * With the VM stopped at the source: the last delta of its warm replica at `destinationHostId`
 * (the one lent to migration `id` before the power-off, else a warm one) and the digest check:
 * incremental when `prep.keptAt` names leaves both sides kept at the checkpoint this last delta
 * starts from (its bitmap, kept with it, names what the delta carried). `use` when the store equals the
 * source's disks (the replica is held: call consumed() or released()); `fallback` with why
 * otherwise; null without a warm replica.
 */
export async function lastDeltaAndVerify(hub: HubPort, clock: Clock, log: Logger, m: { id?: string; vmId: string; sourceHostId: string; destinationHostId: string }, prep?: Pick<ColdReplicaUse, 'replicaId' | 'keptAt' | 'preSeededBytes'>): Promise<ReplicaPlan> {
  const svc = replicaServiceOf(hub);
  const r = (m.id ? svc?.lentTo(m.vmId, m.id) : undefined) ?? svc?.warmAt(m.vmId, m.destinationHostId);
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
    let since: ReplicaCheckpoint | null = null;
    const next = await svc.exclusive(r.id, async () => {
      const cur = svc.records.get(r.id);
      if (!cur || cur.state !== 'warm') return cur ?? null;
      touched = true;
      const keptAt = prep?.replicaId === cur.id ? prep.keptAt : undefined;
      const incremental = !!keptAt && cur.checkpoint?.id === keptAt.id && cur.checkpoint.seq === keptAt.seq;
      if (incremental) since = cur.checkpoint;
      return svc.transferStep(cur, { keepFrom: incremental });
    });
    const t1 = clock.now();
    if (!next || next.state !== 'warm' || next.error) {
      svc.release(r.id);
      return { fallback: { replicaId: r.id, code: next?.error?.code ?? 'VMTC_REPLICA_STATE', message: next?.error?.message ?? `the replica is ${next?.state ?? 'gone'}`, touched } };
    }
    const [src, dst] = await bothDigests(hub, { vmId: m.vmId, sourceHostId: m.sourceHostId, destinationHostId: m.destinationHostId, replicaId: r.id, since });
    const differ = digestsDiffer(src, dst);
    if (differ.length) {
      const error = { code: 'VMTC_HOST_DISK_DIGEST_MISMATCH', message: "the replica's store differs from the source's disks", details: { disks: differ } };
      svc.event(r.id, { type: 'VERIFY_FAILED', error });
      log.warn({ replicaId: r.id, disks: differ }, 'the replica differs from the source: full copy');
      return { fallback: { replicaId: r.id, ...error, touched: true } };
    }
    const digest = { source: digestKind(src), store: digestKind(dst) };
    const use: ReplicaUse = {
      replicaId: r.id, lastDeltaBytes: next.lastDeltaBytes, lastDeltaMs: t1 - t0, preSeededBytes: (prep?.replicaId === r.id ? prep.preSeededBytes : undefined) ?? r.bytesSent, digestMs: clock.now() - t1, disks: src.disks.length, digest,
      ...(digest.source === 'incremental' ? { readChunks: src.disks.reduce((n, d) => n + d.changed!.length, 0) } : {}),
    };
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

/** Whether the VM has replicas (any state): only then can its disks carry their checkpoints. */
export function vmHasReplicas(hub: HubPort, vmId: string): boolean {
  return (replicaServiceOf(hub)?.records.forVm(vmId).length ?? 0) > 0;
}

/**
 * After a committed move of `vmId` (live or cold): every replica of the VM is removed. Their
 * checkpoints were taken of the source's disks, which are gone with the source VM, so each
 * delta would fail; re-targeting one to the new host is not trivially correct (the new host's
 * disks carry no checkpoint the store holds), so none is kept. A replica the migration itself
 * consumed (a cold move booted from its store) is already being removed and is left to that.
 * Returns the ids whose removal this started.
 */
export function endReplicasAfterCommit(hub: HubPort, log: Logger, vmId: string, migrationId: string): string[] {
  const svc = replicaServiceOf(hub);
  if (!svc) return [];
  const ended: string[] = [];
  for (const r of svc.records.forVm(vmId)) {
    if (r.state === 'removing') continue;
    try {
      // The live move that booted from this store: the store's images are the VM's disks now.
      if (r.migrationId === migrationId && r.state === 'warm') svc.event(r.id, { type: 'CONSUMED', migrationId });
      else svc.remove(vmId, r.id);
      ended.push(r.id);
    } catch (e) {
      log.warn({ replicaId: r.id, code: toVmtcError(e).code }, 'could not start removing a replica of the moved VM');
    }
  }
  if (ended.length) log.info({ vmId, migrationId, replicas: ended }, 'the VM moved: its replicas are removed');
  return ended;
}

// ---- live moves with a warm replica ------------------------------------------------------------
// The controller decides (effects-live.ts asks here): with a warm replica of the VM at the
// destination, from the same source, and no read-only disks, the destination's incoming VM boots
// from the replica's store (its disks' paths are the store's images) and nothing is mirrored;
// the source sends the delta since the store's checkpoint while memory is pre-copied and the last
// one in the pause before the switchover, then both sides digest their disks and a mismatch
// cancels the migration (the source runs on, nothing is committed). Without one: the mirror.

/** What the record keeps of a live move's replica (steps.incoming.replica). */
export type { LiveReplicaUse } from '../migration/record.ts';

/** Lend the warm replica at the destination to live migration `migrationId`: the spec the
 *  destination is prepared with (writable disks at the store's images), or null for the mirror. */
export async function lendForLive(hub: HubPort, log: Logger, m: { migrationId: string; vmId: string; sourceHostId: string; destinationHostId: string; spec: VmSpec }): Promise<{ spec: VmSpec; use: LiveReplicaUse } | null> {
  const svc = replicaServiceOf(hub);
  const r = svc?.warmAt(m.vmId, m.destinationHostId);
  if (!svc || !r || r.sourceHostId !== m.sourceHostId) return null;
  const disks = m.spec.disks ?? [];
  if (disks.length === 0 || disks.some((d) => d.readonly)) {
    log.info({ replicaId: r.id }, 'a VM with read-only disks moves with the mirror, not its replica');
    return null;
  }
  svc.hold(r.id);
  try {
    // After a periodic step under way, under the same lock: the store then holds its checkpoint.
    const out = await svc.exclusive(r.id, async () => {
      const cur = svc.records.get(r.id);
      if (!cur || cur.state !== 'warm' || cur.migrationId) return null;
      const { paths } = await hub.request(m.destinationHostId, 'replica.storePaths', { replicaId: r.id });
      if (paths.length !== disks.length) return null;
      svc.lend(r.id, m.migrationId);
      return { paths, row: cur };
    });
    if (!out) {
      svc.release(r.id);
      return null;
    }
    const spec: VmSpec = { ...m.spec, disks: disks.map((d, i) => ({ ...d, path: out.paths[i]! })) };
    log.info({ replicaId: r.id, disks: disks.length }, 'live move with the warm replica: the destination boots from its store');
    return { spec, use: { replicaId: r.id, preSeededBytes: out.row.bytesSent, disks: disks.length } };
  } catch (e) {
    log.warn({ replicaId: r.id, code: toVmtcError(e).code }, 'the replica cannot be lent: the disks are mirrored');
    svc.giveBack(r.id);
    return null;
  }
}

/** The replica lent to this live migration, if any. */
export function lentReplica(hub: HubPort, vmId: string, migrationId: string): string | undefined {
  return replicaServiceOf(hub)?.lentTo(vmId, migrationId)?.id;
}

export const liveFailure = (replicaId: string, why: { code: string; message: string; details?: Record<string, unknown> }, phase: string) =>
  err('VMTC_MIGRATION_FAILED', { phase, replica: replicaId, cause: { code: why.code, message: why.message, ...(why.details ? { details: why.details } : {}) } }, {
    message: `the replica ${replicaId} failed the live move (${why.code}): cancelled, the VM runs at the source`,
  });

/** One delta of the lent replica (the source's disks since the store's checkpoint). `from`: the
 *  checkpoint it started from. After the pre-copy delta both sides take a full digest and keep
 *  its leaves (docs/disks.md#incremental-digests), off the pause: the digests at the pause then
 *  read only the chunks the last delta carried. A side that cannot keep them reads every chunk
 *  at the pause instead. */
export async function liveReplicaDelta(hub: HubPort, clock: Clock, log: Logger, replicaId: string, phase: 'precopy' | 'switchover'): Promise<{ bytes: number; ms: number; from: ReplicaCheckpoint | null }> {
  const svc = replicaServiceOf(hub);
  if (!svc) throw liveFailure(replicaId, { code: 'VMTC_REPLICA_NOT_FOUND', message: 'no replica service' }, phase);
  const t0 = clock.now();
  let from: ReplicaCheckpoint | null = null;
  const next = await svc.exclusive(replicaId, async () => {
    const cur = svc.records.get(replicaId);
    if (!cur || cur.state !== 'warm') return cur ?? null;
    from = cur.checkpoint;
    return svc.transferStep(cur, { keepFrom: phase === 'switchover' });
  });
  if (!next || next.state !== 'warm' || next.error) {
    throw liveFailure(replicaId, next?.error ?? { code: 'VMTC_REPLICA_STATE', message: `the replica is ${next?.state ?? 'gone'}` }, phase);
  }
  const out = { bytes: next.lastDeltaBytes, ms: clock.now() - t0, from };
  if (phase === 'precopy' && next.checkpoint) {
    const keepAs = next.checkpoint;
    const t1 = clock.now();
    if (await keepDigests(hub, log, next, keepAs)) log.info({ replicaId, checkpoint: keepAs.id, ms: clock.now() - t1 }, 'digest leaves kept for the pause');
    // The last delta's store export, opened now rather than in the pause.
    await svc.exclusive(replicaId, async () => {
      const cur = svc.records.get(replicaId);
      if (cur) await svc.openAhead(cur);
    }).catch((e: unknown) => log.warn({ replicaId, code: toVmtcError(e).code }, 'the store could not be opened ahead: the last delta opens it'));
  }
  return out;
}

/** After the pre-copy delta (its store export opened ahead): the source mirrors every write of
 *  the VM's disks into the store from now on and sends the delta since that checkpoint, so the
 *  store keeps up until the pause (docs/disks.md#following). Null when it cannot (a driver
 *  without it, a failure): the last delta then runs in the pause, as without. */
export async function followLiveReplica(hub: HubPort, clock: Clock, log: Logger, replicaId: string): Promise<{ bytes: number; ms: number } | null> {
  const svc = replicaServiceOf(hub);
  if (!svc) return null;
  const t0 = clock.now();
  try {
    const t = await svc.exclusive(replicaId, async () => {
      const cur = svc.records.get(replicaId);
      if (!cur) throw err('VMTC_REPLICA_NOT_FOUND', { replicaId });
      return svc.followStep(cur);
    });
    const out = { bytes: t.bytes, ms: clock.now() - t0 };
    log.info({ replicaId, catchUpBytes: out.bytes, ms: out.ms }, 'the store follows the disks: writes mirrored, catch-up delta sent');
    return out;
  } catch (e) {
    const v = toVmtcError(e);
    log.info({ replicaId, code: v.code, reason: v.message }, 'the store cannot follow the disks: the last delta runs in the pause');
    return null;
  }
}

/** In the pause, a followed replica: the mirrors stop (nothing in flight is left) and the store
 *  records the catch-up delta's checkpoint. A mirror that failed (or a step that did) falls back
 *  to the last delta, from the checkpoint the store still holds. Same answer as liveReplicaDelta
 *  ('switchover'), with what the mirrors carried. */
export async function endLiveFollow(hub: HubPort, clock: Clock, log: Logger, replicaId: string): Promise<{ bytes: number; ms: number; from: ReplicaCheckpoint | null; mirroredBytes?: number; cut?: boolean }> {
  const svc = replicaServiceOf(hub);
  if (!svc?.isFollowed(replicaId)) return liveReplicaDelta(hub, clock, log, replicaId, 'switchover');
  const t0 = clock.now();
  let from: ReplicaCheckpoint | null = null;
  const o = await svc.exclusive(replicaId, async () => {
    const cur = svc.records.get(replicaId);
    if (!cur) throw liveFailure(replicaId, { code: 'VMTC_REPLICA_NOT_FOUND', message: 'the replica is gone' }, 'switchover');
    from = cur.checkpoint;
    return svc.unfollowStep(cur, { record: true });
  });
  if (o.recorded) return { bytes: 0, ms: clock.now() - t0, from, mirroredBytes: o.mirroredBytes, ...(o.cut ? { cut: true } : {}) };
  log.warn({ replicaId, error: o.error }, 'the store did not keep up with the disks: the last delta runs in the pause');
  const last = await liveReplicaDelta(hub, clock, log, replicaId, 'switchover');
  return { ...last, ms: clock.now() - t0, mirroredBytes: o.mirroredBytes };
}

/** With the source paused after the last delta: each side digests its own disks and only the
 *  digests cross. `since`: the checkpoint the last delta started from (the leaves kept there
 *  serve an incremental digest: the source finds the chunks written since in its change
 *  tracking and the store is told them). A mismatch fails the replica (VERIFY_FAILED) and the
 *  migration. */
export async function verifyLiveReplica(hub: HubPort, log: Logger, m: { vmId: string; sourceHostId: string; destinationHostId: string; replicaId: string; since?: ReplicaCheckpoint | null }): Promise<{ disks: number; readChunks?: number }> {
  const [src, dst] = await bothDigests(hub, m).catch((e: unknown) => {
    throw digestFailure(m.replicaId, e);
  });
  return sameDisksOrFail(hub, log, m.replicaId, src, dst);
}

/** A digest that could not be taken fails the move. */
export const digestFailure = (replicaId: string, e: unknown): VmtcError => {
  const v = toVmtcError(e);
  return liveFailure(replicaId, { code: v.code, message: v.message }, 'digest');
};

/** Equal digests, or the replica fails (VERIFY_FAILED) and so does the move. */
export function sameDisksOrFail(hub: HubPort, log: Logger, replicaId: string, src: ReplicaDigest, dst: ReplicaDigest): { disks: number; readChunks?: number } {
  const differ = digestsDiffer(src, dst);
  if (differ.length) {
    const error = { code: 'VMTC_HOST_DISK_DIGEST_MISMATCH', message: "the replica's store differs from the source's disks", details: { disks: differ } };
    replicaServiceOf(hub)?.event(replicaId, { type: 'VERIFY_FAILED', error });
    log.warn({ replicaId, disks: differ }, 'the replica differs from the paused source: the live move is cancelled');
    throw liveFailure(replicaId, error, 'digest');
  }
  const incremental = digestKind(src) === 'incremental' && digestKind(dst) === 'incremental';
  return { disks: src.disks.length, ...(incremental ? { readChunks: src.disks.reduce((n, d) => n + d.changed!.length, 0) } : {}) };
}

/** A live migration ended: a replica still lent to it (it did not commit) goes back to its
 *  deltas. A committed one was consumed by endReplicasAfterCommit. */
export function returnLiveReplica(hub: HubPort, vmId: string, migrationId: string): void {
  const svc = replicaServiceOf(hub);
  const r = svc?.lentTo(vmId, migrationId);
  if (svc && r) svc.giveBack(r.id);
}
