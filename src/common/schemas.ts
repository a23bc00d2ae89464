// Building blocks of the services' REST schemas, written with TypeBox. A route's schema is the
// one source of its request validation (fastify's ajv, options in http.ts), its response
// serialisation (fast-json-stringify: a closed object drops properties it does not list, so
// records that carry more than they list are declared open), its entry in the OpenAPI document
// (@fastify/swagger, GET /openapi.json) and, through Static<>, the TypeScript types of its
// handler and of the clients that call it.
import { Type, type Static, type TSchema, type TUnsafe } from 'typebox';

export { Type, type Static, type TSchema };

/** `{ type: 'string', enum: [...] }`, typed as the union of the values. */
export function StringEnum<const T extends readonly string[]>(values: T, options: Record<string, unknown> = {}): TUnsafe<T[number]> {
  return Type.Unsafe<T[number]>({ type: 'string', enum: [...values], ...options });
}

/**
 * The schema, or null. Written as `nullable: true` beside the schema's `type` (ajv and
 * fast-json-stringify know it); @fastify/swagger turns it into `type: [..., 'null']` for OAS 3.1.
 * An `enum` must list null itself, or it would still refuse it.
 */
export function Nullable<T extends TSchema>(schema: T): TUnsafe<Static<T> | null> {
  const values = (schema as { enum?: unknown[] }).enum;
  return Type.Unsafe<Static<T> | null>({ ...schema, nullable: true, ...(values && !values.includes(null) ? { enum: [...values, null] } : {}) });
}

/**
 * An object whose properties are all kept as they are (serialised, never dropped), typed as `T`
 * (default: any JSON object). For records a route passes through that are typed elsewhere.
 */
export function OpenObject<T = Record<string, unknown>>(options: Record<string, unknown> = {}): TUnsafe<T> {
  return Type.Unsafe<T>({ type: 'object', additionalProperties: true, ...options });
}

/** An object of any keys whose values all match `value` (a map, e.g. milliseconds by state). */
export function MapOf<T extends TSchema>(value: T, options: Record<string, unknown> = {}): TUnsafe<Record<string, Static<T>>> {
  return Type.Unsafe<Record<string, Static<T>>>({ type: 'object', additionalProperties: value, ...options });
}

/** A body that must be an empty JSON object (or absent, where the route allows no body). */
export const EmptyBody = Type.Object({}, { additionalProperties: false });

/** The body of every error: { code, message, details? } (src/common/errors.ts). */
export const ErrorBody = Type.Object({
  code: Type.String({ description: 'the error code from the service\'s catalogue (docs/errors.md); match on it, not on the message' }),
  message: Type.String(),
  details: Type.Optional(OpenObject()),
});
export type ErrorBodyT = Static<typeof ErrorBody>;

/** What each error status means on every route; a route's own codes come with the same status. */
const ERROR_STATUS = {
  400: 'the request could not be read or does not match the schema (VMTC_BAD_REQUEST, VMTC_VALIDATION), or a route-specific refusal',
  401: 'no valid credential (VMTC_UNAUTHENTICATED or a route-specific code)',
  403: 'the credential does not allow this (VMTC_FORBIDDEN or a route-specific code)',
  404: 'no such resource (a route-specific code) or route (VMTC_NOT_FOUND)',
  409: 'the request conflicts with the current state (a route-specific code)',
  413: 'the request body is too large (VMTC_BODY_TOO_LARGE)',
  415: 'the request body is not application/json (VMTC_UNSUPPORTED_MEDIA_TYPE)',
  422: 'the request is well-formed but can never succeed as asked (a route-specific code)',
  429: 'a limit or quota was reached (VMTC_RATE_LIMITED: too many requests from this address, with Retry-After; or a route-specific code)',
  500: 'an internal error (VMTC_INTERNAL or a route-specific code)',
  502: 'a peer refused or failed, or answered with something unexpected',
  503: 'a part that is needed is not available now',
  504: 'a peer did not answer in time (VMTC_TIMEOUT)',
} as const;
export type ErrorStatus = keyof typeof ERROR_STATUS;

/**
 * The error responses of a route: always 400 (validation), 429 (the rate limits of
 * src/common/http.ts apply to every route) and 500, plus 413 and 415 when it takes a body, plus
 * `statuses`. Each a fresh schema so each response gets its own description.
 */
export function errorResponses<const S extends ErrorStatus>(opts: { body?: boolean }, ...statuses: S[]) {
  const all = new Set<ErrorStatus>([400, 429, 500, ...(opts.body ? [413, 415] as const : []), ...statuses]);
  const out = {} as Record<S | 400 | 429 | 500 | 413 | 415, typeof ErrorBody>;
  for (const s of [...all].sort((a, b) => a - b)) {
    (out as Record<number, unknown>)[s] = Type.Object(ErrorBody.properties, { description: ERROR_STATUS[s] });
  }
  return out;
}

/** OpenAPI security requirements of a route: any one entry suffices; each needs all its schemes. */
export type Security = Record<string, string[]>[];

/** A server-sent event stream response (the handler writes it; nothing is serialised). */
export function EventStream(description: string) {
  return { description, content: { 'text/event-stream': { schema: { type: 'string' } } } } as const;
}
