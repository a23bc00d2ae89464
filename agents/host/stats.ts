// The host agent's monitoring (docs/monitoring.md): every stats interval it reads its driver's
// counters (HypervisorDriver.stats) and sends the 'stats' event, the rates between this reading
// and the previous one. Every few intervals the reading also starts a dirty-page-rate
// measurement (QEMU's calc-dirty-rate), which a later reading reports. Time is the agent's clock.
import type { HostStats, StatsReport, VmStats } from '../../src/common/agent-protocol.ts';
import type { Clock } from '../../src/common/clock.ts';
import type { Logger } from '../../src/common/log.ts';
import type { HypervisorDriver, StatsSample } from './driver.ts';

export const STATS_DEFAULTS = {
  /** vmtc agent --stats-interval (seconds there). */
  intervalMs: 10_000,
  /** A dirty-rate measurement is started every this many readings (QEMU's costs a second of
   *  dirty logging per VM, so it runs less often than the cheap counters). */
  dirtyRateEvery: 6,
} as const;

const MB = 1e6;
const share = (x: number): number => (Number.isFinite(x) ? Math.min(1, Math.max(0, x)) : 0);
/** A counter's growth per second; a counter that went back (a VM restarted) counts from 0. */
const perSecond = (prev: number, cur: number, secs: number): number => {
  const d = cur >= prev ? cur - prev : cur;
  return secs > 0 && Number.isFinite(d) ? d / secs : 0;
};
const round = (x: number): number => Math.round(x * 1000) / 1000;

/**
 * The report of the interval between two readings (pure). A VM only in `cur` (it just started
 * or arrived) has no rates yet and is left out until the next reading. Host network and disk
 * are the sums over its VMs; host CPU is /proc/stat's busy share where the driver read it, else
 * the VMs' CPU time over the host's CPUs.
 */
export function statsBetween(prev: StatsSample, cur: StatsSample): StatsReport | undefined {
  const ms = cur.at - prev.at;
  if (!(ms > 0)) return undefined;
  const secs = ms / 1000;
  const before = new Map(prev.vms.map((v) => [v.vmId, v]));
  const vms: VmStats[] = [];
  let cpuMs = 0;
  for (const v of cur.vms) {
    const p = before.get(v.vmId);
    if (!p) continue;
    const used = v.cpuMs >= p.cpuMs ? v.cpuMs - p.cpuMs : v.cpuMs;
    cpuMs += used;
    vms.push({
      vmId: v.vmId,
      cpu: round(share(used / (ms * Math.max(1, v.vcpus)))),
      memoryMb: v.memoryMb,
      ...(v.memoryUsedMb !== undefined ? { memoryUsedMb: round(v.memoryUsedMb) } : {}),
      ...(v.swapMb !== undefined ? { swapMb: round(v.swapMb) } : {}),
      ...(v.balloonMb !== undefined ? { balloonMb: round(v.balloonMb) } : {}),
      netRxMbps: round((perSecond(p.netRxBytes, v.netRxBytes, secs) * 8) / MB),
      netTxMbps: round((perSecond(p.netTxBytes, v.netTxBytes, secs) * 8) / MB),
      diskReadMBps: round(perSecond(p.diskReadBytes, v.diskReadBytes, secs) / MB),
      diskWriteMBps: round(perSecond(p.diskWriteBytes, v.diskWriteBytes, secs) / MB),
      ...(v.dirtyRateMBps !== undefined ? { dirtyRateMBps: round(v.dirtyRateMBps) } : {}),
    });
  }
  const h = cur.host;
  const hostCpu = h.cpuBusyMs !== undefined && h.cpuTotalMs !== undefined && prev.host.cpuBusyMs !== undefined && prev.host.cpuTotalMs !== undefined && h.cpuTotalMs > prev.host.cpuTotalMs
    ? (h.cpuBusyMs - prev.host.cpuBusyMs) / (h.cpuTotalMs - prev.host.cpuTotalMs)
    : cpuMs / (ms * Math.max(1, h.vcpus));
  const sum = (k: 'netRxMbps' | 'netTxMbps' | 'diskReadMBps' | 'diskWriteMBps') => round(vms.reduce((a, v) => a + v[k], 0));
  const host: HostStats = {
    cpu: round(share(hostCpu)), vcpus: h.vcpus, memoryMb: h.memoryMb, memoryUsedMb: round(Math.max(0, h.memoryUsedMb)),
    ...(h.swapUsedMb !== undefined ? { swapUsedMb: round(h.swapUsedMb) } : {}),
    netRxMbps: sum('netRxMbps'), netTxMbps: sum('netTxMbps'), diskReadMBps: sum('diskReadMBps'), diskWriteMBps: sum('diskWriteMBps'),
  };
  return { at: cur.at, intervalMs: ms, host, vms };
}

export interface StatsReporterOptions {
  driver: HypervisorDriver;
  clock: Clock;
  logger: Logger;
  intervalMs?: number;
  dirtyRateEvery?: number;
  /** Sends one report (the agent: link.send('stats', …) while connected). */
  send(report: StatsReport): void;
}

/** Reads the driver every interval and sends the reports; stop() ends it. */
export class StatsReporter {
  private timer?: { cancel(): void };
  private prev?: StatsSample;
  private readings = 0;
  private stopped = false;
  private readonly intervalMs: number;
  private readonly dirtyEvery: number;

  constructor(private readonly o: StatsReporterOptions) {
    this.intervalMs = o.intervalMs ?? STATS_DEFAULTS.intervalMs;
    this.dirtyEvery = Math.max(1, Math.floor(o.dirtyRateEvery ?? STATS_DEFAULTS.dirtyRateEvery));
  }

  start(): void {
    if (!this.o.driver.stats || !(this.intervalMs > 0)) return;
    void this.tick();
  }

  /** One reading now (and the report of the interval since the last one, if any). */
  async tick(): Promise<StatsReport | undefined> {
    if (this.stopped || !this.o.driver.stats) return undefined;
    let report: StatsReport | undefined;
    try {
      // The first reading starts a dirty-rate measurement, so the second report has one.
      const cur = await this.o.driver.stats({ dirtyRate: this.readings % this.dirtyEvery === 0 });
      this.readings++;
      if (this.prev) report = statsBetween(this.prev, cur);
      this.prev = cur;
      if (report && !this.stopped) this.o.send(report);
    } catch (e) {
      this.o.logger.warn({ err: String(e) }, 'stats reading failed');
    } finally {
      if (!this.stopped) {
        this.timer?.cancel();
        this.timer = this.o.clock.setTimeout(() => void this.tick(), this.intervalMs);
      }
    }
    return report;
  }

  stop(): void {
    this.stopped = true;
    this.timer?.cancel();
  }
}
