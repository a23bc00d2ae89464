// The command framework of the one `vmtc` binary: each service, agent and lab tool describes its
// subcommand as a Command here. Adding one is: write a Command, add it to the command table in
// bin/main.ts. Options are parsed with node:util parseArgs; --help is generated from the spec.
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
}

export interface Command {
  name: string;
  summary: string;
  usage?: string;
  options: Record<string, OptionSpec>;
  /** Positional arguments are allowed (e.g. `vmtc lab up`). */
  positionals?: string;
  /** Runs the command. Resolve with an exit code; long-running services resolve when they stop. */
  run(opts: Record<string, string | boolean | string[] | undefined>, positionals: string[]): Promise<number>;
}

export function helpText(cmd: Command): string {
  const lines = [`vmtc ${cmd.name}${cmd.positionals ? ' ' + cmd.positionals : ''} [options]`, '', cmd.summary, ''];
  if (cmd.usage) lines.push(cmd.usage, '');
  lines.push('Options:');
  const all: [string, OptionSpec][] = [...Object.entries(cmd.options), ['help', { type: 'boolean', short: 'h', help: 'show this help' }]];
  for (const [name, spec] of all) {
    const flag = `${spec.short ? `-${spec.short}, ` : '    '}--${name}${spec.type === 'string' ? ` ${spec.arg ?? 'VALUE'}` : ''}`;
    const def = spec.default !== undefined && spec.default !== false ? ` (default: ${String(spec.default)})` : spec.required ? ' (required)' : '';
    lines.push(`  ${flag.padEnd(34)} ${spec.help}${def}`);
  }
  return lines.join('\n');
}

export function parseCommandArgs(cmd: Command, argv: string[]) {
  const options: Record<string, { type: 'string' | 'boolean'; short?: string; multiple?: boolean }> = { help: { type: 'boolean', short: 'h' } };
  for (const [k, v] of Object.entries(cmd.options)) {
    options[k] = { type: v.type, ...(v.short ? { short: v.short } : {}), ...(v.multiple ? { multiple: true } : {}) };
  }
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options, allowPositionals: Boolean(cmd.positionals), strict: true });
  } catch (e) {
    throw commonError('VMTC_CONFIG_INVALID', { reason: (e as Error).message }, { message: `vmtc ${cmd.name}: ${(e as Error).message}` });
  }
  const values = parsed.values as Record<string, string | boolean | string[] | undefined>;
  if (values.help) return { help: true as const, values, positionals: parsed.positionals };
  for (const [k, v] of Object.entries(cmd.options)) {
    if (values[k] === undefined && v.default !== undefined) values[k] = v.default;
    if (v.required && values[k] === undefined) {
      throw commonError('VMTC_CONFIG_INVALID', { field: k }, { message: `vmtc ${cmd.name}: --${k} is required` });
    }
  }
  return { help: false as const, values, positionals: parsed.positionals };
}

export function formatCliError(e: unknown): string {
  if (e instanceof VmtcError) return `error ${e.code}: ${e.message}${e.details ? ' ' + JSON.stringify(e.details) : ''}`;
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
