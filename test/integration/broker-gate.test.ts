// The token gate: every attack in docs/broker.md#token-gate is refused with its code, and nothing
// changes (no reservation, no booking, no network element call). Real server on port 0, real SQLite
// file, tokens and proofs signed with real Ed25519 keys (jose).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/common/clock.ts';
import { VmtcError } from '../../src/common/errors.ts';
import { BrokerClient } from '../../src/broker/client.ts';
import { MemoryDoubleDriver } from '../../src/broker/drivers/memory-double.ts';
import { requestJson } from '../../src/common/http-client.ts';
import { startBroker, type Broker } from '../../src/broker/index.ts';
import { holderKey, joseProof, lineTopology, makeIssuer, mintToken, tempDir, type Issuer, type TokenScope } from '../helpers/broker-helpers.ts';

const clock = new ManualClock(1_800_000_000_000);
const nowS = () => Math.floor(clock.now() / 1000);
const tmp = tempDir();
const driver = new MemoryDoubleDriver();
let issuer: Issuer;
let broker: Broker;
let client: BrokerClient;
const holder = holderKey();

function scope(over: Partial<TokenScope> = {}): TokenScope {
  return {
    migrationId: 'mig_1', vmId: 'vm-1', project: 'p', src: 'a1', dst: 'a3', bandwidthMbps: 500,
    window: { start: nowS(), end: nowS() + 3600 }, domains: ['a'], ...over,
  };
}
const body = (over: Record<string, unknown> = {}) => ({ src: 'a1', dst: 'a3', bandwidthMbps: 500, window: { start: nowS(), end: nowS() + 3600 }, ...over });

async function start(): Promise<Broker> {
  return startBroker({
    dataDir: tmp.dir, domain: 'a', topology: lineTopology(), driver, clock,
    trust: { issuers: [{ iss: issuer.iss, jwks: { keys: [issuer.publicJwk] } }] },
  });
}

/** Expect a coded refusal and that nothing at all changed in the broker or the network. */
async function refused(p: Promise<unknown>, code: string, reason?: string): Promise<VmtcError> {
  const before = { rows: broker.store.list().length, booked: broker.service.calendar.size, calls: driver.calls.length };
  const e = await p.then(() => undefined, (x: unknown) => x);
  expect(e).toBeInstanceOf(VmtcError);
  const ve = e as VmtcError;
  expect(ve.code).toBe(code);
  if (reason) expect(ve.details?.reason).toBe(reason);
  expect({ rows: broker.store.list().length, booked: broker.service.calendar.size, calls: driver.calls.length }).toEqual(before);
  return ve;
}

async function rawPost(path: string, b: unknown, headers: Record<string, string>): Promise<unknown> {
  const res = await requestJson(`${broker.url}${path}`, { method: 'POST', body: b, headers });
  if (res.status >= 300) throw VmtcError.fromBody(res.body, res.status);
  return res.body;
}

beforeAll(async () => {
  issuer = await makeIssuer('a');
  broker = await start();
  client = new BrokerClient(broker.url, { now: () => clock.now(), operatorToken: broker.operatorToken });
});
afterAll(async () => {
  await broker?.close();
  tmp.cleanup();
});

