// A small JSON-over-HTTP(S) client on node:http/https, used by the BrokerClient and by brokers
// talking to their peers. node:https (not fetch) because mutual TLS needs a per-request CA,
// client certificate and key, which the global fetch cannot take without undici's Agent.
import http from 'node:http';
import https from 'node:https';
import { commonError } from '../common/errors.ts';

export interface TlsClientOptions {
  ca?: string;
  cert?: string;
  key?: string;
}

export interface RequestOptions {
  method: string;
  headers?: Record<string, string>;
  body?: unknown;
  tls?: TlsClientOptions;
  timeoutMs?: number;
}

export interface JsonResponse {
  status: number;
  body: unknown;
}

export function requestJson(url: string, opts: RequestOptions): Promise<JsonResponse> {
  return new Promise((resolve, reject) => {
    let u: URL;
    try {
      u = new URL(url);
    } catch {
      reject(commonError('VMTC_BAD_REQUEST', { url, reason: 'not a URL' }));
      return;
    }
    const payload = opts.body === undefined ? undefined : Buffer.from(JSON.stringify(opts.body));
    const headers: Record<string, string> = { accept: 'application/json', ...(opts.headers ?? {}) };
    if (payload) {
      headers['content-type'] = 'application/json';
      headers['content-length'] = String(payload.length);
    }
    const isHttps = u.protocol === 'https:';
    const reqOpts: https.RequestOptions = {
      method: opts.method,
      hostname: u.hostname.replace(/^\[|\]$/g, ''),
      port: u.port || (isHttps ? 443 : 80),
      path: `${u.pathname}${u.search}`,
      headers,
      agent: false,
    };
    if (isHttps && opts.tls) {
      if (opts.tls.ca) reqOpts.ca = opts.tls.ca;
      if (opts.tls.cert) reqOpts.cert = opts.tls.cert;
      if (opts.tls.key) reqOpts.key = opts.tls.key;
    }
    const req = (isHttps ? https : http).request(reqOpts, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('error', (e) => reject(commonError('VMTC_PEER_UNREACHABLE', { url, reason: e.message }, { cause: e })));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let body: unknown = text;
        try {
          body = text ? JSON.parse(text) : undefined;
        } catch {
          /* keep the text: the caller reports a bad reply */
        }
        resolve({ status: res.statusCode ?? 0, body });
      });
    });
    const timeoutMs = opts.timeoutMs ?? 30_000;
    req.setTimeout(timeoutMs, () => req.destroy(commonError('VMTC_TIMEOUT', { url, timeoutMs })));
    req.on('error', (e) => {
      reject((e as { code?: string }).code === 'VMTC_TIMEOUT' ? e : commonError('VMTC_PEER_UNREACHABLE', { url, reason: e.message }, { cause: e }));
    });
    if (payload) req.write(payload);
    req.end();
  });
}
