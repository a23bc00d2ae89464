// REST schemas of replicas (replica-routes.ts; docs/disks.md#replicas), used by the routes and
// the CLI (src/cli/client/replicas.ts).
import { Type, type Static, StringEnum, Nullable, ErrorBody } from '../../common/schemas.ts';

export const ReplicaBody = Type.Object({
  destinationHostId: Type.String({ minLength: 1, maxLength: 128, description: 'the host that keeps the copy' }),
  intervalS: Type.Optional(Type.Integer({ minimum: 1, maximum: 86_400, default: 60, description: 'seconds between deltas' })),
}, { additionalProperties: false });
export type ReplicaBody = Static<typeof ReplicaBody>;

export const ReplicaParams = Type.Object({ id: Type.String({ maxLength: 128 }), rid: Type.String({ maxLength: 128 }) });

const Checkpoint = Type.Object({ id: Type.String(), seq: Type.Integer(), takenAt: Type.Number() });

export const Replica = Type.Object({
  id: Type.String(),
  vmId: Type.String(),
  sourceHostId: Type.String(),
  destinationHostId: Type.String(),
  intervalS: Type.Integer(),
  state: StringEnum(['seeding', 'warm', 'failed', 'removing']),
  checkpoint: Nullable(Checkpoint),
  diskBytes: Type.Number({ description: 'guest-visible size of the disks' }),
  seedBytes: Type.Number({ description: 'bytes the full copy sent' }),
  lastDeltaBytes: Type.Number(),
  deltas: Type.Integer(),
  bytesSent: Type.Number({ description: 'every byte of disk data sent for this replica' }),
  lastSyncAt: Nullable(Type.String({ format: 'date-time' })),
  lag: Type.Object({
    bytes: Type.Number({ description: 'written at the source since the last delta (as the source counts it, in its tracking granularity)' }),
    seconds: Type.Number({ description: 'since the last delta (or the creation, while seeding)' }),
  }),
  bandwidth: Type.Optional(Type.Object({
    state: StringEnum(['reserved', 'waiting'], { description: "reserved: the step runs under a background reservation; waiting: none could be had (error), the step is tried again later" }),
    reservationId: Type.Optional(Type.String()),
    grantedMbps: Type.Optional(Type.Number({ description: "what the broker grants now (0: suspended); the source copies at this rate" })),
    error: Type.Optional(ErrorBody),
  }, { description: "with a broker (docs/disks.md#replicas): the background reservation of the step under way, or why the step waits; absent between steps" })),
  lentTo: Nullable(Type.String({ description: 'the migration this warm replica is lent to (it boots or verifies from the store; no periodic delta meanwhile), else null' })),
  error: Nullable(ErrorBody),
  createdAt: Type.String({ format: 'date-time' }),
  updatedAt: Type.String({ format: 'date-time' }),
}, { additionalProperties: true });
export type Replica = Static<typeof Replica>;
export const ReplicaList = Type.Object({ replicas: Type.Array(Replica) });
