// The broker's error catalogue (docs/contributing.md#errors). Codes never change meaning; callers
// (the controller's BrokerClient, peer brokers) match on the code. Every code is listed in
// docs/broker.md (a test checks it).
import { COMMON_ERRORS, errorFactory, mergeCatalogues, type Catalogue } from '../common/errors.ts';

export const BROKER_OWN_ERRORS = {
  // Token gate: the AAA capability token (docs/broker.md "Token gate").
  VMTC_TOKEN_MISSING: { status: 401, message: 'an AAA capability token (Authorization: DPoP <token>) is required' },
  VMTC_TOKEN_MALFORMED: { status: 401, message: 'the capability token is not a well-formed vmtc-cap+jwt' },
  VMTC_TOKEN_BAD_SIGNATURE: { status: 401, message: 'the capability token signature does not verify' },
  VMTC_TOKEN_UNKNOWN_KEY: { status: 401, message: 'the capability token is signed with a key this broker does not know' },
  VMTC_TOKEN_ISSUER: { status: 401, message: 'the capability token comes from an issuer this broker does not trust' },
  VMTC_TOKEN_AUDIENCE: { status: 401, message: 'the capability token is not meant for this broker' },
  VMTC_TOKEN_EXPIRED: { status: 401, message: 'the capability token has expired' },
  VMTC_TOKEN_NOT_YET_VALID: { status: 401, message: 'the capability token is not valid yet' },
  VMTC_TOKEN_REPLAYED: { status: 401, message: 'the capability token has already been used to create a reservation' },
  VMTC_TOKEN_SCOPE: { status: 403, message: 'the capability token does not cover this request' },
  VMTC_TOKEN_NOT_BOUND: { status: 403, message: 'the capability token is not the one that created this reservation' },
  VMTC_DPOP_PROOF_INVALID: { status: 401, message: 'the DPoP proof is missing or invalid' },
  VMTC_NOT_HOLDER: { status: 403, message: 'only the holder that created the reservation (or the upstream broker) may act on it' },
  VMTC_PEER_NOT_TRUSTED: { status: 403, message: 'the client certificate does not belong to a trusted peer broker' },
  // Reservations and the NSI state machines.
  VMTC_RESERVATION_NOT_FOUND: { status: 404, message: 'no such reservation' },
  VMTC_ILLEGAL_TRANSITION: { status: 409, message: 'the operation is not allowed in the current state' },
  VMTC_IDEMPOTENCY_KEY_REUSED: { status: 409, message: 'this idempotency key already names a reservation for another request' },
  VMTC_UNKNOWN_ENDPOINT: { status: 400, message: 'an endpoint is not a node of this domain' },
  VMTC_BAD_WINDOW: { status: 400, message: 'the time window is empty, reversed or already over' },
  VMTC_BAD_BANDWIDTH: { status: 400, message: 'the bandwidth must be positive and no larger than the largest link' },
  VMTC_NO_PATH: { status: 409, message: 'no path with enough free bandwidth over the requested window' },
  VMTC_NO_ROUTE_TO_DOMAIN: { status: 409, message: 'this domain has no inter-domain point toward the next domain' },
  VMTC_CLASS_UNSUPPORTED: { status: 400, message: 'the reservation class does not allow this request (a background reservation stays in one domain and has no data plane of its own)' },
  VMTC_PEER_SEGMENT_FAILED: { status: 502, message: 'a peer domain refused or failed its segment; every segment was aborted' },
  VMTC_COMMIT_FAILED: { status: 502, message: 'the commit failed; every segment was aborted' },
  VMTC_PROVISION_FAILED: { status: 502, message: 'the data plane could not be set up; the reservation is back to Released' },
  // Configuration.
  VMTC_TOPOLOGY_INVALID: { status: 500, message: 'the topology file is invalid' },
  VMTC_TRUST_INVALID: { status: 500, message: 'the trust file is invalid' },
} as const satisfies Catalogue;

export const BROKER_ERRORS = mergeCatalogues(COMMON_ERRORS, BROKER_OWN_ERRORS);
export const brokerError = errorFactory(BROKER_ERRORS);
export type BrokerErrorCode = keyof typeof BROKER_ERRORS;
