// The turntable report's HTML sections (lab/turntable/report.ts): the header (configuration,
// emulated lightpath, run, findings), the paper's figures beside this run's, and the
// per-migration table.
import { PAPER, type Percentiles, type TurntableMigration, type TurntableResult } from '../types.ts';
import { bytes, esc, finite, group, median, ms, num } from './format.ts';
import { clientSeen, liveOk, migrations, pct, verdict } from './data.ts';

function kv(rows: [string, string][]): string {
  return `<table class="kv">${rows.map(([k, v]) => `<tr><th>${esc(k)}</th><td>${v}</td></tr>`).join('')}</table>`;
}

export function header(r: TurntableResult): string {
  const cfg = r?.config;
  const em = r?.emulator;
  const findings = Array.isArray(r?.findings) ? r.findings : [];
  const load = cfg?.load === 'dirty' ? `dirty: ${esc(num(cfg.dirtyMb))} MB every ${esc(ms(cfg.dirtyPeriodMs))}` : esc(cfg?.load ?? '—');
  const config = kv([
    ['RTT (emulated lightpath)', esc(ms(cfg?.rttMs))],
    ['Line rate', esc(num(cfg?.rateMbps, 0, 'Mbit/s'))],
    ['Guest memory', esc(num(cfg?.memoryMb, 0, 'MB'))],
    ['Load', load],
    ['Rounds', esc(num(cfg?.rounds))],
    ['Probe periods', esc(`ping ${ms(cfg?.pingIntervalMs)}, UDP ${ms(cfg?.udpIntervalMs)}, serial ${ms(cfg?.serialPeriodMs)}, clock ${num(cfg?.clockPeriodUs)} µs`)],
    ['Migration parameters', esc(`bandwidth ${num(cfg?.bandwidthMbps, 0, 'Mbit/s')}, max downtime ${ms(cfg?.maxDowntimeMs)}`)],
    ...(cfg?.retune ? [['Tuned in flight', esc(`${ms(cfg.retune.afterMs)} into each live copy: ${[cfg.retune.bandwidthMbps !== undefined ? `bandwidth ${num(cfg.retune.bandwidthMbps, 0, 'Mbit/s')}` : '', cfg.retune.maxDowntimeMs !== undefined ? `max downtime ${ms(cfg.retune.maxDowntimeMs)}` : ''].filter(Boolean).join(', ')}`)] as [string, string]] : []),
    ['Host', esc(cfg?.host ? `${cfg.host.kernel}, ${num(cfg.host.cpus)} CPUs, QEMU ${cfg.host.qemu}, accel ${cfg.host.accel}` : '—')],
    ['Accelerator', (cfg?.accel ?? 'tcg') === 'kvm' ? 'KVM' : '<strong>TCG</strong> <span class="muted">(figures include TCG’s own costs, e.g. retranslation after a resume)</span>'],
    ['Guest', esc(cfg?.guest === 'populated' ? `populated: ${num(cfg.fillMb)} MiB of non-zero data written at boot${cfg.fill ? ` (in ${ms(cfg.fill.ms)}, guest clock)` : ''}` : 'idle')],
  ]);
  const sched = cfg?.delayLineSched;
  const emulator = kv([
    ['Nominal rate', esc(num(em?.nominalMbps, 0, 'Mbit/s'))],
    ['Delivered (peak per second)', esc(num(em?.deliveredMbps, 0, 'Mbit/s'))],
    ['RTT nominal', esc(ms(cfg?.rttMs))],
    ['RTT measured through the lightpath', esc(ms(em?.rttMs))],
    ['Deepest queue', esc(`${ms(em?.queueMaxMs)}${cfg?.queueMs !== undefined ? ` of ${ms(cfg.queueMs)} (${cfg.queueSizing === 'given' ? '--queue-ms' : 'bandwidth-delay product'})` : ''}`)],
    ['Relay scheduling', sched ? `${esc(sched.policy === 'other' ? 'normal priority' : `SCHED_${sched.policy.toUpperCase()} ${sched.priority}`)} on CPU ${esc(sched.cpus)}${sched.warning ? ` <span class="bad">${esc(sched.warning)}</span>` : ''}` : '—'],
    ['Drops', esc(num(em?.drops))],
  ]);
  const run = kv([
    ['Started', esc(cfg?.startedAt ?? '—')],
    ['Finished', esc(r?.finishedAt ?? '—')],
    ['Duration', esc(finite(r?.durationMs) ? `${(r.durationMs / 1000).toFixed(1)} s` : '—')],
    ['Live migrations ok', esc(`${num(r?.summary?.liveOk)} of ${num(r?.summary?.liveTotal)}`)],
    ['Output', esc(cfg?.out ?? '—')],
  ]);
  return `<header>
<h1>VM Turntable: ${esc(num(cfg?.rttMs))} ms RTT, ${esc(num(cfg?.memoryMb))} MB guest, ${esc(num(migrations(r).length))} migrations</h1>
<p class="sub">A VM moved back and forth between two lab sites over an emulated lightpath, its downtime measured by several probes, beside the figures of Travostino et al., “Seamless live migration of virtual machines over the MAN/WAN” (iGRID 2005).</p>
<div class="cards">
<div class="card"><h3>Configuration</h3>${config}</div>
<div class="card"><h3>Emulated lightpath</h3>${emulator}</div>
<div class="card"><h3>Run</h3>${run}</div>
</div>
${unreliableBox(r)}
<h2>Findings</h2>
${findings.length ? `<ul class="findings">${findings.map((f) => `<li>${esc(f)}</li>`).join('')}</ul>` : '<p class="muted">No findings were recorded.</p>'}
</header>`;
}