describe('broker token gate', () => {
  it('accepts a valid token with its proof and holds the reservation', async () => {
    const token = await mintToken(issuer, { holder, scope: scope(), now: nowS() });
    const r = await client.reserve(body(), token, holder);
    expect(r.reservationState).toBe('ReserveHeld');
    expect(r.path.nodes).toEqual(['a1', 'a2', 'a3']);
    await client.abort(r.id, token, holder);
  });

  it('refuses a missing token', async () => {
    await refused(rawPost('/v1/reservations', body(), {}), 'VMTC_TOKEN_MISSING');
    await refused(rawPost('/v1/reservations', body(), { authorization: 'Bearer abc' }), 'VMTC_TOKEN_MISSING');
  });

  it('refuses a bad signature, an unknown key, a wrong issuer, a wrong audience', async () => {
    const forger = await makeIssuer('a', issuer.kid); // same kid, different key
    const forged = await mintToken(forger, { holder, scope: scope(), now: nowS() });
    await refused(client.reserve(body(), forged, holder), 'VMTC_TOKEN_BAD_SIGNATURE');
    // Tampered payload, original signature.
    const good = await mintToken(issuer, { holder, scope: scope(), now: nowS() });
    const [h, p, s] = good.split('.');
    const claims = JSON.parse(Buffer.from(p!, 'base64url').toString());
    claims.vmtc.bandwidthMbps = 1000;
    await refused(client.reserve(body(), `${h}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}.${s}`, holder), 'VMTC_TOKEN_BAD_SIGNATURE');
    const unknownKid = await mintToken(forger, { holder, scope: scope(), now: nowS(), kid: 'no-such-kid' });
    await refused(client.reserve(body(), unknownKid, holder), 'VMTC_TOKEN_UNKNOWN_KEY');
    const otherIss = await mintToken(issuer, { holder, scope: scope(), now: nowS(), iss: 'aaa:evil' });
    await refused(client.reserve(body(), otherIss, holder), 'VMTC_TOKEN_ISSUER');
    const otherAud = await mintToken(issuer, { holder, scope: scope(), now: nowS(), aud: ['broker:b'] });
    await refused(client.reserve(body(), otherAud, holder), 'VMTC_TOKEN_AUDIENCE');
    await refused(client.reserve(body(), 'not.a.token', holder), 'VMTC_TOKEN_MALFORMED');
  });

  it('refuses an expired token and one not yet valid', async () => {
    const expired = await mintToken(issuer, { holder, scope: scope(), now: nowS() - 600, exp: nowS() - 1 });
    await refused(client.reserve(body(), expired, holder), 'VMTC_TOKEN_EXPIRED');
    const early = await mintToken(issuer, { holder, scope: scope(), now: nowS(), nbf: nowS() + 60 });
    await refused(client.reserve(body(), early, holder), 'VMTC_TOKEN_NOT_YET_VALID');
  });

  it('refuses a scope that does not cover the request', async () => {
    const token = await mintToken(issuer, { holder, scope: scope(), now: nowS() });
    expect((await refused(client.reserve(body({ dst: 'a2' }), token, holder), 'VMTC_TOKEN_SCOPE')).details?.field).toBe('dst');
    expect((await refused(client.reserve(body({ src: 'a4' }), token, holder), 'VMTC_TOKEN_SCOPE')).details?.field).toBe('src');
    expect((await refused(client.reserve(body({ bandwidthMbps: 501 }), token, holder), 'VMTC_TOKEN_SCOPE')).details?.field).toBe('bandwidthMbps');
    expect((await refused(client.reserve(body({ window: { start: nowS(), end: nowS() + 3601 } }), token, holder), 'VMTC_TOKEN_SCOPE')).details?.field).toBe('window');
    expect((await refused(client.reserve(body({ window: { start: nowS() - 10, end: nowS() + 100 } }), token, holder), 'VMTC_TOKEN_SCOPE')).details?.field).toBe('window');
    expect((await refused(client.reserve(body({ migrationId: 'mig_other' }), token, holder), 'VMTC_TOKEN_SCOPE')).details?.field).toBe('migrationId');
    const elsewhere = await mintToken(issuer, { holder, scope: scope({ domains: ['b'] }), now: nowS(), aud: ['broker:a'] });
    expect((await refused(client.reserve(body(), elsewhere, holder), 'VMTC_TOKEN_SCOPE')).details?.field).toBe('domains');
  });

  it('refuses a proof made with another key, a missing proof, a wrong htm/htu, a stale or replayed proof', async () => {
    const token = await mintToken(issuer, { holder, scope: scope(), now: nowS() });
    await refused(client.reserve(body(), token, holderKey()), 'VMTC_DPOP_PROOF_INVALID', 'key-mismatch');
    const url = `${broker.url}/v1/reservations`;
    const auth = { authorization: `DPoP ${token}` };
    await refused(rawPost('/v1/reservations', body(), auth), 'VMTC_DPOP_PROOF_INVALID', 'missing');
    await refused(rawPost('/v1/reservations', body(), { ...auth, dpop: await joseProof(holder, 'GET', url, token, nowS()) }), 'VMTC_DPOP_PROOF_INVALID', 'htm');
    await refused(rawPost('/v1/reservations', body(), { ...auth, dpop: await joseProof(holder, 'POST', `${broker.url}/v1/other`, token, nowS()) }), 'VMTC_DPOP_PROOF_INVALID', 'htu');
    await refused(rawPost('/v1/reservations', body(), { ...auth, dpop: await joseProof(holder, 'POST', url, token, nowS() - 120) }), 'VMTC_DPOP_PROOF_INVALID', 'iat-too-old');
    await refused(rawPost('/v1/reservations', body(), { ...auth, dpop: await joseProof(holder, 'POST', url, 'another-token', nowS()) }), 'VMTC_DPOP_PROOF_INVALID', 'ath-mismatch');
    // A jose-made proof is accepted once, and its replay is refused.
    const proof = await joseProof(holder, 'POST', url, token, nowS());
    const ok = (await rawPost('/v1/reservations', body(), { ...auth, dpop: proof })) as { id: string };
    expect(ok.id).toBeTruthy();
    await client.abort(ok.id, token, holder);
    const t2 = await mintToken(issuer, { holder, scope: scope(), now: nowS() });
    await refused(rawPost('/v1/reservations', body(), { authorization: `DPoP ${t2}`, dpop: proof }), 'VMTC_DPOP_PROOF_INVALID');
  });

  it('refuses the replay of a token to create a second reservation, even after a restart', async () => {
    const token = await mintToken(issuer, { holder, scope: scope(), now: nowS() });
    const r = await client.reserve(body(), token, holder);
    await refused(client.reserve(body(), token, holder), 'VMTC_TOKEN_REPLAYED');
    // Two concurrent uses of one fresh token: exactly one reservation.
    const t2 = await mintToken(issuer, { holder, scope: scope(), now: nowS() });
    const both = await Promise.allSettled([client.reserve(body({ bandwidthMbps: 10 }), t2, holder), client.reserve(body({ bandwidthMbps: 10 }), t2, holder)]);
    expect(both.filter((x) => x.status === 'fulfilled')).toHaveLength(1);
    expect(((both.find((x) => x.status === 'rejected') as PromiseRejectedResult).reason as VmtcError).code).toBe('VMTC_TOKEN_REPLAYED');
    // Restart on the same data directory: the replay cache is in SQLite.
    await broker.close();
    broker = await start();
    client = new BrokerClient(broker.url, { now: () => clock.now(), operatorToken: broker.operatorToken });
    expect(broker.service.get(r.id)?.reservationState).toBe('ReserveHeld');
    await refused(client.reserve(body(), token, holder), 'VMTC_TOKEN_REPLAYED');
    await client.abort(r.id, token, holder);
    const other = (both.find((x) => x.status === 'fulfilled') as PromiseFulfilledResult<{ id: string }>).value;
    await client.abort(other.id, t2, holder);
  });

  it('binds follow-ups to the holder key and to the token that created the reservation', async () => {
    const token = await mintToken(issuer, { holder, scope: scope(), now: nowS() });
    const r = await client.reserve(body(), token, holder);
    const thief = holderKey();
    await refused(client.commit(r.id, undefined, thief), 'VMTC_NOT_HOLDER');
    await refused(client.commit(r.id, token, thief), 'VMTC_NOT_HOLDER');
    await refused(rawPost(`/v1/reservations/${r.id}/commit`, {}, {}), 'VMTC_DPOP_PROOF_INVALID', 'missing');
    expect((await client.commit(r.id, undefined, holder)).committed).toBe(true);
    // Provision needs the token, and it must be the one that created this reservation.
    await refused(rawPost(`/v1/reservations/${r.id}/provision`, {}, { dpop: await joseProof(holder, 'POST', `${broker.url}/v1/reservations/${r.id}/provision`, undefined, nowS()) }), 'VMTC_TOKEN_MISSING');
    const another = await mintToken(issuer, { holder, scope: scope(), now: nowS() });
    await refused(client.provision(r.id, another, holder), 'VMTC_TOKEN_NOT_BOUND');
    const p = await client.provision(r.id, token, holder);
    expect(p.provisionState).toBe('Provisioned');
    expect(driver.active.has(r.id)).toBe(true);
    await client.teardown(r.id, token, holder);
    expect(driver.active.has(r.id)).toBe(false);
    expect((await client.get(r.id)).lifecycleState).toBe('Terminated');
  });

  it('refuses an upstream field from anyone but a peer broker', async () => {
    const token = await mintToken(issuer, { holder, scope: scope(), now: nowS() });
    await refused(client.reserve({ ...body(), upstream: { domain: 'x', reservationId: 'r' } } as never, token, holder), 'VMTC_PEER_NOT_TRUSTED');
  });
});
