// Broker-to-broker calls over mutual TLS (docs/broker.md "Inter-domain"). The upstream broker presents
// its client certificate and the holder's original capability token; the peer verifies the
// token's signature, issuer, audience and scope itself but accepts the upstream broker's TLS
// identity in place of a DPoP proof, because the holder's private key stays with the controller
// and must never be handed to a broker (docs/broker.md "Inter-domain").
import { VmtcError, commonError } from '../common/errors.ts';
import { errorFromReply, requestJson } from '../common/http-client.ts';
import type { PeerConfig, TlsConfig } from './trust.ts';

export interface PeerReserveBody {
  src: string;
  dst: string;
  bandwidthMbps: number;
  window: { start: number; end: number };
  migrationId?: string;
  upstream: { domain: string; reservationId: string };
}

export class PeerLinks {
  private readonly byDomain = new Map<string, PeerConfig>();

  constructor(peers: PeerConfig[], private readonly tls: TlsConfig | undefined, private readonly timeoutMs = 30_000) {
    for (const p of peers) this.byDomain.set(p.domain, p);
  }

  has(domain: string): boolean {
    return this.byDomain.has(domain);
  }

  get configs(): PeerConfig[] {
    return [...this.byDomain.values()];
  }

  /** Call a peer; a refusal comes back as the peer's own coded VmtcError (with `domain` added). */
  async call<T = Record<string, unknown>>(domain: string, method: string, path: string, body?: unknown, token?: string): Promise<T> {
    const p = this.byDomain.get(domain);
    if (!p) throw commonError('VMTC_PEER_UNREACHABLE', { domain, reason: 'no such peer in the trust file' });
    const headers: Record<string, string> = {};
    if (token) headers.authorization = `DPoP ${token}`;
    const tls: { ca: string; cert?: string; key?: string } = { ca: p.ca };
    const cert = this.tls?.clientCert ?? this.tls?.cert;
    const key = this.tls?.clientKey ?? this.tls?.key;
    if (cert) tls.cert = cert;
    if (key) tls.key = key;
    const url = `${p.url}${path}`;
    const res = await requestJson(url, { method, headers, body: body ?? (method === 'POST' ? {} : undefined), tls, timeoutMs: this.timeoutMs });
    if (res.status >= 200 && res.status < 300) return res.body as T;
    const e = errorFromReply(url, res);
    // Keep the domain a refusal came from when it was relayed through a chain of peers.
    throw new VmtcError(e.code, e.status, e.message, { domain, ...(e.details ?? {}) });
  }
}
