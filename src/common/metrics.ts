// Prometheus metrics of a vmtc process (README "Metrics"): one prom-client Registry per service
// instance, with the process's default metrics, served in the Prometheus text format. Services
// with a REST API serve GET /metrics on it behind the credential that reads the service's state
// (registerMetricsRoute); the agents, which have none, on a plain-HTTP listener of their own,
// off unless `--metrics-listen` is given (startMetricsListener). Gauges are computed when
// Prometheus scrapes (from the stores and the agents' state), so nothing runs between scrapes.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { FastifyInstance, onRequestHookHandler } from 'fastify';
import { Registry, collectDefaultMetrics } from 'prom-client';
import type { OptionSpec } from './command.ts';
import { commonError } from './errors.ts';
import { parseListen } from './listen.ts';
import { errorResponses } from './schemas.ts';

export { Counter, Gauge, Histogram, Registry } from 'prom-client';

/** Buckets in seconds for migration downtime (tens of ms to a few s) and phase durations. */
export const DOWNTIME_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
export const PHASE_BUCKETS = [0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600];

/** A registry for one service instance, with the default process and Node.js metrics and a
 *  `svc` label on every series (several services may share a host's Prometheus job). */
export function createRegistry(svc: string): Registry {
  const registry = new Registry();
  registry.setDefaultLabels({ svc });
  collectDefaultMetrics({ register: registry });
  // prom-client's totals of active handles, requests and resources are gauges named `_total`,
  // which Prometheus's conventions (and `promtool check metrics`) reserve for counters; the same
  // figures by type stay (nodejs_active_handles, nodejs_active_requests, nodejs_active_resources).
  for (const name of ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total']) registry.removeSingleMetric(name);
  return registry;
}

/** GET /metrics on a service's fastify app, behind `onRequest` (the service's read credential). */
export function registerMetricsRoute(app: FastifyInstance, registry: Registry, opts: { onRequest: onRequestHookHandler; security: Record<string, string[]>[] }): void {
  app.get('/metrics', {
    onRequest: opts.onRequest,
    schema: {
      operationId: 'getMetrics', tags: ['metrics'], security: opts.security,
      summary: 'Prometheus metrics in the text exposition format (docs/metrics.md).',
      // The text is written as it is (a string body with its own content type is not serialised).
      response: { 200: { description: 'the metrics', content: { 'text/plain': { schema: { type: 'string' } } } }, ...errorResponses({}, 401, 403) },
    },
  }, async (_request, reply) => {
    const text = await registry.metrics();
    return reply.type(registry.contentType).send(text);
  });
}

export interface MetricsListener {
  url: string;
  close(): Promise<void>;
}

/** A plain-HTTP listener serving only GET /metrics (the agents' `--metrics-listen`). It has no
 *  authentication: bind it to loopback, or to an address only the Prometheus server reaches. */
export async function startMetricsListener(registry: Registry, listen: { host: string; port: number }): Promise<MetricsListener> {
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '').split('?')[0];
    if (path !== '/metrics') {
      res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ code: 'VMTC_NOT_FOUND', message: 'only GET /metrics is served here' }));
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'application/json' }).end(JSON.stringify({ code: 'VMTC_METHOD_NOT_ALLOWED', message: 'GET /metrics only' }));
      return;
    }
    registry.metrics().then(
      (text) => { res.writeHead(200, { 'content-type': registry.contentType }).end(req.method === 'HEAD' ? undefined : text); },
      () => { res.writeHead(500, { 'content-type': 'application/json' }).end(JSON.stringify({ code: 'VMTC_INTERNAL', message: 'metrics could not be collected' })); },
    );
  });
  server.requestTimeout = 10_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(listen.port, listen.host, () => { server.off('error', reject); resolve(); });
  });
  const a = server.address() as AddressInfo;
  const host = a.family === 'IPv6' ? `[${a.address}]` : a.address;
  return {
    url: `http://${host}:${a.port}/metrics`,
    close: () => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()); }),
  };
}

/** `--metrics-listen` of the agents (off unless given). */
export const METRICS_LISTEN_OPTION: Record<string, OptionSpec> = {
  'metrics-listen': { type: 'string', arg: 'HOST:PORT', help: 'serve Prometheus metrics at http://HOST:PORT/metrics, plain HTTP without authentication: keep HOST a loopback address unless only the Prometheus server can reach it (off by default)' },
};

/**
 * Wrap an agent's start so that, when `listen` (the --metrics-listen value) is given, the agent's
 * metrics are served once it runs and the listener is closed with it. A bad value fails before
 * the agent starts, with VMTC_CONFIG_INVALID naming the field.
 */
export function servingMetrics<A extends { close(): Promise<void> }>(listen: unknown, registryOf: (agent: A) => Registry, start: () => Promise<A>): () => Promise<A> {
  if (listen === undefined) return start;
  const at = parseListen(String(listen), 'metrics-listen');
  return async () => {
    const agent = await start();
    let listener: MetricsListener;
    try {
      listener = await startMetricsListener(registryOf(agent), at);
    } catch (e) {
      await agent.close();
      throw commonError('VMTC_CONFIG_INVALID', { field: 'metrics-listen', value: String(listen), reason: (e as Error).message }, { message: 'cannot listen on --metrics-listen' });
    }
    const close = agent.close.bind(agent);
    agent.close = async () => { await listener.close(); await close(); };
    return agent;
  };
}
