// What the turntable report (lab/turntable/report.ts) picks out of a run: the migrations, the
// committed live ones, the downtime a client saw, and the comparison with the paper's figures.
import type { Percentiles, TurntableMigration, TurntableResult } from '../types.ts';
import { finite, ms } from './format.ts';

/** The downtime a client saw: the UDP echo gap, else the ping gap (as the summary defines it). */
export function clientSeen(m: TurntableMigration): number | null {
  const d = m.downtimeMs;
  if (finite(d?.udp)) return d.udp;
  if (finite(d?.ping)) return d.ping;
  return null;
}

export function migrations(r: TurntableResult): TurntableMigration[] {
  return Array.isArray(r?.migrations) ? r.migrations : [];
}

/** The committed live migrations that count: reliable ones. */
export function liveOk(r: TurntableResult): TurntableMigration[] {
  // Unreliable migrations (the delay line dropped or fell short: lab/turntable/instrument.ts) are
  // listed, never counted.
  return migrations(r).filter((m) => m.mode === 'live' && m.ok && m.reliable !== false);
}

export function pct(p: Percentiles | undefined): string {
  if (!p || !p.n) return 'no samples';
  return `p50 ${ms(p.p50)}, p95 ${ms(p.p95)}, max ${ms(p.max)} (n = ${p.n})`;
}

export function verdict(v: number | null, lo: number, hi: number): string {
  if (!finite(v)) return '';
  if (v < lo) return 'below the paper’s figure';
  if (v > hi) return 'above the paper’s figure';
  return 'within the paper’s range';
}
