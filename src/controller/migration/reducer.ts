// The machine's pure decisions about a migration's record: how an event changes it (reduce), and
// how a rollback ends (decideRollbackOutcome). No I/O, no clock reads: the time comes in.
import type { ErrorBody } from '../../common/errors.ts';
import { STATE_DEFS, transition, type MigrationEvent, type MigrationRecord, type StateDef, type Transition } from '../machine.ts';
import type { MigrationCtx } from '../store.ts';

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
  if (!sourceMayBeRestored(f)) {
    // Both are left as they are and the record says so; an operator decides.
    return {
      event: { type: 'ROLLBACK_FAILED' }, releaseHold: true, ctxPatch: { warnings },
      detail: { reason: 'the destination could not be cleaned and its copy may be running; the source was left as it is' },
    };
  }
  const ctxPatch: Partial<MigrationCtx> = { warnings, ...(f.lightpath ? { lightpath: f.lightpath } : {}) };
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
