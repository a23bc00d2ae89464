// A live migration the AAA would refuse is refused when it is asked for, with the AAA's own code,
// and nothing is created (src/controller/policy-precheck.ts); what only the token request can
// know (here: a peer domain whose AAA is down) is still decided then; an AAA that cannot answer
// at admission lets the migration in with a warning. Real servers on loopback: the AAA
// (POST /v1/policy/check, which records nothing), the controller, host agents on the hypervisor
// test double.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startHarness, vmSpec, type Harness } from '../helpers/controller-harness.ts';
import { startAaa, type AaaHandle } from '../../src/aaa/index.ts';
import { checkPolicy } from '../../src/aaa/client.ts';
import { loadControllerKey } from '../../src/controller/integrations.ts';
import { generateRequesterKeySync } from '../../src/common/dpop.ts';
import { silentLogger } from '../../src/common/log.ts';
import { cleanupsAfterEach } from '../helpers/cleanups.ts';
import { refusal } from '../helpers/aaa-fixture.ts';
import { refusedPort } from '../helpers/proc.ts';

let h: Harness;
let aaa: AaaHandle;
let jkt: string;
const cleanups = cleanupsAfterEach();

/** Domain a's policy: the controller may move project demo's VMs from site-A to site-B, or to
 *  site-D in domain b (whose AAA is down), up to 1000 Mbit/s; `over` replaces fields. */
function policy(over: Record<string, unknown> = {}) {
  const peerKey = generateRequesterKeySync().publicJwk;
  return {
    version: 1, domain: 'a', sites: { 'site-A': 'a', 'site-B': 'a', 'site-D': 'b' },
    requesters: [{ id: 'controller', jkt }],
    peers: [{ domain: 'b', url: 'http://127.0.0.1:9', jwk: { ...peerKey, kid: 'b-1' } }],
    rules: [{ id: 'ab', requesters: ['controller'], projects: ['demo'], src: ['site-A'], dst: ['site-B', 'site-D'], maxBandwidthMbps: 1000 }],
    ...over,
  };
}

const refusals = () => aaa.accounting.query({ limit: 1000 }).filter((e) => e.kind === 'refusal');

beforeAll(async () => {
  h = await startHarness({}, async (controllerDir) => {
    mkdirSync(controllerDir, { recursive: true });
    jkt = loadControllerKey(controllerDir).jkt;
    const dir = mkdtempSync(join(tmpdir(), 'vmtc-upfront-'));
    aaa = await startAaa({ dataDir: join(dir, 'aaa'), domain: 'a', logger: silentLogger(), policy: policy() });
    return { options: { aaaUrl: aaa.url }, cleanup: async () => { await aaa.close(); rmSync(dir, { recursive: true, force: true }); } };
  });
  await h.addHost('A', { vms: [vmSpec('vm1'), vmSpec('vm2'), vmSpec('vm3', { memoryMb: 1024 })], bytesPerMb: 64 * 1024 }, 'site-A');
  await h.addHost('B', {}, 'site-B');
  await h.addHost('D', {}, 'site-D');
  await h.addHost('E', {}, 'site-E');
});
afterAll(async () => { await h?.close(); });
afterEach(() => { aaa.reloadPolicy(policy()); });

describe('the AAA\'s policy check at admission', () => {
  it('lets an allowed migration in, and it runs', async () => {
    const r = await h.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B', bandwidthMbps: 500 });
    expect(r.status).toBe(202);
    expect(r.body.warnings).toEqual([]);
    const done = await h.waitState(r.body.id, ['completed', 'rolled_back', 'failed']);
    expect({ state: done.state, error: done.error }).toEqual({ state: 'completed', error: null });
    expect(done.steps.token.jti).toMatch(/.+/);
  });

  it.each([
    ['too much bandwidth', { vmId: 'vm2', destinationHostId: 'B', bandwidthMbps: 5000 }, 403, 'VMTC_AAA_POLICY_DENIED', { field: 'bandwidthMbps' }],
    ['a site the policy does not know', { vmId: 'vm2', destinationHostId: 'E' }, 400, 'VMTC_AAA_SITE_UNKNOWN', { site: 'site-E' }],
    ['a window longer than the AAA allows', { vmId: 'vm2', destinationHostId: 'B', deadline: new Date(Date.now() + 30 * 86_400_000).toISOString() }, 400, 'VMTC_AAA_WINDOW_INVALID', { field: 'window' }],
  ] as const)('refuses %s at once with the AAA\'s code, creating nothing and recording nothing at the AAA', async (_what, body, status, code, details) => {
    const before = refusals().length;
    const r = await h.api('POST', '/v1/migrations', { mode: 'live', ...body });
    expect(r).toMatchObject({ status, body: { code, details: { ...details, step: 'policy-check' } } });
    expect((await h.api('GET', '/v1/migrations?vmId=vm2')).body.migrations).toEqual([]);
    expect(refusals().length).toBe(before);
  });

  it('refuses a requester the policy does not know, and a quota used up, with the AAA\'s codes', async () => {
    aaa.reloadPolicy(policy({ requesters: [], rules: [] }));
    expect(await h.api('POST', '/v1/migrations', { vmId: 'vm2', destinationHostId: 'B' })).toMatchObject({ status: 403, body: { code: 'VMTC_AAA_REQUESTER_UNKNOWN' } });
    // One grant was used by the first test.
    aaa.reloadPolicy(policy({ rules: [{ id: 'ab', requesters: ['controller'], projects: ['demo'], src: ['site-A'], dst: ['site-B'], maxBandwidthMbps: 1000, quota: { maxGrantsPerHour: 1 } }] }));
    expect(await h.api('POST', '/v1/migrations', { vmId: 'vm2', destinationHostId: 'B' })).toMatchObject({ status: 429, body: { code: 'VMTC_AAA_QUOTA_EXCEEDED', details: { step: 'policy-check' } } });
    expect((await h.api('GET', '/v1/migrations?vmId=vm2')).body.migrations).toEqual([]);
  });

  it('leaves what only the token request can know to it: a peer domain\'s consent (its AAA is down)', async () => {
    const r = await h.api('POST', '/v1/migrations', { vmId: 'vm2', destinationHostId: 'D' });
    expect(r.status).toBe(202);
    const done = await h.waitState(r.body.id, ['completed', 'rolled_back', 'failed']);
    expect({ state: done.state, code: done.error?.code }).toEqual({ state: 'rolled_back', code: 'VMTC_AAA_PEER_UNREACHABLE' });
  });

  it('mode=auto: a refused live path is a warning (the cold path needs no token), not a refusal', async () => {
    const r = await h.api('POST', '/v1/migrations', { vmId: 'vm3', destinationHostId: 'B', mode: 'auto', bandwidthMbps: 5000 });
    expect(r.status).toBe(202);
    expect(r.body.warnings).toEqual([expect.objectContaining({ code: 'VMTC_AAA_POLICY_DENIED', details: expect.objectContaining({ step: 'policy-check', coldExpected: true }) })]);
    await h.api('POST', `/v1/migrations/${r.body.id}/cancel`);
    await h.waitState(r.body.id, ['cancelled', 'rolled_back', 'completed', 'failed']);
  });
});

