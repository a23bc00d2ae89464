// The REST routes of evacuations and host maintenance (docs/fleet.md; fleet/evacuation.ts does it):
//   POST   /v1/evacuations                { host | site, toSites?, order?, priorities?, limits?, allowCold? } -> 202
//   GET    /v1/evacuations                every evacuation, newest first, with its counts
//   GET    /v1/evacuations/:id            one, with every planned item and its migration
//   POST   /v1/evacuations/:id/cancel     { running?: finish | rollback }                   -> 202
//   GET    /v1/maintenance                hosts in maintenance
//   PUT    /v1/hosts/:id/maintenance      { reason? }: no new placements there
//   DELETE /v1/hosts/:id/maintenance      placements there again (refused during its evacuation)
import type { FastifyInstance, onRequestHookHandler } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { errorResponses, Type, type Static, StringEnum, Nullable, OpenObject, MapOf, ErrorBody } from '../common/schemas.ts';
import type { Clock } from '../common/clock.ts';
import { err } from './errors.ts';
import { IdParams } from './schemas.ts';
import type { ControllerStore } from './store.ts';
import { DEFAULT_LIMITS } from './fleet/evacuation-plan.ts';
import { bookingRows, type BookingRow } from './fleet/bookings.ts';
import type { Evacuations } from './fleet/evacuation.ts';
import { EVACUATION_ENDED, type EvacuationRow, type FleetStore, type ItemRow } from './fleet/store.ts';

const Limit = (what: string) => Type.Integer({ minimum: 1, maximum: 64, description: what });

export const EvacuationBody = Type.Object({
  host: Type.Optional(Type.String({ minLength: 1, maxLength: 128, description: 'the host to drain (or site)' })),
  site: Type.Optional(Type.String({ minLength: 1, maxLength: 128, description: 'every host at this site (or host)' })),
  toSites: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 128 }), { minItems: 1, maxItems: 32, uniqueItems: true, description: 'only to hosts at these sites' })),
  order: Type.Optional(StringEnum(['smallest-first', 'priority'], { default: 'smallest-first', description: 'smallest and least dirty first, or higher priority first' })),
  priorities: Type.Optional(MapOf(Type.Integer({ minimum: 0, maximum: 1_000_000 }), { description: "by VM id, over the VM's own label (extra.placement.priority)" })),
  limits: Type.Optional(Type.Object({
    perSourceHost: Type.Optional(Limit('migrations out of one host at once')),
    perDestinationHost: Type.Optional(Limit('migrations into one host at once')),
    perLightpath: Type.Optional(Limit('migrations on one lightpath at once; each gets its share of the bandwidth')),
  }, { additionalProperties: false })),
  allowCold: Type.Optional(Type.Boolean({ description: 'a VM that cannot move live moves cold (mode auto)' })),
}, { additionalProperties: false });
export type EvacuationBody = Static<typeof EvacuationBody>;

export const CancelEvacuationBody = Type.Object({
  running: Type.Optional(StringEnum(['finish', 'rollback'], { default: 'finish', description: 'what the moves already running do' })),
}, { additionalProperties: false });

const EvacuationItem = Type.Object({
  seq: Type.Integer(),
  vmId: Type.String(),
  sourceHostId: Type.String(),
  destinationHostId: Nullable(Type.String()),
  link: Nullable(Type.String()),
  path: Nullable(Type.String()),
  rateMbps: Nullable(Type.Number()),
  plannedStartS: Nullable(Type.Number()),
  plannedEndS: Nullable(Type.Number()),
  batch: Nullable(Type.Integer()),
  state: StringEnum(['planned', 'starting', 'running', 'completed', 'failed', 'cancelled', 'unplaced']),
  attempt: Type.Integer(),
  migrationId: Nullable(Type.String()),
  migrationIds: Type.Array(Type.String()),
  migration: Type.Optional(OpenObject({ description: 'state, path and error of the current migration' })),
  error: Nullable(ErrorBody),
  placement: Type.Optional(OpenObject({ description: 'how the destination was chosen (candidates, refused hosts with why, scores)' })),
  bookings: Type.Optional(Type.Array(Type.Object({
    state: StringEnum(['booking', 'booked', 'claimed', 'released', 'failed']),
    reservationId: Nullable(Type.String()),
    src: Type.String(),
    dst: Type.String(),
    mbps: Type.Number(),
    window: Type.Object({ start: Type.Integer(), end: Type.Integer() }, { description: 'epoch seconds, as booked in the broker' }),
    migrationId: Nullable(Type.String()),
    error: Nullable(ErrorBody),
  }), { description: 'the advance reservations of this move (docs/fleet.md "Bookings"): booked ahead, claimed by its migration or released' })),
}, { additionalProperties: true });

