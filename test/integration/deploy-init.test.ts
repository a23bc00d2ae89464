// `vmtc init`, `vmtc up`, `vmtc enroll-token` and `--config` as real processes on loopback
// (docs/deploy.md): a domain written by init and started from its file works end to end (two
// `vmtc agent --driver double` hosts enrolled with tokens from enroll-token, a live migration
// through the AAA and the broker completes); a host agent restarted with only --data keeps its
// site and driver (DATA/host.json), so the next migrations complete too; a bad deployment file
// is refused naming the field; init never overwrites a deployment without --force.
import { describe, it, expect } from 'vitest';
import { readFileSync, writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cleanupsAfterEach, spawnVmtcCli, type Cleanup, type CliProcess } from '../helpers/cleanups.ts';
import { spawn } from 'node:child_process';
import { freePort, VMTC_BIN } from '../helpers/proc.ts';
import { until } from '../helpers/agent-fixture.ts';

const cleanups = cleanupsAfterEach();

function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'vmtc-deploy-'));
  cleanups.push(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

/** Run a vmtc verb to its end; its exit code and output. */
async function vmtc(args: string[]): Promise<{ code: number | null; out: string; err: string }> {
  const p = spawnVmtcCli(args, cleanups);
  const code = await p.exited;
  return { code, out: p.stdout(), err: p.stderr() };
}

async function ports(): Promise<string> {
  return `controller=${await freePort()},agents=${await freePort()},aaa=${await freePort()},broker=${await freePort()}`;
}

/**
 * `vmtc up --config` until the test ends, in its own process group: the cleanup stops it with
 * SIGTERM (it stops its services) and then kills the group, so no service outlives the test even
 * if `vmtc up` itself was killed before it could stop them.
 */
async function up(config: string, list: Cleanup[]): Promise<{ ready: Record<string, any> }> {
  const child = spawn(process.execPath, [VMTC_BIN, 'up', '--config', config], { detached: true, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, VMTC_LOG_LEVEL: 'warn' } });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  list.push(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 15_000))]);
    }
    try {
      process.kill(-child.pid!, 'SIGKILL');
    } catch { /* the group is gone */ }
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => { stdout += d; });
  child.stderr.on('data', (d) => { stderr += d; });
  const ready = await until(() => {
    const line = stdout.split('\n').find((l) => l.startsWith('{"event":"ready"'));
    if (child.exitCode !== null) throw new Error(`vmtc up exited ${child.exitCode}: ${stdout}${stderr}`);
    return line ? JSON.parse(line) : undefined;
  }, 120_000, 'vmtc up ready');
  return { ready };
}

function api(url: string, tokenFile: string) {
  const token = readFileSync(tokenFile, 'utf8').trim();
  return async (method: string, path: string, body?: unknown): Promise<{ status: number; body: any }> => {
    const r = await fetch(url + path, { method, headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) }, ...(body ? { body: JSON.stringify(body) } : {}) });
    return { status: r.status, body: await r.json() };
  };
}

