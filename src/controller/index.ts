// Builds the VM Traffic Controller: state store, agent hub (mutual TLS), migration runner and
// REST API. Returns a handle with close().
import { mkdirSync, writeFileSync, existsSync, readFileSync, chmodSync } from 'node:fs';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { buildHttp, baseUrl, RATE_LIMIT_DEFAULTS, type RateLimitOptions } from '../common/http.ts';
import { peerCheck, registerHealthRoutes, storeCheck } from '../common/health-routes.ts';
import { POLICY_PRECHECK_DEFAULTS } from './policy-precheck.ts';
import { createLogger, type Logger } from '../common/log.ts';
import { systemClock, randomIds, type Clock, type Ids } from '../common/clock.ts';
import { commonError, mergeCatalogues } from '../common/errors.ts';
import { ControllerStore } from './store.ts';
import { MigrationRunner, type RunnerOptions } from './runner.ts';
import { registerApi, requireRole } from './api.ts';
import { AgentHub } from './hub.ts';
import { registerEnrollRoutes } from './enroll-routes.ts';
import { FleetStore } from './fleet/store.ts';
import { Evacuations } from './fleet/evacuation.ts';
import { BOOKING_TIMING, Bookings } from './fleet/bookings.ts';
import type { FleetOptions } from './fleet/options.ts';
import { registerEvacuationRoutes } from './evacuation-routes.ts';
import { Monitoring, type MonitoringOptions } from './monitoring/index.ts';
import { registerPlanRoutes } from './plan-routes.ts';
import { ReplicaService } from './replicas/service.ts';
import { BrokerReplicaBandwidth, ReplicaBandwidth, type ReplicaBandwidthOptions } from './replicas/bandwidth.ts';
import { registerReplicaRoutes } from './replica-routes.ts';
import { registerDashboard } from './dashboard/routes.ts';
import { HUB_ERRORS } from './hub-errors.ts';
import { CONTROLLER_ERRORS } from './errors.ts';
import { TERMINAL } from './machine.ts';
import { HubTunnelPort } from './tunnel-port.ts';
import { TUNNEL_ERRORS } from '../common/tunnel-protocol.ts';
import { AaaAuthorization, BrokerLightpath, loadControllerKey } from './integrations.ts';
import type { AuthorizationPort, LightpathPort, TunnelPort } from './ports.ts';
import type { StatsReport } from '../common/agent-protocol.ts';

/** Every code the controller can answer with (its own, the hub's and the common ones). */
export const ALL_CONTROLLER_ERRORS = mergeCatalogues(mergeCatalogues(CONTROLLER_ERRORS, HUB_ERRORS), TUNNEL_ERRORS);

/** Options of the controller, with their defaults in CONTROLLER_DEFAULTS (the one place). */
export interface ControllerOptions {
  /** State directory: controller.db, pki/, admin.token. */
  dataDir: string;
  /** REST API for orchestrators. */
  listen?: { host: string; port: number };
  /** WebSocket endpoint for agents (mutual TLS). */
  agentListen?: { host: string; port: number };
  logger?: Logger;
  clock?: Clock;
  ids?: Ids;
  heartbeatMs?: number;
  agentRequestTimeoutMs?: number;
  /** How long admission waits for the AAA's policy check before it goes on without (default 2000). */
  policyCheckTimeoutMs?: number;
  bodyLimit?: number;
  /** Rate limits of the REST API per client address (README "Rate limits"). */
  rateLimit?: Partial<RateLimitOptions>;
  runner?: Partial<RunnerOptions>;
  /** AAA that grants capability tokens (docs/design.md#live-migration, step 3). Without it the step
   * is skipped. */
  aaaUrl?: string;
  /** Lightpath broker of this domain (step 4). Without it (or without an AAA) the step is skipped. */
  brokerUrl?: string;
  /** PEM of the CA of an https broker. */
  brokerCa?: string;
  /** Serve the REST API over HTTPS with this certificate and key (PEM); docs/deploy.md#tls. */
  tls?: { cert: string; key: string };
  /** Injected integrations (AAA, broker, tunnel); absent ones are recorded as skipped steps. */
  authorization?: AuthorizationPort;
  lightpath?: LightpathPort;
  tunnel?: TunnelPort;
  /** Monitoring, hotspot mitigation and consolidation (docs/monitoring.md; defaults in
   *  MONITORING_DEFAULTS, src/controller/monitoring/options.ts; autoMitigate is off). */
  monitoring?: Partial<MonitoringOptions>;
  /** Placement and evacuation (docs/fleet.md): the lightpaths between sites, for the network
   *  weigher and the evacuation plan (without them every pair of sites counts 1 Gbit/s). */
  fleet?: FleetOptions;
  /** Replica transfers' background reservations (src/controller/replicas/bandwidth.ts), made when
   *  both aaaUrl and brokerUrl are given; false: none (transfers unreserved). */
  replicaBandwidth?: Partial<ReplicaBandwidthOptions> | false;
  /** Called with the hub once it exists, to build integrations that need it (tunnel agents). */
  integrations?: (hub: AgentHub) => { authorization?: AuthorizationPort; lightpath?: LightpathPort; tunnel?: TunnelPort };
}

