// `vmtc version` (and `vmtc --version`): this vmtc's version, from its package.json, and the
// Node.js it runs on; -o json|yaml for scripts.
import { readFileSync } from 'node:fs';
import type { Command } from '../common/command.ts';
import { machine, outputOf, type Opts } from './client/verb.ts';
import { UsageError } from './client/usage.ts';
import { formatCliError } from '../common/command.ts';

/** The version in the package.json beside src/. */
export function vmtcVersion(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version?: unknown };
  return typeof pkg.version === 'string' ? pkg.version : 'unknown';
}

export const version: Command = {
  name: 'version',
  summary: 'Print the version of vmtc (and of the Node.js it runs on).',
  options: {
    output: { type: 'string', short: 'o', arg: 'json|yaml', choices: ['json', 'yaml'], help: 'machine output' },
    json: { type: 'boolean', help: 'same as -o json' },
  },
  async run(o: Opts) {
    const info = { version: vmtcVersion(), node: process.version };
    try {
      const output = outputOf(o);
      if (output === 'wide') throw new UsageError("--output: 'wide' is for lists; use json or yaml", { field: 'output' });
      process.stdout.write((machine(output, info) ?? `vmtc ${info.version} (node ${info.node})`) + '\n');
      return 0;
    } catch (e) {
      process.stderr.write(`${formatCliError(e)}\nsee 'vmtc version --help'\n`);
      return 2;
    }
  },
};
