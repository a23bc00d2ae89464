// A reservation's record: a new one in its initial states, and the refusals of an operation the
// record's states do not allow (VMTC_ILLEGAL_TRANSITION, naming the state). Pure: the id and the
// time come in as arguments.
import type { VmtcError } from '../common/errors.ts';
import type { ReserveAuth, ReserveInput } from './admission.ts';
import { brokerError } from './errors.ts';
import type { LifecycleState } from './nsi.ts';
import type { Reservation } from './store.ts';

/** A new reservation (ReserveStart, Released, Created): on no path yet, nothing booked. */
export function newReservation(id: string, now: number, input: ReserveInput, auth: ReserveAuth): Reservation {
  const r: Reservation = {
    id,
    src: input.src,
    dst: input.dst,
    bandwidthMbps: input.bandwidthMbps,
    start: input.start,
    end: input.end,
    path: { nodes: [], links: [], cost: 0, alternative: false },
    reservationState: 'ReserveStart',
    provisionState: 'Released',
    lifecycleState: 'Created',
    committed: false,
    booked: false,
    owner: auth.owner,
    tokenJti: auth.jti,
    dataPlane: { active: false, version: 0 },
    createdAt: now,
    updatedAt: now,
  };
  if (input.migrationId) r.migrationId = input.migrationId;
  if (input.class === 'background') {
    r.class = 'background';
    r.minMbps = input.minMbps ?? 0;
    r.grantedMbps = 0;
  }
  if (input.idempotencyKey !== undefined) r.idempotencyKey = input.idempotencyKey;
  if (auth.upstream) r.upstream = auth.upstream;
  return r;
}

/** An operation on a reservation that is terminated, or terminating or ended, is illegal. */
export function notLive(id: string, state: LifecycleState, event: string): VmtcError {
  return brokerError('VMTC_ILLEGAL_TRANSITION', { machine: 'lifecycle', state, event, reservationId: id }, { message: `${event} is not allowed: the lifecycle state is ${state}` });
}

/** Provision needs a committed reservation that is in no reserve, commit or abort step. */
export function notCommitted(r: Reservation): VmtcError | undefined {
  if (r.committed && r.reservationState === 'ReserveStart') return undefined;
  return brokerError('VMTC_ILLEGAL_TRANSITION', { machine: 'provision', state: r.provisionState, event: 'provision', reservationState: r.reservationState, committed: r.committed, reservationId: r.id, reason: 'the reservation is not committed' }, { message: `provision is not allowed: the reservation state is ${r.reservationState} and it has not been committed` });
}
