// The monitoring history in the controller's SQLite file (tables host_stats and vm_stats,
// created by src/controller/store.ts's schema list): each agent's stats report, one row per host
// and per VM, with retention by age and by count per host and per VM (docs/monitoring.md).
import type { Db } from '../../common/db.ts';
import type { HostStats, StatsReport, VmStats } from '../../common/agent-protocol.ts';
import type { VmSample } from './profile.ts';

export interface HostStatsRow extends HostStats { at: number; intervalMs: number; sampledAt?: number }

export class MonitoringStore {
  private readonly insHost;
  private readonly insVm;
  constructor(private readonly db: Db, private readonly retention: { maxAgeMs: number; maxSamples: number }) {
    this.insHost = db.prepare('INSERT INTO host_stats (host_id, at, stats) VALUES (?, ?, ?)');
    this.insVm = db.prepare('INSERT INTO vm_stats (vm_id, host_id, at, stats) VALUES (?, ?, ?, ?)');
  }

  /** Store one report of `hostId` received at `now` and apply the retention (one transaction).
   *  Samples are timed by the controller's clock when they arrive (the agent's own `at` is kept
   *  as `sampledAt`), so an agent whose clock is off cannot misplace them in the history, the
   *  retention or the detector's window. */
  add(hostId: string, r: StatsReport, now: number): void {
    this.db.transaction(() => {
      this.insHost.run(hostId, now, JSON.stringify({ ...r.host, intervalMs: r.intervalMs, sampledAt: r.at }));
      for (const v of r.vms) this.insVm.run(v.vmId, hostId, now, JSON.stringify(v));
      this.prune(hostId, r.vms.map((v) => v.vmId), now);
    })();
  }

  private prune(hostId: string, vmIds: string[], now: number): void {
    const before = now - this.retention.maxAgeMs;
    this.db.prepare('DELETE FROM host_stats WHERE at < ?').run(before);
    this.db.prepare('DELETE FROM vm_stats WHERE at < ?').run(before);
    const keep = this.retention.maxSamples;
    this.db.prepare('DELETE FROM host_stats WHERE host_id = ? AND seq <= (SELECT seq FROM host_stats WHERE host_id = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)').run(hostId, hostId, keep);
    const delVm = this.db.prepare('DELETE FROM vm_stats WHERE vm_id = ? AND seq <= (SELECT seq FROM vm_stats WHERE vm_id = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)');
    for (const id of vmIds) delVm.run(id, id, keep);
  }

  /** A host's newest `limit` samples, oldest first. */
  hostSamples(hostId: string, limit: number): HostStatsRow[] {
    const rows = this.db.prepare('SELECT at, stats FROM host_stats WHERE host_id = ? ORDER BY seq DESC LIMIT ?').all(hostId, limit) as { at: number; stats: string }[];
    return rows.reverse().map((r) => ({ ...(JSON.parse(r.stats) as HostStats & { intervalMs: number }), at: r.at }));
  }

  /** A VM's newest `limit` samples, oldest first (on whichever host it ran). */
  vmSamples(vmId: string, limit: number): VmSample[] {
    const rows = this.db.prepare('SELECT host_id, at, stats FROM vm_stats WHERE vm_id = ? ORDER BY seq DESC LIMIT ?').all(vmId, limit) as { host_id: string; at: number; stats: string }[];
    return rows.reverse().map((r) => {
      const v = JSON.parse(r.stats) as VmStats;
      return {
        at: r.at, hostId: r.host_id, cpu: v.cpu, memoryMb: v.memoryMb,
        ...(v.memoryUsedMb !== undefined ? { memoryUsedMb: v.memoryUsedMb } : {}),
        netMbps: v.netRxMbps + v.netTxMbps, diskMBps: v.diskReadMBps + v.diskWriteMBps,
        ...(v.dirtyRateMBps !== undefined ? { dirtyRateMBps: v.dirtyRateMBps } : {}),
      };
    });
  }

  counts(): { hostSamples: number; vmSamples: number } {
    const n = (t: string) => (this.db.prepare(`SELECT COUNT(*) AS n FROM ${t}`).get() as { n: number }).n;
    return { hostSamples: n('host_stats'), vmSamples: n('vm_stats') };
  }
}
