// One way to build a fastify server for every vmtc service: JSON Schema on every route with
// unknown fields refused (the schemas are TypeBox, src/common/schemas.ts), errors always
// { code, message, details? } from a catalogue, a body limit, and the OpenAPI document at
// GET /openapi.json.
import Fastify, { LogController, type FastifyInstance, type FastifyError, type FastifyServerOptions } from 'fastify';
import swagger from '@fastify/swagger';
import type { Logger } from './log.ts';
import { VmtcError, commonError, toVmtcError } from './errors.ts';

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
}

export async function buildHttp(opts: HttpOptions): Promise<FastifyInstance> {
  const app = Fastify({
    loggerInstance: opts.logger.child({ mod: 'http' }),
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: opts.bodyLimit ?? 64 * 1024,
    ajv: {
      customOptions: {
        // Unknown fields are an error, not silently dropped; types are not coerced in bodies.
        removeAdditional: false,
        coerceTypes: false,
        allErrors: false,
        useDefaults: true,
      },
    },
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

  app.setErrorHandler((error: FastifyError | VmtcError | Error, request, reply) => {
    const e = mapError(error);
    const log = request.log ?? opts.logger;
    if (e.status >= 500) log.error({ err: error, code: e.code }, 'request failed');
    else log.info({ code: e.code, url: request.url, method: request.method }, 'request refused');
    void reply.status(e.status).send(e.toJSON());
  });
  app.setNotFoundHandler((request, reply) => {
    void reply.status(404).send(commonError('VMTC_NOT_FOUND', { method: request.method, url: request.url }).toJSON());
  });
  return app;
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
      return commonError('VMTC_BAD_REQUEST', { reason: fe.message });
  }
  if (fe && typeof fe.statusCode === 'number' && fe.statusCode < 500) {
    return commonError('VMTC_BAD_REQUEST', { reason: fe.message });
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
