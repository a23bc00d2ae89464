// What a QMP event means for a VM's record: QEMU's asynchronous events (qmp-spec §2.5) arrive
// between replies at any time; this applies one to the record and says what the driver must do
// next. Pure apart from the record, so the mapping is tested directly.
import type { QmpEvent } from './qmp.ts';
import type { VmRecord } from './types.ts';

export interface EventFollowUp {
  /** A storage-copy destination's incoming migration completed: close NBD, start the guest. */
  landed: boolean;
  /** A held destination's incoming migration completed: activate its disks now, so that the
   *  `cont` that starts it later does not (QEMU 10 leaves them inactive under -S). */
  heldLanded?: boolean;
  /** Wake a poll loop waiting on this VM (migrate(), the storage mirror). */
  wake: boolean;
  /** Ask QEMU for the run state again. */
  refresh: boolean;
  /** The VM stopped while it migrates out (STOP with migrate() running). */
  stoppedMigrating?: boolean;
  /** The VM runs again (RESUME). */
  resumed?: boolean;
}

/** Apply `ev` to `rec`; `now` stands in for an event without QEMU's own timestamp. */
export function applyEvent(rec: VmRecord, ev: QmpEvent, now: number): EventFollowUp {
  const then: EventFollowUp = { landed: false, wake: false, refresh: false };
  switch (ev.event) {
    case 'MIGRATION':
      then.landed = !!rec.incomingStorage && ev.data?.status === 'completed';
      then.heldLanded = !!rec.held && ev.data?.status === 'completed';
      // Once: the VM may migrate out later, and its own completion then is a source's.
      if (then.heldLanded) rec.held = false;
      if (ev.data?.status === 'completed') rec.migrationCompletedAt = ev.timestamp ? ev.timestamp.seconds * 1000 + ev.timestamp.microseconds / 1000 : now;
      then.wake = true;
      then.refresh = true;
      break;
    case 'MIGRATION_PASS':
      then.wake = true;
      then.refresh = true;
      break;
    case 'BLOCK_JOB_COMPLETED':
    case 'BLOCK_JOB_CANCELLED': {
      const job = String(ev.data?.device ?? '');
      // Every job that ended, until one of the same name is ready again (a follow's cut asks
      // whether its mirror had already failed: qemu-follow.ts cutFollows).
      rec.endedJobs ??= new Set();
      rec.endedJobs.add(job);
      if (rec.endedJobs.size > 64) rec.endedJobs.delete(rec.endedJobs.values().next().value!);
      const m = rec.mirror;
      if (m?.jobs.has(job)) {
        const end: { event: string; error?: string; offset?: number } = { event: ev.event };
        if (typeof ev.data?.error === 'string') end.error = ev.data.error;
        if (typeof ev.data?.offset === 'number') end.offset = ev.data.offset;
        m.ends.set(job, end);
      }
      then.wake = true;
      break;
    }
    case 'BLOCK_JOB_READY':
      rec.endedJobs?.delete(String(ev.data?.device ?? ''));
      then.wake = true;
      break;
    case 'BLOCK_JOB_ERROR':
      then.wake = true;
      break;
    case 'STOP':
    case 'RESUME': {
      const at = ev.timestamp ? ev.timestamp.seconds * 1000 + ev.timestamp.microseconds / 1000 : now;
      if (ev.event === 'STOP') rec.pausedAt = at;
      else rec.resumedAt = at;
      // The source of a migration stopped (its final stop, or an operator's forced pause): the
      // disks' follows are cut at once, before QEMU's drain waits on them (qemu-follow.ts).
      then.stoppedMigrating = ev.event === 'STOP' && rec.migrating;
      then.resumed = ev.event === 'RESUME';
      then.refresh = true;
      break;
    }
    case 'SHUTDOWN':
      // QEMU exits after this (no -no-shutdown); the socket close finishes the job.
      rec.quitting = true;
      break;
    default:
      break;
  }
  return then;
}
