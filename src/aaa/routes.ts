// The AAA's REST API (docs/aaa.md): who may call what (admin bearer, DPoP proofs of requesters
// and reporters, signed peer requests) and the routes, with their schemas in schemas.ts.
import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { Clock } from '../common/clock.ts';
import type { Logger } from '../common/log.ts';
import { commonError, VmtcError } from '../common/errors.ts';
import { DpopReplayCache, verifyDpopProofSync } from '../common/dpop.ts';
import { expectedHtu } from '../common/public-url.ts';
import { errorResponses, type Security } from '../common/schemas.ts';
import { aaaError } from './errors.ts';
import type { KeyStore } from './keys.ts';
import type { Accounting, AccountingParty } from './accounting.ts';
import type { AaaService } from './service.ts';
import {
  AccountingEventBody, AccountingEvent, AccountingPage, AccountingQuery, Authorization, AuthorizationBody, Consent, Info, Jwks,
  PolicyCheckBody, PolicyDecision, RotateBody, Rotated, SignedRequest, Withdrawal,
} from './schemas.ts';
import type { Db } from '../common/db.ts';
import { peerCheck, registerHealthRoutes, storeCheck } from '../common/health-routes.ts';
import { registerAaaMetrics } from './metrics.ts';

export interface AaaRouteDeps {
  service: AaaService;
  keys: KeyStore;
  accounting: Accounting;
  clock: Clock;
  logger: Logger;
  domain: string;
  /** The admin bearer credential. */
  adminToken: string;
  tokenLifetimeSec: number;
  proofMaxAgeSec: number;
  /** The URL clients reach this AAA at (AaaOptions.publicUrl or its default), known once listening. */
  publicUrl: () => string;
  /** The store (aaa.db), for GET /readyz. */
  db: Db;
}

const sha = (s: string) => createHash('sha256').update(s).digest();

