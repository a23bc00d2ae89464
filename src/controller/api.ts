// The controller's REST API for orchestrators (issue 2). Every route has a JSON Schema (unknown
// fields refused), every error is { code, message, details? } from the catalogue in errors.ts.
import type { FastifyInstance, FastifyRequest, preHandlerHookHandler } from 'fastify';
import { createHash } from 'node:crypto';
import { errorSchema } from '../common/http.ts';
import { commonError } from '../common/errors.ts';
import type { Clock, Ids } from '../common/clock.ts';
import type { Logger } from '../common/log.ts';
import type { HostInventory, VmSpec } from '../common/agent-protocol.ts';
import { err } from './errors.ts';
import { hostUsage, precheck } from './capacity.ts';
import { TERMINAL, STATES } from './machine.ts';
import type { ControllerStore, MigrationRequest, MigrationRow } from './store.ts';
import type { MigrationRunner } from './runner.ts';
import type { HubPort } from './ports.ts';

export type Role = 'admin' | 'orchestrator' | 'reader';
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
  identity: { jkt: string; publicJwk: unknown };
}

/** preHandler that requires a bearer credential with at least `role`. */
export function requireRole(store: ControllerStore, role: Role): preHandlerHookHandler {
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

const resources = {
  type: 'object',
  properties: { vcpus: { type: 'number' }, memoryMb: { type: 'number' }, diskGb: { type: 'number' } },
} as const;

const migrationSchema = {
  type: 'object',
  additionalProperties: true,
  properties: {
    id: { type: 'string' }, vmId: { type: 'string' }, project: { type: 'string' }, mode: { type: 'string' },
    state: { type: 'string', enum: [...STATES] }, sourceHostId: { type: 'string' }, destinationHostId: { type: 'string' },
    path: { type: 'string' }, request: { type: 'object', additionalProperties: true },
    progress: { type: 'object', additionalProperties: true, nullable: true },
    error: { ...errorSchema, nullable: true },
    steps: { type: 'object', additionalProperties: true },
    timings: { type: 'object', additionalProperties: { type: 'number' } },
    result: { type: 'object', additionalProperties: true },
    warnings: { type: 'array', items: { type: 'object', additionalProperties: true } },
    transitions: { type: 'array', items: { type: 'object', additionalProperties: true } },
    createdAt: { type: 'string' }, updatedAt: { type: 'string' },
  },
} as const;

/** `:id` in a route path. */
const idParams = { type: 'object', properties: { id: { type: 'string', maxLength: 128 } } } as const;

const errors = { 400: errorSchema, 401: errorSchema, 403: errorSchema, 404: errorSchema, 409: errorSchema };

function hashRequest(r: MigrationRequest): string {
  const { requestId: _ignored, ...rest } = r;
  return createHash('sha256').update(JSON.stringify(Object.keys(rest).sort().map((k) => [k, (rest as Record<string, unknown>)[k]]))).digest('hex');
}

export function presentMigration(row: MigrationRow, store: ControllerStore, withTransitions: boolean) {
  const iso = (t: number) => new Date(t).toISOString();
  return {
    id: row.id, vmId: row.vmId, project: row.project, mode: row.mode, path: row.ctx.path, state: row.state,
    terminal: TERMINAL.has(row.state),
    sourceHostId: row.sourceHostId, destinationHostId: row.destinationHostId, request: row.request,
    progress: row.progress, error: row.error,
    steps: { checks: row.ctx.checks, token: row.ctx.token, lightpath: row.ctx.lightpath, incoming: row.ctx.incoming, tunnel: row.ctx.tunnel, ...(row.ctx.cold ? { cold: row.ctx.cold } : {}) },
    timings: row.ctx.timings ?? {}, result: row.ctx.result ?? {}, warnings: row.ctx.warnings ?? [],
    createdAt: iso(row.createdAt), updatedAt: iso(row.updatedAt),
    ...(withTransitions ? { transitions: store.transitions(row.id).map((t) => ({ ...t, at: iso(t.at) })) } : {}),
  };
}

export function registerApi(app: FastifyInstance, d: ApiDeps): void {
  const { store, hub, runner } = d;
  const reader = requireRole(store, 'reader');
  const orchestrator = requireRole(store, 'orchestrator');
  const admin = requireRole(store, 'admin');
  const security = [{ bearer: [] }];

  const hostEntries = (): { inventory: HostInventory; connected: boolean; lastSeen: number }[] =>
    store.hosts().map((h) => ({ ...h, inventory: hub.inventory(h.inventory.hostId) ?? h.inventory, connected: hub.isConnected(h.inventory.hostId) }));

  app.get('/healthz', { schema: { hide: true } }, async () => ({ ok: true }));
  app.get('/v1/identity', {
    preHandler: reader,
    schema: { summary: "The controller's public key and its thumbprint (list it as a requester in AAA policies).", security },
  }, async () => d.identity);

  app.post<{ Body: MigrationRequest }>('/v1/migrations', {
    preHandler: orchestrator,
    schema: {
      summary: 'Request a migration. Pre-checks run at once; a failing check answers with its own code and changes nothing.',
      security,
      body: {
        type: 'object', additionalProperties: false, required: ['vmId', 'destinationHostId'],
        properties: {
          vmId: { type: 'string', minLength: 1, maxLength: 128 },
          destinationHostId: { type: 'string', minLength: 1, maxLength: 128 },
          mode: { type: 'string', enum: ['live', 'cold', 'auto'], default: 'live' },
          maxDowntimeMs: { type: 'integer', minimum: 1, maximum: 600_000 },
          bandwidthMbps: { type: 'number', exclusiveMinimum: 0, maximum: 1_000_000 },
          deadline: { type: 'string', format: 'date-time' },
          requestId: { type: 'string', minLength: 1, maxLength: 128, description: 'idempotency key: a repeated request returns the first migration' },
          autoConverge: { type: 'boolean' }, postcopy: { type: 'boolean' }, multifd: { type: 'boolean' },
          suspend: { type: 'boolean', description: 'non-live (suspend, copy, resume): the VM is paused for the whole copy; for comparison with live migration' },
          verifyTcp: {
            type: 'object', additionalProperties: false, required: ['host', 'port'],
            description: 'cold path: after booting at the destination, this TCP service of the guest must answer before the source is removed (EGI D4.4 verification)',
            properties: { host: { type: 'string', minLength: 1, maxLength: 255 }, port: { type: 'integer', minimum: 1, maximum: 65535 } },
          },
        },
      },
      response: { 200: migrationSchema, 202: migrationSchema, ...errors },
    },
  }, async (request, reply) => {
    const body = request.body;
    const now = d.clock.now();
    if (body.deadline !== undefined && !(Date.parse(body.deadline) > now)) throw err('VMTC_DEADLINE_INVALID', { deadline: body.deadline });
    const reqHash = hashRequest(body);
    if (body.requestId) {
      const prior = store.migrationByRequestId(body.requestId);
      if (prior) {
        if (prior.hash !== reqHash) throw err('VMTC_IDEMPOTENCY_CONFLICT', { requestId: body.requestId, migrationId: prior.row.id });
        return reply.status(200).send(presentMigration(prior.row, store, true));
      }
    }
    // Refresh the VM's view at its source before deciding (the cached inventory may lag).
    const hosts = hostEntries();
    // Everything from here to createMigration is synchronous: no other request can interleave,
    // so the capacity check and the hold are atomic (two requests cannot overcommit a host).
    const inFlight = store.migrations({ vmId: body.vmId, limit: 50 }).find((m) => !TERMINAL.has(m.state));
    const pc = precheck({ vmId: body.vmId, mode: body.mode, destinationHostId: body.destinationHostId, hosts, holds: store.holds(), inFlight: inFlight?.id });
    const id = d.ids.next('mig');
    const row: MigrationRow = {
      id, vmId: body.vmId, project: pc.vm.project, sourceHostId: pc.source.hostId, destinationHostId: pc.dest.hostId,
      mode: body.mode, state: 'prechecking', request: body,
      ctx: { path: pc.path, sourceState: pc.vm.state, checks: pc.checks }, error: null, progress: null, createdAt: now, updatedAt: now,
    };
    store.createMigration(row, { migrationId: id, hostId: pc.dest.hostId, project: pc.vm.project, ...pc.hold }, body.requestId ? reqHash : null, { checks: pc.checks, by: request.principal?.name });
    d.logger.info({ migrationId: id, vmId: row.vmId, hostId: row.sourceHostId, destHostId: row.destinationHostId, path: pc.path }, 'migration admitted');
    runner.start(row);
    return reply.status(202).send(presentMigration(store.migration(id)!, store, true));
  });

  app.get<{ Querystring: { state?: string; vmId?: string; limit?: number } }>('/v1/migrations', {
    preHandler: reader,
    schema: {
      security,
      querystring: {
        type: 'object', additionalProperties: false,
        properties: { state: { type: 'string', enum: [...STATES] }, vmId: { type: 'string', maxLength: 128 }, limit: { type: 'integer', minimum: 1, maximum: 1000, default: 100 } },
      },
      response: { 200: { type: 'object', properties: { migrations: { type: 'array', items: migrationSchema } } }, ...errors },
    },
  }, async (request) => ({ migrations: store.migrations(request.query).map((m) => presentMigration(m, store, false)) }));

  app.get<{ Params: { id: string } }>('/v1/migrations/:id', {
    preHandler: reader,
    schema: { security, params: idParams, response: { 200: migrationSchema, ...errors } },
  }, async (request) => {
    const row = store.migration(request.params.id);
    if (!row) throw err('VMTC_MIGRATION_NOT_FOUND', { migrationId: request.params.id });
    return presentMigration(row, store, true);
  });

  // Server-sent events for one migration, so an orchestrator follows it without polling:
  // `snapshot` (the record as GET returns it) at once, then `transition` on every state change
  // and `progress` as the copy goes (at most ~4/s), and `end` with the final record when it is
  // terminal, after which the stream closes. A comment line every 15 s keeps proxies from
  // dropping a quiet stream.
  const streams = new Set<() => void>();
  app.addHook('preClose', (done) => {
    for (const end of [...streams]) end();
    done();
  });
  app.get<{ Params: { id: string } }>('/v1/migrations/:id/events', {
    preHandler: reader,
    schema: {
      summary: 'Follow one migration as server-sent events: snapshot, transition, progress, end.',
      security, params: idParams, response: { ...errors },
    },
  }, async (request, reply) => {
    const id = request.params.id;
    const row = store.migration(id);
    if (!row) throw err('VMTC_MIGRATION_NOT_FOUND', { migrationId: id });
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
    const send = (event: string, data: unknown) => res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
    let lastSeq = store.transitions(id).at(-1)?.seq ?? 0;
    const end = () => {
      runner.off('change', onChange);
      runner.off('progress', onProgress);
      clearInterval(keepAlive);
      streams.delete(end);
      if (!res.writableEnded) res.end();
    };
    const finishIfTerminal = () => {
      const cur = store.migration(id);
      if (cur && TERMINAL.has(cur.state)) {
        send('end', presentMigration(cur, store, true));
        end();
      }
    };
    const onChange = (mid: string) => {
      if (mid !== id) return;
      for (const t of store.transitions(id).filter((x) => x.seq > lastSeq)) {
        lastSeq = t.seq;
        send('transition', { ...t, at: new Date(t.at).toISOString(), migrationId: id });
      }
      finishIfTerminal();
    };
    const onProgress = (mid: string, p: unknown) => { if (mid === id) send('progress', p); };
    const keepAlive = setInterval(() => res.write(': keep-alive\n\n'), 15_000);
    keepAlive.unref();
    runner.on('change', onChange);
    runner.on('progress', onProgress);
    streams.add(end);
    request.raw.on('close', end);
    send('snapshot', presentMigration(row, store, true));
    finishIfTerminal();
  });

  app.post<{ Params: { id: string } }>('/v1/migrations/:id/cancel', {
    preHandler: orchestrator,
    schema: { security, params: idParams, response: { 202: migrationSchema, ...errors } },
  }, async (request, reply) => {
    const row = await runner.cancel(request.params.id);
    return reply.status(202).send(presentMigration(row, store, true));
  });

  const usageSchema = {
    type: 'object', additionalProperties: true,
    properties: { hostId: { type: 'string' }, connected: { type: 'boolean' }, totals: resources, used: resources, held: resources, available: resources },
  } as const;
  const presentHost = (h: { inventory: HostInventory; connected: boolean; lastSeen: number }) => ({
    hostId: h.inventory.hostId, site: h.inventory.site, connected: h.connected, lastSeen: new Date(h.lastSeen).toISOString(),
    hypervisor: h.inventory.hypervisor, cpu: { model: h.inventory.cpu.model, vcpus: h.inventory.cpu.vcpus, features: h.inventory.cpu.features.length },
    sharedStorage: h.inventory.sharedStorage, migrationAddress: h.inventory.migrationAddress,
    ...hostUsage(h.inventory, store.holds(h.inventory.hostId)),
    vms: h.inventory.vms.map((v) => ({ vmId: v.vmId, project: v.project, state: v.state })),
  });

  app.get('/v1/hosts', { preHandler: reader, schema: { security, response: { 200: { type: 'object', properties: { hosts: { type: 'array', items: usageSchema } } }, ...errors } } },
    async () => ({ hosts: hostEntries().map(presentHost) }));

  app.get<{ Params: { id: string } }>('/v1/hosts/:id', {
    preHandler: reader,
    schema: { summary: 'Totals, used, held and available vCPU, memory and disk, and per-project use (Nova describeresource).', security, params: idParams, response: { 200: usageSchema, ...errors } },
  }, async (request) => {
    const h = hostEntries().find((x) => x.inventory.hostId === request.params.id);
    if (!h) throw err('VMTC_HOST_NOT_FOUND', { hostId: request.params.id });
    return presentHost(h);
  });

  app.get('/v1/vms', { preHandler: reader, schema: { security } }, async () => {
    const vms: Record<string, unknown>[] = [];
    for (const h of hostEntries()) {
      for (const v of h.inventory.vms) vms.push({ vmId: v.vmId, project: v.project, state: v.state, hostId: h.inventory.hostId, site: h.inventory.site, hostConnected: h.connected, vcpus: v.vcpus, memoryMb: v.memoryMb, diskGb: v.diskGb, migrationId: v.migrationId });
    }
    return { vms };
  });

  app.post<{ Body: { hostId: string; spec: VmSpec } }>('/v1/vms', {
    preHandler: admin,
    schema: {
      summary: 'Start a VM on a host (operators and the lab use this to place a VM before migrating it).',
      security,
      body: {
        type: 'object', additionalProperties: false, required: ['hostId', 'spec'],
        properties: {
          hostId: { type: 'string', minLength: 1, maxLength: 128 },
          spec: {
            type: 'object', additionalProperties: false, required: ['vmId', 'project', 'vcpus', 'memoryMb', 'diskGb'],
            properties: {
              vmId: { type: 'string', pattern: '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$' }, project: { type: 'string', minLength: 1, maxLength: 64 },
              vcpus: { type: 'integer', minimum: 1, maximum: 256 }, memoryMb: { type: 'integer', minimum: 16, maximum: 4_194_304 }, diskGb: { type: 'number', minimum: 0 },
              kernel: { type: 'string' }, initrd: { type: 'string' }, append: { type: 'string', maxLength: 4096 },
              disks: { type: 'array', maxItems: 16, items: { type: 'object', additionalProperties: false, required: ['path', 'format'], properties: { path: { type: 'string' }, format: { type: 'string', enum: ['qcow2', 'raw'] }, readonly: { type: 'boolean' } } } },
              nics: { type: 'array', maxItems: 8, items: { type: 'object', additionalProperties: false, required: ['mac', 'bridge'], properties: { mac: { type: 'string', pattern: '^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$' }, bridge: { type: 'string', maxLength: 15 } } } },
              serialPorts: { type: 'integer', minimum: 0, maximum: 4 },
              extra: { type: 'object', additionalProperties: true },
            },
          },
        },
      },
    },
  }, async (request, reply) => {
    const { hostId, spec } = request.body;
    if (!store.host(hostId)) throw err('VMTC_HOST_NOT_FOUND', { hostId });
    if (!hub.isConnected(hostId)) throw err('VMTC_HOST_NOT_CONNECTED', { hostId });
    const vm = await hub.request(hostId, 'vm.start', { spec }, 120_000);
    return reply.status(201).send({ hostId, vmId: vm.vmId, state: vm.state });
  });

  // ---- credentials (admin)
  app.post<{ Body: { name: string; role: Role } }>('/v1/credentials', {
    preHandler: admin,
    schema: {
      security,
      body: { type: 'object', additionalProperties: false, required: ['name', 'role'], properties: { name: { type: 'string', minLength: 1, maxLength: 64 }, role: { type: 'string', enum: ['admin', 'orchestrator', 'reader'] } } },
      response: { 201: { type: 'object', properties: { id: { type: 'string' }, name: { type: 'string' }, role: { type: 'string' }, token: { type: 'string' } } }, ...errors },
    },
  }, async (request, reply) => {
    const token = `vmtc_${d.ids.secret(32)}`;
    const id = d.ids.next('cred');
    store.addCredential({ id, name: request.body.name, role: request.body.role, token, at: d.clock.now() });
    return reply.status(201).send({ id, name: request.body.name, role: request.body.role, token });
  });
  app.get('/v1/credentials', { preHandler: admin, schema: { security } }, async () => ({
    credentials: store.listCredentials().map((c) => ({ ...c, createdAt: new Date(c.createdAt).toISOString(), revokedAt: c.revokedAt ? new Date(c.revokedAt).toISOString() : null })),
  }));
  app.delete<{ Params: { id: string } }>('/v1/credentials/:id', { preHandler: admin, schema: { security, params: idParams } }, async (request, reply) => {
    if (!store.revokeCredential(request.params.id, d.clock.now())) throw err('VMTC_CREDENTIAL_NOT_FOUND', { id: request.params.id });
    return reply.status(204).send();
  });
}
