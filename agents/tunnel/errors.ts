// Error codes of the tunnel agent, its drivers, and the controller's tunnel port. They reach the
// controller through the agent link as { code, message, details, status }; prefixed VMTC_TUNNEL_
// so a merge with another catalogue never collides (mergeCatalogues refuses duplicates).
import { COMMON_ERRORS, errorFactory, mergeCatalogues, type Catalogue } from '../../src/common/errors.ts';

export const TUNNEL_ERRORS = {
  VMTC_TUNNEL_BAD_PARAMS: { status: 400, message: 'the request parameters are not valid' },
  VMTC_TUNNEL_UNKNOWN_SITE: { status: 404, message: 'this tunnel agent has no underlay address for the site' },
  VMTC_TUNNEL_LAST_SITE: { status: 409, message: 'refusing to remove the last site the tunnel sends to: the VM would become unreachable' },
  VMTC_TUNNEL_COMMAND_FAILED: { status: 502, message: 'changing the tunnel (iproute2) failed' },
  VMTC_TUNNEL_SWITCH_FAILED: { status: 502, message: 'a tunnel agent failed to switch the tunnel' },
} as const satisfies Catalogue;

export const TUNNEL_AGENT_ERRORS = mergeCatalogues(COMMON_ERRORS, TUNNEL_ERRORS);
export const tunnelError = errorFactory(TUNNEL_ERRORS);
