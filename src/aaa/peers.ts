// Multi-domain consent (docs/aaa.md; the paper's AAA "extends the sandbox in space and
// in time"): the AAA of the requesting domain asks the AAA of every other domain on the path.
//
// Request: POST <peer>/v1/consents { request: JWS } where the JWS is signed by the requesting AAA's
// current key (header typ 'vmtc-consent+jwt', kid) and carries iss 'aaa:<us>', aud 'aaa:<peer>',
// iat/exp (60 s), jti, sub (requester id), tokenJti and the lightpath request with its domains.
// The peer verifies it against the key it pinned for our domain (policy `peers[].jwk|keys`), applies
// its consent rules, records the outcome, and answers { consent: JWS } signed with its own key
// (typ 'vmtc-consent-reply+jwt', aud 'aaa:<us>', reqJti = our jti), which we verify against the
// key we pinned for it. A refusal is an ordinary coded error body (VMTC_AAA_CONSENT_DENIED …).
import { randomBytes, type KeyObject } from 'node:crypto';
import { decodeCompactJws, isEd25519JwsAlg, publicKeyFromJwk, signCompactJws, verifyEd25519, DpopReplayCache } from '../common/dpop.ts';
import { VmtcError } from '../common/errors.ts';
import { requestJson, type JsonResponse } from '../common/http-client.ts';
import { aaaError } from './errors.ts';
import type { LightpathRequest, Peer, Policy } from './policy.ts';
import { issuerOf } from './tokens.ts';

export const CONSENT_TYP = 'vmtc-consent+jwt';
export const CONSENT_REPLY_TYP = 'vmtc-consent-reply+jwt';
export const CONSENT_WITHDRAW_TYP = 'vmtc-consent-withdraw+jwt';
const CONSENT_LIFETIME_SEC = 60;

export interface ConsentClaims {
  iss: string;
  aud: string;
  iat: number;
  exp: number;
  jti: string;
  /** The requester, as known to the requesting domain. */
  sub: string;
  /** The jti the capability token will carry, so both sides' accounting can be joined. */
  tokenJti: string;
  req: LightpathRequest & { domains: string[] };
}

export interface ConsentReplyClaims {
  iss: string;
  aud: string;
  iat: number;
  exp: number;
  jti: string;
  reqJti: string;
  granted: true;
  rule: string;
}

export function signConsentRequest(
  key: { kid: string; privateKey: KeyObject },
  from: string,
  to: string,
  body: Omit<ConsentClaims, 'iss' | 'aud' | 'iat' | 'exp' | 'jti'>,
  nowMs: number,
): { jws: string; claims: ConsentClaims } {
  const iat = Math.floor(nowMs / 1000);
  const claims: ConsentClaims = { iss: issuerOf(from), aud: issuerOf(to), iat, exp: iat + CONSENT_LIFETIME_SEC, jti: randomBytes(16).toString('base64url'), ...body };
  return { jws: signCompactJws({ alg: 'EdDSA', kid: key.kid, typ: CONSENT_TYP }, claims as unknown as Record<string, unknown>, key.privateKey), claims };
}

export function signConsentReply(key: { kid: string; privateKey: KeyObject }, from: string, to: string, reqJti: string, rule: string, nowMs: number): string {
  const iat = Math.floor(nowMs / 1000);
  const claims: ConsentReplyClaims = { iss: issuerOf(from), aud: issuerOf(to), iat, exp: iat + CONSENT_LIFETIME_SEC, jti: randomBytes(16).toString('base64url'), reqJti, granted: true, rule };
  return signCompactJws({ alg: 'EdDSA', kid: key.kid, typ: CONSENT_REPLY_TYP }, claims as unknown as Record<string, unknown>, key.privateKey);
}

type Fail = (reason: string, extra?: Record<string, unknown>) => VmtcError;

const consentUnauthenticated: Fail = (reason, extra) => aaaError('VMTC_AAA_CONSENT_UNAUTHENTICATED', { reason, ...(extra ?? {}) });

