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
}