export const Evacuation = Type.Object({
  id: Type.String(),
  target: Type.Object({ host: Type.Optional(Type.String()), site: Type.Optional(Type.String()) }),
  state: StringEnum(['running', 'cancelling', 'completed', 'completed_with_errors', 'cancelled']),
  request: OpenObject(),
  plan: OpenObject({ description: 'makespanS, bound { bytesBound, longest, bound } and batches with their bandwidth bookings per link (seconds from the start)' }),
  counts: MapOf(Type.Integer(), { description: 'items by state' }),
  cancelRunning: Nullable(Type.String()),
  createdAt: Type.String({ format: 'date-time' }),
  updatedAt: Type.String({ format: 'date-time' }),
  endedAt: Nullable(Type.String({ format: 'date-time' })),
  items: Type.Optional(Type.Array(EvacuationItem)),
}, { additionalProperties: true });
export type Evacuation = Static<typeof Evacuation>;
export const EvacuationList = Type.Object({ evacuations: Type.Array(Evacuation) });

export const MaintenanceBody = Type.Object({ reason: Type.Optional(Type.String({ maxLength: 256 })) }, { additionalProperties: false });
export const Maintenance = Type.Object({
  hostId: Type.String(),
  maintenance: Type.Boolean(),
  reason: Type.Optional(Nullable(Type.String())),
  evacuationId: Type.Optional(Nullable(Type.String())),
  since: Type.Optional(Type.String({ format: 'date-time' })),
});
export const MaintenanceList = Type.Object({ hosts: Type.Array(Maintenance) });

export interface EvacuationRouteDeps {
  store: ControllerStore;
  fleet: FleetStore;
  evacuations: Evacuations;
  clock: Clock;
  reader: onRequestHookHandler;
  orchestrator: onRequestHookHandler;
  security: { bearer: never[] }[];
}

const iso = (t: number) => new Date(t).toISOString();

export function presentEvacuation(ev: EvacuationRow, items: ItemRow[], store: ControllerStore, withItems: boolean, bookings: BookingRow[] = []): Evacuation {
  const counts: Record<string, number> = {};
  for (const i of items) counts[i.state] = (counts[i.state] ?? 0) + 1;
  return {
    id: ev.id, target: ev.targetKind === 'host' ? { host: ev.target } : { site: ev.target }, state: ev.state, request: ev.request as unknown as Record<string, unknown>,
    plan: ev.plan, counts, cancelRunning: ev.cancelRunning, createdAt: iso(ev.createdAt), updatedAt: iso(ev.updatedAt), endedAt: ev.endedAt === null ? null : iso(ev.endedAt),
    ...(withItems ? {
      items: items.map((i) => {
        const m = i.migrationId ? store.migration(i.migrationId) : undefined;
        return {
          seq: i.seq, vmId: i.vmId, sourceHostId: i.sourceHostId, destinationHostId: i.destinationHostId, link: i.link, path: i.path, rateMbps: i.rateMbps,
          plannedStartS: i.plannedStart, plannedEndS: i.plannedEnd, batch: i.batch, state: i.state, attempt: i.attempt, migrationId: i.migrationId, migrationIds: i.migrationIds,
          ...(m ? { migration: { state: m.state, path: m.ctx.path, destinationHostId: m.destinationHostId, ...(m.error ? { error: m.error } : {}) } } : {}),
          error: i.error as Static<typeof ErrorBody> | null,
          ...(i.placement ? { placement: i.placement } : {}),
          ...(bookings.some((b) => b.seq === i.seq) ? {
            bookings: bookings.filter((b) => b.seq === i.seq).map((b) => ({
              state: b.state, reservationId: b.reservationId, src: b.src, dst: b.dst, mbps: b.mbps, window: { start: b.windowStart, end: b.windowEnd },
              migrationId: b.migrationId, error: b.error as Static<typeof ErrorBody> | null,
            })),
          } : {}),
        };
      }),
    } : {}),
  };
}

