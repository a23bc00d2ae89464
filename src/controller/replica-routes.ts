// The REST routes of replicas (docs/disks.md#replicas; replicas/service.ts does the work):
//   POST   /v1/vms/:id/replicas        { destinationHostId, intervalS? } -> 202 (200: it exists)
//   GET    /v1/vms/:id/replicas        the VM's replicas, with their lag
//   GET    /v1/vms/:id/replicas/:rid   one
//   DELETE /v1/vms/:id/replicas/:rid   -> 202 removing (the store deleted, the checkpoints dropped)
import type { FastifyInstance, onRequestHookHandler } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { errorResponses } from '../common/schemas.ts';
import type { Clock } from '../common/clock.ts';
import { IdParams } from './schemas.ts';
import { lagSeconds, type ReplicaRow } from './replicas/machine.ts';
import { Replica, ReplicaBody, ReplicaList, ReplicaParams } from './replicas/schemas.ts';
import type { ReplicaService } from './replicas/service.ts';
import type { ReplicaBandwidthStatus } from './replicas/bandwidth.ts';

export interface ReplicaRouteDeps {
  replicas: ReplicaService;
  clock: Clock;
  reader: onRequestHookHandler;
  orchestrator: onRequestHookHandler;
  security: { bearer: never[] }[];
}

const iso = (t: number) => new Date(t).toISOString();

export function presentReplica(r: ReplicaRow, now: number, bandwidth?: ReplicaBandwidthStatus): Replica {
  return {
    ...(bandwidth ? { bandwidth } : {}),
    id: r.id, vmId: r.vmId, sourceHostId: r.sourceHostId, destinationHostId: r.destinationHostId, intervalS: r.intervalS, state: r.state,
    checkpoint: r.checkpoint ? { id: r.checkpoint.id, seq: r.checkpoint.seq, takenAt: r.checkpoint.takenAt } : null,
    diskBytes: r.diskBytes, seedBytes: r.seedBytes, lastDeltaBytes: r.lastDeltaBytes, deltas: r.deltas, bytesSent: r.bytesSent,
    lastSyncAt: r.lastSyncAt === null ? null : iso(r.lastSyncAt), lag: { bytes: r.lagBytes, seconds: lagSeconds(r, now) },
    lentTo: r.state === 'warm' ? r.migrationId : null,
    error: r.error, createdAt: iso(r.createdAt), updatedAt: iso(r.updatedAt),
  };
}

export function registerReplicaRoutes(fastify: FastifyInstance, d: ReplicaRouteDeps): void {
  const app = fastify.withTypeProvider<TypeBoxTypeProvider>();
  const { security } = d;

  app.post('/v1/vms/:id/replicas', {
    onRequest: d.orchestrator,
    schema: {
      operationId: 'createReplica', tags: ['replicas'], security,
      summary: "Keep a copy of the VM's disks at another host: seeded while the VM runs, then a delta every intervalS; a migration there moves only the last delta.",
      params: IdParams,
      body: ReplicaBody,
      response: { 200: { ...Replica, description: 'this replica exists already' }, 202: { ...Replica, description: 'seeding' }, ...errorResponses({ body: true }, 401, 403, 404, 409) },
    },
  }, async (request, reply) => {
    const { created, row } = d.replicas.create(request.params.id, request.body.destinationHostId, request.body.intervalS);
    return reply.status(created ? 202 : 200).send(presentReplica(row, d.clock.now(), d.replicas.bandwidthOf(row.id)));
  });

  app.get('/v1/vms/:id/replicas', {
    onRequest: d.reader,
    schema: {
      operationId: 'listReplicas', tags: ['replicas'], security,
      summary: "The VM's replicas: state, what the destination holds, bytes sent, and the lag (bytes written since the last delta, seconds since it).",
      params: IdParams,
      response: { 200: ReplicaList, ...errorResponses({}, 401, 403) },
    },
  }, async (request) => ({ replicas: (await d.replicas.list(request.params.id)).map((r) => presentReplica(r, d.clock.now(), d.replicas.bandwidthOf(r.id))) }));

  app.get('/v1/vms/:id/replicas/:rid', {
    onRequest: d.reader,
    schema: {
      operationId: 'getReplica', tags: ['replicas'], security,
      summary: 'One replica of the VM, with its lag.',
      params: ReplicaParams,
      response: { 200: Replica, ...errorResponses({}, 401, 403, 404) },
    },
  }, async (request) => presentReplica(await d.replicas.withLag(d.replicas.get(request.params.id, request.params.rid)), d.clock.now(), d.replicas.bandwidthOf(request.params.rid)));

  app.delete('/v1/vms/:id/replicas/:rid', {
    onRequest: d.orchestrator,
    schema: {
      operationId: 'deleteReplica', tags: ['replicas'], security,
      summary: "Remove the replica: its store is deleted at the destination and its checkpoints dropped at the source; the record goes once both did (state removing until then).",
      params: ReplicaParams,
      response: { 202: { ...Replica, description: 'removing' }, ...errorResponses({}, 401, 403, 404) },
    },
  }, async (request, reply) => reply.status(202).send(presentReplica(d.replicas.remove(request.params.id, request.params.rid), d.clock.now())));
}
