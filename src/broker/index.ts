// The lightpath broker service (docs/broker.md): topology, path computation, bandwidth calendar,
// NSI CS v2 reservations, the token gate, network element drivers and inter-domain peering.
// startBroker() builds it and returns something with close().
import { join } from 'node:path';
import { randomIds, systemClock, type Clock, type Ids } from '../common/clock.ts';
import { commonError } from '../common/errors.ts';
import { baseUrl, buildHttp, parseListen, RATE_LIMIT_DEFAULTS, type RateLimitOptions } from '../common/http.ts';
import { parsePublicUrl, requirePublicUrlFor, resolvePublicUrl } from '../common/public-url.ts';
import { serviceLogger, type Logger } from '../common/log.ts';
import type { NetworkElementDriver } from './driver.ts';
import { createNetworkDriver } from './drivers/registry.ts';
import { TokenGate } from './gate.ts';
import { OperatorCredential } from './operator.ts';
import { PeerLinks } from './peer.ts';
import { registerRoutes } from './routes.ts';
import { BROKER_SECURITY_SCHEMES } from './schemas.ts';
import { BrokerService, type FaultInjection } from './service.ts';
import { BrokerStore } from './store.ts';
import { loadTopology, parseTopology, type Topology } from './topology.ts';
import { IssuerKeys, loadTrust, parseTrust, type TrustConfig } from './trust.ts';

/** Every option of the broker, with its default. */
export interface BrokerOptions {
  /** HOST:PORT to listen on. Default "127.0.0.1:0" (a free port). */
  listen?: string;
  /** State directory: DIR/broker.db and DIR/operator.token (made on first start, 0600). Required. */
  dataDir: string;
  /** This broker's domain name; tokens must carry the audience "broker:<domain>". Required. */
  domain: string;
  /** A topology file path, a parsed document, or a parsed Topology. Required. */
  topology: string | Topology | Record<string, unknown>;
  /** A trust file path or a parsed TrustConfig (PEMs inline). Required. */
  trust: string | TrustConfig;
  /** A driver instance, or the name of a registered one (drivers/registry.ts): "memory" (the
   *  test double, default), "linux", or what the process registered (the `vmtc` binary adds the
   *  lab's "lab-lightpath"). A driver built from a name is closed with the broker. */
  driver?: NetworkElementDriver | string;
  /** How long a held reservation waits for its commit. Default 120 000 ms. */
  holdTimeoutMs?: number;
  clock?: Clock;
  ids?: Ids;
  logger?: Logger;
  /** Test hooks (never set in production). */
  faults?: FaultInjection;
  /** Largest request body in bytes. Default 64 KiB. */
  bodyLimit?: number;
  /** Rate limits of the REST API per client address (README "Rate limits"). Default RATE_LIMIT_DEFAULTS. */
  rateLimit?: Partial<RateLimitOptions>;
  /**
   * The base URL holders use to reach this broker (scheme://host:port, optionally a path prefix):
   * a DPoP proof's htu must be this plus the route's path, whatever Host header the request
   * carries. Default: scheme://HOST:PORT of `listen` (https with the trust file's tls; the port
   * actually bound); required when listening on a wildcard address (src/common/public-url.ts).
   */
  publicUrl?: string;
}

export const BROKER_DEFAULTS = {
  listen: '127.0.0.1:0',
  driver: 'memory',
  holdTimeoutMs: 120_000,
  bodyLimit: 64 * 1024,
  rateLimit: RATE_LIMIT_DEFAULTS,
  // publicUrl: scheme://HOST:PORT of listen, see BrokerOptions.publicUrl.
} as const;

export interface Broker {
  url: string;
  /** The URL holders' proofs must name (BrokerOptions.publicUrl, or url by default). */
  publicUrl: string;
  domain: string;
  service: BrokerService;
  store: BrokerStore;
  driver: NetworkElementDriver;
  topology: Topology;
  /** The operator bearer credential that reads reservations and events (docs/broker.md "Reads"). */
  operatorToken: string;
  /** Where it is kept: DIR/operator.token. */
  operatorTokenFile: string;
  close(): Promise<void>;
}