/** Migrations whose figures the delay line may have moved: said loudly, at the top. */
function unreliableBox(r: TurntableResult): string {
  const bad = migrations(r).filter((m) => m.reliable === false);
  if (!bad.length) return '';
  return `<div class="card fail"><h3 class="bad">Unreliable: ${bad.length} migration${bad.length === 1 ? '' : 's'} left out of every percentile and ratio</h3><ul>${bad.map((m) => `<li>${esc(`${m.mode} ${m.round} (${m.migrationId}): ${(m.emulator?.reasons ?? []).join('; ')}`)}</li>`).join('')}</ul></div>`;
}

// ---------------------------------------------------------------------------------------------
// The paper beside this run

/** summary.copyVsBulk as ratios (lab/turntable/bulk.ts), or why there is none. */
export function copyVsBulkCell(p: Percentiles | undefined): string {
  if (!p || !p.n) return '<span class="muted">no bulk TCP figure in this run</span>';
  const x = (v: number | null) => (finite(v) ? `${v.toFixed(2)}×` : '—');
  return esc(`p50 ${x(p.p50)}, p95 ${x(p.p95)}, max ${x(p.max)} (n = ${p.n})`);
}

export function paperSection(r: TurntableResult): string {
  const s = r?.summary;
  const live = liveOk(r);
  const seen = live.map(clientSeen).filter(finite);
  const seenMed = finite(s?.liveClientMedianMs) ? s.liveClientMedianMs : median(seen);
  const seenRange = seen.length ? `range ${ms(Math.min(...seen))}–${ms(Math.max(...seen))} over ${seen.length} live migration${seen.length === 1 ? '' : 's'}` : 'no live migration gave a client-seen figure';
  const internal = live.map((m) => m.downtimeMs?.internal).filter(finite);
  const internalFinding = (Array.isArray(r?.findings) ? r.findings : []).filter((f) => /internal|clock/i.test(f));
  const internalCell = internal.length
    ? `${esc(ms(median(internal)))} median (${esc(ms(Math.min(...internal)))}–${esc(ms(Math.max(...internal)))}, n = ${internal.length})`
    : `<strong>unavailable</strong>${internalFinding.length ? `<br><span class="muted">${internalFinding.map(esc).join('<br>')}</span>` : '<br><span class="muted">the in-guest clock probe did not see the pause in any live migration</span>'}`;
  const [t1lo, t1hi] = PAPER.table1.downtimeMsRange;
  const rtt = `${ms(r?.config?.rttMs)} nominal, ${ms(r?.emulator?.rttMs)} measured`;
  const ratio = finite(s?.liveNonLiveRatio)
    ? `${esc(s.liveNonLiveRatio >= 10 ? group(s.liveNonLiveRatio) : s.liveNonLiveRatio.toFixed(1))}× (non-live ${esc(ms(s.nonLiveElapsedMs))} / live median ${esc(ms(s.liveClientMedianMs))})`
    : `unavailable <span class="muted">(${migrations(r).some((m) => m.mode === 'nonlive') ? 'the non-live or live figure is missing' : 'this run has no non-live migration'})</span>`;
  const ratioVerdict = finite(s?.liveNonLiveRatio) ? (s.liveNonLiveRatio >= 10 ? 'one order of magnitude or more, as in the paper' : 'less than the paper’s one to two orders of magnitude') : '';
  const rows = [
    ['Table 1 — iGRID 2005, application downtime', `${ms(PAPER.table1.rttMs)} RTT`, `${esc(ms(t1lo))}–${esc(ms(t1hi))} (0.8–1.6 s)`, 'client-seen downtime (UDP echo gap, else ping gap)', `${esc(ms(seenMed))} median<br><span class="muted">${esc(seenRange)}</span>`, verdict(seenMed, t1lo, t1hi)],
    ['Table 2 — lab, internal (in-guest clock)', `${ms(PAPER.table2.rttMs)} RTT`, esc(ms(PAPER.table2.internalMs)), 'in-guest clock probe', internalCell, verdict(median(internal), PAPER.table2.internalMs, PAPER.table2.internalMs)],
    ['Table 2 — lab, external (serial line)', `${ms(PAPER.table2.rttMs)} RTT`, esc(ms(PAPER.table2.externalMs)), 'serial heartbeat silence', esc(pct(s?.serial)), verdict(s?.serial?.p50 ?? null, PAPER.table2.externalMs, PAPER.table2.externalMs)],
    ['Table 3 — client pinging every 50 ms', `${ms(PAPER.table3.rttMs)} RTT`, esc(ms(PAPER.table3.pingMs)), `longest gap between replies of a ${ms(r?.config?.pingIntervalMs)} ping`, esc(pct(s?.ping)), verdict(s?.ping?.p50 ?? null, PAPER.table3.pingMs, PAPER.table3.pingMs)],
    ['QEMU’s own figure', '—', '—', 'hypervisor-reported downtime', esc(pct(s?.hypervisor)), ''],
    ['UDP echo (2 ms)', '—', '—', 'longest gap between UDP echo replies', esc(pct(s?.udp)), ''],
    ['Copy vs bulk TCP (goal ≤ 1.2 + 1 RTT)', '—', '—', `QEMU’s total ÷ (bytes ÷ the same path’s bulk TCP rate${r?.config?.bulkTcp ? `, ${r.config.bulkTcp.steadyMbps ?? r.config.bulkTcp.mbps} Mbit/s` : ''})`, copyVsBulkCell(s?.copyVsBulk), ''],
    ['§6.4 — non-live vs live', '—', esc(PAPER.ratio.text), `non-live elapsed / live client-seen median (${r?.config?.guest === 'populated' ? 'populated' : 'idle'} guest, ${(r?.config?.accel ?? 'tcg').toUpperCase()})`, ratio, ratioVerdict],
  ];
  return `<section><h2>The paper’s figures beside this run’s</h2>
<p class="sub">This run: ${esc(rtt)} RTT. The paper’s Table 1 was measured at iGRID 2005 (Amsterdam–San Diego, 198 ms RTT); Tables 2 and 3 in its lab (175 ms RTT).</p>
<div class="scroll"><table>
<tr><th>Figure</th><th>Paper RTT</th><th>Paper</th><th>This run measures</th><th>This run</th><th>Comparison</th></tr>
${rows.map(([a, b, p, what, run, v]) => `<tr><td>${esc(a)}</td><td class="n">${esc(b)}</td><td>${p}</td><td>${esc(what)}</td><td>${run}</td><td class="verdict">${esc(v)}</td></tr>`).join('\n')}
</table></div></section>`;
}

