// The controller's REST API for orchestrators. Every route's schema is in schemas.ts (unknown
// fields refused); every error is { code, message, details? } from the catalogue in errors.ts.
import type { FastifyInstance, FastifyRequest, onRequestHookHandler } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { createHash } from 'node:crypto';
import { commonError } from '../common/errors.ts';
import { errorResponses, Type, type Static } from '../common/schemas.ts';
import type { Clock, Ids } from '../common/clock.ts';
import type { Logger } from '../common/log.ts';
import type { HostInventory } from '../common/agent-protocol.ts';
import { advisoriesFor } from '../common/hypervisor-advisories.ts';
import { err } from './errors.ts';
import { checkRoomToStart, hostUsage, locateVm, precheck } from './capacity.ts';
import { decisionRecord, placeVm, type PlacementDecision, type SiteLink } from './fleet/placement.ts';
import { TERMINAL } from './machine.ts';
import { migrationFilter, type ControllerStore, type MigrationRow } from './store.ts';
import type { MigrationRunner } from './runner.ts';
import type { HubPort } from './ports.ts';
import { presentMigrationControl, registerMigrationControl } from './migration-control-routes.ts';
import { registerEventRoutes } from './events-routes.ts';
import { registerControllerMetrics } from './metrics.ts';
import { checkPolicyUpFront, type PolicyPrecheckDeps } from './policy-precheck.ts';
import { checkPolicy } from './migration/policy.ts';
import { registerPolicyRoutes } from './policy-routes.ts';
import {
  CredentialBody, CredentialList, Host, HostList, IdParams, Identity, Migration, MigrationList, MigrationListQuery,
  MigrationRequestBody, NewCredential, StartedVm, StartVmBody, VmList,
  type Host as HostT, type Migration as MigrationT, type MigrationRequest, type Progress, type Role, type Vm,
} from './schemas.ts';

export type { Role } from './schemas.ts';
const ROLE_RANK: Record<Role, number> = { reader: 0, orchestrator: 1, admin: 2 };

declare module 'fastify' {
  interface FastifyRequest {
    principal?: { id: string; name: string; role: Role };
  }
}

export interface ApiDeps {
  store: ControllerStore;
  hub: HubPort;
  runner: MigrationRunner;
  clock: Clock;
  ids: Ids;
  logger: Logger;
  identity: Static<typeof Identity>;
  /** The AAA's policy check at admission (policy-precheck.ts); absent: nothing is asked. */
  admission?: PolicyPrecheckDeps['admission'];
  /** Maintenance and links for placement (fleet/); absent: no host is in maintenance. */
  fleet?: FleetPlacementDeps;
}

/**
 * onRequest hook that requires a bearer credential with at least `role`. It runs before the body
 * is read, parsed or validated (README "API"): a request without a good credential learns
 * nothing from the route, whatever its body.
 */
export function requireRole(store: ControllerStore, role: Role): onRequestHookHandler {
  return async (request: FastifyRequest) => {
    const h = request.headers.authorization;
    const m = typeof h === 'string' ? /^Bearer\s+(\S+)$/i.exec(h) : null;
    if (!m) throw commonError('VMTC_UNAUTHENTICATED');
    const cred = store.findCredential(m[1]!);
    if (!cred) throw commonError('VMTC_UNAUTHENTICATED', { reason: 'unknown or revoked credential' });
    if (ROLE_RANK[cred.role as Role] < ROLE_RANK[role]) throw commonError('VMTC_FORBIDDEN', { role: cred.role, needs: role });
    request.principal = { id: cred.id, name: cred.name, role: cred.role as Role };
  };
}

function hashRequest(r: MigrationRequestIn): string {
  const { requestId: _ignored, ...rest } = r;
  return createHash('sha256').update(JSON.stringify(Object.keys(rest).sort().map((k) => [k, (rest as Record<string, unknown>)[k]]))).digest('hex');
}

