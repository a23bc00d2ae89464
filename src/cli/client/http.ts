// The client verbs' side of the controller's REST API (README "API (controller)"): where the
// controller is, which credential to present, and one request function whose failures are
// always VmtcErrors — the API's own { code, message, details } as is, or a transport failure
// that names the URL (never a stack trace for a controller that is not there).
import { readFileSync } from 'node:fs';
import { VmtcError, commonError } from '../../common/errors.ts';
import { JsonClient, errorFromReply, type JsonResponse } from '../../common/http-client.ts';

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
  private readonly http: JsonClient;

  constructor(readonly config: ClientConfig, private readonly timeoutMs = REQUEST_TIMEOUT_MS) {
    this.http = new JsonClient({
      baseUrl: config.baseUrl,
      timeoutMs,
      headers: (): Record<string, string> => (config.token ? { authorization: `Bearer ${config.token}` } : {}),
    });
  }

  get<T = any>(path: string): Promise<T> {
    return this.request<T>('GET', path);
  }

  post<T = any>(path: string, body?: unknown): Promise<T> {
    return this.request<T>('POST', path, body);
  }

  /** One request; resolves with the parsed JSON body of a 2xx answer, else throws a VmtcError. */
  async request<T = any>(method: string, path: string, body?: unknown): Promise<T> {
    const base = this.config.baseUrl;
    const url = this.http.url(path);
    let res: JsonResponse;
    try {
      res = await this.http.raw(method, path, body);
    } catch (e) {
      throw this.transportError(e);
    }
    if (!res.json) {
      throw commonError('VMTC_PEER_BAD_REPLY', { url, status: res.status, body: res.text.slice(0, 200) }, {
        message: `the controller at ${base} answered ${method} ${path} with HTTP ${res.status} and a body that is not JSON (is it a vmtc controller?)`,
      });
    }
    if (res.status >= 200 && res.status < 300) return res.body as T;
    const b = res.body as { code?: unknown } | undefined;
    if (b && typeof b === 'object' && typeof b.code === 'string') throw errorFromReply(url, res);
    throw commonError('VMTC_PEER_BAD_REPLY', { url, status: res.status }, { message: `the controller at ${base} answered ${method} ${path} with HTTP ${res.status} and no error code` });
  }

  /** The common client's transport failures, reworded for a person at a terminal: which
   *  controller, and what to check. */
  private transportError(e: unknown): unknown {
    if (!(e instanceof VmtcError)) return e;
    const base = this.config.baseUrl;
    if (e.code === 'VMTC_TIMEOUT') {
      return commonError('VMTC_TIMEOUT', { url: base, timeoutMs: this.timeoutMs }, { message: `the controller at ${base} did not answer within ${this.timeoutMs / 1000} s`, cause: e });
    }
    if (e.code === 'VMTC_PEER_UNREACHABLE') {
      const why = (e.details?.errno as string | null | undefined) ?? (e.details?.reason as string | undefined) ?? e.message;
      return commonError('VMTC_PEER_UNREACHABLE', { url: base, reason: why }, {
        message: `cannot reach the controller at ${base} (${why}); is it running? (set --controller or VMTC_CONTROLLER)`,
        cause: e,
      });
    }
    return e;
  }
}
