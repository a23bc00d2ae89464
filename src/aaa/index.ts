// `vmtc aaa`: one per domain. Policy, capability tokens, peering with other domains' AAA,
// accounting (DESIGN.md, processes table; issue 3). startAaa() builds the whole service and
// returns something with close(), for the CLI, the lab and the tests.
import { createHash, timingSafeEqual } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { buildHttp, baseUrl } from '../common/http.ts';
import { systemClock, randomIds } from '../common/clock.ts';
import { createLogger, serviceLogger } from '../common/log.ts';
import { commonError, VmtcError } from '../common/errors.ts';
import { DpopReplayCache, verifyDpopProofSync } from '../common/dpop.ts';
import type { Db } from '../common/db.ts';
import { aaaError } from './errors.ts';
import { AAA_DEFAULTS, type AaaOptions } from './options.ts';
import { loadPolicyFile, parsePolicy, type LightpathRequest, type Policy } from './policy.ts';
import { openAaaDb } from './store.ts';
import { readOrCreateSecretFile } from '../common/secret-file.ts';
import { KeyStore, type SigningKey } from './keys.ts';
import { Accounting } from './accounting.ts';
import { AaaService } from './service.ts';

export type { AaaOptions } from './options.ts';

export interface AaaHandle {
  /** Base URL, e.g. http://127.0.0.1:41234 */
  url: string;
  /** "aaa:<domain>" */
  issuer: string;
  domain: string;
  /** The admin bearer credential (also in DIR/admin.token). */
  adminToken: string;
  /** The JWKS this AAA publishes now. */
  jwks(): { keys: SigningKey['publicJwk'][] };
  /** The current signing key's public JWK with its kid (what peers pin). */
  publicJwk(): SigningKey['publicJwk'];
  app: FastifyInstance;
  keys: KeyStore;
  accounting: Accounting;
  /** The policy in force. */
  readonly policy: Policy;
  /**
   * Load the policy again (from `doc`, or from the policy file) and put it in force; a bad one is
   * refused with VMTC_AAA_POLICY_INVALID and the old one stays. The token lifetime does not change.
   */
  reloadPolicy(doc?: unknown): Policy;
  close(): Promise<void>;
}

const NAME = { type: 'string', minLength: 1, maxLength: 128, pattern: '^[A-Za-z0-9._:@\\-]+$' } as const;
const WINDOW = {
  type: 'object',
  additionalProperties: false,
  required: ['start', 'end'],
  properties: { start: { type: 'integer', minimum: 0 }, end: { type: 'integer', minimum: 0 } },
} as const;

const AUTHORIZATION_BODY = {
  type: 'object',
  additionalProperties: false,
  required: ['migrationId', 'vmId', 'project', 'src', 'dst', 'bandwidthMbps', 'window'],
  properties: {
    migrationId: NAME,
    vmId: NAME,
    project: NAME,
    src: NAME,
    dst: NAME,
    bandwidthMbps: { type: 'number', exclusiveMinimum: 0, maximum: 1e7 },
    window: WINDOW,
    via: { type: 'array', maxItems: 16, items: NAME },
  },
} as const;

const EVENT_BODY = {
  type: 'object',
  additionalProperties: false,
  required: ['kind', 'jti'],
  properties: {
    kind: { type: 'string', enum: ['use', 'release'] },
    jti: { type: 'string', minLength: 1, maxLength: 128 },
    at: { type: 'number', minimum: 0, description: 'epoch seconds when the use began / the release happened (default: now)' },
    bytes: { type: 'integer', minimum: 0 },
    mbitSeconds: { type: 'number', minimum: 0 },
    details: { type: 'object', additionalProperties: true },
  },
} as const;

function readOrCreateAdminToken(dir: string, secret: () => string): string {
  return readOrCreateSecretFile(join(dir, 'admin.token'), secret);
}

const sha = (s: string) => createHash('sha256').update(s).digest();

