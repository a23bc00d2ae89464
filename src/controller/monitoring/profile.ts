// A VM's profile (SandPiper: the use of each resource over time): pure summaries of its samples
// (docs/monitoring.md "Profiles").

/** One VM sample as the store keeps it (src/controller/monitoring/store.ts). */
export interface VmSample {
  at: number;
  hostId: string;
  /** Share of its own vCPUs. */
  cpu: number;
  memoryMb: number;
  memoryUsedMb?: number;
  /** rx + tx. */
  netMbps: number;
  /** read + write. */
  diskMBps: number;
  dirtyRateMBps?: number;
}

export interface Summary {
  mean: number;
  p50: number;
  p95: number;
  max: number;
  /** Least-squares slope, per hour (0 with fewer than two samples or no time spread). */
  trendPerHour: number;
}

/** The q-quantile (0..1) of sorted values, nearest rank. */
export function quantile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return 0;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[i]!;
}

/** Slope of y over t (ms) by least squares, per hour. */
export function slopePerHour(points: readonly { t: number; y: number }[]): number {
  const n = points.length;
  if (n < 2) return 0;
  const mt = points.reduce((a, p) => a + p.t, 0) / n;
  const my = points.reduce((a, p) => a + p.y, 0) / n;
  let num = 0;
  let den = 0;
  for (const p of points) {
    num += (p.t - mt) * (p.y - my);
    den += (p.t - mt) ** 2;
  }
  return den > 0 ? (num / den) * 3_600_000 : 0;
}

const r4 = (x: number) => Math.round(x * 10_000) / 10_000;

export function summarise(points: readonly { t: number; y: number }[]): Summary {
  const ys = points.map((p) => p.y).sort((a, b) => a - b);
  const mean = ys.length ? ys.reduce((a, b) => a + b, 0) / ys.length : 0;
  return { mean: r4(mean), p50: r4(quantile(ys, 0.5)), p95: r4(quantile(ys, 0.95)), max: r4(ys.length ? ys[ys.length - 1]! : 0), trendPerHour: r4(slopePerHour(points)) };
}

export interface VmProfile {
  vmId: string;
  samples: number;
  from?: number;
  to?: number;
  /** The host of the newest sample. */
  hostId?: string;
  cpu: Summary;
  /** Share of its memory in use (where the hypervisor reports use). */
  memory: Summary;
  netMbps: Summary;
  diskMBps: Summary;
  /** Only over the samples that have a measured rate. */
  dirtyRateMBps: Summary & { samples: number };
}

/** The profile of one VM from its samples (any order). */
export function profileOf(vmId: string, samples: readonly VmSample[]): VmProfile {
  const s = [...samples].sort((a, b) => a.at - b.at);
  const of = (f: (x: VmSample) => number | undefined) => s.flatMap((x) => { const y = f(x); return y === undefined ? [] : [{ t: x.at, y }]; });
  const dirty = of((x) => x.dirtyRateMBps);
  const last = s[s.length - 1];
  return {
    vmId, samples: s.length,
    ...(s.length ? { from: s[0]!.at, to: last!.at, hostId: last!.hostId } : {}),
    cpu: summarise(of((x) => x.cpu)),
    memory: summarise(of((x) => (x.memoryUsedMb !== undefined && x.memoryMb > 0 ? Math.min(1, x.memoryUsedMb / x.memoryMb) : undefined))),
    netMbps: summarise(of((x) => x.netMbps)),
    diskMBps: summarise(of((x) => x.diskMBps)),
    dirtyRateMBps: { ...summarise(dirty), samples: dirty.length },
  };
}
