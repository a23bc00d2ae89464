// What every client verb shares: the connection options (--controller, --token-file, --ca; a
// config file and the environment below them: config.ts), the output format (-o json|yaml|wide,
// --json), option parsing helpers that turn bad values into usage errors, and the wrapper that
// maps every failure to one message and its exit code (docs/cli.md#exit-codes).
import { stringify as toYaml } from 'yaml';
import { VmtcError } from '../../common/errors.ts';
import { formatCliError, type Command, type OptionSpec } from '../../common/command.ts';
import { ApiClient } from './http.ts';
import { resolveClientConfig } from './config.ts';
import { UsageError } from './usage.ts';

export const EXIT = { ok: 0, api: 1, usage: 2, notCompleted: 3, detached: 130 } as const;

export type Opts = Record<string, string | boolean | string[] | undefined>;

export const OUTPUTS = ['json', 'yaml', 'wide'] as const;
/** `human` is the default tables and text; `wide` adds columns to the listing verbs. */
export type Output = 'human' | typeof OUTPUTS[number];

export const COMMON: Record<string, OptionSpec> = {
  controller: { type: 'string', arg: 'URL', help: 'base URL of the controller (default: $VMTC_CONTROLLER, else the config file, else http://127.0.0.1:7700)' },
  'token-file': { type: 'string', arg: 'FILE', help: 'file holding the bearer credential (default: $VMTC_TOKEN_FILE; else the token itself in $VMTC_TOKEN; else the config file)' },
  ca: { type: 'string', arg: 'FILE', help: "PEM of the CA of an https controller (default: $VMTC_CA, else the config file's ca)" },
  output: { type: 'string', short: 'o', arg: 'json|yaml|wide', choices: OUTPUTS, help: 'json or yaml: the API\'s record as is (errors as { code, message, details }); wide: more columns in lists' },
  json: { type: 'boolean', help: 'same as -o json' },
};

export const EXIT_HELP = 'Exit codes: 0 ok, 1 API error or controller unreachable, 2 usage error, 3 migration ended not completed, 130 stopped waiting.';
export const CONFIG_HELP = 'Settings come from flags, then $VMTC_CONTROLLER / $VMTC_TOKEN_FILE / $VMTC_TOKEN / $VMTC_CA, then the config file ($VMTC_CONFIG, else ~/.config/vmtc/config: YAML keys controller, token-file, ca).';

export const out = (s: string) => { process.stdout.write(s + '\n'); };
export const errLine = (s: string) => { process.stderr.write(s + '\n'); };

export function outputOf(o: Opts): Output {
  const v = str(o, 'output');
  if (v !== undefined && !(OUTPUTS as readonly string[]).includes(v)) throw new UsageError(`--output: '${v}' must be one of ${OUTPUTS.join(', ')}`, { field: 'output', value: v });
  if (o.json === true && v !== undefined && v !== 'json') throw new UsageError(`--json and --output (-o) ${v} ask for different outputs`, { field: 'output' });
  return o.json === true ? 'json' : (v as Output | undefined) ?? 'human';
}

/** Machine output of an API answer; undefined for the human outputs. */
export function machine(output: Output, data: unknown): string | undefined {
  if (output === 'json') return JSON.stringify(data);
  if (output === 'yaml') return toYaml(data, { lineWidth: 0 }).trimEnd();
  return undefined;
}

export interface VerbSpec extends Omit<Command, 'run' | 'name'> {
  go(o: Opts, pos: string[], c: ApiClient, output: Output): Promise<number>;
}

/** Wrap a verb: build the client, map every failure to its message and exit code. */
export function verb(name: string, spec: VerbSpec): Command {
  return {
    name,
    summary: spec.summary,
    usage: [spec.usage, CONFIG_HELP, EXIT_HELP].filter(Boolean).join('\n\n'),
    options: { ...spec.options, ...COMMON },
    ...(spec.positionals ? { positionals: spec.positionals } : {}),
    async run(o, pos) {
      let output: Output = o.json === true ? 'json' : 'human';
      try {
        output = outputOf(o);
        const config = resolveClientConfig({
          ...(typeof o.controller === 'string' ? { controller: o.controller } : {}),
          ...(typeof o['token-file'] === 'string' ? { tokenFile: o['token-file'] } : {}),
          ...(typeof o.ca === 'string' ? { ca: o.ca } : {}),
        });
        return await spec.go(o, pos, new ApiClient(config), output);
      } catch (e) {
        if (e instanceof UsageError) {
          // As the common parser prints its refusals (bin/main.ts): once, with the hint.
          errLine(`${formatCliError(new UsageError(`vmtc ${name}: ${e.message}`, e.details))}\nsee 'vmtc ${name} --help'`);
          const m = machine(output, e.toJSON());
          if (m !== undefined) out(m);
          return EXIT.usage;
        }
        if (e instanceof VmtcError) {
          errLine(`vmtc: ${e.code}: ${e.message}`);
          const m = machine(output, e.toJSON());
          if (m !== undefined) out(m);
          else if (e.code === 'VMTC_UNAUTHENTICATED') errLine('(give a credential with --token-file FILE, $VMTC_TOKEN_FILE, $VMTC_TOKEN or the config file)');
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

export function onePositional(pos: string[], what: string, required: boolean): string | undefined {
  if (pos.length > 1) throw new UsageError(`expected at most one ${what}, got ${pos.length}: ${pos.join(' ')}`);
  if (required && pos.length === 0) throw new UsageError(`${what} is required`);
  return pos[0];
}

export function str(o: Opts, k: string): string | undefined {
  const v = o[k];
  return typeof v === 'string' ? v : undefined;
}

export function intOpt(o: Opts, k: string, min: number, max: number): number | undefined {
  const v = str(o, k);
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!/^\d+$/.test(v.trim()) || !Number.isSafeInteger(n) || n < min || n > max) throw new UsageError(`--${k}: '${v}' must be an integer from ${min} to ${max}`, { field: k, value: v });
  return n;
}

export function numOpt(o: Opts, k: string, max: number): number | undefined {
  const v = str(o, k);
  if (v === undefined) return undefined;
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n) || n <= 0 || n > max) throw new UsageError(`--${k}: '${v}' must be a number above 0 and at most ${max}`, { field: k, value: v });
  return n;
}

/** An ISO 8601 date-time option, normalised to the API's form. */
export function dateOpt(o: Opts, k: string): string | undefined {
  const v = str(o, k);
  if (v === undefined) return undefined;
  const t = Date.parse(v);
  if (!/^\d{4}-\d{2}-\d{2}T/.test(v) || Number.isNaN(t)) throw new UsageError(`--${k}: '${v}' must be an ISO 8601 date-time, e.g. 2030-01-01T12:00:00Z`, { field: k, value: v });
  return new Date(t).toISOString();
}
