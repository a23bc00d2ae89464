// The turntable report's breakdown section (lab/turntable/report.ts): per migration, where the
// client-seen downtime went (lab/turntable/breakdown.ts), with each instant's source and the check
// that the steps add up to the UDP figure.
import { STEP_LABELS } from '../breakdown.ts';
import type { TurntableResult } from '../types.ts';
import { esc, ms } from './format.ts';
import { migrations, pct } from './data.ts';

const SOURCES = [
  'source pause: QEMU’s STOP event at the source (its QMP timestamp)',
  'last page: the pause + QEMU’s own downtime figure (query-migrate: its stop to completion at the source)',
  'RESUME: QEMU’s RESUME event at the destination',
  'first heartbeat: the first “hb N” line read on the host side of the destination’s ttyS1',
  'first client reply: the UDP echo reply that ended the client’s outage',
];

export function breakdownSection(r: TurntableResult): string {
  const ms_ = migrations(r).filter((m) => m.breakdown);
  if (!ms_.length) return '';
  const clock = ms_[0]!.breakdown!.clock;
  const rows = ms_.map((m) => {
    const b = m.breakdown!;
    const cells = [
      esc(String(m.round)), esc(m.mode),
      ...STEP_LABELS.map(([k]) => esc(ms(b.stepsMs[k]))),
      esc(ms(b.totalMs)), esc(ms(b.clientSeenMs)), esc(ms(b.leadMs)),
      b.consistent ? '<span class="ok">yes</span>' : `<span class="bad">no</span> <span class="muted">${esc(b.problems.join('; '))}</span>`,
      m.reliable === false ? '<span class="bad">UNRELIABLE</span>' : '',
    ];
    return `<tr${m.reliable === false ? ' class="fail"' : ''}>${cells.map((c, i) => `<td${i >= 2 && i <= 8 ? ' class="n"' : ''}>${c}</td>`).join('')}</tr>`;
  });
  const s = r?.summary?.breakdown;
  const med = s ? `<p class="sub">Over the counted live migrations: ${STEP_LABELS.map(([k, label]) => `${esc(label)} ${esc(pct(s[k]))}`).join('; ')}; sum ${esc(pct(s.total))}.</p>` : '';
  return `<section><h2>Where the downtime goes</h2>
<p class="sub">All instants on one clock: ${esc(clock)} (the lab is one machine). Sources: ${SOURCES.map(esc).join('; ')}. The steps add up to source pause → first client reply; the UDP figure also holds the “lead”, the client’s last reply before the pause, at most one probe period (${esc(ms(r?.config?.udpIntervalMs))}) plus tolerances when the guest answers evenly.</p>
<div class="scroll"><table>
<tr><th>Round</th><th>Mode</th>${STEP_LABELS.map(([, label]) => `<th>${esc(label)}</th>`).join('')}<th>Sum</th><th>UDP</th><th>Lead</th><th>Adds up</th><th></th></tr>
${rows.join('\n')}
</table></div>
${med}
</section>`;
}
