// Adapters from the runner's ports (ports.ts) to the AAA and broker services:
// docs/design.md#live-migration, steps 3, 4 and 7. The controller holds an Ed25519 key
// (DIR/controller-key.json, 0600); the AAA binds each capability token to it (cnf.jkt) and the
// broker demands a DPoP proof made with it, so a token copied off the wire is useless to anyone
// else.
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from '../common/log.ts';
import { exportRequesterKey, generateRequesterKeySync, importRequesterKey, jwkThumbprint, type RequesterKey } from '../common/dpop.ts';
import { checkPolicy, requestAuthorization, reportAccounting } from '../aaa/client.ts';
import type { PolicyCheckRequest, PolicyDecision } from '../common/lightpath.ts';
import { BrokerClient } from '../broker/client.ts';
import type { AuthorizationPort, LightpathPort, LightpathRequest } from './ports.ts';

/** Load the controller's requester key, creating it on first start. */
export function loadControllerKey(dataDir: string): { key: RequesterKey; jkt: string } {
  const file = join(dataDir, 'controller-key.json');
  let key: RequesterKey;
  if (existsSync(file)) key = importRequesterKey(JSON.parse(readFileSync(file, 'utf8')));
  else {
    key = generateRequesterKeySync();
    writeFileSync(file, JSON.stringify(exportRequesterKey(key)) + '\n', { mode: 0o600 });
  }
  return { key, jkt: jwkThumbprint(key.publicJwk) };
}

export class AaaAuthorization implements AuthorizationPort {
  constructor(private readonly aaaUrl: string, private readonly key: RequesterKey, private readonly log: Logger) {}

  async authorize(req: LightpathRequest) {
    const r = await requestAuthorization(this.aaaUrl, this.key, req);
    this.log.info({ migrationId: req.migrationId, jti: r.jti, domains: r.domains }, 'capability token granted');
    return { token: r.token, jti: r.jti, expiresAt: Date.parse(r.expiresAt), audience: r.audience };
  }

  /** The AAA's policy check (docs/aaa.md "Policy check"): nothing recorded; throws when it cannot answer. */
  check(req: PolicyCheckRequest, opts: { timeoutMs: number }): Promise<PolicyDecision> {
    return checkPolicy(this.aaaUrl, this.key, req, { timeoutMs: opts.timeoutMs });
  }

  /** Report that the grant is in use (the lightpath is up); failures are logged, never fatal. */
  async account(kind: 'use', jti: string, details: Record<string, unknown>): Promise<void> {
    await reportAccounting(this.aaaUrl, this.key, { kind, jti, details }).catch((e) => this.log.warn({ jti, kind, code: (e as { code?: string }).code }, 'accounting report failed'));
  }

  /** Close the grant's accounting (docs/design.md#live-migration, step 7). The runner calls it
   *  on every end, with the jti from the record (docs/design.md#accounting); it throws, so the
   *  record can say it failed. */
  async release(jti: string, details: Record<string, unknown>): Promise<void> {
    await reportAccounting(this.aaaUrl, this.key, { kind: 'release', jti, details });
    this.log.info({ jti, migrationId: details.migrationId }, 'accounting closed');
  }
}

export class BrokerLightpath implements LightpathPort {
  private readonly client: BrokerClient;

  constructor(brokerUrl: string, private readonly key: RequesterKey, private readonly log: Logger, private readonly aaa?: AaaAuthorization, opts: { ca?: string } = {}) {
    this.client = new BrokerClient(brokerUrl, opts.ca ? { ca: opts.ca } : {});
  }

  async setup(req: LightpathRequest, token: string, opts: { idempotencyKey?: string } = {}) {
    const v = await this.client.setup({ src: req.src, dst: req.dst, bandwidthMbps: req.bandwidthMbps, window: req.window, migrationId: req.migrationId, ...(opts.idempotencyKey ? { idempotencyKey: opts.idempotencyKey } : {}) }, token, this.key);
    this.log.info({ migrationId: req.migrationId, reservationId: v.id, path: v.path?.nodes }, 'lightpath provisioned');
    const jti = jtiOf(token);
    if (this.aaa && jti) await this.aaa.account('use', jti, { reservationId: v.id, bandwidthMbps: req.bandwidthMbps });
    return { reservationId: v.id, details: { path: v.path, dataPlane: v.dataPlane } };
  }

  /** An advance reservation: reserve and commit now; provision() at the move's start. */
  async book(req: LightpathRequest, token: string, opts: { idempotencyKey: string }) {
    const body = { src: req.src, dst: req.dst, bandwidthMbps: req.bandwidthMbps, window: req.window, migrationId: req.migrationId, idempotencyKey: opts.idempotencyKey };
    const r = await this.client.reserve(body, token, this.key);
    try {
      if (!r.committed) await this.client.commit(r.id, token, this.key);
    } catch (e) {
      await this.client.teardown(r.id, token, this.key).catch(() => undefined);
      throw e;
    }
    this.log.info({ booking: req.migrationId, reservationId: r.id, window: req.window, bandwidthMbps: req.bandwidthMbps }, 'lightpath booked');
    return { reservationId: r.id };
  }

  async provision(reservationId: string, token: string) {
    const v = await this.client.provision(reservationId, token, this.key);
    const jti = jtiOf(token);
    if (this.aaa && jti) await this.aaa.account('use', jti, { reservationId, bandwidthMbps: v.bandwidthMbps });
    return { details: { path: v.path, dataPlane: v.dataPlane } };
  }

  async find(idempotencyKey: string) {
    const v = await this.client.findByKey(idempotencyKey, this.key);
    return v ? { reservationId: v.id } : undefined;
  }

  /** The grant's accounting is closed by the runner, not here: a restarted controller no longer
   *  knows which grant a reservation was made with, but its record does (ctx.token.jti). */
  async teardown(reservationId: string, token: string) {
    await this.client.teardown(reservationId, token || undefined, this.key);
  }
}

function jtiOf(token: string): string | undefined {
  try {
    const payload = JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString('utf8')) as { jti?: string };
    return payload.jti;
  } catch {
    return undefined;
  }
}
