// The trust file (docs/broker.md "Trust file"): which AAA issuers this broker accepts and their
// Ed25519 keys (JWKS inline or fetched from a URL), which peer brokers it talks to (URL, the CA
// that signs their certificates, the identity their certificate must carry), and this broker's
// own TLS credentials for mutual TLS with those peers.
import { createPublicKey, X509Certificate, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { dirname, isAbsolute, join } from 'node:path';
import { brokerError } from './errors.ts';
import { requestJson } from '../common/http-client.ts';

export interface IssuerConfig {
  /** The token's `iss`, e.g. "aaa:a". */
  iss: string;
  /** Inline JWKS: { keys: [{ kty: 'OKP', crv: 'Ed25519', x, kid }] }. */
  jwks?: { keys: Record<string, unknown>[] };
  /** Or a URL serving the JWKS (fetched at start and again, at most every 30 s, on an unknown kid). */
  jwksUrl?: string;
  /** PEM of the CA for an https jwksUrl with a private CA. */
  ca?: string;
}

export interface PeerConfig {
  domain: string;
  /** Base URL of the peer broker, https://HOST:PORT. */
  url: string;
  /** PEM of the CA that signs the peer's server and client certificates. */
  ca: string;
  /** Subject CN the peer's client certificate must carry (default "broker:<domain>"). */
  cn?: string;
  /** Optional pin: sha256 fingerprint of the peer's client certificate ("AB:CD:..."). */
  fingerprint256?: string;
}

export interface TlsConfig {
  /** This broker's server certificate and key (PEM). */
  cert: string;
  key: string;
  /** Certificate and key presented as a client to peers (default: the server ones). */
  clientCert?: string;
  clientKey?: string;
}

export interface TrustConfig {
  issuers: IssuerConfig[];
  peers?: PeerConfig[];
  tls?: TlsConfig;
}

function bad(field: string, reason: string): never {
  throw brokerError('VMTC_TRUST_INVALID', { field, reason }, { message: `trust: ${field}: ${reason}` });
}

/** A PEM given inline or as a file path relative to the trust file. */
function pem(value: unknown, field: string, baseDir: string): string {
  if (typeof value !== 'string' || !value) bad(field, 'must be a PEM string or a file path');
  if (value.includes('-----BEGIN')) return value;
  try {
    return readFileSync(isAbsolute(value) ? value : join(baseDir, value), 'utf8');
  } catch (e) {
    bad(field, `cannot read ${value}: ${(e as Error).message}`);
  }
}

export function parseTrust(doc: unknown, baseDir = process.cwd()): TrustConfig {
  if (!doc || typeof doc !== 'object' || Array.isArray(doc)) bad('$', 'must be a JSON object');
  const d = doc as Record<string, unknown>;
  for (const k of Object.keys(d)) if (!['issuers', 'peers', 'tls', 'description'].includes(k)) bad(k, 'unknown field');
  if (!Array.isArray(d.issuers) || d.issuers.length === 0) bad('issuers', 'must be a non-empty array');
  const seen = new Set<string>();
  const issuers = (d.issuers as unknown[]).map((x, i): IssuerConfig => {
    const f = `issuers[${i}]`;
    const o = x as Record<string, unknown>;
    if (!o || typeof o !== 'object') bad(f, 'must be an object');
    for (const k of Object.keys(o)) if (!['iss', 'jwks', 'jwksUrl', 'ca'].includes(k)) bad(`${f}.${k}`, 'unknown field');
    if (typeof o.iss !== 'string' || !/^aaa:.+/.test(o.iss)) bad(`${f}.iss`, 'must be "aaa:<domain>"');
    if (seen.has(o.iss)) bad(`${f}.iss`, 'duplicate issuer');
    seen.add(o.iss);
    if ((o.jwks === undefined) === (o.jwksUrl === undefined)) bad(f, 'give exactly one of jwks and jwksUrl');
    const out: IssuerConfig = { iss: o.iss };
    if (o.jwks !== undefined) {
      const j = o.jwks as { keys?: unknown };
      if (!j || typeof j !== 'object' || !Array.isArray(j.keys)) bad(`${f}.jwks.keys`, 'must be an array of JWKs');
      (j.keys as unknown[]).forEach((k, n) => importKey(k, `${f}.jwks.keys[${n}]`));
      out.jwks = j as { keys: Record<string, unknown>[] };
    }
    if (o.jwksUrl !== undefined) {
      if (typeof o.jwksUrl !== 'string' || !/^https?:\/\//.test(o.jwksUrl)) bad(`${f}.jwksUrl`, 'must be an http(s) URL');
      out.jwksUrl = o.jwksUrl;
    }
    if (o.ca !== undefined) out.ca = pem(o.ca, `${f}.ca`, baseDir);
    return out;
  });
  const peers: PeerConfig[] = [];
  if (d.peers !== undefined) {
    if (!Array.isArray(d.peers)) bad('peers', 'must be an array');
    const doms = new Set<string>();
    (d.peers as unknown[]).forEach((x, i) => {
      const f = `peers[${i}]`;
      const o = x as Record<string, unknown>;
      if (!o || typeof o !== 'object') bad(f, 'must be an object');
      for (const k of Object.keys(o)) if (!['domain', 'url', 'ca', 'cn', 'fingerprint256'].includes(k)) bad(`${f}.${k}`, 'unknown field');
      if (typeof o.domain !== 'string' || !o.domain) bad(`${f}.domain`, 'must be a non-empty string');
      if (doms.has(o.domain)) bad(`${f}.domain`, 'duplicate peer domain');
      doms.add(o.domain);
      if (typeof o.url !== 'string' || !/^https:\/\//.test(o.url)) bad(`${f}.url`, 'must be an https:// URL (peers talk mutual TLS)');
      const p: PeerConfig = { domain: o.domain, url: o.url.replace(/\/+$/, ''), ca: pem(o.ca, `${f}.ca`, baseDir) };
      if (o.cn !== undefined) {
        if (typeof o.cn !== 'string' || !o.cn) bad(`${f}.cn`, 'must be a non-empty string');
        p.cn = o.cn;
      }
      if (o.fingerprint256 !== undefined) {
        if (typeof o.fingerprint256 !== 'string' || !/^([0-9A-F]{2}:){31}[0-9A-F]{2}$/i.test(o.fingerprint256)) bad(`${f}.fingerprint256`, 'must be a sha256 fingerprint AB:CD:...');
        p.fingerprint256 = o.fingerprint256.toUpperCase();
      }
      peers.push(p);
    });
  }
  const out: TrustConfig = { issuers, peers };
  if (d.tls !== undefined) {
    const t = d.tls as Record<string, unknown>;
    if (!t || typeof t !== 'object') bad('tls', 'must be an object');
    for (const k of Object.keys(t)) if (!['cert', 'key', 'clientCert', 'clientKey'].includes(k)) bad(`tls.${k}`, 'unknown field');
    out.tls = { cert: pem(t.cert, 'tls.cert', baseDir), key: pem(t.key, 'tls.key', baseDir) };
    if (t.clientCert !== undefined) out.tls.clientCert = pem(t.clientCert, 'tls.clientCert', baseDir);
    if (t.clientKey !== undefined) out.tls.clientKey = pem(t.clientKey, 'tls.clientKey', baseDir);
    try {
      new X509Certificate(out.tls.cert);
    } catch (e) {
      bad('tls.cert', `not a certificate: ${(e as Error).message}`);
    }
  }
  if (peers.length > 0 && !out.tls) bad('tls', 'is required when peers are configured (peers talk mutual TLS)');
  return out;
}

export function loadTrust(file: string): TrustConfig {
  let doc: unknown;
  try {
    doc = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw brokerError('VMTC_TRUST_INVALID', { field: 'trust', file, reason: (e as Error).message }, { message: `cannot read trust file ${file}`, cause: e });
  }
  return parseTrust(doc, dirname(file));
}

function importKey(jwk: unknown, field: string): { kid: string; key: KeyObject } {
  const j = jwk as Record<string, unknown>;
  if (!j || typeof j !== 'object' || j.kty !== 'OKP' || j.crv !== 'Ed25519' || typeof j.x !== 'string') bad(field, 'must be an OKP Ed25519 public JWK');
  if (typeof j.kid !== 'string' || !j.kid) bad(`${field}.kid`, 'must be a non-empty string');
  if ('d' in j) bad(`${field}.d`, 'a private key has no place in a trust file');
  try {
    return { kid: j.kid, key: createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: j.x }, format: 'jwk' }) };
  } catch (e) {
    bad(field, `cannot import: ${(e as Error).message}`);
  }
}

