// The shared HTTP layer of the three services (src/common/http.ts), each started for real:
// authentication runs before the body is read, parsed or validated (README "API"); every answer,
// fastify's own refusals included, carries a VMTC_ code; a deeply nested body is refused before
// any handler; and refusals are rate limited per client address (README "Rate limits").
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import net from 'node:net';
import { silentLogger } from '../../src/common/log.ts';
import { startAaa, type AaaHandle } from '../../src/aaa/index.ts';
import { startBroker, type Broker } from '../../src/broker/index.ts';
import { MemoryDoubleDriver } from '../../src/broker/drivers/memory-double.ts';
import type { RateLimitOptions } from '../../src/common/http.ts';
import { startHarness, vmSpec, type Harness } from '../helpers/controller-harness.ts';
import { holderKey, joseProof, lineTopology, makeIssuer, mintToken, type Issuer } from '../helpers/broker-helpers.ts';

const nowS = () => Math.floor(Date.now() / 1000);
let dir: string;
let issuer: Issuer;
const started: { close(): Promise<void> }[] = [];

async function aaaService(sub: string, rateLimit?: Partial<RateLimitOptions>): Promise<AaaHandle> {
  const a = await startAaa({
    dataDir: join(dir, sub), domain: 'a', logger: silentLogger(), ...(rateLimit ? { rateLimit } : {}),
    policy: { version: 1, sites: { siteA: 'a' }, requesters: [], rules: [] },
  });
  started.push(a);
  return a;
}
async function brokerService(sub: string, rateLimit?: Partial<RateLimitOptions>): Promise<Broker> {
  const b = await startBroker({
    dataDir: join(dir, sub), domain: 'a', topology: lineTopology(), driver: new MemoryDoubleDriver(), ...(rateLimit ? { rateLimit } : {}),
    trust: { issuers: [{ iss: issuer.iss, jwks: { keys: [issuer.publicJwk] } }] },
  });
  started.push(b);
  return b;
}
async function controllerService(rateLimit?: Partial<RateLimitOptions>): Promise<Harness> {
  const h = await startHarness(rateLimit ? { rateLimit } : {});
  started.push(h);
  return h;
}

