// The controller's Prometheus metrics (README "Metrics"). Names follow Prometheus's conventions
// and, where the meaning is the same, KubeVirt's migration metrics (data processed and
// remaining, dirty memory rate, memory transfer rate, succeeded and failed). Gauges are read
// from the store and the hub when Prometheus scrapes; counters and histograms move when a
// migration reaches a terminal state (the runner's 'finished' event).
import type { FastifyInstance, onRequestHookHandler } from 'fastify';
import { Counter, DOWNTIME_BUCKETS, Gauge, Histogram, PHASE_BUCKETS, createRegistry, registerMetricsRoute, type Registry } from '../common/metrics.ts';
import { STATES, TERMINAL, type MigrationState } from './machine.ts';
import type { ControllerStore, MigrationRow } from './store.ts';
import type { MigrationRunner } from './runner.ts';

/** How a terminal state counts in `vmtc_migrations_total{result}`. */
const RESULT: Partial<Record<MigrationState, string>> = { completed: 'succeeded', failed: 'failed', rolled_back: 'rolled_back', cancelled: 'cancelled' };

export interface ControllerMetricsDeps {
  store: ControllerStore;
  /** The hub's agent list (the real hub has it; a test's port may not). */
  hub: object & { agents?(): { kind: string; connected: boolean }[] };
  runner: MigrationRunner;
}

/** Client-seen downtime figures besides the hypervisor's, by the field of the record's
 *  `downtime` that carries them (measured by the tunnel agent: docs/tunnel.md), read by name. */
const DOWNTIME_FIELDS: Record<string, string> = { tunnelPassive: 'tunnel_passive', tunnelProbe: 'tunnel_probe' };

/** The downtime figures (ms) a finished migration's record carries, by source label: the
 *  hypervisor's own, and each tunnel measurement's longest gap when it saw one. */
export function downtimesOf(row: MigrationRow): Record<string, number> {
  const out: Record<string, number> = {};
  const downtime = ((row.ctx as { downtime?: unknown }).downtime ?? {}) as Record<string, unknown>;
  const hypervisor = row.ctx.result?.downtimeMs ?? downtime.hypervisor;
  if (typeof hypervisor === 'number' && Number.isFinite(hypervisor)) out.hypervisor = hypervisor;
  for (const [field, label] of Object.entries(DOWNTIME_FIELDS)) {
    const gap = (downtime[field] as { gapMs?: unknown } | undefined)?.gapMs;
    if (typeof gap === 'number' && Number.isFinite(gap) && gap >= 0) out[label] = gap;
  }
  return out;
}

