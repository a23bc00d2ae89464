// Starting, finding and stopping delay-line processes (lab/delay-line-main.ts, or the C one in
// lab/delay-line/ with `impl: 'c'` or VMTC_DELAY_LINE=c) from another process. A delay line outlives whoever started it (the `vmtc lab up` CLI exits; the broker may
// restart), so it runs detached with its stdout in a stats file, and is recorded by pid plus a
// tag in its argv: before signalling a recorded pid we check that /proc still shows our
// delay line with that tag, so a reused pid is never signalled.
import { spawn } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { sleep } from '../src/common/clock.ts';
import { pidAlive } from '../src/common/proc.ts';
import type { DelayLineReport } from './delay-line.ts';
import { DELAY_LINE_BINARY_NAME, ensureDelayLineBinary } from './delay-line/build.ts';
import { DELAY_LINE_RT_PRIORITY, defaultDelayLineCpu, nodeSchedPrefix, type DelayLineSched } from './delay-line-sched.ts';
import { labError } from './errors.ts';

const REPO_ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const MAIN = join(REPO_ROOT, 'lab', 'delay-line-main.ts');

/** Which program relays: the Node.js one (lab/delay-line-main.ts) or the C one
 * (lab/delay-line/delay-line.c, built on first use). Same options, same output. */
export type DelayLineImpl = 'node' | 'c';
export const DELAY_LINE_IMPLS: readonly DelayLineImpl[] = ['node', 'c'];

/** The implementation to use: the option if given, else env VMTC_DELAY_LINE, else 'c'. */
export function resolveDelayLineImpl(opt?: DelayLineImpl | null, env: NodeJS.ProcessEnv = process.env): DelayLineImpl {
  if (opt) return opt;
  const e = env.VMTC_DELAY_LINE?.trim();
  // The C relay by default: in the turntable it kept the switchover free of drops (0 in 10
  // moves at 500 and 1000 Mbit/s, vs 69 in one of 5 with Node) and starts faster (docs/lab.md).
  if (e === undefined || e === '') return 'c';
  if (e === 'node' || e === 'c') return e;
  throw labError('VMTC_CONFIG_INVALID', { field: 'VMTC_DELAY_LINE', value: e }, { message: 'VMTC_DELAY_LINE must be node or c' });
}

export interface DelayLineSpec {
  /** Namespace to run in (the lab's WAN namespace). */
  ns: string;
  listenHost: string;
  /** Endpoint addresses; datagrams from one go to the other. */
  a: string;
  b: string;
  oneWayMs: number;
  rateMbps: number;
  queueMs: number;
  loss: number;
  /** Identifies the process in /proc (e.g. "vmtc-dl:<connection id>"). */
  tag: string;
  statsFile: string;
  errFile: string;
  reportMs?: number;
  /** Default: env VMTC_DELAY_LINE, else 'c' (resolveDelayLineImpl). */
  impl?: DelayLineImpl;
  /** SCHED_FIFO priority (0: normal scheduling). Default DELAY_LINE_RT_PRIORITY (lab/delay-line-sched.ts). */
  rtPriority?: number;
  /** CPU to pin to (null: any). Default defaultDelayLineCpu(): the last CPU when there are two or more. */
  cpu?: number | null;
}

export interface DelayLineHandle {
  pid: number;
  port: number;
  tag: string;
  statsFile: string;
  errFile: string;
}

