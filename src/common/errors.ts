// Errors that cross a process boundary (REST, WebSocket) travel as { code, message, details }.
// Every service keeps one catalogue of its codes; a code never changes meaning and
// callers match on the code, never on the message.

export interface ErrorSpec {
  /** HTTP status used when the error crosses REST. */
  status: number;
  /** One sentence a person can act on; `details` carries the specifics. */
  message: string;
}

export type Catalogue = Record<string, ErrorSpec>;

export interface ErrorBody {
  code: string;
  message: string;
  details?: Record<string, unknown>;
}

export class VmtcError extends Error {
  readonly code: string;
  readonly status: number;
  readonly details?: Record<string, unknown>;

  constructor(code: string, status: number, message: string, details?: Record<string, unknown>, cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'VmtcError';
    this.code = code;
    this.status = status;
    if (details !== undefined) this.details = details;
  }

  toJSON(): ErrorBody {
    const body: ErrorBody = { code: this.code, message: this.message };
    if (this.details !== undefined) body.details = this.details;
    return body;
  }

  /** Rebuild an error that arrived as JSON from another process. */
  static fromBody(body: unknown, fallbackStatus = 502): VmtcError {
    if (body && typeof body === 'object' && typeof (body as ErrorBody).code === 'string') {
      const b = body as ErrorBody & { status?: number };
      return new VmtcError(b.code, typeof b.status === 'number' ? b.status : fallbackStatus, String(b.message ?? b.code), b.details);
    }
    return new VmtcError('VMTC_PEER_BAD_REPLY', fallbackStatus, 'a peer answered with something that is not an error body', { body: String(body).slice(0, 200) });
  }
}

/**
 * Codes shared by every service: transport, validation and configuration failures.
 * Service catalogues add their own codes beside these (and must not reuse them).
 */
export const COMMON_ERRORS = {
  VMTC_BAD_REQUEST: { status: 400, message: 'the request could not be read' },
  VMTC_VALIDATION: { status: 400, message: 'the request does not match the schema' },
  VMTC_BODY_TOO_LARGE: { status: 413, message: 'the request body is too large' },
  VMTC_BODY_TOO_DEEP: { status: 400, message: 'the request body nests arrays and objects deeper than the service accepts' },
  VMTC_HEADERS_TOO_LARGE: { status: 431, message: 'the request headers are too large' },
  VMTC_REQUEST_TIMEOUT: { status: 408, message: 'the request did not arrive in time' },
  VMTC_UNSUPPORTED_MEDIA_TYPE: { status: 415, message: 'the request body must be application/json' },
  VMTC_NOT_FOUND: { status: 404, message: 'no such route' },
  VMTC_METHOD_NOT_ALLOWED: { status: 405, message: 'method not allowed on this route' },
  VMTC_UNAUTHENTICATED: { status: 401, message: 'a valid bearer credential is required' },
  VMTC_FORBIDDEN: { status: 403, message: 'the credential does not allow this' },
  VMTC_RATE_LIMITED: { status: 429, message: 'too many requests' },
  VMTC_INTERNAL: { status: 500, message: 'internal error' },
  VMTC_CONFIG_INVALID: { status: 500, message: 'the configuration is invalid' },
  VMTC_TIMEOUT: { status: 504, message: 'a peer did not answer in time' },
  VMTC_PEER_UNREACHABLE: { status: 502, message: 'a peer could not be reached' },
  VMTC_PEER_BAD_REPLY: { status: 502, message: 'a peer answered with something unexpected' },
  VMTC_RPC_SEND_FAILED: { status: 502, message: 'a request could not be sent over the link (it cannot be serialised, or the link failed)' },
  VMTC_SHUTTING_DOWN: { status: 503, message: 'the service is shutting down' },
  VMTC_NOT_READY: { status: 503, message: 'the service is alive but not ready: a dependency it needs is not ok (GET /readyz: details.failing, checks)' },
  VMTC_COMMAND_FAILED: { status: 500, message: 'a program this process runs failed or did not finish in time' },
} as const satisfies Catalogue;

/**
 * Make a typed error factory for one catalogue:
 *   const err = errorFactory(CONTROLLER_ERRORS);
 *   throw err('VMTC_VM_NOT_FOUND', { vmId });
 */
export function errorFactory<C extends Catalogue>(catalogue: C) {
  return function make(code: keyof C & string, details?: Record<string, unknown>, opts?: { message?: string; cause?: unknown }): VmtcError {
    const spec = catalogue[code];
    if (!spec) throw new Error(`unknown error code ${code}`);
    return new VmtcError(code, spec.status, opts?.message ?? spec.message, details, opts?.cause);
  };
}

export const commonError = errorFactory(COMMON_ERRORS);

/** Normalise anything thrown into a VmtcError, keeping the original as `cause`. */
export function toVmtcError(e: unknown): VmtcError {
  if (e instanceof VmtcError) return e;
  const msg = e instanceof Error ? e.message : String(e);
  return new VmtcError('VMTC_INTERNAL', 500, 'internal error', { reason: msg.slice(0, 500) }, e);
}

/** Merge catalogues, refusing duplicate codes (a test also checks every code is documented). */
export function mergeCatalogues<A extends Catalogue, B extends Catalogue>(a: A, b: B): A & B {
  for (const k of Object.keys(b)) if (k in a) throw new Error(`error code ${k} defined twice`);
  return { ...a, ...b };
}