// ---------------------------------------------------------------------------------------------
// Per-migration table

/** The guest's memory check (lab/guest/verify.ts): verified, damaged (with its evidence), or not checked. */
function memoryCell(mem: TurntableMigration['memory']): string {
  if (!mem) return '—';
  if (mem.evidence) return `<span class="bad" title="${esc(mem.evidence)}">damaged</span>`;
  return mem.verified ? `<span class="ok">verified</span> <span class="muted">(${esc(num(mem.passesAfter))} passes)</span>` : '<span class="muted">not verified</span>';
}

/** Tuning in flight (lab/turntable/retune.ts): what was asked, when, and the answer. */
function retuneCell(t: TurntableMigration['retuned']): string {
  if (!t) return '—';
  const what = [t.bandwidthMbps !== undefined ? num(t.bandwidthMbps, 0, 'Mbit/s') : '', t.maxDowntimeMs !== undefined ? ms(t.maxDowntimeMs) : ''].filter(Boolean).join(', ');
  const answer = t.ok ? '<span class="ok">ok</span>' : `<span class="bad">${esc(t.code ?? String(t.status))}</span>`;
  return `${esc(what)} at ${esc(ms(t.atMs))}: ${answer}${t.state ? ` <span class="muted">(${esc(t.state)})</span>` : ''}`;
}

