// The client verbs of the one `vmtc` binary (docs/design.md process table: "client verbs —
// anywhere — the controller's REST API from a shell"): migrate, status, watch, cancel,
// force-complete, tune, hosts, vms. Each is a Command of src/common/command.ts built by verb()
// (verb.ts: connection options, output formats, errors and exit codes, docs/cli.md).
import type { Host, Migration, MigrationList, MigrationRequestBody, Vm } from '../../controller/schemas.ts';
import { UsageError } from './usage.ts';
import type { ApiClient } from './http.ts';
import { fmtError, wrapText, formatHostDetail, formatHostTable, formatMigrationDetail, formatMigrationTable, formatSummary, formatVmTable, type MigrationView } from './format.ts';
import { usableWidth, watchMigration, type WatchOptions } from './watch.ts';
import { EXIT, dateOpt, errLine, intOpt, machine, numOpt, onePositional, out, str, verb, type Opts, type Output } from './verb.ts';

export { EXIT } from './verb.ts';

/** HOST:PORT or [v6]:PORT. */
export function parseHostPort(v: string, k: string): { host: string; port: number } {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(v) ?? /^([^:]+):(\d+)$/.exec(v);
  const port = m ? Number(m[2]) : NaN;
  if (!m || !(port >= 1 && port <= 65535)) throw new UsageError(`--${k}: '${v}' must be HOST:PORT with a port from 1 to 65535`, { field: k, value: v });
  return { host: m[1]!, port };
}

const MODES = ['live', 'cold', 'auto'] as const;
const FORCE_MODES = ['postcopy', 'pause'] as const;

/** The POST /v1/migrations body from the command line (validated here so mistakes exit 2). */
export function migrationBody(o: Opts, vmId: string): MigrationRequestBody {
  const to = str(o, 'to');
  const ts = o['to-site'];
  const sites = Array.isArray(ts) ? (ts as string[]) : typeof ts === 'string' ? [ts] : [];
  if (to !== undefined && sites.length) throw new UsageError('--to-site chooses among the hosts at a site: not with --to HOST_ID', { field: 'to-site' });
  if (new Set(sites).size !== sites.length) throw new UsageError(`--to-site: a site is given twice (${sites.join(', ')})`, { field: 'to-site' });
  // Without --to the controller chooses the destination (docs/fleet.md "Placement").
  const body: MigrationRequestBody = { vmId, ...(to !== undefined ? { destinationHostId: to } : {}), ...(sites.length ? { toSites: sites } : {}) };
  const mode = str(o, 'mode');
  if (mode !== undefined) {
    if (!(MODES as readonly string[]).includes(mode)) throw new UsageError(`--mode: '${mode}' must be one of ${MODES.join(', ')}`, { field: 'mode', value: mode });
    body.mode = mode as NonNullable<MigrationRequestBody['mode']>;
  }
  const maxDowntimeMs = intOpt(o, 'max-downtime-ms', 1, 600_000);
  if (maxDowntimeMs !== undefined) body.maxDowntimeMs = maxDowntimeMs;
  const bw = numOpt(o, 'bandwidth-mbps', 1_000_000);
  if (bw !== undefined) body.bandwidthMbps = bw;
  const deadline = dateOpt(o, 'deadline');
  if (deadline !== undefined) body.deadline = deadline;
  const requestId = str(o, 'request-id');
  if (requestId !== undefined) body.requestId = requestId;
  if (o.postcopy === true) body.postcopy = true;
  // Streams: one unless asked; --multifd alone lets the controller size them to the lightpath
  // (src/controller/migration/tuning-default.ts).
  const channels = intOpt(o, 'multifd-channels', 1, 64);
  if (o['no-multifd'] === true && (o.multifd === true || channels !== undefined)) throw new UsageError('--no-multifd: not with --multifd or --multifd-channels', { field: 'no-multifd' });
  if (o.multifd === true) body.multifd = true;
  if (o['no-multifd'] === true) body.multifd = false;
  if (channels !== undefined) {
    body.multifd = true;
    body.multifdChannels = channels;
  }
  if (o['auto-converge'] === true) body.autoConverge = true;
  if (o.suspend === true) body.suspend = true;
  const verify = str(o, 'verify-tcp');
  const verifyTimeoutMs = intOpt(o, 'verify-timeout-ms', 1_000, 600_000);
  if (verifyTimeoutMs !== undefined && verify === undefined) throw new UsageError('--verify-timeout-ms needs --verify-tcp HOST:PORT', { field: 'verify-timeout-ms' });
  if (verify !== undefined) body.verifyTcp = { ...parseHostPort(verify, 'verify-tcp'), ...(verifyTimeoutMs !== undefined ? { timeoutMs: verifyTimeoutMs } : {}) };
  return body;
}

