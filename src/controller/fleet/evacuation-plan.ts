// The evacuation scheduler (docs/fleet.md "The plan"), a pure function: given the VMs to move
// (size, dirty rate, the hosts placement let them go to), the receiving hosts' free capacity, the
// lightpaths between sites and the concurrency limits, it picks each VM's destination and start
// time and returns the plan as ordered batches with their bandwidth bookings.
//
// Model: a lightpath with perLightpath slots gives each migration on it a fixed share
// (mbps ÷ perLightpath), which is what is booked in the broker's calendar, so the bookings of one
// lightpath never exceed it. A pre-copy at rate r of a VM dirtying d takes memory ÷ (r − d)
// (placement.ts expectedCopySeconds); a cold move copies memory and disk at r. VMs are taken in
// the requested order (smallest and least dirty first, or by priority) and each goes, among its
// candidates with room left, where it would finish first (list scheduling with earliest finish
// time), never above perSourceHost outbound, perDestinationHost inbound or perLightpath per link.
import { DEFAULT_LINK_MBPS, expectedCopySeconds, linkId, type SiteLink } from './placement.ts';
import type { Resources } from '../capacity.ts';

export interface PlanVm {
  vmId: string;
  sourceHostId: string;
  memoryMb: number;
  vcpus: number;
  diskGb: number;
  dirtyMbps: number;
  priority?: number;
  /** Hosts the VM may go to, best placement score first, with the path a move there takes. */
  candidates: { hostId: string; path: 'live' | 'cold' }[];
}

export interface PlanHost { hostId: string; site: string; free: Resources }

export interface PlanLimits { perSourceHost: number; perDestinationHost: number; perLightpath: number }
export const DEFAULT_LIMITS: PlanLimits = { perSourceHost: 2, perDestinationHost: 2, perLightpath: 4 };

export interface PlanInput {
  vms: PlanVm[];
  /** Every host a VM leaves from or may go to. */
  hosts: PlanHost[];
  links: readonly SiteLink[];
  limits: PlanLimits;
  order: 'smallest-first' | 'priority';
  allowCold: boolean;
  /** Bandwidth within one site (no lightpath), Mbit/s. */
  localMbps?: number;
}

export interface PlanItem {
  seq: number;
  vmId: string;
  sourceHostId: string;
  destinationHostId: string;
  link: string;
  path: 'live' | 'cold';
  rateMbps: number;
  /** Seconds from the plan's start. */
  start: number;
  end: number;
  batch: number;
}

export interface PlanBooking { link: string; mbps: number; start: number; end: number }
export interface PlanBatch { index: number; start: number; vmIds: string[]; bookings: PlanBooking[] }

export interface Plan {
  items: PlanItem[];
  unplaced: { vmId: string; reason: string }[];
  batches: PlanBatch[];
  makespan: number;
  bound: { bytesBound: number; longest: number; bound: number };
}

const INTRA = (site: string) => `${site}~${site}`;

interface ResolvedLink { id: string; mbps: number }

function resolveLink(links: readonly SiteLink[], a: string, b: string, localMbps: number): ResolvedLink {
  if (a === b) return { id: INTRA(a), mbps: localMbps };
  const found = links.filter((l) => l.available !== false && ((l.a === a && l.b === b) || (l.a === b && l.b === a))).sort((x, y) => y.mbps - x.mbps)[0];
  return found ? { id: found.id ?? linkId(a, b), mbps: found.mbps } : { id: linkId(a, b), mbps: DEFAULT_LINK_MBPS };
}

/** Seconds a move takes at `mbps`: a live pre-copy at the VM's dirty rate, a cold copy of memory
 *  and disk; Infinity when a live copy never converges. */
export function moveSeconds(vm: Pick<PlanVm, 'memoryMb' | 'diskGb' | 'dirtyMbps'>, path: 'live' | 'cold', mbps: number): number {
  if (path === 'cold') return expectedCopySeconds(vm.memoryMb + vm.diskGb * 1024, 0, mbps);
  return expectedCopySeconds(vm.memoryMb, vm.dirtyMbps, mbps);
}

