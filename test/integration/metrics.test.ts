// GET /metrics on every service (README "Metrics"): the controller, the AAA and the broker behind
// their read credentials, the host and tunnel agents (real `vmtc agent` / `vmtc tunnel`
// processes) on --metrics-listen. Every output passes `promtool check metrics`, and a migration
// through all of them (DoubleDriver hosts, MemoryDoubleDriver broker, memory tunnel) moves the
// counters, histograms and gauges the expected way.
import { describe, it, expect } from 'vitest';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cleanupsAfterEach, spawnVmtcCli, type CliProcess } from '../helpers/cleanups.ts';
import { startHarness, vmSpec, type Harness } from '../helpers/controller-harness.ts';
import { startLightpathServices, type LightpathServices } from '../helpers/lightpath-services.ts';
import { tempDir } from '../helpers/agent-fixture.ts';
import { freePort } from '../helpers/proc.ts';
import { havePromtool, promtoolCheck, sample, scrape } from '../helpers/metrics-text.ts';

const cleanups = cleanupsAfterEach();
const NO_PROMTOOL = 'promtool is absent (lab/install-deps.sh installs Debian\'s prometheus package)';

function expectPromtoolClean(what: string, text: string): void {
  expect(text, `${what}: empty exposition`).toMatch(/^# HELP /m);
  const r = promtoolCheck(text);
  expect(r.code, `${what}: promtool check metrics said:\n${r.output}`).toBe(0);
}

async function controllerWithServices(): Promise<{ h: Harness; services: LightpathServices }> {
  let services: LightpathServices | undefined;
  const h = await startHarness({}, async (controllerDir) => {
    services = await startLightpathServices(controllerDir);
    return { options: { aaaUrl: services.aaaUrl, brokerUrl: services.broker.url }, cleanup: () => services!.close() };
  });
  cleanups.push(() => h.close());
  return { h, services: services! };
}

async function readerToken(h: Harness): Promise<string> {
  const c = await h.api('POST', '/v1/credentials', { name: 'prometheus', role: 'reader' });
  expect(c.status).toBe(201);
  return c.body.token as string;
}

describe.skipIf(!havePromtool)(`GET /metrics on every service${havePromtool ? '' : ` (skipped: ${NO_PROMTOOL})`}`, () => {
  it('serves Prometheus text behind each service\'s credential, promtool-clean; a live migration moves counters, histograms and gauges', async () => {
    const { h, services } = await controllerWithServices();
    const d = tempDir('vmtc-metrics-');
    cleanups.push(() => rmSync(d, { recursive: true, force: true }));
    const token = await readerToken(h);

    // Host A: a real `vmtc agent` process with --metrics-listen. 256 MB at 16 KiB per MB: 4 MiB,
    // about 4 s at 8 Mbit/s, so the copy is seen in flight.
    const cfg = join(d, 'double.json');
    writeFileSync(cfg, JSON.stringify({ vms: [vmSpec('vm1')], bytesPerMb: 16_384 }));
    const agentPort = await freePort();
    const minted = h.controller.hub.mintEnrollToken({ kind: 'host', hostId: 'A' });
    const agent: CliProcess = spawnVmtcCli(['agent', '--controller', h.controller.url, '--enroll', minted.token, '--data', join(d, 'agent-A'), '--driver', 'double', '--double-config', cfg,
      '--site', 'site-A', '--migration-address', '127.0.0.1', '--metrics-listen', `127.0.0.1:${agentPort}`, '--log-level', 'warn'], cleanups);
    await h.waitFor(() => h.controller.hub.inventory('A')?.vms.length === 1, () => `agent A's inventory:\n${agent.output()}`);
    await h.addHost('B', {}, 'site-B');
    // The tunnel: a real `vmtc tunnel` process (memory driver) with --metrics-listen.
    const tunnelPort = await freePort();
    const tMinted = h.controller.hub.mintEnrollToken({ kind: 'tunnel', hostId: 'tun' });
    const tunnel = spawnVmtcCli(['tunnel', '--controller', h.controller.url, '--enroll', tMinted.token, '--ca-fingerprint', tMinted.caFingerprint, '--data', join(d, 'tunnel'),
      '--driver', 'memory', '--site', 'site-A', '--site', 'site-B', '--initial-site', 'site-A', '--metrics-listen', `127.0.0.1:${tunnelPort}`, '--log-level', 'warn'], cleanups);
    await h.waitFor(() => tunnel.stdout().includes('"ready"'), () => `tunnel ready line:\n${tunnel.output()}`);

    const urls = {
      controller: `${h.controller.url}/metrics`, aaa: `${services.aaaUrl}/metrics`, broker: `${services.broker.url}/metrics`,
      agent: `http://127.0.0.1:${agentPort}/metrics`, tunnel: `http://127.0.0.1:${tunnelPort}/metrics`,
    };
    const creds = { controller: token, aaa: services.aaaAdminToken, broker: services.broker.operatorToken, agent: undefined, tunnel: undefined };
    const scrapeAll = async () => {
      const out: Record<string, string> = {};
      for (const [svc, url] of Object.entries(urls)) {
        const r = await scrape(url, creds[svc as keyof typeof creds]);
        expect(r.status, `${svc}: ${r.text.slice(0, 300)}`).toBe(200);
        expect(r.type).toMatch(/^text\/plain; version=0\.0\.4/);
        expectPromtoolClean(svc, r.text);
        out[svc] = r.text;
      }
      return out;
    };

    // Protected like the rest of each API: no credential, or a wrong one, is refused.
    for (const svc of ['controller', 'aaa', 'broker'] as const) {
      expect((await scrape(urls[svc])).status, `${svc} without a credential`).toBe(401);
      expect([401, 403], `${svc} with a wrong credential`).toContain((await scrape(urls[svc], 'vmtc_not-a-credential')).status);
    }
    // The agents' listeners serve /metrics only.
    expect((await fetch(`http://127.0.0.1:${agentPort}/v1/anything`)).status).toBe(404);

    const before = await scrapeAll();
    expect(sample(before.controller, 'vmtc_migrations_total', { result: 'succeeded', mode: 'live' })).toBe(0);
    expect(sample(before.controller, 'vmtc_migration_succeeded_total')).toBe(0);
    expect(sample(before.controller, 'vmtc_migration_downtime_seconds_count', { source: 'hypervisor' }) ?? 0).toBe(0);
    expect(sample(before.controller, 'vmtc_agent_links_up', { kind: 'host' })).toBe(2);
    expect(sample(before.controller, 'vmtc_agent_links_up', { kind: 'tunnel' })).toBe(1);
    expect(sample(before.controller, 'vmtc_host_capacity_held', { host: 'B', resource: 'memory_bytes' })).toBe(0);
    expect(sample(before.aaa, 'vmtc_aaa_tokens_issued_total')).toBe(0);
    expect(sample(before.broker, 'vmtc_broker_tokens_accepted_total')).toBe(0);
    expect(sample(before.agent, 'vmtc_agent_vms', { state: 'running' })).toBe(1);
    expect(sample(before.agent, 'vmtc_agent_link_up')).toBe(1);
    expect(sample(before.tunnel, 'vmtc_tunnel_sites')).toBe(1);
    expect(sample(before.tunnel, 'vmtc_tunnel_site_changes', { op: 'add', cause: 'bicast' })).toBeUndefined();

    const m = await h.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B', mode: 'live', bandwidthMbps: 8 });
    expect(m.status).toBe(202);
    const id = m.body.id as string;
    // In flight: by state, bytes moved, capacity held at the destination, the lightpath booked.
    const during = await h.waitFor(async () => {
      const r = await scrape(urls.controller, token);
      return (sample(r.text, 'vmtc_migration_data_processed_bytes', { migration: id }) ?? 0) > 0 ? r.text : undefined;
    }, 'bytes processed of the migration in flight');
    expect(sample(during, 'vmtc_migrations', { state: 'precopy' })).toBe(1);
    expect(sample(during, 'vmtc_migration_data_processed_bytes', { migration: id, vm: 'vm1' })).toBeGreaterThan(0);
    expect(sample(during, 'vmtc_migration_data_remaining_bytes', { migration: id, vm: 'vm1' })).toBeGreaterThanOrEqual(0);
    expect(sample(during, 'vmtc_host_capacity_held', { host: 'B', resource: 'memory_bytes' })).toBe(256 * 1024 * 1024);
    const broker = (await scrape(urls.broker, creds.broker)).text;
    expect(sample(broker, 'vmtc_broker_bandwidth_booked_mbps', { link: 'ab' })).toBe(8);
    expect(sample(broker, 'vmtc_broker_reservations', { provision_state: 'Provisioned' })).toBe(1);
    const agentDuring = (await scrape(urls.agent)).text;
    expect(sample(agentDuring, 'vmtc_agent_migrations_in_progress', { role: 'source' })).toBe(1);

    const done = await h.waitState(id, ['completed', 'rolled_back', 'failed'], 30_000);
    expect(done.state).toBe('completed');
    const after = await scrapeAll();
    expect(sample(after.controller, 'vmtc_migrations_total', { result: 'succeeded', mode: 'live' })).toBe(1);
    expect(sample(after.controller, 'vmtc_migration_succeeded_total')).toBe(1);
    expect(sample(after.controller, 'vmtc_migration_failed_total')).toBe(0);
    expect(sample(after.controller, 'vmtc_migration_downtime_seconds_count', { source: 'hypervisor' })).toBe(1);
    expect(sample(after.controller, 'vmtc_migration_downtime_seconds_sum', { source: 'hypervisor' })).toBeCloseTo(done.result.downtimeMs / 1000, 6);
    expect(sample(after.controller, 'vmtc_migration_phase_duration_seconds_count', { phase: 'precopy' })).toBe(1);
    expect(sample(after.controller, 'vmtc_migration_phase_duration_seconds_sum', { phase: 'precopy' })).toBeCloseTo(done.timings.precopy / 1000, 6);
    expect(sample(after.controller, 'vmtc_migration_transferred_bytes_total')).toBe(done.result.transferredBytes);
    // Nothing in flight: no per-migration series, nothing held.
    expect(sample(after.controller, 'vmtc_migration_data_processed_bytes', { migration: id })).toBeUndefined();
    expect(sample(after.controller, 'vmtc_migrations', { state: 'precopy' })).toBe(0);
    expect(sample(after.controller, 'vmtc_host_capacity_held', { host: 'B', resource: 'memory_bytes' })).toBe(0);
    expect(sample(after.aaa, 'vmtc_aaa_tokens_issued_total')).toBe(1);
    expect(sample(after.aaa, 'vmtc_aaa_proof_verifications_total', { result: 'valid' })).toBeGreaterThanOrEqual(1);
    expect(sample(after.broker, 'vmtc_broker_tokens_accepted_total')).toBe(1);
    expect(sample(after.agent, 'vmtc_agent_vms', { state: 'running' })).toBe(0);
    expect(sample(after.tunnel, 'vmtc_tunnel_site_changes', { op: 'add', cause: 'bicast' })).toBe(1);
    expect(sample(after.tunnel, 'vmtc_tunnel_site_changes', { op: 'remove', cause: 'prune' })).toBe(1);
  }, 90_000);

  it('counts a cancelled migration as a rollback by cause, and refused token requests at the AAA by code', async () => {
    const { h, services } = await controllerWithServices();
    const token = await readerToken(h);
    await h.addHost('A', { vms: [vmSpec('vm1', { memoryMb: 2048 })], bytesPerMb: 64 * 1024 }, 'site-A');
    await h.addHost('B', {}, 'site-B');
    const m = await h.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B', bandwidthMbps: 2 });
    expect(m.status).toBe(202);
    await h.waitState(m.body.id, ['precopy']);
    expect((await h.api('POST', `/v1/migrations/${m.body.id}/cancel`)).status).toBe(202);
    expect((await h.waitState(m.body.id, ['cancelled', 'rolled_back', 'failed'])).state).toBe('cancelled');
    // Counted when the terminal state's finishing step has run (a moment after the state).
    const text = await h.waitFor(async () => {
      const r = (await scrape(`${h.controller.url}/metrics`, token)).text;
      return sample(r, 'vmtc_migration_rollbacks_total', { cause: 'cancelled' }) === 1 ? r : undefined;
    }, 'the cancel counted');
    expectPromtoolClean('controller', text);
    expect(sample(text, 'vmtc_migrations_total', { result: 'cancelled', mode: 'live' })).toBe(1);
    expect(sample(text, 'vmtc_migrations_total', { result: 'succeeded', mode: 'live' })).toBe(0);
    expect(sample(text, 'vmtc_migration_failed_total')).toBe(1);
    expect(sample(text, 'vmtc_migration_rollbacks_total', { cause: 'cancelled' })).toBe(1);
    expect(sample(text, 'vmtc_migration_downtime_seconds_count', { source: 'hypervisor' }) ?? 0).toBe(0);

    // A token request without a proof is refused, and counted by its code.
    const refused = await fetch(`${services.aaaUrl}/v1/authorizations`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
    expect(refused.status).toBe(401);
    const aaa = (await scrape(`${services.aaaUrl}/metrics`, services.aaaAdminToken)).text;
    expectPromtoolClean('aaa', aaa);
    const code = ((await refused.json()) as { code: string }).code;
    expect(sample(aaa, 'vmtc_aaa_tokens_refused_total', { reason: code })).toBe(1);
    // The cancelled migration's own token, issued before the cancel; the refusal issued none.
    expect(sample(aaa, 'vmtc_aaa_tokens_issued_total')).toBe(1);
  }, 60_000);

  it('refuses a bad --metrics-listen at start, coded and naming the field', async () => {
    const d = tempDir('vmtc-metrics-');
    cleanups.push(() => rmSync(d, { recursive: true, force: true }));
    for (const cmd of [['agent', '--driver', 'double'], ['tunnel', '--driver', 'memory', '--site', 'site-A']]) {
      const p = spawnVmtcCli([...cmd, '--data', join(d, cmd[0]!), '--enroll', 'x', '--controller', 'http://127.0.0.1:9', '--metrics-listen', 'no-port'], cleanups);
      const code = await Promise.race([p.exited, new Promise<'hung'>((r) => setTimeout(() => r('hung'), 20_000))]);
      expect(code, p.output()).not.toBe(0);
      expect(code).not.toBe('hung');
      expect(p.output()).toContain('VMTC_CONFIG_INVALID');
      expect(p.output()).toContain('"field":"metrics-listen"');
    }
  }, 60_000);
});
