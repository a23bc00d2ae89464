// The AAA's decisions, apart from HTTP: authorise a lightpath (docs/design.md#live-migration,
// step 3), answer a peer's consent request, take use/release reports. Every outcome, granted or
// refused, goes to accounting.
import type { Clock, Ids } from '../common/clock.ts';
import type { Logger } from '../common/log.ts';
import { VmtcError, toVmtcError } from '../common/errors.ts';
import { DpopReplayCache } from '../common/dpop.ts';
import { aaaError } from './errors.ts';
import { decide, pathDomains, type LightpathRequest, type Policy, type Requester, type Rule } from './policy.ts';
import { brokerAudience, issuerOf, signCapabilityToken, type CapabilityClaims } from './tokens.ts';
import { askConsent, signConsentReply, signConsentRequest, signConsentWithdrawal, verifyConsentRequest, verifyConsentWithdrawal, withdrawConsent } from './peers.ts';
import type { KeyStore } from './keys.ts';
import type { Accounting, AccountingEvent, AccountingParty } from './accounting.ts';
import { UnknownRefusals, type UnknownRefusalLimits } from './unknown-refusals.ts';
import { randomBytes } from 'node:crypto';
import type { PolicyCheckRequest, PolicyDecision } from '../common/lightpath.ts';

export interface AuthorizationResult {
  token: string;
  /** ISO time. */
  expiresAt: string;
  jti: string;
  audience: string[];
  domains: string[];
  kid: string;
  /** The consents obtained, one per other domain on the path. */
  consents: { domain: string; rule: string }[];
}

export interface ServiceDeps {
  domain: string;
  policy: Policy;
  keys: KeyStore;
  accounting: Accounting;
  clock: Clock;
  ids: Ids;
  logger: Logger;
  tokenLifetimeSec: number;
  peerTimeoutMs: number;
  maxWindowSec: number;
  maxWindowLagSec: number;
  /** How refusals of keys the policy does not know are recorded (unknown-refusals.ts). */
  unknownRefusals: UnknownRefusalLimits;
}

const HOUR_MS = 3600_000;

export class AaaService {
  readonly issuer: string;
  private readonly consentReplay = new DpopReplayCache(120_000);
  private readonly unknown: UnknownRefusals;

  constructor(private readonly d: ServiceDeps) {
    this.issuer = issuerOf(d.domain);
    this.unknown = new UnknownRefusals(d.accounting, d.clock, d.unknownRefusals);
  }

  /** Write what is only counted so far (before the database closes). */
  close(): void {
    this.unknown.close();
  }

  private checkWindow(req: LightpathRequest): void {
    const now = this.d.clock.now() / 1000;
    const { start, end } = req.window;
    if (!(end > start)) throw aaaError('VMTC_AAA_WINDOW_INVALID', { field: 'window', reason: 'end must be after start', start, end });
    if (end <= now) throw aaaError('VMTC_AAA_WINDOW_INVALID', { field: 'window.end', reason: 'in the past', end, now: Math.floor(now) });
    if (start < now - this.d.maxWindowLagSec) throw aaaError('VMTC_AAA_WINDOW_INVALID', { field: 'window.start', reason: 'too far in the past', start, now: Math.floor(now), maxLagSec: this.d.maxWindowLagSec });
    if (end - start > this.d.maxWindowSec) throw aaaError('VMTC_AAA_WINDOW_INVALID', { field: 'window', reason: 'too long', durationSec: end - start, maxWindowSec: this.d.maxWindowSec });
  }

  private usageFn(who: string, kind: 'grant' | 'consent-grant') {
    const since = this.d.clock.now() - HOUR_MS;
    return (rule: string) => this.d.accounting.usage(who, rule, kind, since);
  }

  private refuse(who: string, req: Partial<LightpathRequest>, e: VmtcError, extra: { jti?: string; domains?: string[]; kind?: 'refusal' | 'consent-refusal' } = {}): VmtcError {
    this.d.accounting.record({
      at: this.d.clock.now(),
      kind: extra.kind ?? 'refusal',
      who,
      ...(extra.jti ? { jti: extra.jti } : {}),
      ...(req.migrationId ? { migrationId: req.migrationId } : {}),
      ...(req.vmId ? { vmId: req.vmId } : {}),
      ...(req.project ? { project: req.project } : {}),
      ...(req.src ? { src: req.src } : {}),
      ...(req.dst ? { dst: req.dst } : {}),
      ...(extra.domains ? { domains: extra.domains } : {}),
      ...(req.bandwidthMbps !== undefined ? { bandwidthMbps: req.bandwidthMbps } : {}),
      ...(req.window ? { window: req.window } : {}),
      code: e.code,
      ...(e.details ? { details: e.details } : {}),
    });
    return e;
  }

  get policy(): Policy {
    return this.d.policy;
  }