/** The order VMs are planned (and started) in. */
export function orderVms(vms: readonly PlanVm[], order: PlanInput['order']): PlanVm[] {
  const small = (a: PlanVm, b: PlanVm) => a.memoryMb - b.memoryMb || a.dirtyMbps - b.dirtyMbps || a.vmId.localeCompare(b.vmId);
  return [...vms].sort(order === 'priority' ? (a, b) => (b.priority ?? 0) - (a.priority ?? 0) || small(a, b) : small);
}

/** k identical slots: when each is free next. */
class Slots {
  private readonly free: number[];
  constructor(k: number) { this.free = new Array<number>(Math.max(1, k)).fill(0); }
  earliest(): number { return Math.min(...this.free); }
  take(start: number, end: number): void {
    // The slot that became free last before `start` (best fit keeps earlier slots for others).
    let best = -1;
    for (let i = 0; i < this.free.length; i++) if (this.free[i]! <= start + 1e-9 && (best < 0 || this.free[i]! > this.free[best]!)) best = i;
    this.free[best < 0 ? this.free.indexOf(Math.min(...this.free)) : best] = end;
  }
}

export function planEvacuation(input: PlanInput): Plan {
  const localMbps = input.localMbps ?? Math.max(DEFAULT_LINK_MBPS, ...input.links.map((l) => l.mbps));
  const hosts = new Map(input.hosts.map((h) => [h.hostId, { ...h, free: { ...h.free } }]));
  const lim = input.limits;
  const linkSlots = new Map<string, Slots>();
  const srcSlots = new Map<string, Slots>();
  const dstSlots = new Map<string, Slots>();
  const slots = (m: Map<string, Slots>, k: string, n: number) => { let s = m.get(k); if (!s) { s = new Slots(n); m.set(k, s); } return s; };
  const items: PlanItem[] = [];
  const unplaced: Plan['unplaced'] = [];
  let longest = 0;
  let totalMb = 0;
  const receivingLinks = new Map<string, number>();
  for (const vm of orderVms(input.vms, input.order)) {
    const src = hosts.get(vm.sourceHostId);
    if (!src) { unplaced.push({ vmId: vm.vmId, reason: 'source-unknown' }); continue; }
    let best: { item: Omit<PlanItem, 'seq' | 'batch'>; rank: number } | undefined;
    let vmLongest = Infinity;
    let why = vm.candidates.length ? 'no-capacity-left' : 'no-feasible-host';
    vm.candidates.forEach((c, rank) => {
      const dst = hosts.get(c.hostId);
      if (!dst) return;
      const link = resolveLink(input.links, src.site, dst.site, localMbps);
      receivingLinks.set(link.id, link.mbps);
      const need = { vcpus: vm.vcpus, memoryMb: vm.memoryMb, diskGb: vm.diskGb };
      if (dst.free.memoryMb < need.memoryMb || dst.free.vcpus < need.vcpus || dst.free.diskGb < need.diskGb) return;
      const rate = link.mbps / Math.max(1, lim.perLightpath);
      let path = c.path;
      let secs = moveSeconds(vm, path, rate);
      if (!Number.isFinite(secs)) {
        if (!input.allowCold) { why = 'does-not-converge'; return; }
        path = 'cold';
        secs = moveSeconds(vm, 'cold', rate);
      }
      vmLongest = Math.min(vmLongest, moveSeconds(vm, path, link.mbps));
      const start = Math.max(slots(linkSlots, link.id, lim.perLightpath).earliest(), slots(srcSlots, src.hostId, lim.perSourceHost).earliest(), slots(dstSlots, dst.hostId, lim.perDestinationHost).earliest());
      const end = start + secs;
      if (!best || end < best.item.end - 1e-9) {
        best = { rank, item: { vmId: vm.vmId, sourceHostId: src.hostId, destinationHostId: dst.hostId, link: link.id, path, rateMbps: round(rate), start, end } };
      }
    });
    if (!best) { unplaced.push({ vmId: vm.vmId, reason: why }); continue; }
    const it = (best as { item: Omit<PlanItem, 'seq' | 'batch'> }).item;
    const dst = hosts.get(it.destinationHostId)!;
    dst.free.memoryMb -= vm.memoryMb; dst.free.vcpus -= vm.vcpus; dst.free.diskGb -= vm.diskGb;
    slots(linkSlots, it.link, lim.perLightpath).take(it.start, it.end);
    slots(srcSlots, it.sourceHostId, lim.perSourceHost).take(it.start, it.end);
    slots(dstSlots, it.destinationHostId, lim.perDestinationHost).take(it.start, it.end);
    longest = Math.max(longest, vmLongest);
    totalMb += it.path === 'cold' ? vm.memoryMb + vm.diskGb * 1024 : vm.memoryMb;
    items.push({ ...it, seq: 0, batch: 0 });
  }
  items.sort((a, b) => a.start - b.start || a.vmId.localeCompare(b.vmId));
  const batches: PlanBatch[] = [];
  let batchStart = -Infinity;
  for (const it of items) {
    let b = batches.at(-1);
    if (!b || Math.abs(batchStart - it.start) > 1e-6) { batchStart = it.start; b = { index: batches.length, start: round(it.start), vmIds: [], bookings: [] }; batches.push(b); }
    it.batch = b.index;
    b.vmIds.push(it.vmId);
    const bk = b.bookings.find((x) => x.link === it.link);
    if (bk) { bk.mbps = round(bk.mbps + it.rateMbps); bk.end = Math.max(bk.end, round(it.end)); } else b.bookings.push({ link: it.link, mbps: it.rateMbps, start: round(it.start), end: round(it.end) });
  }
  items.forEach((it, i) => { it.seq = i; it.start = round(it.start); it.end = round(it.end); });
  const makespan = items.reduce((m, it) => Math.max(m, it.end), 0);
  const totalMbps = [...receivingLinks.values()].reduce((s, x) => s + x, 0);
  const bytesBound = totalMbps > 0 ? (totalMb * 8 * 1.048576) / totalMbps : 0;
  return { items, unplaced, batches, makespan: round(makespan), bound: { bytesBound: round(bytesBound), longest: round(longest), bound: round(Math.max(bytesBound, longest)) } };
}

