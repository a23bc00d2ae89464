// What the services' logs say, read from real processes: `vmtc controller` and two `vmtc agent`
// processes (DoubleDriver hypervisor test double) moving a VM. $VMTC_LOG_LEVEL sets the level
// unless --log-level is given; no line carries a key twice; every request is one line with its
// method, route, status, time and the credential's name, and never the credential itself.
import { describe, it, expect } from 'vitest';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cleanupsAfterEach, spawnVmtcCli, type CliProcess } from '../helpers/cleanups.ts';
import { freePort, startVmtc, type Proc } from '../helpers/proc.ts';
import { duplicateKeys } from '../helpers/json-keys.ts';
import { vmSpec } from '../helpers/controller-harness.ts';

const cleanups = cleanupsAfterEach();

function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'vmtc-logs-'));
  cleanups.push(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

async function controller(dir: string, flags: string[], env: NodeJS.ProcessEnv) {
  const args = ['controller', '--data', join(dir, 'controller'), '--listen', `127.0.0.1:${await freePort()}`, '--agent-listen', `127.0.0.1:${await freePort()}`, ...flags];
  const proc = await startVmtc(args, { env });
  cleanups.push(async () => { await proc.stop('SIGKILL'); });
  const url = proc.ready.url as string;
  const token = readFileSync(join(dir, 'controller', 'admin.token'), 'utf8').trim();
  const api = async (method: string, path: string, body?: unknown, auth: string | null = token) => {
    const r = await fetch(url + path, { method, headers: { ...(auth ? { authorization: `Bearer ${auth}` } : {}), ...(body ? { 'content-type': 'application/json' } : {}) }, ...(body ? { body: JSON.stringify(body) } : {}) });
    const text = await r.text();
    return { status: r.status, body: text ? JSON.parse(text) : undefined };
  };
  return { proc, url, token, api };
}

/** The JSON lines a process wrote (its ready line and log lines). */
function jsonLines(p: { output(): string }): string[] {
  return p.output().split('\n').filter((l) => l.startsWith('{'));
}

async function waitFor(fn: () => boolean | Promise<boolean>, what: () => string, ms = 20_000): Promise<void> {
  const until = Date.now() + ms;
  while (!(await fn())) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('service logs', () => {
  it('VMTC_LOG_LEVEL=warn keeps `vmtc controller` at warn; --log-level overrides the variable', async () => {
    const quiet = await controller(tempDir(), [], { VMTC_LOG_LEVEL: 'warn' });
    expect((await quiet.api('GET', '/v1/hosts')).status).toBe(200);
    expect((await quiet.api('GET', '/v1/nope')).status).toBe(404);
    const loud = await controller(tempDir(), ['--log-level', 'info'], { VMTC_LOG_LEVEL: 'warn' });
    expect((await loud.api('GET', '/v1/hosts')).status).toBe(200);
    await waitFor(() => jsonLines(loud.proc).some((l) => l.includes('"route":"/v1/hosts"')), () => `the info line of the request:\n${loud.proc.output()}`);
    const levels = (p: Proc) => jsonLines(p).map((l) => JSON.parse(l)).filter((j) => j.level !== undefined).map((j) => j.level as number);
    expect(levels(quiet.proc).filter((l) => l < 40)).toEqual([]);
    expect(levels(loud.proc).filter((l) => l === 30).length).toBeGreaterThan(0);
  }, 120_000);

  it('a migration between two agent processes logs no line with a key twice, and one line per request without the token', async () => {
    const dir = tempDir();
    const c = await controller(dir, ['--log-level', 'debug', '--heartbeat-ms', '500'], { VMTC_LOG_LEVEL: 'debug' });
    const agents: CliProcess[] = [];
    for (const [hostId, vms] of [['A', [vmSpec('vm1')]], ['B', []]] as const) {
      const cfg = join(dir, `${hostId}.json`);
      writeFileSync(cfg, JSON.stringify({ vms, bytesPerMb: 4096 }));
      const t = await c.api('POST', '/v1/enrollment-tokens', { kind: 'host', hostId });
      expect(t.status).toBe(201);
      agents.push(spawnVmtcCli(['agent', '--controller', c.url, '--enroll', t.body.token, '--data', join(dir, `agent-${hostId}`), '--driver', 'double', '--double-config', cfg, '--site', `site-${hostId}`, '--migration-address', '127.0.0.1', '--log-level', 'debug'], cleanups));
    }
    await waitFor(async () => (await c.api('GET', '/v1/hosts')).body.hosts.filter((x: any) => x.connected).length === 2, () => 'two agents connected');
    const m = await c.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B' });
    expect(m.status).toBe(202);
    const id = m.body.id as string;
    // Follow it over the event stream as the CLI does, to its end (the stream closes itself).
    const sse = await fetch(`${c.url}/v1/migrations/${id}/events`, { headers: { authorization: `Bearer ${c.token}` } });
    expect(sse.status).toBe(200);
    await sse.text();
    expect((await c.api('GET', `/v1/migrations/${id}`)).body.state).toBe('completed');
    expect((await c.api('GET', '/v1/vms', undefined, null)).status).toBe(401);
    expect((await c.api('GET', '/v1/migrations/mig_nope')).status).toBe(404);

    // The last request's line (each is written when its answer is over).
    await waitFor(() => jsonLines(c.proc).some((l) => l.includes('"msg":"request"') && l.includes('"status":404')), () => `request lines:\n${c.proc.output()}`);
    const all = [c.proc, ...agents].flatMap(jsonLines);
    const hub = all.filter((l) => l.includes('"mod":"hub"'));
    // Enough to mean something: the hub's lines (once written with "mod" twice) are among them.
    expect(hub.length).toBeGreaterThan(3);
    const withDuplicates = all.map((l) => [l, duplicateKeys(l)] as const).filter(([, d]) => d.length > 0);
    expect(withDuplicates).toEqual([]);

    const requests = jsonLines(c.proc).map((l) => JSON.parse(l)).filter((j) => j.msg === 'request');
    for (const r of requests) {
      expect(r).toMatchObject({ method: expect.stringMatching(/^[A-Z]+$/), status: expect.any(Number), ms: expect.any(Number) });
      expect(r).toHaveProperty('cred');
    }
    const find = (method: string, route: string, status: number) => requests.find((r) => r.method === method && r.route === route && r.status === status);
    expect(find('POST', '/v1/migrations', 202)).toMatchObject({ cred: 'admin' });
    expect(find('GET', '/v1/migrations/:id/events', 200)).toMatchObject({ cred: 'admin' });
    expect(find('GET', '/v1/migrations/:id', 404)).toMatchObject({ cred: 'admin' });
    expect(find('GET', '/v1/vms', 401)).toMatchObject({ cred: null });
    expect(find('POST', '/v1/enroll', 200) ?? find('POST', '/v1/enroll', 201)).toBeDefined();
    // Routes, not URLs: no migration id in a route; and no credential anywhere in any log.
    expect(requests.some((r) => String(r.route).includes(id))).toBe(false);
    const secrets = [c.token, readFileSync(join(dir, 'controller', 'admin.token'), 'utf8').trim()];
    for (const line of all) for (const s of secrets) expect(line).not.toContain(s);
  }, 180_000);
});