export function createControllerMetrics(d: ControllerMetricsDeps): Registry {
  const registry = createRegistry('controller');
  const registers = [registry];
  const { store } = d;
  // The migrations in flight, read once a scrape: every gauge's collect runs in the same turn of
  // the event loop (prom-client starts them all before awaiting any), so the list is dropped at
  // the next microtask.
  let inFlight: MigrationRow[] | undefined;
  const active = (): MigrationRow[] => {
    if (!inFlight) {
      inFlight = store.activeMigrations(TERMINAL);
      queueMicrotask(() => { inFlight = undefined; });
    }
    return inFlight;
  };

  new Gauge({
    name: 'vmtc_migrations', help: 'Migrations in flight, by state.', labelNames: ['state'], registers,
    collect() {
      this.reset();
      const byState = new Map<string, number>(STATES.filter((s) => !TERMINAL.has(s)).map((s) => [s, 0]));
      for (const m of active()) byState.set(m.state, (byState.get(m.state) ?? 0) + 1);
      for (const [state, n] of byState) this.set({ state }, n);
    },
  });
  // KubeVirt's kubevirt_vmi_migration_* gauges: one series per migration in flight (bounded by
  // the migrations in flight; a finished one's series disappear at the next scrape).
  const progress = [
    ['vmtc_migration_data_processed_bytes', 'Bytes the hypervisor has sent so far, per migration in flight.', 'transferredBytes', 1],
    ['vmtc_migration_data_remaining_bytes', 'Bytes still to send, per migration in flight.', 'remainingBytes', 1],
    ['vmtc_migration_data_total_bytes', 'Bytes of the copy in total, per migration in flight.', 'totalBytes', 1],
    // The hypervisor reports dirty pages a second; QEMU's target page is 4 KiB.
    ['vmtc_migration_dirty_memory_rate_bytes', 'Memory dirtied a second (bytes/s), per migration in flight.', 'dirtyPagesRate', 4096],
    ['vmtc_migration_memory_transfer_rate_bytes', 'Memory sent a second (bytes/s), per migration in flight.', 'throughputMbps', 1e6 / 8],
  ] as const;
  for (const [name, help, field, factor] of progress) {
    new Gauge({
      name, help, labelNames: ['migration', 'vm'], registers,
      collect() {
        this.reset();
        for (const m of active()) {
          const v = (m.progress as Record<string, unknown> | null)?.[field];
          if (typeof v === 'number' && Number.isFinite(v)) this.set({ migration: m.id, vm: m.vmId }, v * factor);
        }
      },
    });
  }
  new Gauge({
    name: 'vmtc_host_capacity_held', help: 'Capacity held on a host for incoming migrations, by resource (vcpus, memory_bytes, disk_bytes).', labelNames: ['host', 'resource'], registers,
    collect() {
      this.reset();
      for (const h of store.hosts()) for (const resource of ['vcpus', 'memory_bytes', 'disk_bytes']) this.set({ host: h.inventory.hostId, resource }, 0);
      for (const h of store.holds()) {
        this.inc({ host: h.hostId, resource: 'vcpus' }, h.vcpus);
        this.inc({ host: h.hostId, resource: 'memory_bytes' }, h.memoryMb * 1024 * 1024);
        this.inc({ host: h.hostId, resource: 'disk_bytes' }, h.diskGb * 1024 ** 3);
      }
    },
  });
  new Gauge({
    name: 'vmtc_agent_links_up', help: 'Agent links connected to the hub, by agent kind.', labelNames: ['kind'], registers,
    collect() {
      this.reset();
      const up = { host: 0, tunnel: 0 };
      const agents = d.hub.agents?.() ?? [];
      for (const a of agents) if (a.connected) up[a.kind as keyof typeof up] = (up[a.kind as keyof typeof up] ?? 0) + 1;
      for (const [kind, n] of Object.entries(up)) this.set({ kind }, n);
    },
  });

  const total = new Counter({ name: 'vmtc_migrations_total', help: 'Migrations that ended, by result and requested mode.', labelNames: ['result', 'mode'], registers });
  const succeeded = new Counter({ name: 'vmtc_migration_succeeded_total', help: 'Migrations that completed (KubeVirt: migration_succeeded).', registers });
  const failed = new Counter({ name: 'vmtc_migration_failed_total', help: 'Migrations that did not complete: failed, rolled back or cancelled (KubeVirt: migration_failed).', registers });
  const rollbacks = new Counter({ name: 'vmtc_migration_rollbacks_total', help: 'Migrations rolled back, by the error code that caused it (cancelled: an operator cancel).', labelNames: ['cause'], registers });
  const phases = new Histogram({ name: 'vmtc_migration_phase_duration_seconds', help: 'Time spent in each migration state, observed when the migration ends.', labelNames: ['phase'], buckets: PHASE_BUCKETS, registers });
  const downtime = new Histogram({ name: 'vmtc_migration_downtime_seconds', help: 'Downtime of completed live migrations, by who measured it (hypervisor; tunnel_passive and tunnel_probe: seen by clients through the tunnel agent).', labelNames: ['source'], buckets: DOWNTIME_BUCKETS, registers });
  const duration = new Histogram({ name: 'vmtc_migration_duration_seconds', help: 'Time from admission to the terminal state, by result.', labelNames: ['result'], buckets: PHASE_BUCKETS, registers });
  const moved = new Counter({ name: 'vmtc_migration_transferred_bytes_total', help: 'Bytes the hypervisors reported sent by migrations that ended.', registers });
  // Result labels are present from the start so that rate() and absent() work before the first end.
  for (const result of Object.values(RESULT)) for (const mode of ['live', 'cold', 'auto']) total.inc({ result, mode }, 0);

  // Migration policies (migration/policy-watch.ts): each firing, by what fired, the action and how it went.
  const policyFirings = new Counter({ name: 'vmtc_migration_policy_actions_total', help: 'Migration policy firings, by trigger (progress, completion, throttle), action (raise-downtime, auto-converge, postcopy, cancel, none, warn) and outcome (done, failed).', labelNames: ['trigger', 'action', 'outcome'], registers });
  d.runner.on('policy', (_id: string, f: { trigger: string; action: string; outcome: string }) => { policyFirings.inc({ trigger: f.trigger, action: f.action, outcome: f.outcome }); });

  d.runner.on('finished', (id: string, state: MigrationState) => {
    const row = store.migration(id);
    const result = RESULT[state];
    if (!row || !result) return;
    total.inc({ result, mode: row.mode });
    (state === 'completed' ? succeeded : failed).inc();
    if (state === 'rolled_back' || state === 'cancelled') rollbacks.inc({ cause: state === 'cancelled' ? 'cancelled' : row.error?.code ?? 'unknown' });
    for (const [phase, ms] of Object.entries(row.ctx.timings ?? {})) if (ms >= 0) phases.observe({ phase }, ms / 1000);
    duration.observe({ result }, Math.max(0, row.updatedAt - row.createdAt) / 1000);
    if (typeof row.ctx.result?.transferredBytes === 'number') moved.inc(row.ctx.result.transferredBytes);
    if (state === 'completed') for (const [source, ms] of Object.entries(downtimesOf(row))) downtime.observe({ source }, ms / 1000);
  });
  return registry;
}

/** GET /metrics on the controller's API, behind a reader credential. */
export function registerControllerMetrics(app: FastifyInstance, d: ControllerMetricsDeps & { onRequest: onRequestHookHandler; security: Record<string, string[]>[] }): Registry {
  const registry = createControllerMetrics(d);
  registerMetricsRoute(app, registry, d);
  return registry;
}
