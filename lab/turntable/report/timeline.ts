// The turntable report's timelines: the probes' replies and heartbeats around each switchover
// (lab/turntable/report.ts).
import type { MigrationTimeline, TurntableMigration, TurntableResult } from '../types.ts';
import { c, esc, finite, group, ms, niceStep, num, sortedNums } from './format.ts';
import { migrations } from './data.ts';
import { COLOURS } from './styles.ts';
import { gapsOf, pixelRuns, spacing, type Gap } from './streams.ts';

/** `openGaps`: a silence at the window's edge is a gap (client probes), not the natural end of a stream (serial at one site). */
interface Row { key: string; label: string; colour: string; samples: number[]; period: number | null; openGaps: boolean }

function timelineRows(r: TurntableResult, tl: MigrationTimeline): Row[] {
  const cfg = r?.config;
  return [
    { key: 'ping', label: 'ping replies', colour: COLOURS.ping, samples: sortedNums(tl.ping), period: cfg?.pingIntervalMs ?? null, openGaps: true },
    { key: 'udp', label: 'UDP echo replies', colour: COLOURS.udp, samples: sortedNums(tl.udp), period: cfg?.udpIntervalMs ?? null, openGaps: true },
    { key: 'serialSource', label: 'serial at source', colour: COLOURS.serial, samples: sortedNums(tl.serialSource), period: cfg?.serialPeriodMs ?? null, openGaps: false },
    { key: 'serialDestination', label: 'serial at destination', colour: COLOURS.serialDst, samples: sortedNums(tl.serialDestination), period: cfg?.serialPeriodMs ?? null, openGaps: false },
  ];
}

/** A gap worth shading: several periods long (so one lost probe is not a "gap"). */
function gapThreshold(row: Row): number {
  const p = finite(row.period) && row.period > 0 ? row.period : spacing(row.samples);
  return Math.max(p * 3, 10);
}

/** " (2025-…Z)" for an epoch-ms instant, or nothing when it is not a valid date. */
function isoOf(t: unknown): string {
  if (!finite(t)) return '';
  const d = new Date(t);
  return Number.isNaN(d.getTime()) ? '' : ` (${d.toISOString()})`;
}