export const CONTROLLER_DEFAULTS = {
  listen: { host: '127.0.0.1', port: 7700 },
  agentListen: { host: '127.0.0.1', port: 7701 },
  heartbeatMs: 5000,
  agentRequestTimeoutMs: 15_000,
  /** How long admission waits for the AAA's policy check (policy-precheck.ts). */
  policyCheckTimeoutMs: POLICY_PRECHECK_DEFAULTS.timeoutMs,
  bodyLimit: 64 * 1024,
  rateLimit: RATE_LIMIT_DEFAULTS,
  runner: {
    destinationRunTimeoutMs: 60_000,
    defaultDeadlineMs: 30 * 60_000,
    statusPollMs: 2_000,
    defaultListenHost: '127.0.0.1',
  } satisfies RunnerOptions,
} as const;

export interface Controller {
  url: string;
  agentUrl: string;
  adminToken: string;
  app: FastifyInstance;
  hub: AgentHub;
  store: ControllerStore;
  runner: MigrationRunner;
  /** RFC 7638 thumbprint of the controller's key: what AAA policies list as the requester. */
  jkt: string;
  close(): Promise<void>;
}

/** On first start, create the admin credential and write it to DIR/admin.token (0600). */
function ensureAdmin(store: ControllerStore, dataDir: string, ids: Ids, clock: Clock): string {
  const file = join(dataDir, 'admin.token');
  if (store.credentialCount() === 0 || !existsSync(file)) {
    const token = `vmtc_${ids.secret(32)}`;
    store.addCredential({ id: ids.next('cred'), name: 'admin', role: 'admin', token, at: clock.now() });
    writeFileSync(file, token + '\n', { mode: 0o600 });
    chmodSync(file, 0o600);
    return token;
  }
  return readFileSync(file, 'utf8').trim();
}