export async function startAaa(opts: AaaOptions): Promise<AaaHandle> {
  const clock = opts.clock ?? systemClock;
  const ids = opts.ids ?? randomIds;
  const logger = serviceLogger(opts.logger ?? createLogger({ svc: 'aaa' }), 'aaa', { domain: opts.domain });
  if (!/^[A-Za-z0-9._\-]{1,64}$/.test(opts.domain ?? '')) {
    throw commonError('VMTC_CONFIG_INVALID', { field: 'domain', value: opts.domain }, { message: 'domain must be 1-64 letters, digits, ".", "_" or "-"' });
  }
  if ((opts.policyFile === undefined) === (opts.policy === undefined)) {
    throw commonError('VMTC_CONFIG_INVALID', { field: 'policy' }, { message: 'exactly one of policyFile or policy is required' });
  }
  const policy = opts.policyFile !== undefined ? loadPolicyFile(opts.policyFile, opts.domain) : parsePolicy(opts.policy, opts.domain);
  const tokenLifetimeSec = opts.tokenLifetimeSec ?? policy.tokenLifetimeSec ?? AAA_DEFAULTS.tokenLifetimeSec;
  const proofMaxAgeSec = opts.proofMaxAgeSec ?? AAA_DEFAULTS.proofMaxAgeSec;

  mkdirSync(opts.dataDir, { recursive: true, mode: 0o700 });
  const adminToken = readOrCreateAdminToken(opts.dataDir, () => ids.secret(32));
  const adminHash = sha(adminToken);
  let db: Db | undefined;
  let app: FastifyInstance | undefined;
  try {
    db = openAaaDb(join(opts.dataDir, 'aaa.db'));
    const keys = new KeyStore(db, clock, ids);
    const accounting = new Accounting(db);
    const service = new AaaService({
      domain: opts.domain, policy, keys, accounting, clock, ids, logger, tokenLifetimeSec,
      peerTimeoutMs: opts.peerTimeoutMs ?? AAA_DEFAULTS.peerTimeoutMs,
      maxWindowSec: opts.maxWindowSec ?? AAA_DEFAULTS.maxWindowSec,
      maxWindowLagSec: opts.maxWindowLagSec ?? AAA_DEFAULTS.maxWindowLagSec,
    });
    const proofReplay = new DpopReplayCache((proofMaxAgeSec + 10) * 1000);

    app = await buildHttp({ logger, title: `vmtc AAA (${opts.domain})` });
    const http = app;

    // The URL the client signed in its proof's htu (RFC 9449 §4.3 step 9).
    const requestUrl = (req: FastifyRequest) => `${opts.publicUrl ? opts.publicUrl.replace(/\/+$/, '') : `${req.protocol}://${req.host}`}${req.url}`;

    /** Verify the DPoP proof of a request made without a token; returns the key's thumbprint. */
    const proofOf = (req: FastifyRequest): string => {
      const header = req.headers.dpop;
      try {
        if (Array.isArray(header)) throw aaaError('VMTC_DPOP_PROOF_INVALID', { reason: 'malformed', why: 'more than one DPoP header' });
        const p = verifyDpopProofSync(header, { htm: req.method, htu: requestUrl(req), now: clock.now(), maxAgeSec: proofMaxAgeSec });
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

    http.get('/.well-known/jwks.json', { schema: { summary: 'the public keys that verify this AAA\'s tokens' } }, async (_req, reply) => {
      void reply.header('cache-control', 'max-age=60');
      return keys.jwks();
    });

    http.get('/v1/info', { schema: { summary: 'issuer, domain and current key id' } }, async () => ({
      issuer: service.issuer, domain: opts.domain, kid: keys.signing().kid, tokenLifetimeSec, publicJwk: keys.signing().publicJwk,
    }));

    http.post('/v1/authorizations', {
      schema: { summary: 'request a capability token for one lightpath (DPoP proof required)', body: AUTHORIZATION_BODY },
    }, async (req, reply) => {
      const body = req.body as LightpathRequest;
      const jkt = proofOf(req);
      const requester = service.requesterByJkt(jkt);
      if (!requester) throw service.refuseUnknown(`jkt:${jkt}`, body, aaaError('VMTC_AAA_REQUESTER_UNKNOWN', { jkt }));
      const result = await service.authorize(requester, jkt, body);
      void reply.status(201);
      return result;
    });

    http.post('/v1/consents', {
      schema: {
        summary: 'a peer AAA asks this domain to consent to a lightpath (signed request)',
        body: { type: 'object', additionalProperties: false, required: ['request'], properties: { request: { type: 'string', minLength: 1, maxLength: 16384 } } },
      },
    }, async (req) => service.consent((req.body as { request: string }).request));

    http.post('/v1/consents/withdraw', {
      schema: {
        summary: 'a peer AAA withdraws a consent it obtained (the whole request was refused elsewhere)',
        body: { type: 'object', additionalProperties: false, required: ['request'], properties: { request: { type: 'string', minLength: 1, maxLength: 16384 } } },
      },
    }, async (req) => service.withdrawal((req.body as { request: string }).request));

    http.post('/v1/accounting/events', {
      schema: { summary: 'report that a granted lightpath is in use or released (admin, requester or reporter)', body: EVENT_BODY },
    }, async (req, reply) => {
      const reporter = reporterOf(req);
      const ev = service.report(reporter, req.body as Parameters<AaaService['report']>[1]);
      void reply.status(201);
      return ev;
    });

    http.get('/v1/accounting', {
      schema: {
        summary: 'the accounting record, oldest first (admin, requester or reporter)',
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: {
            migrationId: NAME,
            jti: { type: 'string', maxLength: 128 },
            kind: { type: 'string', enum: ['grant', 'refusal', 'consent-grant', 'consent-refusal', 'use', 'release'] },
            since: { type: 'string', maxLength: 64, description: 'ISO time or epoch milliseconds' },
            // Strings: buildHttp does not coerce types, and query strings are text.
            after: { type: 'string', pattern: '^[0-9]{1,15}$', description: 'only records with seq greater than this (paging)' },
            limit: { type: 'string', pattern: '^([1-9][0-9]{0,2}|1000)$', default: '200', description: '1-1000' },
          },
        },
      },
    }, async (req) => {
      reporterOf(req);
      const q = req.query as { migrationId?: string; jti?: string; kind?: string; since?: string; after?: string; limit: string };
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

    http.post('/v1/keys/rotate', {
      schema: { summary: 'make a new signing key; the old one keeps verifying until its tokens expire (admin)', body: { type: 'object', additionalProperties: false, properties: {} } },
    }, async (req) => {
      requireAdmin(req);
      const previous = keys.signing().kid;
      // Old key published for the longest lifetime of a token it signed, plus skew.
      const k = keys.rotate((tokenLifetimeSec + 60) * 1000);
      logger.info({ previous, kid: k.kid }, 'signing key rotated');
      return { kid: k.kid, previous, publicJwk: k.publicJwk, previousPublishedUntil: new Date(keys.get(previous)?.publishUntil ?? clock.now()).toISOString() };
    });

    // Consent and authorization requests are JSON only; an empty POST body on rotate is allowed.
    await http.listen({ host: opts.host ?? AAA_DEFAULTS.host, port: opts.port ?? AAA_DEFAULTS.port });
    const url = baseUrl(http);
    logger.info({ url, issuer: service.issuer, kid: keys.signing().kid }, 'AAA listening');
    const theDb = db;
    let closed = false;
    return {
      url,
      issuer: service.issuer,
      domain: opts.domain,
      adminToken,
      jwks: () => keys.jwks(),
      publicJwk: () => keys.signing().publicJwk,
      app: http,
      keys,
      accounting,
      get policy() {
        return service.policy;
      },
      reloadPolicy(doc?: unknown) {
        const next = doc !== undefined ? parsePolicy(doc, opts.domain) : opts.policyFile !== undefined ? loadPolicyFile(opts.policyFile, opts.domain) : parsePolicy(opts.policy, opts.domain);
        service.setPolicy(next);
        logger.info({ requesters: next.requesters.length, rules: next.rules.length, peers: [...next.peers.keys()] }, 'policy reloaded');
        return next;
      },
      async close() {
        if (closed) return;
        closed = true;
        await http.close();
        theDb.close();
      },
    };
  } catch (e) {
    await app?.close().catch(() => undefined);
    db?.close();
    throw e;
  }
}
