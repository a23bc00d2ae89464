// The source side of a live migration, following QEMU's own protocol (docs/devel/migration.rst):
// set capabilities and parameters, optionally mirror the disks first (storage.ts), run `migrate`,
// and poll `query-migrate` (woken early by MIGRATION events) until it completes, fails or is
// cancelled. QEMU pauses before its final state (`pause-before-switchover`, always on): the
// driver reports 'pre-switchover' and sends `migrate-continue` only when the controller says so
// (continueMigration; docs/design.md#switchover, docs/qemu.md). After completion the source is
// `postmigrate`: paused and still primary until the controller destroys it (docs/design.md#commit:
// the VM runs in exactly one place); on anything else it runs here again, unless the final state
// may have reached a destination that runs it (post-copy).
import type { MigrationParams, MigrationProgress, MigrationResult } from '../../../src/common/agent-protocol.ts';
import { clockSleep } from '../../../src/common/clock.ts';
import { VmtcError } from '../../../src/common/errors.ts';
import type { Logger } from '../../../src/common/log.ts';
import { bytesPerSecond } from './control.ts';
import { qemuError } from './errors.ts';
import type { QemuVms } from './lifecycle.ts';
import { abortMirrors, checkStorage, mirrorBytes, mirrorDisks, syncMirrors } from './storage.ts';
import { ACTIVE_MIGRATION, QEMU_DEFAULTS, type QueryMigrate, type VmRecord } from './types.ts';

const REPORTED = new Set(['setup', 'active', 'pre-switchover', 'postcopy-active', 'device', 'completed', 'failed', 'cancelled']);

export async function migrate(vms: QemuVms, vmId: string, uri: string, params: MigrationParams, onProgress: (p: MigrationProgress) => void): Promise<MigrationResult> {
  const rec = vms.get(vmId);
  if (rec.state !== 'running' || rec.migrating) throw qemuError('VMTC_QEMU_BAD_STATE', { vmId, state: rec.state, operation: 'migrate' });
  const storage = params.storage ? checkStorage(rec.spec, params.storage) : undefined;
  const { migrationId } = params;
  const log = rec.log.child({ migrationId });
  const qmp = vms.qmpOf(rec);
  rec.migrating = true;
  rec.migrationId = migrationId;
  rec.lastMigration = undefined;
  rec.switchover = undefined;
  rec.postcopyRequested = undefined;
  rec.postcopyStarted = undefined;
  rec.postcopyAllowed = !!params.postcopy;
  rec.forced = undefined;
  await vms.persist(rec);
  vms.setState(rec, 'migrating');
  const base = { migrationId, vmId };
  const fail = async (e: unknown, extra: Record<string, unknown> = {}): Promise<MigrationResult> => {
    const err = e instanceof VmtcError ? e : qemuError('VMTC_QEMU_MIGRATION_FAILED', { reason: String(e) }, { cause: e });
    log.warn({ err: err.toJSON(), ...extra }, 'migration failed');
    return { ...base, status: 'failed', error: err.toJSON() };
  };
  let result: MigrationResult;
  try {
    try {
      await qmp.execute('migrate-set-capabilities', {
        capabilities: [
          { capability: 'events', state: true },
          { capability: 'auto-converge', state: !!params.autoConverge },
          { capability: 'multifd', state: !!params.multifd },
          { capability: 'postcopy-ram', state: !!params.postcopy },
          // Every migration: QEMU pauses before its final state (or the switch to post-copy)
          // until migrate-continue, which the controller decides (docs/design.md#switchover);
          // with storage copy the mirrors take their last delta in that pause.
          { capability: 'pause-before-switchover', state: true },
        ],
      });
      const p: Record<string, unknown> = {};
      // QEMU takes bytes per second; the controller speaks Mbit/s.
      if (params.bandwidthMbps !== undefined) p['max-bandwidth'] = bytesPerSecond(params.bandwidthMbps);
      if (params.maxDowntimeMs !== undefined) p['downtime-limit'] = Math.max(1, Math.round(params.maxDowntimeMs));
      if (params.multifd && params.multifdChannels) p['multifd-channels'] = params.multifdChannels;
      if (Object.keys(p).length) await qmp.execute('migrate-set-parameters', p);
      if (params.suspend) {
        // Non-live: the VM is paused for the whole copy (suspend, copy, resume).
        await qmp.execute('stop');
      }
      if (storage) {
        const r = await mirrorDisks(vms, rec, params, storage, onProgress, log);
        if (r) {
          result = r;
          return result;
        }
        // No await between this check and sending `migrate`: a cancel from here on finds
        // ramStarted set and goes through migrate_cancel.
        if (rec.mirror!.cancel) {
          result = { ...base, status: 'cancelled' };
          return result;
        }
        rec.mirror!.ramStarted = true;
      }
      log.info({ uri, params }, 'migration starting');
      await qmp.execute('migrate', { uri });
    } catch (e) {
      result = await fail(e, { step: 'setup' });
      return result;
    }
    result = await followMigration(vms, rec, params, onProgress, log).catch((e: unknown) => fail(e, { step: 'follow' }));
    return result;
  } finally {
    const m = rec.mirror;
    if (m) {
      // On failure or cancel the mirrors are aborted (the source keeps its disks; the
      // destination's copies go with its VM). After completion they have already ended.
      await abortMirrors(vms, rec, log).catch((e: unknown) => log.error({ err: String(e) }, 'could not cancel the storage mirrors'));
      const bytes = mirrorBytes(m);
      // (mutated, not replaced: the value `return` already took is this object)
      if (result! && bytes > 0) result!.storageBytes = bytes;
      rec.mirror = undefined;
    }
    rec.migrating = false;
    rec.wake = undefined;
    rec.wakePending = false;
    // Past the switch to post-copy the destination runs the VM with part of its memory: the
    // source must not run too, whatever QEMU says now (docs/design.md#switchover).
    const destinationMayRun = result!.status !== 'completed' && rec.switchover === 'continued' && !!rec.postcopyRequested;
    if (destinationMayRun) {
      log.error({ status: result!.status }, 'post-copy migration ended without completing: the source stays paused (the destination may run the VM)');
      if (result!.error) result!.error.details = { ...(result!.error.details ?? {}), postcopy: true, sourcePaused: true };
    }
    // On anything else but completion the VM must run here (docs/design.md#commit: exactly one place).
    if (result!.status !== 'completed' && !destinationMayRun && rec.qmp && !rec.qmp.closed) {
      await vms.ensureRunning(rec).catch((e: unknown) => log.error({ err: String(e) }, 'could not resume the source after a failed migration'));
    }
    rec.switchover = undefined;
    rec.postcopyRequested = undefined;
    rec.postcopyStarted = undefined;
    rec.postcopyAllowed = undefined;
    rec.forced = undefined;
    rec.lastMigration = result!;
    await vms.refresh(rec).catch(() => undefined);
  }
}