export function presentMigration(row: MigrationRow, store: ControllerStore, withTransitions: boolean): MigrationT {
  const iso = (t: number) => new Date(t).toISOString();
  return {
    id: row.id, vmId: row.vmId, project: row.project, mode: row.mode, path: row.ctx.path, state: row.state,
    terminal: TERMINAL.has(row.state),
    sourceHostId: row.sourceHostId, destinationHostId: row.destinationHostId, request: row.request,
    progress: row.progress as Progress | null, error: row.error,
    steps: { checks: row.ctx.checks, token: row.ctx.token, lightpath: row.ctx.lightpath, incoming: row.ctx.incoming, tunnel: row.ctx.tunnel, ...(row.ctx.cold ? { cold: row.ctx.cold } : {}) },
    timings: row.ctx.timings ?? {}, result: row.ctx.result ?? {}, warnings: row.ctx.warnings ?? [],
    ...(row.ctx.downtime ? { downtime: { ...row.ctx.downtime } } : {}),
    ...(row.ctx.kept ? { kept: row.ctx.kept } : {}),
    ...(row.ctx.placement ? { placement: row.ctx.placement } : {}), ...(row.ctx.evacuationId ? { evacuationId: row.ctx.evacuationId } : {}),
    ...presentMigrationControl(row),
    createdAt: iso(row.createdAt), updatedAt: iso(row.updatedAt),
    ...(withTransitions ? { transitions: store.transitions(row.id).map((t) => ({ ...t, at: iso(t.at) })) } : {}),
  };
}

/** A migration request as admission takes it: the body, `mode` defaulted, the destination
 *  optional (placement chooses). */
export type MigrationRequestIn = Omit<MigrationRequest, 'destinationHostId'> & { destinationHostId?: string };
export type Admit = (sent: MigrationRequestIn, opts: { by?: string; evacuationId?: string }) => Promise<{ status: 200 | 202; row: MigrationRow }>;

/** What placement needs from the fleet (fleet/): hosts in maintenance, the links between sites. */
export interface FleetPlacementDeps {
  maintenance(): ReadonlySet<string>;
  links: readonly SiteLink[];
  /** A VM's measured dirty rate (Mbit/s), when monitoring has one (over its label's). */
  dirtyMbps?(vmId: string): number | undefined;
}

/** Choose a destination for a request that names none; throws VMTC_NO_FEASIBLE_HOST with why
 *  each host was refused, VMTC_VM_NOT_FOUND when no host reports the VM. */
function chooseDestination(sent: MigrationRequestIn, hosts: { inventory: HostInventory; connected: boolean }[], holds: ReturnType<ControllerStore['holds']>, fleet: FleetPlacementDeps | undefined): PlacementDecision {
  const loc = locateVm(hosts.filter((h) => h.connected).map((h) => h.inventory), sent.vmId) ?? locateVm(hosts.map((h) => h.inventory), sent.vmId);
  if (!loc) throw err('VMTC_VM_NOT_FOUND', { vmId: sent.vmId });
  const decision = placeVm({
    vm: loc.vm, source: loc.host, mode: sent.mode, hosts, holds, maintenance: fleet?.maintenance() ?? new Set(),
    ...(sent.toSites ? { toSites: sent.toSites } : {}), links: fleet?.links ?? [],
    ...(fleet?.dirtyMbps?.(sent.vmId) !== undefined ? { dirtyMbps: fleet.dirtyMbps(sent.vmId)! } : {}),
  });
  if (decision.chosen === undefined) throw err('VMTC_NO_FEASIBLE_HOST', { vmId: sent.vmId, refused: decision.refused.slice(0, 100), hosts: decision.refused.length });
  return decision;
}

