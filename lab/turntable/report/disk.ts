// The report's disk section (with `--disk-mb`): per migration, the disk bytes it moved and, with
// a replica, what was seeded before it; then with vs without a replica (summary.disk). Figures
// come from turntable.json `migrations[].disk` (lab/turntable/disk.ts diskFigures).
import type { TurntableResult } from '../types.ts';
import { bytes, esc, ms } from './format.ts';

export function diskSection(r: TurntableResult): string {
  const list = (Array.isArray(r?.migrations) ? r.migrations : []).filter((m) => m?.disk);
  if (!list.length) return '';
  const cfg = r.config;
  const load = cfg?.diskLoad;
  const head = ['Round', 'Mode', 'Replica', 'Disk at migration', 'Pre-copy delta', 'Delta at the pause', 'Seed before', 'Deltas before', 'Last delta before', 'Seeding line carried', 'Migration line carried', 'UDP downtime'];
  const rows = list.map((m) => {
    const d = m.disk!;
    const rep = d.replicaUsed ? '<span class="ok">used</span>' : d.replica ? '<span class="bad">not used</span>' : 'none (mirror)';
    const cells = [esc(m.round), esc(m.mode), rep, esc(bytes(d.bytesAtMigration)), esc(bytes(d.precopyDeltaBytes)), `${esc(bytes(d.lastDeltaAtPauseBytes))}${d.lastDeltaAtPauseMs !== null ? ` in ${esc(ms(d.lastDeltaAtPauseMs))}` : ''}`,
      esc(bytes(d.seedBytes)), esc(bytes(d.replicaDeltaBytes)), esc(bytes(d.replicaLastDeltaBytes)), esc(bytes(d.seedDelayLineBytes)), esc(bytes(d.delayLineBytes)), esc(ms(m.downtimeMs?.udp))];
    return `<tr>${cells.map((c, i) => `<td${i > 2 ? ' class="n"' : ''}>${c}</td>`).join('')}</tr>`;
  });
  const c = r.summary?.disk;
  const cmp = c ? `<p>With a replica (${esc(c.with.n)}): disk at migration median ${esc(bytes(c.with.bytesAtMigration.p50))}, UDP downtime median ${esc(ms(c.with.udp.p50))}, seeded ${esc(bytes(c.with.seedBytes.p50))} before.
Without (${esc(c.without.n)}): disk at migration median ${esc(bytes(c.without.bytesAtMigration.p50))}, UDP downtime median ${esc(ms(c.without.udp.p50))}.</p>` : '';
  return `<section><h2>Disk</h2>
<p class="muted">A ${esc(cfg?.diskMb)} MiB qcow2 data disk (${esc(cfg?.diskFillMb)} MiB written before the start)${load ? `, the guest writing ${esc(load.kibPerS)} KiB/s over ${esc(load.windowMb)} MiB` : ', no disk load'}; replica ${esc(cfg?.replica ?? 'off')}. With a replica the move sends the deltas since its last sync; without, the mirror copies the whole disk. The delay lines' figures are UDP payload, both directions (the migration's carries memory too).</p>
${cmp}
<table><thead><tr>${head.map((h) => `<th>${esc(h)}</th>`).join('')}</tr></thead><tbody>
${rows.join('\n')}
</tbody></table></section>`;
}
