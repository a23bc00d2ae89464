// The migration state machine: the states and what each one means in ONE place (STATE_DEFS),
// one transition table, and pure functions only (no I/O, no clock: time is passed in). Deciding
// and doing are separate: the runner (runner.ts) launches the effects a state names and feeds
// their outcomes back as events; how an event changes the record is the reducer's job
// (migration/reducer.ts). States follow Clark et al.'s stages of live migration (pre-migration,
// reservation, iterative pre-copy, stop-and-copy, commitment, activation) with the VM
// Turntable's control-plane steps (AAA token, lightpath) between reservation and pre-copy, and
// the EGI D4.4 cold path as a separate branch (docs/design.md#live-migration, #cold-path).
//
// Adding a state: an entry in STATE_DEFS (its effect, whether it can be undone, what a restarted
// controller does with it), its edges in TABLE, and its effect function in one of
// migration/effects-*.ts. Nothing else names states.
import type { ErrorBody } from '../common/errors.ts';
import type { ForceCompleteMode, MigrationLimits } from '../common/agent-protocol.ts';
import type { MigrationCtx, MigrationRequest } from './migration/record.ts';
import { err } from './errors.ts';

/** What the machine reads of a migration's record. */
export interface MigrationRecord {
  state: MigrationState;
  mode: 'live' | 'cold' | 'auto';
  ctx: MigrationCtx;
  error: ErrorBody | null;
  /** The request as admitted (absent in records made up by tests of the table alone). */
  request?: MigrationRequest;
}

export interface StateDef {
  /** The effect launched on entering the state (see migration/effects.ts). */
  onEnter?: string;
  /** The effect launched in that earlier state is still running in this one and reports for
   *  both (the source's migration goes from pre-copy to stop-and-copy by itself). */
  continues?: string;
  /** The source is still the primary copy: an operator's CANCEL, the deadline and a lost
   *  destination agent roll everything back. */
  cancellable?: boolean;
  /** Before the commit point: a failed effect rolls back (after it, failures are warnings). */
  failable?: boolean;
  /** The source's copy runs and nobody has decided at the point of no return yet: an operator
   *  may change its limits or force it to complete (checkTune, decideForceComplete). */
  copying?: boolean;
  terminal?: boolean;
  /** Decides the next event as soon as the state is entered: a branch without an effect. */
  next?: (rec: MigrationRecord) => MigrationEvent;
  /** After a controller restart: undo ('rollback') or run the state's effect again ('resume',
   *  the effect asks the agents how far things got), once the host that knows is connected:
   *  the source knows how a pre-copy ended; after the last page the destination knows whether
   *  the VM runs. */
  reconcile?: { action: 'rollback' | 'resume'; ask: 'source' | 'destination' };
}

const UNDOABLE = { cancellable: true, failable: true } as const;
const ROLLBACK_ON_RESTART = { reconcile: { action: 'rollback', ask: 'source' } } as const;
const FINISHED = { onEnter: 'finish', terminal: true } as const;

