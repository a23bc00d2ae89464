// The client verbs of the one `vmtc` binary (docs/design.md process table: "client verbs —
// anywhere — the controller's REST API from a shell"): migrate, status, cancel, hosts, vms. Each is a Command of
// src/common/command.ts; all share --controller, --token-file and --json.
//
// Exit codes (docs/cli.md): 0 done; 1 the API refused or could not be reached; 2 usage (bad
// options or environment); 3 a migration that ended other than `completed`; 130 stopped waiting
// after a second Ctrl-C (the migration goes on).
import { VmtcError } from '../../common/errors.ts';
import type { Command, OptionSpec } from '../../common/command.ts';
import { ApiClient, UsageError, resolveClientConfig } from './http.ts';
import {
  fmtError, formatHostDetail, formatHostTable, formatMigrationDetail, formatMigrationTable, formatSummary, formatVmTable,
} from './format.ts';
import type { Host, Migration, MigrationList, MigrationRequestBody, Vm } from '../../controller/schemas.ts';
import { watchMigration } from './watch.ts';

export const EXIT = { ok: 0, api: 1, usage: 2, notCompleted: 3, detached: 130 } as const;

type Opts = Record<string, string | boolean | string[] | undefined>;

const COMMON: Record<string, OptionSpec> = {
  controller: { type: 'string', arg: 'URL', help: 'base URL of the controller (default: $VMTC_CONTROLLER, else http://127.0.0.1:7700)' },
  'token-file': { type: 'string', arg: 'FILE', help: 'file holding the bearer credential (default: $VMTC_TOKEN_FILE; else the token itself in $VMTC_TOKEN)' },
  json: { type: 'boolean', help: "machine output: the API's JSON as is (errors as { code, message, details })" },
};

const EXIT_HELP = 'Exit codes: 0 ok, 1 API error or controller unreachable, 2 usage error, 3 migration ended not completed, 130 stopped waiting.';

const out = (s: string) => { process.stdout.write(s + '\n'); };
const errLine = (s: string) => { process.stderr.write(s + '\n'); };

/** Wrap a verb: build the client, map every failure to its message and exit code. */
function verb(name: string, spec: Omit<Command, 'run' | 'name'> & { go(o: Opts, pos: string[], c: ApiClient, json: boolean): Promise<number> }): Command {
  return {
    name,
    summary: spec.summary,
    usage: [spec.usage, EXIT_HELP].filter(Boolean).join('\n\n'),
    options: { ...spec.options, ...COMMON },
    ...(spec.positionals ? { positionals: spec.positionals } : {}),
    async run(o, pos) {
      const json = o.json === true;
      try {
        const config = resolveClientConfig({
          ...(typeof o.controller === 'string' ? { controller: o.controller } : {}),
          ...(typeof o['token-file'] === 'string' ? { tokenFile: o['token-file'] } : {}),
        });
        return await spec.go(o, pos, new ApiClient(config), json);
      } catch (e) {
        if (e instanceof UsageError) {
          errLine(`vmtc ${name}: ${e.message}\nsee 'vmtc ${name} --help'`);
          return EXIT.usage;
        }
        if (e instanceof VmtcError) {
          errLine(`vmtc: ${e.code}: ${e.message}`);
          if (json) out(JSON.stringify(e.toJSON()));
          else if (e.code === 'VMTC_UNAUTHENTICATED') errLine('(give a credential with --token-file FILE, $VMTC_TOKEN_FILE or $VMTC_TOKEN)');
          else if (e.details && e.code !== 'VMTC_PEER_UNREACHABLE' && e.code !== 'VMTC_TIMEOUT') errLine(`  details: ${JSON.stringify(e.details)}`);
          return EXIT.api;
        }
        // A bug in the client, not the user's doing: say so in one line (stack with VMTC_DEBUG=1).
        errLine(`vmtc ${name}: unexpected failure: ${(e as Error)?.message ?? String(e)}`);
        if (process.env.VMTC_DEBUG) errLine(String((e as Error)?.stack));
        return EXIT.api;
      }
    },
  };
}

function onePositional(pos: string[], what: string, required: boolean): string | undefined {
  if (pos.length > 1) throw new UsageError(`expected at most one ${what}, got ${pos.length}: ${pos.join(' ')}`);
  if (required && pos.length === 0) throw new UsageError(`${what} is required`);
  return pos[0];
}

function str(o: Opts, k: string): string | undefined {
  const v = o[k];
  return typeof v === 'string' ? v : undefined;
}

function intOpt(o: Opts, k: string, min: number, max: number): number | undefined {
  const v = str(o, k);
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!/^\d+$/.test(v.trim()) || !Number.isSafeInteger(n) || n < min || n > max) throw new UsageError(`--${k}: '${v}' must be an integer from ${min} to ${max}`);
  return n;
}

