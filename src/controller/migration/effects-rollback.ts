// Undo everything (docs/design.md#rollback: circuits released, source resumed, destination cleaned,
// capacity freed). Each step is idempotent so a restarted controller can run it again. The
// effect only finds things out and does the steps; how the rollback ends is the machine's
// decision (decideRollbackOutcome in reducer.ts).
import { toVmtcError, type ErrorBody } from '../../common/errors.ts';
import type { VmInfo } from '../../common/agent-protocol.ts';
import { clockSleep } from '../../common/clock.ts';
import type { MigrationCtx, MigrationRow } from '../store.ts';
import { decideRollbackOutcome, finalStateMayHaveLeft, heldDestinationNeverRan, sourceMayBeRestored, type RollbackFacts, type SourceReport } from './reducer.ts';
import { NOT_FOUND, askAgent, currentCtx, refreshInventories, site, whenConnected, type EffectContext, type EffectFn } from './context.ts';

/** How long the rollback waits for the source's migration to end after cancelling it, before it
 *  counts it as still running (and the destination as possibly holding the VM). */
const SOURCE_SETTLE_MS = 10_000;
/** How long the rollback waits for a destination agent that is not connected (restarting) to
 *  remove its copy. */
const DESTINATION_WAIT_MS = 15_000;

const rollback: EffectFn = async (cx, row) => {
  const { hub, log } = cx;
  const ctx = currentCtx(cx, row.id);
  const problems: ErrorBody[] = [];
  const soft = async (what: string, fn: () => Promise<unknown>) => {
    try {
      await fn();
    } catch (e) {
      const ve = toVmtcError(e);
      if (!NOT_FOUND.test(ve.code)) {
        log.warn({ step: what, code: ve.code }, 'rollback step failed');
        problems.push({ ...ve.toJSON(), details: { ...(ve.details ?? {}), step: what } });
      }
    }
  };
  const settle = async (facts: RollbackFacts) => {
    // Whatever the outcome, the lightpath and the grant's accounting are released: nobody needs
    // them to investigate (docs/design.md#rollback).
    const lightpath = await releaseLightpath(cx, row, problems);
    const token = await closeAccounting(cx, row, problems, 'rollback');
    facts = { ...facts, ...(lightpath ? { lightpath } : {}), ...(token ? { token } : {}) };
    const out = decideRollbackOutcome(facts, { mode: row.mode, ctx });
    if (out.releaseHold) cx.store.releaseHold(row.id);
    // The export was withdrawn (or never made): a cold attempt after this one starts afresh.
    cx.exports.delete(row.id);
    await refreshInventories(cx, row);
    return { event: out.event, ...(out.detail !== undefined ? { detail: out.detail } : {}), ...(out.ctxPatch ? { ctxPatch: out.ctxPatch } : {}) };
  };

  // The source holds the primary copy: an agent restarting there is waited for (bounded), so
  // that the rollback can ask it and confirm it runs rather than end failed for want of an
  // answer (docs/design.md#restart).
  if (!hub.isConnected(row.sourceHostId)) {
    log.warn({ hostId: row.sourceHostId }, 'rollback: waiting for the source agent to come back');
    await whenConnected(cx, row.sourceHostId, cx.options.agentLostMs ?? 60_000);
  }
  if (ctx.migrationStarted) {
    const cancel = () => hub.request(row.sourceHostId, 'vm.cancelMigration', { vmId: row.vmId });
    // Past the switchover grant the source refuses once its final state is on its way; what it
    // then says of the migration is established below, so the refusal is no problem.
    if (ctx.switchover) await cancel().catch((e: unknown) => log.info({ code: toVmtcError(e).code }, 'source did not cancel a migration past the switchover'));
    else await soft('cancel-migration', cancel);
  }
  // Before the destination is touched: may the source have sent its final state? Then the
  // destination may hold (or run) the VM, and destroying it could lose the only up-to-date
  // copy while the stale source is resumed (docs/design.md#switchover).
  let mayHaveLeft = ctx.migrationStarted ? finalStateMayHaveLeft(ctx, await askSource(cx, row, ctx)) : false;
  // A held destination that never ran (a move with a replica whose store check failed after the
  // final state left) is asked, and then removed like any other.
  if (mayHaveLeft && ctx.incoming?.held && !ctx.incoming.resumeAsked) {
    const d = await hub.request(row.destinationHostId, 'vm.describe', { vmId: row.vmId }).catch(() => undefined);
    if (heldDestinationNeverRan(ctx, d?.state)) {
      log.info({ destinationState: d?.state }, 'rollback: the held destination never ran: it is removed and the source resumed');
      mayHaveLeft = false;
    }
  }
  // The destination copy goes first, so that the VM never runs in two places (a cold copy may
  // already have booted there).
  let destinationGone = true;
  if (mayHaveLeft) destinationGone = false;
  else if (ctx.incoming || ctx.cold?.importRequested) {
    destinationGone = false;
    await soft('destroy-destination', async () => {
      try {
        // A destination agent restarting now is waited for, briefly, so that its copy (an
        // incoming VM holding memory there) does not outlive the migration; one that stays away
        // longer is left as a warning (its copy cannot run: the final state never left).
        await askAgent(cx, row.destinationHostId, () => hub.request(row.destinationHostId, 'vm.destroy', { vmId: row.vmId }), Math.min(cx.options.agentLostMs ?? 60_000, DESTINATION_WAIT_MS));
      } catch (e) {
        if (!NOT_FOUND.test(toVmtcError(e).code)) throw e;
      }
      destinationGone = true;
    });
  }
  // A booted cold copy may run; a live copy only if the final state may have left (above).
  const facts: RollbackFacts = { destinationGone, destinationMayRun: mayHaveLeft || (!destinationGone && !!ctx.cold?.importRequested), problems };
  if (!sourceMayBeRestored(facts)) return settle(facts);

  // The source copy is the primary until commit: make sure it is as it was.
  let source: VmInfo | undefined;
  if (ctx.cold?.exportRequested) {
    // Withdraws the disk URLs and powers the VM back on if the export powered it off.
    await soft('cold-abort-source', async () => { source = await hub.request(row.sourceHostId, 'vm.coldAbort', { vmId: row.vmId, migrationId: row.id }, 120_000); });
    // An agent restarted since the export has forgotten it powered the VM off: power it on.
    const s0 = source as VmInfo | undefined;
    if (s0 && s0.state === 'stopped' && (ctx.sourceState ?? 'running') === 'running') {
      await soft('cold-restart-source', async () => { source = await hub.request(row.sourceHostId, 'vm.start', { spec: s0.spec }, 120_000); });
    }
  }
  if (!source) {
    await soft('resume-source', async () => {
      source = await hub.request(row.sourceHostId, 'vm.describe', { vmId: row.vmId });
      if (source.state === 'paused' || source.state === 'postmigrate') source = await hub.request(row.sourceHostId, 'vm.resume', { vmId: row.vmId });
    });
  }
  if (cx.tunnel && ctx.tunnel?.bicast && !ctx.tunnel.pruned) {
    const tunnel = cx.tunnel;
    await soft('tunnel-prune', () => tunnel.prune(row.vmId, site(cx, row.sourceHostId), site(cx, row.destinationHostId)));
  }
  const src = source as VmInfo | undefined;
  return settle({ ...facts, ...(src ? { sourceState: src.state } : {}) });
};

