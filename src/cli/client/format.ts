// Human output of the client verbs. Pure functions of the API's JSON (its types are the
// controller's REST schemas, src/controller/schemas.ts), so the wording can be tested without a
// controller; `--json` bypasses all of this and prints the API's JSON as is.
import type { Host, Migration, Progress, Transition, Vm } from '../../controller/schemas.ts';
import { fmtProgressLine } from './progress.ts';

/**
 * A migration record as the formatters read it: the controller's Migration (controller/schemas.ts,
 * what GET /v1/migrations/:id answers) of which only the id, VM, state and times are required, so
 * the wording can be tested on partial records.
 */
export type MigrationView = Pick<Migration, 'id' | 'vmId' | 'state' | 'createdAt' | 'updatedAt'>
  & Partial<Omit<Migration, 'id' | 'vmId' | 'state' | 'createdAt' | 'updatedAt' | 'transitions'>>
  & { transitions?: TransitionView[] };

export type TransitionView = Omit<Transition, 'seq'> & { seq?: number };
/** An operator's change to a running migration (the record's `changes`, the `forced` and `tuned` events). */
export type ChangeView = { at: string; by?: string; what: string; mode?: string; limits?: Record<string, unknown>; reported?: Record<string, unknown> };

/** `force-complete (postcopy) by admin`, `tune bandwidthMbps=100 by ops`. */
export function fmtChange(c: ChangeView): string {
  const what = c.what === 'force-complete' ? `force-complete${c.mode ? ` (${c.mode})` : ''}` : `${c.what}${c.limits ? ` ${fmtDetails(c.limits)}` : ''}`;
  const reported = c.reported && Object.keys(c.reported).length ? `; in effect: ${fmtDetails(c.reported)}` : '';
  return `${what}${c.by ? ` by ${c.by}` : ''}${reported}`;
}
export type ProgressView = Progress;

const MiB = 1024 * 1024;

export function fmtMs(ms: number | undefined | null): string {
  if (ms === undefined || ms === null || !Number.isFinite(ms)) return '-';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(2)} s`;
  const m = Math.floor(ms / 60_000);
  return `${m} min ${Math.round((ms - m * 60_000) / 1000)} s`;
}

export function fmtMiB(bytes: number | undefined | null): string {
  if (bytes === undefined || bytes === null || !Number.isFinite(bytes)) return '-';
  return `${(bytes / MiB).toFixed(1)} MiB`;
}

/** Elapsed seconds as the state lines show them: `+0.012s`, `+12.3s` (steps are often a few ms). */
export function fmtElapsed(ms: number): string {
  const v = Math.max(0, ms);
  return `+${(v / 1000).toFixed(v < 10_000 ? 3 : 1)}s`;
}

/** Left-aligned columns, two spaces apart (kubectl's plain style: `awk` and `column` read it);
 *  numbers as given (callers format them). */
export function table(headers: string[], rows: (string | number | boolean | null | undefined)[][]): string {
  // An empty cell shows as '-' (but in the last column), so every row splits into the same fields.
  const last = headers.length - 1;
  const cells = [headers, ...rows.map((r) => r.map((c, i) => (c === null || c === undefined || (c === '' && i < last) ? '-' : String(c))))];
  const widths = headers.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? '').length)));
  return cells.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd()).join('\n');
}

/** k=v pairs of an error's details, short enough for one line. */
export function fmtDetails(details: Record<string, unknown> | undefined): string {
  if (!details || Object.keys(details).length === 0) return '';
  const parts = Object.entries(details).map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`);
  const s = parts.join(' ');
  return s.length > 300 ? s.slice(0, 297) + '...' : s;
}

export function fmtError(e: { code: string; message: string; details?: Record<string, unknown> }): string {
  const d = fmtDetails(e.details);
  return `${e.code}: ${e.message}${d ? ` (${d})` : ''}`;
}

/** One progress line with every figure (docs/cli.md; progress.ts fits it to a terminal). */
export function fmtProgress(state: string, p: ProgressView | null | undefined): string | undefined {
  return fmtProgressLine(state, p);
}

/**
 * Word-wrap one line to `width` columns for a terminal, continuation lines indented two columns
 * deeper than the line's own indent; a word longer than a line is cut. Lines already narrow
 * enough are returned as they are.
 */
