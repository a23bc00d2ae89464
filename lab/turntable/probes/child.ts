// The turntable probes' child processes (lab/turntable/probes/udp.ts, ping.ts).
//
// Processes are started by the probe modules and stopped only by their own pid (stopChild); every
// loop is bounded in count and time.
import { spawnSync, type ChildProcess } from 'node:child_process';
import { pidAlive } from '../../delay-line-process.ts';

export interface ProbeHandle<T> {
  pid: number;
  /** Resolves when the probe is sending; rejects if it exits or does not get there in time. */
  ready: Promise<void>;
  /** Stop the probe (signal by pid, bounded wait) and return what it saw. */
  stop(): Promise<T>;
}

/** Wait until `child` exits (true) or `ms` passed (false). */
function waitExit(child: ChildProcess, exited: () => boolean, ms: number): Promise<boolean> {
  if (exited()) return Promise.resolve(true);
  return new Promise((resolve) => {
    const t = setTimeout(() => { child.off('exit', onExit); resolve(false); }, ms);
    const onExit = (): void => { clearTimeout(t); resolve(true); };
    child.once('exit', onExit);
  });
}

/** Signal our own child by pid (never by name); SIGKILL if it has not exited after `graceMs`. */
export async function stopChild(child: ChildProcess, exited: () => boolean, signal: NodeJS.Signals, graceMs: number): Promise<void> {
  const pid = child.pid;
  if (pid === undefined || exited()) return;
  try { process.kill(pid, signal); } catch { return; }
  if (await waitExit(child, exited, graceMs)) return;
  if (!exited() && pidAlive(pid)) {
    try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
    await waitExit(child, exited, 2000);
  }
}

let rtChecked: boolean | null = null;
/**
 * Can we run a probe under SCHED_FIFO (needs root / CAP_SYS_NICE)? Measured on this 2-core
 * machine with three busy loops: at normal priority the 2 ms UDP client was starved for up to
 * 40-130 ms at a time (tens of skipped slots, which would read as "downtime"); under
 * `chrt -f 1` its worst send interval stayed near 3 ms. The probes sleep almost all the time,
 * so the lowest real-time priority costs the rest of the machine nothing measurable.
 */
export function realtimeAvailable(): boolean {
  if (rtChecked === null) rtChecked = spawnSync('chrt', ['-f', '1', 'true'], { stdio: 'ignore', timeout: 5000 }).status === 0;
  return rtChecked;
}

export function nsArgv(ns: string | null, argv: string[], realtime: boolean): [string, string[]] {
  // `ip netns exec` and `chrt` both exec the next program (no fork), so the child's pid is the probe's.
  const full = realtime && realtimeAvailable() ? ['chrt', '-f', '1', ...argv] : argv;
  return ns ? ['ip', ['netns', 'exec', ns, ...full]] : [full[0]!, full.slice(1)];
}

/** Splits a stream into lines; calls `onLine` for each complete one. Bounded partial line. */
export function lineReader(onLine: (line: string) => void, maxPartial = 64 * 1024 * 1024): (chunk: Buffer | string) => void {
  let buf = '';
  return (chunk) => {
    buf += String(chunk);
    let i: number;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      onLine(line);
    }
    if (buf.length > maxPartial) buf = '';
  };
}