/** Poll query-migrate until the migration ends; handles the pause before the switchover (the
 *  mirrors' last delta, then the controller's decision) and the switch to post-copy. */
async function followMigration(vms: QemuVms, rec: VmRecord, params: MigrationParams, onProgress: (p: MigrationProgress) => void, log: Logger): Promise<MigrationResult> {
  const { migrationId } = params;
  const base = { migrationId, vmId: rec.spec.vmId };
  const qmp = vms.qmpOf(rec);
  for (;;) {
    let q: QueryMigrate;
    try {
      q = await qmp.execute<QueryMigrate>('query-migrate');
    } catch (e) {
      // The source QEMU went away: nothing ran at the destination yet (pre-copy), and the
      // VM is lost here; report it as crashed rather than pretending it runs.
      const err = qemuError('VMTC_QEMU_VM_CRASHED', { vmId: rec.spec.vmId, operation: 'migrate' }, { cause: e });
      return { ...base, status: 'failed', error: err.toJSON() };
    }
    const status = q.status ?? 'none';
    const ram = q.ram;
    const progress: MigrationProgress = {
      ...base,
      status: (REPORTED.has(status) ? status : 'active') as MigrationProgress['status'],
      totalBytes: ram?.total ?? 0,
      transferredBytes: ram?.transferred ?? 0,
      remainingBytes: ram?.remaining ?? 0,
      phase: 'ram',
    };
    if (ram?.['dirty-pages-rate'] !== undefined) progress.dirtyPagesRate = ram['dirty-pages-rate'];
    if (ram?.['dirty-sync-count'] !== undefined) progress.pass = ram['dirty-sync-count'];
    if (q['expected-downtime'] !== undefined) progress.expectedDowntimeMs = q['expected-downtime'];
    if (ram?.mbps !== undefined) progress.throughputMbps = ram.mbps;
    if (q['cpu-throttle-percentage'] !== undefined) progress.cpuThrottlePercent = q['cpu-throttle-percentage'];
    // 'pre-switchover' is reported only once the source is ready for the decision (below).
    if ((ACTIVE_MIGRATION.has(status) && (status !== 'pre-switchover' || rec.switchover !== undefined)) || status === 'completed') {
      rec.lastMigration = progress;
      try {
        onProgress(progress);
      } catch (e) {
        log.warn({ err: String(e) }, 'progress listener threw');
      }
    }
    if (status === 'completed') {
      // QEMU announces `completed` (event and status) a moment before it fills in the
      // timings; ask again briefly so the downtime figure is not a premature zero. Briefly:
      // the controller waits for this answer (a held destination runs only after it), and
      // QEMU has been seen to take 200 ms and more; then the events give the figure (below).
      for (let i = 0; i < 3 && !q['total-time']; i++) {
        await clockSleep(vms.clock, 10);
        q = await qmp.execute<QueryMigrate>('query-migrate').catch(() => q);
      }
      // It also sets `completed` before it moves the source from `finish-migrate` to
      // `postmigrate` (migration_iteration_finish, under its own lock): wait for that, so a
      // completed result always finds the source paused in postmigrate, never "migrating".
      for (let i = 0; i < 200; i++) {
        const st = await qmp.execute<{ status: string }>('query-status').catch(() => undefined);
        if (!st || st.status !== 'finish-migrate') break;
        await clockSleep(vms.clock, 10);
      }
      const r: MigrationResult = { ...base, status: 'completed', transferredBytes: ram?.transferred ?? 0 };
      if (q.downtime !== undefined) r.downtimeMs = q.downtime;
      // Without QEMU's figure yet: from its own events' timestamps, STOP to MIGRATION completed
      // (what QEMU measures: the stop to the end of the copy).
      else if (rec.pausedAt !== undefined && rec.migrationCompletedAt !== undefined && rec.migrationCompletedAt >= rec.pausedAt) r.downtimeMs = Math.round(rec.migrationCompletedAt - rec.pausedAt);
      if (rec.postcopyStarted) {
        r.postcopy = true;
        if (ram?.['postcopy-requests'] !== undefined) r.postcopyRequests = ram['postcopy-requests'];
      }
      if (q['total-time'] !== undefined) r.totalTimeMs = q['total-time'];
      if (q['setup-time'] !== undefined) r.setupTimeMs = q['setup-time'];
      if (rec.pausedAt !== undefined) r.pausedAt = rec.pausedAt;
      log.info({ downtimeMs: r.downtimeMs, totalTimeMs: r.totalTimeMs, bytes: r.transferredBytes }, 'migration completed; source stays paused and primary until commit');
      return r;
    }
    if (status === 'failed' || status === 'none') {
      const err = qemuError('VMTC_QEMU_MIGRATION_FAILED', { vmId: rec.spec.vmId, status, desc: q['error-desc'] ?? '' });
      log.warn({ err: err.toJSON() }, 'migration failed');
      return { ...base, status: 'failed', error: err.toJSON(), transferredBytes: ram?.transferred ?? 0 };
    }
    if (status === 'cancelled' && rec.mirror?.syncError) {
      const err = qemuError('VMTC_QEMU_MIGRATION_FAILED', { vmId: rec.spec.vmId, phase: 'storage', ...rec.mirror.syncError });
      log.warn({ err: err.toJSON() }, 'migration failed: the storage mirrors could not take their last delta');
      return { ...base, status: 'failed', error: err.toJSON(), transferredBytes: ram?.transferred ?? 0 };
    }
    if (status === 'cancelled') {
      log.info('migration cancelled');
      return { ...base, status: 'cancelled', transferredBytes: ram?.transferred ?? 0 };
    }
    // QEMU paused the source before its final state (pause-before-switchover; before the
    // switch to post-copy too). With storage copy the mirrors take their last delta first; if
    // they cannot, the migration is cancelled and the source resumes. Then the controller is
    // told ('pre-switchover') and decides: continueMigration() sends migrate-continue, a cancel
    // ends the migration without the final state ever leaving (docs/design.md#switchover).
    if (status === 'pre-switchover' && rec.switchover === undefined && !rec.mirror?.syncError) {
      const m = rec.mirror;
      if (m) {
        const err = await syncMirrors(vms, rec, log);
        if (err) {
          m.syncError = err;
          await qmp.execute('migrate_cancel').catch((e: unknown) => log.warn({ err: String(e) }, 'migrate_cancel refused'));
          continue;
        }
      }
      // A cancel that came during the sync has already moved QEMU on: the next poll says so.
      rec.switchover = 'waiting';
      log.info('paused before the switchover; waiting for the controller');
      continue;
    }
    // Post-copy as an option: switch once the first full pass has gone (the remaining
    // pages are then fetched on demand by the destination), or as soon as an operator forced
    // it before the memory copy started (control.ts). From here a failure loses the VM at both
    // ends, which is why it is off unless asked for.
    const passed = (ram?.['dirty-sync-count'] ?? 0) >= (vms.opts.postcopyAfterPass ?? QEMU_DEFAULTS.postcopyAfterPass);
    if (params.postcopy && !rec.postcopyRequested && status === 'active' && (passed || rec.forced === 'postcopy')) {
      rec.postcopyRequested = true;
      log.info({ forced: rec.forced === 'postcopy' }, 'switching to post-copy');
      await qmp.execute('migrate-start-postcopy').then(
        () => { rec.postcopyStarted = true; },
        (e: unknown) => log.warn({ err: String(e) }, 'migrate-start-postcopy refused'),
      );
    }
    await vms.pollWait(rec);
  }
}

