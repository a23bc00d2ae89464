// One way to build a fastify server for every vmtc service: JSON Schema on every route with
// unknown fields refused (the schemas are TypeBox, src/common/schemas.ts), errors always
// { code, message, details? } from a catalogue (fastify's own errors too: routing, parsing,
// malformed HTTP), a body size and nesting limit, rate limits per client address, one log line
// per request, and the OpenAPI document at GET /openapi.json.
import { STATUS_CODES } from 'node:http';
import type { Duplex } from 'node:stream';
import Fastify, { LogController, type FastifyInstance, type FastifyError, type FastifyReply, type FastifyRequest, type FastifyServerOptions } from 'fastify';
import swagger from '@fastify/swagger';
import rateLimit from '@fastify/rate-limit';
import { AjvCompiler } from '@fastify/ajv-compiler';
import type { Logger } from './log.ts';
import { VmtcError, commonError, toVmtcError } from './errors.ts';

/** Rate limits of a service, per client address (README "Rate limits"). A `max` of 0 turns one off. */
export interface RateLimitOptions {
  /** Every request counts. */
  requests: { max: number; windowMs: number };
  /** Refusals (answers 401 or 403: failed authentication, or a credential used for what it may
   *  not do) count; past `max`, every request from the address is answered 429 until the
   *  window ends, so credentials cannot be guessed at speed. */
  refusals: { max: number; windowMs: number };
}

/** Defaults of every service (each service's options may override them). */
export const RATE_LIMIT_DEFAULTS: RateLimitOptions = {
  requests: { max: 2000, windowMs: 10_000 },
  refusals: { max: 100, windowMs: 60_000 },
};

/** Deepest nesting of arrays and objects accepted in a JSON body (docs/errors.md VMTC_BODY_TOO_DEEP). */
export const JSON_DEPTH_LIMIT = 32;

export interface HttpOptions {
  logger: Logger;
  title: string;
  version?: string;
  /** Largest accepted body in bytes (default 64 KiB). */
  bodyLimit?: number;
  https?: FastifyServerOptions['https' & keyof FastifyServerOptions];
  /** Extra fastify options (e.g. https). */
  fastify?: Record<string, unknown>;
  /** OpenAPI security schemes beside `bearer` (routes name them in `security`). */
  securitySchemes?: Record<string, Record<string, unknown>>;
  /** Deepest nesting of a JSON body (default JSON_DEPTH_LIMIT). */
  maxJsonDepth?: number;
  /** Rate limits (default RATE_LIMIT_DEFAULTS; each part may be given alone). */
  rateLimit?: Partial<RateLimitOptions>;
}

function checkLimit(v: { max: number; windowMs: number }, field: string): { max: number; windowMs: number } {
  if (!v || !Number.isInteger(v.max) || v.max < 0 || !Number.isInteger(v.windowMs) || v.windowMs <= 0) {
    throw commonError('VMTC_CONFIG_INVALID', { field, value: v }, { message: `${field} needs max (an integer, 0 = off) and windowMs (a positive integer)` });
  }
  return v;
}

/**
 * Whether a JSON text nests arrays and objects deeper than `limit`, by one pass over its
 * characters: decided before the text is parsed, so a deeply nested body costs no more than a
 * flat one of its size and never reaches a handler (which might pass it on to something
 * recursive: a serialiser, a WebSocket peer).
 */
export function jsonDeeperThan(text: string, limit: number): boolean {
  let depth = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c) i++; // backslash: skip the escaped character
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) {
      inString = true;
    } else if (c === 0x7b || c === 0x5b) {
      if (++depth > limit) return true;
    } else if (c === 0x7d || c === 0x5d) {
      depth--;
    }
  }
  return false;
}

/**
 * fastify's own validator compilers (@fastify/ajv-compiler), twice: a query string is text, so
 * its numbers and booleans are coerced as their schema says (`?limit=5` is the integer 5, `?limit=x`
 * still fails validation); bodies, path parameters and headers get the options above unchanged.
 */
