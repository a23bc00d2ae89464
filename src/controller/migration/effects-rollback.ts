// Undo everything (docs/design.md#rollback: circuits released, source resumed, destination cleaned,
// capacity freed). Each step is idempotent so a restarted controller can run it again. The
// effect only finds things out and does the steps; how the rollback ends is the machine's
// decision (decideRollbackOutcome in reducer.ts).
import { toVmtcError, type ErrorBody } from '../../common/errors.ts';
import type { VmInfo } from '../../common/agent-protocol.ts';
import type { MigrationCtx, MigrationRow } from '../store.ts';
import { decideRollbackOutcome, sourceMayBeRestored, type RollbackFacts } from './reducer.ts';
import { NOT_FOUND, currentCtx, site, type EffectContext, type EffectFn } from './context.ts';

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
  const settle = (facts: RollbackFacts) => {
    const out = decideRollbackOutcome(facts, { mode: row.mode, ctx });
    if (out.releaseHold) cx.store.releaseHold(row.id);
    // The export was withdrawn (or never made): a cold attempt after this one starts afresh.
    cx.exports.delete(row.id);
    return { event: out.event, ...(out.detail !== undefined ? { detail: out.detail } : {}), ...(out.ctxPatch ? { ctxPatch: out.ctxPatch } : {}) };
  };

  if (ctx.migrationStarted) await soft('cancel-migration', () => hub.request(row.sourceHostId, 'vm.cancelMigration', { vmId: row.vmId }));
  // The destination copy goes first, so that the VM never runs in two places (a cold copy may
  // already have booted there).
  let destinationGone = true;
  if (ctx.incoming || ctx.cold?.importRequested) {
    destinationGone = false;
    await soft('destroy-destination', async () => {
      try {
        await hub.request(row.destinationHostId, 'vm.destroy', { vmId: row.vmId });
      } catch (e) {
        if (!NOT_FOUND.test(toVmtcError(e).code)) throw e;
      }
      destinationGone = true;
    });
  }
  const facts: RollbackFacts = { destinationGone, destinationMayRun: !destinationGone && (await destinationMayRun(cx, row, ctx)), problems };
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
  const lightpath = await releaseLightpath(cx, row, problems);
  const src = source as VmInfo | undefined;
  return settle({ ...facts, ...(src ? { sourceState: src.state } : {}), ...(lightpath ? { lightpath } : {}) });
};

/** Whether a destination that could not be cleaned may be running the VM: a cold import was
 *  asked for (it boots the copy), or the source's live migration completed (or cannot be
 *  asked). A pre-copy that did not complete leaves the destination waiting, never running. */
async function destinationMayRun(cx: EffectContext, row: MigrationRow, ctx: MigrationCtx): Promise<boolean> {
  if (ctx.cold?.importRequested) return true;
  if (!ctx.migrationStarted) return false;
  try {
    const s = await cx.hub.request(row.sourceHostId, 'vm.migrationStatus', { vmId: row.vmId });
    return !!s && (s as { migrationId?: string }).migrationId === row.id && s.status === 'completed';
  } catch {
    return true;
  }
}

/** Release and terminate the lightpath if one is held; a failure is a warning in `warnings`.
 *  Returns the lightpath as it now is, or undefined when there was nothing to release. */
export async function releaseLightpath(cx: EffectContext, row: MigrationRow, warnings: ErrorBody[]): Promise<MigrationCtx['lightpath'] | undefined> {
  const lp = currentCtx(cx, row.id).lightpath;
  if (!lp?.reservationId || lp.released || !cx.lightpath) return undefined;
  try {
    await cx.lightpath.teardown(lp.reservationId, cx.secrets.get(row.id) ?? '');
    return { ...lp, released: true };
  } catch (e) {
    warnings.push(toVmtcError(e).toJSON());
    return lp;
  }
}

export const ROLLBACK_EFFECTS = { rollback };
