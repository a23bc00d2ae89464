// DPoP proofs of possession (RFC 9449), shared by the AAA (which binds a capability token to the
// requester's key) and the brokers (which check that whoever presents the token holds that key).
//
// Signing and verifying go straight to node:crypto (Ed25519 in OpenSSL) instead of through jose's
// WebCrypto path: the output is ordinary JWS compact serialisation, verifiable by jose or any
// other JOSE library, but a proof costs one synchronous sign/verify and no promise round trips.
// That matters because a broker verifies a token *and* a proof on every request (the token
// throughput goal, docs/design.md#goals: 10,000 verifications per second on 2 cores).
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, randomBytes, sign, verify, type KeyObject } from 'node:crypto';
import { VmtcError, errorFactory, type Catalogue } from './errors.ts';

/** An Ed25519 public key as a JWK (RFC 8037). */
export interface PublicJwk {
  kty: 'OKP';
  crv: 'Ed25519';
  x: string;
  kid?: string;
  alg?: string;
  use?: string;
}

/** A requester's (holder's) key pair: the controller keeps one, the AAA policy lists its `jkt`. */
export interface RequesterKey {
  privateKey: KeyObject;
  publicJwk: PublicJwk;
  /** RFC 7638 SHA-256 thumbprint of publicJwk (what the token's `cnf.jkt` carries). */
  jkt: string;
}

/**
 * One code for every way a proof can be bad; `details.reason` says which check failed. Services
 * merge this catalogue into their own or re-throw with their own code (the AAA answers
 * VMTC_AAA_PROOF_INVALID with the same details).
 */
export const DPOP_ERRORS = {
  VMTC_DPOP_PROOF_INVALID: { status: 401, message: 'the DPoP proof is missing or invalid' },
} as const satisfies Catalogue;
const dpopError = errorFactory(DPOP_ERRORS);

/** Reasons carried in details.reason of VMTC_DPOP_PROOF_INVALID. */
export type DpopFailure =
  | 'missing' | 'malformed' | 'typ' | 'alg' | 'jwk' | 'signature' | 'claims'
  | 'htm' | 'htu' | 'iat-too-old' | 'iat-in-future' | 'ath-missing' | 'ath-mismatch' | 'ath-unexpected'
  | 'key-mismatch' | 'replayed';

export function dpopFailure(reason: DpopFailure, extra?: Record<string, unknown>): VmtcError {
  return dpopError('VMTC_DPOP_PROOF_INVALID', { reason, ...(extra ?? {}) });
}

const b64u = (b: Buffer | string) => Buffer.from(b).toString('base64url');
const b64uJson = (v: unknown) => b64u(JSON.stringify(v));

/** RFC 7638 JWK thumbprint (SHA-256, base64url) of an Ed25519 public key: members crv, kty, x in lexicographic order. */
export function jwkThumbprint(jwk: { kty?: unknown; crv?: unknown; x?: unknown }): string {
  if (jwk.kty !== 'OKP' || jwk.crv !== 'Ed25519' || typeof jwk.x !== 'string') {
    throw dpopFailure('jwk', { expected: 'an OKP Ed25519 public JWK' });
  }
  const canonical = JSON.stringify({ crv: jwk.crv, kty: jwk.kty, x: jwk.x });
  return createHash('sha256').update(canonical).digest('base64url');
}

/** base64url(SHA-256(access token)): the `ath` claim of a proof that accompanies a token (RFC 9449 §4.2). */
export function accessTokenHash(token: string): string {
  return createHash('sha256').update(token, 'ascii').digest('base64url');
}

/**
 * The `htu` comparison form (RFC 9449 §4.3 step 9): scheme and authority lower-cased, default
 * port dropped, no query and no fragment. Both sides normalise, so proxies that reorder a query
 * string do not break proofs.
 */
export function normalizeHtu(url: string): string {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return url;
  }
  return `${u.protocol}//${u.host}${u.pathname}`;
}

function toPublicJwk(key: KeyObject): PublicJwk {
  const j = key.export({ format: 'jwk' }) as { kty: string; crv: string; x: string };
  return { kty: 'OKP', crv: 'Ed25519', x: j.x };
}

