// The turntable report's radar sweep (lab/turntable/report.ts). The paper, lessons learned: "a
// periodic picture (a sinus or a radar sweep) with the missing sector showing the downtime".
import type { TurntableMigration, TurntableResult } from '../types.ts';
import { c, esc, finite, group, ms, niceAtLeast, sortedNums } from './format.ts';
import { migrations } from './data.ts';
import { COLOURS } from './styles.ts';
import { longestGap, spacing, type Gap } from './streams.ts';

function polar(cx: number, cy: number, rad: number, angle: number): [number, number] {
  // Clockwise from 12 o'clock, as a radar sweeps.
  return [cx + rad * Math.sin(angle), cy - rad * Math.cos(angle)];
}

function radarSvg(m: TurntableMigration, label: string): string {
  const tl = m.timeline;
  let stream = 'UDP echo';
  let s = sortedNums(tl?.udp);
  if (s.length < 2) { s = sortedNums(tl?.ping); stream = 'ping'; }
  let gap: (Gap & { open?: boolean }) | null = longestGap(s);
  if (!gap || s.length < 3) return `<figure><h3>${esc(label)}</h3><p class="muted">Too few replies recorded to draw a sweep.</p></figure>`;
  // A pause that outlasts the recorded window (non-live) ends at the window's edge: drawn open.
  let dataStart = s[0]!, dataEnd = s[s.length - 1]!;
  if (finite(tl?.toMs) && tl.toMs - dataEnd > gap.b - gap.a) { gap = { a: dataEnd, b: tl.toMs, open: true }; dataEnd = tl.toMs; }
  if (finite(tl?.fromMs) && s[0]! - tl.fromMs > gap.b - gap.a) { gap = { a: tl.fromMs, b: s[0]!, open: true }; dataStart = tl.fromMs; }
  const gapMs = gap.b - gap.a;
  const gapText = gap.open ? `paused ≥ ${ms(gapMs)}` : `paused ${ms(gapMs)}`;
  // The period makes the pause a clear sector (a quarter to 40% of a turn) and never a full turn;
  // when the recorded window is short beside the pause (non-live), a larger sector keeps at
  // least a turn of sweep in the picture.
  const sp = spacing(s);
  const span = dataEnd - dataStart;
  const P = niceAtLeast(Math.max(Math.min(gapMs * 2.5, Math.max(gapMs * 1.25, span / 2)), sp * 20, 100));
  const tStart = Math.max(dataStart, gap.a - 2 * P);
  const tEnd = Math.min(dataEnd, gap.b + 2 * P);
  const shown = s.filter((t) => t >= tStart && t <= tEnd);
  const size = 380, cx = size / 2, cy = size / 2 + 6, R = 150, r0 = 34;
  const angle = (t: number) => ((((t % P) + P) % P) / P) * 2 * Math.PI;
  // A spiral: radius grows with time, so successive turns of the sweep do not overlap.
  const rad = (t: number) => r0 + ((t - tStart) / Math.max(1, tEnd - tStart)) * (R - r0);
  const out: string[] = [];
  // Guide rings and the clock face (time within the period).
  for (const k of [0.25, 0.5, 0.75, 1]) out.push(`<circle cx="${cx}" cy="${cy}" r="${c(r0 + (R - r0) * k)}" fill="none" class="grid"/>`);
  for (let q = 0; q < 4; q++) {
    const [x1, y1] = polar(cx, cy, R + 2, (q * Math.PI) / 2);
    const [x2, y2] = polar(cx, cy, R + 14, (q * Math.PI) / 2);
    out.push(`<line class="axis" x1="${c(x1)}" y1="${c(y1)}" x2="${c(x2)}" y2="${c(y2)}"/>`);
    const [tx, ty] = polar(cx, cy, R + 24, (q * Math.PI) / 2);
    out.push(`<text x="${c(tx)}" y="${c(ty + 4)}" text-anchor="middle">${esc(group((q * P) / 4))}</text>`);
  }
  // The missing sector: where the sweep found no reply, across the turn in which it happened.
  const a0 = angle(gap.a);
  let a1 = angle(gap.b);
  if (a1 <= a0) a1 += 2 * Math.PI;
  const band = (R - r0) * (P / Math.max(1, tEnd - tStart));
  const rin = Math.max(4, rad(gap.a) - band * 0.6), rout = Math.min(R + 8, rad(gap.b) + band * 0.6);
  const large = a1 - a0 > Math.PI ? 1 : 0;
  const [ox0, oy0] = polar(cx, cy, rout, a0), [ox1, oy1] = polar(cx, cy, rout, a1);
  const [ix1, iy1] = polar(cx, cy, rin, a1), [ix0, iy0] = polar(cx, cy, rin, a0);
  out.push(`<path d="M${c(ox0)} ${c(oy0)}A${c(rout)} ${c(rout)} 0 ${large} 1 ${c(ox1)} ${c(oy1)}L${c(ix1)} ${c(iy1)}A${c(rin)} ${c(rin)} 0 ${large} 0 ${c(ix0)} ${c(iy0)}Z" fill="${COLOURS.gap}" fill-opacity="0.25" stroke="${COLOURS.gap}" stroke-width="1"><title>${esc(`no ${stream} reply for ${gap.open ? 'at least ' : ''}${ms(gapMs)}`)}</title></path>`);
  for (const a of [a0, a1]) {
    const [ex, ey] = polar(cx, cy, R + 8, a);
    out.push(`<line x1="${cx}" y1="${cy}" x2="${c(ex)}" y2="${c(ey)}" stroke="${COLOURS.gap}" stroke-dasharray="4 3" stroke-width="1"/>`);
  }
  // The sweep: consecutive replies joined along the spiral, at most one point per 2 degrees.
  const thr = Math.max(sp * 3, 5);
  const dt = P / 180;
  let d = '';
  let runStart = 0;
  const emitRun = (i0: number, i1: number) => {
    let tPrev = -Infinity;
    let first = true;
    for (let i = i0; i <= i1; i++) {
      const t = shown[i]!;
      if (i !== i1 && t - tPrev < dt) continue;
      const [px, py] = polar(cx, cy, rad(t), angle(t));
      d += `${first ? 'M' : 'L'}${c(px)} ${c(py)}`;
      first = false;
      tPrev = t;
    }
    if (i0 === i1) { const [px, py] = polar(cx, cy, rad(shown[i0]!), angle(shown[i0]!)); d += `L${c(px + 0.5)} ${c(py)}`; }
  };
  for (let i = 1; i <= shown.length; i++) {
    if (i === shown.length || shown[i]! - shown[i - 1]! > thr) { emitRun(runStart, i - 1); runStart = i; }
  }
  out.push(`<path d="${d}" fill="none" stroke="${stream === 'ping' ? COLOURS.ping : COLOURS.udp}" stroke-width="2.2" stroke-linecap="round" stroke-linejoin="round"/>`);
  // The label sits outside the circle at the middle of the missing sector.
  const mid = (a0 + a1) / 2;
  const [lx, ly] = polar(cx, cy, R + 40, mid);
  const anchor = Math.sin(mid) > 0.3 ? 'start' : Math.sin(mid) < -0.3 ? 'end' : 'middle';
  const [px, py] = polar(cx, cy, (rin + rout) / 2, mid);
  const [qx, qy] = polar(cx, cy, R + 30, mid);
  out.push(`<line x1="${c(px)}" y1="${c(py)}" x2="${c(qx)}" y2="${c(qy)}" stroke="${COLOURS.gap}" stroke-width="1.2"/>`);
  out.push(`<text class="gapl" x="${c(lx)}" y="${c(ly + 4)}" text-anchor="${anchor}">${esc(gapText)}</text>`);
  const W = size + 220;
  const svg = `<svg viewBox="${-110} ${-40} ${W} ${size + 80}" width="${W}" height="${size + 80}" role="img" aria-label="${esc(`radar sweep of ${label}`)}">${out.join('')}</svg>`;
  return `<figure><h3>${esc(label)}</h3>${svg}
<figcaption>${esc(stream)} replies as a radar sweep: angle = arrival time mod ${esc(ms(P))} (clockwise from the top), radius grows with time over ${esc(ms(tEnd - tStart))}. The shaded sector is where no reply came back: ${esc(gap.open ? `at least ${ms(gapMs)}, to the edge of the recorded window` : ms(gapMs))} (recorded ${esc(stream === 'ping' ? 'ping' : 'UDP')} figure ${esc(ms(stream === 'ping' ? m.downtimeMs?.ping : m.downtimeMs?.udp))}).</figcaption></figure>`;
}

