// Host capacity and the pre-checks of docs/design.md#live-migration, step 2 (after the Nova
// live-migration design).
// Pure functions over agent inventories and the controller's capacity holds, so they can be
// tested without servers and run synchronously at admission time (which is what makes two
// concurrent requests unable to overcommit a host: Node runs the check-and-hold atomically).
import type { HostInventory, VmInfo } from '../common/agent-protocol.ts';
import type { ErrorBody } from '../common/errors.ts';
import { advisoriesFor, HYPERVISOR_ADVISORIES, type HypervisorAdvisory } from '../common/hypervisor-advisories.ts';
import type { Hold } from './store.ts';
import { err } from './errors.ts';

export interface Resources { vcpus: number; memoryMb: number; diskGb: number }

export interface HostUsage {
  totals: Resources;
  used: Resources;
  held: Resources;
  available: Resources;
  byProject: Record<string, Resources & { vms: number }>;
}

const zero = (): Resources => ({ vcpus: 0, memoryMb: 0, diskGb: 0 });
const ACTIVE_STATES = new Set(['running', 'paused', 'migrating', 'postmigrate', 'incoming', 'crashed']);

/** Usage of one host: VMs it reports plus capacity held for incoming migrations. An incoming VM
 *  that belongs to a held migration is counted once (by its hold). */
export function hostUsage(inv: HostInventory, holds: (Hold & { vmId?: string })[]): HostUsage {
  const used = zero();
  const held = zero();
  const byProject: HostUsage['byProject'] = {};
  const heldVms = new Set(holds.map((h) => h.vmId).filter(Boolean));
  const add = (project: string, r: Resources, vm: boolean) => {
    const p = (byProject[project] ??= { ...zero(), vms: 0 });
    p.vcpus += r.vcpus; p.memoryMb += r.memoryMb; p.diskGb += r.diskGb; if (vm) p.vms++;
  };
  for (const vm of inv.vms) {
    if (vm.state === 'incoming' && heldVms.has(vm.vmId)) continue;
    const r: Resources = ACTIVE_STATES.has(vm.state) ? { vcpus: vm.vcpus, memoryMb: vm.memoryMb, diskGb: vm.diskGb } : { vcpus: 0, memoryMb: 0, diskGb: vm.diskGb };
    used.vcpus += r.vcpus; used.memoryMb += r.memoryMb; used.diskGb += r.diskGb;
    add(vm.project, r, true);
  }
  for (const h of holds) {
    held.vcpus += h.vcpus; held.memoryMb += h.memoryMb; held.diskGb += h.diskGb;
    add(h.project, h, false);
  }
  const totals: Resources = { vcpus: inv.cpu.vcpus, memoryMb: inv.memoryMb, diskGb: inv.diskGb };
  return {
    totals, used, held, byProject,
    available: {
      vcpus: totals.vcpus - used.vcpus - held.vcpus,
      memoryMb: totals.memoryMb - used.memoryMb - held.memoryMb,
      diskGb: totals.diskGb - used.diskGb - held.diskGb,
    },
  };
}

/** Where a VM is the primary copy: the host that reports it in a non-incoming state, preferring
 *  one where it is not stopped. A host's inventory may still list a VM it no longer runs for a
 *  moment after a move (a cold move's source reports it stopped until its next inventory), while
 *  the destination already reports it running. */
export function locateVm(inventories: HostInventory[], vmId: string): { host: HostInventory; vm: VmInfo } | undefined {
  let stopped: { host: HostInventory; vm: VmInfo } | undefined;
  for (const host of inventories) {
    const vm = host.vms.find((v) => v.vmId === vmId && v.state !== 'incoming');
    if (!vm) continue;
    if (vm.state !== 'stopped') return { host, vm };
    stopped ??= { host, vm };
  }
  return stopped;
}

function versionTuple(v: string): number[] {
  return (v.match(/\d+/g) ?? []).slice(0, 3).map(Number);
}

/** A destination may run the same or a newer hypervisor release (QEMU migrates forward). */
export function versionCompatible(source: string, dest: string): boolean {
  const a = versionTuple(source);
  const b = versionTuple(dest);
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    const x = a[i] ?? 0;
    const y = b[i] ?? 0;
    if (y !== x) return y > x;
  }
  return true;
}

/** The host has `need` available (what it reports, less what is held for incoming migrations);
 *  otherwise the first shortfall's own code. vCPUs only when `vcpus` (a migration's destination). */
function requireRoom(hostId: string, usage: HostUsage, need: Resources, vcpus = true): void {
  if (usage.available.memoryMb < need.memoryMb) throw err('VMTC_INSUFFICIENT_MEMORY', { hostId, needMb: need.memoryMb, availableMb: usage.available.memoryMb });
  if (vcpus && usage.available.vcpus < need.vcpus) throw err('VMTC_INSUFFICIENT_VCPUS', { hostId, need: need.vcpus, available: usage.available.vcpus });
  if (usage.available.diskGb < need.diskGb) throw err('VMTC_INSUFFICIENT_DISK', { hostId, needGb: need.diskGb, availableGb: usage.available.diskGb });
}