/** A fresh Ed25519 requester key (async for symmetry with jose's generateKeyPair). */
export async function generateRequesterKey(): Promise<RequesterKey> {
  return generateRequesterKeySync();
}

export function generateRequesterKeySync(): RequesterKey {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const publicJwk = toPublicJwk(publicKey);
  return { privateKey, publicJwk, jkt: jwkThumbprint(publicJwk) };
}

/** Export a requester key as a private JWK ({kty, crv, x, d}) to keep in a file. */
export function exportRequesterKey(key: RequesterKey): { kty: 'OKP'; crv: 'Ed25519'; x: string; d: string } {
  const j = key.privateKey.export({ format: 'jwk' }) as { x: string; d: string };
  return { kty: 'OKP', crv: 'Ed25519', x: j.x, d: j.d };
}

/** Load a requester key from a private JWK (as written by exportRequesterKey). */
export function importRequesterKey(jwk: { kty: string; crv: string; x: string; d: string }): RequesterKey {
  const privateKey = createPrivateKey({ key: jwk, format: 'jwk' });
  const publicJwk = toPublicJwk(createPublicKey(privateKey));
  return { privateKey, publicJwk, jkt: jwkThumbprint(publicJwk) };
}

/**
 * The JWS `alg` names of an Ed25519 signature: `EdDSA` (RFC 8037, what vmtc signs with) and
 * `Ed25519`, the fully-specified name RFC 9864 registered for it, which standard DPoP clients
 * (the `dpop` npm package) send. Both are accepted wherever a JWS is verified here: every key we
 * verify with is an OKP/Ed25519 key (from the proof's own `jwk`, a pinned JWKS or the policy), so
 * the verification is Ed25519 whichever name the header uses and the name cannot select a
 * weaker algorithm. Anything else (`none`, HS*, RS*, ES*) stays refused.
 */
export const ED25519_JWS_ALGS: readonly string[] = ['EdDSA', 'Ed25519'];
export const isEd25519JwsAlg = (alg: unknown): boolean => typeof alg === 'string' && ED25519_JWS_ALGS.includes(alg);

/** Sign a JWS compact serialisation with an Ed25519 private key (alg EdDSA). */
export function signCompactJws(header: Record<string, unknown>, payload: Record<string, unknown>, privateKey: KeyObject): string {
  const input = `${b64uJson(header)}.${b64uJson(payload)}`;
  const sig = sign(null, Buffer.from(input, 'ascii'), privateKey);
  return `${input}.${b64u(sig)}`;
}

/**
 * Split a JWS compact serialisation and decode header and payload, without checking the
 * signature. Throws `fail('malformed')` on anything that is not three base64url JSON parts.
 */
export function decodeCompactJws(jws: string, fail: (reason: DpopFailure) => VmtcError = (r) => dpopFailure(r)): {
  header: Record<string, unknown>;
  payload: Record<string, unknown>;
  signingInput: string;
  signature: Buffer;
} {
  if (typeof jws !== 'string' || jws.length > 16_384) throw fail('malformed');
  const parts = jws.split('.');
  if (parts.length !== 3 || !parts.every((p) => /^[A-Za-z0-9_-]*$/.test(p))) throw fail('malformed');
  let header: unknown, payload: unknown;
  try {
    header = JSON.parse(Buffer.from(parts[0]!, 'base64url').toString('utf8'));
    payload = JSON.parse(Buffer.from(parts[1]!, 'base64url').toString('utf8'));
  } catch {
    throw fail('malformed');
  }
  if (!header || typeof header !== 'object' || Array.isArray(header) || !payload || typeof payload !== 'object' || Array.isArray(payload)) {
    throw fail('malformed');
  }
  return {
    header: header as Record<string, unknown>,
    payload: payload as Record<string, unknown>,
    signingInput: `${parts[0]}.${parts[1]}`,
    signature: Buffer.from(parts[2]!, 'base64url'),
  };
}

/** Verify an Ed25519 signature over a JWS signing input. */
export function verifyEd25519(signingInput: string, signature: Buffer, publicKey: KeyObject): boolean {
  if (signature.length !== 64) return false;
  return verify(null, Buffer.from(signingInput, 'ascii'), publicKey, signature);
}

