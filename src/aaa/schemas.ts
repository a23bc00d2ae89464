// The AAA's REST types, declared once (TypeBox): what routes.ts validates and serialises, what
// its OpenAPI document says, and the Static<> types of the handlers. docs/aaa.md.
import { Type, type Static, StringEnum, OpenObject, EmptyBody } from '../common/schemas.ts';
import type { LightpathRequest } from './policy.ts';
import type { AccountingEvent as StoredAccountingEvent } from './accounting.ts';
import type { AuthorizationResult } from './service.ts';
import type { SigningKey } from './keys.ts';
import type { PolicyCheckRequest, PolicyDecision as PolicyDecisionT } from '../common/lightpath.ts';

const Name = Type.String({ minLength: 1, maxLength: 128, pattern: '^[A-Za-z0-9._:@\\-]+$' });

export const AuthorizationBody = Type.Object({
  migrationId: Name,
  vmId: Name,
  project: Name,
  src: Name,
  dst: Name,
  bandwidthMbps: Type.Number({ exclusiveMinimum: 0, maximum: 1e7 }),
  window: Type.Object({
    start: Type.Integer({ minimum: 0 }),
    end: Type.Integer({ minimum: 0 }),
  }, { additionalProperties: false, description: 'epoch seconds, [start, end)' }),
  via: Type.Optional(Type.Array(Name, { maxItems: 16 })),
  class: Type.Optional(StringEnum(['migration', 'background'], { description: "the broker's reservation class the token is for (docs/broker.md \"Classes\"); a background token reserves only background bandwidth" })),
}, { additionalProperties: false });

// policy.ts decides on LightpathRequest: tsc fails here if the two drift apart.
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
type Assert<T extends true> = T;
export type AuthorizationBodyIsTheRequest = Assert<Same<Static<typeof AuthorizationBody>, LightpathRequest>>;

/** POST /v1/policy/check: the same request, before the migration has an id. */
export const PolicyCheckBody = Type.Object({
  ...AuthorizationBody.properties,
  migrationId: Type.Optional(Name),
}, { additionalProperties: false });
export type PolicyCheckBodyIsTheRequest = Assert<Same<Static<typeof PolicyCheckBody>, PolicyCheckRequest>>;

export const PolicyDecision = Type.Object({
  allowed: Type.Boolean({ description: 'whether POST /v1/authorizations would grant it, as far as this AAA can tell without asking its peers' }),
  rule: Type.Optional(Type.String({ description: 'allowed: the rule that grants it' })),
  domains: Type.Optional(Type.Array(Type.String(), { description: 'allowed: the domains on the path' })),
  consentFrom: Type.Optional(Type.Array(Type.String(), { description: 'allowed: the other domains whose consent the token request will ask for' })),
  refusal: Type.Optional(Type.Object({
    code: Type.String({ description: 'the code POST /v1/authorizations would refuse with (VMTC_AAA_POLICY_DENIED, VMTC_AAA_QUOTA_EXCEEDED, VMTC_AAA_SITE_UNKNOWN, VMTC_AAA_WINDOW_INVALID, VMTC_AAA_PEER_UNKNOWN)' }),
    message: Type.String(),
    status: Type.Integer({ description: 'the HTTP status of that code' }),
    details: Type.Optional(OpenObject()),
  }, { additionalProperties: false })),
}, { additionalProperties: false });
export type PolicyDecisionIsTheDecision = Assert<Same<Static<typeof PolicyDecision>, PolicyDecisionT>>;

export const Authorization = Type.Object({
  token: Type.String({ description: 'the capability token (JWT, typ vmtc-cap+jwt), bound to the requester\'s key' }),
  expiresAt: Type.String({ format: 'date-time' }),
  jti: Type.String(),
  audience: Type.Array(Type.String()),
  domains: Type.Array(Type.String()),
  kid: Type.String(),
  consents: Type.Array(Type.Object({ domain: Type.String(), rule: Type.String() }), { description: 'one per other domain on the path' }),
}, { additionalProperties: true });
export type AuthorizationBodyResult = Static<typeof Authorization>;
export type AuthorizationIsTheResult = Assert<Same<AuthorizationBodyResult, AuthorizationResult>>;

