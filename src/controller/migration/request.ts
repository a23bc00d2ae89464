// What a migration request means for the agents and the timers, as pure functions: its
// deadline, and its tuning (sent with this migration only, never stored in the VM's spec, so no
// flag of one migration leaks into the next).
import type { MigrationParams, MigrationTuning, VmSpec } from '../../common/agent-protocol.ts';
import type { MigrationRequest } from '../store.ts';
import { defaultMultifd, TUNING_DEFAULTS, type TuningDefaults } from './tuning-default.ts';

/** When the migration must be done or rolled back (epoch ms): the request's deadline, else the
 *  default after its creation. */
export function deadlineAt(request: Pick<MigrationRequest, 'deadline'>, createdAt: number, defaultDeadlineMs: number): number {
  return request.deadline ? Date.parse(request.deadline) : createdAt + defaultDeadlineMs;
}

/** The lightpath's (and the token's) window in epoch seconds: from now to the migration's
 *  deadline, at least a minute. The token request and the admission's policy check ask the same. */
export function lightpathWindow(request: Pick<MigrationRequest, 'deadline'>, createdAt: number, nowMs: number, defaultDeadlineMs: number): { start: number; end: number } {
  const start = Math.floor(nowMs / 1000);
  return { start, end: Math.max(start + 60, Math.ceil(deadlineAt(request, createdAt, defaultDeadlineMs) / 1000)) };
}

/** The bandwidth the lightpath is reserved for (Mbit/s): the migration's, else 1000. */
export function lightpathMbps(request: Pick<MigrationRequest, 'bandwidthMbps'>): number {
  return request.bandwidthMbps ?? 1000;
}

const TUNING_KEYS = ['bandwidthMbps', 'maxDowntimeMs', 'autoConverge', 'multifd', 'multifdChannels', 'postcopy', 'suspend'] as const satisfies readonly (keyof MigrationTuning & keyof MigrationRequest)[];

/** The one tuning of a migration, from its request; a request that asks for multifd without a
 *  count gets the streams that fill its lightpath (tuning-default.ts), one without multifd one
 *  stream. `copyStorage`: the destination must make and export copies of the disks (see
 *  mustCopyStorage). */
export function migrationTuning(request: MigrationRequest, copyStorage = false, defaults: TuningDefaults = TUNING_DEFAULTS): MigrationTuning {
  const t: MigrationTuning = {};
  for (const k of TUNING_KEYS) if (request[k] !== undefined) (t as Record<string, unknown>)[k] = request[k];
  delete t.multifd;
  delete t.multifdChannels;
  Object.assign(t, defaultMultifd(request, lightpathMbps(request), defaults));
  if (copyStorage) t.copyStorage = true;
  return t;
}

/** The source's vm.migrate parameters: the same tuning (the source learns of copied storage
 *  from `storage`, where the destination exports its copies). */
export function sourceParams(migrationId: string, tuning: MigrationTuning, storage?: MigrationParams['storage']): MigrationParams {
  const { copyStorage: _, ...rest } = tuning;
  return { migrationId, ...rest, ...(storage ? { storage } : {}) };
}

/** Whether a live migration must copy the VM's writable disks: they are not on storage both
 *  hosts reach. A VM without writable disks (the lab's kernel + initramfs guests) copies none. */
export function mustCopyStorage(spec: Pick<VmSpec, 'disks'>, sourceShared: boolean | undefined, destinationShared: boolean | undefined): boolean {
  const writable = (spec.disks ?? []).some((d) => !d.readonly);
  return writable && !(sourceShared && destinationShared);
}
