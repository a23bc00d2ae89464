// An operator's control of a running migration at the source (the controller's force-complete
// and tune in flight; docs/qemu.md, "Force-complete and tuning"): `migrate-set-parameters`
// (max-bandwidth, downtime-limit) read back with `query-migrate-parameters`, and the two ways to
// end a copy that does not converge: `migrate-start-postcopy` (only with the postcopy-ram
// capability, set when the migration started) or `stop`, which pauses the guest so that nothing
// more is dirtied. QEMU still pauses before the switchover (pause-before-switchover) and waits
// for the controller. Both are refused once the switchover was continued
// (docs/design.md#switchover). A stopped source runs again if the migration then fails or is
// cancelled: source.ts resumes it as after any failure (ensureRunning).
import type { ForceCompleteMode, MigrationLimits } from '../../../src/common/agent-protocol.ts';
import { VmtcError } from '../../../src/common/errors.ts';
import { qemuError } from './errors.ts';
import type { QemuVms } from './lifecycle.ts';
import type { QmpLink, VmRecord } from './types.ts';

/** QEMU takes bytes per second; the controller speaks Mbit/s. */
export function bytesPerSecond(mbps: number): number {
  return Math.max(1, Math.round((mbps * 1e6) / 8));
}

/** The VM's migration `migrationId` while it may still change: refused (coded) otherwise. */
function runningMigration(vms: QemuVms, vmId: string, migrationId: string, operation: string): VmRecord {
  const rec = vms.get(vmId);
  if (!rec.migrating || rec.migrationId !== migrationId) throw qemuError('VMTC_QEMU_BAD_STATE', { vmId, migrationId, operation, reason: 'no such migration runs' });
  if (rec.switchover === 'continued') throw qemuError('VMTC_QEMU_BAD_STATE', { vmId, migrationId, operation, reason: 'past the switchover: the final state is on its way' });
  return rec;
}

/** The limits in effect, as QEMU reports them. */
export async function readLimits(qmp: QmpLink): Promise<MigrationLimits> {
  const q = await qmp.execute<{ 'max-bandwidth'?: number; 'downtime-limit'?: number }>('query-migrate-parameters');
  const out: MigrationLimits = {};
  if (typeof q['max-bandwidth'] === 'number') out.bandwidthMbps = (q['max-bandwidth'] * 8) / 1e6;
  if (typeof q['downtime-limit'] === 'number') out.maxDowntimeMs = q['downtime-limit'];
  return out;
}

export async function tuneMigration(vms: QemuVms, vmId: string, migrationId: string, limits: MigrationLimits): Promise<MigrationLimits> {
  const rec = runningMigration(vms, vmId, migrationId, 'tuneMigration');
  const qmp = vms.qmpOf(rec);
  const p: Record<string, number> = {};
  if (limits.bandwidthMbps !== undefined) p['max-bandwidth'] = bytesPerSecond(limits.bandwidthMbps);
  if (limits.maxDowntimeMs !== undefined) p['downtime-limit'] = Math.max(1, Math.round(limits.maxDowntimeMs));
  if (Object.keys(p).length) await qmp.execute('migrate-set-parameters', p);
  // The disks' mirrors run at the RAM's rate (storage.ts): they follow a new bandwidth.
  const speed = p['max-bandwidth'];
  if (speed !== undefined && rec.mirror) {
    for (const job of rec.mirror.jobs.keys()) {
      await qmp.execute('block-job-set-speed', { device: job, speed }).catch((e: unknown) => rec.log.warn({ job, err: String(e) }, 'block-job-set-speed refused'));
    }
  }
  const now = await readLimits(qmp);
  rec.log.info({ migrationId, asked: limits, now }, 'migration limits changed');
  rec.wake?.();
  return now;
}

export async function forceComplete(vms: QemuVms, vmId: string, migrationId: string, mode: ForceCompleteMode): Promise<void> {
  const rec = runningMigration(vms, vmId, migrationId, 'forceComplete');
  if (rec.forced === mode) return;
  if (rec.forced) throw qemuError('VMTC_QEMU_BAD_STATE', { vmId, migrationId, operation: 'forceComplete', mode, forced: rec.forced, reason: 'the migration was already forced to complete another way' });
  if (mode === 'postcopy' && !rec.postcopyAllowed) {
    throw qemuError('VMTC_QEMU_BAD_STATE', { vmId, migrationId, operation: 'forceComplete', mode, reason: 'post-copy was not enabled when the migration started (capability postcopy-ram)' });
  }
  rec.forced = mode;
  // Paused before the switchover already: the copy has converged and waits for the controller.
  if (rec.switchover === 'waiting') return;
  const qmp = vms.qmpOf(rec);
  try {
    if (mode === 'pause') {
      await qmp.execute('stop');
    } else if (!rec.postcopyRequested && (!rec.mirror || rec.mirror.ramStarted)) {
      // The memory copy runs: switch now. Before it (disks still mirroring) migrate() switches
      // as soon as it starts (source.ts, followMigration).
      rec.postcopyRequested = true;
      try {
        await qmp.execute('migrate-start-postcopy');
        rec.postcopyStarted = true;
      } catch (e) {
        rec.postcopyRequested = undefined;
        throw e;
      }
    }
  } catch (e) {
    rec.forced = undefined;
    if (e instanceof VmtcError && e.code === 'VMTC_QMP_COMMAND_FAILED') throw qemuError('VMTC_QEMU_BAD_STATE', { vmId, migrationId, operation: 'forceComplete', mode, reason: e.message }, { cause: e });
    throw e;
  }
  rec.log.info({ migrationId, mode }, 'migration forced to complete');
  rec.wake?.();
}