export function wrapText(s: string, width: number): string {
  const w = Math.max(8, Math.floor(width));
  return s.split('\n').map((line) => {
    if (line.length <= w) return line;
    const indent = ' '.repeat(Math.min(w - 4, (/^ */.exec(line)?.[0].length ?? 0) + 2));
    const out: string[] = [];
    let cur = '';
    for (const word of line.trim().split(/ +/)) {
      const lead = out.length === 0 && cur === '' ? line.slice(0, line.length - line.trimStart().length) : '';
      const next = cur === '' ? (out.length ? indent : lead) + word : `${cur} ${word}`;
      if (next.length <= w) { cur = next; continue; }
      if (cur !== '') out.push(cur);
      let rest = (out.length ? indent : lead) + word;
      while (rest.length > w) { out.push(rest.slice(0, w)); rest = indent + rest.slice(w); }
      cur = rest;
    }
    if (cur !== '') out.push(cur);
    return out.join('\n');
  }).join('\n');
}

function route(m: MigrationView): string {
  return `${m.vmId}: ${m.sourceHostId ?? '?'} -> ${m.destinationHostId ?? '?'}`;
}

const ENDED = new Set(['completed', 'rolled_back', 'cancelled', 'failed']);

function ended(m: MigrationView): boolean {
  return m.terminal ?? ENDED.has(m.state);
}

/** How long the migration took (ended) or has been running so far (`now`). */
export function migrationDuration(m: MigrationView, now: number): number {
  return (ended(m) ? Date.parse(m.updatedAt) : now) - Date.parse(m.createdAt);
}

/** Steps in the order the migration went through them (timings are keyed by state name). */
function orderedTimings(m: MigrationView): [string, number][] {
  const timings = m.timings ?? {};
  const order = (m.transitions ?? []).map((t) => t.from).filter((s): s is NonNullable<typeof s> => !!s);
  const seen = new Set<string>();
  const out: [string, number][] = [];
  for (const s of [...order, ...Object.keys(timings)]) {
    if (seen.has(s) || timings[s] === undefined) continue;
    seen.add(s);
    out.push([s, timings[s]!]);
  }
  return out;
}

/** The tunnel agent's figures (docs/tunnel.md "Client-seen downtime"), beside the hypervisor's. */
export function downtimeLine(d: Record<string, unknown> | undefined): string | undefined {
  if (!d) return undefined;
  const parts: string[] = [];
  const p = d.tunnelPassive as { gapMs?: number | null; samples?: number } | undefined;
  const q = d.tunnelProbe as { gapMs?: number | null; sent?: number; received?: number; periodMs?: number } | undefined;
  if (p) parts.push(`passive ${typeof p.gapMs === 'number' ? fmtMs(p.gapMs) : 'not seen'} (${p.samples ?? 0} frames)`);
  if (q) parts.push(`probe ${typeof q.gapMs === 'number' ? fmtMs(q.gapMs) : 'no replies'} (${q.received ?? 0}/${q.sent ?? 0} echoes every ${q.periodMs ?? '?'} ms)`);
  if (typeof d.hypervisor === 'number') parts.push(`hypervisor ${fmtMs(d.hypervisor)}`);
  return parts.length ? parts.join(', ') : undefined;
}

function resultLine(r: MigrationView['result']): string | undefined {
  if (!r || Object.keys(r).length === 0) return undefined;
  const parts: string[] = [];
  if (r.downtimeMs !== undefined) parts.push(`downtime ${fmtMs(r.downtimeMs)} (hypervisor)`);
  if (r.pausedAt !== undefined && r.resumedAt !== undefined) parts.push(`paused-to-resumed ${fmtMs(r.resumedAt - r.pausedAt)}`);
  if (r.transferredBytes !== undefined) parts.push(`transferred ${fmtMiB(r.transferredBytes)}`);
  if (r.totalTimeMs !== undefined) parts.push(`copy time ${fmtMs(r.totalTimeMs)}`);
  if (r.setupTimeMs !== undefined) parts.push(`setup ${fmtMs(r.setupTimeMs)}`);
  return parts.length ? parts.join(', ') : undefined;
}

/** What `vmtc migrate` prints on stdout when the migration has ended. */
export function formatSummary(m: MigrationView): string {
  const lines = [`migration ${m.id} ${m.state}  (${route(m)}, ${m.mode ?? '?'}${m.path && m.path !== m.mode ? `, path ${m.path}` : ''}, ${fmtMs(migrationDuration(m, Date.parse(m.updatedAt)))})`];
  const t = orderedTimings(m);
  if (t.length) {
    lines.push('steps:');
    const w = Math.max(...t.map(([s]) => s.length));
    for (const [s, ms] of t) lines.push(`  ${s.padEnd(w)}  ${fmtMs(ms).padStart(10)}`);
  }
  lines.push(...outcomeLines(m));
  return lines.join('\n');
}

