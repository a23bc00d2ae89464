// The DoubleDriver's monitoring (agents/host/double-driver.ts, a TEST DOUBLE): its VMs do no
// work, so their use is scripted. Each VM's load is a rate (share of its vCPUs, memory in use,
// network and disk throughput, dirty-page rate); the double's counters grow at that rate
// between readings, so the agent computes the same rates back (agents/host/stats.ts). The load
// comes from the configuration (`load`), overridden per VM by a load file the test may rewrite
// at any time (`loadFile`, TEST ONLY: {"vms": {"<vmId>": {…}}}), read at every
// reading, so a test creates a hotspot in a running agent process.
import { existsSync, readFileSync } from 'node:fs';
import type { VmInfo } from '../../src/common/agent-protocol.ts';
import { commonError } from '../../src/common/errors.ts';
import type { StatsSample } from './driver.ts';

/** One VM's scripted load. */
export interface DoubleLoad {
  /** Share of its vCPUs busy (0..1). */
  cpu?: number;
  /** Share of its memory in use (0..1; default 0.5). */
  memory?: number;
  /** Network, each way, Mbit/s. */
  netMbps?: number;
  /** Disk, each way, MB/s. */
  diskMBps?: number;
  /** Reported as its dirty-page rate (MB/s). */
  dirtyRateMBps?: number;
}

export interface DoubleLoadScript {
  vms?: Record<string, DoubleLoad>;
}

const FIELDS = ['cpu', 'memory', 'netMbps', 'diskMBps', 'dirtyRateMBps'] as const;

/** A load script checked field by field (VMTC_CONFIG_INVALID naming the field). */
export function checkLoad(script: unknown, where: string): DoubleLoadScript {
  const bad = (field: string, value?: unknown) => commonError('VMTC_CONFIG_INVALID', { field: `${where}.${field}`, value: value ?? null }, { message: `double driver: ${where}.${field} is not a valid load` });
  if (!script || typeof script !== 'object' || Array.isArray(script)) throw bad('vms');
  const vms = (script as { vms?: unknown }).vms;
  if (vms === undefined) return {};
  if (!vms || typeof vms !== 'object' || Array.isArray(vms)) throw bad('vms', vms);
  for (const [vmId, l] of Object.entries(vms as Record<string, unknown>)) {
    if (!l || typeof l !== 'object' || Array.isArray(l)) throw bad(`vms.${vmId}`);
    for (const k of FIELDS) {
      const v = (l as Record<string, unknown>)[k];
      if (v === undefined) continue;
      const max = k === 'cpu' || k === 'memory' ? 1 : 1e6;
      if (!(typeof v === 'number' && Number.isFinite(v) && v >= 0 && v <= max)) throw bad(`vms.${vmId}.${k}`, v);
    }
  }
  return { vms: vms as Record<string, DoubleLoad> };
}

/** The load file as it is now; a file that is absent or being rewritten (not JSON yet) reads as
 *  no override, so the last good reading's load is not replaced by garbage. */
function readLoadFile(file: string): DoubleLoadScript | undefined {
  if (!existsSync(file)) return undefined;
  try {
    return checkLoad(JSON.parse(readFileSync(file, 'utf8')), 'loadFile');
  } catch {
    return undefined;
  }
}

interface Counters { cpuMs: number; netRx: number; netTx: number; diskR: number; diskW: number }

/** The double's counters, grown at the scripted rates between readings. */
export class DoubleStats {
  private readonly counters = new Map<string, Counters>();
  private lastAt?: number;
  private lastFile?: DoubleLoadScript;

  constructor(private readonly o: { load?: DoubleLoadScript; loadFile?: string; host: { vcpus: number; memoryMb: number } }) {}

  private loadOf(vmId: string): DoubleLoad {
    return { ...(this.o.load?.vms?.[vmId] ?? {}), ...(this.lastFile?.vms?.[vmId] ?? {}) };
  }

  /** A reading at `now` of the VMs that run here (running or migrating away). */
  sample(now: number, vms: VmInfo[]): StatsSample {
    if (this.o.loadFile) this.lastFile = readLoadFile(this.o.loadFile) ?? this.lastFile;
    const dt = this.lastAt === undefined ? 0 : Math.max(0, now - this.lastAt);
    this.lastAt = now;
    const out: StatsSample['vms'] = [];
    let memoryUsedMb = 0;
    const live = new Set<string>();
    for (const vm of vms) {
      if (vm.state !== 'running' && vm.state !== 'migrating') continue;
      live.add(vm.vmId);
      const l = this.loadOf(vm.vmId);
      const c = this.counters.get(vm.vmId) ?? { cpuMs: 0, netRx: 0, netTx: 0, diskR: 0, diskW: 0 };
      const secs = this.counters.has(vm.vmId) ? dt / 1000 : 0;
      c.cpuMs += (l.cpu ?? 0) * vm.vcpus * secs * 1000;
      c.netRx += ((l.netMbps ?? 0) * 1e6 / 8) * secs;
      c.netTx += ((l.netMbps ?? 0) * 1e6 / 8) * secs;
      c.diskR += (l.diskMBps ?? 0) * 1e6 * secs;
      c.diskW += (l.diskMBps ?? 0) * 1e6 * secs;
      this.counters.set(vm.vmId, c);
      const used = vm.memoryMb * (l.memory ?? 0.5);
      memoryUsedMb += used;
      out.push({
        vmId: vm.vmId, vcpus: vm.vcpus, memoryMb: vm.memoryMb, cpuMs: c.cpuMs, memoryUsedMb: used,
        netRxBytes: c.netRx, netTxBytes: c.netTx, diskReadBytes: c.diskR, diskWriteBytes: c.diskW,
        ...(l.dirtyRateMBps !== undefined ? { dirtyRateMBps: l.dirtyRateMBps } : {}),
      });
    }
    for (const id of [...this.counters.keys()]) if (!live.has(id)) this.counters.delete(id);
    return { at: now, host: { vcpus: this.o.host.vcpus, memoryMb: this.o.host.memoryMb, memoryUsedMb }, vms: out };
  }
}
