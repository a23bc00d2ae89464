// The tunnel agent's protocol over the agent link (docs/tunnel.md): the requests it serves, the
// event it sends, and the error codes that cross the link. The tunnel agent (agents/tunnel/) and
// the controller (src/controller/tunnel-port.ts) both take them from here, so neither imports
// the other.
import { errorFactory, type Catalogue } from './errors.ts';

/**
 * Codes of the tunnel agent, its drivers and the controller's tunnel port. They reach the
 * controller through the agent link as { code, message, details, status }; prefixed
 * VMTC_TUNNEL_ so a merge with another catalogue never collides (mergeCatalogues refuses
 * duplicates). VMTC_TUNNEL_SWITCH_FAILED is the controller's: a switch that failed at one or
 * more tunnel agents, each named with its own code.
 */
export const TUNNEL_ERRORS = {
  VMTC_TUNNEL_BAD_PARAMS: { status: 400, message: 'the request parameters are not valid' },
  VMTC_TUNNEL_UNKNOWN_SITE: { status: 404, message: 'this tunnel agent has no underlay address for the site' },
  VMTC_TUNNEL_LAST_SITE: { status: 409, message: 'refusing to remove the last site the tunnel sends to: the VM would become unreachable' },
  VMTC_TUNNEL_COMMAND_FAILED: { status: 502, message: 'changing the tunnel (iproute2) failed' },
  VMTC_TUNNEL_SWITCH_FAILED: { status: 502, message: 'a tunnel agent failed to switch the tunnel' },
  VMTC_TUNNEL_MEASURE_FAILED: { status: 502, message: 'the tunnel agent could not measure the client-seen downtime' },
} as const satisfies Catalogue;

export const tunnelError = errorFactory(TUNNEL_ERRORS);

/** One change of the tunnel's destinations, for the lab's timeline. */
export interface TunnelChange {
  /** ms since the epoch (the agent's clock). */
  at: number;
  op: 'add' | 'remove';
  site: string;
  cause: 'bicast' | 'prune' | 'initial';
  vmId?: string;
  /** The destinations after the change. */
  sites: string[];
}

/** The answer to tunnel.state, and the body of the tunnel.state event. */
export interface TunnelState {
  driver: string;
  sites: string[];
  vmSites: Record<string, string[]>;
  history: TunnelChange[];
}

/** Before the copy starts: send toward both sites (the new one is added first). */
export interface BicastParams { vmId: string; oldSite: string; newSite: string }
/** After the destination runs (or, after a rollback, with the roles swapped): keep one site,
 *  stop sending to the other unless another VM still needs it. */
export interface PruneParams { vmId: string; keepSite: string; dropSite: string }

/** Client-seen silence from the VM's own frames coming back through the tunnel, between bicast
 *  and prune (agents/tunnel/downtime.ts). Instants are ms since the epoch; null: not seen. */
export interface TunnelPassiveDowntime {
  /** The longest gap between two consecutive frames of the VM (either site) in the window. */
  gapMs: number | null;
  /** Where that silence starts and ends (epoch ms). */
  gapFromAt?: number;
  gapToAt?: number;
  lastFromSourceAt: number | null;
  firstFromDestinationAt: number | null;
  /** firstFromDestinationAt - lastFromSourceAt (negative: the sites overlapped). */
  switchMs: number | null;
  /** Frames of the VM seen in the window. */
  samples: number;
  method: string;
}

/** Client-seen silence from an active echo probe to the VM's address (only between bicast and
 *  prune): the longest time between two consecutive replies. */
export interface TunnelProbeDowntime {
  gapMs: number | null;
  sent: number;
  received: number;
  periodMs: number;
  method: string;
}

/** What the tunnel agent measured for one migration, returned by tunnel.prune. */
export interface TunnelDowntime {
  vmId: string;
  from: number;
  to: number;
  tunnelPassive: TunnelPassiveDowntime;
  tunnelProbe?: TunnelProbeDowntime;
  /** The measurement could not run or was cut short (a coded error). */
  error?: { code: string; message: string };
}

/** The requests a tunnel agent serves: [params, result]. */
export interface TunnelMethods {
  'tunnel.bicast': [BicastParams, { sites: string[] }];
  'tunnel.prune': [PruneParams, { sites: string[]; removed: boolean; keptFor?: string[]; downtime?: TunnelDowntime }];
  'tunnel.state': [Record<string, never>, TunnelState];
}

/** One probe of the active echo as the probe stream reports it: [seq, sentAt (epoch ms, the
 *  capture's clock), rttMs, or null while no reply has come]. A probe reported unanswered is
 *  reported again if its reply comes later (the receiver keeps the last report of a seq). */
export type ProbeSample = [number, number, number | null];

/** The probe stream (docs/dashboard.md "Probe stream"): while a migration's echo probe runs (bicast to
 *  prune), the tunnel agent sends what it sent and heard every `batchMs`, for the dashboard's
 *  radar. Not persisted; the controller keeps a bounded tail per migration. */
export interface TunnelProbeBatch {
  vmId: string;
  periodMs: number;
  samples: ProbeSample[];
  /** The last batch of the window (sent just before the prune's answer). */
  final?: boolean;
}

/** Bounds of the probe stream: how often a batch leaves, how many samples one carries at most,
 *  how many unanswered probes are watched for a late reply, and how long a stream may run. */
export const PROBE_STREAM = { batchMs: 150, maxSamplesPerBatch: 500, maxUnanswered: 1000, maxMs: 600_000 } as const;

/** The events a tunnel agent sends: [name, body]. */
export interface TunnelEvents {
  'tunnel.state': TunnelState;
  'tunnel.probe': TunnelProbeBatch;
}