export function registerEvacuationRoutes(fastify: FastifyInstance, d: EvacuationRouteDeps): void {
  const app = fastify.withTypeProvider<TypeBoxTypeProvider>();
  const { security } = d;
  const show = (id: string, withItems = true) => {
    const ev = d.fleet.evacuation(id);
    if (!ev) throw err('VMTC_EVACUATION_NOT_FOUND', { evacuationId: id });
    return presentEvacuation(ev, d.fleet.items(id), d.store, withItems, withItems ? bookingRows(d.fleet, id) : []);
  };

  app.post('/v1/evacuations', {
    onRequest: d.orchestrator,
    schema: {
      operationId: 'createEvacuation', tags: ['evacuations'], security,
      summary: 'Drain a host or a site: its hosts go into maintenance, every VM gets a destination and a start in the plan, and the moves run under the limits.',
      body: EvacuationBody,
      response: { 202: { ...Evacuation, description: 'planned; the moves run' }, ...errorResponses({ body: true }, 401, 403, 409) },
    },
  }, async (request, reply) => {
    const b = request.body;
    const allowCold = b.allowCold ?? false;
    const ev = d.evacuations.create({
      ...(b.host !== undefined ? { host: b.host } : {}), ...(b.site !== undefined ? { site: b.site } : {}),
      ...(b.toSites ? { toSites: b.toSites } : {}), order: b.order ?? 'smallest-first', ...(b.priorities ? { priorities: b.priorities } : {}),
      limits: { ...DEFAULT_LIMITS, ...(b.limits ?? {}) }, allowCold, mode: allowCold ? 'auto' : 'live',
    }, request.principal?.name);
    return reply.status(202).send(presentEvacuation(ev, d.fleet.items(ev.id), d.store, true));
  });

  app.get('/v1/evacuations', {
    onRequest: d.reader,
    schema: {
      operationId: 'listEvacuations', tags: ['evacuations'], security,
      summary: 'Evacuations, newest first (the last 100), with their counts and without their items.',
      response: { 200: EvacuationList, ...errorResponses({}, 401, 403) },
    },
  }, async () => ({ evacuations: d.fleet.evacuations().map((ev) => presentEvacuation(ev, d.fleet.items(ev.id), d.store, false)) }));

  app.get('/v1/evacuations/:id', {
    onRequest: d.reader,
    schema: {
      operationId: 'getEvacuation', tags: ['evacuations'], security,
      summary: 'One evacuation: its plan, every item (destination, planned start, state, migration) and its progress.',
      params: IdParams,
      response: { 200: Evacuation, ...errorResponses({}, 401, 403, 404) },
    },
  }, async (request) => show(request.params.id));

  app.post('/v1/evacuations/:id/cancel', {
    onRequest: d.orchestrator,
    schema: {
      operationId: 'cancelEvacuation', tags: ['evacuations'], security,
      summary: 'Start nothing more; the moves already running finish (default) or roll back. The hosts stay in maintenance.',
      params: IdParams,
      body: CancelEvacuationBody,
      response: { 202: Evacuation, ...errorResponses({ body: true }, 401, 403, 404, 409) },
    },
    preValidation: async (request) => { request.body ??= {}; },
  }, async (request, reply) => {
    await d.evacuations.cancel(request.params.id, request.body?.running ?? 'finish');
    return reply.status(202).send(show(request.params.id));
  });

  const presentMaintenance = (hostId: string) => {
    const m = d.fleet.maintenance().get(hostId);
    return m ? { hostId, maintenance: true, reason: m.reason, evacuationId: m.evacuationId, since: iso(m.since) } : { hostId, maintenance: false };
  };

  app.get('/v1/maintenance', {
    onRequest: d.reader,
    schema: {
      operationId: 'listMaintenance', tags: ['hosts'], security,
      summary: 'Hosts in maintenance: nothing new is placed there.',
      response: { 200: MaintenanceList, ...errorResponses({}, 401, 403) },
    },
  }, async () => ({ hosts: [...d.fleet.maintenance().keys()].map(presentMaintenance) }));

  app.put('/v1/hosts/:id/maintenance', {
    onRequest: d.orchestrator,
    schema: {
      operationId: 'setHostMaintenance', tags: ['hosts'], security,
      summary: 'Put a host in maintenance: no new placement there (its VMs stay; POST /v1/evacuations moves them).',
      params: IdParams,
      body: MaintenanceBody,
      response: { 200: Maintenance, ...errorResponses({ body: true }, 401, 403, 404) },
    },
    preValidation: async (request) => { request.body ??= {}; },
  }, async (request) => {
    const id = request.params.id;
    if (!d.store.host(id)) throw err('VMTC_HOST_NOT_FOUND', { hostId: id });
    d.fleet.setMaintenance(id, request.body?.reason ?? null, null, d.clock.now());
    return presentMaintenance(id);
  });

  app.delete('/v1/hosts/:id/maintenance', {
    onRequest: d.orchestrator,
    schema: {
      operationId: 'clearHostMaintenance', tags: ['hosts'], security,
      summary: 'End a host\'s maintenance (refused while an evacuation of it runs).',
      params: IdParams,
      response: { 200: Maintenance, ...errorResponses({}, 401, 403, 404, 409) },
    },
  }, async (request) => {
    const id = request.params.id;
    if (!d.store.host(id)) throw err('VMTC_HOST_NOT_FOUND', { hostId: id });
    const m = d.fleet.maintenance().get(id);
    const ev = m?.evacuationId ? d.fleet.evacuation(m.evacuationId) : undefined;
    if (ev && !EVACUATION_ENDED.has(ev.state)) throw err('VMTC_EVACUATION_CONFLICT', { evacuationId: ev.id, hostId: id });
    d.fleet.clearMaintenance(id);
    return presentMaintenance(id);
  });
}
