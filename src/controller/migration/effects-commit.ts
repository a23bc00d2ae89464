// After the commit point (the destination runs, or the cold copy was verified): move the
// clients' tunnel, remove the source, release everything, and end. From here on failures are
// warnings, never a rollback: the VM must not end up nowhere.
import { toVmtcError, type ErrorBody } from '../../common/errors.ts';
import { closeAccounting, releaseLightpath } from './effects-rollback.ts';
import { NOT_FOUND, askAgent, currentCtx, refreshInventories, saveCtx, site, type EffectFn } from './context.ts';
import type { TunnelDowntime } from '../../common/tunnel-protocol.ts';
import type { MigrationDowntime } from './record.ts';
import { endReplicasAfterCommit, returnLiveReplica, vmHasReplicas } from '../replicas/migration.ts';
import { dropStoreCheck } from '../replicas/pause-check.ts';

const activate: EffectFn = async (cx, row) => {
  let warnings = row.ctx.warnings ?? [];
  if (row.ctx.path === 'cold' && row.ctx.cold?.priorState && row.ctx.cold.priorState !== 'running') {
    // A cold move keeps the VM's power state: booted only to be verified, then off again.
    try {
      await cx.hub.request(row.destinationHostId, 'vm.stop', { vmId: row.vmId });
    } catch (e) {
      warnings = saveCtx(cx, row.id, { warnings: [...warnings, toVmtcError(e).toJSON()] }).warnings ?? [];
    }
  }
  if (cx.tunnel && row.ctx.tunnel?.bicast) {
    try {
      const d = await cx.tunnel.prune(row.vmId, site(cx, row.destinationHostId), site(cx, row.sourceHostId));
      const downtime = d ? tunnelDowntime(d, row.ctx.result?.downtimeMs) : undefined;
      // On the event stream with the transition (its detail), and in the record.
      return { event: { type: 'ACTIVATED' }, ctxPatch: { tunnel: { bicast: true, pruned: true }, ...(downtime ? { downtime } : {}) }, ...(downtime ? { detail: { downtime } } : {}) };
    } catch (e) {
      return { event: { type: 'ACTIVATED' }, ctxPatch: { warnings: [...warnings, toVmtcError(e).toJSON()] } };
    }
  }
  return { event: { type: 'ACTIVATED' } };
};

/** The record's downtime from what a tunnel agent returned with the prune. */
export function tunnelDowntime(d: TunnelDowntime & { agent?: string }, hypervisor: number | undefined): MigrationDowntime {
  return {
    ...(hypervisor !== undefined ? { hypervisor } : {}),
    tunnelPassive: d.tunnelPassive,
    ...(d.tunnelProbe ? { tunnelProbe: d.tunnelProbe } : {}),
    tunnel: { agent: d.agent ?? '', from: d.from, to: d.to, ...(d.error ? { error: d.error } : {}) },
  };
}

const cleanupSource: EffectFn = async (cx, row) => {
  const warnings = [...(row.ctx.warnings ?? [])];
  try {
    // A source agent restarting now is waited for (bounded): otherwise its stale copy, paused,
    // would outlive the migration (docs/design.md#commit).
    // dropCheckpoints: the replicas' checkpoints go from the disks the VM leaves (docs/disks.md#replicas).
    // Asked only of a VM with replicas: a VM without has none to drop, and its disks may be
    // shared storage the destination now holds (which the agent would refuse to touch, noisily).
    const drop = vmHasReplicas(cx.hub, row.vmId);
    // leftForGood: a VM that ran from a consumed replica store there (an earlier live move with
    // the replica) leaves those images behind for nobody: the agent deletes them.
    const out = await askAgent(cx, row.sourceHostId, () => cx.hub.request(row.sourceHostId, 'vm.destroy', { vmId: row.vmId, leftForGood: true, ...(drop ? { dropCheckpoints: true } : {}) }));
    const cp = out?.checkpoints;
    if (cp && 'error' in cp) {
      // The move is committed: a warning (the agent's error, naming what it was doing), no rollback.
      cx.log.warn({ code: cp.error.code, hostId: row.sourceHostId }, 'replica checkpoints left on the source\'s disks');
      warnings.push({ code: cp.error.code, message: cp.error.message, details: { ...(cp.error.details as Record<string, unknown> | undefined), step: 'dropping the replica checkpoints left on the source\'s disks', hostId: row.sourceHostId } });
    }
  } catch (e) {
    if (!NOT_FOUND.test(toVmtcError(e).code)) warnings.push(toVmtcError(e).toJSON());
  }
  const lightpath = await releaseLightpath(cx, row, warnings);
  const token = await closeAccounting(cx, row, warnings, 'cleanup');
  cx.store.releaseHold(row.id);
  // The VM left the disks its replicas were taken of: they go (docs/disks.md#replicas).
  const replicasRemoved = endReplicasAfterCommit(cx.hub, cx.log, row.vmId, row.id);
  await refreshInventories(cx, row);
  return { event: { type: 'CLEANED_UP' }, ...(replicasRemoved.length ? { detail: { replicasRemoved } } : {}), ctxPatch: { warnings, ...(lightpath ? { lightpath } : {}), ...(token ? { token } : {}) } };
};

/** A terminal state: free the capacity, forget the secrets, stop the timers. The states before it
 *  (cleanup, rolling_back) closed the grant's accounting; if that failed it is tried once more
 *  here, and the record says how it ended (docs/design.md#accounting). */
const finish: EffectFn = async (cx, row) => {
  const warnings: ErrorBody[] = [];
  const token = await closeAccounting(cx, row, warnings, 'finish');
  if (token || warnings.length) saveCtx(cx, row.id, { ...(token ? { token } : {}), ...(warnings.length ? { warnings: [...(currentCtx(cx, row.id).warnings ?? []), ...warnings] } : {}) });
  cx.store.releaseHold(row.id);
  // A store check nobody took (a cancel won the race with the switchover) goes; a replica lent
  // to a live move that did not commit goes back to its deltas.
  dropStoreCheck(row.id);
  if (row.state !== 'completed') returnLiveReplica(cx.hub, row.vmId, row.id);
  cx.secrets.delete(row.id);
  cx.exports.delete(row.id);
  cx.finished(row.id, row.state);
};

export const COMMIT_EFFECTS = { activate, cleanupSource, finish };