export function radarSection(r: TurntableResult): string {
  const ms_ = migrations(r);
  const live = ms_.filter((m) => m.mode === 'live' && m.ok && finite(m.downtimeMs?.udp)).sort((a, b) => a.downtimeMs.udp! - b.downtimeMs.udp!);
  // The live migration with the median UDP downtime (the lower median for an even count).
  const pick = live.length ? live[(live.length - 1) >> 1] : ms_.find((m) => m.mode === 'live' && m.ok);
  const nonlive = ms_.find((m) => m.mode === 'nonlive' && m.ok) ?? ms_.find((m) => m.mode === 'nonlive');
  const figs: string[] = [];
  if (pick) figs.push(radarSvg(pick, `Live, round ${pick.round} (${pick.from} → ${pick.to}), median UDP downtime`));
  if (nonlive) figs.push(radarSvg(nonlive, `Non-live, round ${nonlive.round} (${nonlive.from} → ${nonlive.to})`));
  const body = figs.length ? `<div class="radars">${figs.join('\n')}</div>` : '<p class="muted">No migration to draw.</p>';
  return `<section><h2>Radar sweep: the missing sector is the downtime</h2>
<p class="sub">The paper’s lesson: show the downtime as a periodic picture (a sinus or a radar sweep) in which the missing sector shows the downtime.</p>
${body}</section>`;
}