export const STATE_DEFS = {
  // Stage 0/1: pre-migration checks (done by the API before the record exists) and reservation
  // of destination capacity.
  prechecking: { ...UNDOABLE, ...ROLLBACK_ON_RESTART },
  // The branch: ctx.path was chosen at admission (mode, CPU compatibility).
  reserved: { ...UNDOABLE, ...ROLLBACK_ON_RESTART, next: (r) => ({ type: r.ctx.path === 'cold' ? 'START_COLD' : 'START_LIVE' }) },
  // Turntable control plane (paper §3 steps 2-4): AAA capability token, then the lightpath.
  authorizing: { onEnter: 'requestToken', ...UNDOABLE, ...ROLLBACK_ON_RESTART },
  provisioning: { onEnter: 'provisionLightpath', ...UNDOABLE, ...ROLLBACK_ON_RESTART },
  // Destination waits for incoming state on the lightpath address; tunnel starts bicasting.
  preparing: { onEnter: 'prepareDestination', ...UNDOABLE, ...ROLLBACK_ON_RESTART },
  // Stage 2: iterative pre-copy while the VM runs, until the source pauses before its final
  // state and says so (SWITCHOVER_READY). A restarted controller re-attaches to a pre-copy still
  // running (never starts a second stream).
  precopy: { onEnter: 'startMigration', ...UNDOABLE, copying: true, reconcile: { action: 'resume', ask: 'source' } },
  // Stage 3: stop-and-copy (VM paused at the source, last dirty pages), for a source that says
  // so before it pauses for the switchover.
  stopcopy: { continues: 'precopy', ...UNDOABLE, copying: true, reconcile: { action: 'resume', ask: 'source' } },
  // The point of no return (docs/design.md#switchover): the source is paused before its final
  // state (QEMU's pause-before-switchover) and the controller has decided, durably with this
  // transition, to let it go; the state's effect tells the source to continue and follows the
  // copy to its end. Nobody may cancel from here (a CANCEL applied before SWITCHOVER_READY
  // won: the source was cancelled while paused). A failure still rolls back, and the rollback
  // asks the source whether the final state may have left before it touches the destination.
  switchover: { onEnter: 'switchover', failable: true, reconcile: { action: 'resume', ask: 'source' } },
  // Stage 4: commitment. The source stays paused and primary until the destination runs; a
  // failure still rolls back, but nobody may cancel while the last pages are in flight.
  committing: { onEnter: 'awaitDestinationRunning', failable: true, reconcile: { action: 'resume', ask: 'destination' } },
  // Stage 5: activation: the destination runs; tunnels drop the old site. After the
  // destination runs there is no way back: failures are warnings and the migration completes
  // (the VM must not end up nowhere).
  activating: { onEnter: 'activate', reconcile: { action: 'resume', ask: 'destination' } },
  // After commit: destroy the source copy, release the lightpath, free capacity.
  cleanup: { onEnter: 'cleanupSource', reconcile: { action: 'resume', ask: 'source' } },
  completed: FINISHED,
  // Cold path (EGI D4.4): power off, export, import at destination, verify. Until verification
  // the source's disks and VM are intact; the disk URLs are memory-only secrets, so a restarted
  // controller rolls back rather than resume.
  cold_exporting: { onEnter: 'coldExport', ...UNDOABLE, ...ROLLBACK_ON_RESTART },
  cold_importing: { onEnter: 'coldImport', ...UNDOABLE, ...ROLLBACK_ON_RESTART },
  cold_verifying: { onEnter: 'coldVerify', ...UNDOABLE, ...ROLLBACK_ON_RESTART },
  // Failure side. Each rollback step is idempotent, so a restarted controller runs it again.
  rolling_back: { onEnter: 'rollback', reconcile: { action: 'resume', ask: 'source' } },
  rolled_back: FINISHED,
  cancelled: FINISHED,
  failed: FINISHED,
} as const satisfies Record<string, StateDef>;

export type MigrationState = keyof typeof STATE_DEFS;
export const STATES = Object.keys(STATE_DEFS) as MigrationState[];

/** The effect names the states use; migration/effects.ts must implement every one. */
export type Effect = { [S in MigrationState]: (typeof STATE_DEFS)[S] extends { onEnter: infer E } ? E : never }[MigrationState];

const def = (s: MigrationState): StateDef => STATE_DEFS[s];
const where = (p: (d: StateDef) => boolean): ReadonlySet<MigrationState> => new Set(STATES.filter((s) => p(def(s))));

export const TERMINAL = where((d) => d.terminal === true);
/** States in which the source copy is still the primary and a cancel can roll everything back. */
export const CANCELLABLE = where((d) => d.cancellable === true);
/** States in which a failure rolls back (up to the commit point). */
export const FAILABLE = where((d) => d.failable === true);
/** States in which the copy runs and an operator may tune it or force it to complete. */
export const COPYING = where((d) => d.copying === true);

