// A helper process the host agent starts and stops by pid: the cold path's relay
// (agents/host/cold/relay.ts) and the follow relay (agents/host/disks/nbd-relay.ts). It prints
// one JSON line `{"event":"ready",...}` on stdout once it serves, or `{"event":"error",
// "reason":...}` before it exits 1; its stdin is a pipe from the agent, so it exits when the
// agent does. Started through `ip netns exec NS` (which execs: the pid is the helper's) when it
// must run in the driver's network namespace.
import { spawn, type ChildProcess } from 'node:child_process';
import type { Clock } from '../../src/common/clock.ts';

export interface HelperProcess {
  pid: number;
  /** The ready line's fields. */
  ready: Record<string, unknown>;
  /** Resolves once it exited. */
  exited: Promise<void>;
  /** Send `signal` (synchronous); false when it is gone already. */
  signal(signal: NodeJS.Signals): boolean;
  /** SIGTERM, then SIGKILL if it has not exited within `graceMs`; resolves once it exited. */
  stop(graceMs: number): Promise<void>;
}

export interface HelperOptions {
  argv: string[];
  clock: Clock;
  startTimeoutMs: number;
  /** The coded error for a helper that did not start: `reason`, and `stderr` when useful. */
  failure: (why: { reason: string; stderr?: string }, cause?: unknown) => Error;
  /** Each line the helper writes on stderr (its log). */
  onStderrLine?: (line: string) => void;
}

/** Start the helper; resolves once its ready line came. A helper that exits, fails to spawn or
 *  is not ready in time is stopped and rejects with `failure(...)`: nothing is left running. */
export async function startHelper(o: HelperOptions): Promise<HelperProcess> {
  const child: ChildProcess = spawn(o.argv[0]!, o.argv.slice(1), { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  let partial = '';
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (d: string) => {
    stderr = (stderr + d).slice(-2000);
    if (!o.onStderrLine) return;
    const lines = (partial + d).split('\n');
    partial = lines.pop()!.slice(-64 * 1024);
    for (const l of lines) if (l.trim()) o.onStderrLine(l);
  });
  child.stdin!.on('error', () => undefined);
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  let gone = false;
  void exited.then(() => { gone = true; });
  const signal = (s: NodeJS.Signals): boolean => {
    if (gone) return false;
    try {
      return child.kill(s);
    } catch {
      return false;
    }
  };
  const stop = async (graceMs: number): Promise<void> => {
    if (gone) return;
    signal('SIGTERM');
    let timer: { cancel(): void } | undefined;
    await Promise.race([exited, new Promise<void>((r) => { timer = o.clock.setTimeout(() => r(), graceMs); })]);
    timer?.cancel();
    if (!gone) {
      signal('SIGKILL');
      await exited;
    }
  };
  let timer: { cancel(): void } | undefined;
  try {
    const ready = await new Promise<Record<string, unknown>>((resolve, reject) => {
      let buf = '';
      child.once('error', (e) => reject(o.failure({ reason: e.message }, e)));
      void exited.then(() => reject(o.failure({ reason: errorLine(buf) ?? (stderr.trim().slice(-500) || 'exited before it was ready') })));
      timer = o.clock.setTimeout(() => reject(o.failure({ reason: `not ready within ${o.startTimeoutMs} ms`, stderr: stderr.trim().slice(-500) })), o.startTimeoutMs);
      child.stdout!.setEncoding('utf8');
      child.stdout!.on('data', (d: string) => {
        buf = (buf + d).slice(-64 * 1024);
        for (const line of buf.split('\n')) {
          if (!line.startsWith('{')) continue;
          try {
            const j = JSON.parse(line) as Record<string, unknown>;
            if (j.event === 'ready') resolve(j);
          } catch { /* a partial line */ }
        }
      });
    });
    return { pid: child.pid!, ready, exited, signal, stop };
  } catch (e) {
    await stop(5000);
    throw e;
  } finally {
    timer?.cancel();
  }
}

/** The reason of the helper's `{"event":"error"}` line, if it printed one. */
function errorLine(buf: string): string | undefined {
  for (const line of buf.split('\n').reverse()) {
    try {
      const j = JSON.parse(line) as { event?: string; reason?: string };
      if (j.event === 'error') return j.reason;
    } catch { /* not JSON */ }
  }
  return undefined;
}
