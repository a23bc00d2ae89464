// The fleet as the planners see it (docs/monitoring.md): each host's capacity and measured use,
// each VM's measured use, SandPiper's volume, and the sites' local time for "follow the moon".
// Pure: the service (monitoring/index.ts) builds it from the store and the hub.
import type { HostInventory } from '../../common/agent-protocol.ts';
import type { Hold } from '../store.ts';
import { precheck } from '../capacity.ts';
import { RESOURCES, type MonitoringOptions, type Resource } from './options.ts';

/** Absolute use: CPU in cores, memory in MiB, network in Mbit/s (rx + tx). */
export interface Use { cpu: number; memory: number; net: number }

export interface VmLoad {
  vmId: string;
  /** Measured use (mean over the sustain window). */
  use: Use;
}

/** What the planners know of the fleet. */
export interface Fleet {
  hosts: { inventory: HostInventory; connected: boolean }[];
  holds: (Hold & { vmId?: string })[];
  /** VMs that have a migration in flight: never planned. */
  inFlight: ReadonlySet<string>;
  /** Each host's measured use (mean over the sustain window); a host without is not measured. */
  hostUse: ReadonlyMap<string, Use>;
  vmLoad: ReadonlyMap<string, VmLoad>;
}

export type Shares = Record<Resource, number>;

export const capacityOf = (inv: HostInventory, o: Pick<MonitoringOptions, 'netCapacityMbps'>): Use => ({ cpu: Math.max(1, inv.cpu.vcpus), memory: Math.max(1, inv.memoryMb), net: o.netCapacityMbps });

export function sharesOf(use: Use, cap: Use): Shares {
  return { cpu: use.cpu / cap.cpu, memory: use.memory / cap.memory, net: use.net / cap.net };
}

export const addUse = (a: Use, b: Use, sign = 1): Use => ({ cpu: Math.max(0, a.cpu + sign * b.cpu), memory: Math.max(0, a.memory + sign * b.memory), net: Math.max(0, a.net + sign * b.net) });

/** SandPiper's volume, 1/((1−cpu)(1−mem)(1−net)): large when any resource is near full. Shares
 *  are capped just below 1 so a saturated resource gives a large, finite volume. */
export function volume(s: Shares): number {
  const f = (x: number) => 1 - Math.min(0.99, Math.max(0, x));
  return 1 / (f(s.cpu) * f(s.memory) * f(s.net));
}

/** The resources above their thresholds. */
export function overThresholds(s: Shares, thresholds: Record<Resource, number>): Resource[] {
  return RESOURCES.filter((r) => s[r] > thresholds[r]);
}

/** Local hour at a site (undefined: no offset configured). */
export function localHour(site: string | undefined, now: number, o: Pick<MonitoringOptions, 'siteUtcOffsetMinutes'>): number | undefined {
  const off = site === undefined ? undefined : o.siteUtcOffsetMinutes[site];
  if (off === undefined) return undefined;
  const minutes = ((Math.floor(now / 60_000) + off) % 1440 + 1440) % 1440;
  return Math.floor(minutes / 60);
}

/** Whether it is night at the site (undefined: the site's offset is not configured). */
export function isNight(site: string | undefined, now: number, o: Pick<MonitoringOptions, 'siteUtcOffsetMinutes' | 'nightStartHour' | 'nightEndHour'>): boolean | undefined {
  const h = localHour(site, now, o);
  if (h === undefined) return undefined;
  const { nightStartHour: a, nightEndHour: b } = o;
  return a > b ? h >= a || h < b : h >= a && h < b;
}

/** Follow the moon: night sites first (0), unknown next (1), day sites last (2); all 0 when off. */
export function moonRank(site: string | undefined, now: number, o: Pick<MonitoringOptions, 'followTheMoon' | 'siteUtcOffsetMinutes' | 'nightStartHour' | 'nightEndHour'>): number {
  if (!o.followTheMoon) return 0;
  const n = isNight(site, now, o);
  return n === true ? 0 : n === undefined ? 1 : 2;
}

/** Whether `vmId` may move to `destinationHostId` as a live migration now, with `planned` holds
 *  for the moves planned before it: the admission pre-checks themselves (capacity.ts precheck:
 *  capacity incl. holds, connected, hypervisor and CPU compatibility). With the hold the move
 *  takes there (as admission would take it), or the refusal's code. */
export function feasible(fleet: Fleet, vmId: string, destinationHostId: string, planned: (Hold & { vmId?: string })[]): { ok: true; hold: Hold & { vmId: string } } | { ok: false; code: string } {
  try {
    const pc = precheck({ vmId, mode: 'live', destinationHostId, hosts: fleet.hosts, holds: [...fleet.holds, ...planned], inFlight: fleet.inFlight.has(vmId) ? 'in-flight' : undefined });
    return { ok: true, hold: { migrationId: `plan-${planned.length}`, hostId: destinationHostId, project: pc.vm.project, vmId, ...pc.hold } };
  } catch (e) {
    return { ok: false, code: (e as { code?: string }).code ?? 'VMTC_INTERNAL' };
  }
}

/** One planned migration, as the dry run shows it and the run submits it. */
export interface PlannedMove {
  vmId: string;
  from: string;
  to: string;
  /** Why this VM and this host, for the operator. */
  reason: string;
  volume: number;
  sizeMb: number;
  /** volume / sizeMb: the relief per MiB moved (SandPiper's VSR). */
  vsr: number;
}

export const r3 = (x: number) => Math.round(x * 1000) / 1000;
export const roundShares = (s: Shares): Shares => ({ cpu: r3(s.cpu), memory: r3(s.memory), net: r3(s.net) });
