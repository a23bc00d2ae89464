// Three AAAs (domains a, b, c), real servers on port 0 and real SQLite files: a lightpath from a
// site in a to a site in c through b is authorised only when b and c both consent.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLocalJWKSet, jwtVerify } from 'jose';
import { randomIds, systemClock } from '../../src/common/clock.ts';
import { silentLogger } from '../../src/common/log.ts';
import { generateRequesterKey, type RequesterKey } from '../../src/common/dpop.ts';
import { startAaa, type AaaHandle } from '../../src/aaa/index.ts';
import { openAaaDb } from '../../src/aaa/store.ts';
import { KeyStore } from '../../src/aaa/keys.ts';
import { signConsentRequest } from '../../src/aaa/peers.ts';
import { requestAuthorization, queryAccounting, type LightpathRequest } from '../../src/aaa/client.ts';
import type { AccountingEvent } from '../../src/aaa/accounting.ts';
import { refusal } from '../helpers/aaa-fixture.ts';

const SITES = { siteA: 'a', siteB: 'b', siteC: 'c' };
let root: string;
const started: AaaHandle[] = [];
let a: AaaHandle, b: AaaHandle, c: AaaHandle;
let ctl: RequesterKey;
let aKeyJwk: { kid: string; x: string };
let deadUrl: string;

const now = () => Math.floor(Date.now() / 1000);
const req = (over: Partial<LightpathRequest> = {}): LightpathRequest => ({
  migrationId: 'mig-md', vmId: 'vm-1', project: 'p1', src: 'siteA', dst: 'siteC', bandwidthMbps: 50,
  window: { start: now(), end: now() + 600 }, via: ['b'], ...over,
});

async function adminEvents(h: AaaHandle, migrationId: string): Promise<AccountingEvent[]> {
  const r = await fetch(`${h.url}/v1/accounting?migrationId=${migrationId}`, { headers: { authorization: `Bearer ${h.adminToken}` } });
  return ((await r.json()) as { events: AccountingEvent[] }).events;
}

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'vmtc-aaa-md-'));
  ctl = await generateRequesterKey();
  // a's signing key exists before a starts, so that b and c can pin it (as an operator would,
  // from `GET /v1/info` of a running a, or from its JWKS).
  const aDb = openAaaDb(join(root, 'a', 'aaa.db'));
  aKeyJwk = new KeyStore(aDb, systemClock, randomIds).signing().publicJwk;
  aDb.close();
  // A port nobody listens on: domain d's AAA is "down".
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  deadUrl = `http://127.0.0.1:${(srv.address() as { port: number }).port}`;
  await new Promise<void>((r) => srv.close(() => r()));

  const consentPolicy = (domain: string, maxBw: number) => ({
    domain,
    sites: { ...SITES, siteD: 'd' },
    peers: [{ domain: 'a', url: 'http://127.0.0.1:9', jwk: aKeyJwk }],
    consent: { rules: [{ id: `${domain}-from-a`, domains: ['a'], projects: ['p1'], maxBandwidthMbps: maxBw }] },
  });
  b = await startAaa({ dataDir: join(root, 'b'), domain: 'b', logger: silentLogger(), policy: consentPolicy('b', 1000) });
  started.push(b);
  c = await startAaa({ dataDir: join(root, 'c'), domain: 'c', logger: silentLogger(), policy: consentPolicy('c', 100) });
  started.push(c);
  a = await startAaa({
    dataDir: join(root, 'a'), domain: 'a', logger: silentLogger(),
    policy: {
      domain: 'a',
      sites: { ...SITES, siteD: 'd' },
      requesters: [{ id: 'controller-a', jwk: ctl.publicJwk }],
      peers: [
        { domain: 'b', url: b.url, jwk: b.publicJwk() },
        { domain: 'c', url: c.url, keys: [c.publicJwk()] },
        { domain: 'd', url: deadUrl, jwk: { ...c.publicJwk(), kid: 'd-key' } },
      ],
      rules: [{ id: 'a-anywhere', requesters: ['controller-a'], projects: ['p1'], src: ['siteA'], maxBandwidthMbps: 1000 }],
    },
  });
  started.push(a);
  expect(a.publicJwk()).toEqual(aKeyJwk);
});

afterAll(async () => {
  for (const h of started) await h.close().catch(() => undefined);
  if (root) rmSync(root, { recursive: true, force: true });
});

