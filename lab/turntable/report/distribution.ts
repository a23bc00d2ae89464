// The turntable report's distribution of downtimes over the live migrations: one dot per
// migration and probe beside the summary's percentiles (lab/turntable/report.ts).
import type { Percentiles, TurntableMigration, TurntableResult } from '../types.ts';
import { c, esc, finite, group, ms, niceStep, num } from './format.ts';
import { liveOk } from './data.ts';
import { COLOURS } from './styles.ts';

export function distributionSection(r: TurntableResult): string {
  const live = liveOk(r);
  const s = r?.summary;
  type Key = 'ping' | 'udp' | 'serial' | 'hypervisor' | 'internal';
  const probes: { key: Key; label: string; colour: string; p?: Percentiles }[] = [
    { key: 'ping', label: 'ping', colour: COLOURS.ping, p: s?.ping },
    { key: 'udp', label: 'UDP echo', colour: COLOURS.udp, p: s?.udp },
    { key: 'serial', label: 'serial', colour: COLOURS.serial, p: s?.serial },
    { key: 'hypervisor', label: 'hypervisor (QEMU)', colour: COLOURS.hypervisor, p: s?.hypervisor },
    { key: 'internal', label: 'internal (clock)', colour: COLOURS.internal },
  ];
  const values = probes.map((p) => live.map((m) => ({ v: m.downtimeMs?.[p.key], m })).filter((x): x is { v: number; m: TurntableMigration } => finite(x.v)));
  const all = values.flat().map((x) => x.v);
  for (const p of probes) for (const q of [p.p?.p50, p.p?.p95, p.p?.max]) if (finite(q)) all.push(q);
  if (all.length === 0) return '<section><h2>Downtime over the live migrations</h2><p class="muted">No live migration produced a downtime figure.</p></section>';
  const maxV = Math.max(...all, 1);
  const step = niceStep(maxV, 8);
  const top = Math.ceil((maxV * 1.04) / step) * step;
  const W = 1000, L = 150, R = 30, rowH = 46, T = 10;
  const H = T + probes.length * rowH + 34;
  const x = (v: number) => L + (v / top) * (W - L - R);
  const out: string[] = [];
  for (let t = 0; t <= top + 1e-9; t += step) {
    out.push(`<line class="grid" x1="${c(x(t))}" x2="${c(x(t))}" y1="${T}" y2="${T + probes.length * rowH}"/><text x="${c(x(t))}" y="${T + probes.length * rowH + 14}" text-anchor="middle">${esc(group(t))}</text>`);
  }
  out.push(`<text x="${c((L + W - R) / 2)}" y="${H - 4}" text-anchor="middle">downtime (ms)</text>`);
  probes.forEach((p, i) => {
    const y0 = T + i * rowH;
    const yc = y0 + rowH / 2;
    out.push(`<line class="axis" x1="${L}" x2="${W - R}" y1="${yc}" y2="${yc}"/>`);
    out.push(`<text class="lbl" x="${L - 8}" y="${yc + 4}" text-anchor="end">${esc(p.label)}</text>`);
    values[i]!.forEach(({ v, m }, j) => {
      // A small deterministic vertical jitter keeps equal values apart.
      const jy = yc + (((j * 7) % 5) - 2) * 3.5;
      out.push(`<circle cx="${c(x(v))}" cy="${c(jy)}" r="4.5" fill="${p.colour}" fill-opacity="0.75"><title>${esc(`round ${m.round} ${m.from}→${m.to}: ${ms(v)}`)}</title></circle>`);
    });
    if (values[i]!.length === 0) out.push(`<text x="${L + 6}" y="${yc - 6}" class="muted">no figure</text>`);
    const marks: [string, number | null | undefined][] = [['p50', p.p?.p50], ['p95', p.p?.p95], ['max', p.p?.max]];
    let lastX = -1e9, level = 0;
    for (const [name, v] of marks) {
      if (!finite(v)) continue;
      const xv = x(v);
      level = xv - lastX < 34 ? level + 1 : 0;
      lastX = xv;
      out.push(`<line x1="${c(xv)}" x2="${c(xv)}" y1="${y0 + 6}" y2="${y0 + rowH - 6}" stroke="#111" stroke-width="${name === 'p50' ? 2 : 1}"/>`);
      out.push(`<text x="${c(xv + 3)}" y="${y0 + 12 + level * 11}">${esc(name)}</text>`);
    }
  });
  const table = `<table><tr><th>Probe</th><th>p50</th><th>p95</th><th>max</th><th>n</th></tr>${probes.filter((p) => p.p).map((p) => `<tr><td>${esc(p.label)}</td><td class="n">${esc(ms(p.p!.p50))}</td><td class="n">${esc(ms(p.p!.p95))}</td><td class="n">${esc(ms(p.p!.max))}</td><td class="n">${esc(num(p.p!.n))}</td></tr>`).join('')}</table>`;
  return `<section><h2>Downtime over the live migrations</h2>
<figure><svg viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" role="img" aria-label="downtime per probe">${out.join('')}</svg>
<figcaption>One dot per successful live migration and probe; vertical bars are the summary’s p50 (thick), p95 and max.</figcaption></figure>
${table}
</section>`;
}
