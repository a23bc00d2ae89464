// The controller's client for a broker (docs/design.md#live-migration, step 4): every call that
// uses the capability token carries `Authorization: DPoP <token>` and a fresh DPoP proof (RFC 9449)
// made with the holder's key; refusals come back as VmtcError with the broker's own code. Reads carry the
// operator's bearer token (docs/broker.md "Reads"), or the holder's token and proof (getAsHolder).
import type { KeyObject } from 'node:crypto';
import { VmtcError } from '../common/errors.ts';
import { makeDpopProofSync, type PublicJwk } from '../common/dpop.ts';
import { JsonClient } from '../common/http-client.ts';

export interface HolderKey {
  privateKey: KeyObject;
  publicJwk: PublicJwk;
}

export interface ReserveRequest {
  src: string;
  dst: string;
  bandwidthMbps: number;
  /** Epoch seconds; start omitted = now (on-demand). */
  window: { start?: number; end: number };
  migrationId?: string;
  /** docs/broker.md "Classes": absent = migration. */
  class?: 'migration' | 'background';
  /** Background only: below this the grant is 0 (suspended). */
  minMbps?: number;
  /** The caller's name for the reservation: a retry with it answers with the same reservation,
   *  and findByKey() finds it (docs/broker.md "Idempotency key"). */
  idempotencyKey?: string;
}

/** What GET /v1/reservations/:id answers (the fields a caller is likely to need). */
export interface ReservationView {
  id: string;
  domain: string;
  src: string;
  dst: string;
  bandwidthMbps: number;
  class?: 'migration' | 'background';
  /** What the calendar grants now (a migration: bandwidthMbps; background: what is left, 0 = suspended). */
  grantedMbps?: number;
  window: { start: number; end: number };
  path: { nodes: string[]; links: string[]; cost: number; alternative: boolean };
  reservationState: string;
  provisionState: string;
  lifecycleState: string;
  committed: boolean;
  booked: boolean;
  dataPlane: { active: boolean; version: number; details?: Record<string, unknown>; error?: { code: string; message: string } };
  downstream?: { domain: string; reservationId: string };
  migrationId?: string;
  idempotencyKey?: string;
  history?: { seq: number; machine: string; from: string; to: string; event: string; at: number }[];
  [k: string]: unknown;
}

export interface BrokerClientOptions {
  /** PEM of the CA that signed the broker's server certificate (https brokers). */
  ca?: string;
  timeoutMs?: number;
  /** Clock for proof iat (ms since the epoch). */
  now?: () => number;
  /** The broker's operator credential (DIR/operator.token), sent by get() and list(). */
  operatorToken?: string;
}

export class BrokerClient {
  readonly baseUrl: string;
  private readonly http: JsonClient;

  constructor(baseUrl: string, private readonly opts: BrokerClientOptions = {}) {
    this.http = new JsonClient({ baseUrl, timeoutMs: opts.timeoutMs ?? 60_000, ...(opts.ca ? { tls: { ca: opts.ca } } : {}) });
    this.baseUrl = this.http.baseUrl;
  }

  private call<T>(method: string, path: string, body: unknown, token: string | undefined, key: HolderKey | undefined, bearer?: string): Promise<T> {
    const headers: Record<string, string> = {};
    if (token !== undefined) headers.authorization = `DPoP ${token}`;
    else if (bearer !== undefined) headers.authorization = `Bearer ${bearer}`;
    if (key) headers.dpop = makeDpopProofSync(key, method, this.http.url(path), token, this.opts.now ? { now: this.opts.now() } : {});
    return this.http.request<T>(method, path, body, { headers });
  }

  reserve(body: ReserveRequest, token: string, holderKey: HolderKey): Promise<ReservationView> {
    return this.call('POST', '/v1/reservations', body, token, holderKey);
  }

  commit(id: string, token: string | undefined, holderKey: HolderKey): Promise<ReservationView> {
    return this.call('POST', `/v1/reservations/${encodeURIComponent(id)}/commit`, {}, token, holderKey);
  }

  abort(id: string, token: string | undefined, holderKey: HolderKey): Promise<ReservationView> {
    return this.call('POST', `/v1/reservations/${encodeURIComponent(id)}/abort`, {}, token, holderKey);
  }

  /** Provision needs the token that created the reservation (docs/broker.md "Token gate"). */
  provision(id: string, token: string, holderKey: HolderKey): Promise<ReservationView> {
    return this.call('POST', `/v1/reservations/${encodeURIComponent(id)}/provision`, {}, token, holderKey);
  }

  release(id: string, token: string | undefined, holderKey: HolderKey): Promise<ReservationView> {
    return this.call('POST', `/v1/reservations/${encodeURIComponent(id)}/release`, {}, token, holderKey);
  }

  terminate(id: string, token: string | undefined, holderKey: HolderKey): Promise<ReservationView> {
    return this.call('POST', `/v1/reservations/${encodeURIComponent(id)}/terminate`, {}, token, holderKey);
  }

  /** Read one reservation with the operator token (the argument, else the constructor option). */
  get(id: string, operatorToken = this.opts.operatorToken): Promise<ReservationView> {
    return this.call('GET', `/v1/reservations/${encodeURIComponent(id)}`, undefined, undefined, undefined, operatorToken);
  }

  /** Read one's own reservation as its holder: the token that created it and a proof for this GET. */
  getAsHolder(id: string, token: string, holderKey: HolderKey): Promise<ReservationView> {
    return this.call('GET', `/v1/reservations/${encodeURIComponent(id)}`, undefined, token, holderKey);
  }

  /** The holder's reservation made with this idempotency key (a proof, no token), or undefined. */
  async findByKey(key: string, holderKey: HolderKey): Promise<ReservationView | undefined> {
    try {
      return await this.call<ReservationView>('GET', `/v1/reservations/by-key/${encodeURIComponent(key)}`, undefined, undefined, holderKey);
    } catch (e) {
      if (e instanceof VmtcError && e.code === 'VMTC_RESERVATION_NOT_FOUND') return undefined;
      throw e;
    }
  }

  list(operatorToken = this.opts.operatorToken): Promise<{ reservations: ReservationView[] }> {
    return this.call('GET', '/v1/reservations', undefined, undefined, undefined, operatorToken);
  }

  /**
   * Reserve, commit and provision in one go (docs/design.md#live-migration, step 4); on any failure after the reserve,
   * the reservation is aborted or terminated so nothing is left held.
   */
  async setup(body: ReserveRequest, token: string, holderKey: HolderKey): Promise<ReservationView> {
    const r = await this.reserve(body, token, holderKey);
    try {
      await this.commit(r.id, token, holderKey);
      return await this.provision(r.id, token, holderKey);
    } catch (e) {
      await this.terminate(r.id, token, holderKey).catch(() => undefined);
      throw e;
    }
  }

  /** Release and terminate; an id that is already gone or terminated is not an error. */
  async teardown(id: string, token: string | undefined, holderKey: HolderKey): Promise<void> {
    await this.release(id, token, holderKey).catch(() => undefined);
    try {
      await this.terminate(id, token, holderKey);
    } catch (e) {
      if (e instanceof VmtcError && (e.code === 'VMTC_RESERVATION_NOT_FOUND' || e.code === 'VMTC_ILLEGAL_TRANSITION')) return;
      throw e;
    }
  }
}