  /** Swap the policy (SIGHUP, or the handle's reloadPolicy); requests in flight finish under the one they started with. */
  setPolicy(p: Policy): void {
    this.d.policy = p;
  }

  /** Requester by the thumbprint of the key that signed its proof. */
  requesterByJkt(jkt: string): Requester | undefined {
    return this.d.policy.requestersByJkt.get(jkt);
  }

  /**
   * docs/design.md#live-migration, step 3: apply policy, obtain consent from every other domain
   * on the path, then sign a token scoped to this lightpath and bound to the requester's key.
   */
  async authorize(requester: Requester, jkt: string, req: LightpathRequest): Promise<AuthorizationResult> {
    const log = this.d.logger.child({ migrationId: req.migrationId, vmId: req.vmId, requester: requester.id });
    const jti = randomBytes(16).toString('base64url');
    const policy = this.d.policy;
    let domains: string[] | undefined;
    const consents: { domain: string; rule: string }[] = [];
    try {
      // Local policy first: a request this domain refuses must not bother the peers.
      const local = this.decideLocally(policy, requester, req, (d) => { domains = d; });
      domains = local.domains;
      const { others } = local;
      // Ask every other domain at once; the whole is refused if any refuses or is unreachable,
      // and the refusal reported is the first in path order.
      const key = this.d.keys.signing();
      const asked = await Promise.allSettled(others.map(async (dom) => {
        const peer = policy.peers.get(dom)!;
        const { jws, claims } = signConsentRequest(key, this.d.domain, dom, { sub: requester.id, tokenJti: jti, req: { ...req, domains: domains! } }, this.d.clock.now());
        const reply = await askConsent(peer, this.d.domain, jws, claims.jti, () => this.d.clock.now(), this.d.peerTimeoutMs);
        return { domain: dom, rule: reply.rule };
      }));
      let refusal: VmtcError | undefined;
      asked.forEach((r, i) => {
        const dom = others[i]!;
        if (r.status === 'fulfilled') {
          consents.push(r.value);
          this.d.accounting.record({ at: this.d.clock.now(), kind: 'consent-grant', who: issuerOf(dom), rule: r.value.rule, jti, migrationId: req.migrationId, vmId: req.vmId, project: req.project, src: req.src, dst: req.dst, domains: domains!, bandwidthMbps: req.bandwidthMbps, window: req.window });
        } else {
          const e = toVmtcError(r.reason);
          this.d.accounting.record({ at: this.d.clock.now(), kind: 'consent-refusal', who: issuerOf(dom), jti, migrationId: req.migrationId, vmId: req.vmId, src: req.src, dst: req.dst, code: e.code, ...(e.details ? { details: e.details } : {}) });
          refusal ??= e;
        }
      });
      if (refusal) throw refusal;
      // Decide again, synchronously with the grant's insert: quotas may have been used by a
      // concurrent request while the peers were answering.
      const now = this.d.clock.now();
      const result = this.d.accounting.transaction(() => {
        const again = decide(policy.rules, requester.id, req, this.usageFn(requester.id, 'grant'));
        if (!again.ok) throw aaaError(again.code, again.details);
        const signKey = this.d.keys.signing();
        const { token, claims } = signCapabilityToken(signKey, {
          issuer: this.issuer,
          subject: requester.id,
          jkt,
          now,
          lifetimeSec: this.d.tokenLifetimeSec,
          jti,
          scope: { migrationId: req.migrationId, vmId: req.vmId, project: req.project, src: req.src, dst: req.dst, bandwidthMbps: req.bandwidthMbps, window: { start: req.window.start, end: req.window.end }, domains: domains!, ...(req.class ? { class: req.class } : {}) },
        });
        this.d.accounting.record({
          at: now, kind: 'grant', who: requester.id, rule: again.rule, jti, migrationId: req.migrationId, vmId: req.vmId, project: req.project,
          src: req.src, dst: req.dst, domains: domains!, bandwidthMbps: req.bandwidthMbps, window: req.window,
          mbitSeconds: req.bandwidthMbps * (req.window.end - req.window.start),
          details: { kid: signKey.kid, exp: claims.exp, consents },
        });
        return { token, claims, kid: signKey.kid, rule: again.rule };
      });
      log.info({ jti, rule: result.rule, domains, kid: result.kid }, 'lightpath authorised');
      return {
        token: result.token,
        expiresAt: new Date(result.claims.exp * 1000).toISOString(),
        jti,
        audience: domains.map(brokerAudience),
        domains,
        kid: result.kid,
        consents,
      };
    } catch (err) {
      const e = toVmtcError(err);
      if (consents.length > 0) await this.withdraw(policy, consents, jti, e.code, log);
      if (e.status < 500 || e.code.startsWith('VMTC_AAA_PEER')) {
        log.info({ code: e.code, details: e.details }, 'lightpath refused');
        throw this.refuse(requester.id, req, e, { jti, ...(domains ? { domains } : {}) });
      }
      throw e;
    }
  }

