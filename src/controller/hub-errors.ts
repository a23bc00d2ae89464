// Error codes of the agent hub: enrolment, certificates and agent links (docs/design.md#trust).
// The controller merges HUB_ERRORS into its own catalogue (mergeCatalogues refuses duplicates).
import { errorFactory, type Catalogue } from '../common/errors.ts';

export const HUB_ERRORS = {
  VMTC_ENROLL_TOKEN_INVALID: { status: 401, message: 'the enrolment token is not known' },
  VMTC_ENROLL_TOKEN_EXPIRED: { status: 401, message: 'the enrolment token has expired' },
  VMTC_ENROLL_TOKEN_USED: { status: 409, message: 'the enrolment token has already been used' },
  VMTC_CSR_INVALID: { status: 400, message: 'the certificate signing request is not valid' },
  VMTC_HOST_ID_INVALID: { status: 400, message: 'a host id is 1-63 letters, digits, dots, dashes or underscores, starting with a letter or digit' },
  VMTC_AGENT_KIND_CONFLICT: { status: 409, message: 'this host id is already enrolled as another kind of agent' },
  VMTC_AGENT_UNKNOWN: { status: 404, message: 'no agent has ever enrolled with this host id' },
  VMTC_AGENT_NOT_CONNECTED: { status: 503, message: 'the agent is not connected' },
  VMTC_AGENT_HELLO_INVALID: { status: 400, message: 'the agent did not introduce itself correctly' },
  VMTC_AGENT_MESSAGE_INVALID: { status: 502, message: 'an agent sent a message that does not match the agent protocol (src/common/agent-schemas.ts)' },
  VMTC_AGENT_REPLACED: { status: 409, message: 'a newer connection of the same agent replaced this one' },
  VMTC_CERT_REVOKED: { status: 403, message: 'the client certificate has been revoked' },
  VMTC_CERT_UNKNOWN: { status: 403, message: 'the client certificate was not issued by this controller' },
} as const satisfies Catalogue;

export const hubError = errorFactory(HUB_ERRORS);

/** WebSocket close codes (4000-4999 are for applications) paired with the catalogue code sent
 *  as the close reason, so an agent can tell a permanent refusal from a transient failure. */
export const CLOSE_CODES = {
  VMTC_CERT_UNKNOWN: 4401,
  VMTC_CERT_REVOKED: 4403,
  VMTC_AGENT_HELLO_INVALID: 4400,
  VMTC_AGENT_MESSAGE_INVALID: 4422,
  VMTC_AGENT_REPLACED: 4409,
  VMTC_SHUTTING_DOWN: 4503,
  VMTC_TIMEOUT: 4408,
} as const;
