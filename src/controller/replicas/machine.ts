// A replica's life cycle (docs/disks.md#replicas) as one transition table and one pure function
// (docs/contributing.md#state-machines): the state, and the record an event leaves behind, with
// no I/O and the time passed in. ReplicaService (service.ts) performs the steps and feeds their
// outcomes back as events.
//
//   seeding  --SEEDED-->        warm     (the destination's store holds the full copy)
//   seeding  --SEED_FAILED-->   failed   (with the code; the source dropped the checkpoint)
//   warm     --DELTA_SENT-->    warm     (the store holds the newer checkpoint)
//   warm     --DELTA_FAILED-->  warm     (lastError; the next interval retries from the same one)
//   any      --REMOVE-->        removing (the store is deleted, the checkpoints dropped)
//   removing --REMOVE_FAILED--> removing (retried every interval until both hosts answered)
//   warm     --VERIFY_FAILED--> failed  (a migration found its digests differ from the source's)
//   warm     --CONSUMED-->      removing (a cold move booted from the store: what is left goes
//                                         once that migration ended)
//   warm     --LENT-->          warm     (a live move boots its incoming VM from the store:
//                                         migrationId; no periodic step, the migration runs the
//                                         deltas)
//   warm     --RETURNED-->      warm     (that live move ended without committing: deltas go on)
//   removing --REMOVED-->       (the record is deleted)
import type { ReplicaCheckpoint, ReplicaTransfer } from '../../common/agent-protocol.ts';
import { err } from '../errors.ts';

export type ReplicaState = 'seeding' | 'warm' | 'failed' | 'removing';
export const REPLICA_STATES: readonly ReplicaState[] = ['seeding', 'warm', 'failed', 'removing'];

export interface ReplicaError { code: string; message: string; details?: Record<string, unknown> }

export interface ReplicaRow {
  id: string;
  vmId: string;
  sourceHostId: string;
  destinationHostId: string;
  intervalS: number;
  state: ReplicaState;
  /** What the destination's store holds (the base of the next delta). */
  checkpoint: ReplicaCheckpoint | null;
  diskBytes: number;
  seedBytes: number;
  lastDeltaBytes: number;
  deltas: number;
  /** Every byte of disk data sent for this replica. */
  bytesSent: number;
  /** Controller ms of the last seed or delta that the store recorded. */
  lastSyncAt: number | null;
  /** Bytes written at the source since `checkpoint`, as last asked. */
  lagBytes: number;
  /** The migration that uses the store (LENT: a live move) or used it (CONSUMED): the removal
   *  waits for it to end. */
  migrationId: string | null;
  /** Failed: why. Warm or removing: the last step that failed (cleared by the next success). */
  error: ReplicaError | null;
  createdAt: number;
  updatedAt: number;
}

export type ReplicaEvent =
  | { type: 'SEEDED'; transfer: ReplicaTransfer }
  | { type: 'SEED_FAILED'; error: ReplicaError }
  | { type: 'DELTA_SENT'; transfer: ReplicaTransfer }
  | { type: 'DELTA_FAILED'; error: ReplicaError }
  | { type: 'VERIFY_FAILED'; error: ReplicaError }
  | { type: 'CONSUMED'; migrationId: string }
  | { type: 'LENT'; migrationId: string }
  | { type: 'RETURNED' }
  | { type: 'REMOVE' }
  | { type: 'REMOVE_FAILED'; error: ReplicaError }
  | { type: 'REMOVED' };

const TABLE: Record<ReplicaState, Partial<Record<ReplicaEvent['type'], ReplicaState | null>>> = {
  seeding: { SEEDED: 'warm', SEED_FAILED: 'failed', REMOVE: 'removing' },
  warm: { DELTA_SENT: 'warm', DELTA_FAILED: 'warm', VERIFY_FAILED: 'failed', CONSUMED: 'removing', REMOVE: 'removing', LENT: 'warm', RETURNED: 'warm' },
  failed: { REMOVE: 'removing' },
  removing: { REMOVE: 'removing', REMOVE_FAILED: 'removing', REMOVED: null },
};

/** The record after `ev` at `now`, or null when the replica is gone (REMOVED). An event the
 *  state does not allow is VMTC_REPLICA_STATE naming the state. */
export function replicaNext(row: ReplicaRow, ev: ReplicaEvent, now: number): ReplicaRow | null {
  const to = TABLE[row.state][ev.type];
  if (to === undefined) throw err('VMTC_REPLICA_STATE', { replicaId: row.id, state: row.state, event: ev.type });
  if (to === null) return null;
  const next: ReplicaRow = { ...row, state: to, updatedAt: now };
  switch (ev.type) {
    case 'SEEDED':
      return { ...next, checkpoint: ev.transfer.checkpoint, diskBytes: ev.transfer.diskBytes, seedBytes: ev.transfer.bytes, bytesSent: row.bytesSent + ev.transfer.bytes, lastSyncAt: now, lagBytes: 0, error: null };
    case 'DELTA_SENT':
      return { ...next, checkpoint: ev.transfer.checkpoint, lastDeltaBytes: ev.transfer.bytes, deltas: row.deltas + 1, bytesSent: row.bytesSent + ev.transfer.bytes, lastSyncAt: now, lagBytes: 0, error: null };
    case 'CONSUMED':
    case 'LENT':
      return { ...next, migrationId: ev.migrationId };
    case 'RETURNED':
      return { ...next, migrationId: null };
    case 'SEED_FAILED':
    case 'VERIFY_FAILED':
    case 'DELTA_FAILED':
    case 'REMOVE_FAILED':
      return { ...next, error: ev.error };
    case 'REMOVE':
      return next;
  }
  return next;
}

/** What the service does next for a replica in `state`: the step of the protocol. */
export function replicaStep(state: ReplicaState): 'seed' | 'delta' | 'remove' | 'none' {
  return state === 'seeding' ? 'seed' : state === 'warm' ? 'delta' : state === 'removing' ? 'remove' : 'none';
}

/** Lag in seconds, from the last sync (or the creation while seeding). */
export function lagSeconds(row: ReplicaRow, now: number): number {
  return Math.max(0, Math.round((now - (row.lastSyncAt ?? row.createdAt)) / 1000));
}