// Imported public keys by `x`: a requester uses one key for many proofs, and createPublicKey is
// cheap but not free. Bounded so that a flood of throwaway keys cannot grow memory.
const keyCache = new Map<string, KeyObject>();
export function publicKeyFromJwk(jwk: PublicJwk): KeyObject {
  let k = keyCache.get(jwk.x);
  if (!k) {
    k = createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: jwk.x }, format: 'jwk' });
    if (keyCache.size >= 10_000) keyCache.clear();
    keyCache.set(jwk.x, k);
  }
  return k;
}

export interface MakeProofOptions {
  /** Milliseconds since the epoch (Clock.now()); default Date.now(). */
  now?: number;
  /** Default: 16 random bytes, base64url. */
  jti?: string;
}

/**
 * Make a DPoP proof (RFC 9449 §4.2): header {typ:'dpop+jwt', alg:'EdDSA', jwk}, claims
 * {jti, htm, htu, iat} plus `ath` when the proof accompanies an access token.
 */
export async function makeDpopProof(
  key: { privateKey: KeyObject; publicJwk: PublicJwk },
  htm: string,
  htu: string,
  accessToken?: string,
  opts: MakeProofOptions = {},
): Promise<string> {
  return makeDpopProofSync(key, htm, htu, accessToken, opts);
}

export function makeDpopProofSync(
  key: { privateKey: KeyObject; publicJwk: PublicJwk },
  htm: string,
  htu: string,
  accessToken?: string,
  opts: MakeProofOptions = {},
): string {
  const { kty, crv, x } = key.publicJwk;
  const claims: Record<string, unknown> = {
    jti: opts.jti ?? randomBytes(16).toString('base64url'),
    htm: htm.toUpperCase(),
    htu: normalizeHtu(htu),
    iat: Math.floor((opts.now ?? Date.now()) / 1000),
  };
  if (accessToken !== undefined) claims.ath = accessTokenHash(accessToken);
  return signCompactJws({ typ: 'dpop+jwt', alg: 'EdDSA', jwk: { kty, crv, x } }, claims, key.privateKey);
}

export interface VerifyProofOptions {
  /** The request's method. */
  htm: string;
  /** The request's full URL as the client addressed it (query and fragment are ignored). */
  htu: string;
  /**
   * The access token the proof must be bound to (`ath`). When given, a proof without `ath` or
   * with another hash is refused; when absent, a proof carrying `ath` is refused too (a proof
   * made for a token request must not be usable elsewhere and vice versa).
   */
  accessToken?: string;
  /** Oldest acceptable `iat`, in seconds before now (default 60). */
  maxAgeSec?: number;
  /** Tolerated clock skew for an `iat` in the future, in seconds (default 5). */
  skewSec?: number;
  /** Now in milliseconds since the epoch (Clock.now()); a value below 1e11 is taken as seconds. Default Date.now(). */
  now?: number;
  /** When given, the proof must be made with the key of this thumbprint (the token's cnf.jkt). */
  expectedJkt?: string;
}

export interface VerifiedProof {
  /** Thumbprint of the key that signed the proof. */
  jkt: string;
  jti: string;
  iat: number;
  jwk: PublicJwk;
}

/** Verify a DPoP proof (RFC 9449 §4.3, checks 1-12 except replay, which the caller's cache does). */
export async function verifyDpopProof(proof: string | undefined, opts: VerifyProofOptions): Promise<VerifiedProof> {
  return verifyDpopProofSync(proof, opts);
}