  /**
   * What this AAA decides alone, in order: the window, the path's domains (`onPath` is told them
   * as soon as they are known, for the record of a refusal), the grant rules with the quotas
   * used so far, and a configured peer for every other domain. Throws the refusal.
   */
  private decideLocally(policy: Policy, requester: Requester, req: LightpathRequest, onPath?: (domains: string[]) => void): { rule: string; domains: string[]; others: string[] } {
    this.checkWindow(req);
    const domains = pathDomains(policy, req);
    onPath?.(domains);
    const d = decide(policy.rules, requester.id, req, this.usageFn(requester.id, 'grant'));
    if (!d.ok) throw aaaError(d.code, d.details);
    const others = domains.filter((x) => x !== this.d.domain);
    for (const dom of others) if (!policy.peers.has(dom)) throw aaaError('VMTC_AAA_PEER_UNKNOWN', { domain: dom });
    return { rule: d.rule, domains, others };
  }

  /**
   * Would authorize() grant this, as far as can be known without asking anyone (POST
   * /v1/policy/check, docs/aaa.md "Policy check")? The same checks in the same order: window,
   * sites and path, the local rules with the quotas used so far, a peer known for every other
   * domain. Nothing is recorded, signed or asked: the consent of the other domains, and quota used
   * in the meantime, are decided when the token is asked for.
   */
  check(requester: Requester, req: PolicyCheckRequest): PolicyDecision {
    try {
      const l = this.decideLocally(this.d.policy, requester, { ...req, migrationId: req.migrationId ?? '' });
      return { allowed: true, rule: l.rule, domains: l.domains, consentFrom: l.others };
    } catch (e) {
      const ve = toVmtcError(e);
      if (ve.status >= 500) throw ve;
      return { allowed: false, refusal: { ...ve.toJSON(), status: ve.status } };
    }
  }

  /** Withdraw the consents obtained for a request that was refused as a whole (best effort, in parallel). */
  private async withdraw(policy: Policy, consents: { domain: string }[], jti: string, reason: string, log: Logger): Promise<void> {
    const key = this.d.keys.signing();
    const told = await Promise.all(consents.map(async ({ domain }) => {
      const peer = policy.peers.get(domain);
      if (!peer) return false;
      return withdrawConsent(peer, signConsentWithdrawal(key, this.d.domain, domain, jti, reason, this.d.clock.now()), this.d.peerTimeoutMs);
    }));
    const missed = consents.filter((_, i) => !told[i]).map((c) => c.domain);
    if (missed.length) log.warn({ jti, domains: missed }, 'could not withdraw consent from these domains');
  }

  /** A peer withdraws a consent it obtained here: recorded as a release, no longer counted by quotas. */
  withdrawal(jws: string): { withdrawn: boolean } {
    const { peer, tokenJti, reason } = verifyConsentWithdrawal(jws, this.d.policy, this.d.domain, this.d.clock.now(), this.consentReplay);
    const who = issuerOf(peer.domain);
    const grant = this.d.accounting.grant(tokenJti);
    // Only the domain that obtained the consent may withdraw it.
    if (!grant || grant.kind !== 'consent-grant' || grant.who !== who) throw aaaError('VMTC_AAA_GRANT_UNKNOWN', { jti: tokenJti, domain: peer.domain });
    this.d.accounting.record({
      at: this.d.clock.now(), kind: 'release', who, reporter: who, jti: tokenJti,
      ...(grant.migrationId ? { migrationId: grant.migrationId } : {}),
      ...(grant.vmId ? { vmId: grant.vmId } : {}),
      ...(grant.bandwidthMbps !== undefined ? { bandwidthMbps: grant.bandwidthMbps } : {}),
      mbitSeconds: 0,
      details: { withdrawn: true, reason },
    });
    this.d.logger.info({ jti: tokenJti, peer: peer.domain, reason }, 'consent withdrawn');
    return { withdrawn: true };
  }

  /**
   * Record a refusal that happened before a requester was known (unknown key, `who` =
   * "jkt:<thumbprint>"): anyone can make keys, so these are written one by one only up to a
   * bound per window and counted beyond it (unknown-refusals.ts).
   */
  refuseUnknown(who: string, req: Partial<LightpathRequest>, e: VmtcError): VmtcError {
    this.unknown.refuse(who, req, e, (w, r, err) => void this.refuse(w, r, err));
    return e;
  }