describe('a domain from vmtc init', () => {
  it('starts from its file, enrols agents with enroll-token, migrates; an agent restarted with only --data keeps its settings', async () => {
    const dir = tempDir();
    const init = await vmtc(['init', '--dir', join(dir, 'etc'), '--domain', 'a', '--sites', 'amsterdam,san-diego', '--ports', await ports()]);
    expect(init.code, init.err).toBe(0);
    expect(init.out).toContain('vmtc up --config');
    const config = join(dir, 'etc', 'vmtc.json');
    const deployment = JSON.parse(readFileSync(config, 'utf8'));
    const u = await up(config, cleanups);
    const services = u.ready.services as Record<string, { url: string }>;
    expect(services.controller!.url).toBe(deployment.controller.url);
    expect(services.aaa!.url).toBe(deployment.aaa.url);
    expect(services.broker!.url).toBe(deployment.broker.url);
    const call = api(deployment.controller.url, u.ready.adminTokenFile as string);

    // Small VMs for the double: 1 KiB per MB of guest memory.
    const doubleCfg = join(dir, 'double.json');
    writeFileSync(doubleCfg, JSON.stringify({ bytesPerMb: 1024 }));
    const agents = new Map<string, CliProcess>();
    // ams-1 serves its metrics; the address is a setting like the others (kept across restarts).
    const metricsPort = await freePort();
    for (const [host, site] of [['ams-1', 'amsterdam'], ['sd-1', 'san-diego']] as const) {
      const t = await vmtc(['enroll-token', '--config', config, '--host', host]);
      expect(t.code, t.err).toBe(0);
      const token = t.out.trim();
      expect(token).toMatch(/^vmtc-enroll-/);
      agents.set(host, spawnVmtcCli(['agent', '--config', config, '--enroll', token, '--data', join(dir, host), '--driver', 'double', '--double-config', doubleCfg,
        '--site', site, '--migration-address', '127.0.0.1', '--log-level', 'warn', ...(host === 'ams-1' ? ['--metrics-listen', `127.0.0.1:${metricsPort}`, '--stats-interval', '5'] : [])], cleanups));
    }
    const connected = async (host: string) => (await call('GET', '/v1/hosts')).body.hosts.some((h: any) => h.hostId === host && h.connected);
    await until(async () => (await connected('ams-1')) && (await connected('sd-1')), 20_000, 'both agents connected');
    expect((await call('POST', '/v1/vms', { hostId: 'ams-1', spec: { vmId: 'vm1', project: 'p', vcpus: 1, memoryMb: 256, diskGb: 1 } })).status).toBe(201);
    await until(async () => (await call('GET', '/v1/vms')).body.vms.some((v: any) => v.vmId === 'vm1' && v.hostId === 'ams-1'), 10_000, 'vm1 reported at ams-1');

    const migrate = async (to: string) => {
      const m = await call('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: to, mode: 'live', bandwidthMbps: 100 });
      expect(m.status, JSON.stringify(m.body)).toBe(202);
      return until(async () => {
        const r = (await call('GET', `/v1/migrations/${m.body.id}`)).body;
        return r.terminal ? r : undefined;
      }, 30_000, `migration to ${to} ends`);
    };
    const first = await migrate('sd-1');
    expect(first.state, JSON.stringify(first.error)).toBe('completed');
    // The AAA granted a token and the broker set up a lightpath: the wiring init wrote works
    // (without it the steps would be recorded as skipped or fail).
    expect(first.steps.token.jti).toEqual(expect.any(String));
    expect(first.steps.lightpath.reservationId).toEqual(expect.any(String));

    // Restart ams-1 (now without VMs) with only --data, as its --help says later starts may.
    const old = agents.get('ams-1')!;
    process.kill(old.child.pid!, 'SIGTERM');
    expect(await old.exited).toBe(0);
    await until(async () => !(await connected('ams-1')), 10_000, 'ams-1 disconnected');
    const restarted = spawnVmtcCli(['agent', '--data', join(dir, 'ams-1')], cleanups);
    await until(async () => connected('ams-1'), 20_000, 'ams-1 connected again');
    void restarted;
    const back = await migrate('ams-1');
    expect(back.state, JSON.stringify(back.error)).toBe('completed');
    const host = (await call('GET', '/v1/hosts/ams-1')).body;
    expect(host).toMatchObject({ site: 'amsterdam', migrationAddress: '127.0.0.1', hypervisor: { type: 'double' } });
    expect(JSON.parse(readFileSync(join(dir, 'ams-1', 'host.json'), 'utf8')).settings).toMatchObject({ site: 'amsterdam', driver: 'double', 'double-config': doubleCfg, 'metrics-listen': `127.0.0.1:${metricsPort}`, 'stats-interval': '5' });
    const scraped = await fetch(`http://127.0.0.1:${metricsPort}/metrics`);
    expect(scraped.status).toBe(200);
    expect(await scraped.text()).toMatch(/^vmtc_agent_/m);

    // Restart sd-1 (now empty) naming its driver but not its site: the case, where the
    // site used to be dropped and the AAA refused the next lightpath (VMTC_AAA_SITE_UNKNOWN).
    const sd = agents.get('sd-1')!;
    process.kill(sd.child.pid!, 'SIGTERM');
    expect(await sd.exited).toBe(0);
    await until(async () => !(await connected('sd-1')), 10_000, 'sd-1 disconnected');
    spawnVmtcCli(['agent', '--data', join(dir, 'sd-1'), '--driver', 'double', '--double-config', doubleCfg, '--log-level', 'warn'], cleanups);
    await until(async () => connected('sd-1'), 20_000, 'sd-1 connected again');
    const third = await migrate('sd-1');
    expect(third.state, JSON.stringify(third.error)).toBe('completed');
  }, 180_000);
});

describe('a bad deployment', () => {
  it('is refused with VMTC_CONFIG_INVALID naming the field, before any service starts', async () => {
    const dir = tempDir();
    const init = await vmtc(['init', '--dir', dir, '--domain', 'a', '--ports', await ports()]);
    expect(init.code, init.err).toBe(0);
    const good = JSON.parse(readFileSync(join(dir, 'vmtc.json'), 'utf8'));
    const variant = (name: string, edit: (d: any) => void) => {
      const d = structuredClone(good);
      edit(d);
      writeFileSync(join(dir, name), JSON.stringify(d));
      return join(dir, name);
    };
    const unknown = await vmtc(['up', '--config', variant('unknown.json', (d) => { d.aaa.polcy = d.aaa.policy; })]);
    expect(unknown.code).toBe(1);
    expect(unknown.err).toMatch(/VMTC_CONFIG_INVALID.*aaa\.polcy: unknown field/);
    const listen = await vmtc(['controller', '--config', variant('listen.json', (d) => { d.controller.listen = 'nowhere'; })]);
    expect(listen.code).toBe(1);
    expect(listen.err).toMatch(/VMTC_CONFIG_INVALID.*controller\.listen/);
    const missing = await vmtc(['broker', '--config', variant('missing.json', (d) => { delete d.broker.trust; })]);
    expect(missing.code).toBe(1);
    expect(missing.err).toMatch(/VMTC_CONFIG_INVALID.*broker\.trust: required/);
    // A service file the deployment names is checked by the service's own parser, with its code.
    writeFileSync(join(dir, 'aaa', 'policy.json'), JSON.stringify({ version: 1, domain: 'a', sites: {}, requesters: [], rules: [{ id: 'r' }] }));
    const policy = await vmtc(['up', '--config', join(dir, 'vmtc.json')]);
    expect(policy.code).toBe(1);
    expect(policy.err).toContain('VMTC_AAA_POLICY_INVALID');
    expect(policy.out).not.toContain('"ready"');
    // Nothing was left listening: the controller's port is free.
    const refused = await fetch(good.controller.url + '/v1/hosts').then(() => 'answered', () => 'refused');
    expect(refused).toBe('refused');
  }, 120_000);
});

describe('vmtc init', () => {
  it('refuses to overwrite a deployment (VMTC_DEPLOY_EXISTS); --force rewrites the configuration and keeps the keys', async () => {
    const dir = tempDir();
    const first = await vmtc(['init', '--dir', dir, '--domain', 'a', '-o', 'json']);
    expect(first.code, first.err).toBe(0);
    const r1 = JSON.parse(first.out);
    const before = readFileSync(join(dir, 'vmtc.json'), 'utf8');
    const again = await vmtc(['init', '--dir', dir, '--domain', 'b']);
    expect(again.code).toBe(1);
    expect(again.err).toContain('VMTC_DEPLOY_EXISTS');
    expect(readFileSync(join(dir, 'vmtc.json'), 'utf8')).toBe(before);
    const forced = await vmtc(['init', '--dir', dir, '--domain', 'a', '--ports', 'controller=17777', '--force', '-o', 'json']);
    expect(forced.code, forced.err).toBe(0);
    const r2 = JSON.parse(forced.out);
    expect(r2.deployment.controller.listen).toBe('127.0.0.1:17777');
    expect([r2.controllerJkt, r2.agentCaFingerprint, r2.aaaKid]).toEqual([r1.controllerJkt, r1.agentCaFingerprint, r1.aaaKid]);
    // The wiring: the controller's thumbprint is the policy's requester, the AAA's key the broker's issuer.
    const policy = JSON.parse(readFileSync(join(dir, 'aaa', 'policy.json'), 'utf8'));
    expect(policy.requesters).toEqual([{ id: 'controller', jkt: r1.controllerJkt }]);
    const trust = JSON.parse(readFileSync(join(dir, 'broker', 'trust.json'), 'utf8'));
    expect(trust.issuers[0]).toMatchObject({ iss: 'aaa:a', jwks: { keys: [expect.objectContaining({ kid: r1.aaaKid })] } });
  }, 120_000);
});
