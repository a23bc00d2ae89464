// Renders a turntable run (turntable.json) as ONE self-contained HTML page: inline CSS, inline
// SVG drawn here, no script, no fonts, nothing fetched. The page puts the paper's figures
// (Travostino et al., iGRID 2005, §6, Tables 1-3 and §6.4) beside this run's, lists every
// migration, draws each switchover's probe timeline, the spread of downtimes over the live
// migrations, and the "radar sweep" the paper's lessons asked for: a periodic picture of the
// client's reply stream in which the missing sector is the time the VM was paused.
//
// Every figure may be null (a probe that saw nothing, a failed migration) and every text that
// comes from the run is escaped. Large sample streams are drawn as pixel runs and gaps, never as
// one element per sample, so the page stays small (about 20 kB of SVG per migration).
import { PAPER, type MigrationTimeline, type Percentiles, type TurntableMigration, type TurntableResult } from './types.ts';

// ---------------------------------------------------------------------------------------------
// Text and number helpers

const ESC: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
/** Escape text for an HTML element body or a quoted attribute. */
export function esc(v: unknown): string {
  return String(v ?? '').replace(/[&<>"']/g, (c) => ESC[c] ?? c);
}

function finite(v: unknown): v is number {
  return typeof v === 'number' && Number.isFinite(v);
}

function group(n: number): string {
  const neg = n < 0;
  const s = Math.abs(Math.round(n)).toString().replace(/\B(?=(\d{3})+(?!\d))/g, ',');
  return neg ? `-${s}` : s;
}

/** "1,234 ms", or the placeholder when there is no figure. */
function ms(v: number | null | undefined, none = '—'): string {
  if (!finite(v)) return none;
  // One decimal below a second when there is one to show (e.g. a measured RTT of 199.2 ms).
  if (Math.abs(v) < 1000 && Math.abs(v - Math.round(v)) >= 0.05) return `${v.toFixed(1)} ms`;
  return `${group(v)} ms`;
}

function num(v: number | null | undefined, digits = 0, unit = ''): string {
  if (!finite(v)) return '—';
  const s = digits === 0 ? group(v) : v.toFixed(digits);
  return unit ? `${s} ${unit}` : s;
}

function bytes(v: number | null | undefined): string {
  if (!finite(v)) return '—';
  if (v >= 1e9) return `${(v / 1e9).toFixed(2)} GB`;
  if (v >= 1e6) return `${(v / 1e6).toFixed(1)} MB`;
  if (v >= 1e3) return `${(v / 1e3).toFixed(1)} kB`;
  return `${group(v)} B`;
}

/** SVG coordinates: short and locale-free. */
function c(v: number): string {
  return (Math.round(v * 10) / 10).toString();
}

function median(xs: number[]): number | null {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** 1, 2, 5 x 10^k step giving about `target` ticks over `span`. */
function niceStep(span: number, target: number): number {
  if (!(span > 0)) return 1;
  const raw = span / Math.max(1, target);
  const p = 10 ** Math.floor(Math.log10(raw));
  const f = raw / p;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * p;
}

/** Smallest 1, 2, 2.5, 5 x 10^k that is at least `v`. */
function niceAtLeast(v: number): number {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const f of [1, 2, 2.5, 5, 10]) if (f * p >= v) return f * p;
  return 10 * p;
}

function sortedNums(xs: readonly unknown[] | null | undefined): number[] {
  return (Array.isArray(xs) ? xs.filter(finite) : []).sort((a, b) => a - b);
}

/** The downtime a client saw: the UDP echo gap, else the ping gap (as the summary defines it). */
function clientSeen(m: TurntableMigration): number | null {
  const d = m.downtimeMs;
  if (finite(d?.udp)) return d.udp;
  if (finite(d?.ping)) return d.ping;
  return null;
}

const COLOURS = { ping: '#1f6fb4', udp: '#2a9d4b', serial: '#d9822b', serialDst: '#b5561b', hypervisor: '#7b4fb0', internal: '#666', gap: '#d62828' };

// ---------------------------------------------------------------------------------------------
// Page

const CSS = `
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2430;background:#f6f7f9}
main{max-width:1240px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:22px;margin:8px 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d5d9e0;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}
.sub{color:#5a6272;margin:0 0 12px}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;border:1px solid #dde1e8;border-radius:6px;padding:10px 14px;min-width:260px;flex:1}
.card h3{margin:0 0 6px}
table{border-collapse:collapse;background:#fff}
table.migs{font-size:12.5px}
td.nw{white-space:nowrap}
th,td{border:1px solid #dde1e8;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef1f5;font-weight:600}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.kv th{width:44%}
table.kv{width:100%}
tr.fail td{background:#fdecec}
.ok{color:#1c7c3a;font-weight:600}.bad{color:#b3261e;font-weight:600}
.muted{color:#6b7280}
.findings li{margin:2px 0}
.scroll{overflow-x:auto}
figure{margin:10px 0 18px;background:#fff;border:1px solid #dde1e8;border-radius:6px;padding:8px}
figcaption{color:#4b5261;font-size:13px;margin-top:4px}
svg text{font:11px system-ui,sans-serif;fill:#333}
svg .axis{stroke:#9aa3b2;stroke-width:1}
svg .grid{stroke:#e6e9ee;stroke-width:1}
svg .mark{stroke:#555;stroke-width:1;stroke-dasharray:3 3}
svg .t0{stroke:#111;stroke-width:1.2}
svg text.lbl{font-weight:600}
svg text.gapl{fill:${COLOURS.gap};font-weight:600;paint-order:stroke;stroke:#fff;stroke-width:3px;stroke-linejoin:round}
.radars{display:flex;flex-wrap:wrap;gap:12px}
.radars figure{flex:0 1 560px;max-width:560px}
.verdict{font-size:12px;color:#4b5261}
`;

export function renderReport(r: TurntableResult): string {
  const cfg = r?.config;
  const migrations = Array.isArray(r?.migrations) ? r.migrations : [];
  const title = `vmtc VM Turntable report — ${migrations.length} migration${migrations.length === 1 ? '' : 's'} over ${num(cfg?.rttMs)} ms RTT`;
  const parts = [
    header(r),
    paperSection(r),
    migrationTable(r),
    distributionSection(r),
    radarSection(r),
    timelineSection(r),
  ];
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>${esc(title)}</title>
<style>${CSS}</style>
</head><body><main>
${parts.join('\n')}
<p class="muted">Generated by vmtc (lab/turntable/report.ts) from turntable.json version ${esc(r?.version)}. Self-contained: no scripts, fonts or external resources.</p>
</main></body></html>
`;
}

function kv(rows: [string, string][]): string {
  return `<table class="kv">${rows.map(([k, v]) => `<tr><th>${esc(k)}</th><td>${v}</td></tr>`).join('')}</table>`;
}

function header(r: TurntableResult): string {
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
    ['Host', esc(cfg?.host ? `${cfg.host.kernel}, ${num(cfg.host.cpus)} CPUs, QEMU ${cfg.host.qemu}, accel ${cfg.host.accel}` : '—')],
  ]);
  const emulator = kv([
    ['Nominal rate', esc(num(em?.nominalMbps, 0, 'Mbit/s'))],
    ['Delivered (peak per second)', esc(num(em?.deliveredMbps, 0, 'Mbit/s'))],
    ['RTT nominal', esc(ms(cfg?.rttMs))],
    ['RTT measured through the lightpath', esc(ms(em?.rttMs))],
    ['Deepest queue', esc(ms(em?.queueMaxMs))],
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
<h2>Findings</h2>
${findings.length ? `<ul class="findings">${findings.map((f) => `<li>${esc(f)}</li>`).join('')}</ul>` : '<p class="muted">No findings were recorded.</p>'}
</header>`;
}

function migrations(r: TurntableResult): TurntableMigration[] {
  return Array.isArray(r?.migrations) ? r.migrations : [];
}

function liveOk(r: TurntableResult): TurntableMigration[] {
  return migrations(r).filter((m) => m.mode === 'live' && m.ok);
}

function pct(p: Percentiles | undefined): string {
  if (!p || !p.n) return 'no samples';
  return `p50 ${ms(p.p50)}, p95 ${ms(p.p95)}, max ${ms(p.max)} (n = ${p.n})`;
}

function verdict(v: number | null, lo: number, hi: number): string {
  if (!finite(v)) return '';
  if (v < lo) return 'below the paper’s figure';
  if (v > hi) return 'above the paper’s figure';
  return 'within the paper’s range';
}

// ---------------------------------------------------------------------------------------------
// The paper beside this run

function paperSection(r: TurntableResult): string {
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
    ['§6.4 — non-live vs live', '—', esc(PAPER.ratio.text), 'non-live elapsed / live client-seen median', ratio, ratioVerdict],
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

function migrationTable(r: TurntableResult): string {
  const ms_ = migrations(r);
  if (ms_.length === 0) return '<section><h2>Migrations</h2><p class="muted">This run has no migrations.</p></section>';
  const head = ['Round', 'From → to', 'Mode', 'OK', 'State', 'Hypervisor', 'Internal', 'Serial', 'Ping', 'UDP', 'Lost ping/UDP/serial', 'Total', 'Control plane', 'QEMU total', 'Bytes', 'Throughput', 'TCP session', 'Runs on afterwards', 'Lightpath peak / queue / drops'];
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
      `<td class="n">${esc(lost)}</td>`,
      `<td class="n">${esc(ms(m.totalMs))}</td>`,
      `<td class="n">${esc(ms(m.controlPlaneMs))}</td>`,
      `<td class="n">${esc(ms(m.hypervisorTotalMs))}</td>`,
      `<td class="n">${esc(bytes(m.bytes))}</td>`,
      `<td class="n">${esc(num(m.throughputMbps, 0, 'Mbit/s'))}</td>`,
      `<td>${m.tcpSessionSurvived ? '<span class="ok">survived</span>' : '<span class="bad">lost</span>'}</td>`,
      `<td${places.length === 1 ? '' : ' class="bad"'}>${places.length ? places.map(esc).join(', ') : 'nowhere'}</td>`,
      `<td class="n">${esc(m.emulator ? `${num(m.emulator.peakMbps, 0, 'Mbit/s')} / ${ms(m.emulator.queueMaxMs)} / ${num(m.emulator.drops)}` : '—')}</td>`,
    ];
    let row = `<tr${m.ok ? '' : ' class="fail"'}>${cells.join('')}</tr>`;
    if (m.error) row += `<tr class="fail"><td></td><td colspan="${head.length - 1}"><span class="bad">${esc(m.error.code)}</span>: ${esc(m.error.message)} <span class="muted">(${esc(m.migrationId)})</span></td></tr>`;
    return row;
  });
  const timings = ms_.filter((m) => m.timings && Object.keys(m.timings).length > 0);
  const timingKeys = [...new Set(timings.flatMap((m) => Object.keys(m.timings)))];
  const timingTable = timingKeys.length
    ? `<h3>Controller time per state</h3><div class="scroll"><table><tr><th>Round</th><th>Migration</th>${timingKeys.map((k) => `<th>${esc(k)}</th>`).join('')}</tr>${timings.map((m) => `<tr><td class="n">${esc(num(m.round))}</td><td>${esc(m.migrationId)}</td>${timingKeys.map((k) => `<td class="n">${esc(ms(m.timings[k]))}</td>`).join('')}</tr>`).join('')}</table></div>`
    : '';
  return `<section><h2>Migrations</h2>
<p class="sub">Downtime figures in ms: hypervisor = QEMU’s own (none for non-live); internal = in-guest clock; serial = silence between the last heartbeat at the source and the first at the destination; ping and UDP = longest gap between replies.</p>
<div class="scroll"><table class="migs">
<tr>${head.map((h) => `<th>${esc(h)}</th>`).join('')}</tr>
${rows.join('\n')}
</table></div>
${timingTable}
</section>`;
}

