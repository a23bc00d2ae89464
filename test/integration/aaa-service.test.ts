// The AAA as a real server on port 0 with a real SQLite file: policy grants and denials, token
// contents (checked with jose against the published JWKS), key rotation, accounting.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtempSync, rmSync, statSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLocalJWKSet, createRemoteJWKSet, jwtVerify, decodeProtectedHeader } from 'jose';
import { ManualClock } from '../../src/common/clock.ts';
import { silentLogger } from '../../src/common/log.ts';
import { generateRequesterKey, makeDpopProof, accessTokenHash, type RequesterKey } from '../../src/common/dpop.ts';
import { startAaa, type AaaHandle } from '../../src/aaa/index.ts';
import { requestAuthorization, reportAccounting, queryAccounting, type LightpathRequest } from '../../src/aaa/client.ts';
import { verifyPresentedToken, type CapabilityClaims } from '../../src/aaa/tokens.ts';
import { publicKeyFromJwk } from '../../src/common/dpop.ts';
import { refusal } from '../helpers/aaa-fixture.ts';

let dir: string;
let aaa: AaaHandle;
let ctl: RequesterKey;
let night: RequesterKey;
let stranger: RequesterKey;
const clock = new ManualClock(Date.now());
const nowSec = () => Math.floor(clock.now() / 1000);
const C = { now: () => clock.now() };

function nextUtcHour(h: number, minute: number): number {
  // The next occurrence (at least 10 minutes ahead) of hh:mm UTC, epoch seconds.
  const d = new Date(clock.now());
  let t = Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate(), h, minute) / 1000;
  while (t < nowSec() + 600) t += 86400;
  return t;
}

const req = (over: Partial<LightpathRequest> = {}): LightpathRequest => ({
  migrationId: 'mig-1', vmId: 'vm-1', project: 'p1', src: 'siteA', dst: 'siteB', bandwidthMbps: 500,
  window: { start: nowSec(), end: nowSec() + 600 }, ...over,
});

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'vmtc-aaa-'));
  ctl = await generateRequesterKey();
  night = await generateRequesterKey();
  stranger = await generateRequesterKey();
  aaa = await startAaa({
    dataDir: dir, domain: 'a', clock, logger: silentLogger(),
    policy: {
      version: 1,
      sites: { siteA: 'a', siteB: 'a' },
      requesters: [{ id: 'controller-1', jkt: ctl.jkt }, { id: 'night-ops', jwk: night.publicJwk }],
      rules: [
        { id: 'ctl-a-to-b', requesters: ['controller-1'], projects: ['p1'], src: ['siteA'], dst: ['siteB'], maxBandwidthMbps: 1000 },
        { id: 'ctl-quota', requesters: ['controller-1'], vms: ['vm-q'], maxBandwidthMbps: 10, quota: { maxGrantsPerHour: 2 } },
        { id: 'night-only', requesters: ['night-ops'], vms: '*', maxBandwidthMbps: 100, timeOfDay: [{ start: '01:00', end: '02:00' }] },
      ],
    },
  });
});