export type MigrationEvent =
  | { type: 'PRECHECKS_PASSED' }
  | { type: 'START_LIVE' }
  | { type: 'START_COLD' }
  | { type: 'TOKEN_GRANTED' }
  | { type: 'LIGHTPATH_UP' }
  | { type: 'DESTINATION_PREPARED' }
  | { type: 'STOP_AND_COPY' }
  | { type: 'SWITCHOVER_READY' }
  | { type: 'MIGRATION_COMPLETED' }
  | { type: 'DESTINATION_RUNNING' }
  | { type: 'ACTIVATED' }
  | { type: 'CLEANED_UP' }
  | { type: 'COLD_EXPORTED' }
  | { type: 'COLD_IMPORTED' }
  | { type: 'COLD_VERIFIED' }
  | { type: 'FAIL' }
  | { type: 'CANCEL' }
  | { type: 'FALLBACK_COLD' }
  | { type: 'ROLLED_BACK'; cancelled: boolean }
  | { type: 'ROLLBACK_FAILED' };
export type EventType = MigrationEvent['type'];

type Target = MigrationState | ((e: MigrationEvent) => MigrationState);
type Table = Partial<Record<MigrationState, Partial<Record<EventType, Target>>>>;

export const TABLE: Table = (() => {
  const t: Table = {
    prechecking: { PRECHECKS_PASSED: 'reserved' },
    reserved: { START_LIVE: 'authorizing', START_COLD: 'cold_exporting' },
    authorizing: { TOKEN_GRANTED: 'provisioning' },
    provisioning: { LIGHTPATH_UP: 'preparing' },
    preparing: { DESTINATION_PREPARED: 'precopy' },
    // The copy completes only through the switchover: the source waits for the decision.
    precopy: { STOP_AND_COPY: 'stopcopy', SWITCHOVER_READY: 'switchover' },
    stopcopy: { SWITCHOVER_READY: 'switchover' },
    switchover: { MIGRATION_COMPLETED: 'committing' },
    committing: { DESTINATION_RUNNING: 'activating' },
    activating: { ACTIVATED: 'cleanup' },
    cleanup: { CLEANED_UP: 'completed' },
    cold_exporting: { COLD_EXPORTED: 'cold_importing' },
    cold_importing: { COLD_IMPORTED: 'cold_verifying' },
    // Verified at the destination: the commit point of the cold path. Activation then moves the
    // tunnel, as after a live switchover, and cleanup removes the source.
    cold_verifying: { COLD_VERIFIED: 'activating' },
    // The rollback's outcome is decided by decideRollbackOutcome (migration/reducer.ts).
    rolling_back: {
      ROLLED_BACK: (e) => (e.type === 'ROLLED_BACK' && e.cancelled ? 'cancelled' : 'rolled_back'),
      ROLLBACK_FAILED: 'failed',
      // mode=auto: once the live attempt is undone, the cold path runs
      // (docs/design.md#live-migration, `mode: auto`).
      FALLBACK_COLD: 'cold_exporting',
    },
  };
  for (const s of FAILABLE) t[s] = { ...t[s], FAIL: 'rolling_back' };
  for (const s of CANCELLABLE) t[s] = { ...t[s], CANCEL: 'rolling_back' };
  return t;
})();

export interface Transition {
  from: MigrationState;
  to: MigrationState;
  event: EventType;
  effects: Effect[];
}

/**
 * Decide the next state. Pure: no I/O, no clock. An event that is not allowed in `state` is a
 * coded error naming the state (Temporal SDK's guard).
 */
export function transition(state: MigrationState, event: MigrationEvent): Transition {
  const target = TABLE[state]?.[event.type];
  if (target === undefined) {
    if (event.type === 'CANCEL') {
      throw err('VMTC_MIGRATION_NOT_CANCELLABLE', { state }, { message: `a migration in state '${state}' can no longer be cancelled` });
    }
    throw err('VMTC_ILLEGAL_TRANSITION', { state, event: event.type }, { message: `event ${event.type} is not allowed in state '${state}'` });
  }
  const to = typeof target === 'function' ? target(event) : target;
  const onEnter = def(to).onEnter as Effect | undefined;
  return { from: state, to, event: event.type, effects: onEnter ? [onEnter] : [] };
}

/** The effect that does a state's work: its own, or the one still running from the state it
 *  continues. */