export async function startController(opts: ControllerOptions): Promise<Controller> {
  if (!opts.dataDir) throw commonError('VMTC_CONFIG_INVALID', { field: 'dataDir' }, { message: 'dataDir is required' });
  const logger = opts.logger ?? createLogger({ svc: 'controller' });
  const clock = opts.clock ?? systemClock;
  const ids = opts.ids ?? randomIds;
  mkdirSync(opts.dataDir, { recursive: true, mode: 0o700 });
  const store = new ControllerStore(join(opts.dataDir, 'controller.db'));
  const cleanups: (() => Promise<void> | void)[] = [() => store.close()];
  const unwind = async () => { for (const c of cleanups.reverse()) await Promise.resolve(c()).catch(() => undefined); };
  try {
    const adminToken = ensureAdmin(store, opts.dataDir, ids, clock);
    const hub = await AgentHub.start({
      logger, db: store.db, dataDir: opts.dataDir, clock, ids,
      listen: opts.agentListen ?? CONTROLLER_DEFAULTS.agentListen,
      heartbeatMs: opts.heartbeatMs ?? CONTROLLER_DEFAULTS.heartbeatMs,
      requestTimeoutMs: opts.agentRequestTimeoutMs ?? CONTROLLER_DEFAULTS.agentRequestTimeoutMs,
    });
    cleanups.push(() => hub.close());
    hub.on('inventory', (_hostId: string, inv) => store.saveHost(inv, true, clock.now()));
    hub.on('connected', (hostId: string) => { if (store.host(hostId)) store.setHostConnected(hostId, true, clock.now()); });
    hub.on('disconnected', (hostId: string) => store.setHostConnected(hostId, false, clock.now()));

    const integ = opts.integrations?.(hub) ?? {};
    const { key, jkt } = loadControllerKey(opts.dataDir);
    const aaaPort = opts.aaaUrl ? new AaaAuthorization(opts.aaaUrl, key, logger.child({ mod: 'aaa-client' })) : undefined;
    const brokerPort = opts.brokerUrl
      ? new BrokerLightpath(opts.brokerUrl, key, logger.child({ mod: 'broker-client' }), aaaPort, opts.brokerCa ? { ca: opts.brokerCa } : {})
      : undefined;
    const authorization = opts.authorization ?? integ.authorization ?? aaaPort;
    const fleet = new FleetStore(store.db);
    const baseLightpath = opts.lightpath ?? integ.lightpath ?? brokerPort;
    // An evacuation books its moves' lightpaths ahead and its migrations take them over (docs/fleet.md "Bookings").
    const bookings = baseLightpath && authorization ? new Bookings(baseLightpath, { fleet, store, aaa: authorization, clock, logger: logger.child({ mod: 'bookings' }), ...(opts.fleet?.booking ? { timing: { ...BOOKING_TIMING, ...opts.fleet.booking } } : {}) }) : undefined;
    const lightpath = bookings ?? baseLightpath;
    // Tunnel agents are found through the hub; with none connected, bicast/prune are no-ops.
    const tunnel = opts.tunnel ?? integ.tunnel ?? new HubTunnelPort(hub, { logger });
    const runner = new MigrationRunner({
      store, hub, logger: logger.child({ mod: 'runner' }), clock, ids,
      options: { ...CONTROLLER_DEFAULTS.runner, ...(opts.runner ?? {}) },
      ...(authorization ? { aaa: authorization } : {}), ...(lightpath ? { lightpath } : {}), ...(tunnel ? { tunnel } : {}),
    });
    cleanups.push(() => runner.close());

    const app = await buildHttp({ logger, title: 'vmtc controller', bodyLimit: opts.bodyLimit ?? CONTROLLER_DEFAULTS.bodyLimit, rateLimit: { ...CONTROLLER_DEFAULTS.rateLimit, ...(opts.rateLimit ?? {}) }, ...(opts.tls ? { fastify: { https: { cert: opts.tls.cert, key: opts.tls.key, minVersion: 'TLSv1.2' } } } : {}) });
    cleanups.push(() => app.close());
    // The web dashboard first: its hook lets a session cookie stand for a credential (docs/dashboard.md).
    registerDashboard(app, { store, clock, ids, logger, tls: !!opts.tls });
    const links = opts.fleet?.links ?? [];
    // Placement weighs a VM's measured dirty rate (docs/monitoring.md profiles: p95, MB/s) over its label's.
    const dirtyMbps = (vmId: string): number | undefined => {
      try {
        const p = monitoring.profile(vmId).dirtyRateMBps;
        return p.samples > 0 ? p.p95 * 8 : undefined;
      } catch {
        return undefined;
      }
    };
    const { admit } = registerApi(app, {
      store, hub, runner, clock, ids, logger, identity: { jkt, publicJwk: key.publicJwk },
      fleet: { maintenance: () => new Set(fleet.maintenance().keys()), links, dirtyMbps },
      admission: { ...(authorization ? { aaa: authorization } : {}), timeoutMs: opts.policyCheckTimeoutMs ?? CONTROLLER_DEFAULTS.policyCheckTimeoutMs, defaultDeadlineMs: opts.runner?.defaultDeadlineMs ?? CONTROLLER_DEFAULTS.runner.defaultDeadlineMs },
    });
    registerEnrollRoutes(app, hub, { requireAdmin: requireRole(store, 'admin') });
    const evacuations = new Evacuations({ fleet, store, hub, admit, runner, clock, ids, logger: logger.child({ mod: 'evacuation' }), links, dirtyMbps, ...(bookings ? { bookings } : {}) });
    cleanups.push(() => evacuations.close());
    registerEvacuationRoutes(app, { store, fleet, evacuations, clock, reader: requireRole(store, 'reader'), orchestrator: requireRole(store, 'orchestrator'), security: [{ bearer: [] }] });
    // Monitoring (docs/monitoring.md): the agents' stats events, profiles and fleet plans.
    const monitoring = new Monitoring({ store, hub, clock, logger: logger.child({ mod: 'monitoring' }), ...(opts.monitoring ? { options: opts.monitoring } : {}) });
    cleanups.push(() => monitoring.close());
    hub.on('event', (hostId: string, name: string, data: unknown) => { if (name === 'stats') monitoring.ingest(hostId, data as StatsReport); });
    registerPlanRoutes(app, { monitoring, store, hub, reader: requireRole(store, 'reader'), orchestrator: requireRole(store, 'orchestrator'), security: [{ bearer: [] }], autoAuthorization: `Bearer ${adminToken}` });
    // Replicas (docs/disks.md#replicas): disks pre-seeded at a destination and kept warm.
    // With an AAA and a broker, every seed and delta runs under a background reservation.
    const replicaBandwidth = aaaPort && opts.brokerUrl && opts.replicaBandwidth !== false
      ? new ReplicaBandwidth({ port: new BrokerReplicaBandwidth(opts.brokerUrl, key, aaaPort, logger.child({ mod: 'replica-bandwidth' }), opts.brokerCa ? { ca: opts.brokerCa } : {}), db: store.db, hub, clock, ids, logger: logger.child({ mod: 'replica-bandwidth' }), ...(opts.replicaBandwidth ? { options: opts.replicaBandwidth } : {}) })
      : undefined;
    const replicas = new ReplicaService({ store, hub, clock, ids, logger: logger.child({ mod: 'replicas' }), ...(replicaBandwidth ? { bandwidth: replicaBandwidth } : {}) });
    cleanups.push(() => replicas.close());
    registerReplicaRoutes(app, { replicas, clock, reader: requireRole(store, 'reader'), orchestrator: requireRole(store, 'orchestrator'), security: [{ bearer: [] }] });
    registerHealthRoutes(app, { store: storeCheck(store.db), aaa: peerCheck(opts.aaaUrl), broker: peerCheck(opts.brokerUrl, opts.brokerCa ? { tls: { ca: opts.brokerCa } } : {}) }, { clock });
    const listen = opts.listen ?? CONTROLLER_DEFAULTS.listen;
    await app.listen({ host: listen.host, port: listen.port });
    const url = baseUrl(app, opts.tls ? 'https' : 'http');

    // Reconcile what a previous run left unfinished: ask the agents, do not guess.
    for (const row of store.activeMigrations(TERMINAL)) runner.reconcile(row);
    runner.releaseLeftovers();
    evacuations.resume();
    replicas.resume();

    logger.info({ url, agentUrl: hub.url, dataDir: opts.dataDir, jkt }, 'controller started');
    let closed = false;
    return {
      url, agentUrl: hub.url, adminToken, app, hub, store, runner, jkt,
      async close() {
        if (closed) return;
        closed = true;
        await unwind();
      },
    };
  } catch (e) {
    await unwind();
    throw e;
  }
}
