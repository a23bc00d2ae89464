// The lightpath a migration asks for (docs/design.md#live-migration, steps 3 and 4): the controller
// sends it to the AAA for pre-authorisation, the AAA signs it into a capability token's `vmtc`
// claim (plus the domains on the path, src/aaa/tokens.ts), and the broker checks reservations
// against that claim.
// One shape for all three, so a field added here reaches every side.

export interface LightpathRequest {
  migrationId: string;
  vmId: string;
  project: string;
  /** Endpoint names (sites) as the AAA policy and the broker topology know them. */
  src: string;
  dst: string;
  bandwidthMbps: number;
  /** Epoch seconds. */
  window: { start: number; end: number };
  /** The broker's reservation class (docs/broker.md "Classes"); absent = migration. A token
   *  granted for `background` reserves only background bandwidth. */
  class?: 'migration' | 'background';
}

/** What the AAA's policy check (POST /v1/policy/check, docs/aaa.md) asks: a lightpath request
 *  before the migration exists (no migrationId yet). */
export type PolicyCheckRequest = Omit<LightpathRequest, 'migrationId'> & { migrationId?: string; via?: string[] };

/** The AAA's answer: would POST /v1/authorizations grant it, as far as can be known now (its own
 *  policy, sites, window and quotas; the consent of other domains on the path is asked only then). */
export interface PolicyDecision {
  allowed: boolean;
  /** allowed: the rule that grants it, the domains on the path, and those whose consent the
   *  token request will still need. */
  rule?: string;
  domains?: string[];
  consentFrom?: string[];
  /** Refused: the AAA's coded error, with the HTTP status it has (docs/aaa.md). */
  refusal?: { code: string; message: string; status: number; details?: Record<string, unknown> };
}
