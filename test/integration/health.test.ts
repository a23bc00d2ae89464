// Health of every service, as real `vmtc` processes: GET /healthz is 200 while the process lives;
// GET /readyz says what each depends on (the controller: its store, the AAA and the broker; the
// broker: its store and the AAA whose keys it fetches; the AAA: its store and its peer AAAs) and
// answers 503 VMTC_NOT_READY when one of them is unreachable, without a URL or a secret in the
// answer. And a known route asked with a method it does not have is 405 with Allow on all three.
import { describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startVmtc, type Proc } from '../helpers/proc.ts';
import { cleanupsAfterEach, type Cleanup } from '../helpers/cleanups.ts';
import { lineTopology } from '../helpers/broker-helpers.ts';
import { generateRequesterKeySync } from '../../src/common/dpop.ts';

const cleanups = cleanupsAfterEach();

function tempDir(c: Cleanup[]): string {
  const dir = mkdtempSync(join(tmpdir(), 'vmtc-health-'));
  c.push(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

async function start(args: string[]): Promise<Proc & { url: string }> {
  const p = await startVmtc(args);
  cleanups.push(async () => { await p.stop('SIGKILL'); });
  return Object.assign(p, { url: p.ready.url as string });
}

async function get(url: string, method = 'GET'): Promise<{ status: number; allow: string | null; text: string; body: any }> {
  const r = await fetch(url, { method });
  const text = await r.text();
  return { status: r.status, allow: r.headers.get('allow'), text, body: text ? JSON.parse(text) : undefined };
}

/** Poll /readyz until `want` holds (the answer is kept for a second), bounded. */
async function readyzUntil(url: string, want: (r: { status: number; body: any }) => boolean): Promise<{ status: number; body: any; text: string }> {
  let last = await get(`${url}/readyz`);
  for (let i = 0; i < 100 && !want(last); i++) {
    await new Promise((r) => setTimeout(r, 100));
    last = await get(`${url}/readyz`);
  }
  return last;
}

async function deadUrl(): Promise<string> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as { port: number }).port;
  await new Promise<void>((r) => s.close(() => r()));
  return `http://127.0.0.1:${port}`;
}

async function aaaProcess(dir: string, peers: unknown[] = []): Promise<Proc & { url: string }> {
  const policy = join(dir, 'policy.json');
  writeFileSync(policy, JSON.stringify({ version: 1, domain: 'a', sites: { a1: 'a', a3: 'a', b1: 'b' }, requesters: [], peers, rules: [] }));
  return start(['aaa', '--listen', '127.0.0.1:0', '--data', join(dir, 'aaa'), '--domain', 'a', '--policy', policy]);
}

describe('health of the three services', () => {
  it('live while running; ready with every dependency ok; 405 on a wrong method; not ready, with the one that is not, when the AAA goes', async () => {
    const dir = tempDir(cleanups);
    const aaa = await aaaProcess(dir);
    writeFileSync(join(dir, 'topology.json'), JSON.stringify(lineTopology()));
    writeFileSync(join(dir, 'trust.json'), JSON.stringify({ issuers: [{ iss: 'aaa:a', jwksUrl: `${aaa.url}/.well-known/jwks.json` }] }));
    const broker = await start(['broker', '--listen', '127.0.0.1:0', '--data', join(dir, 'broker'), '--domain', 'a', '--topology', join(dir, 'topology.json'), '--trust', join(dir, 'trust.json')]);
    const controller = await start(['controller', '--data', join(dir, 'ctl'), '--listen', '127.0.0.1:0', '--agent-listen', '127.0.0.1:0', '--aaa', aaa.url, '--broker', broker.url]);

    for (const s of [aaa, broker, controller]) expect(await get(`${s.url}/healthz`)).toMatchObject({ status: 200, body: { ok: true } });
    expect(await get(`${controller.url}/readyz`)).toMatchObject({ status: 200, body: { ready: true, checks: { store: 'ok', aaa: 'ok', broker: 'ok' } } });
    expect(await get(`${broker.url}/readyz`)).toMatchObject({ status: 200, body: { ready: true, checks: { store: 'ok', 'aaa:a': 'ok' } } });
    expect(await get(`${aaa.url}/readyz`)).toMatchObject({ status: 200, body: { ready: true, checks: { store: 'ok' } } });

    // A known route asked with a method it does not have: 405 with Allow, on all three.
    const cases: [string, string, string, string[]][] = [
      [controller.url, 'DELETE', '/v1/migrations', ['GET', 'POST']],
      [controller.url, 'PUT', '/v1/migrations/mig_1/events', ['GET']],
      [controller.url, 'POST', '/v1/events', ['GET']],
      [controller.url, 'POST', '/readyz', ['GET']],
      [aaa.url, 'GET', '/v1/authorizations', ['POST']],
      [aaa.url, 'GET', '/v1/policy/check', ['POST']],
      [aaa.url, 'DELETE', '/healthz', ['GET']],
      [broker.url, 'DELETE', '/v1/reservations', ['GET', 'POST']],
      [broker.url, 'POST', '/readyz', ['GET']],
    ];
    for (const [base, method, path, allowed] of cases) {
      const r = await get(`${base}${path}`, method);
      expect({ path, method, status: r.status, code: r.body?.code }).toEqual({ path, method, status: 405, code: 'VMTC_METHOD_NOT_ALLOWED' });
      for (const m of allowed) expect(r.allow?.split(', ')).toContain(m);
    }
    // A path no route has is still 404.
    expect(await get(`${controller.url}/v1/nothing`, 'DELETE')).toMatchObject({ status: 404, body: { code: 'VMTC_NOT_FOUND' } });

    await aaa.stop('SIGTERM');
    const ctl = await readyzUntil(controller.url, (r) => r.status === 503);
    expect(ctl).toMatchObject({ status: 503, body: { code: 'VMTC_NOT_READY', ready: false, checks: { store: 'ok', aaa: 'unreachable', broker: 'ok' }, details: { failing: ['aaa'] } } });
    const brk = await readyzUntil(broker.url, (r) => r.status === 503);
    expect(brk).toMatchObject({ status: 503, body: { code: 'VMTC_NOT_READY', ready: false, checks: { store: 'ok', 'aaa:a': 'unreachable' } } });
    // Nothing in it but names and states: no address, no port.
    for (const r of [ctl, brk]) expect(r.text).not.toMatch(/127\.0\.0\.1|http:/);
    // Alive all the same.
    for (const s of [broker, controller]) expect(await get(`${s.url}/healthz`)).toMatchObject({ status: 200, body: { ok: true } });
  });

  it('the AAA is not ready while a peer AAA of its policy is unreachable', async () => {
    const dir = tempDir(cleanups);
    const aaa = await aaaProcess(dir, [{ domain: 'b', url: await deadUrl(), jwk: { ...generateRequesterKeySync().publicJwk, kid: 'b-1' } }]);
    expect(await readyzUntil(aaa.url, (r) => r.status === 503)).toMatchObject({ status: 503, body: { code: 'VMTC_NOT_READY', checks: { store: 'ok', 'aaa:b': 'unreachable' } } });
  });
});