function numOpt(o: Opts, k: string, max: number): number | undefined {
  const v = str(o, k);
  if (v === undefined) return undefined;
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n) || n <= 0 || n > max) throw new UsageError(`--${k}: '${v}' must be a number above 0 and at most ${max}`);
  return n;
}

/** HOST:PORT or [v6]:PORT. */
export function parseHostPort(v: string, k: string): { host: string; port: number } {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(v) ?? /^([^:]+):(\d+)$/.exec(v);
  const port = m ? Number(m[2]) : NaN;
  if (!m || !(port >= 1 && port <= 65535)) throw new UsageError(`--${k}: '${v}' must be HOST:PORT with a port from 1 to 65535`);
  return { host: m[1]!, port };
}

const MODES = ['live', 'cold', 'auto'];

/** The POST /v1/migrations body from the command line (validated here so mistakes exit 2). */
export function migrationBody(o: Opts, vmId: string): MigrationRequestBody {
  const to = str(o, 'to');
  if (!to) throw new UsageError('--to HOST_ID is required (the destination host)');
  const body: MigrationRequestBody = { vmId, destinationHostId: to };
  const mode = str(o, 'mode');
  if (mode !== undefined) {
    if (!MODES.includes(mode)) throw new UsageError(`--mode: '${mode}' must be one of ${MODES.join(', ')}`);
    body.mode = mode as NonNullable<MigrationRequestBody['mode']>;
  }
  const maxDowntimeMs = intOpt(o, 'max-downtime-ms', 1, 600_000);
  if (maxDowntimeMs !== undefined) body.maxDowntimeMs = maxDowntimeMs;
  const bw = numOpt(o, 'bandwidth-mbps', 1_000_000);
  if (bw !== undefined) body.bandwidthMbps = bw;
  const deadline = str(o, 'deadline');
  if (deadline !== undefined) {
    const t = Date.parse(deadline);
    if (!/^\d{4}-\d{2}-\d{2}T/.test(deadline) || Number.isNaN(t)) throw new UsageError(`--deadline: '${deadline}' must be an ISO 8601 date-time, e.g. 2030-01-01T12:00:00Z`);
    body.deadline = new Date(t).toISOString();
  }
  const requestId = str(o, 'request-id');
  if (requestId !== undefined) body.requestId = requestId;
  if (o.postcopy === true) body.postcopy = true;
  if (o.multifd === true) body.multifd = true;
  if (o['auto-converge'] === true) body.autoConverge = true;
  if (o.suspend === true) body.suspend = true;
  const verify = str(o, 'verify-tcp');
  if (verify !== undefined) body.verifyTcp = parseHostPort(verify, 'verify-tcp');
  return body;
}

export const migrate = verb('migrate', {
  summary: 'Move a VM to another host (POST /v1/migrations) and, unless --no-wait, follow it to its end.',
  usage: [
    'Progress goes to stderr: every state change with the time since the request, and the copy\'s',
    'progress during precopy / cold_importing. The summary (state, time per step, result, error)',
    'goes to stdout. Ctrl-C asks the controller to cancel and keeps waiting for the end; a second',
    'Ctrl-C stops waiting (the migration goes on) and exits 130. Exit 0 only if it completed.',
  ].join('\n'),
  positionals: 'VM_ID',
  options: {
    to: { type: 'string', arg: 'HOST_ID', help: 'destination host (required)' },
    mode: { type: 'string', arg: 'live|cold|auto', help: "live; cold (power off, copy disks, boot there); auto (live, cold if live fails) (the controller's default: live)" },
    'max-downtime-ms': { type: 'string', arg: 'N', help: 'largest acceptable pause at switchover' },
    'bandwidth-mbps': { type: 'string', arg: 'N', help: 'migration bandwidth (and lightpath size) in Mbit/s' },
    deadline: { type: 'string', arg: 'ISO', help: 'give up (and roll back) after this date-time, e.g. 2030-01-01T12:00:00Z' },
    'request-id': { type: 'string', arg: 'ID', help: 'idempotency key: repeating the same request returns the first migration' },
    postcopy: { type: 'boolean', help: 'allow post-copy if pre-copy does not converge' },
    multifd: { type: 'boolean', help: 'several parallel migration streams' },
    'auto-converge': { type: 'boolean', help: 'throttle the guest\'s CPU so pre-copy converges' },
    suspend: { type: 'boolean', help: 'non-live: paused for the whole copy (for comparison with live)' },
    'verify-tcp': { type: 'string', arg: 'HOST:PORT', help: 'cold path: this guest TCP service must answer at the destination before the source is removed' },
    'no-wait': { type: 'boolean', help: 'print the migration id and return at once' },
  },
  async go(o, pos, c, json) {
    const vmId = onePositional(pos, 'VM_ID', true)!;
    const body = migrationBody(o, vmId);
    const m = await c.post<Migration>('/v1/migrations', body);
    if (o['no-wait'] === true) {
      if (json) out(JSON.stringify(m));
      else {
        out(m.id);
        errLine(`migration ${m.id} accepted (${m.state}); follow it with: vmtc status ${m.id}`);
      }
      return EXIT.ok;
    }
    errLine(`migration ${m.id}: ${m.vmId} ${m.sourceHostId} -> ${m.destinationHostId} (${m.mode}${m.path && m.path !== m.mode ? `, path ${m.path}` : ''})`);
    const r = await watchMigration(c, m, { err: process.stderr, signals: process });
    if (r.kind === 'detached') {
      if (json) out(JSON.stringify(r.migration));
      return EXIT.detached;
    }
    out(json ? JSON.stringify(r.migration) : formatSummary(r.migration));
    return r.migration.state === 'completed' ? EXIT.ok : EXIT.notCompleted;
  },
});

