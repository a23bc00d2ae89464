// Interoperability with a standard DPoP client: the `dpop` npm package (RFC 9449) signs Ed25519
// proofs with `alg: "Ed25519"`, the fully-specified name of RFC 9864. A real AAA issues a token
// to such a client, and a real broker (trusting that AAA) lets it reserve, commit and provision
// with the library's proofs. Other algorithms stay refused.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as DPoP from 'dpop';
import { SignJWT, calculateJwkThumbprint, exportJWK } from 'jose';
import { ManualClock } from '../../src/common/clock.ts';
import { silentLogger } from '../../src/common/log.ts';
import { requestJson } from '../../src/common/http-client.ts';
import { startAaa, type AaaHandle } from '../../src/aaa/index.ts';
import { AaaService } from '../../src/aaa/service.ts';
import { startBroker, type Broker } from '../../src/broker/index.ts';
import { MemoryDoubleDriver } from '../../src/broker/drivers/memory-double.ts';
import { lineTopology, makeIssuer, mintToken } from '../helpers/broker-helpers.ts';

// The library stamps iat from the system clock, so the services' clock starts there.
const clock = new ManualClock(Date.now());
const nowSec = () => Math.floor(clock.now() / 1000);
let dir: string;
let aaa: AaaHandle;
let broker: Broker;
let client: DPoP.KeyPair;
let clientJkt: string;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'vmtc-dpop-interop-'));
  client = await DPoP.generateKeyPair('Ed25519');
  clientJkt = await DPoP.calculateThumbprint(client.publicKey);
  aaa = await startAaa({
    dataDir: join(dir, 'aaa'), domain: 'a', clock, logger: silentLogger(),
    policy: {
      version: 1, sites: { a1: 'a', a3: 'a' },
      requesters: [{ id: 'standard-client', jkt: clientJkt }],
      rules: [{ id: 'any', requesters: ['standard-client'], projects: '*', maxBandwidthMbps: 1000 }],
    },
  });
  broker = await startBroker({
    dataDir: join(dir, 'broker'), domain: 'a', topology: lineTopology(), driver: new MemoryDoubleDriver(), clock, logger: silentLogger(),
    trust: { issuers: [{ iss: aaa.issuer, jwks: { keys: aaa.jwks().keys.map((k) => ({ ...k })) } }] },
  });
});