describe('an AAA that cannot answer at admission', () => {
  /** A controller whose AAA URL is `aaaUrl`, with host agents A (vm1) and B. */
  async function controllerWith(aaaUrl: string, policyCheckTimeoutMs?: number): Promise<Harness> {
    const c = await startHarness({ aaaUrl, ...(policyCheckTimeoutMs ? { policyCheckTimeoutMs } : {}) });
    cleanups.push(() => c.close());
    await c.addHost('A', { vms: [vmSpec('vm1', { memoryMb: 1024 })], bytesPerMb: 64 * 1024 }, 'site-A');
    await c.addHost('B', {}, 'site-B');
    return c;
  }

  it('nothing listening: the migration is admitted with a warning, and the token request decides', async () => {
    const port = await refusedPort();
    const c = await controllerWith(`http://127.0.0.1:${port}`);
    const r = await c.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B' });
    expect(r.status).toBe(202);
    expect(r.body.warnings).toEqual([expect.objectContaining({ code: 'VMTC_POLICY_CHECK_UNAVAILABLE', details: expect.objectContaining({ cause: 'VMTC_PEER_UNREACHABLE' }) })]);
    const done = await c.waitState(r.body.id, ['completed', 'rolled_back', 'failed']);
    expect(done.state).toBe('rolled_back');
    expect(done.warnings.map((w: { code: string }) => w.code)).toContain('VMTC_POLICY_CHECK_UNAVAILABLE');
  });

  it('an AAA that does not answer in time (policyCheckTimeoutMs): admitted with a warning whose cause is VMTC_TIMEOUT', async () => {
    const { url, close } = await silentServer();
    cleanups.push(close);
    const c = await controllerWith(url, 300);
    const r = await c.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B', bandwidthMbps: 2 });
    expect(r.status).toBe(202);
    expect(r.body.warnings).toEqual([expect.objectContaining({ code: 'VMTC_POLICY_CHECK_UNAVAILABLE', details: expect.objectContaining({ cause: 'VMTC_TIMEOUT' }) })]);
  });
});

describe('POST /v1/policy/check at the AAA', () => {
  it('answers what POST /v1/authorizations would, records nothing, and refuses unknown keys', async () => {
    const key = generateRequesterKeySync();
    const now = Math.floor(Date.now() / 1000);
    const req = { vmId: 'vm9', project: 'demo', src: 'site-A', dst: 'site-D', bandwidthMbps: 100, window: { start: now, end: now + 600 } };
    const own = loadControllerKey(join(h.dir, 'controller')).key;
    const before = aaa.accounting.query({ limit: 1000 }).length;
    expect(await checkPolicy(aaa.url, own, req)).toEqual({ allowed: true, rule: 'ab', domains: ['a', 'b'], consentFrom: ['b'] });
    expect(await checkPolicy(aaa.url, own, { ...req, dst: 'site-A' })).toMatchObject({ allowed: false, refusal: { code: 'VMTC_AAA_POLICY_DENIED', status: 403, details: { field: 'dst' } } });
    expect(await checkPolicy(aaa.url, own, { ...req, dst: 'mars' })).toMatchObject({ allowed: false, refusal: { code: 'VMTC_AAA_SITE_UNKNOWN', status: 400 } });
    expect(aaa.accounting.query({ limit: 1000 }).length).toBe(before);
    expect((await refusal(checkPolicy(aaa.url, key, req))).code).toBe('VMTC_AAA_REQUESTER_UNKNOWN');
    expect((await refusal(checkPolicy(aaa.url, own, { ...req, bandwidthMbps: -1 }))).code).toBe('VMTC_VALIDATION');
  });
});


/** A loopback server that accepts connections and never answers. */
async function silentServer(): Promise<{ url: string; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const s: Server = createServer((sock) => { sockets.add(sock); sock.on('close', () => sockets.delete(sock)); });
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(s.address() as { port: number }).port}`,
    close: async () => { for (const x of sockets) x.destroy(); await new Promise<void>((r) => s.close(() => r())); },
  };
}
