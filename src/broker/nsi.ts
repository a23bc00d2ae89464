// The three NSI Connection Service v2 state machines (OGF GFD.212, §5 "Connection state machines"),
// each as one transition table and one pure function (docs/contributing.md#state-machines).
// Deciding and doing are separate: `transition` returns the next state and the effects the runner
// (service.ts) must perform; it never touches the calendar, timers or drivers itself.
import { brokerError } from './errors.ts';

export type ReservationState =
  | 'ReserveStart' | 'ReserveChecking' | 'ReserveHeld' | 'ReserveCommitting'
  | 'ReserveFailed' | 'ReserveAborting' | 'ReserveTimeout';
export type ReservationEvent =
  | 'reserve' | 'reserveConfirmed' | 'reserveFailed' | 'commit' | 'commitConfirmed' | 'commitFailed'
  | 'abort' | 'abortConfirmed' | 'timeout';

export type ProvisionState = 'Released' | 'Provisioning' | 'Provisioned' | 'Releasing';
export type ProvisionEvent = 'provision' | 'provisionConfirmed' | 'provisionFailed' | 'activationFailed' | 'release' | 'releaseConfirmed';

export type LifecycleState = 'Created' | 'PassedEndTime' | 'Failed' | 'Terminating' | 'Terminated';
export type LifecycleEvent = 'endTime' | 'forcedEnd' | 'terminate' | 'terminateConfirmed';

/** Effects the runner performs after a transition has been persisted. */
export type Effect =
  | 'armHoldTimer' | 'cancelHoldTimer' | 'unbook' | 'markCommitted' | 'armEndTimer' | 'cancelTimers'
  | 'recordDataPlaneError';

export interface Rule<S> {
  to: S;
  effects?: Effect[];
}

type Table<S extends string, E extends string> = Record<S, Partial<Record<E, Rule<S>>>>;

/** Reservation state machine (GFD.212 §5.1). ReserveChecking covers local admission *and* the
 *  holds in every downstream domain (the aggregator's view of a multi-domain reserve). */
export const RESERVATION_TABLE: Table<ReservationState, ReservationEvent> = {
  ReserveStart: { reserve: { to: 'ReserveChecking' } },
  ReserveChecking: {
    reserveConfirmed: { to: 'ReserveHeld', effects: ['armHoldTimer'] },
    // The tentative booking made while checking is given back.
    reserveFailed: { to: 'ReserveFailed', effects: ['unbook'] },
  },
  ReserveHeld: {
    commit: { to: 'ReserveCommitting', effects: ['cancelHoldTimer'] },
    abort: { to: 'ReserveAborting', effects: ['cancelHoldTimer', 'unbook'] },
    // GFD.212: a held reservation not committed in time times out; we free its capacity at once.
    timeout: { to: 'ReserveTimeout', effects: ['unbook'] },
  },
  ReserveCommitting: {
    commitConfirmed: { to: 'ReserveStart', effects: ['markCommitted', 'armEndTimer'] },
    commitFailed: { to: 'ReserveStart', effects: ['unbook'] },
  },
  ReserveFailed: { abort: { to: 'ReserveAborting' } },
  ReserveTimeout: { abort: { to: 'ReserveAborting' } },
  ReserveAborting: { abortConfirmed: { to: 'ReserveStart' } },
};

/** Provision state machine (GFD.212 §5.2), plus two failure edges this broker adds:
 *  provisionFailed (the driver refused) and activationFailed (a deferred activation at the start
 *  of the window failed); both return to Released with the data-plane error recorded. */
export const PROVISION_TABLE: Table<ProvisionState, ProvisionEvent> = {
  Released: { provision: { to: 'Provisioning' } },
  Provisioning: {
    provisionConfirmed: { to: 'Provisioned' },
    provisionFailed: { to: 'Released', effects: ['recordDataPlaneError'] },
  },
  Provisioned: {
    release: { to: 'Releasing' },
    activationFailed: { to: 'Released', effects: ['recordDataPlaneError'] },
  },
  Releasing: { releaseConfirmed: { to: 'Released' } },
};

/** Life cycle state machine (GFD.212 §5.3). */
export const LIFECYCLE_TABLE: Table<LifecycleState, LifecycleEvent> = {
  Created: {
    endTime: { to: 'PassedEndTime', effects: ['cancelTimers', 'unbook'] },
    forcedEnd: { to: 'Failed', effects: ['cancelTimers', 'unbook'] },
    terminate: { to: 'Terminating', effects: ['cancelTimers', 'unbook'] },
  },
  PassedEndTime: { terminate: { to: 'Terminating' } },
  Failed: { terminate: { to: 'Terminating' } },
  Terminating: { terminateConfirmed: { to: 'Terminated' } },
  Terminated: {},
};

export type Machine = 'reservation' | 'provision' | 'lifecycle';

export const TABLES = {
  reservation: RESERVATION_TABLE,
  provision: PROVISION_TABLE,
  lifecycle: LIFECYCLE_TABLE,
} as const;

export interface MachineTypes {
  reservation: { state: ReservationState; event: ReservationEvent };
  provision: { state: ProvisionState; event: ProvisionEvent };
  lifecycle: { state: LifecycleState; event: LifecycleEvent };
}

/** The next state and effects, or undefined when the event is not allowed in `state`. */
export function next<M extends Machine>(machine: M, state: MachineTypes[M]['state'], event: MachineTypes[M]['event']): Rule<MachineTypes[M]['state']> | undefined {
  const table = TABLES[machine] as unknown as Table<string, string>;
  return table[state]?.[event] as Rule<MachineTypes[M]['state']> | undefined;
}

/** Like next(), but an illegal event is a coded error naming the machine, state and event. */
export function transition<M extends Machine>(machine: M, state: MachineTypes[M]['state'], event: MachineTypes[M]['event'], context: Record<string, unknown> = {}): Rule<MachineTypes[M]['state']> {
  const rule = next(machine, state, event);
  if (!rule) {
    const allowed = Object.keys((TABLES[machine] as unknown as Table<string, string>)[state] ?? {});
    throw brokerError('VMTC_ILLEGAL_TRANSITION', { machine, state, event, allowed, ...context }, { message: `${event} is not allowed: the ${machine} state is ${state}` });
  }
  return rule;
}