/** Spawn a delay line in `spec.ns` and wait until its socket is bound; returns pid and port. */
export async function startDelayLine(spec: DelayLineSpec, timeoutMs = 15_000): Promise<DelayLineHandle> {
  // Build (or find) the C binary before opening the stats file, so a build failure leaves no
  // half-started process behind.
  // Real-time priority and pinning (lab/delay-line-sched.ts): the C relay sets them itself and
  // warns when refused; the Node.js one is started under chrt/taskset where they work.
  const rt = spec.rtPriority ?? DELAY_LINE_RT_PRIORITY;
  const cpu = spec.cpu === undefined ? defaultDelayLineCpu() : spec.cpu;
  const program = resolveDelayLineImpl(spec.impl) === 'c'
    ? [await ensureDelayLineBinary(), '--rt-priority', String(rt), '--cpu', String(cpu ?? -1)]
    : [...nodeSchedPrefix(rt, cpu).argv, process.execPath, '--import', 'tsx', MAIN];
  const out = openSync(spec.statsFile, 'w');
  const err = openSync(spec.errFile, 'w');
  let exited: number | null = null;
  let pid: number | undefined;
  try {
    const child = spawn('ip', [
      'netns', 'exec', spec.ns,
      ...program,
      '--listen-host', spec.listenHost,
      '--a', spec.a, '--b', spec.b,
      '--one-way-ms', String(spec.oneWayMs),
      '--rate-mbps', String(spec.rateMbps),
      '--queue-ms', String(spec.queueMs),
      '--loss', String(spec.loss),
      '--report-ms', String(spec.reportMs ?? 1000),
      '--tag', spec.tag,
    ], { cwd: REPO_ROOT, detached: true, stdio: ['ignore', out, err] });
    pid = child.pid;
    child.on('exit', (code) => { exited = code ?? -1; });
    child.on('error', () => { exited = -1; });
    child.unref();
  } finally {
    closeSync(out);
    closeSync(err);
  }
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const first = readFileSync(spec.statsFile, 'utf8').split('\n')[0];
    if (first) {
      try {
        const m = JSON.parse(first) as { event: string; port: number; pid: number };
        if (m.event === 'listening') return { pid: m.pid, port: m.port, tag: spec.tag, statsFile: spec.statsFile, errFile: spec.errFile };
      } catch { /* partial line: read again */ }
    }
    if (exited !== null) break;
    await sleep(50);
  }
  if (pid !== undefined && exited === null) await stopDelayLine({ pid, tag: spec.tag });
  let stderr = '';
  try { stderr = readFileSync(spec.errFile, 'utf8').slice(-1000); } catch { /* none */ }
  throw labError('VMTC_LAB_DELAY_LINE_FAILED', { ns: spec.ns, exitCode: exited, stderr });
}

/** Is `pid` a live delay line started with `tag`? */
export function isOurDelayLine(pid: number, tag: string): boolean {
  try {
    const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    const ti = argv.indexOf('--tag');
    return argv.some((a) => a.endsWith('delay-line-main.ts') || a.endsWith(`/${DELAY_LINE_BINARY_NAME}`)) && ti >= 0 && argv[ti + 1] === tag;
  } catch {
    return false;
  }
}

// Does a process with this pid exist? Says nothing about whose it is (isOurDelayLine does).
export { pidAlive };

/** SIGTERM (it writes its final report), then SIGKILL after `graceMs`. Not ours or gone: no-op. */
export async function stopDelayLine(h: { pid: number; tag: string }, graceMs = 3000): Promise<boolean> {
  if (!isOurDelayLine(h.pid, h.tag)) return false;
  try { process.kill(h.pid, 'SIGTERM'); } catch { return false; }
  const deadline = Date.now() + graceMs;
  while (Date.now() < deadline) {
    if (!pidAlive(h.pid) || !isOurDelayLine(h.pid, h.tag)) return true;
    await sleep(25);
  }
  try { process.kill(h.pid, 'SIGKILL'); } catch { /* gone */ }
  return true;
}

/** The last report line in a stats file (stats or final), or null. */
export async function lastDelayLineReport(statsFile: string): Promise<DelayLineReport | null> {
  let text: string;
  try {
    text = await readFile(statsFile, 'utf8');
  } catch {
    return null;
  }
  const lines = text.trimEnd().split('\n');
  for (let i = lines.length - 1; i >= 0; i--) {
    try {
      const m = JSON.parse(lines[i]!) as DelayLineReport;
      if (m.event === 'stats' || m.event === 'final') return m;
    } catch { /* torn last line */ }
  }
  return null;
}

/** What a delay line's reports say about a stretch of time, both directions together. */
export interface DelayLineWindowStats {
  /** Reports (stats or final) read in the window. */
  reports: number;
  /** Highest interval rate of either direction, Mbit/s of UDP payload (unrounded). */
  peakMbps: number;
  /** Worst queueing delay of either direction. */
  queueMaxMs: number;
  /** Datagrams dropped because the queue was full, over the intervals the reports cover. */
  drops: number;
  /** Bytes delivered, over the intervals the reports cover. */
  bytes: number;
}

/**
 * Stats from the reports in a stats file whose `at` lies in [fromMs, toMs] (a report covers
 * the interval before its `at`, so a caller wanting all of a stretch passes a `toMs` one report
 * period past its end). Drops and bytes count the whole intervals of the reports read: the last
 * report's total minus what the total was before the first report's interval. No file, or no
 * report in the window: all zero.
 */
