// What the controller (and scripts) call to talk to an AAA. Every request proves possession of the
// requester's key with a DPoP proof (RFC 9449), so no shared secret exists anywhere.
import { makeDpopProofSync, type RequesterKey } from '../common/dpop.ts';
import { JsonClient } from '../common/http-client.ts';
import type { LightpathRequest } from './policy.ts';
import type { AuthorizationResult } from './service.ts';
import type { AccountingEvent } from './accounting.ts';
import type { PolicyCheckRequest, PolicyDecision } from '../common/lightpath.ts';

export type { LightpathRequest } from './policy.ts';
export type { AuthorizationResult } from './service.ts';

export interface ClientOptions {
  /** Per-request timeout, ms (default 15000: the AAA may wait for its peers). */
  timeoutMs?: number;
  /** Clock for the proofs' iat, ms since the epoch (default Date.now; tests inject theirs). */
  now?: () => number;
}

type Key = Pick<RequesterKey, 'privateKey' | 'publicJwk'>;

function call<T>(method: 'GET' | 'POST', aaaUrl: string, path: string, key: Key, body: unknown, opts: ClientOptions): Promise<T> {
  const client = new JsonClient({
    baseUrl: aaaUrl,
    timeoutMs: opts.timeoutMs ?? 15_000,
    // Every request proves possession of the key, bound to its method and URL.
    headers: (m, url) => ({ dpop: makeDpopProofSync(key, m, url, undefined, { now: (opts.now ?? Date.now)() }) }),
  });
  return client.request<T>(method, path, body);
}

/**
 * Ask the AAA at `aaaUrl` for a capability token for one lightpath (docs/design.md#live-migration, step 3). Throws a
 * VmtcError carrying the AAA's code on refusal (VMTC_AAA_POLICY_DENIED, VMTC_AAA_PEER_REFUSED, …).
 */
export function requestAuthorization(aaaUrl: string, requesterKey: Key, body: LightpathRequest, opts: ClientOptions = {}): Promise<AuthorizationResult> {
  return call<AuthorizationResult>('POST', aaaUrl, '/v1/authorizations', requesterKey, body, opts);
}

/**
 * Ask the AAA whether it would grant this lightpath (docs/aaa.md "Policy check"): its decision,
 * `{ allowed, rule, domains, consentFrom }` or `{ allowed: false, refusal }`; nothing is recorded.
 * Throws only when the AAA could not answer, or refuses the caller itself (an unknown key).
 */
export function checkPolicy(aaaUrl: string, requesterKey: Key, body: PolicyCheckRequest, opts: ClientOptions = {}): Promise<PolicyDecision> {
  return call<PolicyDecision>('POST', aaaUrl, '/v1/policy/check', requesterKey, body, opts);
}

/**
 * Report that a granted lightpath is in use or was released (docs/design.md#live-migration, step 7:
 * "accounting closed"). A requester may report only on its own grants; a reporter on any.
 */
export function reportAccounting(
  aaaUrl: string,
  key: Key,
  event: { kind: 'use' | 'release'; jti: string; at?: number; bytes?: number; mbitSeconds?: number; details?: Record<string, unknown> },
  opts: ClientOptions = {},
): Promise<AccountingEvent> {
  return call<AccountingEvent>('POST', aaaUrl, '/v1/accounting/events', key, event, opts);
}

/** Read the accounting record: as a requester or reporter, only its own records (docs/aaa.md#accounting). */
export function queryAccounting(aaaUrl: string, key: Key, q: { migrationId?: string; jti?: string; kind?: string; since?: string; after?: number; limit?: number } = {}, opts: ClientOptions = {}): Promise<{ events: AccountingEvent[]; next?: number }> {
  const qs = new URLSearchParams(Object.entries(q).filter(([, v]) => v !== undefined).map(([k, v]) => [k, String(v)]));
  const s = qs.toString();
  return call('GET', aaaUrl, `/v1/accounting${s ? '?' + s : ''}`, key, undefined, opts);
}
