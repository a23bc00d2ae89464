// Placement: which host a VM should move to when the request names none (docs/fleet.md
// "Placement"). Pure functions over agent inventories, capacity holds and the controller's
// maintenance set, after Nova's filter scheduler: filters refuse hosts, each with a reason;
// weighers score the hosts left; the best score wins. The decision (candidates, refused hosts and
// why, scores) is recorded with the migration.
import type { HostInventory, VmInfo } from '../../common/agent-protocol.ts';
import { hostUsage, versionCompatible, type HostUsage, type Resources } from '../capacity.ts';
import type { Hold } from '../store.ts';

/** A lightpath (or the network between two sites) the controller knows: its bandwidth, whether
 *  it can be had now, and a distance (hops, or ms) used by the network weigher. */
export interface SiteLink {
  id?: string;
  a: string;
  b: string;
  mbps: number;
  available?: boolean;
  distance?: number;
}

/** A VM's placement labels, from its spec's `extra.placement` (docs/fleet.md "Labels"). */
export interface PlacementLabels {
  /** VMs of one affinity group stay together: a host already running a member is required. */
  affinityGroup?: string;
  /** VMs of one anti-affinity group never share a host. */
  antiAffinityGroup?: string;
  /** 'shared': only hosts on shared storage (the disks are not copied). */
  storage?: 'shared' | 'any';
  /** Expected dirty rate (Mbit/s) when no measurement is known. */
  dirtyMbps?: number;
  /** Evacuation order 'priority': higher first. */
  priority?: number;
}

export function labelsOf(vm: Pick<VmInfo, 'spec'>): PlacementLabels {
  const p = (vm.spec?.extra as { placement?: unknown } | undefined)?.placement;
  if (!p || typeof p !== 'object') return {};
  const o = p as Record<string, unknown>;
  const s = (k: string) => (typeof o[k] === 'string' && (o[k] as string).length > 0 ? (o[k] as string) : undefined);
  const n = (k: string) => (typeof o[k] === 'number' && Number.isFinite(o[k]) && (o[k] as number) >= 0 ? (o[k] as number) : undefined);
  const out: PlacementLabels = {};
  const ag = s('affinityGroup'); if (ag) out.affinityGroup = ag;
  const aag = s('antiAffinityGroup'); if (aag) out.antiAffinityGroup = aag;
  if (o.storage === 'shared' || o.storage === 'any') out.storage = o.storage;
  const d = n('dirtyMbps'); if (d !== undefined) out.dirtyMbps = d;
  const pr = n('priority'); if (pr !== undefined) out.priority = pr;
  return out;
}

export interface PlacementInput {
  vm: VmInfo;
  source: HostInventory;
  mode: 'live' | 'cold' | 'auto';
  hosts: { inventory: HostInventory; connected: boolean }[];
  holds: (Hold & { vmId?: string })[];
  /** Hosts in maintenance: nothing new is placed there. */
  maintenance: ReadonlySet<string>;
  /** Only hosts at these sites (absent or empty: any site). */
  toSites?: readonly string[];
  links?: readonly SiteLink[];
  /** Capacity already promised to other VMs of the same plan (an evacuation), by host. */
  planned?: ReadonlyMap<string, Resources & { groups?: string[] }>;
  /** The VM's dirty rate (Mbit/s), measured or from its labels; 0 when unknown. */
  dirtyMbps?: number;
  weights?: Partial<PlacementWeights>;
  /** Each host's usage (capacity.ts hostUsage with its holds) when the caller has it already
   *  (an evacuation places many VMs against the same hosts); computed here otherwise. */
  usage?: Map<string, HostUsage>;
}

/** A host's usage with its holds, from `input.usage` or computed once and kept there. */
function usageOf(input: PlacementInput, inv: HostInventory): HostUsage {
  input.usage ??= new Map();
  let u = input.usage.get(inv.hostId);
  if (!u) { u = hostUsage(inv, input.holds.filter((x) => x.hostId === inv.hostId)); input.usage.set(inv.hostId, u); }
  return u;
}

export interface PlacementWeights { free: number; network: number; cost: number }
export const PLACEMENT_WEIGHTS: PlacementWeights = { free: 1, network: 1, cost: 1 };
/** The bandwidth assumed between two sites no link is configured for (lightpathMbps' default). */
export const DEFAULT_LINK_MBPS = 1000;

/** Why a filter refused a host: a stable reason code and what it saw. */
export interface Refusal { hostId: string; reason: string; details?: Record<string, unknown> }

