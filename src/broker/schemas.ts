// The broker's REST types, declared once (TypeBox): what routes.ts validates and serialises, what
// its OpenAPI document says, and the Static<> types of the handlers. docs/broker.md "REST API".
import { Type, type Static, type Security, StringEnum, OpenObject } from '../common/schemas.ts';

export const IdParams = Type.Object({ id: Type.String({ minLength: 1, maxLength: 128 }) }, { additionalProperties: false });
export const KeyParams = Type.Object({ key: Type.String({ minLength: 1, maxLength: 200 }) }, { additionalProperties: false });

const Segment = Type.Object({
  domain: Type.String({ minLength: 1, maxLength: 128 }),
  reservationId: Type.String({ minLength: 1, maxLength: 128 }),
}, { additionalProperties: false });

export const ReserveBody = Type.Object({
  src: Type.String({ minLength: 1, maxLength: 128 }),
  dst: Type.String({ minLength: 1, maxLength: 128 }),
  // Not exclusiveMinimum here: a bandwidth <= 0 gets its own code (VMTC_BAD_BANDWIDTH).
  bandwidthMbps: Type.Number(),
  window: Type.Object({
    start: Type.Optional(Type.Integer({ description: 'epoch seconds; omitted = now (on-demand)' })),
    end: Type.Integer({ description: 'epoch seconds, exclusive' }),
  }, { additionalProperties: false }),
  migrationId: Type.Optional(Type.String({ minLength: 1, maxLength: 200 })),
  class: Type.Optional(StringEnum(['migration', 'background'], { description: 'migration (default): booked in full; background: gets what migrations leave, squeezed when one is admitted (docs/broker.md "Classes")' })),
  minMbps: Type.Optional(Type.Number({ description: 'background only: below this the grant is 0 (suspended); default 0' })),
  idempotencyKey: Type.Optional(Type.String({ minLength: 1, maxLength: 200, description: "the caller's name for this reservation: a reserve with a key already used (by the same holder) answers with that reservation, and GET /v1/reservations/by-key/:key finds it" })),
  upstream: Type.Optional(Type.Object(Segment.properties, { additionalProperties: false, description: 'set only by an upstream broker (mutual TLS)' })),
}, { additionalProperties: false });
export type ReserveBody = Static<typeof ReserveBody>;

/** The follow-ups (commit, abort, provision, release, terminate) take no fields. */
export const EmptyBody = Type.Object({}, { additionalProperties: false });
/** The reads take no query parameters. */
export const EmptyQuery = Type.Object({}, { additionalProperties: false });

const SegmentRef = Type.Object({ domain: Type.String(), reservationId: Type.String() });

/** A reservation as the broker shows it (service.ts view()); open, so nothing it adds is lost. */
export const Reservation = Type.Object({
  id: Type.String(),
  domain: Type.String(),
  src: Type.String(),
  dst: Type.String(),
  bandwidthMbps: Type.Number(),
  class: StringEnum(['migration', 'background']),
  grantedMbps: Type.Number({ description: 'migration: bandwidthMbps; background: what the calendar grants it now (at its start, before its window), 0 = suspended' }),
  minMbps: Type.Optional(Type.Number({ description: 'background: the floor below which the grant is 0' })),
  window: Type.Object({ start: Type.Number(), end: Type.Number() }, { description: 'epoch seconds, half-open [start, end)' }),
  path: Type.Object({ nodes: Type.Array(Type.String()), links: Type.Array(Type.String()), cost: Type.Number(), alternative: Type.Boolean() }),
  reservationState: Type.String({ description: 'NSI CS v2 reservation state machine' }),
  provisionState: Type.String({ description: 'NSI CS v2 provision state machine' }),
  lifecycleState: Type.String({ description: 'NSI CS v2 life-cycle state machine' }),
  committed: Type.Boolean(),
  booked: Type.Boolean({ description: 'capacity is held in the calendar' }),
  dataPlane: Type.Object({
    active: Type.Boolean(),
    version: Type.Number(),
    details: Type.Optional(OpenObject({ description: 'driver facts while active' })),
    error: Type.Optional(OpenObject({ description: 'the last data-plane failure' })),
  }, { additionalProperties: true }),
  owner: Type.Object({
    kind: StringEnum(['holder', 'peer']),
    jkt: Type.Optional(Type.String({ description: "holder: thumbprint of the key the token is bound to" })),
    domain: Type.Optional(Type.String({ description: 'peer: the upstream broker' })),
  }, { additionalProperties: true }),
  createdAt: Type.Number(),
  updatedAt: Type.Number(),
  migrationId: Type.Optional(Type.String()),
  idempotencyKey: Type.Optional(Type.String()),
  heldAt: Type.Optional(Type.Number()),
  downstream: Type.Optional(SegmentRef),
  upstream: Type.Optional(SegmentRef),
}, { additionalProperties: true });
export type Reservation = Static<typeof Reservation>;

export const ReservationWithHistory = Type.Object({
  ...Reservation.properties,
  history: Type.Array(Type.Object({
    seq: Type.Number(),
    machine: Type.String(),
    from: Type.String(),
    to: Type.String(),
    event: Type.String(),
    at: Type.Number(),
    details: Type.Optional(OpenObject()),
  }, { additionalProperties: true })),
}, { additionalProperties: true });

export const ReservationList = Type.Object({ reservations: Type.Array(Reservation) });

/**
 * How callers prove who they are (docs/broker.md): the holder sends the AAA's capability token
 * as `Authorization: DPoP <token>` with a fresh proof in the `DPoP` header; a peer broker
 * presents its client certificate; the operator reads with a bearer token.
 */
export const BROKER_SECURITY_SCHEMES = {
  dpopToken: { type: 'http', scheme: 'DPoP', description: "the AAA's capability token (RFC 9449 DPoP-bound)" },
  dpopProof: { type: 'apiKey', in: 'header', name: 'DPoP', description: 'a fresh DPoP proof made with the key the token is bound to' },
  peerTls: { type: 'mutualTLS', description: 'a peer broker with a trusted client certificate' },
} as const;
export const HOLDER_OR_PEER: Security = [{ dpopToken: [], dpopProof: [] }, { peerTls: [] }];
export const OPERATOR: Security = [{ bearer: [] }];
