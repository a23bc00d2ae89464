// Reads are gated (docs/broker.md "Reads"): GET /v1/reservations, GET /v1/reservations/:id and the
// SSE feed GET /v1/events answer only the operator's bearer token (DIR/operator.token, 0600, kept
// across restarts) — or, for one reservation, its holder's token and a DPoP proof for that GET. A
// refusal is a coded 401 that carries no reservation field and does not reveal whether an id exists.
import http from 'node:http';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/common/clock.ts';
import { VmtcError } from '../../src/common/errors.ts';
import { BrokerClient } from '../../src/broker/client.ts';
import { MemoryDoubleDriver } from '../../src/broker/drivers/memory-double.ts';
import { requestJson } from '../../src/common/http-client.ts';
import { startBroker, type Broker } from '../../src/broker/index.ts';
import { cleanupsAfterEach, spawnVmtcCli } from '../helpers/cleanups.ts';
import { holderKey, joseProof, lineTopology, makeIssuer, mintToken, tempDir, type Issuer, type TokenScope } from '../helpers/broker-helpers.ts';

const clock = new ManualClock(1_800_000_000_000);
const nowS = () => Math.floor(clock.now() / 1000);
const tmp = tempDir();
const dataDir = join(tmp.dir, 'broker');
const holder = holderKey();
const stranger = holderKey();
const cleanups = cleanupsAfterEach();
let issuer: Issuer;
let broker: Broker;
let holderClient: BrokerClient;
/** A reservation of `holder`, made with `token1`; its fields must never show up in a refusal. */
let rid: string;
let token1: string;

const scope = (over: Partial<TokenScope> = {}): TokenScope => ({ migrationId: 'mig_secret_42', vmId: 'vm', project: 'p', src: 'a1', dst: 'a3', bandwidthMbps: 1000, window: { start: nowS(), end: nowS() + 86_400 }, domains: ['a'], ...over });
const body = () => ({ src: 'a1', dst: 'a3', bandwidthMbps: 123, window: { end: nowS() + 3600 }, migrationId: 'mig_secret_42' });
const start = () => startBroker({
  dataDir, domain: 'a', topology: lineTopology(), driver: new MemoryDoubleDriver(), clock,
  trust: { issuers: [{ iss: issuer.iss, jwks: { keys: [issuer.publicJwk] } }] },
});
const get = (path: string, headers: Record<string, string> = {}) => requestJson(`${broker.url}${path}`, { method: 'GET', headers });

/** A coded 401 that names none of the reservation's fields. */
function expectRefused(res: { status: number; body: unknown }, code = 'VMTC_UNAUTHENTICATED', status = 401): void {
  expect(res.status).toBe(status);
  const b = res.body as { code: string; message: string; details?: Record<string, unknown> };
  expect(b.code).toBe(code);
  expect(Object.keys(b).sort()).toEqual(expect.arrayContaining(['code', 'message']));
  const text = JSON.stringify(b);
  // As JSON values ("a1", :123), not bare substrings: random ids, ports and URLs in the error may
  // contain the characters a1 or 123 by chance.
  for (const secret of ['mig_secret_42', '"a1"', '"a3"', ':123,', ':123}', 'bandwidthMbps', '"reservations"', broker.operatorToken]) expect(text).not.toContain(secret);
}

async function thrown(p: Promise<unknown>): Promise<VmtcError> {
  const e = await p.then(() => undefined, (x: unknown) => x);
  expect(e).toBeInstanceOf(VmtcError);
  return e as VmtcError;
}

beforeAll(async () => {
  issuer = await makeIssuer('a');
  broker = await start();
  holderClient = new BrokerClient(broker.url, { now: () => clock.now() });
  token1 = await mintToken(issuer, { holder, scope: scope(), now: nowS(), ttl: 86_400 });
  rid = (await holderClient.reserve(body(), token1, holder)).id;
});
afterAll(async () => {
  await broker?.close();
  tmp.cleanup();
});