/** Ask the source how this migration ended, waiting a little for the cancel to take effect, and
 *  the state of its VM. Facts only; finalStateMayHaveLeft decides. Before the switchover grant a
 *  migration still running is cancelled again: the source may have started it only after the
 *  first cancel (a vm.migrate still in flight when the rollback began). */
async function askSource(cx: EffectContext, row: MigrationRow, ctx: MigrationCtx): Promise<SourceReport> {
  const until = cx.clock.now() + SOURCE_SETTLE_MS;
  let status: SourceReport['status'];
  for (;;) {
    let s: Awaited<ReturnType<typeof cx.hub.request<'vm.migrationStatus'>>>;
    try {
      s = await cx.hub.request(row.sourceHostId, 'vm.migrationStatus', { vmId: row.vmId });
    } catch {
      return { status: 'unknown' };
    }
    if (!s || s.migrationId !== row.id) {
      status = 'unknown';
      break;
    }
    if (s.status === 'completed' || s.status === 'failed' || s.status === 'cancelled') {
      status = s.status;
      break;
    }
    if (cx.clock.now() >= until) {
      status = 'running';
      break;
    }
    if (!ctx.switchover) await cx.hub.request(row.sourceHostId, 'vm.cancelMigration', { vmId: row.vmId }).catch(() => undefined);
    await clockSleep(cx.clock, 200);
  }
  try {
    return { status, vmState: (await cx.hub.request(row.sourceHostId, 'vm.describe', { vmId: row.vmId })).state };
  } catch {
    return { status };
  }
}

/** Close the accounting of the migration's grant at the AAA (a `release` record), once: by the
 *  jti kept in the record, so it works after a controller restart too. A failure is a warning.
 *  Returns the token as it now is, or undefined when there was nothing to close. */
export async function closeAccounting(cx: EffectContext, row: MigrationRow, warnings: ErrorBody[], step: string): Promise<MigrationCtx['token'] | undefined> {
  const token = currentCtx(cx, row.id).token;
  if (!token || !('jti' in token) || token.accountingClosed || !cx.aaa?.release) return undefined;
  try {
    const lp = currentCtx(cx, row.id).lightpath;
    await cx.aaa.release(token.jti, { migrationId: row.id, step, ...(lp?.reservationId ? { reservationId: lp.reservationId } : {}) });
    return { ...token, accountingClosed: true };
  } catch (e) {
    warnings.push({ ...toVmtcError(e).toJSON(), details: { ...(toVmtcError(e).details ?? {}), step: 'accounting-release' } });
    return undefined;
  }
}

/** Release and terminate the lightpath if one is held; a failure is a warning in `warnings`.
 *  Returns the lightpath as it now is, or undefined when there was nothing to release. */
export async function releaseLightpath(cx: EffectContext, row: MigrationRow, warnings: ErrorBody[]): Promise<MigrationCtx['lightpath'] | undefined> {
  const lp = currentCtx(cx, row.id).lightpath;
  const port = cx.lightpath;
  if (!lp || lp.released || !port || !(lp.reservationId || (lp.key && port.find))) return undefined;
  try {
    // A set-up cut short (the controller killed, or its answer lost) may have left a reservation
    // whose id never came back: the broker finds it by the key saved before it was asked.
    const reservationId = lp.reservationId ?? (await port.find!(lp.key!))?.reservationId;
    if (!reservationId) return { ...lp, released: true }; // nothing was made under the key
    await port.teardown(reservationId, cx.secrets.get(row.id) ?? '');
    return { ...lp, reservationId, released: true };
  } catch (e) {
    warnings.push(toVmtcError(e).toJSON());
    return lp;
  }
}

export const ROLLBACK_EFFECTS = { rollback };