/** The PATCH /v1/migrations/:id body of `vmtc tune`: at least one setting. */
export function tuneBody(o: Opts): { bandwidthMbps?: number; maxDowntimeMs?: number } {
  const body: { bandwidthMbps?: number; maxDowntimeMs?: number } = {};
  const bw = numOpt(o, 'bandwidth-mbps', 1_000_000);
  if (bw !== undefined) body.bandwidthMbps = bw;
  const md = intOpt(o, 'max-downtime-ms', 1, 600_000);
  if (md !== undefined) body.maxDowntimeMs = md;
  if (!Object.keys(body).length) throw new UsageError('give --bandwidth-mbps N, --max-downtime-ms N or both', { field: 'bandwidth-mbps' });
  return body;
}

const header = (m: MigrationView) => `migration ${m.id}: ${m.vmId} ${m.sourceHostId ?? '?'} -> ${m.destinationHostId ?? '?'} (${m.mode ?? '?'}${m.path && m.path !== m.mode ? `, path ${m.path}` : ''})`;

/** Follow a migration to its end on stderr; the summary (or the record) on stdout. */
async function follow(c: ApiClient, m: MigrationView, output: Output, interrupt: WatchOptions['interrupt']): Promise<number> {
  errLineFitted(header(m));
  const r = await watchMigration(c, m, { err: process.stderr, signals: process }, { interrupt });
  if (r.kind === 'detached') {
    const mo = machine(output, r.migration);
    if (mo !== undefined) out(mo);
    return EXIT.detached;
  }
  out(machine(output, r.migration) ?? fitted(formatSummary(r.migration), process.stdout));
  return r.migration.state === 'completed' ? EXIT.ok : EXIT.notCompleted;
}

/** Text for a terminal is wrapped to its width (a pipe gets it as is, one record a line). */
function fitted(s: string, stream: { isTTY?: boolean; columns?: number }): string {
  return stream.isTTY ? wrapText(s, usableWidth(stream.columns)) : s;
}

function errLineFitted(s: string): void {
  errLine(fitted(s, process.stderr));
}