/** `vmtc status ID`: everything the record says, transitions with times. */
export function formatMigrationDetail(m: MigrationView, now: number = Date.now()): string {
  const created = Date.parse(m.createdAt);
  const lines = [
    `migration ${m.id}`,
    `  vm          ${m.vmId}${m.project ? ` (project ${m.project})` : ''}`,
    `  route       ${m.sourceHostId ?? '?'} -> ${m.destinationHostId ?? '?'}`,
    `  mode        ${m.mode ?? '?'}${m.path ? ` (path ${m.path})` : ''}`,
    `  state       ${m.state}${ended(m) ? ' (ended)' : ` (running for ${fmtMs(migrationDuration(m, now))})`}`,
    `  created     ${m.createdAt}`,
    `  updated     ${m.updatedAt}  (${fmtMs(Date.parse(m.updatedAt) - Date.parse(m.createdAt))} after creation)`,
  ];
  const req: Record<string, unknown> = { ...(m.request ?? {}) };
  delete req.vmId;
  delete req.destinationHostId;
  if (Object.keys(req).length) lines.push(`  request     ${fmtDetails(req)}`);
  if (m.transitions?.length) {
    lines.push('transitions:');
    for (const t of m.transitions) {
      lines.push(`  ${fmtElapsed(Date.parse(t.at) - created).padStart(8)}  ${t.at}  ${(t.from ?? '-').padEnd(14)} -> ${t.to.padEnd(14)} ${t.event}`);
    }
  }
  const changes = (m as { changes?: ChangeView[] }).changes ?? [];
  if (changes.length) {
    lines.push('changes:');
    for (const c of changes) lines.push(`  ${fmtElapsed(Date.parse(c.at) - created).padStart(8)}  ${c.at}  ${fmtChange(c)}`);
  }
  const t = orderedTimings(m);
  if (t.length) lines.push(`timings: ${t.map(([s, ms]) => `${s} ${fmtMs(ms)}`).join(', ')}`);
  const steps = Object.entries(m.steps ?? {}).filter(([, v]) => v !== undefined && v !== null);
  if (steps.length) {
    lines.push('steps:');
    for (const [k, v] of steps) lines.push(`  ${k.padEnd(10)}  ${compactJson(v)}`);
  }
  const p = fmtProgress(m.progress?.status ?? m.state, m.progress);
  if (p) lines.push(`progress: ${p}`);
  lines.push(...outcomeLines(m));
  return lines.join('\n');
}

/** How a migration ended or stands: result, error, warnings and what a failed rollback kept. */
function outcomeLines(m: MigrationView): string[] {
  const lines: string[] = [];
  const r = resultLine(m.result);
  if (r) lines.push(`result: ${r}`);
  const d = downtimeLine(m.downtime);
  if (d) lines.push(`client-seen downtime: ${d}`);
  if (m.error) lines.push(`error: ${fmtError(m.error)}`);
  for (const w of m.warnings ?? []) lines.push(`warning: ${fmtError({ code: w.code ?? 'warning', message: w.message ?? '', ...(w.details ? { details: w.details } : {}) })}`);
  for (const k of m.kept ?? []) lines.push(`kept: ${k}`);
  return lines;
}

function compactJson(v: unknown): string {
  const s = JSON.stringify(v);
  return s.length > 400 ? s.slice(0, 397) + '...' : s;
}

/** `vmtc status`: one line per migration, newest first as the API orders them. DURATION is the
 *  time taken (ended) or the time since it started (in flight, at `now`). */
export function formatMigrationTable(ms: MigrationView[], o: { now?: number; wide?: boolean } = {}): string {
  if (!ms.length) return '(no migrations)';
  const now = o.now ?? Date.now();
  const headers = ['ID', 'VM', 'FROM', 'TO', 'MODE', 'STATE', 'CREATED', 'DURATION', 'ERROR'];
  if (o.wide) headers.push('PATH', 'PROJECT', 'TRANSFERRED', 'DOWNTIME', 'UPDATED');
  return table(headers, ms.map((m) => {
    const row: (string | undefined)[] = [m.id, m.vmId, m.sourceHostId, m.destinationHostId, m.mode, m.state, m.createdAt, fmtMs(migrationDuration(m, now)), m.error?.code ?? ''];
    if (o.wide) row.push(m.path, m.project, m.result?.transferredBytes !== undefined ? fmtMiB(m.result.transferredBytes) : '', m.result?.downtimeMs !== undefined ? fmtMs(m.result.downtimeMs) : '', m.updatedAt);
    return row;
  }));
}

