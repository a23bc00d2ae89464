// The client verbs' side of the controller's REST API (README "API (controller)"): where the
// controller is, which credential to present, and one request function whose failures are
// always VmtcErrors — the API's own { code, message, details } as is, or a transport failure
// that names the URL (never a stack trace for a controller that is not there).
import { readFileSync } from 'node:fs';
import { VmtcError, commonError } from '../../common/errors.ts';

export const DEFAULT_CONTROLLER = 'http://127.0.0.1:7700';
/** Per request; a controller that accepted the connection but hangs is a failure, not a wait. */
export const REQUEST_TIMEOUT_MS = 30_000;

/** A mistake in the command line or its environment: exit code 2 (usage), not an API error. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

export interface ClientConfig {
  /** Base URL without a trailing slash. */
  baseUrl: string;
  /** Bearer credential; undefined sends none (the API then answers VMTC_UNAUTHENTICATED). */
  token: string | undefined;
}

/**
 * Where and as whom: `--controller` > $VMTC_CONTROLLER > http://127.0.0.1:7700;
 * `--token-file` > $VMTC_TOKEN_FILE > $VMTC_TOKEN (the token itself).
 */
export function resolveClientConfig(opts: { controller?: string; tokenFile?: string }, env: NodeJS.ProcessEnv = process.env): ClientConfig {
  const raw = opts.controller ?? (env.VMTC_CONTROLLER || undefined) ?? DEFAULT_CONTROLLER;
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new UsageError(`--controller: '${raw}' is not a URL (e.g. http://127.0.0.1:7700)`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new UsageError(`--controller: '${raw}' must be an http:// or https:// URL`);
  const baseUrl = url.toString().replace(/\/+$/, '');
  const file = opts.tokenFile ?? (env.VMTC_TOKEN_FILE || undefined);
  if (file !== undefined) {
    let token: string;
    try {
      token = readFileSync(file, 'utf8').trim();
    } catch (e) {
      throw new UsageError(`--token-file: cannot read '${file}': ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    if (!token) throw new UsageError(`--token-file: '${file}' is empty`);
    return { baseUrl, token };
  }
  const token = env.VMTC_TOKEN?.trim() || undefined;
  return { baseUrl, token };
}

export class ApiClient {
  constructor(readonly config: ClientConfig, private readonly timeoutMs = REQUEST_TIMEOUT_MS) {}

  get<T = any>(path: string): Promise<T> {
    return this.request<T>('GET', path);
  }

  post<T = any>(path: string, body?: unknown): Promise<T> {
    return this.request<T>('POST', path, body);
  }

  /** One request; resolves with the parsed JSON body of a 2xx answer, else throws a VmtcError. */
  async request<T = any>(method: string, path: string, body?: unknown): Promise<T> {
    const url = this.config.baseUrl + path;
    const headers: Record<string, string> = { accept: 'application/json' };
    if (this.config.token) headers.authorization = `Bearer ${this.config.token}`;
    if (body !== undefined) headers['content-type'] = 'application/json';
    let res: Response;
    try {
      res = await fetch(url, {
        method, headers, signal: AbortSignal.timeout(this.timeoutMs),
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
      });
    } catch (e) {
      throw transportError(this.config.baseUrl, e, this.timeoutMs);
    }
    let text: string;
    try {
      text = await res.text();
    } catch (e) {
      throw transportError(this.config.baseUrl, e, this.timeoutMs);
    }
    let parsed: unknown;
    try {
      parsed = text ? JSON.parse(text) : undefined;
    } catch {
      throw commonError('VMTC_PEER_BAD_REPLY', { url, status: res.status, body: text.slice(0, 200) }, {
        message: `the controller at ${this.config.baseUrl} answered ${method} ${path} with HTTP ${res.status} and a body that is not JSON (is it a vmtc controller?)`,
      });
    }
    if (res.ok) return parsed as T;
    if (parsed && typeof parsed === 'object' && typeof (parsed as { code?: unknown }).code === 'string') {
      throw VmtcError.fromBody({ ...(parsed as object), status: res.status }, res.status);
    }
    throw commonError('VMTC_PEER_BAD_REPLY', { url, status: res.status }, { message: `the controller at ${this.config.baseUrl} answered ${method} ${path} with HTTP ${res.status} and no error code` });
  }
}

/** fetch's "fetch failed" names nothing; dig out the socket error so the message says why. */
function transportError(baseUrl: string, e: unknown, timeoutMs: number): VmtcError {
  const err = e as Error & { cause?: { code?: string; message?: string; errors?: { code?: string }[] } };
  if (err?.name === 'TimeoutError' || err?.name === 'AbortError') {
    return commonError('VMTC_TIMEOUT', { url: baseUrl, timeoutMs }, { message: `the controller at ${baseUrl} did not answer within ${timeoutMs / 1000} s` });
  }
  const cause = err?.cause;
  const why = cause?.code ?? cause?.errors?.[0]?.code ?? cause?.message ?? err?.message ?? String(e);
  return commonError('VMTC_PEER_UNREACHABLE', { url: baseUrl, reason: why }, {
    message: `cannot reach the controller at ${baseUrl} (${why}); is it running? (set --controller or VMTC_CONTROLLER)`,
  });
}
