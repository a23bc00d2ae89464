// Shared fixtures for the broker tests: an AAA issuer key (jose, real Ed25519), capability tokens
// and DPoP proofs minted with jose, topologies, temp dirs. Not a test file itself.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateKeyPairSync, randomBytes, type KeyObject } from 'node:crypto';
import { SignJWT, exportJWK, generateKeyPair, calculateJwkThumbprint } from 'jose';
import { signCapabilityToken, type CapabilityScope } from '../../src/aaa/tokens.ts';
import { generateRequesterKeySync, accessTokenHash, type RequesterKey } from '../../src/common/dpop.ts';

export interface Issuer {
  iss: string;
  kid: string;
  privateKey: CryptoKey;
  publicJwk: Record<string, unknown>;
}

export async function makeIssuer(domain: string, kid = `k-${randomBytes(3).toString('hex')}`): Promise<Issuer> {
  const { privateKey, publicKey } = await generateKeyPair('EdDSA', { crv: 'Ed25519', extractable: true });
  const jwk = await exportJWK(publicKey);
  return { iss: `aaa:${domain}`, kid, privateKey: privateKey as CryptoKey, publicJwk: { ...jwk, kid, alg: 'EdDSA', use: 'sig' } };
}

/** The `vmtc` claim, as the AAA signs it. */
export type TokenScope = CapabilityScope;

export interface MintOptions {
  holder: RequesterKey;
  scope: TokenScope;
  /** Epoch seconds "now" of the issuer. */
  now: number;
  aud?: string[];
  iss?: string;
  kid?: string;
  ttl?: number;
  nbf?: number;
  exp?: number;
  jti?: string;
}

export async function mintToken(issuer: Issuer, o: MintOptions): Promise<string> {
  const jkt = await calculateJwkThumbprint(o.holder.publicJwk as unknown as Parameters<typeof calculateJwkThumbprint>[0], 'sha256');
  return new SignJWT({
    iss: o.iss ?? issuer.iss,
    sub: 'controller-1',
    aud: o.aud ?? o.scope.domains.map((d) => `broker:${d}`),
    iat: o.now,
    nbf: o.nbf ?? o.now,
    exp: o.exp ?? o.now + (o.ttl ?? 300),
    jti: o.jti ?? randomBytes(12).toString('base64url'),
    cnf: { jkt },
    vmtc: o.scope,
  })
    .setProtectedHeader({ alg: 'EdDSA', kid: o.kid ?? issuer.kid, typ: 'vmtc-cap+jwt' })
    .sign(issuer.privateKey);
}

/** A DPoP proof built by hand with jose, so tests can make wrong ones on purpose. */
export async function joseProof(key: RequesterKey, htm: string, htu: string, token: string | undefined, nowSec: number, jti = randomBytes(12).toString('base64url')): Promise<string> {
  const claims: Record<string, unknown> = { jti, htm, htu, iat: nowSec };
  if (token) claims.ath = accessTokenHash(token);
  const { kty, crv, x } = key.publicJwk;
  return new SignJWT(claims).setProtectedHeader({ typ: 'dpop+jwt', alg: 'EdDSA', jwk: { kty, crv, x } }).sign(key.privateKey);
}

export const holderKey = (): RequesterKey => generateRequesterKeySync();

/** An AAA signing key of domain `a` (node:crypto Ed25519), the broker trust that accepts it, and
 *  tokens signed by the AAA's own code (src/aaa/tokens.ts), for tests that restart brokers. */
export interface AaaSigner {
  jwk: Record<string, unknown>;
  trust: { issuers: { iss: string; jwks: { keys: Record<string, unknown>[] } }[] };
  sign(o: { jkt: string; now: number; scope: CapabilityScope }): string;
}

export function aaaSigner(kid = 'aaa-k1', iss = 'aaa:a'): AaaSigner {
  const { privateKey, publicKey }: { privateKey: KeyObject; publicKey: KeyObject } = generateKeyPairSync('ed25519');
  const jwk = { ...(publicKey.export({ format: 'jwk' }) as Record<string, unknown>), kid };
  return {
    jwk,
    trust: { issuers: [{ iss, jwks: { keys: [jwk] } }] },
    sign: (o) => signCapabilityToken({ kid, privateKey }, { issuer: iss, subject: 'controller', jkt: o.jkt, now: o.now, lifetimeSec: 600, scope: o.scope }).token,
  };
}

export function tempDir(prefix = 'vmtc-broker-'): { dir: string; cleanup(): void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** a1 - a2 - a3 in a line, plus a detour a1 - a4 - a3 at a higher cost. */
export function lineTopology(capacity = 1000, detourCapacity = 1000): Record<string, unknown> {
  return {
    domain: 'a',
    nodes: [{ id: 'a1', driver: { ns: 'site-a' } }, { id: 'a2' }, { id: 'a3', driver: { ns: 'site-b' } }, { id: 'a4' }],
    links: [
      { id: 'l12', a: 'a1', z: 'a2', capacityMbps: capacity, cost: 1 },
      { id: 'l23', a: 'a2', z: 'a3', capacityMbps: capacity, cost: 1 },
      { id: 'l14', a: 'a1', z: 'a4', capacityMbps: detourCapacity, cost: 5 },
      { id: 'l43', a: 'a4', z: 'a3', capacityMbps: detourCapacity, cost: 5 },
    ],
  };
}