type Res = Host['totals'];
export type HostView = Host;

const triple = (h: HostView, k: keyof Res) => `${h.used?.[k] ?? '-'}/${h.held?.[k] ?? '-'}/${h.available?.[k] ?? '-'}`;

export function formatHostTable(hosts: HostView[], o: { wide?: boolean } = {}): string {
  if (!hosts.length) return '(no hosts)';
  const headers = ['HOST', 'SITE', 'CONNECTED', 'HYPERVISOR', 'VCPU U/H/A', 'MEMORY MB U/H/A', 'DISK GB U/H/A', 'VMS'];
  if (o.wide) headers.push('CPU', 'STORAGE', 'MIGRATION ADDRESS', 'ADVISORIES', 'LAST SEEN');
  return [
    table(headers, hosts.map((h) => {
      const row: (string | number | undefined)[] = [h.hostId, h.site, h.connected ? 'yes' : 'no', h.hypervisor ? `${h.hypervisor.type} ${h.hypervisor.version}` : '-',
        triple(h, 'vcpus'), triple(h, 'memoryMb'), triple(h, 'diskGb'), h.vms?.length ?? 0];
      if (o.wide) row.push(h.cpu?.model, h.sharedStorage === undefined ? undefined : h.sharedStorage ? 'shared' : 'local', h.migrationAddress, (h.advisories ?? []).map((a) => a.id).join(',') || '', h.lastSeen);
      return row;
    })),
    '(U/H/A = used / held for incoming migrations / available)',
  ].join('\n');
}

export function formatHostDetail(h: HostView): string {
  const lines = [
    `host ${h.hostId}`,
    `  site          ${h.site ?? '-'}`,
    `  connected     ${h.connected ? 'yes' : 'no'}${h.lastSeen ? ` (last seen ${h.lastSeen})` : ''}`,
    `  hypervisor    ${h.hypervisor ? `${h.hypervisor.type} ${h.hypervisor.version}` : '-'}`,
    `  cpu           ${h.cpu ? `${h.cpu.model}, ${h.cpu.vcpus} vCPU, ${h.cpu.features} features` : '-'}`,
    `  storage       ${h.sharedStorage ? 'shared' : 'local'}`,
    `  migration at  ${h.migrationAddress ?? '-'}`,
    '',
    table(['RESOURCE', 'TOTAL', 'USED', 'HELD', 'AVAILABLE'], (['vcpus', 'memoryMb', 'diskGb'] as const).map((k) => [
      { vcpus: 'vCPU', memoryMb: 'memory MB', diskGb: 'disk GB' }[k], h.totals?.[k], h.used?.[k], h.held?.[k], h.available?.[k]])),
  ];
  const projects = Object.entries(h.byProject ?? {});
  if (projects.length) {
    lines.push('', table(['PROJECT', 'VMS', 'VCPU', 'MEMORY MB', 'DISK GB'], projects.map(([p, r]) => [p, r.vms, r.vcpus, r.memoryMb, r.diskGb])));
  }
  if (h.vms?.length) lines.push('', table(['VM', 'PROJECT', 'STATE'], h.vms.map((v) => [v.vmId, v.project, v.state])));
  return lines.join('\n');
}

export type VmView = Vm;

export function formatVmTable(vms: VmView[], o: { wide?: boolean } = {}): string {
  if (!vms.length) return '(no VMs)';
  const headers = ['VM', 'HOST', 'STATE', 'PROJECT', 'VCPUS', 'MEMORY MB', 'MIGRATION'];
  if (o.wide) headers.push('SITE', 'DISK GB');
  return table(headers, vms.map((v) => {
    const row: (string | number | undefined)[] = [v.vmId, `${v.hostId}${v.hostConnected === false ? ' (disconnected)' : ''}`, v.state, v.project, v.vcpus, v.memoryMb, v.migrationId ?? ''];
    if (o.wide) row.push(v.site, v.diskGb);
    return row;
  }));
}