export function verifyDpopProofSync(proof: string | undefined, opts: VerifyProofOptions): VerifiedProof {
  // §4.3 step 1-2: exactly one well-formed JWT.
  if (proof === undefined || proof === '') throw dpopFailure('missing');
  const { header, payload, signingInput, signature } = decodeCompactJws(proof);
  // Steps 4-5: typ and an asymmetric algorithm we support.
  if (header.typ !== 'dpop+jwt') throw dpopFailure('typ', { typ: header.typ });
  if (!isEd25519JwsAlg(header.alg)) throw dpopFailure('alg', { alg: header.alg, accepted: ED25519_JWS_ALGS });
  // Step 7: the jwk header is a public key (a private member `d` is refused).
  const jwk = header.jwk as Record<string, unknown> | undefined;
  if (!jwk || typeof jwk !== 'object' || jwk.kty !== 'OKP' || jwk.crv !== 'Ed25519' || typeof jwk.x !== 'string' || 'd' in jwk || jwk.x.length !== 43) {
    throw dpopFailure('jwk');
  }
  const pub: PublicJwk = { kty: 'OKP', crv: 'Ed25519', x: jwk.x };
  let key: KeyObject;
  try {
    key = publicKeyFromJwk(pub);
  } catch {
    throw dpopFailure('jwk');
  }
  // Step 6: signature.
  if (!verifyEd25519(signingInput, signature, key)) throw dpopFailure('signature');
  // Step 3: required claims.
  const { jti, htm, htu, iat, ath } = payload;
  if (typeof jti !== 'string' || jti.length < 8 || jti.length > 256 || typeof htm !== 'string' || typeof htu !== 'string' || typeof iat !== 'number' || !Number.isFinite(iat)) {
    throw dpopFailure('claims');
  }
  // Steps 8-9: bound to this method and URL.
  if (htm !== opts.htm.toUpperCase()) throw dpopFailure('htm', { expected: opts.htm.toUpperCase(), got: htm });
  if (normalizeHtu(htu) !== normalizeHtu(opts.htu)) throw dpopFailure('htu', { expected: normalizeHtu(opts.htu), got: htu });
  // Step 11: fresh.
  let nowMs = opts.now ?? Date.now();
  if (nowMs < 1e11) nowMs *= 1000;
  const nowSec = nowMs / 1000;
  const maxAge = opts.maxAgeSec ?? 60;
  const skew = opts.skewSec ?? 5;
  if (iat < nowSec - maxAge) throw dpopFailure('iat-too-old', { iat, now: Math.floor(nowSec), maxAgeSec: maxAge });
  if (iat > nowSec + skew) throw dpopFailure('iat-in-future', { iat, now: Math.floor(nowSec), skewSec: skew });
  // Step 12: bound to the access token.
  if (opts.accessToken !== undefined) {
    if (typeof ath !== 'string') throw dpopFailure('ath-missing');
    if (ath !== accessTokenHash(opts.accessToken)) throw dpopFailure('ath-mismatch');
  } else if (ath !== undefined) {
    throw dpopFailure('ath-unexpected');
  }
  const jkt = jwkThumbprint(pub);
  // Step 12 (cont.): the key matches the token's confirmation (cnf.jkt).
  if (opts.expectedJkt !== undefined && opts.expectedJkt !== jkt) throw dpopFailure('key-mismatch', { expected: opts.expectedJkt, got: jkt });
  return { jkt, jti, iat, jwk: pub };
}

/**
 * Proof `jti`s seen recently (RFC 9449 §11.1). In memory: a proof older than maxAgeSec is refused
 * anyway, so the cache only needs to remember that long; a restart forgets at most that window.
 * (Token `jti`s, which must survive restarts, are the broker's business and live in SQLite.)
 */
export class DpopReplayCache {
  private readonly seen = new Map<string, number>();
  constructor(private readonly ttlMs = 65_000, private readonly max = 200_000) {}
  /** Record a jti; false if it was already seen within the ttl. */
  check(jti: string, nowMs: number): boolean {
    if (this.seen.size >= this.max) this.sweep(nowMs);
    const until = this.seen.get(jti);
    if (until !== undefined && until > nowMs) return false;
    this.seen.set(jti, nowMs + this.ttlMs);
    return true;
  }
  private sweep(nowMs: number): void {
    for (const [k, until] of this.seen) if (until <= nowMs) this.seen.delete(k);
    // Still full of live entries: a flood. Refusing everything would be a DoS, so drop the oldest.
    if (this.seen.size >= this.max) {
      let n = this.seen.size - Math.floor(this.max / 2);
      for (const k of this.seen.keys()) {
        if (n-- <= 0) break;
        this.seen.delete(k);
      }
    }
  }
}
