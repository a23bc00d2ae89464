// Running iproute2/ethtool/sysctl, in the root namespace or inside a lab namespace. Every call
// is an argv (never a shell string) so names and addresses cannot be misread by a shell.
import { execFile } from 'node:child_process';
import { labError } from './errors.ts';

export interface RunResult {
  stdout: string;
  stderr: string;
}

export function run(argv: string[], opts: { input?: string; timeoutMs?: number } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = execFile(argv[0]!, argv.slice(1), { timeout: opts.timeoutMs ?? 30_000, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err) {
        reject(labError('VMTC_LAB_COMMAND_FAILED', { argv, code: (err as NodeJS.ErrnoException).code ?? null, stderr: String(stderr).trim().slice(0, 1000) }, {
          message: `${argv.join(' ')}: ${String(stderr).trim() || err.message}`,
          cause: err,
        }));
      } else resolve({ stdout: String(stdout), stderr: String(stderr) });
    });
    if (opts.input !== undefined) child.stdin?.end(opts.input);
  });
}

/** Run argv inside network namespace `ns`. */
export function netnsExec(ns: string, argv: string[], opts: { input?: string; timeoutMs?: number } = {}): Promise<RunResult> {
  return run(['ip', 'netns', 'exec', ns, ...argv], opts);
}

/** Like run, but a failure is returned as null: for teardown, where "already gone" is success. */
export async function tryRun(argv: string[]): Promise<RunResult | null> {
  try {
    return await run(argv);
  } catch {
    return null;
  }
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
