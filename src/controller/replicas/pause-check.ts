// A live move's disk check at the pause, with a followed replica (docs/disks.md#following,
// "Checked while the final state crosses"). The source stopped its mirrors at the VM's stop
// already (agents/host/disks/qemu-follow.ts cutFollows: the relays released, the jobs
// cancelled); in the pause before the switchover the controller only waits for that
// (`replica.unfollow`) and then lets the final memory state go at once. The rest runs while
// that state crosses the path: the store closes its export once the relay's last writes are in
// (a one-way trip of the path after the release) and records the catch-up's checkpoint; the
// held destination then takes its disks (closeStore `activateVmId`), off the resume's path; the
// source, once its copy completed, names the chunks written since the digests' kept leaves
// from its image file (QEMU stored its dirty bitmaps into it as it gave the disks up) and
// digests them; the store digests the same chunks; the digests are compared. The destination
// was started held (it stays paused once the state landed: tuning.holdAfterLanding) and is told
// to run only after the check passed; a failed check rolls the move back, and the held copy,
// which never ran, is removed (src/controller/migration/reducer.ts heldDestinationNeverRan).
//
// Without a follow, or with a mirror that failed, everything happens in the pause, before the
// switchover, as before: the last delta (if any), then both digests.
import type { ReplicaCheckpoint, ReplicaDigest } from '../../common/agent-protocol.ts';
import type { Clock } from '../../common/clock.ts';
import type { Logger } from '../../common/log.ts';
import type { HubPort } from '../ports.ts';
import { changedOf, digestFailure, endLiveFollow, liveFailure, liveReplicaDelta, sameDisksOrFail, sourceDigest, storeDigest, verifyLiveReplica, type DigestSides } from './migration.ts';
import { replicaServiceOf } from './service.ts';

export interface PauseEnd {
  /** The last delta (0 bytes when the store followed), and what the mirrors wrote. */
  last: { bytes: number; ms: number; from: ReplicaCheckpoint | null; mirroredBytes?: number; cut?: boolean; stoppedAtCut?: boolean };
  /** Checked already, in the pause. */
  verified?: { disks: number; readChunks?: number };
  /** Checked after the switchover (takeStoreCheck): the pause only named the changed chunks. */
  deferred?: boolean;
  /** In the pause, for the source's part (the changed chunks named, or its whole digest). */
  sourceMs?: number;
}

export interface StoreChecked {
  disks: number;
  readChunks?: number;
  /** From the pause's end to the comparison. */
  ms: number;
}

/** A check under way: the store's close runs already; `verify`, once the source's copy
 *  completed, takes both digests and compares them. */
export interface StoreCheck {
  closed: Promise<void>;
  verify(): Promise<StoreChecked>;
}

/** The checks under way, by migration: the switchover takes its own. */
const pending = new Map<string, StoreCheck>();

/** The check of migration `id`, taken (once). */
export function takeStoreCheck(id: string): StoreCheck | undefined {
  const p = pending.get(id);
  pending.delete(id);
  return p;
}

/** A migration ended: a check nobody took is dropped (its outcome was observed already). */
export function dropStoreCheck(id: string): void {
  pending.delete(id);
}

/** In the pause before the switchover. `overlap`: the destination is held, so the check may run
 *  while the final state crosses (kept for the switchover under `migrationId`). */
export async function endAtPause(hub: HubPort, clock: Clock, log: Logger, m: DigestSides & { migrationId: string; overlap: boolean }): Promise<PauseEnd> {
  const svc = replicaServiceOf(hub);
  const { replicaId } = m;
  const t0 = clock.now();
  // Both digests now, in the pause, from the checkpoint the last delta started from.
  const bothNow = async (last: PauseEnd['last']): Promise<PauseEnd> => ({ last, verified: await verifyLiveReplica(hub, log, { ...m, since: last.from }), sourceMs: clock.now() - t0 });
  if (!m.overlap || !svc?.isFollowed(replicaId)) return bothNow(await endLiveFollow(hub, clock, log, replicaId));
  const cur0 = svc.records.get(replicaId);
  if (!cur0) throw liveFailure(replicaId, { code: 'VMTC_REPLICA_NOT_FOUND', message: 'the replica is gone' }, 'switchover');
  const cur = (): typeof cur0 => svc.records.get(replicaId) ?? cur0;
  const from = cur0.checkpoint;
  const s = await svc.exclusive(replicaId, async () => svc.unfollowSource(cur()));
  if (s.mirrored.error || !s.transfer) {
    // A mirror that failed: the store misses writes; the last delta, from the checkpoint the
    // store still holds, then both digests, all before the switchover.
    await svc.exclusive(replicaId, () => svc.closeFollowedStore(cur(), s, { record: false }));
    log.warn({ replicaId, error: s.mirrored.error }, 'the store did not keep up with the disks: the last delta runs in the pause');
    const d = await liveReplicaDelta(hub, clock, log, replicaId, 'switchover');
    return bothNow({ ...d, ms: clock.now() - t0, mirroredBytes: s.mirrored.bytes });
  }
  const last = { bytes: 0, ms: clock.now() - t0, from, mirroredBytes: s.mirrored.bytes, ...(s.mirrored.cut ? { cut: true } : {}), ...(s.mirrored.stoppedAtCut ? { stoppedAtCut: true } : {}) };
  const t1 = clock.now();
  // The store closes once the relay's last writes are in and records the catch-up; its files
  // are the held destination's disks, which it takes then, off the resume's path.
  const closed = svc.exclusive(replicaId, async () => {
    const o = await svc.closeFollowedStore(cur(), s, { record: true, activateVmId: m.vmId });
    if (!o.recorded) throw liveFailure(replicaId, { code: 'VMTC_REPLICA_STATE', message: `the store did not record the followed state: ${o.error ?? 'not recorded'}` }, 'switchover');
  });
  // Observed here so that a check nobody takes (a cancel won the race) is no unhandled rejection.
  closed.catch((e: unknown) => log.info({ replicaId, err: String(e) }, 'the store check failed'));
  pending.set(m.migrationId, {
    closed,
    verify: async () => {
      // The source names the chunks written since `from` itself (its image file's bitmaps) and
      // digests them; the store reads the same chunks: asked at once, it waits for its own close
      // (no round trip of the controller's between).
      const src = await sourceDigest(hub, m, from).catch((e: unknown) => {
        throw digestFailure(replicaId, e);
      });
      const dstP = storeDigest(hub, m, from, changedOf(src)).catch((e: unknown) => {
        throw digestFailure(replicaId, e);
      });
      const [, dst] = await Promise.all([closed, dstP]);
      return { ...sameDisksOrFail(hub, log, replicaId, src, dst), ms: clock.now() - t1 };
    },
  });
  return { last, deferred: true, sourceMs: clock.now() - t0 };
}