export async function startBroker(opts: BrokerOptions): Promise<Broker> {
  if (!opts.domain || !/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/.test(opts.domain)) throw commonError('VMTC_CONFIG_INVALID', { field: 'domain', value: opts.domain }, { message: 'domain must be a short name of letters, digits, _ . -' });
  if (!opts.dataDir) throw commonError('VMTC_CONFIG_INVALID', { field: 'data' }, { message: 'data directory is required' });
  const holdTimeoutMs = opts.holdTimeoutMs ?? BROKER_DEFAULTS.holdTimeoutMs;
  if (!(holdTimeoutMs > 0)) throw commonError('VMTC_CONFIG_INVALID', { field: 'holdTimeoutMs', value: holdTimeoutMs }, { message: 'hold timeout must be positive' });
  const { host, port } = parseListen(opts.listen ?? BROKER_DEFAULTS.listen, 'listen');
  // Checked before anything is opened or bound; the default needs the bound port (below).
  if (opts.publicUrl !== undefined) parsePublicUrl(opts.publicUrl);
  else requirePublicUrlFor(host);
  const clock = opts.clock ?? systemClock;
  const ids = opts.ids ?? randomIds;
  const logger = serviceLogger(opts.logger, 'broker', { domain: opts.domain });

  const topology = typeof opts.topology === 'string'
    ? loadTopology(opts.topology, opts.domain)
    : opts.topology.nodes instanceof Map ? (opts.topology as Topology) : parseTopology(opts.topology, opts.domain);
  const trust = typeof opts.trust === 'string' ? loadTrust(opts.trust) : parseTrust(opts.trust);

  // Before anything is started, so a malformed token file fails the start and leaks nothing.
  const operator = OperatorCredential.load(opts.dataDir, () => ids.secret(32));
  const ownDriver = opts.driver === undefined || typeof opts.driver === 'string';
  const driver = typeof opts.driver === 'object' ? opts.driver : await createNetworkDriver(opts.driver ?? BROKER_DEFAULTS.driver, { logger });
  const store = new BrokerStore(join(opts.dataDir, 'broker.db'));
  const peers = new PeerLinks(trust.peers ?? [], trust.tls);
  const keys = new IssuerKeys(trust.issuers, () => clock.now());
  const gate = new TokenGate({ domain: opts.domain, keys, clock, store });
  const service = new BrokerService({ domain: opts.domain, topology, store, driver, peers, clock, ids, logger, holdTimeoutMs, ...(opts.faults ? { faults: opts.faults } : {}) });
  const streams = new Set<{ end(): void }>();
  // Set once listening (the default names the bound port).
  let publicUrl = '';
  let app;
  try {
    store.pruneJtis(Math.floor(clock.now() / 1000));
    await service.restore();
    const https = trust.tls
      ? {
          key: trust.tls.key,
          cert: trust.tls.cert,
          // Peers authenticate with client certificates signed by their CAs; controllers come
          // without one and authenticate with their token and DPoP proof instead.
          ca: (trust.peers ?? []).map((p) => p.ca),
          requestCert: true,
          rejectUnauthorized: false,
        }
      : undefined;
    app = await buildHttp({ logger, title: `vmtc broker (${opts.domain})`, securitySchemes: BROKER_SECURITY_SCHEMES, bodyLimit: opts.bodyLimit ?? BROKER_DEFAULTS.bodyLimit, rateLimit: { ...BROKER_DEFAULTS.rateLimit, ...(opts.rateLimit ?? {}) }, ...(https ? { fastify: { https } } : {}) });
    registerRoutes(app, { domain: opts.domain, service, gate, peers, clock, streams, operator, publicUrl: () => publicUrl, store, issuers: trust.issuers, driver });
    await app.listen({ host, port });
    publicUrl = resolvePublicUrl(opts.publicUrl, { scheme: trust.tls ? 'https' : 'http', host, port: (app.server.address() as { port: number }).port });
  } catch (e) {
    service.close();
    await app?.close().catch(() => undefined);
    store.close();
    if (ownDriver) await driver.close();
    throw e;
  }
  const url = baseUrl(app, trust.tls ? 'https' : 'http');
  // Expired jtis are refused as expired anyway; forget them hourly so the table stays small.
  const prune = clock.setTimeout(function again() {
    store.pruneJtis(Math.floor(clock.now() / 1000));
  }, 3_600_000);
  logger.info({ url, publicUrl, nodes: topology.nodes.size, links: topology.links.size, driver: driver.name, operatorTokenFile: operator.file }, 'broker listening');
  let closing: Promise<void> | undefined;
  return {
    url,
    publicUrl,
    domain: opts.domain,
    service,
    store,
    driver,
    topology,
    operatorToken: operator.token,
    operatorTokenFile: operator.file,
    close() {
      closing ??= (async () => {
        prune.cancel();
        service.close();
        for (const s of [...streams]) s.end();
        await app.close();
        if (ownDriver) await driver.close();
        store.close();
      })();
      return closing;
    },
  };
}
