// The machine's pure decisions about a migration's record: how an event changes it (reduce), and
// how a rollback ends (decideRollbackOutcome). No I/O, no clock reads: the time comes in.
import type { ErrorBody } from '../../common/errors.ts';
import { STATE_DEFS, transition, type MigrationEvent, type MigrationRecord, type StateDef, type Transition } from '../machine.ts';
import type { MigrationCtx } from '../store.ts';
import type { MigrationChange } from './record.ts';
import { err } from '../errors.ts';

/** An event as effects and the runner report it. */
export interface EventInput {
  event: MigrationEvent;
  /** What the effect learnt, merged into the record's ctx. */
  ctxPatch?: Partial<MigrationCtx>;
  /** The error that sends the migration down the failure side (FAIL, CANCEL). */
  error?: ErrorBody;
}

export interface Step {
  transition: Transition;
  /** The record's new ctx (always written with the state change). */
  ctx: MigrationCtx;
  /** The record's new error; undefined leaves it as it is. */
  error?: ErrorBody | null;
  /** Leaving the happy path: whatever effect still runs for the old state must stop. */
  abortRunning: boolean;
  /** An event the new state decides at once (a branch without an effect). */
  next?: MigrationEvent;
}

/**
 * Apply one event to the record. `now` is the time of the event, `enteredAt` the time the record
 * entered its current state. Throws the transition's coded error when the event is not allowed.
 */
export function reduce(rec: MigrationRecord, input: EventInput, now: number, enteredAt: number): Step {
  const t = transition(rec.state, input.event);
  const ctx: MigrationCtx = { ...rec.ctx, ...(input.ctxPatch ?? {}) };
  ctx.timings = { ...(ctx.timings ?? {}), [rec.state]: (ctx.timings?.[rec.state] ?? 0) + (now - enteredAt) };
  let error: ErrorBody | null | undefined = input.error;
  if (input.event.type === 'CANCEL') ctx.cancelRequested = true;
  // The decision at the point of no return is made here, so it is written with the transition.
  if (input.event.type === 'SWITCHOVER_READY') ctx.switchover = { grantedAt: now };
  // The copy is done and its downtime measured: over the limit asked for, the record says so.
  if (input.event.type === 'MIGRATION_COMPLETED') {
    const w = downtimeWarning(ctx, rec.request?.maxDowntimeMs, now);
    if (w) ctx.warnings = [...(ctx.warnings ?? []), w];
  }
  if (input.event.type === 'FALLBACK_COLD') {
    // mode=auto falling back to cold: the live attempt's error becomes a warning, so a cold move
    // that then completes does not carry an error.
    ctx.path = 'cold';
    if (rec.error) ctx.warnings = [...(ctx.warnings ?? []), { ...rec.error, details: { ...(rec.error.details ?? {}), step: 'live-attempt' } }];
    error = null;
  }
  const decide = (STATE_DEFS[t.to] as StateDef).next;
  const next = decide?.({ state: t.to, mode: rec.mode, ctx, error: error === undefined ? rec.error : error });
  return {
    transition: t, ctx,
    ...(error !== undefined ? { error } : {}),
    abortRunning: input.event.type === 'CANCEL' || input.event.type === 'FAIL',
    ...(next ? { next } : {}),
  };
}

/**
 * The warning of a copy whose downtime went over the limit asked for (an operator's later one,
 * else the request's; none asked, none warned about): the hypervisor's own figure, or after a
 * forced pause at least the time from the pause to the end of the copy (the guest was paused all
 * along; a hypervisor counts only its last stop-and-copy).
 */
export function downtimeWarning(ctx: Pick<MigrationCtx, 'result' | 'limits' | 'forced'>, requestedMs: number | undefined, now: number): ErrorBody | undefined {
  const limit = ctx.limits?.maxDowntimeMs ?? requestedMs;
  if (limit === undefined) return undefined;
  const hypervisor = ctx.result?.downtimeMs;
  const forcedPause = ctx.forced?.mode === 'pause' ? Math.max(0, now - ctx.forced.at) : undefined;
  const measured = Math.max(hypervisor ?? -1, forcedPause ?? -1);
  if (measured <= limit) return undefined;
  return err('VMTC_DOWNTIME_ABOVE_LIMIT', {
    downtimeMs: measured, maxDowntimeMs: limit,
    ...(hypervisor !== undefined ? { hypervisorDowntimeMs: hypervisor } : {}),
    ...(forcedPause !== undefined ? { forcedPauseMs: forcedPause } : {}),
  }, { message: `the downtime (${measured} ms) was above the limit asked for (${limit} ms)` }).toJSON();
}

/** An operator's change to a running migration, applied to its ctx: the history gets it, and a
 *  tune's limits become the ones in effect. */
export function applyChange(ctx: MigrationCtx, change: MigrationChange): MigrationCtx {
  const next: MigrationCtx = { ...ctx, changes: [...(ctx.changes ?? []), change] };
  if (change.what === 'tune') next.limits = { ...(ctx.limits ?? {}), ...change.limits };
  else next.forced = { mode: change.mode, at: ctx.forced?.mode === change.mode ? ctx.forced.at : change.at, by: change.by };
  return next;
}

