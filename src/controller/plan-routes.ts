// REST routes of monitoring and fleet plans (docs/monitoring.md): a host's stats history, a VM's
// profile, and the hotspot and consolidation plans as dry runs (GET) or run (POST …/run: each
// move becomes an ordinary POST /v1/migrations, with the caller's credential, so admission's
// pre-checks, the AAA's policy and idempotency apply as to any request).
import type { FastifyInstance, onRequestHookHandler } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { commonError, type ErrorBody } from '../common/errors.ts';
import { errorResponses, OpenObject, StringEnum, Type, type Security, type Static } from '../common/schemas.ts';
import { err } from './errors.ts';
import type { HubPort } from './ports.ts';
import type { ControllerStore } from './store.ts';
import type { Monitoring, MoveResult, PlanKind } from './monitoring/index.ts';
import type { PlannedMove } from './monitoring/model.ts';

const iso = (t: number) => new Date(t).toISOString();

const Summary = Type.Object({ mean: Type.Number(), p50: Type.Number(), p95: Type.Number(), max: Type.Number(), trendPerHour: Type.Number() });
const HostStatsResponse = Type.Object({
  hostId: Type.String(),
  samples: Type.Array(OpenObject({ description: 'one stats report of the host (src/common/agent-protocol.ts HostStats) with its time `at`' })),
});
const ProfileResponse = Type.Object({
  vmId: Type.String(), samples: Type.Integer(), from: Type.Optional(Type.String()), to: Type.Optional(Type.String()), hostId: Type.Optional(Type.String()),
  cpu: Summary, memory: Summary, netMbps: Summary, diskMBps: Summary,
  dirtyRateMBps: Type.Object({ ...Summary.properties, samples: Type.Integer() }),
});
const Move = OpenObject({ description: 'vmId, from, to, reason, volume, sizeMb, vsr' });
const PlanResponse = Type.Object({
  kind: StringEnum(['hotspots', 'consolidation'] as const),
  generatedAt: Type.String(),
  options: OpenObject({ description: 'the thresholds, sustain window and packing the plan used' }),
  moves: Type.Array(Move),
  hotspots: Type.Optional(Type.Array(OpenObject())),
  unresolved: Type.Optional(Type.Array(OpenObject())),
  fleetLoad: Type.Optional(Type.Number()),
  powerDown: Type.Optional(Type.Array(Type.String())),
  reason: Type.Optional(Type.String()),
  autoMitigate: Type.Optional(Type.Boolean()),
  recentRuns: Type.Optional(Type.Array(OpenObject({ description: 'automatic runs (autoMitigate): hostId, detectedAt, ranAt, firstMigrationAt, moves' }))),
  results: Type.Optional(Type.Array(OpenObject({ description: 'POST …/run: each move as started (migrationId) or refused (error)' }))),
});
const KindParams = Type.Object({ kind: StringEnum(['hotspots', 'consolidation'] as const) });
const LimitQuery = Type.Object({ limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 10_000, default: 100 })) }, { additionalProperties: false });

export interface PlanRouteDeps {
  monitoring: Monitoring;
  store: ControllerStore;
  hub: HubPort;
  reader: onRequestHookHandler;
  orchestrator: onRequestHookHandler;
  security: Security;
  /** The credential automatic runs (autoMitigate) submit with: `Bearer <admin token>`. */
  autoAuthorization: string;
}

type PlanBody = Static<typeof PlanResponse>;
type Json = Record<string, unknown>;
const json = <T>(xs: readonly T[]): Json[] => xs as unknown as Json[];

/** The plan of `kind` as the API shows it (times as ISO dates), and its moves. */
function present(m: Monitoring, kind: PlanKind): { body: PlanBody; moves: PlannedMove[] } {
  const o = m.options;
  if (kind === 'hotspots') {
    const p = m.hotspotPlan();
    return {
      moves: p.moves,
      body: {
        kind, generatedAt: iso(p.generatedAt), options: { thresholds: o.thresholds, sustain: o.sustain, netCapacityMbps: o.netCapacityMbps, followTheMoon: o.followTheMoon },
        hotspots: json(p.hotspots.map((h) => ({ ...h, detectedAt: iso(h.detectedAt) }))), moves: json(p.moves), unresolved: json(p.unresolved),
        autoMitigate: o.autoMitigate,
        recentRuns: json(m.autoRuns.map((r) => ({ ...r, detectedAt: iso(r.detectedAt), ranAt: iso(r.ranAt), ...(r.firstMigrationAt !== undefined ? { firstMigrationAt: iso(r.firstMigrationAt), detectionToFirstMigrationMs: r.firstMigrationAt - r.detectedAt } : {}) }))),
      },
    };
  }
  const p = m.consolidationPlan();
  return {
    moves: p.moves,
    body: {
      kind, generatedAt: iso(p.generatedAt), options: { consolidateBelow: o.consolidateBelow, packTo: o.packTo, followTheMoon: o.followTheMoon, siteUtcOffsetMinutes: o.siteUtcOffsetMinutes },
      fleetLoad: p.fleetLoad, moves: json(p.moves), powerDown: p.powerDown, ...(p.reason ? { reason: p.reason } : {}),
    },
  };
}

