// The tunnel agent's error catalogue: the common codes plus the tunnel protocol's own, which are
// defined once in src/common/tunnel-protocol.ts (the controller answers with them too).
import { COMMON_ERRORS, mergeCatalogues } from '../../src/common/errors.ts';
import { TUNNEL_ERRORS } from '../../src/common/tunnel-protocol.ts';

export const TUNNEL_AGENT_ERRORS = mergeCatalogues(COMMON_ERRORS, TUNNEL_ERRORS);