/**
 * Room to start a VM on a host (POST /v1/vms): memory, and disk unless the host's storage is
 * shared, against the host's inventory and the capacity held there for incoming migrations, so a
 * start can neither overcommit a host nor take what a migration holds. vCPUs may be
 * overcommitted by a start, as hypervisors allow. Refused with the pre-checks' 409 codes before
 * the agent is asked.
 */
export function checkRoomToStart(inv: HostInventory, holds: (Hold & { vmId?: string })[], spec: { vcpus: number; memoryMb: number; diskGb: number }, fleet: HostInventory[] = [inv]): void {
  requireFits(spec, fleet, inv.sharedStorage);
  requireRoom(inv.hostId, hostUsage(inv, holds), { vcpus: spec.vcpus, memoryMb: spec.memoryMb, diskGb: inv.sharedStorage ? 0 : spec.diskGb }, false);
}

/**
 * A VM bigger than every host of the fleet in all (memory; disk where storage is not shared)
 * fits nowhere, whatever else runs: VMTC_VM_TOO_LARGE (422), a fault of the request, apart from
 * the 409s of a host that has no room now.
 */
export function requireFits(spec: { memoryMb: number; diskGb: number }, fleet: HostInventory[], sharedStorage: boolean): void {
  const largest = (f: (h: HostInventory) => number) => Math.max(0, ...fleet.map(f));
  const memoryMb = largest((h) => h.memoryMb);
  if (spec.memoryMb > memoryMb) throw err('VMTC_VM_TOO_LARGE', { resource: 'memoryMb', need: spec.memoryMb, largestHost: memoryMb });
  const diskGb = largest((h) => (h.sharedStorage ? Infinity : h.diskGb));
  if (!sharedStorage && spec.diskGb > diskGb) throw err('VMTC_VM_TOO_LARGE', { resource: 'diskGb', need: spec.diskGb, largestHost: diskGb });
}

export interface PrecheckInput {
  vmId: string;
  mode: 'live' | 'cold' | 'auto';
  destinationHostId: string;
  /** Inventories of every known host with whether it is connected now. */
  hosts: { inventory: HostInventory; connected: boolean }[];
  holds: (Hold & { vmId?: string })[];
  /** True when the VM already has a non-terminal migration. */
  inFlight: string | undefined;
  /** Advisory ids the request accepts (MigrationRequest.overrideAdvisories). */
  overrideAdvisories?: readonly string[];
  /** The known-bad releases (default: src/common/hypervisor-advisories.ts). */
  advisories?: readonly HypervisorAdvisory[];
}

export interface PrecheckResult {
  source: HostInventory;
  dest: HostInventory;
  vm: VmInfo;
  path: 'live' | 'cold';
  sharedStorage: boolean;
  hold: Resources;
  checks: string[];
  /** Known-bad releases the migration goes ahead with (overridden, or warn-only) or that made
   *  mode=auto take the cold path: the record's first warnings. */
  warnings: ErrorBody[];
}

/** One known-bad release on a host of the migration, as refusals and warnings name it. */
function advisoryDetails(host: HostInventory, role: 'source' | 'destination', a: HypervisorAdvisory): Record<string, unknown> {
  return {
    reason: 'known-bad-version', hostId: host.hostId, role,
    hypervisor: host.hypervisor.type, version: host.hypervisor.version, accelerator: host.hypervisor.accelerator,
    advisory: a.id, summary: a.summary, affectedBelow: a.affected.below, fixedIn: a.fixedIn, commit: a.commit,
  };
}

/**
 * The known-bad releases (src/common/hypervisor-advisories.ts; docs/qemu.md "Known-bad
 * versions") on either end of a live migration:
 * the source's dirty tracking decides what is copied, and the destination is the next move's
 * source. Pure. Returns what refuses the migration (not accepted by `overrides`) and what it may
 * go ahead with as warnings; a cold migration never asks (nothing tracks dirty pages).
 */
export function knownBadReleases(source: HostInventory, dest: HostInventory, overrides: readonly string[], table: readonly HypervisorAdvisory[] = HYPERVISOR_ADVISORIES): { refusing: Record<string, unknown>[]; accepted: Record<string, unknown>[] } {
  const refusing: Record<string, unknown>[] = [];
  const accepted: Record<string, unknown>[] = [];
  for (const [host, role] of [[source, 'source'], [dest, 'destination']] as const) {
    for (const a of advisoriesFor(host.hypervisor, table)) {
      const d = advisoryDetails(host, role, a);
      if (a.live === 'warn') accepted.push(d);
      else if (overrides.includes(a.id)) accepted.push({ ...d, overridden: true });
      else refusing.push(d);
    }
  }
  return { refusing, accepted };
}