afterAll(async () => {
  await aaa?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('AAA authorizations', () => {
  it('grants a token whose claims follow the format and which verifies against the published JWKS', async () => {
    const body = req({ migrationId: 'mig-ok' });
    const r = await requestAuthorization(aaa.url, ctl, body, C);
    expect(r).toMatchObject({ jti: expect.any(String), audience: ['broker:a'], domains: ['a'] });
    expect(decodeProtectedHeader(r.token)).toEqual({ alg: 'EdDSA', kid: aaa.keys.signing().kid, typ: 'vmtc-cap+jwt' });
    // Verify exactly as a broker would, with jose and the JWKS fetched over HTTP.
    const jwks = createRemoteJWKSet(new URL(`${aaa.url}/.well-known/jwks.json`));
    const { payload } = await jwtVerify(r.token, jwks, { issuer: 'aaa:a', audience: 'broker:a', typ: 'vmtc-cap+jwt', algorithms: ['EdDSA'], currentDate: new Date(clock.now()) });
    const c = payload as unknown as CapabilityClaims;
    expect(c.sub).toBe('controller-1');
    expect(c.jti).toBe(r.jti);
    expect(c.cnf).toEqual({ jkt: ctl.jkt });
    expect(c.exp - c.iat).toBe(300);
    expect(c.nbf).toBe(c.iat);
    expect(c.vmtc).toEqual({ migrationId: 'mig-ok', vmId: 'vm-1', project: 'p1', src: 'siteA', dst: 'siteB', bandwidthMbps: 500, window: body.window, domains: ['a'] });
    expect(new Date(r.expiresAt).getTime()).toBe(c.exp * 1000);
    // The holder's key, and only it, makes a proof a resource server accepts with this token.
    const htu = 'http://127.0.0.1:1/v1/reservations/x/provision';
    const keyOf = (kid: string) => { const k = aaa.jwks().keys.find((j) => j.kid === kid); return k ? publicKeyFromJwk(k) : undefined; };
    const opts = { key: keyOf, issuers: ['aaa:a'], audience: 'broker:a', now: clock.now(), htm: 'POST', htu };
    const good = await makeDpopProof(ctl, 'POST', htu, r.token, { now: clock.now() });
    expect(verifyPresentedToken(r.token, good, opts).claims.jti).toBe(r.jti);
    const stolen = await makeDpopProof(stranger, 'POST', htu, r.token, { now: clock.now() });
    expect(() => verifyPresentedToken(r.token, stolen, opts)).toThrow(expect.objectContaining({ code: 'VMTC_DPOP_PROOF_INVALID', details: expect.objectContaining({ reason: 'key-mismatch' }) }));
    expect(() => verifyPresentedToken(r.token, good, { ...opts, audience: 'broker:b' })).toThrow(expect.objectContaining({ code: 'VMTC_AAA_TOKEN_INVALID' }));
    expect(() => verifyPresentedToken(r.token, good, { ...opts, now: clock.now() + 400_000 })).toThrow(expect.objectContaining({ details: expect.objectContaining({ reason: 'expired' }) }));
  });

  it('refuses the wrong destination site, too much bandwidth and another project, naming rule and field', async () => {
    const dst = await refusal(requestAuthorization(aaa.url, ctl, req({ dst: 'siteA' }), C));
    expect(dst.code).toBe('VMTC_AAA_POLICY_DENIED');
    expect(dst.status).toBe(403);
    expect(dst.details).toMatchObject({ rule: 'ctl-a-to-b', field: 'dst', got: 'siteA' });
    const bw = await refusal(requestAuthorization(aaa.url, ctl, req({ bandwidthMbps: 1500 }), C));
    expect(bw.code).toBe('VMTC_AAA_POLICY_DENIED');
    expect(bw.details).toMatchObject({ rule: 'ctl-a-to-b', field: 'bandwidthMbps', got: 1500, limit: 1000 });
    const proj = await refusal(requestAuthorization(aaa.url, ctl, req({ project: 'p2' }), C));
    expect(proj.details).toMatchObject({ field: 'project' });
    const site = await refusal(requestAuthorization(aaa.url, ctl, req({ dst: 'nowhere' }), C));
    expect(site.code).toBe('VMTC_AAA_SITE_UNKNOWN');
    const win = await refusal(requestAuthorization(aaa.url, ctl, req({ window: { start: nowSec() + 100, end: nowSec() + 50 } }), C));
    expect(win.code).toBe('VMTC_AAA_WINDOW_INVALID');
  });

  it('applies time-of-day windows (UTC)', async () => {
    const inside = nextUtcHour(1, 10);
    const ok = await requestAuthorization(aaa.url, night, req({ vmId: 'vm-7', bandwidthMbps: 50, window: { start: inside, end: inside + 2400 } }), C);
    expect(ok.token).toBeTruthy();
    const outside = nextUtcHour(2, 10);
    const e = await refusal(requestAuthorization(aaa.url, night, req({ vmId: 'vm-7', bandwidthMbps: 50, window: { start: outside, end: outside + 600 } }), C));
    expect(e.code).toBe('VMTC_AAA_POLICY_DENIED');
    expect(e.details).toMatchObject({ rule: 'night-only', field: 'window' });
    // Straddling the end of the allowed hour is outside too.
    const straddle = await refusal(requestAuthorization(aaa.url, night, req({ vmId: 'vm-7', bandwidthMbps: 50, window: { start: inside + 2400, end: inside + 3600 } }), C));
    expect(straddle.details).toMatchObject({ field: 'window' });
  });

  it('enforces quotas', async () => {
    const body = req({ vmId: 'vm-q', project: 'px', bandwidthMbps: 5 });
    await requestAuthorization(aaa.url, ctl, body, C);
    await requestAuthorization(aaa.url, ctl, body, C);
    const e = await refusal(requestAuthorization(aaa.url, ctl, body, C));
    expect(e.code).toBe('VMTC_AAA_QUOTA_EXCEEDED');
    expect(e.status).toBe(429);
    expect(e.details).toMatchObject({ rule: 'ctl-quota', field: 'quota.maxGrantsPerHour', used: 2, limit: 2 });
  });

  it('refuses an unknown requester, a bad proof, a replayed proof and a proof for another URL', async () => {
    const unknown = await refusal(requestAuthorization(aaa.url, stranger, req(), C));
    expect(unknown.code).toBe('VMTC_AAA_REQUESTER_UNKNOWN');
    expect(unknown.details).toMatchObject({ jkt: stranger.jkt });
    const url = `${aaa.url}/v1/authorizations`;
    const post = (headers: Record<string, string>) => fetch(url, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(req()) });
    const none = await post({});
    expect(none.status).toBe(401);
    expect(await none.json()).toMatchObject({ code: 'VMTC_AAA_PROOF_INVALID', details: { reason: 'missing' } });
    const garbage = await post({ dpop: 'not.a.proof' });
    expect(await garbage.json()).toMatchObject({ code: 'VMTC_AAA_PROOF_INVALID', details: { reason: 'malformed' } });
    const elsewhere = await post({ dpop: await makeDpopProof(ctl, 'POST', `${aaa.url}/v1/other`, undefined, { now: clock.now() }) });
    expect(await elsewhere.json()).toMatchObject({ code: 'VMTC_AAA_PROOF_INVALID', details: { reason: 'htu' } });
    const old = await post({ dpop: await makeDpopProof(ctl, 'POST', url, undefined, { now: clock.now() - 120_000 }) });
    expect(await old.json()).toMatchObject({ code: 'VMTC_AAA_PROOF_INVALID', details: { reason: 'iat-too-old' } });
    // A proof whose header carries the controller's key but is signed by another key.
    const real = await makeDpopProof(ctl, 'POST', url, undefined, { now: clock.now() });
    const forged = await makeDpopProof(stranger, 'POST', url, undefined, { now: clock.now() });
    const spliced = [real.split('.')[0], forged.split('.')[1], forged.split('.')[2]].join('.');
    const bad = await post({ dpop: spliced });
    expect(await bad.json()).toMatchObject({ code: 'VMTC_AAA_PROOF_INVALID', details: { reason: 'signature' } });
    const first = await post({ dpop: real });
    expect(first.status).toBe(201);
    const again = await post({ dpop: real });
    expect(await again.json()).toMatchObject({ code: 'VMTC_AAA_PROOF_INVALID', details: { reason: 'replayed' } });
    // A proof bound to an access token is not a proof for a token request.
    const withAth = await post({ dpop: await makeDpopProof(ctl, 'POST', url, 'some-token', { now: clock.now() }) });
    expect(await withAth.json()).toMatchObject({ code: 'VMTC_AAA_PROOF_INVALID', details: { reason: 'ath-unexpected' } });
    expect(accessTokenHash('x')).toHaveLength(43);
  });

  it('refuses unknown fields in the body', async () => {
    const e = await refusal(requestAuthorization(aaa.url, ctl, { ...req(), extra: 1 } as unknown as LightpathRequest, C));
    expect(e.code).toBe('VMTC_VALIDATION');
  });
});

describe('AAA keys', () => {
  it('rotates without downtime: old tokens keep verifying, new tokens use the new kid, the old key goes after its tokens expire', async () => {
    const before = await requestAuthorization(aaa.url, ctl, req({ migrationId: 'mig-rot-1' }), C);
    const oldKid = decodeProtectedHeader(before.token).kid!;
    expect((await fetch(`${aaa.url}/v1/keys/rotate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' })).status).toBe(401);
    expect((await fetch(`${aaa.url}/v1/keys/rotate`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: 'Bearer wrong' }, body: '{}' })).status).toBe(403);
    const rot = await fetch(`${aaa.url}/v1/keys/rotate`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${aaa.adminToken}` }, body: '{}' });
    expect(rot.status).toBe(200);
    const { kid: newKid, previous } = (await rot.json()) as { kid: string; previous: string };
    expect(previous).toBe(oldKid);
    expect(newKid).not.toBe(oldKid);
    const after = await requestAuthorization(aaa.url, ctl, req({ migrationId: 'mig-rot-2' }), C);
    expect(decodeProtectedHeader(after.token).kid).toBe(newKid);
    const jwks = (await (await fetch(`${aaa.url}/.well-known/jwks.json`)).json()) as { keys: { kid: string }[] };
    expect(jwks.keys.map((k) => k.kid)).toEqual([newKid, oldKid]);
    const set = createLocalJWKSet(jwks as never);
    const at = new Date(clock.now());
    for (const t of [before.token, after.token]) {
      await expect(jwtVerify(t, set, { issuer: 'aaa:a', audience: 'broker:a', currentDate: at })).resolves.toBeTruthy();
    }
    // Once every token signed by the old key has expired, the old key is no longer published.
    clock.advance((300 + 61) * 1000);
    expect(aaa.jwks().keys.map((k) => k.kid)).toEqual([newKid]);
  });

  it('keeps the admin credential in a 0600 file', () => {
    expect(statSync(join(dir, 'admin.token')).mode & 0o777).toBe(0o600);
    expect(readFileSync(join(dir, 'admin.token'), 'utf8').trim()).toBe(aaa.adminToken);
  });
});

describe('AAA accounting', () => {
  it('records grants and refusals, and use/release reports with how much', async () => {
    const g = await requestAuthorization(aaa.url, ctl, req({ migrationId: 'mig-acct', bandwidthMbps: 200, window: { start: nowSec(), end: nowSec() + 100 } }), C);
    await refusal(requestAuthorization(aaa.url, ctl, req({ migrationId: 'mig-acct', bandwidthMbps: 2000 }), C));
    const use = await reportAccounting(aaa.url, ctl, { kind: 'use', jti: g.jti, at: nowSec() }, C);
    expect(use).toMatchObject({ kind: 'use', who: 'controller-1', reporter: 'controller-1', migrationId: 'mig-acct' });
    const rel = await reportAccounting(aaa.url, ctl, { kind: 'release', jti: g.jti, at: nowSec() + 30, bytes: 123456 }, C);
    expect(rel).toMatchObject({ kind: 'release', mbitSeconds: 200 * 30, bytes: 123456 });
    const unknown = await refusal(reportAccounting(aaa.url, ctl, { kind: 'use', jti: 'nope' }, C));
    expect(unknown.code).toBe('VMTC_AAA_GRANT_UNKNOWN');
    const stranger403 = await refusal(reportAccounting(aaa.url, stranger, { kind: 'use', jti: g.jti }, C));
    expect(stranger403.code).toBe('VMTC_AAA_REQUESTER_UNKNOWN');

    const { events } = await queryAccounting(aaa.url, ctl, { migrationId: 'mig-acct' }, C);
    expect(events.map((e) => e.kind)).toEqual(['grant', 'refusal', 'use', 'release']);
    expect(events[0]).toMatchObject({ who: 'controller-1', rule: 'ctl-a-to-b', jti: g.jti, bandwidthMbps: 200, mbitSeconds: 200 * 100, src: 'siteA', dst: 'siteB', domains: ['a'] });
    expect(events[1]).toMatchObject({ who: 'controller-1', code: 'VMTC_AAA_POLICY_DENIED', details: { field: 'bandwidthMbps' } });
    // Admin can read too; the unknown requester's refusal earlier is on record under its thumbprint.
    const all = (await (await fetch(`${aaa.url}/v1/accounting?kind=refusal&limit=1000`, { headers: { authorization: `Bearer ${aaa.adminToken}` } })).json()) as { events: { who: string; code: string }[] };
    expect(all.events.some((e) => e.who === `jkt:${stranger.jkt}` && e.code === 'VMTC_AAA_REQUESTER_UNKNOWN')).toBe(true);
    expect((await fetch(`${aaa.url}/v1/accounting`)).status).toBe(401);
  });

  it('does not count a withdrawn consent against quotas', () => {
    const acc = aaa.accounting;
    const at = clock.now();
    acc.record({ at, kind: 'consent-grant', who: 'aaa:zz', rule: 'cq', jti: 'j-w', mbitSeconds: 10 });
    acc.record({ at, kind: 'consent-grant', who: 'aaa:zz', rule: 'cq', jti: 'j-k', mbitSeconds: 5 });
    expect(acc.usage('aaa:zz', 'cq', 'consent-grant', at - 1000)).toEqual({ grantsLastHour: 2, mbitSecondsLastHour: 15 });
    // A release by someone else, or not marked withdrawn, changes nothing.
    acc.record({ at, kind: 'release', who: 'aaa:yy', jti: 'j-w', details: { withdrawn: true } });
    acc.record({ at, kind: 'release', who: 'aaa:zz', jti: 'j-w', details: { withdrawn: false } });
    expect(acc.usage('aaa:zz', 'cq', 'consent-grant', at - 1000).grantsLastHour).toBe(2);
    acc.record({ at, kind: 'release', who: 'aaa:zz', jti: 'j-w', details: { withdrawn: true } });
    expect(acc.usage('aaa:zz', 'cq', 'consent-grant', at - 1000)).toEqual({ grantsLastHour: 1, mbitSecondsLastHour: 5 });
  });

  it('is append-only in the store itself', () => {
    const db = (aaa.accounting as unknown as { db: { prepare(s: string): { run(): unknown } } }).db;
    expect(() => db.prepare('DELETE FROM accounting').run()).toThrow(/append-only/);
    expect(() => db.prepare("UPDATE accounting SET who = 'x'").run()).toThrow(/append-only/);
  });
});
