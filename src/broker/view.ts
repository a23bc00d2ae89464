// The public view of a reservation: what GET /v1/reservations/:id and the events answer
// (ReservationSchema in schemas.ts lists exactly these fields).
import type { Reservation } from './store.ts';

/** The public view of a reservation (GET /v1/reservations/:id). */
export function view(r: Reservation, domain: string): Record<string, unknown> {
  const v: Record<string, unknown> = {
    id: r.id,
    domain,
    src: r.src,
    dst: r.dst,
    bandwidthMbps: r.bandwidthMbps,
    class: r.class ?? 'migration',
    // A migration reservation always has what it booked; a background one what is left now.
    grantedMbps: r.class === 'background' ? (r.grantedMbps ?? 0) : r.bandwidthMbps,
    window: { start: r.start, end: r.end },
    path: r.path,
    reservationState: r.reservationState,
    provisionState: r.provisionState,
    lifecycleState: r.lifecycleState,
    committed: r.committed,
    booked: r.booked,
    dataPlane: r.dataPlane,
    owner: r.owner,
    createdAt: r.createdAt,
    updatedAt: r.updatedAt,
  };
  if (r.migrationId) v.migrationId = r.migrationId;
  if (r.class === 'background') v.minMbps = r.minMbps ?? 0;
  if (r.idempotencyKey !== undefined) v.idempotencyKey = r.idempotencyKey;
  if (r.heldAt !== undefined) v.heldAt = r.heldAt;
  if (r.downstream) v.downstream = r.downstream;
  if (r.upstream) v.upstream = r.upstream;
  return v;
}
