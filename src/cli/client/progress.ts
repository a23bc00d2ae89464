// The copy's progress as one line, in the spirit of `virsh domjobinfo` (processed, remaining and
// total data, bandwidth, dirty rate, iteration, expected downtime) plus a percentage and an ETA,
// fitted to a width: on a terminal the line is redrawn in place, and a line wider than the
// terminal wraps, after which a carriage return no longer reaches its start and every redraw
// leaves a fragment behind. So fields are dropped, least useful first, until the line fits.
// The cold path's verification shows its attempts instead of byte counts. Pure functions of the
// API's progress record (src/controller/schemas.ts Progress).
import type { Progress } from '../../controller/schemas.ts';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

/**
 * Share of the copy done, 0–100, never more: QEMU's transferred bytes count pages sent again in
 * later passes and pass the total, so "done" is total − remaining where the agent reports what
 * remains (live), else transferred (cold: a download); 100 only when nothing remains.
 */
export function progressPercent(p: Pick<Progress, 'totalBytes' | 'transferredBytes' | 'remainingBytes'>): number | undefined {
  const total = p.totalBytes;
  if (typeof total !== 'number' || !(total > 0)) return undefined;
  const done = typeof p.remainingBytes === 'number' ? total - p.remainingBytes : p.transferredBytes;
  if (typeof done !== 'number' || !Number.isFinite(done)) return undefined;
  const pct = Math.floor((Math.max(0, Math.min(total, done)) / total) * 100);
  const remaining = typeof p.remainingBytes === 'number' ? p.remainingBytes : total - (p.transferredBytes ?? 0);
  return remaining > 0 ? Math.min(99, pct) : pct;
}

/** Seconds until the current pass is sent at the current rate; undefined without both. */
export function etaSeconds(p: Pick<Progress, 'remainingBytes' | 'totalBytes' | 'transferredBytes' | 'throughputMbps'>): number | undefined {
  const remaining = typeof p.remainingBytes === 'number' ? p.remainingBytes
    : typeof p.totalBytes === 'number' && typeof p.transferredBytes === 'number' ? p.totalBytes - p.transferredBytes : undefined;
  const mbps = p.throughputMbps;
  if (remaining === undefined || !(remaining > 0) || typeof mbps !== 'number' || !(mbps > 0)) return undefined;
  return remaining / ((mbps * 1e6) / 8);
}

/** `45s`, `2m05s`, `1h02m`; at least 1 s. */
export function fmtDuration(s: number): string {
  const t = Math.max(1, Math.ceil(s));
  if (t < 60) return `${t}s`;
  if (t < 3600) return `${Math.floor(t / 60)}m${String(t % 60).padStart(2, '0')}s`;
  if (t < 100 * 3600) return `${Math.floor(t / 3600)}h${String(Math.floor((t % 3600) / 60)).padStart(2, '0')}m`;
  return '>99h';
}

/** The unit a size is shown in, chosen once for a group of sizes (done/total share one). */
function unitFor(bytes: number): [number, string] {
  if (bytes >= GiB) return [GiB, 'GiB'];
  if (bytes >= MiB) return [MiB, 'MiB'];
  return [KiB, 'KiB'];
}

export function fmtBytes(bytes: number): string {
  const [u, name] = unitFor(bytes);
  return `${(bytes / u).toFixed(1)} ${name}`;
}

export function fmtRate(mbps: number): string {
  if (mbps >= 1000) return `${(mbps / 1000).toFixed(1)} Gbit/s`;
  return `${mbps >= 10 ? Math.round(mbps) : mbps.toFixed(1)} Mbit/s`;
}

function fmtCount(n: number): string {
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  if (n >= 1e4) return `${Math.round(n / 1e3)}k`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}k`;
  return String(Math.round(n));
}

function fmtDowntime(ms: number): string {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

interface Field { text: string; rank: number }

/**
 * The fields of a progress line in display order, each with its rank: 0 is always shown, higher
 * ranks are dropped first when the line must be narrower.
 */
export function progressFields(state: string, p: Progress): Field[] {
  const f: Field[] = [{ text: `${state}${p.phase ? `/${p.phase}` : ''}`, rank: 0 }];
  if (p.verify) return [...f, ...verifyFields(p.verify)];
  const pct = progressPercent(p);
  if (pct !== undefined) f.push({ text: `${pct}%`, rank: 0 });
  const total = p.totalBytes;
  if (typeof total === 'number' && total > 0) {
    const done = typeof p.remainingBytes === 'number' ? total - p.remainingBytes : p.transferredBytes ?? 0;
    const [u, name] = unitFor(total);
    f.push({ text: `${(Math.max(0, Math.min(total, done)) / u).toFixed(1)}/${(total / u).toFixed(1)} ${name}`, rank: 3 });
  }
  if (typeof p.throughputMbps === 'number') f.push({ text: fmtRate(p.throughputMbps), rank: 1 });
  if (typeof p.remainingBytes === 'number') f.push({ text: `left ${fmtBytes(p.remainingBytes)}`, rank: 5 });
  if (typeof p.dirtyPagesRate === 'number') f.push({ text: `dirty ${fmtCount(p.dirtyPagesRate)} pg/s`, rank: 6 });
  if (typeof p.pass === 'number') f.push({ text: `pass ${p.pass}`, rank: 4 });
  const eta = etaSeconds(p);
  if (eta !== undefined) f.push({ text: `ETA ${fmtDuration(eta)}`, rank: 2 });
  if (typeof p.transferredBytes === 'number' && typeof p.remainingBytes === 'number') f.push({ text: `sent ${fmtBytes(p.transferredBytes)}`, rank: 7 });
  if (typeof p.expectedDowntimeMs === 'number') f.push({ text: `downtime ~${fmtDowntime(p.expectedDowntimeMs)}`, rank: 8 });
  return f;
}

/** The cold path's verification (phase verify): attempts so far, time spent of its bound, and
 *  why the last attempt did not connect. */
function verifyFields(v: NonNullable<Progress['verify']>): Field[] {
  const f: Field[] = [
    { text: `attempt ${v.attempts}`, rank: 0 },
    { text: `${fmtDuration(v.elapsedMs / 1000)} of ${fmtDuration(v.timeoutMs / 1000)}`, rank: 1 },
  ];
  if (v.lastError) f.push({ text: `last: ${v.lastError}`, rank: 2 });
  return f;
}

/**
 * One progress line at most `width` characters wide (Infinity: every field). Fields are dropped
 * from the highest rank down until it fits; a line that still does not fit (a very narrow
 * terminal) is cut. Undefined when the record has no figures to show.
 */
export function fmtProgressLine(state: string, p: Progress | null | undefined, width = Infinity): string | undefined {
  if (!p || (!p.verify && (typeof p.totalBytes !== 'number' || typeof p.transferredBytes !== 'number'))) return undefined;
  const w = Math.max(1, Math.floor(width));
  let fields = progressFields(state, p);
  const join = (fs: Field[]) => fs.map((x) => x.text).join('  ');
  while (join(fields).length > w) {
    const worst = Math.max(...fields.map((x) => x.rank));
    if (worst === 0) break;
    const i = fields.map((x) => x.rank).lastIndexOf(worst);
    fields = fields.filter((_, j) => j !== i);
  }
  const line = join(fields);
  return line.length > w ? line.slice(0, w) : line;
}
