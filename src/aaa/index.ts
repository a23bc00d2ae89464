// `vmtc aaa`: one per domain. Policy, capability tokens, peering with other domains' AAA,
// accounting (docs/aaa.md). startAaa() builds the whole service (its REST API is routes.ts) and
// returns something with close(), for the CLI, the lab and the tests.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { buildHttp, baseUrl } from '../common/http.ts';
import { parsePublicUrl, requirePublicUrlFor, resolvePublicUrl } from '../common/public-url.ts';
import { systemClock, randomIds } from '../common/clock.ts';
import { createLogger, serviceLogger } from '../common/log.ts';
import { commonError } from '../common/errors.ts';
import type { Db } from '../common/db.ts';
import { AAA_DEFAULTS, type AaaOptions } from './options.ts';
import { loadPolicyFile, parsePolicy, type Policy } from './policy.ts';
import { openAaaDb } from './store.ts';
import { readOrCreateSecretFile } from '../common/secret-file.ts';
import { KeyStore, type SigningKey } from './keys.ts';
import { Accounting } from './accounting.ts';
import { AaaService } from './service.ts';
import { registerAaaRoutes } from './routes.ts';
import { AAA_SECURITY_SCHEMES } from './schemas.ts';

export type { AaaOptions } from './options.ts';

export interface AaaHandle {
  /** Base URL, e.g. http://127.0.0.1:41234 */
  url: string;
  /** The URL clients' proofs must name (AaaOptions.publicUrl, or url by default). */
  publicUrl: string;
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

function positiveInteger(v: number, field: string): number {
  if (!Number.isInteger(v) || v <= 0) throw commonError('VMTC_CONFIG_INVALID', { field, value: v }, { message: `${field} must be a positive integer` });
  return v;
}

function readOrCreateAdminToken(dir: string, secret: () => string): string {
  return readOrCreateSecretFile(join(dir, 'admin.token'), secret);
}

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
  const host = opts.host ?? AAA_DEFAULTS.host;
  // Checked before anything is opened or bound; the default needs the bound port (below).
  if (opts.publicUrl !== undefined) parsePublicUrl(opts.publicUrl);
  else requirePublicUrlFor(host);
  const unknownRefusals = {
    perWindow: positiveInteger(opts.unknownRefusalsPerWindow ?? AAA_DEFAULTS.unknownRefusalsPerWindow, 'unknownRefusalsPerWindow'),
    windowSec: positiveInteger(opts.unknownRefusalWindowSec ?? AAA_DEFAULTS.unknownRefusalWindowSec, 'unknownRefusalWindowSec'),
  };

  mkdirSync(opts.dataDir, { recursive: true, mode: 0o700 });
  const adminToken = readOrCreateAdminToken(opts.dataDir, () => ids.secret(32));
  let db: Db | undefined;
  let app: FastifyInstance | undefined;
  // Set once listening (the default names the bound port); no request is served before that.
  let publicUrl = '';
  try {
    db = openAaaDb(join(opts.dataDir, 'aaa.db'));
    const keys = new KeyStore(db, clock, ids);
    const accounting = new Accounting(db);
    const service = new AaaService({
      domain: opts.domain, policy, keys, accounting, clock, ids, logger, tokenLifetimeSec,
      peerTimeoutMs: opts.peerTimeoutMs ?? AAA_DEFAULTS.peerTimeoutMs,
      maxWindowSec: opts.maxWindowSec ?? AAA_DEFAULTS.maxWindowSec,
      maxWindowLagSec: opts.maxWindowLagSec ?? AAA_DEFAULTS.maxWindowLagSec,
      unknownRefusals,
    });
    app = await buildHttp({ logger, title: `vmtc AAA (${opts.domain})`, securitySchemes: AAA_SECURITY_SCHEMES, rateLimit: { ...AAA_DEFAULTS.rateLimit, ...(opts.rateLimit ?? {}) } });
    const http = app;
    registerAaaRoutes(http, {
      service, keys, accounting, clock, logger, domain: opts.domain, adminToken, tokenLifetimeSec, proofMaxAgeSec,
      publicUrl: () => publicUrl, db,
    });

    await http.listen({ host, port: opts.port ?? AAA_DEFAULTS.port });
    const url = baseUrl(http);
    publicUrl = resolvePublicUrl(opts.publicUrl, { scheme: 'http', host, port: (http.server.address() as { port: number }).port });
    logger.info({ url, publicUrl, issuer: service.issuer, kid: keys.signing().kid }, 'AAA listening');
    const theDb = db;
    let closed = false;
    return {
      url,
      publicUrl,
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
        service.close();
        theDb.close();
      },
    };
  } catch (e) {
    await app?.close().catch(() => undefined);
    db?.close();
    throw e;
  }
}
