// The QEMU driver's monitoring counters (HypervisorDriver.stats, docs/monitoring.md), read
// without entering the guest (SandPiper's black-box monitoring):
//   CPU      /proc/PID/stat utime + stime of the QEMU process (clock ticks, proc(5))
//   memory   /proc/PID/status VmRSS and VmSwap; the balloon's size from QMP `query-balloon`
//            (only when the VM has a balloon device: QEMU refuses the command otherwise)
//   network  the VM's taps' byte counters from /proc/PID/net/dev: the same counters as
//            /sys/class/net/TAP/statistics, read through the QEMU process so that they are the
//            ones of the network namespace it runs in (a tap's rx is what the guest sent)
//   disk     QMP `query-blockstats` rd_bytes and wr_bytes, summed over the devices
//   dirty    QMP `calc-dirty-rate` (started, never waited for: it measures for calc-time seconds)
//            and `query-dirty-rate`, whose 'dirty-rate' (MB/s) a later reading reports
// The host's own CPU and memory come from /proc/stat and /proc/meminfo.
import { readFile } from 'node:fs/promises';
import type { StatsSample } from '../driver.ts';
import type { QmpLink } from './types.ts';

/** Reads a file's text (a test gives its own). */
export type ReadText = (path: string) => Promise<string>;
export const readText: ReadText = (path) => readFile(path, 'utf8');

/** USER_HZ: the unit of /proc/PID/stat's times on Linux (sysconf(_SC_CLK_TCK) is 100 there). */
export const CLOCK_TICKS_PER_SECOND = 100;
/** How long each calc-dirty-rate measures (seconds; QEMU's own default is 1). */
export const DIRTY_CALC_SECONDS = 1;

/** utime + stime of /proc/PID/stat in ms. The command name (field 2) may hold spaces and
 *  parentheses, so fields are counted after its last ')'. */
export function parseProcStat(text: string, ticksPerSecond = CLOCK_TICKS_PER_SECOND): number | undefined {
  const rest = text.slice(text.lastIndexOf(')') + 1).trim().split(/\s+/);
  // rest[0] is field 3 (state): utime is field 14, stime field 15.
  const utime = Number(rest[11]);
  const stime = Number(rest[12]);
  if (!Number.isFinite(utime) || !Number.isFinite(stime)) return undefined;
  return ((utime + stime) * 1000) / ticksPerSecond;
}

/** `Key:   N kB` lines of /proc/PID/status or /proc/meminfo, in MiB. */
export function parseKbLines(text: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of text.split('\n')) {
    const m = /^(\w+):\s+(\d+)\s*kB/.exec(line);
    if (m) out[m[1]!] = Number(m[2]) / 1024;
  }
  return out;
}

/** Byte counters of the named interfaces in /proc/net/dev (receive bytes is the first column,
 *  transmit bytes the ninth). */
export function parseNetDev(text: string, names: readonly string[]): { rxBytes: number; txBytes: number } {
  const want = new Set(names);
  let rxBytes = 0;
  let txBytes = 0;
  for (const line of text.split('\n')) {
    const i = line.indexOf(':');
    if (i < 0) continue;
    const name = line.slice(0, i).trim();
    if (!want.has(name)) continue;
    const f = line.slice(i + 1).trim().split(/\s+/).map(Number);
    if (Number.isFinite(f[0]) && Number.isFinite(f[8])) {
      rxBytes += f[0]!;
      txBytes += f[8]!;
    }
  }
  return { rxBytes, txBytes };
}

/** The host's CPU time busy and in all (ms) from /proc/stat's first line: busy is everything
 *  but idle and iowait. */
export function parseHostCpu(text: string, ticksPerSecond = CLOCK_TICKS_PER_SECOND): { busyMs: number; totalMs: number } | undefined {
  const line = text.split('\n').find((l) => /^cpu\s/.test(l));
  if (!line) return undefined;
  const f = line.trim().split(/\s+/).slice(1).map(Number).filter(Number.isFinite);
  if (f.length < 4) return undefined;
  // user nice system idle iowait irq softirq steal (guest time is already in user).
  const total = f.slice(0, 8).reduce((a, b) => a + b, 0);
  const idle = f[3]! + (f[4] ?? 0);
  return { busyMs: ((total - idle) * 1000) / ticksPerSecond, totalMs: (total * 1000) / ticksPerSecond };
}

