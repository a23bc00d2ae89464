// The AAA's error catalogue (docs/contributing.md#errors). Codes never change meaning; details
// say which field, rule or domain a refusal is about. docs/aaa.md lists every code.
import { COMMON_ERRORS, errorFactory, mergeCatalogues, type Catalogue } from '../common/errors.ts';
import { DPOP_ERRORS } from '../common/dpop.ts';

export const AAA_OWN_ERRORS = {
  VMTC_AAA_PROOF_INVALID: { status: 401, message: 'the DPoP proof of possession is missing or invalid' },
  VMTC_AAA_REQUESTER_UNKNOWN: { status: 403, message: 'the key that signed the proof belongs to no requester in the policy' },
  VMTC_AAA_POLICY_DENIED: { status: 403, message: 'the policy does not allow this request' },
  VMTC_AAA_QUOTA_EXCEEDED: { status: 429, message: 'the request would exceed a quota of the policy' },
  VMTC_AAA_SITE_UNKNOWN: { status: 400, message: 'a site named in the request is not in the policy' },
  VMTC_AAA_WINDOW_INVALID: { status: 400, message: 'the time window is empty, in the past or too long' },
  VMTC_AAA_PEER_UNKNOWN: { status: 403, message: 'a domain on the path has no configured peer AAA' },
  VMTC_AAA_PEER_REFUSED: { status: 403, message: 'the AAA of a domain on the path refused consent' },
  VMTC_AAA_PEER_UNREACHABLE: { status: 502, message: 'the AAA of a domain on the path could not be reached' },
  VMTC_AAA_PEER_BAD_REPLY: { status: 502, message: 'the AAA of a domain on the path answered with something that does not verify' },
  VMTC_AAA_CONSENT_DENIED: { status: 403, message: 'this domain does not consent to the request' },
  VMTC_AAA_CONSENT_UNAUTHENTICATED: { status: 401, message: 'the consent request is not signed by a pinned key of a known peer' },
  VMTC_AAA_POLICY_INVALID: { status: 500, message: 'the policy file is invalid' },
  VMTC_AAA_GRANT_UNKNOWN: { status: 404, message: 'no grant with this jti was issued by this AAA' },
  VMTC_AAA_TOKEN_INVALID: { status: 401, message: 'the capability token is invalid' },
} as const satisfies Catalogue;

export const AAA_ERRORS = mergeCatalogues(mergeCatalogues(COMMON_ERRORS, DPOP_ERRORS), AAA_OWN_ERRORS);
export type AaaErrorCode = keyof typeof AAA_ERRORS;
export const aaaError = errorFactory(AAA_ERRORS);