export function registerAaaRoutes(fastify: FastifyInstance, d: AaaRouteDeps): void {
  const http = fastify.withTypeProvider<TypeBoxTypeProvider>();
  const { service, keys, accounting, clock } = d;
  const adminHash = sha(d.adminToken);
  const proofReplay = new DpopReplayCache((d.proofMaxAgeSec + 10) * 1000);

  // The URL the client signed in its proof's htu (RFC 9449 §4.3 step 9): the configured public
  // URL, never the request's Host header, which the client chooses (src/common/public-url.ts).
  const requestUrl = (req: FastifyRequest) => expectedHtu(d.publicUrl(), req.url);

  /**
   * Verify the DPoP proof of a request made without a token; returns the key's thumbprint. The
   * routes' onRequest hooks call it before the body is read (README "API"); the answer is kept
   * for the handler, since a second check of the same proof would find it replayed.
   */
  const proven = new WeakMap<FastifyRequest, string>();
  const proofOf = (req: FastifyRequest): string => {
    const known = proven.get(req);
    if (known !== undefined) return known;
    const header = req.headers.dpop;
    try {
      if (Array.isArray(header)) throw aaaError('VMTC_DPOP_PROOF_INVALID', { reason: 'malformed', why: 'more than one DPoP header' });
      const p = verifyDpopProofSync(header, { htm: req.method, htu: requestUrl(req), now: clock.now(), maxAgeSec: d.proofMaxAgeSec });
      if (!proofReplay.check(p.jti, clock.now())) throw aaaError('VMTC_DPOP_PROOF_INVALID', { reason: 'replayed', jti: p.jti });
      proven.set(req, p.jkt);
      return p.jkt;
    } catch (e) {
      if (e instanceof VmtcError && e.code === 'VMTC_DPOP_PROOF_INVALID') throw aaaError('VMTC_AAA_PROOF_INVALID', e.details);
      throw e;
    }
  };
  const isAdmin = (req: FastifyRequest): boolean => {
    const m = /^Bearer (\S+)$/.exec(req.headers.authorization ?? '');
    return Boolean(m && timingSafeEqual(sha(m[1]!), adminHash));
  };
  const requireAdmin = (req: FastifyRequest) => {
    if (!req.headers.authorization) throw commonError('VMTC_UNAUTHENTICATED');
    if (!isAdmin(req)) throw commonError('VMTC_FORBIDDEN', { reason: 'not the admin credential' });
  };
  /**
   * Admin bearer (the operator: everything), or a DPoP proof by a reporter (brokers) or a
   * requester of the policy (only its own records; docs/aaa.md#accounting).
   */
  const partyOf = (req: FastifyRequest): AccountingParty => {
    if (req.headers.authorization) {
      if (isAdmin(req)) return { role: 'operator' };
      throw commonError('VMTC_FORBIDDEN', { reason: 'not the admin credential' });
    }
    if (!req.headers.dpop) throw commonError('VMTC_UNAUTHENTICATED', { accepted: ['Bearer <admin token>', 'DPoP proof of a requester or reporter key'] });
    const jkt = proofOf(req);
    const reporter = service.policy.reportersByJkt.get(jkt);
    if (reporter) return { role: 'reporter', id: reporter.id };
    const requester = service.policy.requestersByJkt.get(jkt);
    if (requester) return { role: 'requester', id: requester.id };
    throw aaaError('VMTC_AAA_REQUESTER_UNKNOWN', { jkt });
  };

  const open: Security = [];
  const proof: Security = [{ dpopProof: [] }];
  const adminOrProof: Security = [{ bearer: [] }, { dpopProof: [] }];
  const admin: Security = [{ bearer: [] }];
  registerAaaMetrics(fastify, { onRequest: async (req) => requireAdmin(req), security: admin });

  http.get('/.well-known/jwks.json', {
    schema: {
      operationId: 'getJwks', tags: ['keys'], security: open,
      summary: 'the public keys that verify this AAA\'s tokens',
      response: { 200: Jwks, ...errorResponses({}) },
    },
  }, async (_req, reply) => {
    void reply.header('cache-control', 'max-age=60');
    return keys.jwks();
  });

  http.get('/v1/info', {
    schema: {
      operationId: 'getInfo', tags: ['keys'], security: open,
      summary: 'issuer, domain and current key id',
      response: { 200: Info, ...errorResponses({}) },
    },
  }, async () => ({
    issuer: service.issuer, domain: d.domain, kid: keys.signing().kid, tokenLifetimeSec: d.tokenLifetimeSec, publicJwk: keys.signing().publicJwk,
  }));

  http.post('/v1/authorizations', {
    // The proof is checked before the body is read; whether its key is a requester's is decided
    // in the handler, so the refusal of an unknown key is accounted with its request.
    onRequest: async (req) => { proofOf(req); },
    schema: {
      operationId: 'requestAuthorization', tags: ['authorizations'], security: proof,
      summary: 'request a capability token for one lightpath (DPoP proof required)',
      body: AuthorizationBody,
      // 400 site or window, 401 proof, 403 requester, policy or a peer domain, 429 quota,
      // 502 a peer domain's AAA unreachable or unverifiable.
      response: { 201: Authorization, ...errorResponses({ body: true }, 401, 403, 429, 502) },
    },
  }, async (req, reply) => {
    const body = req.body;
    const jkt = proofOf(req);
    const requester = service.requesterByJkt(jkt);
    if (!requester) throw service.refuseUnknown(`jkt:${jkt}`, body, aaaError('VMTC_AAA_REQUESTER_UNKNOWN', { jkt }));
    const result = await service.authorize(requester, jkt, body);
    return reply.status(201).send(result);
  });

  // Side-effect free: nothing is accounted, signed or asked of a peer (docs/aaa.md "Policy check").
  http.post('/v1/policy/check', {
    onRequest: async (req) => { proofOf(req); },
    schema: {
      operationId: 'checkPolicy', tags: ['authorizations'], security: proof,
      summary: 'would POST /v1/authorizations grant this lightpath? The local policy, sites, window and quotas, without a token, a record or a peer asked (DPoP proof of a requester)',
      body: PolicyCheckBody,
      response: { 200: PolicyDecision, ...errorResponses({ body: true }, 401, 403) },
    },
  }, async (req) => {
    const jkt = proofOf(req);
    const requester = service.requesterByJkt(jkt);
    if (!requester) throw aaaError('VMTC_AAA_REQUESTER_UNKNOWN', { jkt });
    return service.check(requester, req.body);
  });

  // Live: the process runs; ready: its store answers and every peer AAA of the policy in force
  // (it may be reloaded) answers its /healthz.
  registerHealthRoutes(http, () => ({
    store: storeCheck(d.db),
    ...Object.fromEntries([...service.policy.peers.values()].map((p) => [`aaa:${p.domain}`, peerCheck(p.url)])),
  }), { clock });

  // A peer's consent requests carry their credential in the body (a JWS signed by a pinned key
  // of the peer), so these two routes read a bounded body before they know the caller.
  http.post('/v1/consents', {
    schema: {
      operationId: 'requestConsent', tags: ['peers'], security: open,
      summary: 'a peer AAA asks this domain to consent to a lightpath (signed request)',
      body: SignedRequest,
      response: { 200: Consent, ...errorResponses({ body: true }, 401, 403, 429) },
    },
  }, async (req) => service.consent(req.body.request));

  http.post('/v1/consents/withdraw', {
    schema: {
      operationId: 'withdrawConsent', tags: ['peers'], security: open,
      summary: 'a peer AAA withdraws a consent it obtained (the whole request was refused elsewhere)',
      body: SignedRequest,
      response: { 200: Withdrawal, ...errorResponses({ body: true }, 401, 403, 404) },
    },
  }, async (req) => service.withdrawal(req.body.request));

  http.post('/v1/accounting/events', {
    onRequest: async (req) => { partyOf(req); },
    schema: {
      operationId: 'reportAccountingEvent', tags: ['accounting'], security: adminOrProof,
      summary: 'report that a granted lightpath is in use or released (admin or a reporter: any grant; a requester: its own)',
      body: AccountingEventBody,
      response: { 201: AccountingEvent, ...errorResponses({ body: true }, 401, 403, 404) },
    },
  }, async (req, reply) => {
    const ev = service.report(partyOf(req), req.body);
    return reply.status(201).send(ev);
  });

  http.get('/v1/accounting', {
    onRequest: async (req) => { partyOf(req); },
    schema: {
      operationId: 'listAccounting', tags: ['accounting'], security: adminOrProof,
      summary: 'the accounting record, oldest first (admin: all; a requester or reporter: its own records)',
      querystring: AccountingQuery,
      response: { 200: AccountingPage, ...errorResponses({}, 401, 403) },
    },
  }, async (req) => {
    const party = partyOf(req);
    // ajv has applied the schema's default: limit is always set here.
    const q = req.query as typeof req.query & { limit: string };
    const limit = Number(q.limit);
    let sinceMs: number | undefined;
    if (q.since !== undefined) {
      sinceMs = /^\d+$/.test(q.since) ? Number(q.since) : Date.parse(q.since);
      if (!Number.isFinite(sinceMs)) throw commonError('VMTC_VALIDATION', { field: 'since', value: q.since, expected: 'ISO time or epoch milliseconds' });
    }
    const events = accounting.query({
      limit,
      // Not the operator: only the party's own records, so nothing tells it what others did.
      ...(party.role !== 'operator' ? { party: party.id } : {}),
      ...(q.migrationId !== undefined ? { migrationId: q.migrationId } : {}),
      ...(q.jti !== undefined ? { jti: q.jti } : {}),
      ...(q.kind !== undefined ? { kind: q.kind } : {}),
      ...(sinceMs !== undefined ? { sinceMs } : {}),
      ...(q.after !== undefined ? { afterSeq: Number(q.after) } : {}),
    });
    return { events, ...(events.length === limit ? { next: events[events.length - 1]!.seq } : {}) };
  });

  // Consent and authorization requests are JSON only; an empty POST body on rotate is allowed.
  http.post('/v1/keys/rotate', {
    onRequest: async (req) => requireAdmin(req),
    schema: {
      operationId: 'rotateKeys', tags: ['keys'], security: admin,
      summary: 'make a new signing key; the old one keeps verifying until its tokens expire (admin)',
      body: RotateBody,
      response: { 200: Rotated, ...errorResponses({ body: true }, 401, 403) },
    },
  }, async () => {
    const previous = keys.signing().kid;
    // Old key published for the longest lifetime of a token it signed, plus skew.
    const k = keys.rotate((d.tokenLifetimeSec + 60) * 1000);
    d.logger.info({ previous, kid: k.kid }, 'signing key rotated');
    return { kid: k.kid, previous, publicJwk: k.publicJwk, previousPublishedUntil: new Date(keys.get(previous)?.publishUntil ?? clock.now()).toISOString() };
  });
}