function queryCoercingValidators(): BuildValidator {
  const strict = AjvCompiler() as unknown as BuildValidator;
  const coercing = AjvCompiler() as unknown as BuildValidator;
  return (externalSchemas, options) => {
    const other = strict(externalSchemas, options);
    const query = coercing(externalSchemas, { ...options, customOptions: { ...options?.customOptions, coerceTypes: true } });
    return (route) => (route.httpPart === 'querystring' ? query : other)(route);
  };
}
type BuildValidator = (externalSchemas: unknown, options: { customOptions?: Record<string, unknown> } | undefined) => (route: { httpPart?: string }) => unknown;

/** A malformed HTTP request (fastify's clientError): answered with a coded body, then closed. */
function clientErrorHandler(err: NodeJS.ErrnoException, socket: Duplex): void {
  if (err.code === 'ECONNRESET' || socket.destroyed) return;
  const e = err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? commonError('VMTC_REQUEST_TIMEOUT')
    : err.code === 'HPE_HEADER_OVERFLOW' ? commonError('VMTC_HEADERS_TOO_LARGE')
      : commonError('VMTC_BAD_REQUEST', { reason: 'the HTTP request could not be parsed' });
  const body = JSON.stringify(e.toJSON());
  if (socket.writable) {
    socket.write(`HTTP/1.1 ${e.status} ${STATUS_CODES[e.status]}\r\nContent-Length: ${Buffer.byteLength(body)}\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n${body}`);
  }
  socket.destroy(err);
}