function timelineSvg(r: TurntableResult, m: TurntableMigration): string {
  const tl = m.timeline;
  if (!tl || !finite(tl.fromMs) || !finite(tl.toMs) || tl.toMs <= tl.fromMs) return '<p class="muted">No timeline was recorded for this migration.</p>';
  const from = tl.fromMs, to = tl.toMs;
  const rows = timelineRows(r, tl).map((row) => ({ ...row, samples: row.samples.filter((t) => t >= from && t <= to) }));
  const marks = (Array.isArray(tl.marks) ? tl.marks : []).filter((k) => finite(k.at) && k.at >= from && k.at <= to).sort((a, b) => a.at - b.at);
  const W = 1160, L = 150, R = 20, rowH = 30;
  const markLevels = 4;
  const T = 16 + markLevels * 13;
  const plotW = W - L - R;
  const H = T + rows.length * rowH + 36;
  const x = (t: number) => L + ((t - from) / (to - from)) * plotW;
  const out: string[] = [];
  const labels: string[] = []; // drawn last, over the samples
  const step = niceStep(to - from, 12);
  for (let t = Math.ceil(from / step) * step; t <= to + 1e-9; t += step) {
    const xt = c(x(t));
    out.push(`<line class="grid" x1="${xt}" x2="${xt}" y1="${T}" y2="${T + rows.length * rowH}"/><text x="${xt}" y="${T + rows.length * rowH + 14}" text-anchor="middle">${esc(group(t))}</text>`);
  }
  out.push(`<text x="${c(L + plotW / 2)}" y="${H - 4}" text-anchor="middle">ms from t0${esc(isoOf(tl.t0))}</text>`);
  rows.forEach((row, i) => {
    const y0 = T + i * rowH;
    out.push(`<text class="lbl" x="${L - 8}" y="${y0 + rowH / 2 + 4}" text-anchor="end">${esc(row.label)}</text>`);
    out.push(`<line class="axis" x1="${L}" x2="${W - R}" y1="${y0 + rowH - 2}" y2="${y0 + rowH - 2}"/>`);
    if (row.samples.length === 0) {
      out.push(`<text x="${L + 6}" y="${y0 + rowH / 2 + 4}" class="muted">no samples in this window</text>`);
      return;
    }
    // Gaps first (under the samples): shaded, the longest labelled with its length.
    {
      const thr = gapThreshold(row);
      const gaps: (Gap & { open?: boolean })[] = gapsOf(row.samples, thr);
      // A pause longer than the recorded window (a non-live migration) leaves the window's edge
      // without replies: shown as an open gap, its length a lower bound.
      const first = row.samples[0]!, last = row.samples[row.samples.length - 1]!;
      if (row.openGaps && first - from > thr) gaps.push({ a: from, b: first, open: true });
      if (row.openGaps && to - last > thr) gaps.push({ a: last, b: to, open: true });
      gaps.sort((a, b) => (b.b - b.a) - (a.b - a.a)).splice(40);
      gaps.forEach((g, j) => {
        const gx = x(g.a), gw = Math.max(1, x(g.b) - x(g.a));
        const what = g.open ? `no reply from ${ms(g.a)} to the edge of the window (${ms(g.b)})` : `no reply for ${ms(g.b - g.a)} (${ms(g.a)} to ${ms(g.b)})`;
        out.push(`<rect x="${c(gx)}" y="${y0 + 3}" width="${c(gw)}" height="${rowH - 8}" fill="${COLOURS.gap}" fill-opacity="${j === 0 ? 0.22 : 0.12}"><title>${esc(`${row.label}: ${what}`)}</title></rect>`);
        if (j === 0) {
          // Inside the gap when it is wide enough for the text, else just after it.
          const text = g.open ? `gap ≥ ${ms(g.b - g.a)} (window edge)` : `gap ${ms(g.b - g.a)}`;
          const inside = gw > text.length * 6.5 + 8;
          labels.push(`<text class="gapl" x="${c(inside ? gx + gw / 2 : gx + gw + 4)}" y="${y0 + rowH / 2 + 3}"${inside ? ' text-anchor="middle"' : ''}>${esc(text)}</text>`);
        }
      });
    }
    out.push(`<path d="${pixelRuns(row.samples, x, y0 + 6, rowH - 14, 1)}" fill="${row.colour}"/>`);
  });
  // The serial line's silence spans two rows: from the last heartbeat at the source to the first
  // at the destination (the paper's external measurement, Table 2).
  const src = rows[2]!.samples, dst = rows[3]!.samples;
  if (src.length) {
    const a = src[src.length - 1]!;
    const found = dst.find((t) => t >= a);
    // No heartbeat at the destination yet when the window ends: the silence is a lower bound.
    const open = found === undefined && to - a > gapThreshold(rows[2]!);
    const b = found ?? (open ? to : undefined);
    if (b !== undefined && b > a) {
      const y = T + 2 * rowH + rowH - 2;
      out.push(`<path d="M${c(x(a))} ${y - 8}V${y}H${c(x(b))}${open ? '' : `V${y + 8}`}" fill="none" stroke="${COLOURS.gap}" stroke-width="2"${open ? ' stroke-dasharray="6 3"' : ''}/>`);
      const text = open ? `serial silence ≥ ${ms(b - a)} (window edge)` : `serial silence ${ms(b - a)}`;
      const right = x(b) + 4 + text.length * 6.5 < W;
      labels.push(`<text class="gapl" x="${c(right ? x(b) + 4 : (x(a) + x(b)) / 2)}" y="${y + 4}"${right ? '' : ' text-anchor="middle"'}>${esc(text)}</text>`);
    }
  }
  // Marks: vertical lines across every row; each label takes the first line of text above the
  // plot where it does not run into the previous one (or the least crowded line).
  const lineEnd = new Array<number>(markLevels).fill(-1e9);
  const marksOut: string[] = [];
  for (const k of marks) {
    const xk = x(k.at);
    const text = `${k.label} ${ms(k.at)}`;
    const width = text.length * 6 + 6;
    const flip = xk + width > W; // near the right edge the label goes to the left of its line
    const start = flip ? xk - width : xk;
    let level = lineEnd.findIndex((e) => e < start);
    if (level < 0) level = lineEnd.indexOf(Math.min(...lineEnd));
    lineEnd[level] = flip ? xk : xk + width;
    const ly = T - 6 - (markLevels - 1 - level) * 13;
    marksOut.push(`<line class="mark" x1="${c(xk)}" x2="${c(xk)}" y1="${ly + 2}" y2="${T + rows.length * rowH}"/><text x="${c(flip ? xk - 3 : xk + 3)}" y="${ly}"${flip ? ' text-anchor="end"' : ''}>${esc(text)}</text>`);
  }
  if (from <= 0 && to >= 0) marksOut.push(`<line class="t0" x1="${c(x(0))}" x2="${c(x(0))}" y1="${T}" y2="${T + rows.length * rowH}"><title>t0</title></line>`);
  return `<svg viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" role="img" aria-label="${esc(`probe timeline of round ${m.round}`)}">${out.join('')}${marksOut.join('')}${labels.join('')}</svg>`;
}

export function timelineSection(r: TurntableResult): string {
  const ms_ = migrations(r);
  if (ms_.length === 0) return '<section><h2>Timelines</h2><p class="muted">No migrations, no timelines.</p></section>';
  const figs = ms_.map((m) => {
    const d = m.downtimeMs ?? ({} as TurntableMigration['downtimeMs']);
    const status = m.ok ? '' : ` — <span class="bad">failed${m.error ? `: ${esc(m.error.code)}` : ''}</span>`;
    return `<figure><h3>Round ${esc(num(m.round))}: ${esc(m.from)} → ${esc(m.to)}, ${esc(m.mode)}${status}</h3>
<div class="scroll">${timelineSvg(r, m)}</div>
<figcaption>Each row shows when replies or heartbeats arrived (filled = at least one per pixel); red shading = no reply for several probe periods, the longest labelled. Recorded figures: UDP ${esc(ms(d.udp))}, ping ${esc(ms(d.ping))}, serial ${esc(ms(d.serial))}, hypervisor ${esc(ms(d.hypervisor))}.</figcaption></figure>`;
  });
  return `<section><h2>Timelines around each switchover</h2>
<p class="sub">x = ms relative to t0 (the last heartbeat seen at the source, else the start of the UDP gap); dashed lines are the controller’s and QEMU’s marks.</p>
${figs.join('\n')}</section>`;
}