interface BlockStats { device?: string; stats?: { rd_bytes?: number; wr_bytes?: number } }
interface DirtyRate { status?: string; 'dirty-rate'?: number; 'start-time'?: number }

/** One VM's counters: what the driver keeps of it, and its QMP link. */
export interface QemuVmStatsInput {
  vmId: string;
  vcpus: number;
  memoryMb: number;
  pid: number;
  taps: readonly string[];
  qmp: QmpLink;
}

/** Per VM, the last dirty rate QEMU measured (kept across readings: a measurement is started
 *  only every few readings). */
export type DirtyRates = Map<string, number>;

/** One VM's counters. A file or command that fails leaves its figure out (0 for counters): a
 *  reading never fails because one source is missing. */
export async function readVmCounters(vm: QemuVmStatsInput, o: { read: ReadText; dirtyRate: boolean; dirtyRates: DirtyRates; ticksPerSecond?: number }): Promise<StatsSample['vms'][number]> {
  const [stat, status, netDev] = await Promise.all([
    o.read(`/proc/${vm.pid}/stat`).catch(() => ''),
    o.read(`/proc/${vm.pid}/status`).catch(() => ''),
    o.read(`/proc/${vm.pid}/net/dev`).catch(() => ''),
  ]);
  const mem = parseKbLines(status);
  const net = parseNetDev(netDev, vm.taps);
  let diskReadBytes = 0;
  let diskWriteBytes = 0;
  const blocks = await vm.qmp.execute<BlockStats[]>('query-blockstats', {}, { timeoutMs: 5000 }).catch(() => [] as BlockStats[]);
  for (const b of Array.isArray(blocks) ? blocks : []) {
    diskReadBytes += Number(b.stats?.rd_bytes) || 0;
    diskWriteBytes += Number(b.stats?.wr_bytes) || 0;
  }
  const balloon = await vm.qmp.execute<{ actual?: number }>('query-balloon', undefined, { timeoutMs: 5000 }).catch(() => undefined);
  // The result of the measurement started at an earlier reading, then (every few readings) a
  // new one; QEMU refuses a start while one measures, which is harmless.
  const dr = await vm.qmp.execute<DirtyRate>('query-dirty-rate', undefined, { timeoutMs: 5000 }).catch(() => undefined);
  if (dr?.status === 'measured' && typeof dr['dirty-rate'] === 'number' && dr['dirty-rate'] >= 0) o.dirtyRates.set(vm.vmId, dr['dirty-rate']);
  if (o.dirtyRate) await vm.qmp.execute('calc-dirty-rate', { 'calc-time': DIRTY_CALC_SECONDS }, { timeoutMs: 5000 }).catch(() => undefined);
  const dirty = o.dirtyRates.get(vm.vmId);
  return {
    vmId: vm.vmId, vcpus: vm.vcpus, memoryMb: vm.memoryMb,
    cpuMs: parseProcStat(stat, o.ticksPerSecond) ?? 0,
    ...(mem.VmRSS !== undefined ? { memoryUsedMb: mem.VmRSS } : {}),
    ...(mem.VmSwap !== undefined ? { swapMb: mem.VmSwap } : {}),
    ...(typeof balloon?.actual === 'number' ? { balloonMb: balloon.actual / 1048576 } : {}),
    // A tap's receive side is what the guest transmitted.
    netRxBytes: net.txBytes, netTxBytes: net.rxBytes,
    diskReadBytes, diskWriteBytes,
    ...(dirty !== undefined ? { dirtyRateMBps: dirty } : {}),
  };
}

/** The host's part of a reading: CPU from /proc/stat, memory and swap from /proc/meminfo. */
export async function readHostCounters(read: ReadText, vcpus: number, ticksPerSecond?: number): Promise<StatsSample['host']> {
  const [stat, meminfo] = await Promise.all([read('/proc/stat').catch(() => ''), read('/proc/meminfo').catch(() => '')]);
  const cpu = parseHostCpu(stat, ticksPerSecond);
  const m = parseKbLines(meminfo);
  const memoryMb = m.MemTotal ?? 0;
  return {
    vcpus, memoryMb,
    memoryUsedMb: Math.max(0, memoryMb - (m.MemAvailable ?? memoryMb)),
    ...(m.SwapTotal !== undefined ? { swapUsedMb: Math.max(0, m.SwapTotal - (m.SwapFree ?? m.SwapTotal)) } : {}),
    ...(cpu ? { cpuBusyMs: cpu.busyMs, cpuTotalMs: cpu.totalMs } : {}),
  };
}