/** Verify a JWS from a peer against that peer's pinned keys; `fail` builds the error to throw. */
function verifyFromPeer(jws: string, typ: string, peer: Peer, audience: string, nowMs: number, fail: Fail): Record<string, unknown> {
  const { header, payload, signingInput, signature } = decodeCompactJws(jws, (r) => fail(r));
  if (header.typ !== typ || !isEd25519JwsAlg(header.alg)) throw fail('header', { typ: header.typ, alg: header.alg });
  const jwk = typeof header.kid === 'string' ? peer.keys.get(header.kid) : undefined;
  if (!jwk) throw fail('key-not-pinned', { kid: header.kid, domain: peer.domain });
  if (!verifyEd25519(signingInput, signature, publicKeyFromJwk(jwk))) throw fail('signature', { domain: peer.domain });
  if (payload.iss !== issuerOf(peer.domain)) throw fail('issuer', { iss: payload.iss });
  if (payload.aud !== audience) throw fail('audience', { aud: payload.aud, expected: audience });
  const now = nowMs / 1000;
  if (typeof payload.exp !== 'number' || payload.exp <= now - 5) throw fail('expired');
  if (typeof payload.iat !== 'number' || payload.iat > now + 5) throw fail('iat-in-future');
  if (typeof payload.jti !== 'string') throw fail('claims');
  return payload;
}

/**
 * Server side, for anything a peer AAA sends us (a consent request or a withdrawal): find the
 * peer by the (still unverified) iss, then verify the JWS against that peer's pinned keys.
 * Throws VMTC_AAA_CONSENT_UNAUTHENTICATED.
 */
function verifyPeerRequest(jws: string, typ: string, policy: Policy, ownDomain: string, nowMs: number): { peer: Peer; claims: Record<string, unknown> } {
  const fail = consentUnauthenticated;
  let iss: unknown;
  try {
    iss = decodeCompactJws(jws).payload.iss;
  } catch {
    throw fail('malformed');
  }
  const domain = typeof iss === 'string' && iss.startsWith('aaa:') ? iss.slice(4) : undefined;
  const peer = domain !== undefined ? policy.peers.get(domain) : undefined;
  if (!peer) throw fail('unknown-peer', { iss });
  return { peer, claims: verifyFromPeer(jws, typ, peer, issuerOf(ownDomain), nowMs, fail) };
}

/** Server side: authenticate a consent request. Throws VMTC_AAA_CONSENT_UNAUTHENTICATED. */
export function verifyConsentRequest(jws: string, policy: Policy, ownDomain: string, nowMs: number, replay: DpopReplayCache): { peer: Peer; claims: ConsentClaims } {
  const fail = consentUnauthenticated;
  const { peer, claims: payload } = verifyPeerRequest(jws, CONSENT_TYP, policy, ownDomain, nowMs);
  const claims = payload as unknown as ConsentClaims;
  const r = claims.req;
  if (!r || typeof r !== 'object' || typeof r.src !== 'string' || typeof r.dst !== 'string' || typeof r.vmId !== 'string' || typeof r.project !== 'string'
    || typeof r.bandwidthMbps !== 'number' || !r.window || typeof r.window.start !== 'number' || typeof r.window.end !== 'number' || !Array.isArray(r.domains)
    || typeof claims.sub !== 'string' || typeof claims.tokenJti !== 'string') {
    throw fail('claims');
  }
  if (!replay.check(`${peer.domain}:${claims.jti}`, nowMs)) throw fail('replayed', { jti: claims.jti });
  return { peer, claims };
}

/**
 * Client side: ask one peer. Resolves with the verified reply; throws VMTC_AAA_PEER_REFUSED,
 * VMTC_AAA_PEER_UNREACHABLE or VMTC_AAA_PEER_BAD_REPLY, each naming the domain.
 */