export const migrate = verb('migrate', {
  summary: 'Move a VM to another host (POST /v1/migrations) and, unless --no-wait, follow it to its end.',
  usage: [
    'Progress goes to stderr: every state change with the time since the request, and the copy\'s',
    'progress during precopy / cold_importing (on a terminal one line redrawn in place, fitted to',
    'its width; elsewhere a plain line every 2 s). The summary (state, time per step, result, error)',
    'goes to stdout. Ctrl-C asks the controller to cancel and keeps waiting for the end; a second',
    'Ctrl-C stops waiting (the migration goes on) and exits 130. Exit 0 only if it completed.',
  ].join('\n'),
  positionals: 'VM_ID',
  options: {
    to: { type: 'string', short: 't', arg: 'HOST_ID', help: 'destination host (without it the controller chooses one and records why)' },
    'to-site': { type: 'string', multiple: true, arg: 'SITE', help: 'without --to: choose only among hosts at this site (repeat for several)' },
    mode: { type: 'string', arg: 'live|cold|auto', choices: MODES, help: "live; cold (power off, copy disks, boot there); auto (live, cold if live fails) (the controller's default: live)" },
    'max-downtime-ms': { type: 'string', arg: 'N', help: 'largest acceptable pause at switchover' },
    'bandwidth-mbps': { type: 'string', arg: 'N', help: 'migration bandwidth (and lightpath size) in Mbit/s' },
    deadline: { type: 'string', arg: 'ISO', help: 'give up (and roll back) after this date-time, e.g. 2030-01-01T12:00:00Z' },
    'request-id': { type: 'string', arg: 'ID', help: 'idempotency key: repeating the same request returns the first migration' },
    postcopy: { type: 'boolean', help: 'allow post-copy if pre-copy does not converge' },
    multifd: { type: 'boolean', help: 'several parallel migration streams, as many as fill the lightpath (costs switchover downtime; default: one stream)' },
    'multifd-channels': { type: 'string', arg: 'N', help: 'this many parallel migration streams (1-64)' },
    'no-multifd': { type: 'boolean', help: 'one migration stream (the default), said explicitly in the request' },
    'auto-converge': { type: 'boolean', help: 'throttle the guest\'s CPU so pre-copy converges' },
    suspend: { type: 'boolean', help: 'non-live: paused for the whole copy (for comparison with live)' },
    'verify-tcp': { type: 'string', arg: 'HOST:PORT', help: 'cold path: this guest TCP service must answer at the destination before the source is removed' },
    'verify-timeout-ms': { type: 'string', arg: 'N', help: 'with --verify-tcp: how long (1000-600000 ms) the VM may take to run and answer there before the move rolls back (default: the controller\'s, 60 s)' },
    'no-wait': { type: 'boolean', help: 'print the migration id and return at once (follow it with vmtc watch ID)' },
  },
  async go(o, pos, c, output) {
    const vmId = onePositional(pos, 'VM_ID', true)!;
    const body = migrationBody(o, vmId);
    const m = await c.post<Migration>('/v1/migrations', body);
    if (o['no-wait'] === true) {
      out(machine(output, m) ?? m.id);
      if (output === 'human' || output === 'wide') errLine(`migration ${m.id} accepted (${m.state}); follow it with: vmtc watch ${m.id}`);
      return EXIT.ok;
    }
    return follow(c, m, output, 'cancel');
  },
});

const STATES = ['prechecking', 'reserved', 'authorizing', 'provisioning', 'preparing', 'precopy', 'stopcopy', 'switchover', 'committing', 'activating', 'cleanup', 'completed', 'cold_exporting', 'cold_importing', 'cold_verifying', 'rolling_back', 'rolled_back', 'cancelled', 'failed'];

/** Most migrations one `--all` listing follows cursors for (a bound, not a page size). */
export const LIST_ALL_MAX = 100_000;

/** The GET /v1/migrations query of `vmtc status` without an id. */
export function listQuery(o: Opts): URLSearchParams {
  const q = new URLSearchParams();
  const state = str(o, 'state');
  if (state !== undefined) {
    const states = state.split(',').map((s) => s.trim()).filter(Boolean);
    const bad = states.filter((s) => !STATES.includes(s));
    if (!states.length || bad.length) throw new UsageError(`--state: '${bad[0] ?? state}' is not a state (${STATES.join(', ')})`, { field: 'state', value: state });
    q.set('state', states.join(','));
  }
  const vm = str(o, 'vm');
  if (vm !== undefined) q.set('vmId', vm);
  const host = str(o, 'host');
  if (host !== undefined) q.set('hostId', host);
  const since = dateOpt(o, 'since');
  if (since !== undefined) q.set('since', since);
  const until = dateOpt(o, 'until');
  if (until !== undefined) q.set('until', until);
  const limit = intOpt(o, 'limit', 1, 500);
  if (limit !== undefined) q.set('limit', String(limit));
  return q;
}

type Page = MigrationList & { nextCursor?: string };

/** One page, or with `all` every page (following nextCursor, bounded by LIST_ALL_MAX). */
async function listMigrations(c: ApiClient, q: URLSearchParams, all: boolean): Promise<Page> {
  const first = await c.get<Page>(`/v1/migrations${q.size ? `?${q}` : ''}`);
  if (!all) return first;
  const migrations = [...first.migrations];
  let cursor = first.nextCursor;
  const seen = new Set<string>();
  while (cursor && migrations.length < LIST_ALL_MAX) {
    if (seen.has(cursor)) throw new UsageError(`the controller repeated a cursor (${cursor}); the listing stops here`, { cursor });
    seen.add(cursor);
    const next = new URLSearchParams(q);
    next.set('cursor', cursor);
    const page = await c.get<Page>(`/v1/migrations?${next}`);
    migrations.push(...page.migrations);
    cursor = page.nextCursor;
  }
  return { migrations };
}

