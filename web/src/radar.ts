// The radar sweep (docs/dashboard.md "Radar"): the tunnel agent's echo probe of a migrating VM
// drawn on a circle swept once a second. Each reply is a tick at the angle of its arrival (its
// probe's send time plus its round trip: when a client would have heard the VM); a silence of two
// periods or more between arrivals is a dark sector, so while the VM is paused the dark sector
// grows with the sweep. Older sweeps fade. radarSummary is pure.
import type { ProbeSample, RadarData } from './model.ts';
import { longestOutageUs } from '../../agents/tunnel/downtime.ts';

/** One sweep of the circle, ms. */
export const SWEEP_MS = 1000;
/** Sweeps drawn (older ones fainter). */
const SWEEPS_SHOWN = 4;

export interface RadarSummary { sent: number; answered: number; missing: number; longestSilenceMs: number | null; last: number | null }

/** Reply arrivals (epoch ms), sorted. */
function arrivals(samples: readonly ProbeSample[]): number[] {
  return samples.filter((s) => s[2] !== null).map((s) => s[1] + s[2]!).sort((a, b) => a - b);
}

/**
 * Counts and the longest silence, by the rule of the record's tunnelProbe figure
 * (agents/tunnel/downtime.ts probeDowntime: between reply arrivals, silences of at least two
 * periods joined when fewer than three replies came between them), so the two agree. Probes sent
 * within the newest two periods are not counted missing yet: their replies may be on their way.
 */
export function radarSummary(samples: Iterable<ProbeSample>, periodMs: number): RadarSummary {
  const all = [...samples].sort((a, b) => a[1] - b[1]);
  const last = all.length ? all[all.length - 1]![1] : null;
  const arr = arrivals(all);
  const missing = all.filter((s) => s[2] === null && last !== null && s[1] < last - 2 * periodMs).length;
  const us = longestOutageUs(arr.map((t) => ({ firstUs: t * 1000, lastUs: t * 1000, count: 1 })), 2 * periodMs * 1000);
  return { sent: all.length, answered: arr.length, missing, longestSilenceMs: us === null ? null : Math.round(us / 1000), last: last === null ? null : Math.max(last, arr.at(-1) ?? last) };
}

/** Angle (radians, 0 at the top, clockwise) of an instant on the sweep. */
export function sweepAngle(at: number): number {
  return ((at % SWEEP_MS) / SWEEP_MS) * 2 * Math.PI - Math.PI / 2;
}

export function drawRadar(canvas: HTMLCanvasElement, r: RadarData): RadarSummary {
  const sum = radarSummary(r.samples.values(), r.periodMs);
  const css = canvas.clientWidth || 220;
  const dpr = window.devicePixelRatio || 1;
  if (canvas.width !== Math.round(css * dpr)) { canvas.width = Math.round(css * dpr); canvas.height = Math.round(css * dpr); }
  const ctx = canvas.getContext('2d');
  if (!ctx) return sum;
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  const c = css / 2;
  const rad = c - 6;
  ctx.clearRect(0, 0, css, css);
  ctx.fillStyle = '#0b2a1a';
  ctx.beginPath(); ctx.arc(c, c, rad, 0, 2 * Math.PI); ctx.fill();
  ctx.strokeStyle = '#2f6f4a'; ctx.lineWidth = 1;
  for (const f of [0.33, 0.66, 1]) { ctx.beginPath(); ctx.arc(c, c, rad * f, 0, 2 * Math.PI); ctx.stroke(); }
  if (sum.last === null) return sum;
  const now = sum.last;
  const from = now - SWEEPS_SHOWN * SWEEP_MS;
  const fade = (t: number) => { const age = Math.floor((now - t) / SWEEP_MS); return age === 0 ? 1 : 0.55 / age; };
  const arr = arrivals([...r.samples.values()]);
  // Silences: between arrivals, and from the last arrival to now while it lasts.
  const quiet = 2 * Math.max(1, r.periodMs);
  const gaps: [number, number][] = [];
  for (let i = 1; i < arr.length; i++) if (arr[i]! - arr[i - 1]! >= quiet) gaps.push([arr[i - 1]!, arr[i]!]);
  const lastArrival = arr.at(-1);
  if (lastArrival === undefined) gaps.push([from, now]);
  else if (now - lastArrival >= quiet) gaps.push([lastArrival, now]);
  for (const [g0, g1] of gaps) {
    if (g1 <= from) continue;
    const a0 = sweepAngle(Math.max(g0, from));
    const span = Math.min(2 * Math.PI, ((g1 - Math.max(g0, from)) / SWEEP_MS) * 2 * Math.PI);
    ctx.fillStyle = `rgba(0,0,0,${Math.min(1, fade(g1) + 0.3)})`;
    ctx.beginPath(); ctx.moveTo(c, c); ctx.arc(c, c, rad, a0, a0 + span); ctx.closePath(); ctx.fill();
  }
  for (const t of arr) {
    if (t <= from) continue;
    const a = sweepAngle(t);
    ctx.strokeStyle = `rgba(94,234,140,${fade(t)})`; ctx.lineWidth = 1.5;
    ctx.beginPath(); ctx.moveTo(c + Math.cos(a) * rad * 0.45, c + Math.sin(a) * rad * 0.45); ctx.lineTo(c + Math.cos(a) * rad, c + Math.sin(a) * rad); ctx.stroke();
  }
  // The sweep line at the newest instant heard of.
  const a = sweepAngle(now);
  ctx.strokeStyle = '#d6ffe4'; ctx.lineWidth = 2;
  ctx.beginPath(); ctx.moveTo(c, c); ctx.lineTo(c + Math.cos(a) * rad, c + Math.sin(a) * rad); ctx.stroke();
  return sum;
}