/** Baseline: one migration at a time, each with its whole lightpath (the plan's destinations). */
export function oneAtATimeMakespan(plan: Plan, vms: ReadonlyMap<string, PlanVm>, perLightpath: number): number {
  let t = 0;
  for (const it of plan.items) t += moveSeconds(vms.get(it.vmId)!, it.path, it.rateMbps * perLightpath);
  return round(t);
}

/** Baseline: every migration at once, each lightpath shared equally by those on it (the plan's
 *  destinations). A VM whose share is below its dirty rate makes no progress until others end;
 *  `stalled` counts those that never end. */
export function allAtOnceMakespan(plan: Plan, vms: ReadonlyMap<string, PlanVm>, perLightpath: number): { makespan: number; stalled: number } {
  const byLink = new Map<string, { mbps: number; left: { bits: number; dirty: number }[] }>();
  for (const it of plan.items) {
    const vm = vms.get(it.vmId)!;
    const l = byLink.get(it.link) ?? { mbps: it.rateMbps * perLightpath, left: [] };
    const mb = it.path === 'cold' ? vm.memoryMb + vm.diskGb * 1024 : vm.memoryMb;
    l.left.push({ bits: mb * 8 * 1.048576, dirty: it.path === 'cold' ? 0 : vm.dirtyMbps });
    byLink.set(it.link, l);
  }
  let makespan = 0;
  let stalled = 0;
  for (const l of byLink.values()) {
    let t = 0;
    let active = l.left;
    for (let guard = 0; active.length > 0 && guard < 1_000_000; guard++) {
      const share = l.mbps / active.length;
      const progress = active.map((a) => share - a.dirty);
      const dts = active.map((a, i) => (progress[i]! > 0 ? a.bits / progress[i]! : Infinity));
      const dt = Math.min(...dts);
      if (!Number.isFinite(dt)) { stalled += active.length; break; }
      t += dt;
      active = active.map((a, i) => ({ ...a, bits: a.bits - Math.max(0, progress[i]!) * dt })).filter((a) => a.bits > 1e-6);
    }
    makespan = Math.max(makespan, t);
  }
  return { makespan: round(makespan), stalled };
}

function round(x: number): number {
  return Math.round(x * 1000) / 1000;
}
