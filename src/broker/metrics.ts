// The broker's Prometheus metrics (README "Metrics"): reservations by NSI state, bandwidth booked
// per link now, capability tokens accepted and refused (by code), served on GET /metrics behind
// the operator credential. Gauges read the store and the calendar when Prometheus scrapes;
// token counts come from the routes' answers (fastify hooks). Where the network driver reports
// its data plane (the lab's delay line does), each provisioned segment's delivered rate, queueing
// delay and drops per direction too.
import type { FastifyInstance, onRequestHookHandler } from 'fastify';
import { Counter, Gauge, createRegistry, registerMetricsRoute, type Registry } from '../common/metrics.ts';
import { toVmtcError } from '../common/errors.ts';
import type { Clock } from '../common/clock.ts';
import type { BrokerService } from './service.ts';
import type { BrokerStore } from './store.ts';
import type { DataPlaneStats, NetworkElementDriver } from './driver.ts';

export interface BrokerMetricsDeps {
  service: Pick<BrokerService, 'calendar'>;
  store: Pick<BrokerStore, 'live'>;
  driver?: Pick<NetworkElementDriver, 'dataPlaneStats'>;
  clock: Clock;
  onRequest: onRequestHookHandler;
  security: Record<string, string[]>[];
}

export function registerBrokerMetrics(app: FastifyInstance, d: BrokerMetricsDeps): Registry {
  const registry = createRegistry('broker');
  const registers = [registry];
  new Gauge({
    name: 'vmtc_broker_reservations', help: 'Reservations not terminated, by NSI reservation, provision and life-cycle state.', labelNames: ['reservation_state', 'provision_state', 'lifecycle_state'], registers,
    collect() {
      this.reset();
      for (const r of d.store.live()) this.inc({ reservation_state: r.reservationState, provision_state: r.provisionState, lifecycle_state: r.lifecycleState });
    },
  });
  new Gauge({
    name: 'vmtc_broker_bandwidth_booked_mbps', help: 'Bandwidth booked on a link now (Mb/s), over the links of reservations not terminated.', labelNames: ['link'], registers,
    collect() {
      this.reset();
      const nowSec = Math.floor(d.clock.now() / 1000);
      const links = new Set(d.store.live().flatMap((r) => r.path?.links ?? []));
      for (const link of links) this.set({ link }, d.service.calendar.peak(link, nowSec, nowSec + 1));
    },
  });
  const dp = d.driver?.dataPlaneStats?.bind(d.driver);
  if (dp) {
    // One read of the driver per scrape, shared by the gauges below (prom-client collects each
    // metric in turn; the first collect fetches, the others reuse it within the same tick).
    let pending: Promise<DataPlaneStats[]> | null = null;
    const stats = () => {
      if (!pending) {
        pending = dp().catch(() => []);
        void pending.finally(() => setImmediate(() => { pending = null; }));
      }
      return pending;
    };
    const labelNames = ['connection', 'direction'] as const;
    const gauge = (name: string, help: string, pick: (s: DataPlaneStats) => number) => new Gauge({
      name, help, labelNames, registers,
      async collect() {
        this.reset();
        for (const s of await stats()) this.set({ connection: s.connectionId, direction: s.direction }, pick(s));
      },
    });
    gauge('vmtc_broker_dataplane_delivered_rate_bytes', 'Rate the data plane delivered over the driver\'s last interval, bytes per second, per segment and direction.', (s) => (s.deliveredMbps * 1e6) / 8);
    gauge('vmtc_broker_dataplane_queue_delay_seconds', 'Median queueing delay in the data plane over the driver\'s last interval, per segment and direction.', (s) => s.queueP50Ms / 1000);
    gauge('vmtc_broker_dataplane_queue_delay_max_seconds', 'Worst queueing delay in the data plane over the driver\'s last interval, per segment and direction.', (s) => s.queueMaxMs / 1000);
    gauge('vmtc_broker_dataplane_delivered_packets', 'Packets the data plane delivered since the segment was provisioned, per direction.', (s) => s.packets);
    gauge('vmtc_broker_dataplane_dropped_packets', 'Packets the data plane dropped (queue full) since the segment was provisioned, per direction.', (s) => s.drops);
  }
  const accepted = new Counter({ name: 'vmtc_broker_tokens_accepted_total', help: 'Reservations made with a capability token that verified (POST /v1/reservations answered 200 or 201).', registers });
  const refused = new Counter({ name: 'vmtc_broker_tokens_refused_total', help: 'Requests whose capability token or proof was refused, by code.', labelNames: ['reason'], registers });
  accepted.inc(0);
  app.addHook('onError', async (_request, _reply, error) => {
    const code = toVmtcError(error).code;
    if (code.startsWith('VMTC_TOKEN_') || code.includes('PROOF')) refused.inc({ reason: code });
  });
  app.addHook('onResponse', async (request, reply) => {
    if (request.method === 'POST' && request.routeOptions.url === '/v1/reservations' && (reply.statusCode === 200 || reply.statusCode === 201)) accepted.inc();
  });
  registerMetricsRoute(app, registry, d);
  return registry;
}