export function registerApi(fastify: FastifyInstance, d: ApiDeps): { admit: Admit } {
  const app = fastify.withTypeProvider<TypeBoxTypeProvider>();
  const { store, hub, runner } = d;
  const reader = requireRole(store, 'reader');
  const orchestrator = requireRole(store, 'orchestrator');
  const admin = requireRole(store, 'admin');
  const security = [{ bearer: [] }];

  const hostEntries = (): { inventory: HostInventory; connected: boolean; lastSeen: number }[] =>
    store.hosts().map((h) => ({ ...h, inventory: hub.inventory(h.inventory.hostId) ?? h.inventory, connected: hub.isConnected(h.inventory.hostId) }));

  app.get('/v1/identity', {
    onRequest: reader,
    schema: {
      operationId: 'getIdentity', tags: ['identity'], security,
      summary: "The controller's public key and its thumbprint (list it as a requester in AAA policies).",
      response: { 200: Identity, ...errorResponses({}, 401, 403) },
    },
  }, async () => d.identity);

  /** Admission (POST /v1/migrations, and the evacuations' migrations): pre-checks, placement
   *  when no destination is named, the capacity hold and the record, then the runner starts it.
   *  A repeated requestId answers 200 with the first migration. */
  const admit: Admit = async (sent, opts) => {
    const now = d.clock.now();
    if (sent.deadline !== undefined && !(Date.parse(sent.deadline) > now)) throw err('VMTC_DEADLINE_INVALID', { deadline: sent.deadline });
    if (sent.policy) checkPolicy(sent.policy, 'request');
    const reqHash = hashRequest(sent);
    const repeated = () => {
      const prior = sent.requestId ? store.migrationByRequestId(sent.requestId) : undefined;
      if (prior && prior.hash !== reqHash) throw err('VMTC_IDEMPOTENCY_CONFLICT', { requestId: sent.requestId, migrationId: prior.row.id });
      return prior?.row;
    };
    const first = repeated();
    if (first) return { status: 200, row: first };
    // No destination named: the controller chooses (fleet/placement.ts), again below where the
    // choice and the hold are made in one synchronous step; this first choice is for the AAA.
    const place = (hosts: ReturnType<typeof hostEntries>) => (sent.destinationHostId !== undefined ? undefined : chooseDestination(sent, hosts, store.holds(), d.fleet));
    if (sent.destinationHostId !== undefined && d.fleet?.maintenance().has(sent.destinationHostId)) throw err('VMTC_HOST_IN_MAINTENANCE', { hostId: sent.destinationHostId });
    const tentative = place(hostEntries());
    const policyWarnings = await checkPolicyUpFront(d, { ...sent, destinationHostId: tentative?.chosen ?? sent.destinationHostId! }, hostEntries());
    const again = repeated();
    if (again) return { status: 200, row: again };
    // Refresh the VM's view at its source before deciding (the cached inventory may lag).
    const hosts = hostEntries();
    // Everything from here to createMigration is synchronous: no other request can interleave,
    // so the capacity check and the hold are atomic (two requests cannot overcommit a host).
    const placement = place(hosts);
    const body: MigrationRequest = { ...sent, destinationHostId: placement ? placement.chosen! : sent.destinationHostId! };
    const inFlight = store.migrations({ vmId: body.vmId, limit: 50 }).find((m) => !TERMINAL.has(m.state));
    const pc = precheck({ vmId: body.vmId, mode: body.mode, destinationHostId: body.destinationHostId, hosts, holds: store.holds(), inFlight: inFlight?.id, overrideAdvisories: body.overrideAdvisories ?? [] });
    const id = d.ids.next('mig');
    const row: MigrationRow = {
      id, vmId: body.vmId, project: pc.vm.project, sourceHostId: pc.source.hostId, destinationHostId: pc.dest.hostId,
      mode: body.mode, state: 'prechecking', request: body,
      ctx: { path: pc.path, sourceState: pc.vm.state, checks: pc.checks, ...(pc.warnings.length + policyWarnings.length ? { warnings: [...pc.warnings, ...policyWarnings] } : {}), ...(placement ? { placement: decisionRecord(placement) } : {}), ...(opts.evacuationId ? { evacuationId: opts.evacuationId } : {}) }, error: null, progress: null, createdAt: now, updatedAt: now,
    };
    store.createMigration(row, { migrationId: id, hostId: pc.dest.hostId, project: pc.vm.project, ...pc.hold }, body.requestId ? reqHash : null, { checks: pc.checks, by: opts.by, ...(placement ? { placedOn: placement.chosen } : {}) });
    d.logger.info({ migrationId: id, vmId: row.vmId, hostId: row.sourceHostId, destHostId: row.destinationHostId, path: pc.path }, 'migration admitted');
    for (const w of pc.warnings) d.logger.warn({ migrationId: id, code: w.code, details: w.details }, 'migration admitted with a known-bad hypervisor release');
    runner.start(row);
    return { status: 202, row: store.migration(id)! };
  };

  app.post('/v1/migrations', {
    onRequest: orchestrator,
    schema: {
      operationId: 'createMigration', tags: ['migrations'], security,
      summary: 'Request a migration. Pre-checks run at once; a failing check answers with its own code and changes nothing.',
      body: MigrationRequestBody,
      response: {
        200: { ...Migration, description: 'a repeated request (same requestId): the first migration' },
        202: { ...Migration, description: 'admitted: the migration runs' },
        // 400, 403, 429: also the AAA's own refusal at admission (policy-precheck.ts).
        ...errorResponses({ body: true }, 401, 403, 404, 409),
      },
    },
  }, async (request, reply) => {
    // ajv has applied the schema's defaults: mode is always set here.
    const { status, row } = await admit(request.body as MigrationRequestIn, { ...(request.principal?.name ? { by: request.principal.name } : {}) });
    return reply.status(status).send(presentMigration(row, store, true));
  });

  app.get('/v1/migrations', {
    onRequest: reader,
    schema: {
      operationId: 'listMigrations', tags: ['migrations'], security,
      summary: 'Migrations, newest first, without their transitions; filtered by state, VM, host (source or destination) and creation time; a page at a time (nextCursor).',
      querystring: MigrationListQuery,
      response: { 200: MigrationList, ...errorResponses({}, 401, 403) },
    },
  }, async (request) => {
    // ajv has applied the schema's default: limit is always set here.
    const page = store.migrationPage(migrationFilter(request.query), request.query.limit ?? 50, request.query.cursor);
    return { migrations: page.rows.map((m) => presentMigration(m, store, false)), ...(page.nextCursor ? { nextCursor: page.nextCursor } : {}) };
  });

  registerControllerMetrics(fastify, { store, hub, runner, onRequest: reader, security });
  registerEventRoutes(app, { ...d, present: (row) => presentMigration(row, store, true), onRequest: reader, security });

  app.get('/v1/migrations/:id', {
    onRequest: reader,
    schema: {
      operationId: 'getMigration', tags: ['migrations'], security,
      summary: 'One migration with every transition.',
      params: IdParams,
      response: { 200: Migration, ...errorResponses({}, 401, 403, 404) },
    },
  }, async (request) => {
    const row = store.migration(request.params.id);
    if (!row) throw err('VMTC_MIGRATION_NOT_FOUND', { migrationId: request.params.id });
    return presentMigration(row, store, true);
  });

  app.post('/v1/migrations/:id/cancel', {
    onRequest: orchestrator,
    schema: {
      operationId: 'cancelMigration', tags: ['migrations'], security,
      summary: 'Ask for a migration to be cancelled (allowed until the switchover is granted, or a cold copy is verified); it then rolls back.',
      params: IdParams,
      response: { 202: { ...Migration, description: 'the cancel is under way' }, ...errorResponses({}, 401, 403, 404, 409) },
    },
  }, async (request, reply) => {
    const row = await runner.cancel(request.params.id);
    return reply.status(202).send(presentMigration(row, store, true));
  });

  registerMigrationControl(app, { ...d, present: (row) => presentMigration(row, store, true), onRequest: orchestrator, security });
  registerPolicyRoutes(app, { ...d, ...(runner.configuredPolicy() ? { controllerPolicy: runner.configuredPolicy()! } : {}), reader, admin, security });

  const presentHost = (h: { inventory: HostInventory; connected: boolean; lastSeen: number }): HostT => ({
    hostId: h.inventory.hostId, site: h.inventory.site, connected: h.connected, lastSeen: new Date(h.lastSeen).toISOString(),
    hypervisor: h.inventory.hypervisor,
    advisories: advisoriesFor(h.inventory.hypervisor).map((a) => ({ id: a.id, summary: a.summary, accelerator: a.accelerator, affectedBelow: a.affected.below, fixedIn: a.fixedIn, commit: a.commit, live: a.live })),
    cpu: { model: h.inventory.cpu.model, vcpus: h.inventory.cpu.vcpus, features: h.inventory.cpu.features.length },
    sharedStorage: h.inventory.sharedStorage, migrationAddress: h.inventory.migrationAddress,
    ...hostUsage(h.inventory, store.holds(h.inventory.hostId)),
    vms: h.inventory.vms.map((v) => ({ vmId: v.vmId, project: v.project, state: v.state })),
  });

  app.get('/v1/hosts', {
    onRequest: reader,
    schema: {
      operationId: 'listHosts', tags: ['hosts'], security,
      summary: 'Hypervisor hosts and their capacity.',
      response: { 200: HostList, ...errorResponses({}, 401, 403) },
    },
  }, async () => ({ hosts: hostEntries().map(presentHost) }));

  app.get('/v1/hosts/:id', {
    onRequest: reader,
    schema: {
      operationId: 'getHost', tags: ['hosts'], security,
      summary: 'Totals, used, held and available vCPU, memory and disk, and per-project use (Nova describeresource).',
      params: IdParams,
      response: { 200: Host, ...errorResponses({}, 401, 403, 404) },
    },
  }, async (request) => {
    const h = hostEntries().find((x) => x.inventory.hostId === request.params.id);
    if (!h) throw err('VMTC_HOST_NOT_FOUND', { hostId: request.params.id });
    return presentHost(h);
  });

  app.get('/v1/vms', {
    onRequest: reader,
    schema: {
      operationId: 'listVms', tags: ['vms'], security,
      summary: 'VMs where the host agents report them.',
      response: { 200: VmList, ...errorResponses({}, 401, 403) },
    },
  }, async () => {
    const vms: Vm[] = [];
    for (const h of hostEntries()) {
      for (const v of h.inventory.vms) vms.push({ vmId: v.vmId, project: v.project, state: v.state, hostId: h.inventory.hostId, site: h.inventory.site, hostConnected: h.connected, vcpus: v.vcpus, memoryMb: v.memoryMb, diskGb: v.diskGb, migrationId: v.migrationId });
    }
    return { vms };
  });

  app.post('/v1/vms', {
    onRequest: admin,
    schema: {
      operationId: 'startVm', tags: ['vms'], security,
      summary: 'Start a VM on a host (operators and the lab use this to place a VM before migrating it).',
      body: StartVmBody,
      // 409: no room on the host now (VMTC_INSUFFICIENT_*, or the agent's own count); 422: the
      // VM fits on no host (VMTC_VM_TOO_LARGE); 502/503/504: the host agent refused, is not
      // connected, or did not answer in time.
      response: { 201: StartedVm, ...errorResponses({ body: true }, 401, 403, 404, 409, 422, 502, 503, 504) },
    },
  }, async (request, reply) => {
    const { hostId, spec } = request.body;
    if (!store.host(hostId)) throw err('VMTC_HOST_NOT_FOUND', { hostId });
    if (!hub.isConnected(hostId)) throw err('VMTC_HOST_NOT_CONNECTED', { hostId });
    const inv = hub.inventory(hostId);
    if (inv) checkRoomToStart(inv, store.holds(hostId), spec, hostEntries().map((h) => h.inventory));
    const vm = await hub.request(hostId, 'vm.start', { spec }, 120_000);
    return reply.status(201).send({ hostId, vmId: vm.vmId, state: vm.state });
  });

  // ---- credentials (admin)
  app.post('/v1/credentials', {
    onRequest: admin,
    schema: {
      operationId: 'createCredential', tags: ['credentials'], security,
      summary: 'Make a bearer credential with a role.',
      body: CredentialBody,
      response: { 201: NewCredential, ...errorResponses({ body: true }, 401, 403) },
    },
  }, async (request, reply) => {
    const token = `vmtc_${d.ids.secret(32)}`;
    const id = d.ids.next('cred');
    store.addCredential({ id, name: request.body.name, role: request.body.role, token, at: d.clock.now() });
    return reply.status(201).send({ id, name: request.body.name, role: request.body.role, token });
  });
  app.get('/v1/credentials', {
    onRequest: admin,
    schema: {
      operationId: 'listCredentials', tags: ['credentials'], security,
      summary: 'Every credential, revoked ones too (never the secret).',
      response: { 200: CredentialList, ...errorResponses({}, 401, 403) },
    },
  }, async () => ({
    credentials: store.listCredentials().map((c) => ({ ...c, createdAt: new Date(c.createdAt).toISOString(), revokedAt: c.revokedAt ? new Date(c.revokedAt).toISOString() : null })),
  }));
  app.delete('/v1/credentials/:id', {
    onRequest: admin,
    schema: {
      operationId: 'revokeCredential', tags: ['credentials'], security,
      summary: 'Revoke a credential: it stops working at once.',
      params: IdParams,
      // No body: typed undefined so the handler sends none.
      response: { 204: Type.Unsafe<undefined>({ type: 'null', description: 'revoked' }), ...errorResponses({}, 401, 403, 404) },
    },
  }, async (request, reply) => {
    if (!store.revokeCredential(request.params.id, d.clock.now())) throw err('VMTC_CREDENTIAL_NOT_FOUND', { id: request.params.id });
    return reply.status(204).send();
  });
  return { admit };
}
