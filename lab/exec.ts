// Running iproute2/ethtool/sysctl, in the root namespace or inside a lab namespace. Every call
// is an argv (never a shell string) so names and addresses cannot be misread by a shell.
import { run as runCommand, tryRun, type RunOptions, type RunResult } from '../src/common/proc.ts';
import { VmtcError } from '../src/common/errors.ts';
import { labError } from './errors.ts';

export { tryRun, type RunResult };

/** src/common/proc.ts run, failing with the lab's own code (VMTC_LAB_COMMAND_FAILED) so lab
 *  callers can tell a network command's failure from anything else. */
export async function run(argv: string[], opts: RunOptions = {}): Promise<RunResult> {
  try {
    return await runCommand(argv, opts);
  } catch (e) {
    if (!(e instanceof VmtcError) || e.code !== 'VMTC_COMMAND_FAILED') throw e;
    const d = e.details ?? {};
    throw labError('VMTC_LAB_COMMAND_FAILED', { argv: d.argv, code: d.code, stderr: d.stderr }, { message: e.message, cause: e.cause });
  }
}

/** Run argv inside network namespace `ns`. */
export function netnsExec(ns: string, argv: string[], opts: { input?: string; timeoutMs?: number } = {}): Promise<RunResult> {
  return run(['ip', 'netns', 'exec', ns, ...argv], opts);
}

export function tryNetnsExec(ns: string, argv: string[]): Promise<RunResult | null> {
  return tryRun(['ip', 'netns', 'exec', ns, ...argv]);
}

/** Feed many `ip` commands to one `ip -batch -` process inside `ns`: one fork instead of dozens. */
export function ipBatch(ns: string | null, lines: string[], force = false): Promise<RunResult> {
  const argv = [...(ns ? ['ip', '-n', ns] : ['ip']), ...(force ? ['-force'] : []), '-batch', '-'];
  return run(argv, { input: lines.join('\n') + '\n' });
}

export async function listNetns(): Promise<string[]> {
  const { stdout } = await run(['ip', '-j', 'netns', 'list']);
  if (!stdout.trim()) return [];
  return (JSON.parse(stdout) as { name: string }[]).map((n) => n.name);
}

export async function linkExists(ns: string, dev: string): Promise<boolean> {
  return (await tryRun(['ip', '-n', ns, 'link', 'show', 'dev', dev])) !== null;
}
