// Consolidation (docs/monitoring.md "Consolidation"), pure: while the fleet's load is low, empty
// the least loaded hosts by packing their VMs onto the others (the most loaded host that stays
// under `packTo` of every resource and passes admission's pre-checks: best fit), and report the
// emptied hosts as ones that can be powered down. A host is emptied only if every VM on it finds
// a place; a host that receives VMs is not emptied afterwards. With "follow the moon" on, hosts
// at day sites are emptied first and night sites are preferred as destinations.
import type { MonitoringOptions } from './options.ts';
import { addUse, capacityOf, feasible, moonRank, r3, sharesOf, volume, type Fleet, type PlannedMove, type Use } from './model.ts';
import type { Hold } from '../store.ts';

export interface ConsolidationPlan {
  /** The fleet's mean use: per measured connected host, the larger of its CPU and memory shares. */
  fleetLoad: number;
  /** Why nothing is planned, when nothing is. */
  reason?: string;
  moves: PlannedMove[];
  /** Hosts that hold no VM once the moves are done (or hold none now). */
  powerDown: string[];
}

export function planConsolidation(fleet: Fleet, o: MonitoringOptions, now: number): ConsolidationPlan {
  const measured = fleet.hosts.filter((h) => h.connected && fleet.hostUse.has(h.inventory.hostId));
  const shares = (id: string, u: Use) => sharesOf(u, capacityOf(measured.find((h) => h.inventory.hostId === id)!.inventory, o));
  const loads = measured.map((h) => { const s = shares(h.inventory.hostId, fleet.hostUse.get(h.inventory.hostId)!); return Math.max(s.cpu, s.memory); });
  const fleetLoad = loads.length ? r3(loads.reduce((a, b) => a + b, 0) / loads.length) : 0;
  if (measured.length < 2) return { fleetLoad, reason: 'fewer than two measured hosts', moves: [], powerDown: [] };
  if (fleetLoad >= o.consolidateBelow) return { fleetLoad, reason: `fleet load ${fleetLoad} is not below consolidateBelow ${o.consolidateBelow}`, moves: [], powerDown: [] };

  const use = new Map(measured.map((h) => [h.inventory.hostId, { ...fleet.hostUse.get(h.inventory.hostId)! }]));
  const heldAt = new Set(fleet.holds.map((h) => h.hostId));
  const receivers = new Set<string>();
  const emptied = new Set<string>();
  const planned: (Hold & { vmId: string })[] = [];
  const moves: PlannedMove[] = [];
  const powerDown: string[] = [];
  // Day sites first (follow the moon), then the least loaded.
  const order = [...measured].sort((a, b) =>
    moonRank(b.inventory.site, now, o) - moonRank(a.inventory.site, now, o)
    || volume(shares(a.inventory.hostId, use.get(a.inventory.hostId)!)) - volume(shares(b.inventory.hostId, use.get(b.inventory.hostId)!))
    || a.inventory.hostId.localeCompare(b.inventory.hostId));
  for (const h of order) {
    const id = h.inventory.hostId;
    if (receivers.has(id) || heldAt.has(id)) continue;
    const vms = h.inventory.vms.filter((v) => v.state !== 'incoming');
    if (vms.length === 0) { powerDown.push(id); emptied.add(id); continue; }
    // Every VM must be running, measured and free to move, or the host stays up.
    if (vms.some((v) => v.state !== 'running' || fleet.inFlight.has(v.vmId) || !fleet.vmLoad.has(v.vmId))) continue;
    const trialUse = new Map([...use].map(([k, u]) => [k, { ...u }]));
    const trialHolds = [...planned];
    const trialMoves: PlannedMove[] = [];
    const trialReceivers = new Set<string>();
    const biggestFirst = [...vms].sort((a, b) => b.memoryMb - a.memoryMb || a.vmId.localeCompare(b.vmId));
    let ok = true;
    for (const vm of biggestFirst) {
      const vu = fleet.vmLoad.get(vm.vmId)!.use;
      const dests = measured
        .filter((d) => d.inventory.hostId !== id && !emptied.has(d.inventory.hostId))
        .map((d) => {
          const after = sharesOf(addUse(trialUse.get(d.inventory.hostId)!, vu), capacityOf(d.inventory, o));
          return { d, after, volume: volume(after), moon: moonRank(d.inventory.site, now, o) };
        })
        .filter((x) => x.after.cpu <= o.packTo && x.after.memory <= o.packTo && x.after.net <= o.packTo)
        // Best fit: the fullest host that still takes it.
        .sort((a, b) => a.moon - b.moon || b.volume - a.volume || a.d.inventory.hostId.localeCompare(b.d.inventory.hostId));
      const pick = dests.find((x) => feasible(fleet, vm.vmId, x.d.inventory.hostId, trialHolds).ok);
      if (!pick) { ok = false; break; }
      const f = feasible(fleet, vm.vmId, pick.d.inventory.hostId, trialHolds);
      if (f.ok) trialHolds.push(f.hold);
      const to = pick.d.inventory.hostId;
      trialUse.set(to, addUse(trialUse.get(to)!, vu));
      trialUse.set(id, addUse(trialUse.get(id)!, vu, -1));
      trialReceivers.add(to);
      const vol = volume(sharesOf(vu, capacityOf(h.inventory, o)));
      trialMoves.push({ vmId: vm.vmId, from: id, to, reason: `consolidation: empty ${id} (fleet load ${fleetLoad})${o.followTheMoon ? ', night sites first' : ''}`, volume: r3(vol), sizeMb: vm.memoryMb, vsr: Math.round((vol / Math.max(1, vm.memoryMb)) * 1e6) / 1e6 });
    }
    if (!ok) continue;
    for (const [k, u] of trialUse) use.set(k, u);
    planned.splice(0, planned.length, ...trialHolds);
    moves.push(...trialMoves);
    for (const r of trialReceivers) receivers.add(r);
    emptied.add(id);
    powerDown.push(id);
  }
  return { fleetLoad, ...(moves.length || powerDown.length ? {} : { reason: 'no host can be emptied within packTo' }), moves, powerDown };
}
