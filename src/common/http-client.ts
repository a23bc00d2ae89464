// The one JSON-over-HTTP(S) client every vmtc caller uses: the controller toward the AAA and the
// broker, brokers toward their peers, AAAs toward theirs, and the CLI toward the controller.
// On node:http/https rather than the global fetch because broker peering is mutual TLS, which
// needs a per-request CA, client certificate and key.
//
// Failures are always VmtcErrors:
//   - the peer cannot be reached (refused, reset, DNS, TLS)  VMTC_PEER_UNREACHABLE { url, reason, errno }
//   - no complete answer within the timeout                  VMTC_TIMEOUT { url, timeoutMs }
//   - a non-2xx answer with a { code, message, details } body  that error, as the peer coded it
//   - anything else (not JSON, or an error without a code)   VMTC_PEER_BAD_REPLY { url, status, body }
import http from 'node:http';
import https from 'node:https';
import { VmtcError, commonError } from './errors.ts';

export interface TlsClientOptions {
  /** PEM of the CA(s) that may sign the server's certificate. */
  ca?: string;
  /** Client certificate and key (PEM) for mutual TLS. */
  cert?: string;
  key?: string;
}

export interface RequestOptions {
  method: string;
  headers?: Record<string, string>;
  /** Sent as JSON; undefined sends no body. */
  body?: unknown;
  tls?: TlsClientOptions;
  /** For the whole exchange, connection to last byte. Default 30 000 ms. */
  timeoutMs?: number;
}

export interface JsonResponse {
  status: number;
  /** The parsed JSON body; the raw text when it is not JSON; undefined when empty. */
  body: unknown;
  /** The raw body text. */
  text: string;
  /** Whether `text` parsed as JSON (an empty body counts as JSON: undefined). */
  json: boolean;
}

export const HTTP_CLIENT_DEFAULTS = { timeoutMs: 30_000 } as const;

/** One request; resolves with any HTTP answer, rejects only when none arrived (see top). */
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
      // A fresh connection per request: calls are rare, and no pooled socket outlives its caller.
      agent: false,
    };
    if (isHttps && opts.tls) {
      if (opts.tls.ca) reqOpts.ca = opts.tls.ca;
      if (opts.tls.cert) reqOpts.cert = opts.tls.cert;
      if (opts.tls.key) reqOpts.key = opts.tls.key;
    }
    const timeoutMs = opts.timeoutMs ?? HTTP_CLIENT_DEFAULTS.timeoutMs;
    let settled = false;
    let timer: NodeJS.Timeout | undefined;
    const fail = (e: VmtcError) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      reject(e);
    };
    const unreachable = (e: NodeJS.ErrnoException) =>
      commonError('VMTC_PEER_UNREACHABLE', { url, reason: e.message, errno: e.code ?? null }, { cause: e });
    const req = (isHttps ? https : http).request(reqOpts, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('error', (e) => fail(unreachable(e)));
      res.on('end', () => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        const text = Buffer.concat(chunks).toString('utf8');
        let body: unknown = text;
        let json = true;
        try {
          body = text ? JSON.parse(text) : undefined;
        } catch {
          json = false; // keep the text: the caller reports a bad reply
        }
        resolve({ status: res.statusCode ?? 0, body, text, json });
      });
    });
    // A deadline for the whole exchange: a peer that accepted the connection but never answers
    // (or trickles) is a failure, not a wait.
    timer = setTimeout(() => {
      fail(commonError('VMTC_TIMEOUT', { url, timeoutMs }));
      req.destroy();
    }, timeoutMs);
    req.on('error', (e) => fail(unreachable(e)));
    if (payload) req.write(payload);
    req.end();
  });
}

/** The coded error a non-2xx answer stands for: the peer's own when its body is one. */
export function errorFromReply(url: string, res: JsonResponse): VmtcError {
  const b = res.body;
  if (res.json && b && typeof b === 'object' && typeof (b as { code?: unknown }).code === 'string') {
    return VmtcError.fromBody({ ...(b as object), status: res.status }, res.status);
  }
  return commonError('VMTC_PEER_BAD_REPLY', { url, status: res.status, body: res.text.slice(0, 200) }, {
    message: `${url} answered HTTP ${res.status} without a coded error body`,
  });
}

export interface JsonClientOptions {
  /** Base URL; a trailing slash is dropped. Paths given to request() are appended. */
  baseUrl: string;
  timeoutMs?: number;
  tls?: TlsClientOptions;
  /** Headers added to every request, computed per request: a DPoP proof binds method and URL. */
  headers?: (method: string, url: string) => Record<string, string>;
}

/** Per-request additions to JsonClientOptions. */
export interface CallOptions {
  headers?: Record<string, string>;
  timeoutMs?: number;
}

/** A client for one peer's REST API. */
export class JsonClient {
  readonly baseUrl: string;

  constructor(private readonly opts: JsonClientOptions) {
    this.baseUrl = opts.baseUrl.replace(/\/+$/, '');
  }

  /** The full URL of `path` at this peer. */
  url(path: string): string {
    return this.baseUrl + path;
  }

  /** Send one request and return whatever HTTP answer came (only transport failures throw). */
  raw(method: string, path: string, body?: unknown, o: CallOptions = {}): Promise<JsonResponse> {
    const url = this.url(path);
    const headers = { ...(this.opts.headers?.(method, url) ?? {}), ...(o.headers ?? {}) };
    return requestJson(url, {
      method,
      headers,
      body,
      timeoutMs: o.timeoutMs ?? this.opts.timeoutMs ?? HTTP_CLIENT_DEFAULTS.timeoutMs,
      ...(this.opts.tls ? { tls: this.opts.tls } : {}),
    });
  }

  /** Resolve with the parsed body of a 2xx answer; anything else throws a coded VmtcError. */
  async request<T = unknown>(method: string, path: string, body?: unknown, o: CallOptions = {}): Promise<T> {
    const res = await this.raw(method, path, body, o);
    const url = this.url(path);
    if (res.status < 200 || res.status >= 300) throw errorFromReply(url, res);
    if (!res.json) {
      throw commonError('VMTC_PEER_BAD_REPLY', { url, status: res.status, body: res.text.slice(0, 200) }, {
        message: `${url} answered HTTP ${res.status} with a body that is not JSON`,
      });
    }
    return res.body as T;
  }

  get<T = unknown>(path: string, o?: CallOptions): Promise<T> {
    return this.request<T>('GET', path, undefined, o);
  }

  post<T = unknown>(path: string, body: unknown = {}, o?: CallOptions): Promise<T> {
    return this.request<T>('POST', path, body, o);
  }
}
