// The migration state machine: one transition table, one pure function (STYLE.md §3, XState's
// "deciding and doing are separate"). The runner (runner.ts) performs the effects and feeds
// events back. States follow Clark et al.'s stages of live migration (pre-migration,
// reservation, iterative pre-copy, stop-and-copy, commitment, activation) with the VM Turntable's
// control-plane steps (AAA token, lightpath) between reservation and pre-copy, and the EGI D4.4
// cold path as a separate branch.
import { err } from './errors.ts';

export const STATES = [
  // Stage 0/1: pre-migration checks and reservation of destination capacity.
  'prechecking',
  'reserved',
  // Turntable control plane (paper §3 steps 2-4): AAA capability token, then the lightpath.
  'authorizing',
  'provisioning',
  // Destination waits for incoming state on the lightpath address; tunnel starts bicasting.
  'preparing',
  // Stage 2: iterative pre-copy while the VM runs.
  'precopy',
  // Stage 3: stop-and-copy (VM paused at the source, last dirty pages and device state).
  'stopcopy',
  // Stage 4: commitment. The source stays paused and primary until the destination runs.
  'committing',
  // Stage 5: activation: the destination runs; tunnels drop the old site.
  'activating',
  // After commit: destroy the source copy, release the lightpath, free capacity.
  'cleanup',
  'completed',
  // Cold path (EGI D4.4): power off, export, import at destination, verify.
  'cold_exporting',
  'cold_importing',
  'cold_verifying',
  // Failure side.
  'rolling_back',
  'rolled_back',
  'cancelled',
  'failed',
] as const;
export type MigrationState = (typeof STATES)[number];

export const TERMINAL: ReadonlySet<MigrationState> = new Set(['completed', 'rolled_back', 'cancelled', 'failed']);

/** States in which the source copy is still the primary and a cancel can roll everything back. */
export const CANCELLABLE: ReadonlySet<MigrationState> = new Set([
  'prechecking', 'reserved', 'authorizing', 'provisioning', 'preparing', 'precopy', 'stopcopy',
  // Cold: until the destination's copy is verified, the source's disks and VM are intact.
  'cold_exporting', 'cold_importing', 'cold_verifying',
]);

export type MigrationEvent =
  | { type: 'PRECHECKS_PASSED' }
  | { type: 'START_LIVE' }
  | { type: 'START_COLD' }
  | { type: 'TOKEN_GRANTED' }
  | { type: 'LIGHTPATH_UP' }
  | { type: 'DESTINATION_PREPARED' }
  | { type: 'STOP_AND_COPY' }
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

/** Effects the runner performs on entering a state. */
export type Effect =
  | 'startLive'
  | 'startCold'
  | 'requestToken'
  | 'provisionLightpath'
  | 'prepareDestination'
  | 'startMigration'
  | 'watchStopAndCopy'
  | 'awaitDestinationRunning'
  | 'activate'
  | 'cleanupSource'
  | 'coldExport'
  | 'coldImport'
  | 'coldVerify'
  | 'rollback'
  | 'finish';

const PRE_COMMIT_FAILABLE: MigrationState[] = [
  'prechecking', 'reserved', 'authorizing', 'provisioning', 'preparing', 'precopy', 'stopcopy', 'committing',
  'cold_exporting', 'cold_importing', 'cold_verifying',
];

type Table = Partial<Record<MigrationState, Partial<Record<EventType, MigrationState | ((e: MigrationEvent) => MigrationState)>>>>;

export const TABLE: Table = (() => {
  const t: Table = {
    prechecking: { PRECHECKS_PASSED: 'reserved' },
    reserved: { START_LIVE: 'authorizing', START_COLD: 'cold_exporting' },
    authorizing: { TOKEN_GRANTED: 'provisioning' },
    provisioning: { LIGHTPATH_UP: 'preparing' },
    preparing: { DESTINATION_PREPARED: 'precopy' },
    precopy: { STOP_AND_COPY: 'stopcopy', MIGRATION_COMPLETED: 'committing' },
    stopcopy: { MIGRATION_COMPLETED: 'committing' },
    committing: { DESTINATION_RUNNING: 'activating' },
    // After the destination runs there is no way back: failures here are recorded as warnings
    // by the runner and the migration still completes (the VM must not end up nowhere).
    activating: { ACTIVATED: 'cleanup' },
    cleanup: { CLEANED_UP: 'completed' },
    cold_exporting: { COLD_EXPORTED: 'cold_importing' },
    cold_importing: { COLD_IMPORTED: 'cold_verifying' },
    // Verified at the destination: the commit point of the cold path. Activation then moves the
    // tunnel, as after a live switchover, and cleanup removes the source.
    cold_verifying: { COLD_VERIFIED: 'activating' },
    rolling_back: {
      ROLLED_BACK: (e) => (e.type === 'ROLLED_BACK' && e.cancelled ? 'cancelled' : 'rolled_back'),
      ROLLBACK_FAILED: 'failed',
      // mode=auto: once the live attempt is undone, the cold path runs (DESIGN.md).
      FALLBACK_COLD: 'cold_exporting',
    },
  };
  for (const s of PRE_COMMIT_FAILABLE) t[s] = { ...t[s], FAIL: 'rolling_back' };
  for (const s of CANCELLABLE) t[s] = { ...t[s], CANCEL: 'rolling_back' };
  return t;
})();

const ON_ENTER: Partial<Record<MigrationState, Effect[]>> = {
  authorizing: ['requestToken'],
  provisioning: ['provisionLightpath'],
  preparing: ['prepareDestination'],
  precopy: ['startMigration'],
  stopcopy: ['watchStopAndCopy'],
  committing: ['awaitDestinationRunning'],
  activating: ['activate'],
  cleanup: ['cleanupSource'],
  cold_exporting: ['coldExport'],
  cold_importing: ['coldImport'],
  cold_verifying: ['coldVerify'],
  rolling_back: ['rollback'],
  completed: ['finish'],
  rolled_back: ['finish'],
  cancelled: ['finish'],
  failed: ['finish'],
};

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
  return { from: state, to, event: event.type, effects: ON_ENTER[to] ?? [] };
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
