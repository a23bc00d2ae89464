// What the reservation service and its parts share. service.ts applies the NSI machines (nsi.ts);
// data-plane.ts, deadlines.ts, downstream.ts and restore.ts act on what they decide, each as
// functions of the one context (Runner) the service builds from its options. Also here: the
// service's options, the events it publishes, and the steps built on apply() that several parts
// take (an error event, a failed reserve, the end of a reservation that was never committed).
import type { Clock, Ids } from '../common/clock.ts';
import type { VmtcError } from '../common/errors.ts';
import type { Logger } from '../common/log.ts';
import type { Calendar } from './calendar.ts';
import type { NetworkElementDriver } from './driver.ts';
import type { Machine, MachineTypes } from './nsi.ts';
import type { PeerLinks } from './peer.ts';
import type { BrokerStore, Reservation } from './store.ts';
import type { ReservationTimers } from './timers.ts';
import type { Topology } from './topology.ts';

export interface FaultInjection {
  /** Test hook: every commit in this broker fails (to prove all-or-nothing commit). */
  failCommit?: boolean;
}

export interface BrokerServiceOptions {
  domain: string;
  topology: Topology;
  store: BrokerStore;
  driver: NetworkElementDriver;
  peers: PeerLinks;
  clock: Clock;
  ids: Ids;
  logger: Logger;
  holdTimeoutMs: number;
  faults?: FaultInjection;
}

export type BrokerEvent =
  | { type: 'stateChange'; reservationId: string; machine: Machine; from: string; to: string; event: string; at: number }
  | { type: 'dataPlaneStateChange'; reservationId: string; active: boolean; version: number; at: number; details?: Record<string, unknown> }
  | { type: 'error'; reservationId: string; code: string; message: string; at: number; details?: Record<string, unknown> }
  /** A background reservation's grant changed (docs/broker.md "Classes"); 0 = suspended. */
  | { type: 'grantChange'; reservationId: string; class: 'background'; grantedMbps: number; previousMbps: number; bandwidthMbps: number; at: number };

/** One transition: table check, effects, persist, log, publish (BrokerService.apply). */
export type Apply = <M extends Machine>(r: Reservation, machine: M, event: MachineTypes[M]['event'], ctx?: { error?: VmtcError }) => void;

/** The context the runner's parts act on: a few of the service's options and its state. */
export interface Runner extends Readonly<Pick<BrokerServiceOptions, 'domain' | 'topology' | 'store' | 'driver' | 'peers' | 'clock' | 'holdTimeoutMs'>> {
  readonly log: Logger;
  readonly calendar: Calendar;
  readonly timers: ReservationTimers;
  /** The reservations not yet Terminated, by id: the objects every operation and timer acts on. */
  readonly live: Map<string, Reservation>;
  /** Set by close(): a timer that fires afterwards does nothing. */
  closed: boolean;
  readonly apply: Apply;
  readonly publish: (e: BrokerEvent) => void;
}

export function publishError(rn: Runner, r: Reservation, e: VmtcError): void {
  const evt: BrokerEvent = { type: 'error', reservationId: r.id, code: e.code, message: e.message, at: rn.clock.now() };
  if (e.details) evt.details = e.details;
  rn.log.warn({ reservationId: r.id, migrationId: r.migrationId, code: e.code, details: e.details }, 'reservation error');
  rn.publish(evt);
}

/** ReserveChecking -> ReserveFailed; a never-committed reservation then ends (Terminated). */
export function failReserve(rn: Runner, r: Reservation, e: VmtcError): void {
  rn.apply(r, 'reservation', 'reserveFailed', { error: e });
  publishError(rn, r, e);
  endUncommitted(rn, r);
}

export function endUncommitted(rn: Runner, r: Reservation): void {
  if (r.committed || r.lifecycleState !== 'Created') return;
  rn.apply(r, 'lifecycle', 'terminate');
  rn.apply(r, 'lifecycle', 'terminateConfirmed');
}