/** The controller's decision at the point of no return: let a source paused in pre-switchover
 *  send its final state. Idempotent once continued. */
export async function continueMigration(vms: QemuVms, vmId: string, migrationId: string): Promise<void> {
  const rec = vms.get(vmId);
  if (!rec.migrating || rec.migrationId !== migrationId) throw qemuError('VMTC_QEMU_BAD_STATE', { vmId, migrationId, operation: 'continueMigration', reason: 'no such migration runs' });
  if (rec.switchover === 'continued') return;
  if (rec.switchover !== 'waiting') throw qemuError('VMTC_QEMU_BAD_STATE', { vmId, migrationId, operation: 'continueMigration', reason: 'the migration has not reached the switchover point' });
  // Set before QEMU is asked, so that a cancel from here on is refused.
  rec.switchover = 'continued';
  try {
    await vms.qmpOf(rec).execute('migrate-continue', { state: 'pre-switchover' });
  } catch (e) {
    // QEMU refused: it is no longer paused there (a cancel or a failure moved it on).
    if (e instanceof VmtcError && e.code === 'VMTC_QMP_COMMAND_FAILED') rec.switchover = 'waiting';
    throw e;
  }
  rec.log.info({ migrationId }, 'switchover: the final state is on its way');
  rec.wake?.();
}