const followUsage = 'With --watch (or vmtc watch ID): follow it over the controller\'s event stream until it ends, as vmtc migrate does; Ctrl-C stops following (the migration goes on). Exit 0 if it completed, 3 if it ended otherwise, 130 on Ctrl-C.';

export const status = verb('status', {
  summary: 'Show one migration in detail (transitions, steps, progress, error) or list migrations.',
  usage: [
    'With MIGRATION_ID: that migration. Without: a table, newest first, filtered by the options;',
    'one page (--limit N, or the controller\'s default size), or every page with --all.',
    followUsage,
    `States: ${STATES.join(', ')}.`,
  ].join('\n'),
  positionals: '[MIGRATION_ID]',
  options: {
    watch: { type: 'boolean', short: 'w', help: 'follow the migration to its end (needs MIGRATION_ID)' },
    state: { type: 'string', arg: 'S[,S]', help: 'only migrations in these states' },
    vm: { type: 'string', arg: 'VM_ID', help: 'only migrations of this VM' },
    host: { type: 'string', arg: 'HOST_ID', help: 'only migrations from or to this host' },
    since: { type: 'string', arg: 'ISO', help: 'only migrations created at or after this date-time' },
    until: { type: 'string', arg: 'ISO', help: 'only migrations created before this date-time' },
    limit: { type: 'string', arg: 'N', help: 'at most N migrations a page (1-500; without it the controller\'s default)' },
    all: { type: 'boolean', help: 'every page (follows the controller\'s cursors)' },
  },
  async go(o, pos, c, output) {
    const id = onePositional(pos, 'MIGRATION_ID', false);
    const filters = ['state', 'vm', 'host', 'since', 'until', 'limit', 'all'].filter((k) => o[k] !== undefined);
    if (id !== undefined) {
      if (filters.length) throw new UsageError(`${filters.map((k) => `--${k}`).join(', ')} filter the list; they do not go with a MIGRATION_ID`, { field: filters[0] });
      const m = await c.get<Migration>(`/v1/migrations/${encodeURIComponent(id)}`);
      if (o.watch === true) return follow(c, m, output, 'detach');
      out(machine(output, m) ?? fitted(formatMigrationDetail(m), process.stdout));
      return EXIT.ok;
    }
    if (o.watch === true) throw new UsageError('--watch follows one migration: give its MIGRATION_ID (vmtc status ID --watch)', { field: 'watch' });
    const r = await listMigrations(c, listQuery(o), o.all === true);
    out(machine(output, r) ?? formatMigrationTable(r.migrations, { wide: output === 'wide' }));
    if (r.nextCursor && (output === 'human' || output === 'wide')) errLine(`(more migrations: --all lists every page, --limit N sets the page size)`);
    return EXIT.ok;
  },
});

export const watch = verb('watch', {
  summary: 'Follow one migration to its end over the controller\'s event stream (same as vmtc status ID --watch).',
  usage: followUsage,
  positionals: 'MIGRATION_ID',
  options: {},
  async go(_o, pos, c, output) {
    const id = onePositional(pos, 'MIGRATION_ID', true)!;
    const m = await c.get<Migration>(`/v1/migrations/${encodeURIComponent(id)}`);
    return follow(c, m, output, 'detach');
  },
});

/** A verb that posts one request about one migration and reports the record it gets back. */
function migrationAction(m: Migration, output: Output, what: string): number {
  out(machine(output, m) ?? `${what} for migration ${m.id} (state now ${m.state}${m.error ? `, ${fmtError(m.error)}` : ''})`);
  return EXIT.ok;
}