/** Issuer keys at run time: inline ones, and remote JWKS refreshed on an unknown kid. */
export class IssuerKeys {
  private readonly issuers = new Map<string, { cfg: IssuerConfig; keys: Map<string, KeyObject>; fetchedAt: number }>();

  constructor(cfgs: IssuerConfig[], private readonly now: () => number = Date.now) {
    for (const cfg of cfgs) {
      const keys = new Map<string, KeyObject>();
      for (const [n, k] of (cfg.jwks?.keys ?? []).entries()) {
        const { kid, key } = importKey(k, `issuers.${cfg.iss}.jwks.keys[${n}]`);
        keys.set(kid, key);
      }
      this.issuers.set(cfg.iss, { cfg, keys, fetchedAt: -Infinity });
    }
  }

  trusts(iss: string): boolean {
    return this.issuers.has(iss);
  }

  /** The key `kid` of issuer `iss`, or undefined. */
  async key(iss: string, kid: string): Promise<KeyObject | undefined> {
    const entry = this.issuers.get(iss);
    if (!entry) return undefined;
    const k = entry.keys.get(kid);
    if (k || !entry.cfg.jwksUrl) return k;
    // An unknown kid may be a freshly rotated key: refetch, but not more than every 30 s.
    if (this.now() - entry.fetchedAt < 30_000) return undefined;
    entry.fetchedAt = this.now();
    try {
      const res = await requestJson(entry.cfg.jwksUrl, { method: 'GET', timeoutMs: 5000, ...(entry.cfg.ca ? { tls: { ca: entry.cfg.ca } } : {}) });
      const keys = (res.body as { keys?: unknown[] })?.keys;
      if (res.status === 200 && Array.isArray(keys)) {
        for (const [n, j] of keys.entries()) {
          try {
            const { kid: id, key } = importKey(j, `jwks[${n}]`);
            entry.keys.set(id, key);
          } catch {
            /* a key we cannot use is skipped, not fatal */
          }
        }
      }
    } catch {
      /* unreachable JWKS: the token is refused as signed by an unknown key */
    }
    return entry.keys.get(kid);
  }
}