export async function buildHttp(opts: HttpOptions): Promise<FastifyInstance> {
  const limits: RateLimitOptions = {
    requests: checkLimit(opts.rateLimit?.requests ?? RATE_LIMIT_DEFAULTS.requests, 'rateLimit.requests'),
    refusals: checkLimit(opts.rateLimit?.refusals ?? RATE_LIMIT_DEFAULTS.refusals, 'rateLimit.refusals'),
  };
  const maxDepth = opts.maxJsonDepth ?? JSON_DEPTH_LIMIT;
  const app = Fastify({
    loggerInstance: opts.logger.child({ mod: 'http' }),
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: opts.bodyLimit ?? 64 * 1024,
    // fastify answers these itself, outside the error handler: a URL that is not valid
    // percent-encoding, a path parameter over its length limit, malformed HTTP.
    frameworkErrors: (error: FastifyError, _request: FastifyRequest, reply: FastifyReply) => {
      const e = mapError(error);
      void reply.status(e.status).send(e.toJSON());
    },
    clientErrorHandler,
    ajv: {
      customOptions: {
        // Unknown fields are an error, not silently dropped; types are not coerced in bodies
        // (query strings are: queryCoercingValidators below).
        removeAdditional: false,
        coerceTypes: false,
        allErrors: false,
        useDefaults: true,
      },
    },
    schemaController: { compilersFactory: { buildValidator: queryCoercingValidators() as never } },
    ...(opts.fastify ?? {}),
  }) as unknown as FastifyInstance;

  // OAS 3.1: its Schema Objects are JSON Schema 2020-12, so the routes' schemas (numeric
  // exclusiveMinimum, as ajv reads them) go into the document as they are; @fastify/swagger
  // turns `nullable` into a `null` type for it.
  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: { title: opts.title, version: opts.version ?? '0.1.0' },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' }, ...(opts.securitySchemes ?? {}) } },
    },
  });
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());

  // JSON bodies only (text/plain, fastify's other default, is refused with 415), their nesting
  // bounded before they are parsed; otherwise fastify's own parser (prototype poisoning refused).
  app.removeContentTypeParser('text/plain');
  const parseJson = app.getDefaultJsonParser('error', 'error');
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (request, body, done) => {
    if (jsonDeeperThan(body as string, maxDepth)) return done(commonError('VMTC_BODY_TOO_DEEP', { maxDepth }), undefined);
    parseJson(request, body as string, done);
  });

  logRequests(app);
  await registerRateLimits(app, limits);

  app.setErrorHandler((error: FastifyError | VmtcError | Error, request, reply) => {
    const e = mapError(error);
    const log = request.log ?? opts.logger;
    if (e.status >= 500) log.error({ err: error, code: e.code }, 'request failed');
    // A flood is answered 429 a request at a time; its first refusals were logged already.
    else if (e.code === 'VMTC_RATE_LIMITED') log.debug({ code: e.code, url: request.url, method: request.method, ip: request.ip }, 'request refused');
    else log.info({ code: e.code, url: request.url, method: request.method }, 'request refused');
    void reply.status(e.status).send(e.toJSON());
  });

  // A path that exists with other methods answers 405 with Allow; any other, 404.
  const routes: { method: string; path: RegExp }[] = [];
  app.addHook('onRoute', (r) => {
    const pattern = r.url.split('/').map((seg) => (seg.startsWith(':') ? '[^/]+' : seg === '*' ? '.*' : seg.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'))).join('/');
    for (const m of [r.method].flat()) routes.push({ method: m, path: new RegExp(`^${pattern}$`) });
  });
  app.setNotFoundHandler((request, reply) => {
    const path = request.url.split('?')[0] ?? '';
    const allowed = [...new Set(routes.filter((r) => r.path.test(path)).map((r) => r.method))];
    if (allowed.length > 0) {
      void reply.status(405).header('allow', allowed.join(', ')).send(commonError('VMTC_METHOD_NOT_ALLOWED', { method: request.method, allowed }).toJSON());
      return;
    }
    void reply.status(404).send(commonError('VMTC_NOT_FOUND', { method: request.method, url: request.url.slice(0, 200) }).toJSON());
  });
  return app;
}

declare module 'fastify' {
  interface FastifyRequest {
    /** The name of the credential the request was authenticated with, for the request log line
     *  (never the secret). A service's authentication hook sets it; the controller's
     *  `principal` (src/controller/api.ts) is read as well. */
    credentialName?: string;
  }
}

/** The credential's name, as the service's authentication hook recorded it. */
function credentialNameOf(request: FastifyRequest): string | null {
  if (typeof request.credentialName === 'string') return request.credentialName;
  const p = (request as { principal?: { name?: unknown } }).principal;
  return p && typeof p.name === 'string' ? p.name : null;
}

/**
 * One log line per request when its answer is over: method, route (the pattern, so ids and query
 * strings stay out), status, time in ms and the credential's name. Hooked on the raw response's
 * `close` so answers fastify does not see through (a server-sent event stream, a hijacked reply,
 * a connection the client dropped) are logged too; headers and bodies never are.
 */
function logRequests(app: FastifyInstance): void {
  app.addHook('onRequest', async (request, reply) => {
    reply.raw.once('close', () => {
      const route = request.routeOptions?.url;
      request.log.info({
        method: request.method,
        route: route ?? null,
        ...(route ? {} : { path: (request.url.split('?')[0] ?? '').slice(0, 200) }),
        status: reply.raw.statusCode,
        ms: Math.round(reply.elapsedTime * 10) / 10,
        cred: credentialNameOf(request),
        ...(reply.raw.writableFinished ? {} : { aborted: true }),
      }, 'request');
    });
  });
}

/**
 * Rate limits per client address (@fastify/rate-limit's counters): every request counts against
 * `requests`; every refusal (401, 403) against `refusals`, and an address past that limit is
 * answered 429 on every route until its window ends. Both checks run first, before routing's
 * own hooks (authentication), parsing or validation.
 */
async function registerRateLimits(app: FastifyInstance, limits: RateLimitOptions): Promise<void> {
  if (limits.requests.max === 0 && limits.refusals.max === 0) return;
  await app.register(rateLimit, { global: false });
  const byAddress = (req: FastifyRequest) => req.ip;
  const requests = limits.requests.max > 0 ? app.createRateLimit({ max: limits.requests.max, timeWindow: limits.requests.windowMs, keyGenerator: byAddress }) : undefined;
  const refusals = limits.refusals.max > 0 ? app.createRateLimit({ max: limits.refusals.max, timeWindow: limits.refusals.windowMs, keyGenerator: byAddress }) : undefined;
  const limited = (reply: FastifyReply, retryAfterSec: number, limit: string, max: number, windowMs: number) => {
    void reply.header('retry-after', String(Math.max(1, retryAfterSec)));
    return commonError('VMTC_RATE_LIMITED', { limit, max, windowMs, retryAfterSec: Math.max(1, retryAfterSec) });
  };
  app.addHook('onRequest', async (request, reply) => {
    if (refusals) {
      const r = await refusals(request, { increment: false });
      if (!r.isAllowed && r.remaining === 0) throw limited(reply, r.ttlInSeconds, 'refusals', limits.refusals.max, limits.refusals.windowMs);
    }
    if (requests) {
      const r = await requests(request);
      if (!r.isAllowed && r.isExceeded) throw limited(reply, r.ttlInSeconds, 'requests', limits.requests.max, limits.requests.windowMs);
    }
  });
  if (refusals) {
    app.addHook('onResponse', async (request, reply) => {
      if (reply.statusCode === 401 || reply.statusCode === 403) await refusals(request);
    });
  }
}

/** Translate fastify's own errors (validation, body parsing, size) into catalogue codes. */
export function mapError(error: unknown): VmtcError {
  if (error instanceof VmtcError) return error;
  const fe = error as FastifyError & { validation?: unknown[]; validationContext?: string };
  if (fe && fe.validation) {
    return commonError('VMTC_VALIDATION', { context: fe.validationContext, problems: fe.validation, reason: fe.message });
  }
  switch (fe?.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return commonError('VMTC_BODY_TOO_LARGE');
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return commonError('VMTC_UNSUPPORTED_MEDIA_TYPE');
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
    case 'FST_ERR_BAD_URL':
      return commonError('VMTC_BAD_REQUEST', { reason: String(fe.message).slice(0, 200) });
    case 'FST_ERR_MAX_PARAM_LENGTH':
      return commonError('VMTC_VALIDATION', { context: 'params', reason: 'a path parameter is longer than the route accepts' });
    case 'FST_ERR_NOT_FOUND':
      return commonError('VMTC_NOT_FOUND');
  }
  // Anything else fastify (or a plugin) refuses: by its status, so no answer goes out without a
  // code of the catalogue.
  const status = typeof fe?.statusCode === 'number' ? fe.statusCode : 500;
  if (status < 500) {
    const byStatus = { 401: 'VMTC_UNAUTHENTICATED', 403: 'VMTC_FORBIDDEN', 404: 'VMTC_NOT_FOUND', 405: 'VMTC_METHOD_NOT_ALLOWED', 408: 'VMTC_REQUEST_TIMEOUT', 413: 'VMTC_BODY_TOO_LARGE', 415: 'VMTC_UNSUPPORTED_MEDIA_TYPE', 429: 'VMTC_RATE_LIMITED', 431: 'VMTC_HEADERS_TOO_LARGE' } as const;
    const code = byStatus[status as keyof typeof byStatus] ?? 'VMTC_BAD_REQUEST';
    return commonError(code, { reason: String(fe?.message ?? '').slice(0, 200), ...(fe?.code ? { cause: fe.code } : {}) });
  }
  return toVmtcError(error);
}

// Kept importable from here for the services; the parser itself lives in listen.ts.
export { parseListen } from './listen.ts';

/** Base URL of a listening fastify app (after listen()). */
export function baseUrl(app: FastifyInstance, scheme = 'http'): string {
  const a = app.server.address();
  if (!a || typeof a === 'string') throw new Error('server not listening on TCP');
  const host = a.family === 'IPv6' ? `[${a.address}]` : a.address;
  return `${scheme}://${host}:${a.port}`;
}
