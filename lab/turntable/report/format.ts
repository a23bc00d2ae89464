// Text and number helpers of the turntable report (lab/turntable/report.ts): escaping, figures
// with their units and placeholders, SVG coordinates and axis steps.

export const ESC: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
/** Escape text for an HTML element body or a quoted attribute. */
export function esc(v: unknown): string {
  return String(v ?? '').replace(/[&<>"']/g, (c) => ESC[c] ?? c);
}

export function finite(v: unknown): v is number {
  return typeof v === 'number' && Number.isFinite(v);
}

export function group(n: number): string {
  const neg = n < 0;
  const s = Math.abs(Math.round(n)).toString().replace(/\B(?=(\d{3})+(?!\d))/g, ',');
  return neg ? `-${s}` : s;
}

/** "1,234 ms", or the placeholder when there is no figure. */
export function ms(v: number | null | undefined, none = '—'): string {
  if (!finite(v)) return none;
  // One decimal below a second when there is one to show (e.g. a measured RTT of 199.2 ms).
  if (Math.abs(v) < 1000 && Math.abs(v - Math.round(v)) >= 0.05) return `${v.toFixed(1)} ms`;
  return `${group(v)} ms`;
}

export function num(v: number | null | undefined, digits = 0, unit = ''): string {
  if (!finite(v)) return '—';
  const s = digits === 0 ? group(v) : v.toFixed(digits);
  return unit ? `${s} ${unit}` : s;
}

export function bytes(v: number | null | undefined): string {
  if (!finite(v)) return '—';
  if (v >= 1e9) return `${(v / 1e9).toFixed(2)} GB`;
  if (v >= 1e6) return `${(v / 1e6).toFixed(1)} MB`;
  if (v >= 1e3) return `${(v / 1e3).toFixed(1)} kB`;
  return `${group(v)} B`;
}

/** SVG coordinates: short and locale-free. */
export function c(v: number): string {
  return (Math.round(v * 10) / 10).toString();
}

export function median(xs: number[]): number | null {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** 1, 2, 5 x 10^k step giving about `target` ticks over `span`. */
export function niceStep(span: number, target: number): number {
  if (!(span > 0)) return 1;
  const raw = span / Math.max(1, target);
  const p = 10 ** Math.floor(Math.log10(raw));
  const f = raw / p;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * p;
}

/** Smallest 1, 2, 2.5, 5 x 10^k that is at least `v`. */
export function niceAtLeast(v: number): number {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const f of [1, 2, 2.5, 5, 10]) if (f * p >= v) return f * p;
  return 10 * p;
}

export function sortedNums(xs: readonly unknown[] | null | undefined): number[] {
  return (Array.isArray(xs) ? xs.filter(finite) : []).sort((a, b) => a - b);
}
