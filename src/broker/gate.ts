// The token gate (docs/broker.md#token-gate has the exact rule). Nothing reaches the
// reservation runner, the calendar or a network element before the gate has said yes, so a
// refused request changes nothing.
//
// Capability tokens are JWS compact (EdDSA / Ed25519, typ vmtc-cap+jwt) issued by an AAA; the
// holder proves possession of the key named in cnf.jkt with a DPoP proof (RFC 9449) on every
// request. Signatures are checked with node:crypto through the shared helpers in
// src/common/dpop.ts (one synchronous verify per token, no WebCrypto round trips).
import { X509Certificate } from 'node:crypto';
import type { PeerCertificate } from 'node:tls';
import type { CapabilityClaims } from '../aaa/tokens.ts';
import type { Clock } from '../common/clock.ts';
import { DpopReplayCache, ED25519_JWS_ALGS, decodeCompactJws, dpopFailure, isEd25519JwsAlg, verifyDpopProofSync, verifyEd25519, type VerifiedProof } from '../common/dpop.ts';
import { classAllowed } from './classes.ts';
import { brokerError } from './errors.ts';
import type { ReserveInput } from './service.ts';
import type { BrokerStore } from './store.ts';
import type { IssuerKeys, PeerConfig } from './trust.ts';

/** A verified capability token: the AAA's claims (src/aaa/tokens.ts), with cnf.jkt lifted out. */
export interface CapToken extends Omit<CapabilityClaims, 'cnf'> {
  raw: string;
  kid: string;
  jkt: string;
}

/** What the gate needs to know about an HTTP request. */
export interface RequestFacts {
  method: string;
  /** The URL the proof's htu must name: the broker's public URL plus the request's path. */
  htu: string;
  authorization?: string;
  dpop?: string;
  /** The trusted peer domain proven by the mutual-TLS client certificate, if any. */
  peerDomain?: string;
}

export interface GateOptions {
  domain: string;
  keys: IssuerKeys;
  clock: Clock;
  store: BrokerStore;
}

const isStr = (v: unknown): v is string => typeof v === 'string' && v.length > 0;
const isNum = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);

export class TokenGate {
  private readonly proofs = new DpopReplayCache();
  readonly audience: string;

  constructor(private readonly opts: GateOptions) {
    this.audience = `broker:${opts.domain}`;
  }

  /** `Authorization: DPoP <token>` (RFC 9449 §7.1); a Bearer token is refused: these tokens are key-bound. */
  extractToken(authorization: string | undefined): string {
    if (!authorization) throw brokerError('VMTC_TOKEN_MISSING');
    const m = /^DPoP\s+(\S+)$/i.exec(authorization.trim());
    if (!m) throw brokerError('VMTC_TOKEN_MISSING', { reason: 'the Authorization scheme must be DPoP' });
    return m[1]!;
  }

  optionalToken(authorization: string | undefined): string | undefined {
    return authorization ? this.extractToken(authorization) : undefined;
  }

  /**
   * Signature, issuer, key, audience and (unless checkTime is false) the validity period.
   * Follow-up operations on an existing reservation skip the time check: the token was checked in
   * full when it created the reservation, and the reservation's own window bounds its life.
   */
  async verifyToken(raw: string, checkTime = true): Promise<CapToken> {
    const malformed = (reason: string, extra: Record<string, unknown> = {}) => brokerError('VMTC_TOKEN_MALFORMED', { reason, ...extra });
    const { header, payload, signingInput, signature } = decodeCompactJws(raw, () => malformed('not a JWS compact serialisation'));
    // EdDSA or its RFC 9864 name Ed25519: the issuer's key is Ed25519 either way (src/common/dpop.ts).
    if (!isEd25519JwsAlg(header.alg)) throw malformed('alg must be EdDSA or Ed25519', { alg: header.alg, accepted: ED25519_JWS_ALGS });
    if (header.typ !== 'vmtc-cap+jwt') throw malformed('typ must be vmtc-cap+jwt', { typ: header.typ });
    if (!isStr(header.kid)) throw malformed('kid missing');
    const iss = payload.iss;
    if (!isStr(iss) || !this.opts.keys.trusts(iss)) throw brokerError('VMTC_TOKEN_ISSUER', { iss });
    const key = await this.opts.keys.key(iss, header.kid);
    if (!key) throw brokerError('VMTC_TOKEN_UNKNOWN_KEY', { iss, kid: header.kid });
    if (!verifyEd25519(signingInput, signature, key)) throw brokerError('VMTC_TOKEN_BAD_SIGNATURE', { iss, kid: header.kid });
    // Signed by a trusted AAA: now the claims can be read and judged.
    const aud = Array.isArray(payload.aud) ? payload.aud : [payload.aud];
    if (!aud.includes(this.audience)) throw brokerError('VMTC_TOKEN_AUDIENCE', { expected: this.audience, aud });
    const { sub, iat, nbf, exp, jti, cnf, vmtc } = payload as Record<string, unknown>;
    if (!isStr(sub) || !isNum(iat) || !isNum(nbf) || !isNum(exp) || !isStr(jti)) throw malformed('sub, iat, nbf, exp and jti are required');
    const jkt = (cnf as { jkt?: unknown } | undefined)?.jkt;
    if (!isStr(jkt)) throw malformed('cnf.jkt is required (the token must be key-bound)');
    const v = vmtc as Record<string, unknown> | undefined;
    const w = v?.window as Record<string, unknown> | undefined;
    if (!v || !isStr(v.migrationId) || !isStr(v.vmId) || !isStr(v.project) || !isStr(v.src) || !isStr(v.dst) || !isNum(v.bandwidthMbps) || !w || !isNum(w.start) || !isNum(w.end) || !Array.isArray(v.domains) || !v.domains.every(isStr)) {
      throw malformed('the vmtc scope claim is incomplete');
    }
    if (v.class !== undefined && v.class !== 'migration' && v.class !== 'background') throw malformed('the vmtc scope class must be migration or background', { class: v.class });
    if (checkTime) {
      const now = this.opts.clock.now() / 1000;
      if (now >= exp) throw brokerError('VMTC_TOKEN_EXPIRED', { exp, now: Math.floor(now) });
      if (now < nbf) throw brokerError('VMTC_TOKEN_NOT_YET_VALID', { nbf, now: Math.floor(now) });
    }
    return {
      raw, kid: header.kid, iss, sub, aud: aud as string[], iat, nbf, exp, jti, jkt,
      vmtc: {
        migrationId: v.migrationId, vmId: v.vmId, project: v.project, src: v.src, dst: v.dst,
        bandwidthMbps: v.bandwidthMbps, window: { start: w.start, end: w.end }, domains: v.domains as string[],
        ...(v.class !== undefined ? { class: v.class as 'migration' | 'background' } : {}),
      },
    };
  }