export async function cancelMigration(vms: QemuVms, vmId: string): Promise<void> {
  const rec = vms.get(vmId);
  const qmp = vms.qmpOf(rec);
  if (rec.migrating && rec.switchover === 'continued') {
    throw qemuError('VMTC_QEMU_CANCEL_TOO_LATE', { vmId, reason: 'past the switchover: the final state is on its way' });
  }
  const m = rec.mirror;
  if (m && !m.ramStarted) {
    // Still mirroring disks (no RAM migration yet): migrate() ends the jobs and keeps the
    // source running; wait until it has.
    m.cancel = true;
    rec.wake?.();
    const deadline = vms.clock.now() + QEMU_DEFAULTS.mirrorCancelMs;
    while (rec.migrating && vms.clock.now() < deadline) await vms.waitStateChange(rec, 50);
    if (rec.migrating) throw qemuError('VMTC_QMP_TIMEOUT', { vmId, command: 'block-job-cancel' });
    rec.log.info('migration cancelled during the storage mirror; source running');
    return;
  }
  let q = await qmp.execute<QueryMigrate>('query-migrate');
  if (q.status === 'completed') throw qemuError('VMTC_QEMU_CANCEL_TOO_LATE', { vmId });
  if (q.status && ACTIVE_MIGRATION.has(q.status)) {
    await qmp.execute('migrate_cancel');
    const deadline = vms.clock.now() + QEMU_DEFAULTS.migrateCancelMs;
    for (;;) {
      q = await qmp.execute<QueryMigrate>('query-migrate');
      if (!q.status || !ACTIVE_MIGRATION.has(q.status)) break;
      if (vms.clock.now() > deadline) throw qemuError('VMTC_QMP_TIMEOUT', { vmId, command: 'migrate_cancel', status: q.status });
      await clockSleep(vms.clock, 50);
    }
    if (q.status === 'completed') throw qemuError('VMTC_QEMU_CANCEL_TOO_LATE', { vmId });
  }
  await vms.ensureRunning(rec);
  rec.log.info({ status: q.status }, 'migration cancelled; source running');
}