export function delayLineStatsBetween(statsFile: string | undefined, fromMs = -Infinity, toMs = Infinity): DelayLineWindowStats {
  const out: DelayLineWindowStats = { reports: 0, peakMbps: 0, queueMaxMs: 0, drops: 0, bytes: 0 };
  let text: string;
  try {
    text = statsFile ? readFileSync(statsFile, 'utf8') : '';
  } catch {
    return out;
  }
  let first: { drops: number; bytes: number } | undefined;
  let last = { drops: 0, bytes: 0 };
  for (const line of text.split('\n')) {
    let r: DelayLineReport;
    try { r = JSON.parse(line) as DelayLineReport; } catch { continue; }
    // The 'listening' line and a torn last line carry no interval.
    if ((r.event !== 'stats' && r.event !== 'final') || !r.interval?.ab || !r.interval.ba) continue;
    if (Number.isFinite(r.at) && (r.at < fromMs || r.at > toMs)) continue;
    const { ab, ba } = r.interval;
    const total = { drops: r.total.ab.drops + r.total.ba.drops, bytes: r.total.ab.bytes + r.total.ba.bytes };
    first ??= { drops: total.drops - ab.drops - ba.drops, bytes: total.bytes - ab.bytes - ba.bytes };
    last = total;
    out.reports++;
    out.peakMbps = Math.max(out.peakMbps, ab.mbps, ba.mbps);
    out.queueMaxMs = Math.max(out.queueMaxMs, ab.queueMaxMs, ba.queueMaxMs);
  }
  if (first) {
    out.drops = Math.max(0, last.drops - first.drops);
    out.bytes = Math.max(0, last.bytes - first.bytes);
  }
  return out;
}

/** One report's interval, as the instrument judges it (lab/turntable/instrument.ts). */
export interface DelayLineInterval {
  at: number;
  intervalMs: number;
  ab: { bytes: number; mbps: number; drops: number; queueP50Ms: number; queueMaxMs: number };
  ba: { bytes: number; mbps: number; drops: number; queueP50Ms: number; queueMaxMs: number };
}

/** The reports (stats or final) whose `at` lies in [fromMs, toMs], one interval each, in order.
 *  No file: none. */
export function delayLineIntervals(statsFile: string | undefined, fromMs = -Infinity, toMs = Infinity): DelayLineInterval[] {
  let text: string;
  try {
    text = statsFile ? readFileSync(statsFile, 'utf8') : '';
  } catch {
    return [];
  }
  const out: DelayLineInterval[] = [];
  const pick = (d: DelayLineReport['interval']['ab']) => ({ bytes: d.bytes, mbps: d.mbps, drops: d.drops, queueP50Ms: d.queueP50Ms, queueMaxMs: d.queueMaxMs });
  for (const line of text.split('\n')) {
    let r: DelayLineReport;
    try { r = JSON.parse(line) as DelayLineReport; } catch { continue; }
    if ((r.event !== 'stats' && r.event !== 'final') || !r.interval?.ab || !r.interval.ba || !Number.isFinite(r.at)) continue;
    if (r.at < fromMs || r.at > toMs) continue;
    out.push({ at: r.at, intervalMs: r.intervalMs, ab: pick(r.interval.ab), ba: pick(r.interval.ba) });
  }
  return out;
}

/** How the delay line was scheduled, from its listening line (null: no file, or an older relay
 *  that did not say). */
export function delayLineSched(statsFile: string | undefined): DelayLineSched | null {
  try {
    const first = statsFile ? readFileSync(statsFile, 'utf8').split('\n')[0] : '';
    const m = first ? (JSON.parse(first) as { event?: string; sched?: DelayLineSched }) : null;
    return m?.event === 'listening' && m.sched ? m.sched : null;
  } catch {
    return null;
  }
}

/** Ask a running delay line for a report now (SIGUSR2) and return it. */
export async function requestDelayLineReport(h: DelayLineHandle, timeoutMs = 2000): Promise<DelayLineReport | null> {
  if (!isOurDelayLine(h.pid, h.tag)) return lastDelayLineReport(h.statsFile);
  const before = (await readFile(h.statsFile, 'utf8').catch(() => '')).length;
  process.kill(h.pid, 'SIGUSR2');
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const text = await readFile(h.statsFile, 'utf8').catch(() => '');
    if (text.length > before && text.endsWith('\n')) return lastDelayLineReport(h.statsFile);
    await sleep(20);
  }
  return lastDelayLineReport(h.statsFile);
}