  /** A peer's consent request: authenticate it, apply the consent rules, record, answer signed. */
  consent(jws: string): { consent: string; rule: string } {
    const { peer, claims } = verifyConsentRequest(jws, this.d.policy, this.d.domain, this.d.clock.now(), this.consentReplay);
    const who = issuerOf(peer.domain);
    const req = claims.req;
    const log = this.d.logger.child({ migrationId: req.migrationId, vmId: req.vmId, peer: peer.domain });
    const base = { jti: claims.tokenJti, migrationId: req.migrationId, vmId: req.vmId, project: req.project, src: req.src, dst: req.dst, domains: req.domains, bandwidthMbps: req.bandwidthMbps, window: req.window };
    // Decide and record in one transaction (quota counts must not race), throw after it commits.
    const out = this.d.accounting.transaction((): { e: VmtcError } | { consent: string; rule: string } => {
      let e: VmtcError | undefined;
      let rule: string | undefined;
      if (!req.domains.includes(this.d.domain)) {
        e = aaaError('VMTC_AAA_CONSENT_DENIED', { domain: this.d.domain, reason: 'this domain is not on the path', domains: req.domains });
      } else {
        const dec = decide(this.d.policy.consentRules, peer.domain, req, this.usageFn(who, 'consent-grant'));
        if (dec.ok) rule = dec.rule;
        else e = aaaError(dec.code === 'VMTC_AAA_QUOTA_EXCEEDED' ? 'VMTC_AAA_QUOTA_EXCEEDED' : 'VMTC_AAA_CONSENT_DENIED', { domain: this.d.domain, ...dec.details });
      }
      if (e) {
        this.d.accounting.record({ at: this.d.clock.now(), kind: 'consent-refusal', who, ...base, code: e.code, details: { requester: claims.sub, ...(e.details ?? {}) } });
        log.info({ code: e.code, details: e.details }, 'consent refused');
        return { e };
      }
      this.d.accounting.record({ at: this.d.clock.now(), kind: 'consent-grant', who, rule: rule!, ...base, mbitSeconds: req.bandwidthMbps * (req.window.end - req.window.start), details: { requester: claims.sub } });
      log.info({ rule }, 'consent granted');
      return { consent: signConsentReply(this.d.keys.signing(), this.d.domain, peer.domain, claims.jti, rule!, this.d.clock.now()), rule: rule! };
    });
    if ('e' in out) throw out.e;
    return out;
  }

  /**
   * A broker's or the controller's report that a granted lightpath is in use or released. The
   * operator and the policy's reporters (the meters of this domain) report on any grant; a
   * requester only on its own. Someone else's grant gets the same answer as a jti never granted,
   * so a requester learns nothing about other requesters' grants.
   */
  report(party: AccountingParty, ev: { kind: 'use' | 'release'; jti: string; at?: number; bytes?: number; mbitSeconds?: number; details?: Record<string, unknown> }): AccountingEvent {
    const grant = this.d.accounting.grant(ev.jti);
    if (!grant || (party.role === 'requester' && grant.who !== party.id)) throw aaaError('VMTC_AAA_GRANT_UNKNOWN', { jti: ev.jti });
    const reporter = party.role === 'operator' ? 'admin' : party.id;
    const atMs = ev.at !== undefined ? ev.at * 1000 : this.d.clock.now();
    let mbitSeconds = ev.mbitSeconds;
    if (mbitSeconds === undefined && ev.kind === 'release' && grant.bandwidthMbps !== undefined) {
      // How much was used: reserved bandwidth x the time between the last "use" and this release.
      const use = this.d.accounting.lastUse(ev.jti);
      if (use) {
        const since = use.details?.at !== undefined ? Number(use.details.at) * 1000 : Date.parse(use.at);
        mbitSeconds = grant.bandwidthMbps * Math.max(0, (atMs - since) / 1000);
      }
    }
    const seq = this.d.accounting.record({
      at: this.d.clock.now(), kind: ev.kind, who: grant.who, reporter, jti: ev.jti,
      ...(grant.migrationId ? { migrationId: grant.migrationId } : {}),
      ...(grant.vmId ? { vmId: grant.vmId } : {}),
      ...(grant.project ? { project: grant.project } : {}),
      ...(grant.src ? { src: grant.src } : {}),
      ...(grant.dst ? { dst: grant.dst } : {}),
      ...(grant.domains ? { domains: grant.domains } : {}),
      ...(grant.bandwidthMbps !== undefined ? { bandwidthMbps: grant.bandwidthMbps } : {}),
      ...(mbitSeconds !== undefined ? { mbitSeconds } : {}),
      ...(ev.bytes !== undefined ? { bytes: ev.bytes } : {}),
      details: { ...(ev.details ?? {}), at: atMs / 1000 },
    });
    return this.d.accounting.query({ afterSeq: seq - 1, limit: 1 })[0]!;
  }

  /** Claims of a token this AAA issued (for tests and diagnostics). */
  static claimsOf(token: string): CapabilityClaims {
    return JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString('utf8')) as CapabilityClaims;
  }
}

export type { Rule };