afterAll(async () => {
  await broker?.close();
  await aaa?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const lightpath = (migrationId: string) => ({
  migrationId, vmId: 'vm-1', project: 'p', src: 'a1', dst: 'a3', bandwidthMbps: 100, window: { start: nowSec(), end: nowSec() + 600 },
});

async function authorize(keys: DPoP.KeyPair, migrationId: string) {
  const url = `${aaa.url}/v1/authorizations`;
  return requestJson(url, { method: 'POST', body: lightpath(migrationId), headers: { dpop: await DPoP.generateProof(keys, url, 'POST') } });
}

describe('a standard DPoP client (the dpop package, alg Ed25519)', () => {
  it('gets a token from the AAA and reserves, commits and provisions at the broker with its proofs', async () => {
    const proof = await DPoP.generateProof(client, `${aaa.url}/v1/authorizations`, 'POST');
    expect(JSON.parse(Buffer.from(proof.split('.')[0]!, 'base64url').toString())).toMatchObject({ alg: 'Ed25519', typ: 'dpop+jwt' });
    const granted = await authorize(client, 'mig-std');
    expect(granted.status).toBe(201);
    const token = (granted.body as { token: string }).token;
    expect(AaaService.claimsOf(token).cnf).toEqual({ jkt: clientJkt });

    const reserveUrl = `${broker.url}/v1/reservations`;
    const reserved = await requestJson(reserveUrl, {
      method: 'POST',
      body: { src: 'a1', dst: 'a3', bandwidthMbps: 100, window: { start: nowSec(), end: nowSec() + 600 }, migrationId: 'mig-std' },
      headers: { authorization: `DPoP ${token}`, dpop: await DPoP.generateProof(client, reserveUrl, 'POST', undefined, token) },
    });
    expect(reserved.status).toBe(201);
    const id = (reserved.body as { id: string }).id;
    const follow = async (op: string, withToken: boolean) => {
      const url = `${broker.url}/v1/reservations/${id}/${op}`;
      return requestJson(url, {
        method: 'POST', body: {},
        headers: { ...(withToken ? { authorization: `DPoP ${token}` } : {}), dpop: await DPoP.generateProof(client, url, 'POST', undefined, withToken ? token : undefined) },
      });
    };
    expect((await follow('commit', false)).body).toMatchObject({ committed: true });
    expect((await follow('provision', true)).body).toMatchObject({ provisionState: 'Provisioned' });
    expect((await follow('terminate', false)).body).toMatchObject({ lifecycleState: 'Terminated' });
  });

  it('still has proofs of other algorithms refused (an ES256 key of the same library)', async () => {
    const ec = await DPoP.generateKeyPair('ES256');
    const r = await authorize(ec, 'mig-es');
    expect(r.status).toBe(401);
    expect(r.body).toMatchObject({ code: 'VMTC_AAA_PROOF_INVALID', details: { reason: 'alg', alg: 'ES256' } });
  });

  it('has the broker accept a capability token signed with alg Ed25519 by a standard JOSE library, and refuse other algs', async () => {
    const issuer = await makeIssuer('x');
    const b = await startBroker({
      dataDir: join(dir, 'broker-x'), domain: 'a', topology: lineTopology(), driver: new MemoryDoubleDriver(), clock, logger: silentLogger(),
      trust: { issuers: [{ iss: issuer.iss, jwks: { keys: [issuer.publicJwk] } }] },
    });
    try {
      const holder = await DPoP.generateKeyPair('Ed25519');
      const jkt = await calculateJwkThumbprint(await exportJWK(holder.publicKey));
      const scope = { migrationId: 'mig-x', vmId: 'vm-1', project: 'p', src: 'a1', dst: 'a3', bandwidthMbps: 100, window: { start: nowSec(), end: nowSec() + 600 }, domains: ['a'] };
      const claims = { iss: issuer.iss, sub: 'c', aud: ['broker:a'], iat: nowSec(), nbf: nowSec(), exp: nowSec() + 300, cnf: { jkt }, vmtc: scope };
      const url = `${b.url}/v1/reservations`;
      const reserve = async (token: string) => requestJson(url, {
        method: 'POST', body: { src: 'a1', dst: 'a3', bandwidthMbps: 100, window: { start: nowSec(), end: nowSec() + 600 } },
        headers: { authorization: `DPoP ${token}`, dpop: await DPoP.generateProof(holder, url, 'POST', undefined, token) },
      });
      const ed25519 = await new SignJWT({ ...claims, jti: 'jti-ed25519-1' }).setProtectedHeader({ alg: 'Ed25519', kid: issuer.kid, typ: 'vmtc-cap+jwt' }).sign(issuer.privateKey);
      expect((await reserve(ed25519)).status).toBe(201);
      // The usual name still works, of course.
      const eddsa = await mintToken(issuer, { holder: { publicJwk: await exportJWK(holder.publicKey) } as never, scope, now: nowSec(), jti: 'jti-eddsa-1' });
      expect((await reserve(eddsa)).status).toBe(201);
      // Same claims and the issuer's kid, but an algorithm that is not Ed25519.
      const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');
      for (const alg of ['none', 'HS256', 'ES256', 'RS256']) {
        const forged = `${b64({ alg, kid: issuer.kid, typ: 'vmtc-cap+jwt' })}.${b64({ ...claims, jti: `jti-${alg}` })}.${ed25519.split('.')[2]}`;
        const r = await reserve(forged);
        expect(r.body).toMatchObject({ code: 'VMTC_TOKEN_MALFORMED', details: { alg } });
      }
    } finally {
      await b.close();
    }
  });
});
