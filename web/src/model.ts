// What the page knows, as the controller's REST API and event stream give it (the shapes are
// the API's: src/controller/schemas.ts). Pure updates; the view draws from this.
export type Resources = { vcpus: number; memoryMb: number; diskGb: number };
export interface Host { hostId: string; connected: boolean; site?: string; totals: Resources; used: Resources; held: Resources; available: Resources; hypervisor?: { type: string; version: string } }
export interface Vm { vmId: string; project: string; state: string; hostId: string; site?: string; vcpus: number; memoryMb: number; migrationId?: string }
export interface Transition { seq: number; from: string | null; to: string; event: string; at: string }
export interface Progress { status?: string; phase?: string; totalBytes?: number; transferredBytes?: number; remainingBytes?: number; pass?: number; throughputMbps?: number }
export interface Downtime {
  hypervisor?: number;
  tunnelPassive?: { gapMs: number | null; samples: number };
  tunnelProbe?: { gapMs: number | null; sent: number; received: number; periodMs: number };
  tunnel?: { agent: string; from: number; to: number };
}
export interface Migration {
  id: string; vmId: string; state: string; terminal: boolean; mode: string; path?: string;
  sourceHostId: string; destinationHostId: string;
  request?: { bandwidthMbps?: number };
  progress: Progress | null; error: { code: string; message: string } | null;
  steps: { lightpath?: { reservationId?: string; provisioned?: boolean; released?: boolean; skipped?: string } };
  result: { downtimeMs?: number; totalTimeMs?: number };
  downtime?: Downtime;
  createdAt: string; updatedAt: string;
  transitions?: Transition[];
}
/** [seq, sentAt epoch ms, rttMs | null] (src/common/tunnel-protocol.ts ProbeSample). */
export type ProbeSample = [number, number, number | null];
export interface ProbeEvent { migrationId: string; vmId: string; agent: string; periodMs: number; samples: ProbeSample[]; final?: boolean }
export interface RadarData { periodMs: number; agent: string; final: boolean; samples: Map<number, ProbeSample> }

/** Samples a radar keeps (a minute at 20 ms), as the controller's tail. */
export const RADAR_SAMPLES = 3000;
/** Migrations the page keeps (the history's length). */
export const MIGRATIONS_KEPT = 200;

export interface Model {
  user?: { name: string; role: string; expiresAt: string };
  hosts: Host[];
  vms: Vm[];
  migrations: Map<string, Migration>;
  radars: Map<string, RadarData>;
  stream: 'connecting' | 'live' | 'reconnecting' | 'closed';
  selected?: string;
}

export function emptyModel(): Model {
  return { hosts: [], vms: [], migrations: new Map(), radars: new Map(), stream: 'connecting' };
}

export function putMigration(m: Model, rec: Migration): void {
  const old = m.migrations.get(rec.id);
  // A record read after a newer one (two fetches crossing) must not roll the page back.
  if (old && Date.parse(old.updatedAt) > Date.parse(rec.updatedAt)) return;
  m.migrations.set(rec.id, { ...rec, transitions: rec.transitions ?? old?.transitions });
  if (m.migrations.size > MIGRATIONS_KEPT) {
    const oldest = [...m.migrations.values()].filter((x) => x.terminal).sort((a, b) => Date.parse(a.createdAt) - Date.parse(b.createdAt))[0];
    if (oldest) m.migrations.delete(oldest.id);
  }
}

export function addProbes(m: Model, ev: ProbeEvent): RadarData {
  let r = m.radars.get(ev.migrationId);
  if (!r) {
    r = { periodMs: ev.periodMs, agent: ev.agent, final: false, samples: new Map() };
    m.radars.set(ev.migrationId, r);
  }
  // Keyed by send time: a probe reported again (its reply came late) replaces its first report.
  for (const s of ev.samples) r.samples.set(s[1], s);
  if (r.samples.size > RADAR_SAMPLES) {
    const keys = [...r.samples.keys()].sort((a, b) => a - b);
    for (const k of keys.slice(0, r.samples.size - RADAR_SAMPLES)) r.samples.delete(k);
  }
  if (ev.final) r.final = true;
  return r;
}

export const inFlight = (m: Model): Migration[] => [...m.migrations.values()].filter((x) => !x.terminal).sort((a, b) => Date.parse(a.createdAt) - Date.parse(b.createdAt));
export const history = (m: Model): Migration[] => [...m.migrations.values()].filter((x) => x.terminal).sort((a, b) => Date.parse(b.createdAt) - Date.parse(a.createdAt));

/** The states of a live migration in the order the controller goes through them
 *  (docs/design.md#live-migration); a cold one's are its own. */
export const LIVE_STATES = ['prechecking', 'reserved', 'authorizing', 'provisioning', 'preparing', 'precopy', 'stopcopy', 'switchover', 'committing', 'activating', 'cleanup', 'completed'];