const STATES_HINT = 'prechecking, reserved, authorizing, provisioning, preparing, precopy, stopcopy, switchover, committing, activating, cleanup, completed, cold_exporting, cold_importing, cold_verifying, rolling_back, rolled_back, cancelled, failed';

export const status = verb('status', {
  summary: 'Show one migration in detail (transitions, steps, progress, error) or list migrations.',
  usage: `With MIGRATION_ID: that migration. Without: a table, newest first, filtered by --state / --vm.\nStates: ${STATES_HINT}.`,
  positionals: '[MIGRATION_ID]',
  options: {
    state: { type: 'string', arg: 'S', help: 'only migrations in this state' },
    vm: { type: 'string', arg: 'VM_ID', help: 'only migrations of this VM' },
    limit: { type: 'string', arg: 'N', help: 'at most N migrations (1-1000; the controller\'s default: 100)' },
  },
  async go(o, pos, c, json) {
    const id = onePositional(pos, 'MIGRATION_ID', false);
    if (id !== undefined) {
      if (o.state !== undefined || o.vm !== undefined || o.limit !== undefined) throw new UsageError('--state, --vm and --limit filter the list; they do not go with a MIGRATION_ID');
      const m = await c.get<Migration>(`/v1/migrations/${encodeURIComponent(id)}`);
      out(json ? JSON.stringify(m) : formatMigrationDetail(m));
      return EXIT.ok;
    }
    const q = new URLSearchParams();
    const state = str(o, 'state');
    if (state !== undefined) {
      if (!STATES_HINT.split(', ').includes(state)) throw new UsageError(`--state: '${state}' is not a state (${STATES_HINT})`);
      q.set('state', state);
    }
    const vm = str(o, 'vm');
    if (vm !== undefined) q.set('vmId', vm);
    const limit = intOpt(o, 'limit', 1, 1000);
    if (limit !== undefined) q.set('limit', String(limit));
    const r = await c.get<MigrationList>(`/v1/migrations${q.size ? `?${q}` : ''}`);
    out(json ? JSON.stringify(r) : formatMigrationTable(r.migrations));
    return EXIT.ok;
  },
});

export const cancel = verb('cancel', {
  summary: 'Ask the controller to cancel a migration (allowed until its last page is copied).',
  usage: 'Returns once the controller accepted the request; the migration then rolls back to `cancelled` (see vmtc status).',
  positionals: 'MIGRATION_ID',
  options: {},
  async go(_o, pos, c, json) {
    const id = onePositional(pos, 'MIGRATION_ID', true)!;
    const m = await c.post<Migration>(`/v1/migrations/${encodeURIComponent(id)}/cancel`);
    if (json) out(JSON.stringify(m));
    else out(`cancel requested for migration ${m.id} (state now ${m.state}${m.error ? `, ${fmtError(m.error)}` : ''})`);
    return EXIT.ok;
  },
});

export const hosts = verb('hosts', {
  summary: 'List hypervisor hosts and their capacity, or show one host with per-project use.',
  usage: 'Capacity columns are used / held (for incoming migrations) / available.',
  positionals: '[HOST_ID]',
  options: {},
  async go(_o, pos, c, json) {
    const id = onePositional(pos, 'HOST_ID', false);
    if (id !== undefined) {
      const h = await c.get<Host>(`/v1/hosts/${encodeURIComponent(id)}`);
      out(json ? JSON.stringify(h) : formatHostDetail(h));
      return EXIT.ok;
    }
    const r = await c.get<{ hosts: Host[] }>('/v1/hosts');
    out(json ? JSON.stringify(r) : formatHostTable(r.hosts));
    return EXIT.ok;
  },
});

export const vms = verb('vms', {
  summary: 'List VMs where the host agents report them (host, state, project, size).',
  options: {},
  async go(_o, _pos, c, json) {
    const r = await c.get<{ vms: Vm[] }>('/v1/vms');
    out(json ? JSON.stringify(r) : formatVmTable(r.vms));
    return EXIT.ok;
  },
});