/** Run every pre-check in order; the first failure throws its own coded error. */
export function precheck(input: PrecheckInput): PrecheckResult {
  const checks: string[] = [];
  const connected = input.hosts.filter((h) => h.connected).map((h) => h.inventory);
  const loc = locateVm(connected, input.vmId) ?? locateVm(input.hosts.map((h) => h.inventory), input.vmId);
  if (!loc) throw err('VMTC_VM_NOT_FOUND', { vmId: input.vmId });
  checks.push('vm-exists');
  if (input.inFlight) throw err('VMTC_MIGRATION_IN_FLIGHT', { vmId: input.vmId, migrationId: input.inFlight });
  checks.push('no-migration-in-flight');
  const { host: source, vm } = loc;
  // A cold move powers the VM off, so a running or a stopped VM can go; a paused one would lose
  // its memory state, so it is refused (resume or stop it first).
  const okStates = input.mode === 'cold' ? ['running', 'stopped'] : ['running'];
  if (!okStates.includes(vm.state)) throw err('VMTC_VM_NOT_RUNNING', { vmId: vm.vmId, state: vm.state, hostId: source.hostId });
  checks.push('vm-running');
  const srcEntry = input.hosts.find((h) => h.inventory.hostId === source.hostId);
  if (!srcEntry?.connected) throw err('VMTC_HOST_NOT_CONNECTED', { hostId: source.hostId, role: 'source' });
  const destEntry = input.hosts.find((h) => h.inventory.hostId === input.destinationHostId);
  if (!destEntry) throw err('VMTC_HOST_NOT_FOUND', { hostId: input.destinationHostId, role: 'destination' });
  if (!destEntry.connected) throw err('VMTC_HOST_NOT_CONNECTED', { hostId: input.destinationHostId, role: 'destination' });
  if (source.hostId === input.destinationHostId) throw err('VMTC_SAME_HOST', { hostId: source.hostId });
  checks.push('hosts-connected-and-distinct');
  const dest = destEntry.inventory;
  const sharedStorage = source.sharedStorage && dest.sharedStorage;
  const usage = hostUsage(dest, input.holds.filter((h) => h.hostId === dest.hostId));
  // The cold path copies the disks into the destination's own store even when storage is
  // shared, and mode=auto may fall back to it: only a live-only request on shared storage
  // needs no disk at the destination.
  const copiesDisks = !sharedStorage || input.mode !== 'live';
  const need: Resources = { vcpus: vm.vcpus, memoryMb: vm.memoryMb, diskGb: copiesDisks ? vm.diskGb : 0 };
  requireRoom(dest.hostId, usage, need);
  checks.push('destination-capacity');
  if (source.hypervisor.type !== dest.hypervisor.type) throw err('VMTC_HYPERVISOR_MISMATCH', { source: source.hypervisor.type, destination: dest.hypervisor.type });
  if (!versionCompatible(source.hypervisor.version, dest.hypervisor.version)) {
    throw err('VMTC_HYPERVISOR_VERSION_INCOMPATIBLE', { reason: 'older-destination', source: source.hypervisor.version, destination: dest.hypervisor.version });
  }
  checks.push('hypervisor-compatible');
  let path: 'live' | 'cold' = input.mode === 'cold' ? 'cold' : 'live';
  if (input.mode !== 'cold') {
    const destFeatures = new Set(dest.cpu.features);
    const missing = source.cpu.features.filter((f) => !destFeatures.has(f));
    if (missing.length > 0) {
      // mode=auto: a CPU mismatch rules out live migration but not a cold boot at the destination.
      if (input.mode === 'live') throw err('VMTC_CPU_INCOMPATIBLE', { missing: missing.slice(0, 50), missingCount: missing.length });
      path = 'cold';
      checks.push('cpu-incompatible-cold-chosen');
    } else {
      checks.push('cpu-compatible');
    }
  }
  const warnings: ErrorBody[] = [];
  if (path === 'live') {
    const { refusing, accepted } = knownBadReleases(source, dest, input.overrideAdvisories ?? [], input.advisories);
    if (refusing.length > 0 && input.mode === 'live') {
      throw err('VMTC_HYPERVISOR_VERSION_INCOMPATIBLE', { ...refusing[0], ...(refusing.length > 1 ? { also: refusing.slice(1).map((d) => ({ hostId: d.hostId, advisory: d.advisory })) } : {}), override: 'overrideAdvisories' });
    }
    if (refusing.length > 0) {
      // mode=auto: as with a CPU mismatch, a cold move (no dirty tracking) instead of a live one.
      path = 'cold';
      checks.push('known-bad-hypervisor-cold-chosen');
      warnings.push(...refusing.map((d) => err('VMTC_HYPERVISOR_VERSION_INCOMPATIBLE', { ...d, step: 'precheck', coldChosen: true }).toJSON()));
    } else {
      checks.push(accepted.length > 0 ? 'known-bad-hypervisor-accepted' : 'no-known-bad-hypervisor');
      warnings.push(...accepted.map((d) => err('VMTC_HYPERVISOR_VERSION_INCOMPATIBLE', { ...d, step: 'precheck' }).toJSON()));
    }
  }
  return { source, dest, vm, path, sharedStorage, hold: need, checks, warnings };
}
