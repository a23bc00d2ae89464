import { describe, it, expect } from 'vitest';
import { jwtVerify, EmbeddedJWK, calculateJwkThumbprint } from 'jose';
import {
  generateRequesterKey, makeDpopProof, verifyDpopProof, jwkThumbprint, accessTokenHash,
  exportRequesterKey, importRequesterKey, DpopReplayCache, signCompactJws, generateRequesterKeySync,
} from '../../src/common/dpop.ts';
import { VmtcError } from '../../src/common/errors.ts';
import { signCapabilityToken, verifyCapabilityToken } from '../../src/aaa/tokens.ts';
import { createPublicKey, randomBytes } from 'node:crypto';

const URL1 = 'http://127.0.0.1:8443/v1/reservations/r1/provision';
const NOW = 1_700_000_000_000;

async function reason(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(VmtcError);
    expect((e as VmtcError).code).toBe('VMTC_DPOP_PROOF_INVALID');
    return String((e as VmtcError).details?.reason);
  }
  throw new Error('expected a refusal');
}

describe('DPoP helpers (RFC 9449)', () => {
  it('makes proofs that jose verifies and computes RFC 7638 thumbprints like jose', async () => {
    const key = await generateRequesterKey();
    expect(key.jkt).toBe(await calculateJwkThumbprint(key.publicJwk));
    expect(jwkThumbprint(key.publicJwk)).toBe(key.jkt);
    const proof = await makeDpopProof(key, 'post', URL1 + '?x=1#f', 'tok', { now: NOW });
    const { payload, protectedHeader } = await jwtVerify(proof, EmbeddedJWK, { typ: 'dpop+jwt', algorithms: ['EdDSA'], currentDate: new Date(NOW) });
    expect(protectedHeader.jwk).toEqual(key.publicJwk);
    expect(payload).toMatchObject({ htm: 'POST', htu: URL1, iat: NOW / 1000, ath: accessTokenHash('tok') });
    const v = await verifyDpopProof(proof, { htm: 'POST', htu: URL1, accessToken: 'tok', now: NOW, expectedJkt: key.jkt });
    expect(v.jkt).toBe(key.jkt);
    expect(v.jti).toBe(payload.jti);
  });

  it('refuses each kind of bad proof with a reason', async () => {
    const key = await generateRequesterKey();
    const other = await generateRequesterKey();
    const ok = await makeDpopProof(key, 'POST', URL1, 'tok', { now: NOW });
    const base = { htm: 'POST', htu: URL1, accessToken: 'tok', now: NOW };
    expect(await reason(verifyDpopProof(undefined, base))).toBe('missing');
    expect(await reason(verifyDpopProof('a.b', base))).toBe('malformed');
    expect(await reason(verifyDpopProof(ok, { ...base, htm: 'GET' }))).toBe('htm');
    expect(await reason(verifyDpopProof(ok, { ...base, htu: 'http://127.0.0.1:8443/v1/other' }))).toBe('htu');
    expect(await reason(verifyDpopProof(ok, { ...base, accessToken: 'other' }))).toBe('ath-mismatch');
    expect(await reason(verifyDpopProof(ok, { ...base, accessToken: undefined }))).toBe('ath-unexpected');
    expect(await reason(verifyDpopProof(await makeDpopProof(key, 'POST', URL1, undefined, { now: NOW }), base))).toBe('ath-missing');
    expect(await reason(verifyDpopProof(ok, { ...base, now: NOW + 61_000 }))).toBe('iat-too-old');
    expect(await reason(verifyDpopProof(ok, { ...base, now: NOW - 10_000 }))).toBe('iat-in-future');
    expect(await reason(verifyDpopProof(ok, { ...base, expectedJkt: other.jkt }))).toBe('key-mismatch');
    // seconds instead of ms are understood
    expect((await verifyDpopProof(ok, { ...base, now: NOW / 1000 })).jkt).toBe(key.jkt);
    // the header names one key but another key signed: signature check fails
    const [h, p] = ok.split('.');
    const forged = signCompactJws(JSON.parse(Buffer.from(h!, 'base64url').toString()), JSON.parse(Buffer.from(p!, 'base64url').toString()), other.privateKey);
    expect(await reason(verifyDpopProof(forged, base))).toBe('signature');
    // tampered claims
    const tampered = [h, Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.from(p!, 'base64url').toString()), htm: 'GET' })).toString('base64url'), ok.split('.')[2]].join('.');
    expect(await reason(verifyDpopProof(tampered, { ...base, htm: 'GET' }))).toBe('signature');
    // wrong typ, private key in header
    const badTyp = signCompactJws({ typ: 'JWT', alg: 'EdDSA', jwk: key.publicJwk }, { jti: 'abcdefghij', htm: 'POST', htu: URL1, iat: NOW / 1000 }, key.privateKey);
    expect(await reason(verifyDpopProof(badTyp, { ...base, accessToken: undefined }))).toBe('typ');
    const priv = exportRequesterKey(key);
    const withD = signCompactJws({ typ: 'dpop+jwt', alg: 'EdDSA', jwk: priv }, { jti: 'abcdefghij', htm: 'POST', htu: URL1, iat: NOW / 1000 }, key.privateKey);
    expect(await reason(verifyDpopProof(withD, { ...base, accessToken: undefined }))).toBe('jwk');
  });

  it('accepts Ed25519 proofs under both JWS names (EdDSA, and Ed25519 of RFC 9864) and refuses every other alg', async () => {
    const key = await generateRequesterKey();
    const claims = () => ({ jti: randomBytes(12).toString('base64url'), htm: 'POST', htu: URL1, iat: NOW / 1000 });
    const base = { htm: 'POST', htu: URL1, now: NOW };
    const jwk = key.publicJwk;
    for (const alg of ['EdDSA', 'Ed25519']) {
      const p = signCompactJws({ typ: 'dpop+jwt', alg, jwk }, claims(), key.privateKey);
      expect((await verifyDpopProof(p, base)).jkt).toBe(key.jkt);
    }
    // Whatever the header says, the signature is checked as Ed25519 with the header's key.
    for (const alg of ['none', 'HS256', 'RS256', 'ES256', 'PS256', 'Ed448', 'eddsa', 'ed25519', '', undefined]) {
      const p = signCompactJws({ typ: 'dpop+jwt', alg, jwk }, claims(), key.privateKey);
      expect(await reason(verifyDpopProof(p, base))).toBe('alg');
    }
    // The name Ed25519 is for Ed25519 keys only.
    const p448 = signCompactJws({ typ: 'dpop+jwt', alg: 'Ed25519', jwk: { ...jwk, crv: 'Ed448' } }, claims(), key.privateKey);
    expect(await reason(verifyDpopProof(p448, base))).toBe('jwk');
  });

  it('accepts capability tokens under both names and refuses every other alg', () => {
    const k = { ...generateRequesterKeySync(), kid: 'k1' };
    const { token } = signCapabilityToken(k, {
      issuer: 'aaa:a', subject: 'ctl', jkt: 'x'.repeat(43), now: NOW, lifetimeSec: 300, jti: 'j1',
      scope: { migrationId: 'm', vmId: 'v', project: 'p', src: 's', dst: 'd', bandwidthMbps: 1, window: { start: NOW / 1000, end: NOW / 1000 + 60 }, domains: ['a'] },
    });
    const payload = JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString());
    const pub = createPublicKey(k.privateKey);
    const opts = { key: (kid: string) => (kid === 'k1' ? pub : undefined), issuers: ['aaa:a'], audience: 'broker:a', now: NOW };
    const withAlg = (alg: unknown) => signCompactJws({ alg, kid: 'k1', typ: 'vmtc-cap+jwt' }, payload, k.privateKey);
    for (const alg of ['EdDSA', 'Ed25519']) expect(verifyCapabilityToken(withAlg(alg), opts).jti).toBe('j1');
    for (const alg of ['none', 'HS256', 'ES256', 'RS256']) {
      expect(() => verifyCapabilityToken(withAlg(alg), opts)).toThrow(expect.objectContaining({ code: 'VMTC_AAA_TOKEN_INVALID', details: expect.objectContaining({ reason: 'alg' }) }));
    }
  });

  it('round-trips a requester key through a private JWK and remembers proof jtis', async () => {
    const key = await generateRequesterKey();
    const again = importRequesterKey(exportRequesterKey(key));
    expect(again.jkt).toBe(key.jkt);
    const c = new DpopReplayCache(1000);
    expect(c.check('a', 0)).toBe(true);
    expect(c.check('a', 500)).toBe(false);
    expect(c.check('a', 1500)).toBe(true);
  });
});
