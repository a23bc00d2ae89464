// What the migration runner needs from the outside world, as narrow interfaces. The AgentHub
// (hub.ts) provides HubPort; the AAA and broker clients and the tunnel agents provide the others
// through adapters in integrations.ts. Keeping them narrow lets the runner be tested against
// real agents while the AAA/broker steps are simply not configured.
import type { TunnelDowntime } from '../common/tunnel-protocol.ts';
import type { EventEmitter } from 'node:events';
import type { HostInventory, HostMethods } from '../common/agent-protocol.ts';
import type { LightpathRequest, PolicyCheckRequest, PolicyDecision } from '../common/lightpath.ts';

export interface HubPort extends EventEmitter {
  isConnected(hostId: string): boolean;
  inventory(hostId: string): HostInventory | undefined;
  request<M extends keyof HostMethods>(hostId: string, method: M, params: HostMethods[M][0], timeoutMs?: number): Promise<HostMethods[M][1]>;
  /** Serials of the host's certificates that are not revoked. */
  certSerials?(hostId: string): string[];
  /** Ask the host for its inventory now and keep it as if pushed (hub.ts). */
  refreshInventory?(hostId: string, timeoutMs?: number): Promise<void>;
}

/** docs/design.md#live-migration, steps 3-4: the one lightpath shape the AAA and the broker also use. */
export type { LightpathRequest };

export interface AuthorizationPort {
  /** docs/design.md#live-migration, step 3: pre-authorisation. Resolves with a capability token or throws coded. */
  authorize(req: LightpathRequest): Promise<{ token: string; jti: string; expiresAt: number; audience?: string[] }>;
  /** Whether the AAA would grant it, asked at admission with a short timeout
   *  (policy-precheck.ts); throws when it cannot answer. Optional: without it nothing is asked. */
  check?(req: PolicyCheckRequest, opts: { timeoutMs: number }): Promise<PolicyDecision>;
  /** docs/design.md#live-migration, step 7: close the grant's accounting (a `release` record),
   *  by its jti alone (the token is a memory-only secret a restarted controller no longer has).
   *  Throws coded on failure. */
  release?(jti: string, details: Record<string, unknown>): Promise<void>;
}

export interface LightpathPort {
  /** docs/design.md#live-migration, step 4: reserve, commit and provision with the token. Resolves when the circuit is up.
   *  `idempotencyKey`: the caller's name for the reservation, recorded before the call, so that
   *  find() locates what a setup cut short (the controller killed) left behind. */
  setup(req: LightpathRequest, token: string, opts?: { idempotencyKey?: string }): Promise<{ reservationId: string; details?: Record<string, unknown> }>;
  /** Release and terminate; must tolerate an id that is already gone. */
  teardown(reservationId: string, token: string): Promise<void>;
  /** The reservation made under an idempotency key, without the token (a restarted controller
   *  no longer has it); undefined when there is none. */
  find?(idempotencyKey: string): Promise<{ reservationId: string } | undefined>;
  /** An advance reservation (docs/fleet.md "Bookings"): reserve and commit for the request's
   *  window, which may start later; provision() brings it up. Nothing is held if it throws. */
  book?(req: LightpathRequest, token: string, opts: { idempotencyKey: string }): Promise<{ reservationId: string }>;
  /** Provision a booked reservation with the token that made it. */
  provision?(reservationId: string, token: string): Promise<{ details?: Record<string, unknown> }>;
  /** The lightpath booked ahead for a migration (an evacuation's move, src/controller/fleet/bookings.ts),
   *  provisioned now, with the grant it was made with; undefined when there is none to use. */
  claim?(m: BookingClaim): Promise<ClaimedLightpath | undefined>;
}

export interface BookingClaim { migrationId: string; vmId: string; evacuationId?: string; requestId?: string; src: string; dst: string; bandwidthMbps: number }
export interface ClaimedLightpath { key: string; reservationId: string; token: string; jti: string; expiresAt: number; details?: Record<string, unknown> }

export interface TunnelPort {
  /** docs/design.md#live-migration, step 6: send toward both the old and the new site. */
  bicast(vmId: string, oldSite: string, newSite: string): Promise<void>;
  /** Keep only `keepSite` (after commit: the new site; after rollback: the old one). Returns what
   *  a tunnel agent measured of the client-seen downtime since the bicast, if one did. */
  prune(vmId: string, keepSite: string, dropSite: string): Promise<TunnelDowntime | void>;
}
