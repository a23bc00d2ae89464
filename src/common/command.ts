// The command framework of the one `vmtc` binary: each service, agent, lab tool and client verb
// describes its subcommand as a Command here. Adding one is: write a Command, add it to the
// command table in bin/main.ts. Options are parsed with node:util parseArgs; --help (and
// `vmtc help COMMAND`) and the shell completion scripts (src/cli/completion.ts) are generated
// from the same spec, so none of them can drift from what the parser accepts.
import { parseArgs } from 'node:util';
import { VmtcError, commonError } from './errors.ts';

export interface OptionSpec {
  type: 'string' | 'boolean';
  short?: string;
  /** Shown in --help; also used when the option is absent. */
  default?: string | boolean;
  help: string;
  multiple?: boolean;
  /** Shown as the value placeholder in --help, e.g. HOST:PORT. */
  arg?: string;
  required?: boolean;
  /** A string option absent from the command line takes this environment variable's value (when
   *  set and not empty), before `default`: flag > environment > default. */
  env?: string;
  /** The values a string option accepts, for --help and shell completion (the command checks). */
  choices?: readonly string[];
}

export interface Command {
  name: string;
  summary: string;
  usage?: string;
  options: Record<string, OptionSpec>;
  /** Positional arguments are allowed (e.g. `vmtc lab up`). */
  positionals?: string;
  /** The words a positional argument may be, when they are fixed (shell completion offers them). */
  positionalChoices?: readonly string[];
  /** Runs the command. Resolve with an exit code; long-running services resolve when they stop. */
  run(opts: Record<string, string | boolean | string[] | undefined>, positionals: string[]): Promise<number>;
}

/** Environment variables of options that several commands share, so that no command's spec has
 *  to repeat them: every service's `--log-level` reads `$VMTC_LOG_LEVEL`. */
export const SHARED_OPTION_ENV: Readonly<Record<string, string>> = { 'log-level': 'VMTC_LOG_LEVEL' };

const HELP_OPTION: OptionSpec = { type: 'boolean', short: 'h', help: 'show this help' };

function envOf(name: string, spec: OptionSpec): string | undefined {
  return spec.type === 'string' ? spec.env ?? SHARED_OPTION_ENV[name] : undefined;
}

/** Every option of the command as the parser sees it, --help included. */
export function allOptions(cmd: Command): [string, OptionSpec][] {
  return [...Object.entries(cmd.options), ['help', HELP_OPTION]];
}

export function helpText(cmd: Command): string {
  const lines = [`vmtc ${cmd.name}${cmd.positionals ? ' ' + cmd.positionals : ''} [options]`, '', cmd.summary, ''];
  if (cmd.usage) lines.push(cmd.usage, '');
  lines.push('Options:');
  for (const [name, spec] of allOptions(cmd)) {
    const flag = `${spec.short ? `-${spec.short}, ` : '    '}--${name}${spec.type === 'string' ? ` ${spec.arg ?? (spec.choices ? spec.choices.join('|') : 'VALUE')}` : ''}`;
    const notes: string[] = [];
    const env = envOf(name, spec);
    if (spec.default !== undefined && spec.default !== false) notes.push(`default: ${String(spec.default)}`);
    else if (spec.required) notes.push('required');
    if (env) notes.push(`env: $${env}`);
    lines.push(`  ${flag.padEnd(34)} ${spec.help}${notes.length ? ` (${notes.join('; ')})` : ''}`);
  }
  return lines.join('\n');
}

/** Edit distance, for "did you mean" (option names are short). */
function distance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0]![j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      d[i]![j] = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
  }
  return d[a.length]![b.length]!;
}

/** The options a mistyped one probably meant: `-t` → `--to`; `--bandwith-mbps` → `--bandwidth-mbps`. */
export function suggestOptions(cmd: Command, given: string): string[] {
  const names = allOptions(cmd).map(([n]) => n);
  const bare = given.replace(/^-+/, '').split('=')[0] ?? '';
  if (!bare) return [];
  const short = /^-[^-]/.test(given);
  const hits = short
    ? names.filter((n) => n.startsWith(bare))
    : names.filter((n) => n.startsWith(bare) || distance(n, bare) <= Math.max(1, Math.floor(bare.length / 4)));
  return hits.slice(0, 3).map((n) => `--${n}`);
}