export const SignedRequest = Type.Object({ request: Type.String({ minLength: 1, maxLength: 16384 }) }, { additionalProperties: false });
export const Consent = Type.Object({ consent: Type.String({ description: 'the signed consent' }), rule: Type.String() }, { additionalProperties: true });
export const Withdrawal = Type.Object({ withdrawn: Type.Boolean() }, { additionalProperties: true });

export const AccountingKind = StringEnum(['grant', 'refusal', 'consent-grant', 'consent-refusal', 'use', 'release']);

export const AccountingEventBody = Type.Object({
  kind: StringEnum(['use', 'release']),
  jti: Type.String({ minLength: 1, maxLength: 128 }),
  at: Type.Optional(Type.Number({ minimum: 0, description: 'epoch seconds when the use began / the release happened (default: now)' })),
  bytes: Type.Optional(Type.Integer({ minimum: 0 })),
  mbitSeconds: Type.Optional(Type.Number({ minimum: 0 })),
  details: Type.Optional(OpenObject()),
}, { additionalProperties: false });

export const AccountingEvent = Type.Object({
  seq: Type.Number(),
  at: Type.String({ format: 'date-time' }),
  kind: AccountingKind,
  who: Type.String(),
  reporter: Type.Optional(Type.String()),
  rule: Type.Optional(Type.String()),
  jti: Type.Optional(Type.String()),
  migrationId: Type.Optional(Type.String()),
  vmId: Type.Optional(Type.String()),
  project: Type.Optional(Type.String()),
  src: Type.Optional(Type.String()),
  dst: Type.Optional(Type.String()),
  domains: Type.Optional(Type.Array(Type.String())),
  bandwidthMbps: Type.Optional(Type.Number()),
  window: Type.Optional(Type.Object({ start: Type.Number(), end: Type.Number() })),
  mbitSeconds: Type.Optional(Type.Number({ description: 'bandwidth x time: booked for a grant, used for a release' })),
  bytes: Type.Optional(Type.Number()),
  code: Type.Optional(Type.String()),
  details: Type.Optional(OpenObject()),
}, { additionalProperties: true });
export type AccountingEventIsTheRecord = Assert<Same<Static<typeof AccountingEvent>, StoredAccountingEvent>>;

export const AccountingQuery = Type.Object({
  migrationId: Type.Optional(Name),
  jti: Type.Optional(Type.String({ maxLength: 128 })),
  kind: Type.Optional(AccountingKind),
  since: Type.Optional(Type.String({ maxLength: 64, description: 'ISO time or epoch milliseconds' })),
  // Strings: buildHttp does not coerce types, and query strings are text.
  after: Type.Optional(Type.String({ pattern: '^[0-9]{1,15}$', description: 'only records with seq greater than this (paging)' })),
  limit: Type.Optional(Type.String({ pattern: '^([1-9][0-9]{0,2}|1000)$', default: '200', description: '1-1000' })),
}, { additionalProperties: false });

export const AccountingPage = Type.Object({
  events: Type.Array(AccountingEvent),
  next: Type.Optional(Type.Number({ description: 'more records may follow: ask again with after=next' })),
});

const PublicJwk = OpenObject<SigningKey['publicJwk']>({ description: 'an Ed25519 public key (JWK) with its kid' });

export const Jwks = Type.Object({ keys: Type.Array(PublicJwk) }, { additionalProperties: true });

export const Info = Type.Object({
  issuer: Type.String(),
  domain: Type.String(),
  kid: Type.String({ description: 'the current signing key' }),
  tokenLifetimeSec: Type.Number(),
  publicJwk: PublicJwk,
}, { additionalProperties: true });

export const RotateBody = EmptyBody;
export const Rotated = Type.Object({
  kid: Type.String(),
  previous: Type.String(),
  publicJwk: PublicJwk,
  previousPublishedUntil: Type.String({ format: 'date-time' }),
}, { additionalProperties: true });

/** Requesters and reporters prove possession of their key with a DPoP proof (RFC 9449). */
export const AAA_SECURITY_SCHEMES = {
  dpopProof: { type: 'apiKey', in: 'header', name: 'DPoP', description: 'a DPoP proof made with a requester\'s or reporter\'s key named in the policy' },
} as const;
