// Capability tokens (docs/aaa.md#capability-tokens): a JWS compact token, EdDSA over Ed25519,
// header { alg: 'EdDSA', kid, typ: 'vmtc-cap+jwt' }. Short-lived, single-use (jti),
// audience-restricted to the brokers of every domain on the path, scoped to one lightpath (claim
// `vmtc`), and bound to the requester's key (`cnf.jkt`, RFC 9449 §6.1) so that a stolen token is
// useless without the key.
//
// Signing and verifying are synchronous node:crypto calls (see src/common/dpop.ts for why); the
// tokens are ordinary JWTs that jose's jwtVerify + createRemoteJWKSet accept (the tests check).
import { randomBytes, type KeyObject } from 'node:crypto';
import { ED25519_JWS_ALGS, decodeCompactJws, isEd25519JwsAlg, signCompactJws, verifyDpopProofSync, verifyEd25519, type VerifiedProof, type VerifyProofOptions } from '../common/dpop.ts';
import type { LightpathRequest } from '../common/lightpath.ts';
import { aaaError } from './errors.ts';

export const TOKEN_TYP = 'vmtc-cap+jwt';

/** The lightpath scope carried in the `vmtc` claim. */
export interface CapabilityScope extends LightpathRequest {
  /** Every domain on the path, in path order. */
  domains: string[];
}

export interface CapabilityClaims {
  iss: string;
  sub: string;
  aud: string[];
  iat: number;
  nbf: number;
  exp: number;
  jti: string;
  cnf: { jkt: string };
  vmtc: CapabilityScope;
}

export const issuerOf = (domain: string) => `aaa:${domain}`;
export const brokerAudience = (domain: string) => `broker:${domain}`;

export interface IssueInput {
  issuer: string;
  subject: string;
  jkt: string;
  scope: CapabilityScope;
  /** Epoch ms (Clock.now()). */
  now: number;
  lifetimeSec: number;
  jti?: string;
}

/** Sign a capability token with the given key. Pure apart from the random jti. */
export function signCapabilityToken(key: { kid: string; privateKey: KeyObject }, input: IssueInput): { token: string; claims: CapabilityClaims } {
  const iat = Math.floor(input.now / 1000);
  const claims: CapabilityClaims = {
    iss: input.issuer,
    sub: input.subject,
    aud: input.scope.domains.map(brokerAudience),
    iat,
    nbf: iat,
    exp: iat + input.lifetimeSec,
    jti: input.jti ?? randomBytes(16).toString('base64url'),
    cnf: { jkt: input.jkt },
    vmtc: input.scope,
  };
  return { token: signCompactJws({ alg: 'EdDSA', kid: key.kid, typ: TOKEN_TYP }, claims as unknown as Record<string, unknown>, key.privateKey), claims };
}

export interface VerifyTokenOptions {
  /** Public key by kid (a KeyStore, a set built from a JWKS, …); undefined = unknown key. */
  key: (kid: string) => KeyObject | undefined;
  /** Accepted issuers. */
  issuers: string[];
  /** This verifier's audience, e.g. "broker:b". */
  audience: string;
  /** Epoch ms. */
  now: number;
  /** Clock skew tolerated on nbf/exp, seconds (default 5). */
  leewaySec?: number;
}

const tokenInvalid = (reason: string, extra?: Record<string, unknown>) => aaaError('VMTC_AAA_TOKEN_INVALID', { reason, ...(extra ?? {}) });

/**
 * Verify a capability token: header, signature, issuer, audience, time, and the shape of cnf and
 * vmtc. Does not check replay (that needs the verifier's durable jti store) nor the scope against
 * a request (the broker does). Throws VMTC_AAA_TOKEN_INVALID with details.reason.
 */
export function verifyCapabilityToken(token: string, opts: VerifyTokenOptions): CapabilityClaims {
  const { header, payload, signingInput, signature } = decodeCompactJws(token, (r) => tokenInvalid(r));
  if (header.typ !== TOKEN_TYP) throw tokenInvalid('typ', { typ: header.typ });
  // EdDSA or its RFC 9864 name Ed25519: the key from the JWKS is Ed25519 either way (src/common/dpop.ts).
  if (!isEd25519JwsAlg(header.alg)) throw tokenInvalid('alg', { alg: header.alg, accepted: ED25519_JWS_ALGS });
  if (typeof header.kid !== 'string') throw tokenInvalid('kid');
  const key = opts.key(header.kid);
  if (!key) throw tokenInvalid('unknown-key', { kid: header.kid });
  if (!verifyEd25519(signingInput, signature, key)) throw tokenInvalid('signature');
  const c = payload as unknown as CapabilityClaims;
  if (typeof c.iss !== 'string' || !opts.issuers.includes(c.iss)) throw tokenInvalid('issuer', { iss: c.iss });
  if (!Array.isArray(c.aud) || !c.aud.includes(opts.audience)) throw tokenInvalid('audience', { aud: c.aud, expected: opts.audience });
  const now = opts.now / 1000;
  const leeway = opts.leewaySec ?? 5;
  if (typeof c.exp !== 'number' || c.exp <= now - leeway) throw tokenInvalid('expired', { exp: c.exp });
  if (typeof c.nbf !== 'number' || c.nbf > now + leeway) throw tokenInvalid('not-yet-valid', { nbf: c.nbf });
  if (typeof c.jti !== 'string' || typeof c.sub !== 'string') throw tokenInvalid('claims');
  if (!c.cnf || typeof c.cnf.jkt !== 'string') throw tokenInvalid('cnf');
  const v = c.vmtc;
  if (!v || typeof v !== 'object' || typeof v.src !== 'string' || typeof v.dst !== 'string' || typeof v.bandwidthMbps !== 'number' || !v.window || !Array.isArray(v.domains)) {
    throw tokenInvalid('scope');
  }
  return c;
}

/**
 * What a resource server does with `Authorization: DPoP <token>` + `DPoP: <proof>`: verify the
 * token, then the proof (RFC 9449 §4.3 and §7.1), bound to this token (ath) and to its key (cnf.jkt).
 */
export function verifyPresentedToken(
  token: string,
  proof: string | undefined,
  opts: VerifyTokenOptions & Pick<VerifyProofOptions, 'htm' | 'htu' | 'maxAgeSec'>,
): { claims: CapabilityClaims; proof: VerifiedProof } {
  const claims = verifyCapabilityToken(token, opts);
  const p = verifyDpopProofSync(proof, { htm: opts.htm, htu: opts.htu, accessToken: token, now: opts.now, maxAgeSec: opts.maxAgeSec ?? 60, expectedJkt: claims.cnf.jkt });
  return { claims, proof: p };
}