export const cancel = verb('cancel', {
  summary: 'Ask the controller to cancel a migration (allowed until the switchover is granted).',
  usage: 'Returns once the controller accepted the request; the migration then rolls back to `cancelled` (see vmtc watch ID).',
  positionals: 'MIGRATION_ID',
  options: {},
  async go(_o, pos, c, output) {
    const id = onePositional(pos, 'MIGRATION_ID', true)!;
    return migrationAction(await c.post<Migration>(`/v1/migrations/${encodeURIComponent(id)}/cancel`), output, 'cancel requested');
  },
});

export const forceComplete = verb('force-complete', {
  summary: 'Make a pre-copy that does not converge finish now: switch to post-copy, or pause the VM for the rest of the copy.',
  usage: [
    'POST /v1/migrations/:id/force-complete. --mode postcopy (the destination runs the VM and fetches',
    'the pages it still lacks; needs a migration started with --postcopy) or pause (the source pauses',
    'the VM so the copy converges; downtime grows with what is left). The controller\'s default without',
    '--mode. Refused with VMTC_MIGRATION_NOT_FORCEABLE when the migration is not copying.',
  ].join('\n'),
  positionals: 'MIGRATION_ID',
  options: {
    mode: { type: 'string', arg: 'postcopy|pause', choices: FORCE_MODES, help: 'how to finish (the controller\'s default when absent)' },
  },
  async go(o, pos, c, output) {
    const id = onePositional(pos, 'MIGRATION_ID', true)!;
    const mode = str(o, 'mode');
    if (mode !== undefined && !(FORCE_MODES as readonly string[]).includes(mode)) throw new UsageError(`--mode: '${mode}' must be one of ${FORCE_MODES.join(', ')}`, { field: 'mode', value: mode });
    const m = await c.post<Migration>(`/v1/migrations/${encodeURIComponent(id)}/force-complete`, mode ? { mode } : {});
    return migrationAction(m, output, `force-complete (${mode ?? 'default mode'}) requested`);
  },
});

export const tune = verb('tune', {
  summary: 'Change a running migration\'s bandwidth or largest acceptable downtime.',
  usage: 'PATCH /v1/migrations/:id. Refused with VMTC_MIGRATION_NOT_TUNABLE once the copy is over.',
  positionals: 'MIGRATION_ID',
  options: {
    'bandwidth-mbps': { type: 'string', arg: 'N', help: 'migration bandwidth in Mbit/s' },
    'max-downtime-ms': { type: 'string', arg: 'N', help: 'largest acceptable pause at switchover (1-600000)' },
  },
  async go(o, pos, c, output) {
    const id = onePositional(pos, 'MIGRATION_ID', true)!;
    const body = tuneBody(o);
    const m = await c.patch<Migration>(`/v1/migrations/${encodeURIComponent(id)}`, body);
    const said = [body.bandwidthMbps !== undefined ? `bandwidth ${body.bandwidthMbps} Mbit/s` : '', body.maxDowntimeMs !== undefined ? `max downtime ${body.maxDowntimeMs} ms` : ''].filter(Boolean).join(', ');
    return migrationAction(m, output, `tuned (${said})`);
  },
});

export const hosts = verb('hosts', {
  summary: 'List hypervisor hosts and their capacity, or show one host with per-project use.',
  usage: 'Capacity columns are used / held (for incoming migrations) / available.',
  positionals: '[HOST_ID]',
  options: {},
  async go(_o, pos, c, output) {
    const id = onePositional(pos, 'HOST_ID', false);
    if (id !== undefined) {
      const h = await c.get<Host>(`/v1/hosts/${encodeURIComponent(id)}`);
      out(machine(output, h) ?? formatHostDetail(h));
      return EXIT.ok;
    }
    const r = await c.get<{ hosts: Host[] }>('/v1/hosts');
    out(machine(output, r) ?? formatHostTable(r.hosts, { wide: output === 'wide' }));
    return EXIT.ok;
  },
});

export const vms = verb('vms', {
  summary: 'List VMs where the host agents report them (host, state, project, size).',
  options: {},
  async go(_o, _pos, c, output) {
    const r = await c.get<{ vms: Vm[] }>('/v1/vms');
    out(machine(output, r) ?? formatVmTable(r.vms, { wide: output === 'wide' }));
    return EXIT.ok;
  },
});
