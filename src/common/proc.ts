// Running other programs and asking whether a process still lives: the one copy every service,
// agent and the lab use. Every call is an argv (never a shell string) so names, paths and
// addresses cannot be misread by a shell.
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { commonError } from './errors.ts';

export interface RunResult {
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  /** Written to the program's stdin, which is then closed. */
  input?: string;
  /** Killed (SIGTERM) after this long; default 30 s. */
  timeoutMs?: number;
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** Largest stdout/stderr kept; default 16 MiB (beyond it the run fails). */
  maxBuffer?: number;
}

/**
 * Run argv and resolve its output; a non-zero exit, a signal, a timeout or a missing program
 * rejects with VMTC_COMMAND_FAILED, details { argv, code, signal, timedOut, stderr } (`code` is
 * the exit status, or the errno string such as ENOENT when the program could not start).
 */
export function run(argv: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      argv[0]!,
      argv.slice(1),
      { timeout: opts.timeoutMs ?? 30_000, maxBuffer: opts.maxBuffer ?? 16 * 1024 * 1024, cwd: opts.cwd, env: opts.env },
      (err, stdout, stderr) => {
        if (!err) return resolve({ stdout: String(stdout), stderr: String(stderr) });
        const e = err as NodeJS.ErrnoException & { killed?: boolean; signal?: NodeJS.Signals | null };
        const errText = String(stderr).trim();
        reject(commonError('VMTC_COMMAND_FAILED', {
          argv: [...argv],
          code: e.code ?? null,
          signal: e.signal ?? null,
          timedOut: e.killed === true, // only the timeout kills it: the child is not handed out
          stderr: errText.slice(0, 1000),
        }, { message: `${argv.join(' ')}: ${errText || err.message}`, cause: err }));
      },
    );
    // A program that exits before reading its stdin makes the write fail with EPIPE; the exit
    // status (reported above) is what matters, so the stream error is swallowed.
    child.stdin?.on('error', () => {});
    if (opts.input !== undefined) child.stdin?.end(opts.input);
  });
}

/** Like run, but a failure is returned as null: for teardown, where "already gone" is success. */
export async function tryRun(argv: readonly string[], opts: RunOptions = {}): Promise<RunResult | null> {
  try {
    return await run(argv, opts);
  } catch {
    return null;
  }
}

/**
 * Is `pid` a live process? Signal 0 says it exists; a zombie (exited, not yet reaped) counts as
 * gone. With `marker`, its command line must also contain the marker: a pid read from an old
 * pidfile or state file may since have been reused by an unrelated process.
 */
export function pidAlive(pid: number, marker?: string): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false; // 0 and negatives address process groups
  try {
    process.kill(pid, 0);
  } catch (e) {
    // EPERM: it exists but belongs to someone else; anything else (ESRCH): it does not exist.
    if ((e as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const close = stat.lastIndexOf(')'); // the command name may itself contain ')'
    const state = stat.slice(close + 2, close + 3);
    if (state === 'Z' || state === 'X') return false;
  } catch {
    // Without /proc (or it vanished just now) only the marker check can still say no.
    if (marker !== undefined) return false;
  }
  if (marker === undefined) return true;
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(marker);
  } catch {
    return false;
  }
}