/** parseArgs' refusal in a line a person can act on, said once (its own text repeats itself). */
function usageError(cmd: Command, e: Error & { code?: string }): VmtcError {
  const msg = e.message;
  const say = (text: string, details: Record<string, unknown>) =>
    commonError('VMTC_CONFIG_INVALID', details, { message: `vmtc ${cmd.name}: ${text}` });
  let m: RegExpExecArray | null;
  if (e.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' && (m = /^Unknown option '([^']+)'/.exec(msg))) {
    const option = m[1]!;
    const hints = suggestOptions(cmd, option);
    return say(`unknown option '${option}'${hints.length ? ` (did you mean ${hints.join(' or ')}?)` : ''}`, { option });
  }
  if (e.code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE' && (m = /^Option '(?:-(\w), )?--([\w-]+)(?: <value>)?' argument missing/.exec(msg))) {
    return say(`--${m[2]} needs a value`, { option: `--${m[2]}` });
  }
  if (e.code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE' && (m = /^Option '(?:-(\w), )?--([\w-]+)' does not take an argument/.exec(msg))) {
    return say(`--${m[2]} takes no value`, { option: `--${m[2]}` });
  }
  if (e.code === 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL' && (m = /^Unexpected argument '([^']*)'/.exec(msg))) {
    return say(`unexpected argument '${m[1]}' (this command takes options only)`, { argument: m[1] });
  }
  return say(msg, {});
}

export function parseCommandArgs(cmd: Command, argv: string[], env: NodeJS.ProcessEnv = process.env) {
  const options: Record<string, { type: 'string' | 'boolean'; short?: string; multiple?: boolean }> = {};
  for (const [k, v] of allOptions(cmd)) {
    options[k] = { type: v.type, ...(v.short ? { short: v.short } : {}), ...(v.multiple ? { multiple: true } : {}) };
  }
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options, allowPositionals: Boolean(cmd.positionals), strict: true });
  } catch (e) {
    throw usageError(cmd, e as Error);
  }
  const values = parsed.values as Record<string, string | boolean | string[] | undefined>;
  if (values.help) return { help: true as const, values, positionals: parsed.positionals };
  for (const [k, v] of Object.entries(cmd.options)) {
    const fromEnv = envOf(k, v);
    if (values[k] === undefined && fromEnv && env[fromEnv]) values[k] = v.multiple ? [env[fromEnv]!] : env[fromEnv];
    if (values[k] === undefined && v.default !== undefined) values[k] = v.default;
    if (v.required && values[k] === undefined) {
      throw commonError('VMTC_CONFIG_INVALID', { field: k }, { message: `vmtc ${cmd.name}: --${k} is required` });
    }
  }
  return { help: false as const, values, positionals: parsed.positionals };
}

/** `error CODE: message` and the details that the message does not already say (a `field` is
 *  said when the message names its option, `--FIELD`; any other string detail when it appears). */
export function formatCliError(e: unknown): string {
  if (e instanceof VmtcError) {
    const said = (k: string, v: unknown) => typeof v === 'string' && e.message.includes(k === 'field' ? `--${v}` : v);
    const extra = Object.entries(e.details ?? {}).filter(([k, v]) => !said(k, v));
    return `error ${e.code}: ${e.message}${extra.length ? ' ' + JSON.stringify(Object.fromEntries(extra)) : ''}`;
  }
  return `error: ${(e as Error)?.stack ?? String(e)}`;
}

/** Resolve when SIGINT/SIGTERM arrives, then run close(). Used by long-running services. */
export function runUntilSignal(close: () => Promise<void>): Promise<number> {
  return new Promise((resolve) => {
    let closing = false;
    const stop = (sig: string) => {
      if (closing) return;
      closing = true;
      process.stderr.write(`vmtc: ${sig}, shutting down\n`);
      close().then(() => resolve(0), (e) => { process.stderr.write(formatCliError(e) + '\n'); resolve(1); });
    };
    process.once('SIGINT', () => stop('SIGINT'));
    process.once('SIGTERM', () => stop('SIGTERM'));
  });
}
