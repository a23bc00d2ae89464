// A live move's disk check at the pause, with a followed replica (docs/disks.md#following,
// "Checked while the final state crosses"). In the pause before the switchover the source stops
// its mirrors (cut at the VM's stop already: agents/host/disks/qemu-follow.ts) and digests its
// disks; the controller then lets the final memory state go at once. The store's part runs while
// that state crosses the path: its export closes once the mirrors' last writes are in (a one-way
// trip of the path after the cut), the catch-up's checkpoint is recorded, the store digests the
// chunks the source named and the digests are compared. The destination was started held (it
// stays paused once the state landed: tuning.holdAfterLanding) and is resumed only after the
// check passed; a failed check rolls the move back, and the held copy, which never ran, is
// removed (src/controller/migration/reducer.ts heldDestinationNeverRan).
//
// Without a follow (or with a mirror that failed) everything happens in the pause, before the
// switchover, as before: the last delta, then both digests.
import type { ReplicaCheckpoint } from '../../common/agent-protocol.ts';
import type { Clock } from '../../common/clock.ts';
import type { Logger } from '../../common/log.ts';
import type { HubPort } from '../ports.ts';
import { changedOf, digestFailure, endLiveFollow, liveFailure, liveReplicaDelta, sameDisksOrFail, sourceDigest, storeDigest, verifyLiveReplica, type DigestSides } from './migration.ts';
import { replicaServiceOf } from './service.ts';

export interface PauseEnd {
  /** The last delta (0 bytes when the store followed), and what the mirrors wrote. */
  last: { bytes: number; ms: number; from: ReplicaCheckpoint | null; mirroredBytes?: number; cut?: boolean };
  /** Checked already, in the pause. */
  verified?: { disks: number; readChunks?: number };
  /** The store's part, under way: resolves once the digests were found equal, rejects with the
   *  move's failure otherwise. The switchover awaits it (takeStoreCheck). */
  store?: Promise<StoreChecked>;
  /** The source's digest, in the pause. */
  sourceDigestMs?: number;
}

export interface StoreChecked {
  disks: number;
  readChunks?: number;
  /** From the source's digest to the comparison. */
  ms: number;
}

/** The stores' checks under way, by migration: the switchover takes its own. */
const pending = new Map<string, Promise<StoreChecked>>();

/** The store check of migration `id`, taken (once). */
export function takeStoreCheck(id: string): Promise<StoreChecked> | undefined {
  const p = pending.get(id);
  pending.delete(id);
  return p;
}

/** A migration ended: a check nobody took is dropped (its outcome was observed already). */
export function dropStoreCheck(id: string): void {
  pending.delete(id);
}

/** In the pause before the switchover. `overlap`: the destination is held, so the store's part
 *  may run while the final state crosses (kept for the switchover under `migrationId`). */
export async function endAtPause(hub: HubPort, clock: Clock, log: Logger, m: DigestSides & { migrationId: string; overlap: boolean }): Promise<PauseEnd> {
  const svc = replicaServiceOf(hub);
  const { replicaId } = m;
  const inPause = async (): Promise<PauseEnd> => {
    const last = await endLiveFollow(hub, clock, log, replicaId);
    return { last, verified: await verifyLiveReplica(hub, log, { ...m, since: last.from }) };
  };
  if (!m.overlap || !svc?.isFollowed(replicaId)) return inPause();
  const t0 = clock.now();
  const s = await svc.exclusive(replicaId, async () => {
    const cur = svc.records.get(replicaId);
    if (!cur) throw liveFailure(replicaId, { code: 'VMTC_REPLICA_NOT_FOUND', message: 'the replica is gone' }, 'switchover');
    return { cur, from: cur.checkpoint, out: await svc.unfollowSource(cur) };
  });
  if (s.out.mirrored.error || !s.out.transfer) {
    // A mirror that failed: the store misses writes; the last delta, from the checkpoint the store
    // still holds, and the digests, all before the switchover.
    await svc.exclusive(replicaId, () => svc.closeFollowedStore(svc.records.get(replicaId) ?? s.cur, s.out, { record: false }));
    log.warn({ replicaId, error: s.out.mirrored.error }, 'the store did not keep up with the disks: the last delta runs in the pause');
    const d = await liveReplicaDelta(hub, clock, log, replicaId, 'switchover');
    const last = { ...d, ms: clock.now() - t0, mirroredBytes: s.out.mirrored.bytes };
    return { last, verified: await verifyLiveReplica(hub, log, { ...m, since: last.from }) };
  }
  const last = { bytes: 0, ms: clock.now() - t0, from: s.from, mirroredBytes: s.out.mirrored.bytes, ...(s.out.mirrored.cut ? { cut: true } : {}) };
  const t1 = clock.now();
  const src = await sourceDigest(hub, m, s.from).catch((e: unknown) => {
    // The store's export still waits to be closed, nothing recorded: the rollback gives the
    // replica back (its next delta, from the checkpoint the store holds, sends the rest).
    void svc.exclusive(replicaId, () => svc.closeFollowedStore(svc.records.get(replicaId) ?? s.cur, s.out, { record: false })).catch(() => undefined);
    throw digestFailure(replicaId, e);
  });
  const sourceDigestMs = clock.now() - t1;
  const store = svc.exclusive(replicaId, async (): Promise<StoreChecked> => {
    const o = await svc.closeFollowedStore(svc.records.get(replicaId) ?? s.cur, s.out, { record: true });
    if (!o.recorded) throw liveFailure(replicaId, { code: 'VMTC_REPLICA_STATE', message: `the store did not record the followed state: ${o.error ?? 'not recorded'}` }, 'switchover');
    const dst = await storeDigest(hub, m, s.from, changedOf(src)).catch((e: unknown) => {
      throw digestFailure(replicaId, e);
    });
    return { ...sameDisksOrFail(hub, log, replicaId, src, dst), ms: clock.now() - t1 };
  });
  // Observed here so that a check nobody awaits (a cancel won the race) is no unhandled rejection.
  store.catch((e: unknown) => log.info({ replicaId, err: String(e) }, 'the store check failed'));
  pending.set(m.migrationId, store);
  return { last, store, sourceDigestMs };
}