export interface Candidate {
  hostId: string;
  site?: string;
  score: number;
  weights: { free: number; network: number; cost: number };
  /** Expected seconds to copy the VM's memory over the link at its dirty rate (Infinity: never converges). */
  expectedSeconds: number;
  path: 'live' | 'cold';
}

export interface PlacementDecision {
  vmId: string;
  chosen?: string;
  candidates: Candidate[];
  refused: Refusal[];
  dirtyMbps: number;
  weights: PlacementWeights;
}

/** The link between two sites: the configured one (the fastest available if several), else the
 *  default; the same site needs none. */
export function linkBetween(links: readonly SiteLink[], a: string | undefined, b: string | undefined): SiteLink | undefined {
  if (a === undefined || b === undefined || a === b) return undefined;
  const found = links.filter((l) => (l.a === a && l.b === b) || (l.a === b && l.b === a)).sort((x, y) => Number(y.available !== false) - Number(x.available !== false) || y.mbps - x.mbps);
  return found[0] ?? { id: linkId(a, b), a, b, mbps: DEFAULT_LINK_MBPS };
}

export function linkId(a: string, b: string): string {
  return a < b ? `${a}~${b}` : `${b}~${a}`;
}

/** Expected copy time (s) of a pre-copy: memory ÷ (bandwidth − dirty rate), the sum of the
 *  geometric series of passes; Infinity when the VM dirties as fast as the link sends. */
export function expectedCopySeconds(memoryMb: number, dirtyMbps: number, mbps: number): number {
  const bits = memoryMb * 8 * 1.048576; // MiB -> Mbit
  return dirtyMbps >= mbps ? Infinity : bits / (mbps - dirtyMbps);
}

/** Group members (affinity or anti-affinity) by host, from what the hosts report. */
function groupHosts(hosts: PlacementInput['hosts'], vmId: string, key: 'affinityGroup' | 'antiAffinityGroup', group: string): Set<string> {
  const out = new Set<string>();
  for (const h of hosts) {
    for (const v of h.inventory.vms) {
      if (v.vmId !== vmId && v.state !== 'incoming' && labelsOf(v)[key] === group) out.add(h.inventory.hostId);
    }
  }
  return out;
}

/** The filters, in order; the first that refuses a host names the reason. Returns the hosts left
 *  with the path a move there would take. */
export function filterHosts(input: PlacementInput): { passed: { inv: HostInventory; path: 'live' | 'cold' }[]; refused: Refusal[] } {
  const { vm, source } = input;
  const labels = labelsOf(vm);
  const refused: Refusal[] = [];
  const passed: { inv: HostInventory; path: 'live' | 'cold' }[] = [];
  const sites = input.toSites?.length ? new Set(input.toSites) : undefined;
  const anti = labels.antiAffinityGroup ? groupHosts(input.hosts, vm.vmId, 'antiAffinityGroup', labels.antiAffinityGroup) : undefined;
  const aff = labels.affinityGroup ? groupHosts(input.hosts, vm.vmId, 'affinityGroup', labels.affinityGroup) : undefined;
  aff?.delete(source.hostId);
  const copiesDisksFor = (dest: HostInventory) => !(source.sharedStorage && dest.sharedStorage) || input.mode !== 'live';
  for (const h of input.hosts) {
    const dest = h.inventory;
    const id = dest.hostId;
    const refuse = (reason: string, details?: Record<string, unknown>) => { refused.push({ hostId: id, reason, ...(details ? { details } : {}) }); };
    if (id === source.hostId) { refuse('source'); continue; }
    if (!h.connected) { refuse('not-connected'); continue; }
    if (input.maintenance.has(id)) { refuse('maintenance'); continue; }
    if (sites && !sites.has(dest.site ?? '')) { refuse('site-not-requested', { site: dest.site ?? null, toSites: [...sites] }); continue; }
    if (dest.hypervisor.type !== source.hypervisor.type) { refuse('hypervisor-mismatch', { source: source.hypervisor.type, destination: dest.hypervisor.type }); continue; }
    if (!versionCompatible(source.hypervisor.version, dest.hypervisor.version)) { refuse('hypervisor-older', { source: source.hypervisor.version, destination: dest.hypervisor.version }); continue; }
    let path: 'live' | 'cold' = input.mode === 'cold' ? 'cold' : 'live';
    if (path === 'live') {
      const have = new Set(dest.cpu.features);
      const missing = source.cpu.features.filter((f) => !have.has(f));
      if (missing.length > 0) {
        if (input.mode === 'live') { refuse('cpu-incompatible', { missing: missing.slice(0, 10), missingCount: missing.length }); continue; }
        path = 'cold';
      }
    }
    if (labels.storage === 'shared' && !dest.sharedStorage) { refuse('storage-unreachable', { storage: 'shared' }); continue; }
    const usage = usageOf(input, dest);
    const planned = input.planned?.get(id);
    const need: Resources = { vcpus: vm.vcpus, memoryMb: vm.memoryMb, diskGb: copiesDisksFor(dest) ? vm.diskGb : 0 };
    const free: Resources = {
      vcpus: usage.available.vcpus - (planned?.vcpus ?? 0),
      memoryMb: usage.available.memoryMb - (planned?.memoryMb ?? 0),
      diskGb: usage.available.diskGb - (planned?.diskGb ?? 0),
    };
    const short = (['memoryMb', 'vcpus', 'diskGb'] as const).find((k) => free[k] < need[k]);
    if (short) { refuse('insufficient-capacity', { resource: short, need: need[short], available: free[short] }); continue; }
    if (anti && labels.antiAffinityGroup && (anti.has(id) || planned?.groups?.includes(`anti:${labels.antiAffinityGroup}`))) { refuse('anti-affinity', { group: labels.antiAffinityGroup }); continue; }
    if (aff && aff.size > 0 && labels.affinityGroup && !aff.has(id) && !planned?.groups?.includes(`aff:${labels.affinityGroup}`)) { refuse('affinity', { group: labels.affinityGroup, members: [...aff] }); continue; }
    passed.push({ inv: dest, path });
  }
  return { passed, refused };
}

