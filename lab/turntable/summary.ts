// The summary of a turntable run (turntable.json `summary`): percentiles over the live
// migrations that count — committed, with the guest intact, and reliable (the delay line kept up:
// lab/turntable/instrument.ts) — the breakdown's steps over the same, and the paper's §6.4 ratio.
// Unreliable migrations are named, never averaged in silently.
import { percentiles } from './probes/analysis.ts';
import type { DiskComparison, DowntimeFigures, TurntableMigration, TurntableSummary } from './types.ts';

const round1 = (v: number): number => Math.round(v * 10) / 10;

/** |a - udp| per live migration where both were measured. */
function agreement(live: TurntableMigration[], k: 'tunnelPassive' | 'tunnelProbe'): number[] {
  return live.flatMap((m) => {
    const a = m.downtimeMs[k];
    const u = m.downtimeMs.udp;
    return typeof a === 'number' && typeof u === 'number' ? [round1(Math.abs(a - u))] : [];
  });
}

/** Client-seen downtime of one migration: the finer UDP probe, else the ping. */
export function clientSeen(m: TurntableMigration): number | null {
  return m.downtimeMs.udp ?? m.downtimeMs.ping;
}

/** A migration's figures count unless it is marked unreliable (older files: reliable). */
export function counts(m: TurntableMigration): boolean {
  return m.ok && m.reliable !== false;
}

export function summarize(ms: TurntableMigration[], guest?: 'idle' | 'populated'): TurntableSummary {
  const live = ms.filter((m) => m.mode === 'live' && counts(m));
  const pick = (k: keyof DowntimeFigures) => live.map((m) => m.downtimeMs[k]).filter((v): v is number => v !== null);
  const nonlive = ms.find((m) => m.mode === 'nonlive' && counts(m));
  const nonLiveElapsedMs = nonlive ? clientSeen(nonlive) : null;
  const liveClientMedianMs = percentiles(live.map(clientSeen).filter((v): v is number => v !== null)).p50;
  const step = (f: (m: TurntableMigration) => number | null | undefined) => percentiles(live.map((m) => (m.breakdown ? f(m) : null)));
  return {
    ping: percentiles(pick('ping')), udp: percentiles(pick('udp')), serial: percentiles(pick('serial')), hypervisor: percentiles(pick('hypervisor')),
    tunnelPassive: percentiles(pick('tunnelPassive')), tunnelProbe: percentiles(pick('tunnelProbe')),
    agreement: { passiveVsUdp: percentiles(agreement(live, 'tunnelPassive')), probeVsUdp: percentiles(agreement(live, 'tunnelProbe')) },
    nonLiveElapsedMs, liveClientMedianMs,
    liveNonLiveRatio: nonLiveElapsedMs !== null && liveClientMedianMs ? Math.round((nonLiveElapsedMs / liveClientMedianMs) * 10) / 10 : null,
    liveOk: ms.filter((m) => m.mode === 'live' && m.ok).length, liveTotal: ms.filter((m) => m.mode === 'live').length,
    liveCounted: live.length,
    unreliable: ms.filter((m) => m.reliable === false).map((m) => `${m.mode} ${m.round} (${m.migrationId})`),
    breakdown: {
      pauseToLastPage: step((m) => m.breakdown!.stepsMs.pauseToLastPage),
      lastPageToResume: step((m) => m.breakdown!.stepsMs.lastPageToResume),
      resumeToHeartbeat: step((m) => m.breakdown!.stepsMs.resumeToHeartbeat),
      heartbeatToReply: step((m) => m.breakdown!.stepsMs.heartbeatToReply),
      total: step((m) => m.breakdown!.totalMs),
    },
    ...(guest ? { guest } : {}),
    ...(live.some((m) => m.disk) ? { disk: diskComparison(live) } : {}),
  };
}

/** Disk bytes at migration time and client-seen downtime, with and without a replica. */
export function diskComparison(live: TurntableMigration[]): DiskComparison {
  const w = live.filter((m) => m.disk?.replicaUsed);
  const wo = live.filter((m) => m.disk && !m.disk.replica);
  const p = (xs: TurntableMigration[], f: (m: TurntableMigration) => number | null | undefined) => percentiles(xs.map(f).filter((v): v is number => typeof v === 'number'));
  return {
    with: { n: w.length, bytesAtMigration: p(w, (m) => m.disk!.bytesAtMigration), udp: p(w, clientSeen), seedBytes: p(w, (m) => m.disk!.seedBytes) },
    without: { n: wo.length, bytesAtMigration: p(wo, (m) => m.disk!.bytesAtMigration), udp: p(wo, clientSeen) },
  };
}