export async function askConsent(peer: Peer, ownDomain: string, jws: string, reqJti: string, nowMs: () => number, timeoutMs: number): Promise<ConsentReplyClaims> {
  let res: JsonResponse;
  try {
    res = await requestJson(`${peer.url}/v1/consents`, { method: 'POST', body: { request: jws }, timeoutMs });
  } catch (e) {
    throw aaaError('VMTC_AAA_PEER_UNREACHABLE', { domain: peer.domain, url: peer.url, reason: (e as Error).message }, { cause: e });
  }
  const body = res.json ? res.body : undefined;
  if (res.status < 200 || res.status >= 300) {
    if (res.status >= 500 || !body || typeof (body as { code?: unknown }).code !== 'string') {
      throw aaaError('VMTC_AAA_PEER_UNREACHABLE', { domain: peer.domain, url: peer.url, status: res.status, peer: body ?? res.text.slice(0, 200) });
    }
    const b = body as { code: string; message?: string; details?: unknown };
    throw aaaError('VMTC_AAA_PEER_REFUSED', { domain: peer.domain, peerCode: b.code, peerMessage: b.message, peerDetails: b.details });
  }
  const consent = (body as { consent?: unknown } | undefined)?.consent;
  const fail = (reason: string, extra?: Record<string, unknown>) => aaaError('VMTC_AAA_PEER_BAD_REPLY', { domain: peer.domain, reason, ...(extra ?? {}) });
  if (typeof consent !== 'string') throw fail('no consent in the reply');
  const claims = verifyFromPeer(consent, CONSENT_REPLY_TYP, peer, issuerOf(ownDomain), nowMs(), fail) as unknown as ConsentReplyClaims;
  if (claims.reqJti !== reqJti || claims.granted !== true) throw fail('reply does not answer this request');
  return claims;
}

/**
 * When the whole request is refused after some domains consented (another domain refused, or a
 * quota ran out meanwhile), the asker withdraws the consents it got, so that the peers' accounts
 * and consent quotas do not keep a grant that never produced a token. Same envelope as a consent
 * request: { request: JWS typ vmtc-consent-withdraw+jwt } with { iss, aud, iat, exp, jti, tokenJti, reason }.
 */
export function signConsentWithdrawal(key: { kid: string; privateKey: KeyObject }, from: string, to: string, tokenJti: string, reason: string, nowMs: number): string {
  const iat = Math.floor(nowMs / 1000);
  return signCompactJws({ alg: 'EdDSA', kid: key.kid, typ: CONSENT_WITHDRAW_TYP }, { iss: issuerOf(from), aud: issuerOf(to), iat, exp: iat + CONSENT_LIFETIME_SEC, jti: randomBytes(16).toString('base64url'), tokenJti, reason }, key.privateKey);
}

export function verifyConsentWithdrawal(jws: string, policy: Policy, ownDomain: string, nowMs: number, replay: DpopReplayCache): { peer: Peer; tokenJti: string; reason: string } {
  const fail = consentUnauthenticated;
  const { peer, claims } = verifyPeerRequest(jws, CONSENT_WITHDRAW_TYP, policy, ownDomain, nowMs);
  if (typeof claims.tokenJti !== 'string' || typeof claims.reason !== 'string') throw fail('claims');
  if (!replay.check(`${peer.domain}:${String(claims.jti)}`, nowMs)) throw fail('replayed', { jti: claims.jti });
  return { peer, tokenJti: claims.tokenJti, reason: claims.reason.slice(0, 200) };
}

/** Best effort: a peer that cannot be told keeps its record of the consent (and says so in its log). */
export async function withdrawConsent(peer: Peer, jws: string, timeoutMs: number): Promise<boolean> {
  try {
    const res = await requestJson(`${peer.url}/v1/consents/withdraw`, { method: 'POST', body: { request: jws }, timeoutMs });
    return res.status >= 200 && res.status < 300;
  } catch {
    return false;
  }
}