/** What the rollback found out; the decision is decideRollbackOutcome's. */
export interface RollbackFacts {
  /** The destination's copy is gone (removed, or there never was one). */
  destinationGone: boolean;
  /** A destination that could not be cleaned may be running the VM: a cold copy booted, or the
   *  source finished sending its last page (or could not say). */
  destinationMayRun: boolean;
  /** The source VM's state once the rollback's steps ran; absent when unknown, or when the
   *  source was left alone. */
  sourceState?: string;
  /** Steps that failed; they become warnings. */
  problems: ErrorBody[];
  /** The lightpath after its release, when the rollback released it. */
  lightpath?: MigrationCtx['lightpath'];
  /** The token's grant once its accounting was closed. */
  token?: MigrationCtx['token'];
}

/** What the source says of the migration when a rollback asks, after cancelling it. */
export interface SourceReport {
  /** How this migration ended; 'running' if it still runs; 'unknown' if the source could not be
   *  asked or has no record of it (none, or another migration's). */
  status: 'completed' | 'failed' | 'cancelled' | 'running' | 'unknown';
  /** The source VM's state now (vm.describe), absent if it could not be asked. */
  vmState?: string;
}

/**
 * Whether the source may have sent its final state (docs/design.md#switchover), so that the
 * destination may hold, and run, the VM: then the rollback must not destroy the destination.
 * A source that says it completed did. Before the controller granted the switchover the source
 * waits (status 'pre-switchover'), so a migration that ended otherwise or still runs never sent
 * it. After the grant only a source that ended without completing AND runs again rules it out: a
 * driver leaves the source paused when the final state may have left (post-copy, a stream broken
 * after it). Without an answer about this migration, a source that runs cannot have completed it
 * (a completed copy leaves the source paused until it is destroyed:
 * docs/contributing.md#a-hypervisor-driver).
 */
export function finalStateMayHaveLeft(ctx: Pick<MigrationCtx, 'migrationStarted' | 'switchover'>, r: SourceReport): boolean {
  if (!ctx.migrationStarted) return false;
  if (r.status === 'completed') return true;
  if (r.status === 'unknown') return r.vmState !== 'running';
  if (!ctx.switchover) return false;
  return r.status === 'running' || r.vmState !== 'running';
}

/**
 * A destination started held (ctx.incoming.held: it stays paused once the copy landed, until
 * told) that was never told to run, and says it is incoming or paused, never ran the VM: even
 * with the final state there, removing it loses nothing (the source, paused at the same point,
 * holds the same state), so the rollback may remove it and resume the source. Any other answer,
 * or none, and the usual rule stands (finalStateMayHaveLeft).
 */
export function heldDestinationNeverRan(ctx: Pick<MigrationCtx, 'incoming'>, destinationState: string | undefined): boolean {
  return ctx.incoming?.held === true && ctx.incoming.resumeAsked !== true && (destinationState === 'incoming' || destinationState === 'paused');
}

export interface RollbackOutcome extends EventInput {
  detail?: unknown;
  /** The destination's capacity is freed now (not when the cold attempt keeps it). */
  releaseHold: boolean;
}

/** Whether the rollback may bring the source back: never while a copy the rollback could not
 *  remove may run at the destination (the VM must never run twice). */
export function sourceMayBeRestored(f: Pick<RollbackFacts, 'destinationGone' | 'destinationMayRun'>): boolean {
  return f.destinationGone || !f.destinationMayRun;
}

/** How a rollback ends, from what it found and the record it rolled back. */
export function decideRollbackOutcome(f: RollbackFacts, rec: Pick<MigrationRecord, 'mode' | 'ctx'>): RollbackOutcome {
  const ctx = rec.ctx;
  const warnings = [...(ctx.warnings ?? []), ...f.problems];
  const released: Partial<MigrationCtx> = { ...(f.lightpath ? { lightpath: f.lightpath } : {}), ...(f.token ? { token: f.token } : {}) };
  if (!sourceMayBeRestored(f)) {
    // Both copies are left as they are, and the tunnel's bicast reaches whichever runs; the
    // record says so and an operator decides. The rest (lightpath, capacity hold, secrets) is
    // released as on any other end.
    const kept = [
      'destination VM: its copy may have received the final state and run; not destroyed',
      'source VM: left as it is, not resumed, so that the VM never runs twice',
      ...(ctx.tunnel?.bicast && !ctx.tunnel.pruned ? ['tunnel bicast to both sites: clients reach whichever copy runs'] : []),
    ];
    return {
      event: { type: 'ROLLBACK_FAILED' }, releaseHold: true, ctxPatch: { warnings, ...released, kept },
      detail: { reason: 'the destination could not be cleaned, or the source may have sent it its final state: its copy may be running; the source was left as it is', kept },
    };
  }
  const ctxPatch: Partial<MigrationCtx> = { warnings, ...released };
  // The VM must end in exactly one place, in the state it had before: otherwise say so.
  const expected = ctx.sourceState ?? 'running';
  if (f.sourceState !== expected) {
    return { event: { type: 'ROLLBACK_FAILED' }, releaseHold: true, ctxPatch, detail: { sourceState: f.sourceState ?? 'unknown', expected } };
  }
  if (rec.mode === 'auto' && ctx.path === 'live' && !ctx.cancelRequested && !ctx.fallbackCold) {
    // The cold attempt keeps the destination's capacity hold, and starts from a clean slate.
    return {
      event: { type: 'FALLBACK_COLD' }, releaseHold: false,
      ctxPatch: { ...ctxPatch, fallbackCold: true, migrationStarted: false, tunnel: { ...(ctx.tunnel ?? {}), ...(ctx.tunnel?.bicast ? { pruned: true } : {}) } },
    };
  }
  return { event: { type: 'ROLLED_BACK', cancelled: Boolean(ctx.cancelRequested) }, releaseHold: true, ctxPatch };
}