// ---------------------------------------------------------------------------------------------
// Distribution of downtimes over the live migrations

function distributionSection(r: TurntableResult): string {
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

// ---------------------------------------------------------------------------------------------
// Gaps and runs in a sample stream

interface Gap { a: number; b: number }

/** Gaps longer than `thr` between consecutive samples (samples sorted). */
function gapsOf(s: number[], thr: number): Gap[] {
  const g: Gap[] = [];
  for (let i = 1; i < s.length; i++) if (s[i]! - s[i - 1]! > thr) g.push({ a: s[i - 1]!, b: s[i]! });
  return g;
}

function longestGap(s: number[]): Gap | null {
  let best: Gap | null = null;
  for (let i = 1; i < s.length; i++) if (!best || s[i]! - s[i - 1]! > best.b - best.a) best = { a: s[i - 1]!, b: s[i]! };
  return best;
}

/** Typical spacing of a stream: the median of its consecutive differences. */
function spacing(s: number[]): number {
  const d: number[] = [];
  for (let i = 1; i < s.length; i++) d.push(s[i]! - s[i - 1]!);
  return median(d) ?? 0;
}

/**
 * The samples as filled pixel columns: one path of rectangles covering every column that holds
 * at least one sample, so 5,000 samples cost no more than the plot's width.
 */
function pixelRuns(s: number[], x: (t: number) => number, y: number, h: number, minW: number): string {
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

// ---------------------------------------------------------------------------------------------
// Timelines

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

function timelineSection(r: TurntableResult): string {
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

// ---------------------------------------------------------------------------------------------
// Radar sweep (paper, lessons learned: "a periodic picture (a sinus or a radar sweep) with the
// missing sector showing the downtime")

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

function radarSection(r: TurntableResult): string {
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
