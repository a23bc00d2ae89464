// Gaps and runs in a sample stream, for the turntable report's timelines and radar sweeps
// (lab/turntable/report.ts).
import { c, median } from './format.ts';

export interface Gap { a: number; b: number }

/** Gaps longer than `thr` between consecutive samples (samples sorted). */
export function gapsOf(s: number[], thr: number): Gap[] {
  const g: Gap[] = [];
  for (let i = 1; i < s.length; i++) if (s[i]! - s[i - 1]! > thr) g.push({ a: s[i - 1]!, b: s[i]! });
  return g;
}

export function longestGap(s: number[]): Gap | null {
  let best: Gap | null = null;
  for (let i = 1; i < s.length; i++) if (!best || s[i]! - s[i - 1]! > best.b - best.a) best = { a: s[i - 1]!, b: s[i]! };
  return best;
}

/** Typical spacing of a stream: the median of its consecutive differences. */
export function spacing(s: number[]): number {
  const d: number[] = [];
  for (let i = 1; i < s.length; i++) d.push(s[i]! - s[i - 1]!);
  return median(d) ?? 0;
}

/**
 * The samples as filled pixel columns: one path of rectangles covering every column that holds
 * at least one sample, so 5,000 samples cost no more than the plot's width.
 */
export function pixelRuns(s: number[], x: (t: number) => number, y: number, h: number, minW: number): string {
  if (s.length === 0) return '';
  const cols = [...new Set(s.map((t) => Math.round(x(t))))].sort((a, b) => a - b);
  let d = '';
  let start = cols[0]!, prev = cols[0]!;
  const flush = () => { d += `M${start} ${c(y)}h${Math.max(minW, prev - start + 1)}v${c(h)}h${-Math.max(minW, prev - start + 1)}z`; };
  for (let i = 1; i < cols.length; i++) {
    const col = cols[i]!;
    if (col - prev > 1) { flush(); start = col; }
    prev = col;
  }
  flush();
  return d;
}