describe('AAA multi-domain consent', () => {
  it('authorises a path across three domains when every domain consents', async () => {
    const r = await requestAuthorization(a.url, ctl, req({ migrationId: 'mig-3ok' }));
    expect(r.domains).toEqual(['a', 'b', 'c']);
    expect(r.audience).toEqual(['broker:a', 'broker:b', 'broker:c']);
    expect(r.consents).toEqual([{ domain: 'b', rule: 'b-from-a' }, { domain: 'c', rule: 'c-from-a' }]);
    // Each domain's broker accepts the token with a's JWKS and its own audience.
    const set = createLocalJWKSet(a.jwks() as never);
    for (const d of ['a', 'b', 'c']) {
      const { payload } = await jwtVerify(r.token, set, { issuer: 'aaa:a', audience: `broker:${d}` });
      expect((payload as { vmtc: { domains: string[] } }).vmtc.domains).toEqual(['a', 'b', 'c']);
    }
    // Accounting on both sides, joined by the token's jti.
    const onA = await queryAccounting(a.url, ctl, { migrationId: 'mig-3ok' });
    expect(onA.events.map((e) => [e.kind, e.who])).toEqual([['consent-grant', 'aaa:b'], ['consent-grant', 'aaa:c'], ['grant', 'controller-a']]);
    for (const [h, rule] of [[b, 'b-from-a'], [c, 'c-from-a']] as const) {
      const ev = await adminEvents(h, 'mig-3ok');
      expect(ev).toHaveLength(1);
      expect(ev[0]).toMatchObject({ kind: 'consent-grant', who: 'aaa:a', rule, jti: r.jti, bandwidthMbps: 50, details: { requester: 'controller-a' } });
    }
    // b's broker reports use of the lightpath to b's own AAA, which knows the jti from the consent.
    const use = await fetch(`${b.url}/v1/accounting/events`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${b.adminToken}` }, body: JSON.stringify({ kind: 'use', jti: r.jti }) });
    expect(use.status).toBe(201);
    expect(await use.json()).toMatchObject({ kind: 'use', who: 'aaa:a', reporter: 'admin', migrationId: 'mig-3ok', bandwidthMbps: 50 });
  });

  it('refuses the whole when the last domain refuses, naming it, and records the refusal on both sides', async () => {
    const e = await refusal(requestAuthorization(a.url, ctl, req({ migrationId: 'mig-3no', bandwidthMbps: 500 })));
    expect(e.code).toBe('VMTC_AAA_PEER_REFUSED');
    expect(e.status).toBe(403);
    expect(e.details).toMatchObject({ domain: 'c', peerCode: 'VMTC_AAA_CONSENT_DENIED', peerDetails: { domain: 'c', rule: 'c-from-a', field: 'bandwidthMbps', limit: 100 } });
    const onA = await queryAccounting(a.url, ctl, { migrationId: 'mig-3no' });
    expect(onA.events.map((x) => [x.kind, x.who, x.code])).toEqual([
      ['consent-grant', 'aaa:b', undefined],
      ['consent-refusal', 'aaa:c', 'VMTC_AAA_PEER_REFUSED'],
      ['refusal', 'controller-a', 'VMTC_AAA_PEER_REFUSED'],
    ]);
    expect(onA.events.some((x) => x.kind === 'grant')).toBe(false);
    const onC = await adminEvents(c, 'mig-3no');
    expect(onC.map((x) => [x.kind, x.code])).toEqual([['consent-refusal', 'VMTC_AAA_CONSENT_DENIED']]);
    // b consented, but no token came of it: a withdrew b's consent, and b recorded that.
    const onB = await adminEvents(b, 'mig-3no');
    expect(onB.map((x) => [x.kind, x.who])).toEqual([['consent-grant', 'aaa:a'], ['release', 'aaa:a']]);
    expect(onB[1]).toMatchObject({ jti: onB[0]!.jti, mbitSeconds: 0, details: { withdrawn: true, reason: 'VMTC_AAA_PEER_REFUSED' } });
  });

  it('refuses when a domain on the path is unreachable or has no peer entry', async () => {
    const down = await refusal(requestAuthorization(a.url, ctl, req({ migrationId: 'mig-down', dst: 'siteD', via: ['b'] })));
    expect(down.code).toBe('VMTC_AAA_PEER_UNREACHABLE');
    expect(down.details).toMatchObject({ domain: 'd' });
    const unknown = await refusal(requestAuthorization(a.url, ctl, req({ migrationId: 'mig-unk', via: ['zz'] })));
    expect(unknown.code).toBe('VMTC_AAA_PEER_UNKNOWN');
    expect(unknown.details).toEqual({ domain: 'zz' });
  });

  it('after a peer rotates its key, its consents fail until the new key is pinned (policy reload)', async () => {
    const rot = await fetch(`${c.url}/v1/keys/rotate`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${c.adminToken}` }, body: '{}' });
    const { publicJwk } = (await rot.json()) as { publicJwk: Record<string, unknown> };
    const bad = await refusal(requestAuthorization(a.url, ctl, req({ migrationId: 'mig-rot-peer' })));
    expect(bad.code).toBe('VMTC_AAA_PEER_BAD_REPLY');
    expect(bad.details).toMatchObject({ domain: 'c', reason: 'key-not-pinned' });
    // Pin both keys (old and new), as an operator would, and reload without a restart.
    const doc = {
      domain: 'a',
      sites: { ...SITES, siteD: 'd' },
      requesters: [{ id: 'controller-a', jwk: ctl.publicJwk }],
      peers: [
        { domain: 'b', url: b.url, jwk: b.publicJwk() },
        { domain: 'c', url: c.url, keys: [...c.jwks().keys, publicJwk] },
      ],
      rules: [{ id: 'a-anywhere', requesters: ['controller-a'], projects: ['p1'], src: ['siteA'], maxBandwidthMbps: 1000 }],
    };
    expect(() => a.reloadPolicy({ ...doc, rules: [{ id: 'broken' }] })).toThrow(expect.objectContaining({ code: 'VMTC_AAA_POLICY_INVALID' }));
    a.reloadPolicy(doc);
    const ok = await requestAuthorization(a.url, ctl, req({ migrationId: 'mig-rot-peer' }));
    expect(ok.consents.map((x) => x.domain)).toEqual(['b', 'c']);
  });

  it('a peer refuses consent requests not signed by the pinned key, and replays', async () => {
    const forger = await generateRequesterKey();
    const body = { sub: 'controller-a', tokenJti: 'x1', req: { ...req(), domains: ['a', 'b', 'c'] } };
    // Claims to be a, uses a's kid, signed by another key.
    const forged = signConsentRequest({ kid: String(aKeyJwk.kid), privateKey: forger.privateKey }, 'a', 'b', body, Date.now()).jws;
    const post = (jws: string) => fetch(`${b.url}/v1/consents`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ request: jws }) });
    const r1 = await post(forged);
    expect(r1.status).toBe(401);
    expect(await r1.json()).toMatchObject({ code: 'VMTC_AAA_CONSENT_UNAUTHENTICATED', details: { reason: 'signature' } });
    // Claims to be a domain b does not peer with.
    const r2 = await post(signConsentRequest({ kid: 'k', privateKey: forger.privateKey }, 'x', 'b', body, Date.now()).jws);
    expect(await r2.json()).toMatchObject({ code: 'VMTC_AAA_CONSENT_UNAUTHENTICATED', details: { reason: 'unknown-peer' } });
    // Properly signed by a: granted once; the same request again is a replay.
    const genuine = signConsentRequest(a.keys.signing(), 'a', 'b', { ...body, req: { ...body.req, migrationId: 'mig-replay' } }, Date.now()).jws;
    const ok = await post(genuine);
    expect(ok.status).toBe(200);
    expect(await ok.json()).toMatchObject({ rule: 'b-from-a', consent: expect.any(String) });
    const again = await post(genuine);
    expect(await again.json()).toMatchObject({ code: 'VMTC_AAA_CONSENT_UNAUTHENTICATED', details: { reason: 'replayed' } });
    // Addressed to b but sent to c: wrong audience.
    const toC = await fetch(`${c.url}/v1/consents`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ request: signConsentRequest(a.keys.signing(), 'a', 'b', body, Date.now()).jws }) });
    expect(await toC.json()).toMatchObject({ code: 'VMTC_AAA_CONSENT_UNAUTHENTICATED', details: { reason: 'audience' } });
  });
});
