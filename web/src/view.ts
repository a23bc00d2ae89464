// Draws the model: sites and hosts with capacity, VMs where they run, migrations in flight
// (state timeline, progress, radar), lightpath reservations on a time axis, and history.
// Sections are rebuilt from the model on each change; the header (and its focus) stays.
import { h, svg } from './dom.ts';
import { drawRadar, radarSummary } from './radar.ts';
import { history, inFlight, LIVE_STATES, type Host, type Migration, type Model } from './model.ts';

const time = (iso: string) => new Date(iso).toLocaleTimeString([], { hour12: false });
const ms = (v: number | null | undefined) => (v === null || v === undefined ? '–' : `${Math.round(v)} ms`);
const mb = (v: number) => (v >= 1024 ? `${(v / 1024).toFixed(1)} GiB` : `${v} MiB`);

function section(id: string, title: string, ...body: (Node | null)[]): HTMLElement {
  return h('section', { id, 'aria-labelledby': `${id}-h` }, h('h2', { id: `${id}-h` }, title), ...body);
}

function table(caption: string, head: string[], rows: (Node | string)[][], empty: string): HTMLElement {
  if (rows.length === 0) return h('p', { class: 'empty' }, empty);
  return h('div', { class: 'scroll', tabindex: 0, role: 'region', 'aria-label': caption },
    h('table', {},
      h('caption', { class: 'sr-only' }, caption),
      h('thead', {}, h('tr', {}, head.map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', {}, rows.map((r) => h('tr', {}, r.map((c, i) => (i === 0 ? h('th', { scope: 'row' }, c) : h('td', {}, c))))))));
}

function capacity(label: string, used: number, held: number, total: number, fmt: (n: number) => string): HTMLElement {
  const pct = total > 0 ? Math.min(100, ((used + held) / total) * 100) : 0;
  const bar = h('span', { class: 'cap-used' });
  bar.style.width = `${pct}%`;
  return h('span', { class: 'cap', title: `${label}: ${fmt(used)} used, ${fmt(held)} held of ${fmt(total)}` },
    h('span', { class: 'cap-bar', 'aria-hidden': 'true' }, bar),
    h('span', {}, `${fmt(used + held)} / ${fmt(total)}`));
}

function hostsView(m: Model): HTMLElement {
  const bySite = [...m.hosts].sort((a, b) => (a.site ?? '').localeCompare(b.site ?? '') || a.hostId.localeCompare(b.hostId));
  const sites = new Set(bySite.map((x) => x.site ?? '(no site)'));
  return section('hosts', `Sites and hosts (${sites.size} sites, ${m.hosts.length} hosts)`,
    table('Hosts by site', ['Host', 'Site', 'Link', 'Hypervisor', 'vCPUs', 'Memory'], bySite.map((x: Host) => [
      x.hostId, x.site ?? '–',
      h('span', { class: x.connected ? 'ok' : 'bad' }, x.connected ? 'connected' : 'disconnected'),
      x.hypervisor ? `${x.hypervisor.type} ${x.hypervisor.version}` : '–',
      capacity('vCPUs', x.used.vcpus, x.held.vcpus, x.totals.vcpus, String),
      capacity('Memory', x.used.memoryMb, x.held.memoryMb, x.totals.memoryMb, mb),
    ]), 'No host has enrolled yet.'));
}

function vmsView(m: Model): HTMLElement {
  const vms = [...m.vms].sort((a, b) => a.vmId.localeCompare(b.vmId));
  return section('vms', `VMs (${vms.length})`,
    table('VMs and where they run', ['VM', 'Project', 'State', 'Host', 'Site', 'vCPUs', 'Memory', 'Migration'], vms.map((v) => [
      v.vmId, v.project, v.state, v.hostId, v.site ?? '–', String(v.vcpus), mb(v.memoryMb), v.migrationId ?? '–',
    ]), 'No VM runs.'));
}

function timeline(mig: Migration): HTMLElement {
  const ts = mig.transitions ?? [];
  const seen = new Map(ts.map((t) => [t.to, t.at]));
  const states = mig.path === 'cold' || mig.mode === 'cold' ? ts.map((t) => t.to) : [...new Set([...LIVE_STATES.filter((s) => seen.has(s) || !mig.terminal), ...ts.map((t) => t.to)])];
  return h('ol', { class: 'timeline', 'aria-label': `State timeline of ${mig.id}` },
    states.map((s) => h('li', {
      class: s === mig.state ? 'now' : seen.has(s) ? 'done' : 'todo',
      ...(s === mig.state ? { 'aria-current': 'step' } : {}),
      'data-state': s,
    }, h('span', { class: 'st' }, s), seen.has(s) ? h('time', { datetime: seen.get(s)! }, time(seen.get(s)!)) : null)));
}

function downtimeView(mig: Migration): HTMLElement {
  const d = mig.downtime ?? {};
  const hyper = d.hypervisor ?? mig.result?.downtimeMs;
  return h('dl', { class: 'downtime', 'data-downtime': mig.id },
    h('dt', {}, 'Hypervisor'), h('dd', { 'data-figure': 'hypervisor' }, ms(hyper)),
    h('dt', {}, 'Tunnel probe'), h('dd', { 'data-figure': 'tunnelProbe' }, ms(d.tunnelProbe?.gapMs)),
    h('dt', {}, 'Tunnel passive'), h('dd', { 'data-figure': 'tunnelPassive' }, ms(d.tunnelPassive?.gapMs)));
}

export function radarView(m: Model, mig: Migration): HTMLElement | null {
  const r = m.radars.get(mig.id);
  if (!r) return h('p', { class: 'empty radar-none', 'data-radar-none': mig.id }, mig.terminal ? 'No probe stream was seen for this migration.' : 'Waiting for the tunnel agent\'s probe stream…');
  const canvas = h('canvas', { class: 'radar', width: 220, height: 220, role: 'img' });
  const sum = radarSummary(r.samples.values(), r.periodMs);
  canvas.setAttribute('aria-label', `Probe radar of ${mig.vmId}: ${sum.sent} probes every ${r.periodMs} ms, ${sum.missing} unanswered, longest silence ${ms(sum.longestSilenceMs)}`);
  const fig = h('figure', { class: 'radar-fig', 'data-radar': mig.id, 'data-sent': sum.sent, 'data-missing': sum.missing, 'data-longest-ms': sum.longestSilenceMs ?? '' },
    canvas,
    h('figcaption', {}, `${sum.sent} probes (${r.periodMs} ms), ${sum.missing} unanswered; longest silence ${ms(sum.longestSilenceMs)}${r.final ? '' : ' · live'}`));
  // Drawn once the canvas is in the page and has its size.
  requestAnimationFrame(() => drawRadar(canvas, r));
  return fig;
}

function progressView(mig: Migration): HTMLElement | null {
  const p = mig.progress;
  // Once finished, the record's result says what moved; the last report would read as stalled.
  if (!p || !p.totalBytes || mig.terminal) return null;
  const done = Math.min(p.totalBytes, p.transferredBytes ?? 0);
  return h('p', { class: 'progress' },
    h('label', { for: `prog-${mig.id}` }, `Copy${p.pass ? ` (pass ${p.pass})` : ''}: `),
    h('progress', { id: `prog-${mig.id}`, max: p.totalBytes, value: done }, `${Math.round((done / p.totalBytes) * 100)}%`),
    ` ${Math.round((done / p.totalBytes) * 100)}%${p.throughputMbps ? `, ${Math.round(p.throughputMbps)} Mbit/s` : ''}`);
}

function migrationCard(m: Model, mig: Migration): HTMLElement {
  return h('article', { class: 'mig', 'data-migration': mig.id, 'aria-labelledby': `mig-${mig.id}` },
    h('h3', { id: `mig-${mig.id}` }, `${mig.vmId}: ${mig.sourceHostId} → ${mig.destinationHostId} `, h('span', { class: `badge s-${mig.state}`, 'data-current-state': mig.state }, mig.state)),
    h('p', { class: 'meta' }, `${mig.id} · ${mig.mode} · started ${time(mig.createdAt)}`),
    mig.error ? h('p', { class: 'bad', role: 'status' }, `${mig.error.code}: ${mig.error.message}`) : null,
    h('div', { class: 'mig-body' },
      h('div', {}, timeline(mig), progressView(mig), downtimeView(mig)),
      radarView(m, mig)));
}

function reservationsView(m: Model): HTMLElement {
  const migs = [...m.migrations.values()];
  const withPath = migs.filter((x) => x.steps?.lightpath?.reservationId);
  const skipped = [...new Set(migs.map((x) => x.steps?.lightpath?.skipped).filter((s): s is string => !!s))];
  if (withPath.length === 0) {
    return section('lightpaths', 'Lightpath reservations', h('p', { class: 'empty' }, `No lightpath reserved by the migrations shown.${skipped.length ? ` Skipped: ${skipped.join('; ')}.` : ''}`));
  }
  const now = Date.now();
  const spans = withPath.map((x) => ({ x, from: Date.parse(x.createdAt), to: x.terminal ? Date.parse(x.updatedAt) : now }));
  const t0 = Math.min(...spans.map((s) => s.from));
  const t1 = Math.max(now, ...spans.map((s) => s.to));
  const W = 600; const row = 22; const H = spans.length * row + 24;
  const xOf = (t: number) => 110 + ((t - t0) / Math.max(1, t1 - t0)) * (W - 120);
  const chart = svg('svg', { viewBox: `0 0 ${W} ${H}`, class: 'axis', role: 'img', 'aria-label': `Lightpath reservations from ${new Date(t0).toLocaleTimeString()} to ${new Date(t1).toLocaleTimeString()}` },
    ...spans.flatMap((s, i) => [
      svg('text', { x: 4, y: i * row + 15, class: 'axis-label' }, s.x.steps.lightpath!.reservationId!.slice(0, 14)),
      svg('rect', { x: xOf(s.from), y: i * row + 4, width: Math.max(2, xOf(s.to) - xOf(s.from)), height: row - 8, class: s.x.terminal ? 'bar-done' : 'bar-live' },
        svg('title', {}, `${s.x.steps.lightpath!.reservationId} for ${s.x.vmId} (${s.x.request?.bandwidthMbps ?? '?'} Mbit/s), ${new Date(s.from).toLocaleTimeString()}–${s.x.terminal ? new Date(s.to).toLocaleTimeString() : 'now'}`)),
    ]),
    svg('text', { x: 110, y: H - 4, class: 'axis-label' }, new Date(t0).toLocaleTimeString([], { hour12: false })),
    svg('text', { x: W - 70, y: H - 4, class: 'axis-label' }, new Date(t1).toLocaleTimeString([], { hour12: false })));
  return section('lightpaths', 'Lightpath reservations', h('div', { class: 'scroll' }, chart),
    table('Lightpath reservations', ['Reservation', 'VM', 'Bandwidth', 'State'], withPath.map((x) => [
      x.steps.lightpath!.reservationId!, x.vmId, x.request?.bandwidthMbps ? `${x.request.bandwidthMbps} Mbit/s` : '–',
      x.steps.lightpath!.released ? 'released' : x.steps.lightpath!.provisioned ? 'provisioned' : 'reserved',
    ]), ''));
}

function historyView(m: Model, select: (id: string) => void): HTMLElement {
  const rows = history(m);
  const dur = (x: Migration) => `${((Date.parse(x.updatedAt) - Date.parse(x.createdAt)) / 1000).toFixed(1)} s`;
  const sel = m.selected ? m.migrations.get(m.selected) : undefined;
  return section('history', `History (${rows.length})`,
    table('Finished migrations, newest first', ['Migration', 'VM', 'Move', 'Result', 'Took', 'Downtime (hypervisor / probe / passive)', ''], rows.map((x) => [
      x.id, x.vmId, `${x.sourceHostId} → ${x.destinationHostId}`,
      h('span', { class: x.state === 'completed' ? 'ok' : 'bad', 'data-history-state': x.id }, x.state), dur(x),
      h('span', { 'data-history-downtime': x.id }, `${ms(x.downtime?.hypervisor ?? x.result?.downtimeMs)} / ${ms(x.downtime?.tunnelProbe?.gapMs)} / ${ms(x.downtime?.tunnelPassive?.gapMs)}`),
      h('button', { type: 'button', 'data-focus-key': `details-${x.id}`, 'aria-expanded': String(m.selected === x.id), 'aria-controls': 'detail', onclick: () => select(x.id) }, m.selected === x.id ? 'Hide' : 'Details'),
    ]), 'No migration has finished yet.'),
    sel && sel.terminal ? h('div', { id: 'detail' }, migrationCard(m, sel)) : null);
}

export function renderSections(root: HTMLElement, m: Model, select: (id: string) => void): void {
  const live = inFlight(m);
  root.replaceChildren(
    section('inflight', `Migrations in flight (${live.length})`, ...(live.length ? live.map((x) => migrationCard(m, x)) : [h('p', { class: 'empty' }, 'No migration in flight.')])),
    hostsView(m), vmsView(m), reservationsView(m), historyView(m, select));
}
