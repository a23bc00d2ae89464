// A source agent that answers vm.migrationStatus with nothing about a migration it was running
// (null, or another migration's record: an agent that restarted without its journal, or one that
// never got the request) will never report its end. Waiting would hold the destination's
// capacity and the lightpath until the deadline, so the controller treats the answer as a fact
// and decides from what the destination reports (docs/design.md#restart): never a second stream,
// never the destruction of a destination that may run the VM.
import type { MigrationResult, VmState } from '../../common/agent-protocol.ts';
import { toVmtcError, type VmtcError } from '../../common/errors.ts';
import type { MigrationRow } from '../store.ts';
import { err } from '../errors.ts';
import { NOT_FOUND, type EffectContext } from './context.ts';

/** Pure: the destination's VM state (undefined: it has no such VM) decides. A destination that
 *  waits (incoming) or has nothing cannot run the VM, so the rollback may remove it and resume
 *  the source; any other state may be the VM running (or landed, paused) there, so the commit
 *  path takes over and waits for it to run. */
export function decideSourceLost(destination: VmState | undefined): 'commit' | 'rollback' {
  return destination === undefined || destination === 'incoming' || destination === 'stopped' || destination === 'crashed' ? 'rollback' : 'commit';
}

/** Ask the destination. Resolves with the migration's end to act on (a completed result, or the
 *  coded error to roll back with), or undefined when the destination cannot be asked now (the
 *  caller asks again at its next poll). */
export async function settleSourceLost(cx: EffectContext, row: MigrationRow, sourceSaid: { migrationId?: string } | null): Promise<MigrationResult | VmtcError | undefined> {
  let state: VmState | undefined;
  try {
    state = (await cx.hub.request(row.destinationHostId, 'vm.describe', { vmId: row.vmId })).state;
  } catch (e) {
    const ve = toVmtcError(e);
    if (!NOT_FOUND.test(ve.code)) {
      cx.log.warn({ code: ve.code }, 'the source does not know the migration and the destination cannot be asked yet');
      return undefined;
    }
  }
  const decision = decideSourceLost(state);
  const facts = { sourceHostId: row.sourceHostId, sourceReports: sourceSaid?.migrationId ?? null, destinationHostId: row.destinationHostId, destinationState: state ?? 'not found' };
  cx.log.warn({ ...facts, decision }, 'the source does not know the migration; deciding from the destination');
  if (decision === 'commit') return { migrationId: row.id, vmId: row.vmId, status: 'completed' };
  return err('VMTC_MIGRATION_LOST', facts);
}
