// Admission of a reservation request before anything is created: the window, the bandwidth and
// the endpoints, and where an inter-domain request leaves this domain (the next domain of the
// token's ordered domain list, through one of the topology's inter-domain points). Pure: the
// topology, the peer list and the time come in as arguments.
import { brokerError } from './errors.ts';
import type { PeerLinks } from './peer.ts';
import type { ReservationClass } from './classes.ts';
import type { Owner } from './store.ts';
import { stpsToward, type Topology } from './topology.ts';

export interface ReserveInput {
  src: string;
  dst: string;
  bandwidthMbps: number;
  /** Epoch seconds, [start, end). */
  start: number;
  end: number;
  migrationId?: string;
  /** Absent: migration. A background reservation gets what migrations leave (classes.ts). */
  class?: ReservationClass;
  /** Background only: the floor below which its grant is 0 (default 0). */
  minMbps?: number;
  /** The caller's name for the reservation, unique per owner (docs/broker.md "Idempotency key"). */
  idempotencyKey?: string;
}

export interface ReserveAuth {
  owner: Owner;
  /** The raw capability token, forwarded to peer domains. */
  token: string;
  jti: string;
  iss: string;
  exp: number;
  /** The ordered domains of the token's scope (to find the next domain). */
  domains: string[];
  upstream?: { domain: string; reservationId: string };
}

/** Where a reservation may end in this domain, and the next domain if it goes on. */
export interface AdmissionPlan {
  targets: Set<string>;
  nextDomain?: string;
  /** Inter-domain point here → the peer's node on the other side. */
  stpPeer?: Map<string, string>;
}

export interface AdmissionContext {
  topology: Topology;
  domain: string;
  peers: Pick<PeerLinks, 'has'>;
  /** Now, epoch seconds. */
  nowS: number;
}

/** Checks that need no state: window, bandwidth, endpoints. Throws a coded error. */
export function checkReserve(ctx: AdmissionContext, input: ReserveInput, auth: Pick<ReserveAuth, 'domains' | 'upstream'>): AdmissionPlan {
  const topo = ctx.topology;
  if (!Number.isFinite(input.start) || !Number.isFinite(input.end) || input.end <= input.start) {
    throw brokerError('VMTC_BAD_WINDOW', { field: 'window', start: input.start, end: input.end, reason: 'end must be after start' });
  }
  if (input.end <= ctx.nowS) throw brokerError('VMTC_BAD_WINDOW', { field: 'window.end', end: input.end, now: ctx.nowS, reason: 'the window is already over' });
  if (!(input.bandwidthMbps > 0) || !Number.isFinite(input.bandwidthMbps)) {
    throw brokerError('VMTC_BAD_BANDWIDTH', { field: 'bandwidthMbps', bandwidthMbps: input.bandwidthMbps, reason: 'must be positive' });
  }
  if (input.bandwidthMbps > topo.maxCapacityMbps) {
    throw brokerError('VMTC_BAD_BANDWIDTH', { field: 'bandwidthMbps', bandwidthMbps: input.bandwidthMbps, maxLinkMbps: topo.maxCapacityMbps, reason: 'larger than any link' });
  }
  if (input.minMbps !== undefined) {
    if (input.class !== 'background') throw brokerError('VMTC_CLASS_UNSUPPORTED', { field: 'minMbps', class: input.class ?? 'migration', reason: 'only a background reservation has a floor' });
    if (!(input.minMbps >= 0) || !Number.isFinite(input.minMbps) || input.minMbps > input.bandwidthMbps) {
      throw brokerError('VMTC_BAD_BANDWIDTH', { field: 'minMbps', minMbps: input.minMbps, bandwidthMbps: input.bandwidthMbps, reason: 'must be between 0 and bandwidthMbps' });
    }
  }
  const src = topo.nodes.get(input.src);
  if (!src) throw brokerError('VMTC_UNKNOWN_ENDPOINT', { field: 'src', node: input.src, domain: ctx.domain });
  if (auth.upstream && src.stp?.peerDomain !== auth.upstream.domain) {
    throw brokerError('VMTC_UNKNOWN_ENDPOINT', { field: 'src', node: input.src, reason: `not an inter-domain point toward ${auth.upstream.domain}` });
  }
  if (topo.nodes.has(input.dst)) {
    if (input.dst === input.src) throw brokerError('VMTC_UNKNOWN_ENDPOINT', { field: 'dst', node: input.dst, reason: 'src and dst are the same node' });
    return { targets: new Set([input.dst]) };
  }
  // The destination is in another domain: leave through an inter-domain point toward the next
  // domain of the token's (ordered) domain list.
  const i = auth.domains.indexOf(ctx.domain);
  const nextDomain = i >= 0 ? auth.domains[i + 1] : undefined;
  if (!nextDomain) throw brokerError('VMTC_UNKNOWN_ENDPOINT', { field: 'dst', node: input.dst, domain: ctx.domain, reason: 'not in this domain and no next domain in the token' });
  // Grants are decided per domain and are not relayed along a chain of segments.
  if (input.class === 'background') throw brokerError('VMTC_CLASS_UNSUPPORTED', { field: 'class', class: 'background', dst: input.dst, reason: 'a background reservation stays in one domain' });
  const stps = stpsToward(topo, nextDomain);
  if (stps.length === 0) throw brokerError('VMTC_NO_ROUTE_TO_DOMAIN', { nextDomain, reason: 'no inter-domain point in the topology' });
  if (!ctx.peers.has(nextDomain)) throw brokerError('VMTC_NO_ROUTE_TO_DOMAIN', { nextDomain, reason: 'no peer broker for that domain in the trust file' });
  return { targets: new Set(stps.map((s) => s.id)), nextDomain, stpPeer: new Map(stps.map((s) => [s.id, s.stp!.peerNode])) };
}
