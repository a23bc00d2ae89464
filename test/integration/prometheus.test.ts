// A real Prometheus server (Debian's `prometheus`, lab/install-deps.sh) scraping the controller's
// GET /metrics every second with a reader credential (bearer token from a file), a live migration
// through DoubleDriver hosts, and its downtime read back with PromQL over the HTTP API.
import { describe, it, expect } from 'vitest';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cleanupsAfterEach } from '../helpers/cleanups.ts';
import { startHarness, vmSpec } from '../helpers/controller-harness.ts';
import { freePort } from '../helpers/proc.ts';
import { PROMETHEUS } from '../helpers/metrics-text.ts';

const cleanups = cleanupsAfterEach();
const havePrometheus = existsSync(PROMETHEUS);

interface Vector { metric: Record<string, string>; value: [number, string] }

async function query(base: string, promql: string): Promise<Vector[]> {
  const res = await fetch(`${base}/api/v1/query?query=${encodeURIComponent(promql)}`, { signal: AbortSignal.timeout(5_000) });
  const body = (await res.json()) as { status: string; data?: { resultType: string; result: Vector[] }; error?: string };
  if (body.status !== 'success') throw new Error(`PromQL ${promql}: ${body.error}`);
  return body.data!.result;
}

/** Start prometheus on a loopback port with its own config and storage in `dir`; stopped by pid. */
async function startPrometheus(dir: string, controllerUrl: string, token: string): Promise<{ base: string; output(): string }> {
  const target = new URL(controllerUrl).host;
  writeFileSync(join(dir, 'token'), token, { mode: 0o600 });
  writeFileSync(join(dir, 'prometheus.yml'), [
    'global: { scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s }',
    'scrape_configs:',
    '  - job_name: vmtc-controller',
    '    metrics_path: /metrics',
    `    authorization: { type: Bearer, credentials_file: ${JSON.stringify(join(dir, 'token'))} }`,
    `    static_configs: [ { targets: [ ${JSON.stringify(target)} ] } ]`,
    '',
  ].join('\n'));
  const port = await freePort();
  const child = spawn(PROMETHEUS, [
    `--config.file=${join(dir, 'prometheus.yml')}`, `--storage.tsdb.path=${join(dir, 'data')}`,
    `--web.listen-address=127.0.0.1:${port}`, '--log.level=warn',
  ], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d) => { out += d; });
  child.stderr!.on('data', (d) => { out += d; });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  cleanups.push(async () => {
    if (child.exitCode !== null || child.signalCode !== null || !child.pid) return;
    process.kill(child.pid, 'SIGTERM');
    const killed = setTimeout(() => { if (child.exitCode === null && child.signalCode === null) process.kill(child.pid!, 'SIGKILL'); }, 10_000);
    await exited;
    clearTimeout(killed);
  });
  return { base: `http://127.0.0.1:${port}`, output: () => out };
}

describe.skipIf(!havePrometheus)(`Prometheus scraping the controller${havePrometheus ? '' : ' (skipped: /usr/bin/prometheus is absent; lab/install-deps.sh installs it)'}`, () => {
  it('scrapes /metrics with a reader credential and answers PromQL on a live migration\'s downtime', async () => {
    const h = await startHarness();
    cleanups.push(() => h.close());
    const dir = mkdtempSync(join(tmpdir(), 'vmtc-prom-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    await h.addHost('A', { vms: [vmSpec('vm1')] });
    await h.addHost('B');
    const cred = await h.api('POST', '/v1/credentials', { name: 'prometheus', role: 'reader' });
    expect(cred.status).toBe(201);
    const prom = await startPrometheus(dir, h.controller.url, cred.body.token);

    // The scrape is authenticated: the target is up, and nothing has migrated yet.
    await h.waitFor(async () => {
      const up = await query(prom.base, 'up{job="vmtc-controller"}').catch(() => []);
      return up[0]?.value[1] === '1';
    }, () => `prometheus to scrape the controller:\n${prom.output()}`, 30_000);
    expect(await query(prom.base, 'vmtc_migration_succeeded_total')).toMatchObject([{ value: [expect.any(Number), '0'] }]);

    const m = await h.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B', mode: 'live', maxDowntimeMs: 300, bandwidthMbps: 800 });
    expect(m.status).toBe(202);
    const done = await h.waitState(m.body.id, ['completed', 'rolled_back', 'failed']);
    expect(done.state).toBe('completed');
    const downtimeMs = done.result.downtimeMs as number;
    expect(typeof downtimeMs).toBe('number');

    const count = await h.waitFor(async () => {
      const r = await query(prom.base, 'vmtc_migration_downtime_seconds_count{source="hypervisor"}');
      return r[0]?.value[1] === '1' ? r : undefined;
    }, () => `the migration's downtime in prometheus:\n${prom.output()}`, 30_000);
    expect(count[0]!.metric).toMatchObject({ job: 'vmtc-controller', svc: 'controller', source: 'hypervisor' });
    const sum = await query(prom.base, 'vmtc_migration_downtime_seconds_sum{source="hypervisor"}');
    expect(Number(sum[0]!.value[1])).toBeCloseTo(downtimeMs / 1000, 6);
    // One observation: every quantile falls in its bucket, at or below the bucket's upper bound.
    const q = await query(prom.base, 'histogram_quantile(0.99, sum by (le) (vmtc_migration_downtime_seconds_bucket{source="hypervisor"}))');
    const le = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10].find((b) => downtimeMs / 1000 <= b)!;
    expect(Number(q[0]!.value[1])).toBeLessThanOrEqual(le);
    expect(Number(q[0]!.value[1])).toBeGreaterThan(0);
    expect(await query(prom.base, 'vmtc_migrations_total{result="succeeded",mode="live"}')).toMatchObject([{ value: [expect.any(Number), '1'] }]);
  }, 90_000);
});
