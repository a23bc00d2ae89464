// The AAA's REST API (docs/aaa.md): who may call what (admin bearer, DPoP proofs of requesters
// and reporters, signed peer requests) and the routes, with their schemas in schemas.ts.
import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { Clock } from '../common/clock.ts';
import type { Logger } from '../common/log.ts';
import { commonError, VmtcError } from '../common/errors.ts';
import { DpopReplayCache, verifyDpopProofSync } from '../common/dpop.ts';
import { errorResponses, type Security } from '../common/schemas.ts';
import { aaaError } from './errors.ts';
import type { KeyStore } from './keys.ts';
import type { Accounting } from './accounting.ts';
import type { AaaService } from './service.ts';
import {
  AccountingEventBody, AccountingEvent, AccountingPage, AccountingQuery, Authorization, AuthorizationBody, Consent, Info, Jwks,
  RotateBody, Rotated, SignedRequest, Withdrawal,
} from './schemas.ts';

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
  /** The URL clients reach this AAA at, when it is not what the request says (a proxy). */
  publicUrl?: string;
}

const sha = (s: string) => createHash('sha256').update(s).digest();

export function registerAaaRoutes(fastify: FastifyInstance, d: AaaRouteDeps): void {
  const http = fastify.withTypeProvider<TypeBoxTypeProvider>();
  const { service, keys, accounting, clock } = d;
  const adminHash = sha(d.adminToken);
  const proofReplay = new DpopReplayCache((d.proofMaxAgeSec + 10) * 1000);

  // The URL the client signed in its proof's htu (RFC 9449 §4.3 step 9).
  const requestUrl = (req: FastifyRequest) => `${d.publicUrl ? d.publicUrl.replace(/\/+$/, '') : `${req.protocol}://${req.host}`}${req.url}`;

  /** Verify the DPoP proof of a request made without a token; returns the key's thumbprint. */
  const proofOf = (req: FastifyRequest): string => {
    const header = req.headers.dpop;
    try {
      if (Array.isArray(header)) throw aaaError('VMTC_DPOP_PROOF_INVALID', { reason: 'malformed', why: 'more than one DPoP header' });
      const p = verifyDpopProofSync(header, { htm: req.method, htu: requestUrl(req), now: clock.now(), maxAgeSec: d.proofMaxAgeSec });
      if (!proofReplay.check(p.jti, clock.now())) throw aaaError('VMTC_DPOP_PROOF_INVALID', { reason: 'replayed', jti: p.jti });
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
  /** Admin bearer, or a DPoP proof by a requester or a reporter (brokers) of the policy. */
  const reporterOf = (req: FastifyRequest): string => {
    if (req.headers.authorization) {
      if (isAdmin(req)) return 'admin';
      throw commonError('VMTC_FORBIDDEN', { reason: 'not the admin credential' });
    }
    if (!req.headers.dpop) throw commonError('VMTC_UNAUTHENTICATED', { accepted: ['Bearer <admin token>', 'DPoP proof of a requester or reporter key'] });
    const jkt = proofOf(req);
    const who = service.policy.reportersByJkt.get(jkt) ?? service.policy.requestersByJkt.get(jkt);
    if (!who) throw aaaError('VMTC_AAA_REQUESTER_UNKNOWN', { jkt });
    return who.id;
  };

  const open: Security = [];
  const proof: Security = [{ dpopProof: [] }];
  const adminOrProof: Security = [{ bearer: [] }, { dpopProof: [] }];
  const admin: Security = [{ bearer: [] }];

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
    schema: {
      operationId: 'reportAccountingEvent', tags: ['accounting'], security: adminOrProof,
      summary: 'report that a granted lightpath is in use or released (admin, requester or reporter)',
      body: AccountingEventBody,
      response: { 201: AccountingEvent, ...errorResponses({ body: true }, 401, 403, 404) },
    },
  }, async (req, reply) => {
    const reporter = reporterOf(req);
    const ev = service.report(reporter, req.body);
    return reply.status(201).send(ev);
  });

  http.get('/v1/accounting', {
    schema: {
      operationId: 'listAccounting', tags: ['accounting'], security: adminOrProof,
      summary: 'the accounting record, oldest first (admin, requester or reporter)',
      querystring: AccountingQuery,
      response: { 200: AccountingPage, ...errorResponses({}, 401, 403) },
    },
  }, async (req) => {
    reporterOf(req);
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
    schema: {
      operationId: 'rotateKeys', tags: ['keys'], security: admin,
      summary: 'make a new signing key; the old one keeps verifying until its tokens expire (admin)',
      body: RotateBody,
      response: { 200: Rotated, ...errorResponses({ body: true }, 401, 403) },
    },
  }, async (req) => {
    requireAdmin(req);
    const previous = keys.signing().kid;
    // Old key published for the longest lifetime of a token it signed, plus skew.
    const k = keys.rotate((d.tokenLifetimeSec + 60) * 1000);
    d.logger.info({ previous, kid: k.kid }, 'signing key rotated');
    return { kid: k.kid, previous, publicJwk: k.publicJwk, previousPublishedUntil: new Date(keys.get(previous)?.publishUntil ?? clock.now()).toISOString() };
  });
}