  /** A token may create one reservation only (the replay cache is in SQLite and survives restarts). */
  checkNotReplayed(tok: CapToken): void {
    const used = this.opts.store.jtiUsedBy(tok.jti);
    if (used) throw brokerError('VMTC_TOKEN_REPLAYED', { jti: tok.jti });
  }

  /**
   * The scope covers the request: the same endpoints (for a peer segment: the same final
   * destination, starting at one of our inter-domain points), no more bandwidth, inside the window,
   * for this domain, for the same migration.
   */
  checkScope(tok: CapToken, req: ReserveInput, peerDomain?: string): void {
    const s = tok.vmtc;
    const refuse = (field: string, extra: Record<string, unknown>) => {
      throw brokerError('VMTC_TOKEN_SCOPE', { field, ...extra });
    };
    if (!s.domains.includes(this.opts.domain)) refuse('domains', { domain: this.opts.domain, domains: s.domains });
    if (peerDomain === undefined) {
      if (req.src !== s.src) refuse('src', { requested: req.src, allowed: s.src });
    } else {
      const me = s.domains.indexOf(this.opts.domain);
      const up = s.domains.indexOf(peerDomain);
      if (up < 0 || up >= me) refuse('domains', { upstream: peerDomain, domains: s.domains });
    }
    if (req.dst !== s.dst) refuse('dst', { requested: req.dst, allowed: s.dst });
    if (req.bandwidthMbps > s.bandwidthMbps) refuse('bandwidthMbps', { requested: req.bandwidthMbps, allowed: s.bandwidthMbps });
    if (req.start < s.window.start || req.end > s.window.end) refuse('window', { requested: { start: req.start, end: req.end }, allowed: s.window });
    if (req.migrationId !== undefined && req.migrationId !== s.migrationId) refuse('migrationId', { requested: req.migrationId, allowed: s.migrationId });
    // A token granted for background bandwidth cannot book a migration's (docs/broker.md "Classes").
    if (!classAllowed(s.class, req.class ?? 'migration')) refuse('class', { requested: req.class ?? 'migration', allowed: s.class });
  }

  /**
   * A DPoP proof (RFC 9449 §4.3): signature with its embedded key, htm/htu of this request, iat
   * within 60 s, `ath` bound to the token when one is presented, key = expectedJkt when given,
   * proof jti not seen before.
   */
  verifyProof(facts: RequestFacts, token: string | undefined, expectedJkt?: string): VerifiedProof {
    const opts: Parameters<typeof verifyDpopProofSync>[1] = { htm: facts.method, htu: facts.htu, now: this.opts.clock.now(), maxAgeSec: 60, skewSec: 60 };
    if (token !== undefined) opts.accessToken = token;
    if (expectedJkt !== undefined) opts.expectedJkt = expectedJkt;
    const proof = verifyDpopProofSync(facts.dpop, opts);
    if (!this.proofs.check(proof.jti, this.opts.clock.now())) throw dpopFailure('replayed', { jti: proof.jti });
    return proof;
  }
}

/**
 * Which trusted peer (if any) a verified TLS client certificate belongs to: the TLS layer already
 * checked the chain against the peers' CAs; here the subject CN (and the pin, if configured) must
 * match one peer entry exactly.
 */
export function peerFromCertificate(peers: PeerConfig[], authorized: boolean, cert: PeerCertificate | undefined): string | undefined {
  if (!authorized || !cert || !cert.raw) return undefined;
  const cn = Array.isArray(cert.subject?.CN) ? cert.subject.CN[0] : cert.subject?.CN;
  let issuerOk: (p: PeerConfig) => boolean = () => true;
  try {
    const x = new X509Certificate(cert.raw);
    issuerOk = (p) => {
      try {
        return x.checkIssued(new X509Certificate(p.ca)) && x.verify(new X509Certificate(p.ca).publicKey);
      } catch {
        return false;
      }
    };
  } catch {
    return undefined;
  }
  for (const p of peers) {
    if ((p.cn ?? `broker:${p.domain}`) !== cn) continue;
    if (p.fingerprint256 && p.fingerprint256 !== cert.fingerprint256?.toUpperCase()) continue;
    // The chain must lead to *this* peer's CA, not merely to any CA we trust.
    if (!issuerOk(p)) continue;
    return p.domain;
  }
  return undefined;
}