/** Filter, weigh and choose. `chosen` is absent when no host passes every filter. */
export function placeVm(input: PlacementInput): PlacementDecision {
  const weights = { ...PLACEMENT_WEIGHTS, ...(input.weights ?? {}) };
  const dirty = input.dirtyMbps ?? labelsOf(input.vm).dirtyMbps ?? 0;
  const links = input.links ?? [];
  const { passed, refused } = filterHosts(input);
  const maxMbps = Math.max(DEFAULT_LINK_MBPS, ...links.filter((l) => l.available !== false).map((l) => l.mbps));
  const raw = passed.map(({ inv, path }) => {
    const usage = usageOf(input, inv);
    const planned = input.planned?.get(inv.hostId);
    const freeAfter = (usage.available.memoryMb - (planned?.memoryMb ?? 0) - input.vm.memoryMb) / Math.max(1, usage.totals.memoryMb);
    const link = linkBetween(links, input.source.site, inv.site);
    // The same site: no lightpath needed, the best network there is.
    const mbps = link ? (link.available === false ? 0 : link.mbps) : maxMbps;
    const distance = link?.distance ?? (link ? 1 : 0);
    const network = mbps <= 0 ? 0 : (mbps / maxMbps) / (1 + distance);
    const seconds = mbps <= 0 ? Infinity : path === 'cold' ? expectedCopySeconds(input.vm.memoryMb, 0, mbps) : expectedCopySeconds(input.vm.memoryMb, dirty, mbps);
    return { inv, path, freeAfter, network, seconds };
  });
  const best = Math.min(...raw.map((r) => r.seconds).filter(Number.isFinite), Infinity);
  const candidates: Candidate[] = raw.map((r) => {
    const cost = Number.isFinite(r.seconds) && Number.isFinite(best) ? (best === 0 ? 1 : best / r.seconds) : 0;
    const w = { free: round(r.freeAfter), network: round(r.network), cost: round(cost) };
    return {
      hostId: r.inv.hostId, ...(r.inv.site !== undefined ? { site: r.inv.site } : {}), path: r.path,
      score: round(weights.free * w.free + weights.network * w.network + weights.cost * w.cost),
      weights: w, expectedSeconds: Number.isFinite(r.seconds) ? round(r.seconds) : Infinity,
    };
  }).sort((a, b) => b.score - a.score || a.hostId.localeCompare(b.hostId));
  const chosen = candidates[0]?.hostId;
  return { vmId: input.vm.vmId, ...(chosen !== undefined ? { chosen } : {}), candidates, refused, dirtyMbps: dirty, weights };
}

/** The decision as stored and shown (Infinity is not JSON). */
export function decisionRecord(d: PlacementDecision): Record<string, unknown> {
  return { ...d, candidates: d.candidates.map((c) => ({ ...c, expectedSeconds: Number.isFinite(c.expectedSeconds) ? c.expectedSeconds : null })) };
}

function round(x: number): number {
  return Math.round(x * 1000) / 1000;
}