let controller: Harness;
let aaa: AaaHandle;
let broker: Broker;
beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'vmtc-http-'));
  issuer = await makeIssuer('a');
  [controller, aaa, broker] = await Promise.all([controllerService(), aaaService('aaa'), brokerService('broker')]);
  await controller.addHost('A', { vms: [vmSpec('vm1')] });
});
afterAll(async () => {
  for (const s of started.splice(0).reverse()) await s.close().catch(() => undefined);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

type Answer = { status: number; headers: Headers; body: any };
/** One request; a service that does not answer within 10 s fails the test (a hang is a defect). */
async function send(base: string, method: string, path: string, o: { headers?: Record<string, string>; body?: string; type?: string } = {}): Promise<Answer> {
  const r = await fetch(base + path, {
    method,
    headers: { ...(o.body !== undefined ? { 'content-type': o.type ?? 'application/json' } : {}), ...(o.headers ?? {}) },
    ...(o.body !== undefined ? { body: o.body } : {}),
    signal: AbortSignal.timeout(10_000),
  });
  const text = await r.text();
  let body: unknown = text;
  try { body = JSON.parse(text); } catch { /* not JSON: the assertions say so */ }
  return { status: r.status, headers: r.headers, body };
}

const deep = (levels: number) => '['.repeat(levels) + ']'.repeat(levels);
const BODIES: Record<string, { body: string; type?: string }> = {
  'a body that fails the schema': { body: JSON.stringify({ nope: 1, vmId: 5 }) },
  'bad JSON': { body: '{"vmId": ' },
  'a text/plain body': { body: 'vmId=vm1', type: 'text/plain' },
  'a body over the size limit': { body: JSON.stringify({ vmId: 'x'.repeat(200_000) }) },
  'a body nested 5000 levels deep': { body: `{"spec":{"extra":{"x":${deep(5000)}}}}` },
};

interface Svc { url: string; auth: () => Promise<Record<string, string>>; post: string }
const SERVICES: Record<string, () => Svc> = {
  controller: () => ({ url: controller.controller.url, post: '/v1/credentials', auth: async () => ({ authorization: `Bearer ${controller.controller.adminToken}` }) }),
  aaa: () => ({ url: aaa.url, post: '/v1/keys/rotate', auth: async () => ({ authorization: `Bearer ${aaa.adminToken}` }) }),
  broker: () => ({
    url: broker.url, post: '/v1/reservations',
    auth: async () => {
      const holder = holderKey();
      const token = await mintToken(issuer, { holder, now: nowS(), scope: { migrationId: 'm', vmId: 'v', project: 'p', src: 'a1', dst: 'a3', bandwidthMbps: 10, window: { start: nowS(), end: nowS() + 600 }, domains: ['a'] } });
      return { authorization: `DPoP ${token}`, dpop: await joseProof(holder, 'POST', `${broker.url}/v1/reservations`, token, nowS()) };
    },
  }),
};

// Each service's routes that need a credential, and the code that refuses a request without one.
const PROTECTED: [string, string, string, string][] = [
  ['controller', 'POST', '/v1/migrations', 'VMTC_UNAUTHENTICATED'],
  ['controller', 'POST', '/v1/vms', 'VMTC_UNAUTHENTICATED'],
  ['controller', 'POST', '/v1/credentials', 'VMTC_UNAUTHENTICATED'],
  ['controller', 'POST', '/v1/enrollment-tokens', 'VMTC_UNAUTHENTICATED'],
  ['aaa', 'POST', '/v1/authorizations', 'VMTC_AAA_PROOF_INVALID'],
  ['aaa', 'POST', '/v1/accounting/events', 'VMTC_UNAUTHENTICATED'],
  ['aaa', 'POST', '/v1/keys/rotate', 'VMTC_UNAUTHENTICATED'],
  ['broker', 'POST', '/v1/reservations', 'VMTC_TOKEN_MISSING'],
  ['broker', 'POST', '/v1/reservations/rsv_x/commit', 'VMTC_DPOP_PROOF_INVALID'],
  ['broker', 'POST', '/v1/reservations/rsv_x/provision', 'VMTC_TOKEN_MISSING'],
];

describe('authentication before parsing', () => {
  it.each(PROTECTED)('%s %s %s: a request without a credential is refused whatever its body, and learns nothing of it', async (svc, method, path, code) => {
    const { url } = SERVICES[svc]!();
    for (const [what, b] of Object.entries(BODIES)) {
      const r = await send(url, method, path, { body: b.body, ...(b.type ? { type: b.type } : {}) });
      expect({ what, status: r.status, code: r.body?.code }).toEqual({ what, status: 401, code });
      // Nothing about the body: no schema problems, no parse error, no size.
      expect(JSON.stringify(r.body)).not.toMatch(/problems|validation|JSON|too large|nest|media/i);
    }
  });

  it('the controller refuses a request with a bad credential before it reads the body', async () => {
    const r = await send(controller.controller.url, 'POST', '/v1/migrations', { body: '{"bad', headers: { authorization: 'Bearer vmtc_guess' } });
    expect(r).toMatchObject({ status: 401, body: { code: 'VMTC_UNAUTHENTICATED' } });
  });

  it('the enrolment route, whose credential is in its body, reads at most a small body', async () => {
    const r = await send(controller.controller.url, 'POST', '/v1/enroll', { body: JSON.stringify({ token: 'x', csr: 'y'.repeat(40_000) }) });
    expect(r).toMatchObject({ status: 413, body: { code: 'VMTC_BODY_TOO_LARGE' } });
    expect(await send(controller.controller.url, 'POST', '/v1/enroll', { body: JSON.stringify({ token: 'vmtc-enroll-guess', csr: 'y' }) })).toMatchObject({ status: 401, body: { code: 'VMTC_ENROLL_TOKEN_INVALID' } });
  });
});

describe.each(Object.keys(SERVICES))('every answer of the %s carries a VMTC_ code', (name) => {
  it('with a credential: bad JSON 400, text/plain 415, too large 413, too deep 400', async () => {
    const svc = SERVICES[name]!();
    const expected: Record<string, [number, string]> = {
      'bad JSON': [400, 'VMTC_BAD_REQUEST'],
      'a text/plain body': [415, 'VMTC_UNSUPPORTED_MEDIA_TYPE'],
      'a body over the size limit': [413, 'VMTC_BODY_TOO_LARGE'],
      'a body nested 5000 levels deep': [400, 'VMTC_BODY_TOO_DEEP'],
      'a body that fails the schema': [400, 'VMTC_VALIDATION'],
    };
    for (const [what, b] of Object.entries(BODIES)) {
      const r = await send(svc.url, 'POST', svc.post, { body: b.body, headers: await svc.auth(), ...(b.type ? { type: b.type } : {}) });
      expect({ what, status: r.status, code: r.body?.code }).toEqual({ what, status: expected[what]![0], code: expected[what]![1] });
    }
  });

  it('unknown route 404, wrong method 405 with Allow, path parameter too long or badly encoded 400', async () => {
    const svc = SERVICES[name]!();
    expect(await send(svc.url, 'GET', '/v1/no-such-thing')).toMatchObject({ status: 404, body: { code: 'VMTC_NOT_FOUND' } });
    const wrong = await send(svc.url, 'PUT', svc.post);
    expect(wrong).toMatchObject({ status: 405, body: { code: 'VMTC_METHOD_NOT_ALLOWED' } });
    expect(wrong.headers.get('allow')).toContain('POST');
    const withParam = { controller: '/v1/migrations/', aaa: undefined, broker: '/v1/reservations/' }[name];
    if (withParam) {
      expect(await send(svc.url, 'GET', withParam + 'x'.repeat(300), { headers: await svc.auth() })).toMatchObject({ status: 400, body: { code: 'VMTC_VALIDATION' } });
      expect(await send(svc.url, 'GET', withParam + '%zz', { headers: await svc.auth() })).toMatchObject({ status: 400, body: { code: 'VMTC_BAD_REQUEST' } });
    }
  });

  it('malformed HTTP is answered with a coded body', async () => {
    const { port } = new URL(SERVICES[name]!().url);
    const answer = await new Promise<string>((resolve, reject) => {
      const s = net.connect(Number(port), '127.0.0.1', () => s.write('GET /v1/info HTTP/1.1\r\nHost: x\r\nthis is not a header\r\n\r\n'));
      let got = '';
      s.on('data', (d) => { got += d; });
      s.on('close', () => resolve(got));
      s.on('error', reject);
      s.setTimeout(10_000, () => { s.destroy(); reject(new Error('no answer')); });
    });
    expect(answer).toMatch(/^HTTP\/1\.1 400/);
    expect(JSON.parse(answer.slice(answer.indexOf('\r\n\r\n') + 4))).toMatchObject({ code: 'VMTC_BAD_REQUEST' });
  });
});

describe('deeply nested JSON', () => {
  it('POST /v1/vms with 5000 levels in spec.extra is refused at once with VMTC_BODY_TOO_DEEP, before any agent is asked', async () => {
    const body = `{"hostId":"A","spec":{"vmId":"deep","project":"p","vcpus":1,"memoryMb":64,"diskGb":1,"extra":{"x":${deep(5000)}}}}`;
    expect(body.length).toBeLessThan(11_000);
    const r = await send(controller.controller.url, 'POST', '/v1/vms', { body, headers: { authorization: `Bearer ${controller.controller.adminToken}` } });
    expect(r).toMatchObject({ status: 400, body: { code: 'VMTC_BODY_TOO_DEEP', details: { maxDepth: 32 } } });
    expect(await controller.agents.get('A')!.driver.list()).toHaveLength(1);
    // Nesting within the limit passes.
    const ok = `{"hostId":"A","spec":{"vmId":"shallow","project":"p","vcpus":1,"memoryMb":64,"diskGb":1,"extra":{"x":${deep(20)}}}}`;
    expect((await send(controller.controller.url, 'POST', '/v1/vms', { body: ok, headers: { authorization: `Bearer ${controller.controller.adminToken}` } })).status).toBe(201);
  });
});

describe('starting a VM on a host without room', () => {
  it('is refused by the controller with a 4xx of the pre-checks, not relayed as the agent\'s 5xx', async () => {
    const auth = { authorization: `Bearer ${controller.controller.adminToken}` };
    const start = (vmId: string, memoryMb: number) => send(controller.controller.url, 'POST', '/v1/vms', { headers: auth, body: JSON.stringify({ hostId: 'A', spec: { vmId, project: 'p', vcpus: 1, memoryMb, diskGb: 1 } }) });
    // More than any host has: the request's fault (api-vm-capacity.test.ts has the 409s).
    expect(await start('huge', 4_000_000)).toMatchObject({ status: 422, body: { code: 'VMTC_VM_TOO_LARGE', details: { resource: 'memoryMb', need: 4_000_000 } } });
    expect(await controller.agents.get('A')!.driver.list()).not.toContainEqual(expect.objectContaining({ vmId: 'huge' }));
  });
});

describe('rate limits', () => {
  const refusals = { refusals: { max: 5, windowMs: 60_000 } };
  const BAD: Record<string, () => Promise<{ url: string; bad: () => Promise<Answer>; good: () => Promise<Answer> }>> = {
    controller: async () => {
      const h = await controllerService(refusals);
      const url = h.controller.url;
      return { url, bad: () => send(url, 'GET', '/v1/hosts', { headers: { authorization: 'Bearer vmtc_guess' } }), good: () => send(url, 'GET', '/v1/hosts', { headers: { authorization: `Bearer ${h.controller.adminToken}` } }) };
    },
    aaa: async () => {
      const a = await aaaService('aaa-rl', refusals);
      return { url: a.url, bad: () => send(a.url, 'POST', '/v1/authorizations', { body: '{}', headers: { dpop: 'not.a.proof' } }), good: () => send(a.url, 'GET', '/v1/accounting', { headers: { authorization: `Bearer ${a.adminToken}` } }) };
    },
    broker: async () => {
      const b = await brokerService('broker-rl', refusals);
      return { url: b.url, bad: () => send(b.url, 'GET', '/v1/reservations', { headers: { authorization: 'Bearer guess' } }), good: () => send(b.url, 'GET', '/v1/reservations', { headers: { authorization: `Bearer ${b.operatorToken}` } }) };
    },
  };

  it.each(Object.keys(BAD))('%s: a burst of failed authentications gets 429 VMTC_RATE_LIMITED with Retry-After, then every request from the address does', async (name) => {
    const s = await BAD[name]!();
    for (let i = 0; i < 5; i++) expect((await s.bad()).status).toBe(401);
    const limited = await s.bad();
    expect(limited).toMatchObject({ status: 429, body: { code: 'VMTC_RATE_LIMITED', details: { limit: 'refusals', max: 5 } } });
    expect(Number(limited.headers.get('retry-after'))).toBeGreaterThan(0);
    // Guessing on is pointless: a good credential from the same address is refused too, for now.
    expect(await s.good()).toMatchObject({ status: 429, body: { code: 'VMTC_RATE_LIMITED' } });
  });

  it('every request counts against the request limit', async () => {
    const h = await controllerService({ requests: { max: 3, windowMs: 60_000 } });
    const get = () => send(h.controller.url, 'GET', '/v1/hosts', { headers: { authorization: `Bearer ${h.controller.adminToken}` } });
    for (let i = 0; i < 3; i++) expect((await get()).status).toBe(200);
    const limited = await get();
    expect(limited).toMatchObject({ status: 429, body: { code: 'VMTC_RATE_LIMITED', details: { limit: 'requests', max: 3 } } });
    expect(limited.headers.get('retry-after')).toMatch(/^\d+$/);
  });

  it('refuses a limit that is not a count and a window', async () => {
    await expect(startAaa({ dataDir: join(dir, 'aaa-bad'), domain: 'a', logger: silentLogger(), policy: { version: 1, sites: {}, requesters: [], rules: [] }, rateLimit: { requests: { max: -1, windowMs: 0 } } }))
      .rejects.toMatchObject({ code: 'VMTC_CONFIG_INVALID', details: { field: 'rateLimit.requests' } });
  });
});