function agreementLine(r: TurntableResult): string {
  const a = r?.summary?.agreement;
  if (!a || (!a.passiveVsUdp?.n && !a.probeVsUdp?.n)) return '';
  const one = (name: string, p: { p50: number | null; max: number | null; n: number }) => `${name} vs UDP: median ${ms(p.p50)}, worst ${ms(p.max)} (n=${p.n})`;
  return ` Agreement |tunnel − UDP|: ${esc(one('passive', a.passiveVsUdp))}; ${esc(one('probe', a.probeVsUdp))}.`;
}

export function migrationTable(r: TurntableResult): string {
  const ms_ = migrations(r);
  if (ms_.length === 0) return '<section><h2>Migrations</h2><p class="muted">This run has no migrations.</p></section>';
  const retune = !!r?.config?.retune;
  const head = ['Round', 'From → to', 'Mode', 'OK', 'State', 'Hypervisor', 'Internal', 'Serial', 'Ping', 'UDP', 'Tunnel passive', 'Tunnel probe', 'Lost ping/UDP/serial', 'Total', 'Control plane', 'QEMU total', 'Bytes', 'Throughput', 'TCP session', 'Guest memory', ...(retune ? ['Retuned'] : []), 'Runs on afterwards', 'Lightpath peak / queue / drops', 'Figures'];
  const rows = ms_.map((m) => {
    const d = m.downtimeMs ?? ({} as TurntableMigration['downtimeMs']);
    const lost = m.lost ? `${num(m.lost.ping)} / ${num(m.lost.udp)} / ${num(m.lost.serial)}` : '—';
    const places = Array.isArray(m.placesAfter) ? m.placesAfter : [];
    const cells = [
      `<td class="n">${esc(num(m.round))}</td>`,
      `<td class="nw">${esc(m.from)} → ${esc(m.to)}</td>`,
      `<td>${esc(m.mode)}</td>`,
      `<td>${m.ok ? '<span class="ok">yes</span>' : '<span class="bad">no</span>'}</td>`,
      `<td>${esc(m.state)}</td>`,
      `<td class="n">${esc(ms(d.hypervisor))}</td>`,
      `<td class="n">${esc(ms(d.internal, 'unavailable'))}</td>`,
      `<td class="n">${esc(ms(d.serial))}</td>`,
      `<td class="n">${esc(ms(d.ping))}</td>`,
      `<td class="n">${esc(ms(d.udp))}</td>`,
      `<td class="n">${esc(ms(d.tunnelPassive))}</td>`,
      `<td class="n">${esc(ms(d.tunnelProbe))}</td>`,
      `<td class="n">${esc(lost)}</td>`,
      `<td class="n">${esc(ms(m.totalMs))}</td>`,
      `<td class="n">${esc(ms(m.controlPlaneMs))}</td>`,
      `<td class="n">${esc(ms(m.hypervisorTotalMs))}</td>`,
      `<td class="n">${esc(bytes(m.bytes))}</td>`,
      `<td class="n">${esc(num(m.throughputMbps, 0, 'Mbit/s'))}</td>`,
      `<td>${m.tcpSessionSurvived ? '<span class="ok">survived</span>' : '<span class="bad">lost</span>'}</td>`,
      `<td>${memoryCell(m.memory)}</td>`,
      ...(retune ? [`<td class="nw">${retuneCell(m.retuned)}</td>`] : []),
      `<td${places.length === 1 ? '' : ' class="bad"'}>${places.length ? places.map(esc).join(', ') : 'nowhere'}</td>`,
      `<td class="n">${esc(m.emulator ? `${num(m.emulator.peakMbps, 0, 'Mbit/s')} / ${ms(m.emulator.queueMaxMs)} / ${num(m.emulator.drops)}` : '—')}</td>`,
      `<td>${m.reliable === false ? '<span class="bad">UNRELIABLE</span>' : '<span class="ok">reliable</span>'}</td>`,
    ];
    let row = `<tr${m.ok ? '' : ' class="fail"'}>${cells.join('')}</tr>`;
    if (m.reliable === false) row += `<tr class="fail"><td></td><td colspan="${head.length - 1}"><span class="bad">UNRELIABLE</span>: ${esc((m.emulator?.reasons ?? []).join('; '))}; left out of the percentiles and the ratio</td></tr>`;
    if (m.error) row += `<tr class="fail"><td></td><td colspan="${head.length - 1}"><span class="bad">${esc(m.error.code)}</span>: ${esc(m.error.message)} <span class="muted">(${esc(m.migrationId)})</span></td></tr>`;
    return row;
  });
  const timings = ms_.filter((m) => m.timings && Object.keys(m.timings).length > 0);
  const timingKeys = [...new Set(timings.flatMap((m) => Object.keys(m.timings)))];
  const timingTable = timingKeys.length
    ? `<h3>Controller time per state</h3><div class="scroll"><table><tr><th>Round</th><th>Migration</th>${timingKeys.map((k) => `<th>${esc(k)}</th>`).join('')}</tr>${timings.map((m) => `<tr><td class="n">${esc(num(m.round))}</td><td>${esc(m.migrationId)}</td>${timingKeys.map((k) => `<td class="n">${esc(ms(m.timings[k]))}</td>`).join('')}</tr>`).join('')}</table></div>`
    : '';
  return `<section><h2>Migrations</h2>
<p class="sub">Downtime figures in ms: hypervisor = QEMU’s own (none for non-live); internal = in-guest clock; serial = silence between the last heartbeat at the source and the first at the destination; ping and UDP = longest gap between replies; tunnel passive / probe = the tunnel agent’s own figures from the migration record (longest gap between the VM’s frames coming back through the tunnel / between replies of its 20 ms ICMP echo, from bicast to prune).${agreementLine(r)}</p>
<div class="scroll"><table class="migs">
<tr>${head.map((h) => `<th>${esc(h)}</th>`).join('')}</tr>
${rows.join('\n')}
</table></div>
${timingTable}
</section>`;
}