export function effectOf(state: MigrationState): Effect | undefined {
  const d = def(state);
  return (d.onEnter ?? (d.continues ? def(d.continues as MigrationState).onEnter : undefined)) as Effect | undefined;
}

/** The states in which an effect launched in `state` may still report: a late outcome must
 *  never drive a migration that has moved on (e.g. a cancel arrived). */
export function outcomeStates(state: MigrationState): MigrationState[] {
  const head = (def(state).continues as MigrationState | undefined) ?? state;
  return [head, ...STATES.filter((s) => def(s).continues === head)];
}

/** Every (from, event, to) edge, for documentation and the closing note. */
export function edges(): { from: MigrationState; event: EventType; to: MigrationState | string }[] {
  const out: { from: MigrationState; event: EventType; to: MigrationState | string }[] = [];
  for (const [from, evs] of Object.entries(TABLE) as [MigrationState, Table[MigrationState]][]) {
    for (const [ev, to] of Object.entries(evs ?? {})) {
      out.push({ from, event: ev as EventType, to: typeof to === 'function' ? 'rolled_back|cancelled' : (to as MigrationState) });
    }
  }
  return out;
}

// ---- an operator's control of a running copy (force-complete, tune in flight) ------------------
// Guards only: whether the state allows it, and what it means. The source agent does it
// (migration/control.ts), and refuses too once told to continue: the controller's state and
// the agent's agree on the point of no return (docs/design.md#switchover).

/** Whether an operator may force the copy to complete now, and how (nova's force-complete):
 *  `asked`, else post-copy when the migration started with it allowed, else a pause. `already`:
 *  that force is in effect; nothing more to do, nothing to record. Throws
 *  VMTC_MIGRATION_NOT_FORCEABLE (details: state, and why) otherwise. */
export function decideForceComplete(rec: Pick<MigrationRecord, 'state' | 'ctx' | 'request'>, asked?: ForceCompleteMode): { mode: ForceCompleteMode; already: boolean } {
  const refuse = (why: Record<string, unknown>, message: string) => err('VMTC_MIGRATION_NOT_FORCEABLE', { state: rec.state, ...why }, { message });
  if (!COPYING.has(rec.state)) {
    throw refuse(rec.ctx.path === 'cold' ? { path: 'cold' } : {}, `a migration in state '${rec.state}' has no copy running that could be forced to complete`);
  }
  const postcopy = rec.request?.postcopy === true;
  const mode = asked ?? rec.ctx.forced?.mode ?? (postcopy ? 'postcopy' : 'pause');
  if (mode === 'postcopy' && !postcopy) throw refuse({ mode, reason: 'postcopy-not-allowed' }, 'post-copy was not allowed when the migration started (request postcopy: true)');
  const forced = rec.ctx.forced?.mode;
  if (forced && forced !== mode) throw refuse({ mode, forced, reason: 'already-forced' }, `the migration was already forced to complete with ${forced}`);
  return { mode, already: forced === mode };
}

/** Whether an operator may change the copy's limits now. `reservedMbps`: the bandwidth of the
 *  lightpath the migration runs on, when one was provisioned (no more may be asked for). Throws
 *  VMTC_MIGRATION_NOT_TUNABLE (details: state, or the field and its bound) otherwise. */
export function checkTune(rec: Pick<MigrationRecord, 'state'>, limits: MigrationLimits, reservedMbps?: number): void {
  if (!COPYING.has(rec.state)) throw err('VMTC_MIGRATION_NOT_TUNABLE', { state: rec.state }, { message: `a migration in state '${rec.state}' has no copy running whose limits could change` });
  if (reservedMbps !== undefined && limits.bandwidthMbps !== undefined && limits.bandwidthMbps > reservedMbps) {
    throw err('VMTC_MIGRATION_NOT_TUNABLE', { state: rec.state, field: 'bandwidthMbps', bandwidthMbps: limits.bandwidthMbps, reservedMbps }, { message: `the lightpath was reserved for ${reservedMbps} Mbit/s: the migration cannot use more` });
  }
}
