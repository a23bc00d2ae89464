// The client verbs' side of the controller's REST API (README "API (controller)"): where the
// controller is, which credential to present, and one request function whose failures are
// always VmtcErrors — the API's own { code, message, details } as is, or a transport failure
// that names the URL (never a stack trace for a controller that is not there).
import { VmtcError, commonError } from '../../common/errors.ts';
import { JsonClient, errorFromReply, type JsonResponse } from '../../common/http-client.ts';
import type { ClientConfig } from './config.ts';

export { UsageError } from './usage.ts';
export { DEFAULT_CONTROLLER, resolveClientConfig, type ClientConfig } from './config.ts';

/** Per request; a controller that accepted the connection but hangs is a failure, not a wait. */
export const REQUEST_TIMEOUT_MS = 30_000;

/** The request headers every call carries: the bearer credential, when there is one. */
export function authHeaders(config: Pick<ClientConfig, 'token'>): Record<string, string> {
  return config.token ? { authorization: `Bearer ${config.token}` } : {};
}

export class ApiClient {
  private readonly http: JsonClient;

  constructor(readonly config: ClientConfig, private readonly timeoutMs = REQUEST_TIMEOUT_MS) {
    this.http = new JsonClient({
      baseUrl: config.baseUrl,
      timeoutMs,
      headers: () => authHeaders(config),
      ...(config.ca ? { tls: { ca: config.ca } } : {}),
    });
  }

  get<T = any>(path: string): Promise<T> {
    return this.request<T>('GET', path);
  }

  post<T = any>(path: string, body?: unknown): Promise<T> {
    return this.request<T>('POST', path, body);
  }

  patch<T = any>(path: string, body: unknown): Promise<T> {
    return this.request<T>('PATCH', path, body);
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
  transportError(e: unknown): unknown {
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
