// Hotspot detection and mitigation after SandPiper (docs/monitoring.md "Hotspots"), pure:
// - the detector: a host's resource is hot when its use was above its threshold in at least k
//   of the last n observations;
// - the migration manager: on each hot host, the VMs with the highest volume-to-size ratio move
//   first (the most relief per byte copied), each to the least loaded host (lowest volume after
//   the move) that passes admission's pre-checks and stays below every threshold, until the host
//   is below its thresholds. With "follow the moon" on, night sites are preferred first.
import { RESOURCES, type MonitoringOptions, type Resource } from './options.ts';
import { addUse, capacityOf, feasible, moonRank, overThresholds, r3, roundShares, sharesOf, volume, type Fleet, type PlannedMove, type Shares } from './model.ts';
import type { Hold } from '../store.ts';

/** One observation of a host: its shares at `at`. */
export interface HostObservation { at: number; shares: Shares }

export interface Hotspot {
  hostId: string;
  /** Each hot resource: how many of the window's observations were over, and the newest share. */
  resources: { resource: Resource; over: number; of: number; latest: number; threshold: number }[];
  /** When the k-th observation over a threshold arrived: the moment the hotspot was detected. */
  detectedAt: number;
}

/** Hotspots among hosts, from each host's observations (any order; the newest n count). */
export function detectHotspots(observations: ReadonlyMap<string, readonly HostObservation[]>, o: Pick<MonitoringOptions, 'thresholds' | 'sustain'>): Hotspot[] {
  const out: Hotspot[] = [];
  const { k, n } = o.sustain;
  for (const [hostId, obs] of observations) {
    const win = [...obs].sort((a, b) => a.at - b.at).slice(-n);
    const resources: Hotspot['resources'] = [];
    let detectedAt = -Infinity;
    for (const r of RESOURCES) {
      const t = o.thresholds[r];
      const overs = win.filter((x) => x.shares[r] > t);
      if (overs.length >= k) {
        resources.push({ resource: r, over: overs.length, of: win.length, latest: r3(win[win.length - 1]!.shares[r]), threshold: t });
        detectedAt = Math.max(detectedAt, overs[k - 1]!.at);
      }
    }
    if (resources.length) out.push({ hostId, resources, detectedAt });
  }
  // The worst first: the most over its threshold on its newest observation.
  const excess = (h: Hotspot) => Math.max(...h.resources.map((x) => x.latest - x.threshold));
  return out.sort((a, b) => excess(b) - excess(a) || a.hostId.localeCompare(b.hostId));
}

export interface HotspotPlan {
  hotspots: Hotspot[];
  moves: PlannedMove[];
  /** Hot hosts the plan cannot bring below their thresholds, and why. */
  unresolved: { hostId: string; reason: string; after: Shares }[];
}

/** What moves where to relieve `hotspots` (docs/monitoring.md "Hotspots"). */
export function planHotspots(fleet: Fleet, hotspots: readonly Hotspot[], o: MonitoringOptions, now: number): HotspotPlan {
  const hot = new Set(hotspots.map((h) => h.hostId));
  const use = new Map([...fleet.hostUse].map(([id, u]) => [id, { ...u }]));
  const invOf = new Map(fleet.hosts.map((h) => [h.inventory.hostId, h]));
  const planned: (Hold & { vmId: string })[] = [];
  const moves: PlannedMove[] = [];
  const unresolved: HotspotPlan['unresolved'] = [];
  for (const hs of hotspots) {
    const src = invOf.get(hs.hostId);
    const srcUse = use.get(hs.hostId);
    if (!src || !srcUse) { unresolved.push({ hostId: hs.hostId, reason: 'host not known or not measured', after: { cpu: 0, memory: 0, net: 0 } }); continue; }
    const srcCap = capacityOf(src.inventory, o);
    // SandPiper's ranking: volume over size, largest first.
    const candidates = src.inventory.vms
      .filter((v) => v.state === 'running' && !fleet.inFlight.has(v.vmId) && fleet.vmLoad.has(v.vmId))
      .map((v) => {
        const vu = fleet.vmLoad.get(v.vmId)!.use;
        const vol = volume(sharesOf(vu, srcCap));
        return { vm: v, use: vu, volume: vol, vsr: vol / Math.max(1, v.memoryMb) };
      })
      .sort((a, b) => b.vsr - a.vsr || a.vm.vmId.localeCompare(b.vm.vmId));
    let reason = candidates.length ? 'no feasible destination below the thresholds' : 'no running VM with measured use';
    for (const c of candidates) {
      if (overThresholds(sharesOf(use.get(hs.hostId)!, srcCap), o.thresholds).length === 0) break;
      const dests = fleet.hosts
        .filter((h) => h.connected && h.inventory.hostId !== hs.hostId && !hot.has(h.inventory.hostId) && use.has(h.inventory.hostId))
        .map((h) => {
          const cap = capacityOf(h.inventory, o);
          const after = sharesOf(addUse(use.get(h.inventory.hostId)!, c.use), cap);
          return { h, after, volume: volume(after), moon: moonRank(h.inventory.site, now, o) };
        })
        .filter((d) => overThresholds(d.after, o.thresholds).length === 0)
        .sort((a, b) => a.moon - b.moon || a.volume - b.volume || a.h.inventory.hostId.localeCompare(b.h.inventory.hostId));
      for (const d of dests) {
        const f = feasible(fleet, c.vm.vmId, d.h.inventory.hostId, planned);
        if (!f.ok) continue;
        planned.push(f.hold);
        use.set(hs.hostId, addUse(use.get(hs.hostId)!, c.use, -1));
        use.set(d.h.inventory.hostId, addUse(use.get(d.h.inventory.hostId)!, c.use));
        moves.push({
          vmId: c.vm.vmId, from: hs.hostId, to: d.h.inventory.hostId,
          reason: `hotspot on ${hs.hostId} (${hs.resources.map((x) => x.resource).join(', ')}); least loaded feasible host${o.followTheMoon ? ', night sites first' : ''}`,
          volume: r3(c.volume), sizeMb: c.vm.memoryMb, vsr: Math.round(c.vsr * 1e6) / 1e6,
        });
        break;
      }
    }
    const after = sharesOf(use.get(hs.hostId)!, srcCap);
    if (overThresholds(after, o.thresholds).length) unresolved.push({ hostId: hs.hostId, reason, after: roundShares(after) });
  }
  return { hotspots: [...hotspots], moves, unresolved };
}
