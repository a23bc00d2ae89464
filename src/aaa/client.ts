// What the controller (and scripts) call to talk to an AAA. Every request proves possession of the
// requester's key with a DPoP proof (RFC 9449), so no shared secret exists anywhere.
import { VmtcError, commonError } from '../common/errors.ts';
import { makeDpopProofSync, type RequesterKey } from '../common/dpop.ts';
import type { LightpathRequest } from './policy.ts';
import type { AuthorizationResult } from './service.ts';
import type { AccountingEvent } from './accounting.ts';

export type { LightpathRequest } from './policy.ts';
export type { AuthorizationResult } from './service.ts';

export interface ClientOptions {
  /** Per-request timeout, ms (default 15000: the AAA may wait for its peers). */
  timeoutMs?: number;
  /** Clock for the proofs' iat, ms since the epoch (default Date.now; tests inject theirs). */
  now?: () => number;
}

type Key = Pick<RequesterKey, 'privateKey' | 'publicJwk'>;

async function call<T>(method: 'GET' | 'POST', url: string, key: Key, body: unknown, opts: ClientOptions): Promise<T> {
  let res: Response;
  let text: string;
  try {
    res = await fetch(url, {
      method,
      headers: { ...(body !== undefined ? { 'content-type': 'application/json' } : {}), dpop: makeDpopProofSync(key, method, url, undefined, { now: (opts.now ?? Date.now)() }) },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
      signal: AbortSignal.timeout(opts.timeoutMs ?? 15_000),
    });
    text = await res.text();
  } catch (e) {
    throw commonError('VMTC_PEER_UNREACHABLE', { url, reason: (e as Error).message }, { cause: e });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw commonError('VMTC_PEER_BAD_REPLY', { url, status: res.status, body: text.slice(0, 200) });
  }
  if (!res.ok) throw VmtcError.fromBody(parsed && typeof parsed === 'object' ? { ...(parsed as object), status: res.status } : parsed, res.status);
  return parsed as T;
}

/**
 * Ask the AAA at `aaaUrl` for a capability token for one lightpath (DESIGN.md step 3). Throws a
 * VmtcError carrying the AAA's code on refusal (VMTC_AAA_POLICY_DENIED, VMTC_AAA_PEER_REFUSED, …).
 */
export function requestAuthorization(aaaUrl: string, requesterKey: Key, body: LightpathRequest, opts: ClientOptions = {}): Promise<AuthorizationResult> {
  return call<AuthorizationResult>('POST', `${aaaUrl.replace(/\/+$/, '')}/v1/authorizations`, requesterKey, body, opts);
}

/** Report that a granted lightpath is in use or was released (DESIGN.md step 7: "accounting is closed"). */
export function reportAccounting(
  aaaUrl: string,
  key: Key,
  event: { kind: 'use' | 'release'; jti: string; at?: number; bytes?: number; mbitSeconds?: number; details?: Record<string, unknown> },
  opts: ClientOptions = {},
): Promise<AccountingEvent> {
  return call<AccountingEvent>('POST', `${aaaUrl.replace(/\/+$/, '')}/v1/accounting/events`, key, event, opts);
}

/** Read the accounting record (as a requester or reporter). */
export function queryAccounting(aaaUrl: string, key: Key, q: { migrationId?: string; jti?: string; kind?: string; since?: string; after?: number; limit?: number } = {}, opts: ClientOptions = {}): Promise<{ events: AccountingEvent[]; next?: number }> {
  const qs = new URLSearchParams(Object.entries(q).filter(([, v]) => v !== undefined).map(([k, v]) => [k, String(v)]));
  const s = qs.toString();
  return call('GET', `${aaaUrl.replace(/\/+$/, '')}/v1/accounting${s ? '?' + s : ''}`, key, undefined, opts);
}
