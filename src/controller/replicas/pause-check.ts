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
  const cur0 = svc.records.get(replicaId);
  if (!cur0) throw liveFailure(replicaId, { code: 'VMTC_REPLICA_NOT_FOUND', message: 'the replica is gone' }, 'switchover');
  const from = cur0.checkpoint;
  // The source's digest does not wait for its mirrors to stop: the VM is paused, its disks no
  // longer change, and the digest reads the disks, not the mirrors.
  const srcP = sourceDigest(hub, m, from);
  srcP.catch(() => undefined);
  const s = await svc.exclusive(replicaId, async () => svc.unfollowSource(svc.records.get(replicaId) ?? cur0));
  const cur = (): typeof cur0 => svc.records.get(replicaId) ?? cur0;
  const source = async () => {
    const t = clock.now();
    const src = await srcP.catch((e: unknown) => {
      throw digestFailure(replicaId, e);
    });
    return { src, ms: clock.now() - t };
  };
  if (s.mirrored.error || !s.transfer) {
    // A mirror that failed: the store misses writes; the last delta, from the checkpoint the
    // store still holds, then the store's digest against the source's (the source did not
    // change since: it is paused), all before the switchover.
    await svc.exclusive(replicaId, () => svc.closeFollowedStore(cur(), s, { record: false }));
    log.warn({ replicaId, error: s.mirrored.error }, 'the store did not keep up with the disks: the last delta runs in the pause');
    const d = await liveReplicaDelta(hub, clock, log, replicaId, 'switchover');
    const last = { ...d, ms: clock.now() - t0, mirroredBytes: s.mirrored.bytes };
    const { src } = await source();
    const dst = await storeDigest(hub, m, d.from, changedOf(src)).catch((e: unknown) => {
      throw digestFailure(replicaId, e);
    });
    return { last, verified: sameDisksOrFail(hub, log, replicaId, src, dst) };
  }
  const last = { bytes: 0, ms: clock.now() - t0, from, mirroredBytes: s.mirrored.bytes, ...(s.mirrored.cut ? { cut: true } : {}) };
  const t1 = clock.now();
  const { src } = await source().catch((e: unknown) => {
    // The store's export still waits to be closed, nothing recorded: the rollback gives the
    // replica back (its next delta, from the checkpoint the store holds, sends the rest).
    void svc.exclusive(replicaId, () => svc.closeFollowedStore(cur(), s, { record: false })).catch(() => undefined);
    throw e;
  });
  const sourceDigestMs = clock.now() - t0;
  const store = svc.exclusive(replicaId, async (): Promise<StoreChecked> => {
    const o = await svc.closeFollowedStore(cur(), s, { record: true });
    if (!o.recorded) throw liveFailure(replicaId, { code: 'VMTC_REPLICA_STATE', message: `the store did not record the followed state: ${o.error ?? 'not recorded'}` }, 'switchover');
    const dst = await storeDigest(hub, m, from, changedOf(src)).catch((e: unknown) => {
      throw digestFailure(replicaId, e);
    });
    return { ...sameDisksOrFail(hub, log, replicaId, src, dst), ms: clock.now() - t1 };
  });
  // Observed here so that a check nobody awaits (a cancel won the race) is no unhandled rejection.
  store.catch((e: unknown) => log.info({ replicaId, err: String(e) }, 'the store check failed'));
  pending.set(m.migrationId, store);
  return { last, store, sourceDigestMs };
}