export function registerPlanRoutes(fastify: FastifyInstance, d: PlanRouteDeps): void {
  const app = fastify.withTypeProvider<TypeBoxTypeProvider>();
  const { monitoring, store, hub, reader, orchestrator, security } = d;

  // Each move through the controller's own admission, as a client's POST /v1/migrations.
  monitoring.setSubmitter(async (move, requestId, credential): Promise<MoveResult> => {
    const res = await fastify.inject({
      method: 'POST', url: '/v1/migrations', headers: { ...credential, 'content-type': 'application/json' },
      payload: JSON.stringify({ vmId: move.vmId, destinationHostId: move.to, mode: 'live', requestId }),
    });
    const body = res.json() as { id?: string } & Partial<ErrorBody>;
    const base = { vmId: move.vmId, from: move.from, to: move.to };
    if ((res.statusCode === 202 || res.statusCode === 200) && body.id) return { ...base, status: 'started', migrationId: body.id };
    return { ...base, status: 'refused', error: { code: body.code ?? 'VMTC_INTERNAL', message: body.message ?? `HTTP ${res.statusCode}`, ...(body.details ? { details: body.details } : {}) } };
  }, { authorization: d.autoAuthorization });

  app.get('/v1/hosts/:id/stats', {
    onRequest: reader,
    schema: {
      operationId: 'getHostStats', tags: ['monitoring'], security,
      summary: "A host's newest stats reports (host and VM use over each interval), oldest first.",
      params: Type.Object({ id: Type.String({ maxLength: 128 }) }), querystring: LimitQuery,
      response: { 200: HostStatsResponse, ...errorResponses({}, 401, 403, 404) },
    },
  }, async (request) => {
    const id = request.params.id;
    if (!store.host(id)) throw err('VMTC_HOST_NOT_FOUND', { hostId: id });
    return { hostId: id, samples: monitoring.hostStats(id, request.query.limit ?? 100).map((s) => ({ ...s, at: iso(s.at) })) };
  });

  app.get('/v1/vms/:id/profile', {
    onRequest: reader,
    schema: {
      operationId: 'getVmProfile', tags: ['monitoring'], security,
      summary: "A VM's profile: mean, p50, p95, max and trend per hour of each resource over its retained samples.",
      params: Type.Object({ id: Type.String({ maxLength: 128 }) }),
      response: { 200: ProfileResponse, ...errorResponses({}, 401, 403, 404) },
    },
  }, async (request) => {
    const id = request.params.id;
    const { from, to, ...p } = monitoring.profile(id);
    const known = p.samples > 0 || store.hosts().some((h) => (hub.inventory(h.inventory.hostId) ?? h.inventory).vms.some((v) => v.vmId === id));
    if (!known) throw err('VMTC_VM_NOT_FOUND', { vmId: id });
    return { ...p, ...(from !== undefined ? { from: iso(from) } : {}), ...(to !== undefined ? { to: iso(to) } : {}) };
  });

  app.get('/v1/plans/:kind', {
    onRequest: reader,
    schema: {
      operationId: 'getPlan', tags: ['plans'], security,
      summary: 'A dry run: what the hotspot mitigation or the consolidation would move now, and why (nothing is started).',
      params: KindParams,
      response: { 200: PlanResponse, ...errorResponses({}, 401, 403) },
    },
  }, async (request) => present(monitoring, request.params.kind).body);

  app.post('/v1/plans/:kind/run', {
    onRequest: orchestrator,
    schema: {
      operationId: 'runPlan', tags: ['plans'], security,
      summary: 'Run the plan as it is now: each move is submitted as POST /v1/migrations with the caller\'s credential; `results` says which started.',
      params: KindParams,
      response: { 200: PlanResponse, ...errorResponses({ body: true }, 401, 403) },
    },
  }, async (request) => {
    const kind = request.params.kind;
    const { body, moves } = present(monitoring, kind);
    // The caller's own credential, as it came: a bearer token, or the dashboard's session cookie
    // with what its CSRF check reads (src/controller/dashboard/routes.ts).
    const credential: Record<string, string> = {};
    for (const h of ['authorization', 'cookie', 'x-vmtc-dashboard', 'origin', 'host'] as const) {
      const v = request.headers[h];
      if (typeof v === 'string') credential[h] = v;
    }
    if (!credential.authorization && !credential.cookie) throw commonError('VMTC_UNAUTHENTICATED');
    const results = await monitoring.runMoves(kind, moves, body.generatedAt, credential);
    request.log.info({ kind, moves: moves.length, started: results.filter((r) => r.status === 'started').length }, 'plan run');
    return { ...body, results: json(results) };
  });
}