describe('broker reads need a credential', () => {
  it('keeps the operator token in a 0600 file: 32 random bytes, base64url', () => {
    expect(broker.operatorTokenFile).toBe(join(dataDir, 'operator.token'));
    expect(statSync(broker.operatorTokenFile).mode & 0o777).toBe(0o600);
    expect(readFileSync(broker.operatorTokenFile, 'utf8').trim()).toBe(broker.operatorToken);
    expect(broker.operatorToken).toMatch(/^[A-Za-z0-9_-]{43}$/);
  });

  it('refuses every read route without a credential, with a wrong one, or with another scheme — before any lookup', async () => {
    const wrong = `Bearer ${broker.operatorToken.slice(0, -1)}${broker.operatorToken.endsWith('A') ? 'B' : 'A'}`;
    for (const path of ['/v1/reservations', `/v1/reservations/${rid}`, '/v1/reservations/rsv_does_not_exist', '/v1/events']) {
      expectRefused(await get(path));
      expectRefused(await get(path, { authorization: wrong }));
      expectRefused(await get(path, { authorization: 'Bearer ' }));
      expectRefused(await get(path, { authorization: `Basic ${broker.operatorToken}` }));
      expectRefused(await get(path, { authorization: broker.operatorToken }));
    }
    const r = await get('/v1/reservations', { authorization: wrong });
    expect((r.body as VmtcError).details).toMatchObject({ reason: 'not the operator credential' });
  });

  it('answers every read route to the operator token', async () => {
    const auth = { authorization: `Bearer ${broker.operatorToken}` };
    const list = await get('/v1/reservations', auth);
    expect(list.status).toBe(200);
    expect((list.body as { reservations: { id: string }[] }).reservations.map((x) => x.id)).toContain(rid);
    const one = await get(`/v1/reservations/${rid}`, auth);
    expect(one.status).toBe(200);
    expect(one.body).toMatchObject({ id: rid, src: 'a1', dst: 'a3', bandwidthMbps: 123, migrationId: 'mig_secret_42', reservationState: 'ReserveHeld' });
    expect((one.body as { history: unknown[] }).history.length).toBeGreaterThan(0);
    // With the credential, an unknown id is a plain 404.
    expect((await get('/v1/reservations/rsv_nope', auth)).body).toMatchObject({ code: 'VMTC_RESERVATION_NOT_FOUND' });
  });

  it('BrokerClient sends the operator token from its options or from the argument', async () => {
    const operator = new BrokerClient(broker.url, { operatorToken: broker.operatorToken });
    expect((await operator.get(rid)).id).toBe(rid);
    expect((await operator.list()).reservations.map((x) => x.id)).toContain(rid);
    const bare = new BrokerClient(broker.url);
    expect((await thrown(bare.get(rid))).code).toBe('VMTC_UNAUTHENTICATED');
    expect((await thrown(bare.list())).code).toBe('VMTC_UNAUTHENTICATED');
    expect((await bare.get(rid, broker.operatorToken)).id).toBe(rid);
    expect((await bare.list(broker.operatorToken)).reservations.length).toBeGreaterThan(0);
    expect((await thrown(operator.list('not-the-token'))).code).toBe('VMTC_UNAUTHENTICATED');
  });

  it('streams events only to the operator', async () => {
    const open = (headers: Record<string, string>) => new Promise<{ status: number; type: string; first: string; req: http.ClientRequest }>((resolve, reject) => {
      const req = http.get(`${broker.url}/v1/events`, { headers }, (res) => {
        res.once('data', (c: Buffer) => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type']), first: c.toString(), req }));
        res.on('error', () => undefined);
      });
      req.on('error', reject);
      cleanups.push(() => { req.destroy(); });
    });
    const none = await open({});
    expect(none.status).toBe(401);
    expect(JSON.parse(none.first)).toMatchObject({ code: 'VMTC_UNAUTHENTICATED' });
    const wrong = await open({ authorization: 'Bearer nope' });
    expect(wrong.status).toBe(401);
    const ok = await open({ authorization: `Bearer ${broker.operatorToken}` });
    expect(ok.status).toBe(200);
    expect(ok.type).toBe('text/event-stream');
    expect(ok.first).toContain('vmtc broker events');
  });

  it('lets the holder read its own reservation with its token and a proof, and nothing else', async () => {
    const url = `${broker.url}/v1/reservations/${rid}`;
    expect(await holderClient.getAsHolder(rid, token1, holder)).toMatchObject({ id: rid, migrationId: 'mig_secret_42' });
    // Another reservation of the same holder key, made with another token.
    const token2 = await mintToken(issuer, { holder, scope: scope({ migrationId: 'mig_other' }), now: nowS(), ttl: 86_400 });
    const rid2 = (await holderClient.reserve({ ...body(), migrationId: 'mig_other' }, token2, holder)).id;
    expect((await holderClient.getAsHolder(rid2, token2, holder)).id).toBe(rid2);
    expect((await thrown(holderClient.getAsHolder(rid, token2, holder))).code).toBe('VMTC_TOKEN_NOT_BOUND');
    // Another holder with its own valid token cannot read this one.
    const token3 = await mintToken(issuer, { holder: stranger, scope: scope({ migrationId: 'mig_stranger' }), now: nowS(), ttl: 86_400 });
    const e = await thrown(holderClient.getAsHolder(rid, token3, stranger));
    expect(e.code).toBe('VMTC_NOT_HOLDER');
    expect(JSON.stringify(e.details)).not.toContain('mig_secret_42');
    // The token without a proof, a proof for another method or URL, a proof with another key.
    expectRefused(await get(`/v1/reservations/${rid}`, { authorization: `DPoP ${token1}` }), 'VMTC_DPOP_PROOF_INVALID');
    expectRefused(await get(`/v1/reservations/${rid}`, { authorization: `DPoP ${token1}`, dpop: await joseProof(holder, 'POST', url, token1, nowS()) }), 'VMTC_DPOP_PROOF_INVALID');
    expectRefused(await get(`/v1/reservations/${rid}`, { authorization: `DPoP ${token1}`, dpop: await joseProof(holder, 'GET', `${url}x`, token1, nowS()) }), 'VMTC_DPOP_PROOF_INVALID');
    expectRefused(await get(`/v1/reservations/${rid}`, { authorization: `DPoP ${token1}`, dpop: await joseProof(stranger, 'GET', url, token1, nowS()) }), 'VMTC_DPOP_PROOF_INVALID');
    // A forged token is refused before the lookup: an unknown id answers 401, not 404.
    expectRefused(await get('/v1/reservations/rsv_nope', { authorization: 'DPoP not.a.token' }), 'VMTC_TOKEN_MALFORMED');
    // The holder's token reads one reservation, never the list or the feed.
    for (const path of ['/v1/reservations', '/v1/events']) {
      expectRefused(await get(path, { authorization: `DPoP ${token1}`, dpop: await joseProof(holder, 'GET', `${broker.url}${path}`, token1, nowS()) }));
    }
  });

  it('keeps the same operator token across a restart', async () => {
    const before = broker.operatorToken;
    await broker.close();
    broker = await start();
    expect(broker.operatorToken).toBe(before);
    expect(statSync(broker.operatorTokenFile).mode & 0o777).toBe(0o600);
    expect((await new BrokerClient(broker.url, { operatorToken: before }).get(rid)).id).toBe(rid);
    expectRefused(await get('/v1/reservations'));
  });

  it('refuses to start on an empty or malformed operator token file, naming it', async () => {
    const d = tempDir();
    cleanups.push(() => d.cleanup());
    writeFileSync(join(d.dir, 'operator.token'), '\n', { mode: 0o600 });
    const opts = { dataDir: d.dir, domain: 'a', topology: lineTopology(), trust: { issuers: [{ iss: issuer.iss, jwks: { keys: [issuer.publicJwk] } }] } };
    const e = await thrown(startBroker(opts));
    expect(e.code).toBe('VMTC_CONFIG_INVALID');
    expect(e.details).toMatchObject({ field: 'operator.token' });
  });

  it('vmtc broker prints the token file in its ready line, never the token', async () => {
    const d = tempDir();
    cleanups.push(() => d.cleanup());
    writeFileSync(join(d.dir, 'topology.json'), JSON.stringify(lineTopology()));
    writeFileSync(join(d.dir, 'trust.json'), JSON.stringify({ issuers: [{ iss: issuer.iss, jwks: { keys: [issuer.publicJwk] } }] }));
    const p = spawnVmtcCli(['broker', '--listen', '127.0.0.1:0', '--data', join(d.dir, 'data'), '--domain', 'a', '--topology', join(d.dir, 'topology.json'), '--trust', join(d.dir, 'trust.json')], cleanups);
    // stdout carries the log lines too; the ready line is the one with "event":"ready".
    const readyLine = () => p.stdout().split('\n').find((l) => l.includes('"event":"ready"'));
    for (let i = 0; i < 300 && !readyLine(); i++) await new Promise((r) => setTimeout(r, 50));
    const ready = JSON.parse(readyLine() ?? 'null') as { event: string; url: string; operatorTokenFile: string } | null;
    expect(ready, p.output()).toMatchObject({ event: 'ready', svc: 'broker', operatorTokenFile: join(d.dir, 'data', 'operator.token') });
    const token = readFileSync(ready!.operatorTokenFile, 'utf8').trim();
    expect(p.output()).not.toContain(token);
    expect((await requestJson(`${ready!.url}/v1/reservations`, { method: 'GET' })).status).toBe(401);
    expect((await requestJson(`${ready!.url}/v1/reservations`, { method: 'GET', headers: { authorization: `Bearer ${token}` } })).body).toEqual({ reservations: [] });
    process.kill(p.child.pid!, 'SIGTERM');
    expect(await p.exited).toBe(0);
  });
});
