// How the lab's delay line is scheduled (docs/lab.md "The instrument"): under SCHED_FIFO at the
// probes' priority and pinned to one CPU, so that other processes competing for the cores do not
// make it read or send late (on a busy 2-core machine the Node.js relay dropped 468 datagrams at
// a switchover and clients saw the downtime double). The C relay (lab/delay-line/
// delay-line.c) sets both itself (--rt-priority, --cpu) and warns when refused; the Node.js one is
// started under chrt/taskset when those work. Either reports what the kernel granted in its
// listening line ("sched"), which the turntable records.
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { cpus } from 'node:os';

/** SCHED_FIFO priority: the probes' (lab/turntable/probes/child.ts, `chrt -f 1`). Equal priority
 *  means neither preempts the other; both preempt every normal process, and both sleep nearly all
 *  the time (the relay uses ~2 % of a core itself: docs/lab.md). */
export const DELAY_LINE_RT_PRIORITY = 1;

/**
 * The CPU to pin the delay line to: the last one, when there are at least two (none on one CPU).
 * On 2 cores: the relay stays on CPU 1, keeping its socket and FIFOs cache-warm and never waiting
 * to be moved; the probes are not pinned, so when one wakes while the relay runs the kernel's
 * real-time balancing moves it to CPU 0, where it preempts whatever normal process runs there.
 */
export function defaultDelayLineCpu(n = cpus().length): number | null {
  return n >= 2 ? n - 1 : null;
}

export interface DelayLineSched {
  policy: 'fifo' | 'rr' | 'other';
  priority: number;
  /** CPUs it may run on, e.g. "1" or "0,1". */
  cpus: string;
  /** What was refused, when something was. */
  warning?: string;
}

/** What the kernel says about a process's scheduling (/proc/PID/stat and status), or null. */
export function readProcSched(pid: number | 'self'): DelayLineSched | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name in parentheses (which may hold spaces); rt_priority is field
    // 40 and policy 41 of proc(5), i.e. indices 37 and 38 counted from field 3.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const prio = Number(rest[37]);
    const pol = Number(rest[38]);
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const list = /^Cpus_allowed_list:\s*(\S+)/m.exec(status)?.[1] ?? '';
    return { policy: pol === 1 ? 'fifo' : pol === 2 ? 'rr' : 'other', priority: Number.isFinite(prio) ? prio : 0, cpus: expandCpuList(list) };
  } catch {
    return null;
  }
}

/** "0-1,3" → "0,1,3". */
export function expandCpuList(list: string): string {
  const out: number[] = [];
  for (const part of list.split(',').filter(Boolean)) {
    const [a, b] = part.split('-').map(Number);
    if (!Number.isInteger(a)) continue;
    for (let c = a!; c <= (Number.isInteger(b) ? b! : a!) && out.length < 4096; c++) out.push(c);
  }
  return out.join(',');
}

let chrtWorks: boolean | null = null;
/** The prefix that starts the Node.js relay at real-time priority and pinned (what works here). */
export function nodeSchedPrefix(rtPriority: number, cpu: number | null): { argv: string[]; warning?: string } {
  const argv: string[] = [];
  const warnings: string[] = [];
  if (rtPriority > 0) {
    chrtWorks ??= spawnSync('chrt', ['-f', String(rtPriority), 'true'], { stdio: 'ignore', timeout: 5000 }).status === 0;
    if (chrtWorks) argv.push('chrt', '-f', String(rtPriority));
    else warnings.push(`SCHED_FIFO ${rtPriority} refused (chrt failed)`);
  }
  if (cpu !== null) argv.push('taskset', '-c', String(cpu));
  return warnings.length ? { argv, warning: warnings.join('; ') } : { argv };
}
