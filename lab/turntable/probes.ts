// The turntable's measurement probes (docs/design.md#seeing-it) and the pure analysis of what they
// saw.
//
// Every time here is epoch milliseconds on the lab machine's single clock (host and client
// namespaces share it), with sub-millisecond precision where the source has it:
//   - UDP echo (lab/probes/udp-echo-client.mjs, run in the client namespace): send and reply times;
//   - ping -D (iputils, 50 ms as in the paper's Table 3): reply times from ping's own gettimeofday;
//   - serial heartbeat: arrival of each `hb N` line at the host side of the guest's ttyS1 (a unix
//     socket per QEMU; during a migration first the source's, then the destination's);
//   - the guest's internal clock probe: VMTC-GAP lines in each QEMU's console.log.
//
// Processes are started by this module and stopped only by their own pid; every loop is bounded
// in count and time.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import net from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pidAlive } from '../delay-line-process.ts';
import { labError } from '../errors.ts';
import type { Percentiles } from './types.ts';

const REPO_ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const UDP_CLIENT = join(REPO_ROOT, 'lab', 'probes', 'udp-echo-client.mjs');

// ---------------------------------------------------------------------------------------------
// Host clock

let clockOffset = performance.timeOrigin;
/**
 * Epoch ms with sub-ms precision: performance.timeOrigin + performance.now() (µs, monotonic),
 * kept within 1 ms of Date.now() should the realtime clock be stepped. Date.now() truncates to
 * whole ms, so the offset only follows it upward, or downward after a backward step of ≥ 1 ms.
 * The UDP client uses the same rule, so all probes share one time base.
 */
export function hostNow(): number {
  const p = performance.now();
  const d = Date.now() - p;
  if (d > clockOffset || d <= clockOffset - 1) clockOffset = d;
  return clockOffset + p;
}

const r2 = (x: number): number => Math.round(x * 100) / 100;

// ---------------------------------------------------------------------------------------------
// Child processes

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
async function stopChild(child: ChildProcess, exited: () => boolean, signal: NodeJS.Signals, graceMs: number): Promise<void> {
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

function nsArgv(ns: string | null, argv: string[], realtime: boolean): [string, string[]] {
  // `ip netns exec` and `chrt` both exec the next program (no fork), so the child's pid is the probe's.
  const full = realtime && realtimeAvailable() ? ['chrt', '-f', '1', ...argv] : argv;
  return ns ? ['ip', ['netns', 'exec', ns, ...full]] : [full[0]!, full.slice(1)];
}

/** Splits a stream into lines; calls `onLine` for each complete one. Bounded partial line. */
function lineReader(onLine: (line: string) => void, maxPartial = 64 * 1024 * 1024): (chunk: Buffer | string) => void {
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

// ---------------------------------------------------------------------------------------------
// UDP echo probe

/** What the UDP probe saw. sends[seq] = send time; replies = [seq, sentAt, recvAt] in arrival order, duplicates kept. */
export interface UdpSamples {
  probe: 'udp';
  intervalMs: number;
  sent: number;
  received: number;
  /** Slots not sent because the client fell behind by more than a small burst (see the .mjs). */
  skipped: number;
  sendErrors: number;
  sends: number[];
  replies: [number, number, number][];
}

export interface UdpProbeOptions {
  port?: number;
  intervalMs?: number;
  /** The client stops by itself after this long (default 600). */
  maxSeconds?: number;
  maxCount?: number;
  /** How long `ready` may take (default 10 s). */
  readyTimeoutMs?: number;
  /** Run at SCHED_FIFO priority 1 when allowed (default true; see realtimeAvailable). */
  realtime?: boolean;
}

export interface ProbeHandle<T> {
  pid: number;
  /** Resolves when the probe is sending; rejects if it exits or does not get there in time. */
  ready: Promise<void>;
  /** Stop the probe (signal by pid, bounded wait) and return what it saw. */
  stop(): Promise<T>;
}

/** Start the UDP echo client toward `host` (inside namespace `ns`, or here when ns is null). */
export function startUdpProbe(ns: string | null, host: string, opts: UdpProbeOptions = {}): ProbeHandle<UdpSamples> {
  const args = [
    '--host', host,
    '--port', String(opts.port ?? 7),
    '--interval-ms', String(opts.intervalMs ?? 2),
    '--max-seconds', String(opts.maxSeconds ?? 600),
    ...(opts.maxCount !== undefined ? ['--max-count', String(opts.maxCount)] : []),
  ];
  const [cmd, argv] = nsArgv(ns, [process.execPath, UDP_CLIENT, ...args], opts.realtime ?? true);
  const child = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
  let exitCode: number | null = null;
  let exited = false;
  let result: UdpSamples | null = null;
  let stderr = '';
  let readyResolve!: () => void;
  let readyReject!: (e: Error) => void;
  let readySettled = false;
  const ready = new Promise<void>((res, rej) => { readyResolve = res; readyReject = rej; });
  ready.catch(() => { /* the caller sees it when awaiting; never an unhandled rejection */ });
  const fail = (why: string): void => {
    if (readySettled) return;
    readySettled = true;
    readyReject(labError('VMTC_LAB_COMMAND_FAILED', { probe: 'udp', ns, host, exitCode, stderr: stderr.slice(-1000) }, { message: `UDP probe: ${why}` }));
  };
  const readyTimer = setTimeout(() => fail('not ready in time'), opts.readyTimeoutMs ?? 10_000);
  child.stdout!.on('data', lineReader((line) => {
    if (!line.trim()) return;
    let m: { event?: string; probe?: string };
    try { m = JSON.parse(line) as typeof m; } catch { return; }
    if (m.event === 'ready' && !readySettled) {
      readySettled = true;
      clearTimeout(readyTimer);
      readyResolve();
    } else if (m.probe === 'udp' && !m.event) result = m as UdpSamples;
  }));
  child.stderr!.on('data', (d) => { stderr = (stderr + String(d)).slice(-4000); });
  child.on('error', (e) => { exited = true; stderr += String(e.message); fail('could not start'); });
  child.on('exit', (code) => { exited = true; exitCode = code ?? -1; clearTimeout(readyTimer); fail('exited before ready'); });
  return {
    pid: child.pid ?? -1,
    ready,
    async stop(): Promise<UdpSamples> {
      clearTimeout(readyTimer);
      await stopChild(child, () => exited, 'SIGTERM', 10_000);
      // The 'exit' event may precede the last stdout data; 'close' follows both.
      if (!child.stdout!.closed) await new Promise<void>((r) => { const t = setTimeout(r, 2000); child.stdout!.once('close', () => { clearTimeout(t); r(); }); });
      if (!result) throw labError('VMTC_LAB_COMMAND_FAILED', { probe: 'udp', ns, host, exitCode, stderr: stderr.slice(-1000) }, { message: 'UDP probe gave no result' });
      return result;
    },
  };
}

/** First arrival time of each replied sequence number, in time order (duplicates ignored). */
export function udpReplyTimes(s: Pick<UdpSamples, 'replies'>): number[] {
  const first = new Map<number, number>();
  for (const [seq, , at] of s.replies) {
    const prev = first.get(seq);
    if (prev === undefined || at < prev) first.set(seq, at);
  }
  return [...first.values()].sort((a, b) => a - b);
}

// ---------------------------------------------------------------------------------------------
// Ping (paper Table 3: a client pinging every 50 ms)

export interface PingSamples {
  /** Probes ping says it transmitted (its summary line), else the highest seq seen. */
  sends: number;
  /** Replies in arrival order (duplicates kept); rttMs as ping printed it. */
  replies: { seq: number; at: number; rttMs: number | null }[];
  /** Seqs ping reported as "no answer yet" (-O), which may still be answered later. */
  noAnswer: number[];
  /** sends minus distinct replied seqs (over the whole run). */
  lost: number;
}

export interface PingOptions {
  intervalMs?: number;
  maxSeconds?: number;
  readyTimeoutMs?: number;
  /** As for the UDP probe (default true). */
  realtime?: boolean;
}

const PING_REPLY = /^\[(\d+\.\d+)\] \d+ bytes from .*?icmp_seq=(\d+)(?:.* time=([\d.]+) ms)?/;
const PING_NO_ANSWER = /^\[(\d+\.\d+)\] no answer yet for icmp_seq=(\d+)/;
const PING_SUMMARY = /^(\d+) packets transmitted, (\d+) (?:packets )?received/;

/** Parse ping -D -O output (exported for the unit tests). */
export function parsePing(text: string): PingSamples {
  const replies: PingSamples['replies'] = [];
  const noAnswer: number[] = [];
  let transmitted: number | null = null;
  let maxSeq = 0;
  for (const line of text.split('\n')) {
    let m = PING_REPLY.exec(line);
    if (m) {
      const seq = Number(m[2]);
      replies.push({ seq, at: r2(Number(m[1]) * 1000), rttMs: m[3] !== undefined ? Number(m[3]) : null });
      maxSeq = Math.max(maxSeq, seq);
      continue;
    }
    m = PING_NO_ANSWER.exec(line);
    if (m) {
      noAnswer.push(Number(m[2]));
      maxSeq = Math.max(maxSeq, Number(m[2]));
      continue;
    }
    m = PING_SUMMARY.exec(line);
    if (m) transmitted = Number(m[1]);
  }
  const sends = transmitted ?? maxSeq;
  const distinct = new Set(replies.map((r) => r.seq)).size;
  return { sends, replies, noAnswer, lost: Math.max(0, sends - distinct) };
}

/**
 * Start `ping -D -O -n -i <interval> -W 1 -w <maxSeconds> host` (inside `ns` when given). As
 * root, iputils allows intervals below 0.2 s. Stopped with SIGINT by pid so it prints its summary.
 * icmp_seq is 16 bits: at 50 ms it wraps after 54 minutes, far beyond a run's bound.
 */
export function startPing(ns: string | null, host: string, opts: PingOptions = {}): ProbeHandle<PingSamples> {
  const interval = (opts.intervalMs ?? 50) / 1000;
  const maxSeconds = Math.max(1, Math.ceil(opts.maxSeconds ?? 600));
  const [cmd, argv] = nsArgv(ns, ['ping', '-D', '-O', '-n', '-i', String(interval), '-W', '1', '-w', String(maxSeconds), host], opts.realtime ?? true);
  const child = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, LC_ALL: 'C' } });
  let out = '';
  let stderr = '';
  let exited = false;
  let exitCode: number | null = null;
  let readySettled = false;
  let readyResolve!: () => void;
  let readyReject!: (e: Error) => void;
  const ready = new Promise<void>((res, rej) => { readyResolve = res; readyReject = rej; });
  ready.catch(() => { /* seen by whoever awaits it */ });
  const fail = (why: string): void => {
    if (readySettled) return;
    readySettled = true;
    readyReject(labError('VMTC_LAB_COMMAND_FAILED', { probe: 'ping', ns, host, exitCode, stderr: stderr.slice(-1000) }, { message: `ping: ${why}` }));
  };
  const readyTimer = setTimeout(() => fail('not ready in time'), opts.readyTimeoutMs ?? 10_000);
  // Bounded: at 50 ms for 600 s ping prints ~12k lines of < 100 bytes.
  const MAX_OUT = 32 * 1024 * 1024;
  child.stdout!.on('data', (d) => {
    if (out.length < MAX_OUT) out += String(d);
    // ping prints "PING host (addr) ..." once its socket is open, before the first probe.
    if (!readySettled && /^PING /m.test(out)) {
      readySettled = true;
      clearTimeout(readyTimer);
      readyResolve();
    }
  });
  child.stderr!.on('data', (d) => { stderr = (stderr + String(d)).slice(-4000); });
  child.on('error', (e) => { exited = true; stderr += e.message; fail('could not start'); });
  child.on('exit', (code) => { exited = true; exitCode = code ?? -1; clearTimeout(readyTimer); fail('exited before ready'); });
  return {
    pid: child.pid ?? -1,
    ready,
    async stop(): Promise<PingSamples> {
      clearTimeout(readyTimer);
      await stopChild(child, () => exited, 'SIGINT', 5000);
      if (!child.stdout!.closed) await new Promise<void>((r) => { const t = setTimeout(r, 2000); child.stdout!.once('close', () => { clearTimeout(t); r(); }); });
      return parsePing(out);
    },
  };
}

/** First arrival of each replied seq, in time order. */
export function pingReplyTimes(s: { replies: readonly { seq: number; at: number }[] }): number[] {
  const first = new Map<number, number>();
  for (const r of s.replies) {
    const prev = first.get(r.seq);
    if (prev === undefined || r.at < prev) first.set(r.seq, r.at);
  }
  return [...first.values()].sort((a, b) => a - b);
}

// ---------------------------------------------------------------------------------------------
// Serial heartbeat (the paper's external measurement, without an oscilloscope)

export interface SerialSample {
  /** Arrival on the host clock (epoch ms): when the chunk completing the line was read. */
  at: number;
  seq: number;
  label: string;
}

export interface WatchOptions {
  /** Retry period while the socket is absent or refuses (default 20 ms). */
  retryMs?: number;
  /** Stop trying (and reading) after this long (default 600 s). */
  maxMs?: number;
  /** Reconnect after the peer closes (default true): the destination's QEMU may close and reopen. */
  reconnect?: boolean;
}

interface Watch {
  path: string;
  label: string;
  sock: net.Socket | null;
  timer: NodeJS.Timeout | null;
  deadline: number;
  connects: number;
}

/**
 * Reads `hb N` lines from the host side of guest serial ports (QEMU chardev socket,
 * server=on,wait=off: one client at a time). Several sockets at once: during a migration the
 * source's and the destination's. A socket that does not exist yet or refuses is retried every
 * `retryMs`; one that closes (the source QEMU quits) is retried too, until stop() or the bound.
 * Errors never escape: a vanished socket is the expected end of the source's stream.
 */
export class SerialWatcher {
  private readonly watches: Watch[] = [];
  private readonly out: SerialSample[] = [];
  private stopped = false;
  private readonly maxSamples: number;

  constructor(opts: { maxSamples?: number } = {}) {
    // 10 ms heartbeats for 600 s are 60k samples per socket; bound memory anyway.
    this.maxSamples = opts.maxSamples ?? 1_000_000;
  }

  watch(socketPath: string, label: string, opts: WatchOptions = {}): void {
    if (this.stopped) return;
    const retryMs = opts.retryMs ?? 20;
    const w: Watch = { path: socketPath, label, sock: null, timer: null, deadline: Date.now() + (opts.maxMs ?? 600_000), connects: 0 };
    this.watches.push(w);
    const schedule = (): void => {
      if (this.stopped || Date.now() >= w.deadline) return;
      w.timer = setTimeout(connect, retryMs);
    };
    const connect = (): void => {
      w.timer = null;
      if (this.stopped || Date.now() >= w.deadline) return;
      const sock = net.connect(socketPath);
      w.sock = sock;
      let connected = false;
      let buf = '';
      sock.on('connect', () => { connected = true; w.connects++; });
      sock.on('data', (chunk) => {
        const at = hostNow();
        buf += chunk.toString('latin1');
        let i: number;
        while ((i = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, i).replace(/\r$/, '');
          buf = buf.slice(i + 1);
          const m = /^hb (\d+)$/.exec(line.trim());
          if (m && this.out.length < this.maxSamples) this.out.push({ at: r2(at), seq: Number(m[1]), label });
        }
        if (buf.length > 4096) buf = ''; // not a heartbeat stream
      });
      sock.on('error', () => { /* ENOENT / ECONNREFUSED / ECONNRESET: handled on close */ });
      sock.on('close', () => {
        if (w.sock === sock) w.sock = null;
        if (connected && opts.reconnect === false) return;
        schedule();
      });
    };
    connect();
  }

  /** Samples so far, in arrival order. */
  samples(): SerialSample[] {
    return [...this.out];
  }

  /** How many times each watched socket was connected (for diagnostics and tests). */
  connections(): { path: string; label: string; connects: number }[] {
    return this.watches.map((w) => ({ path: w.path, label: w.label, connects: w.connects }));
  }

  /** Close every socket, stop retrying, return all samples in arrival order. */
  async stop(): Promise<SerialSample[]> {
    this.stopped = true;
    for (const w of this.watches) {
      if (w.timer) clearTimeout(w.timer);
      w.timer = null;
      w.sock?.destroy();
      w.sock = null;
    }
    return this.samples();
  }
}

// ---------------------------------------------------------------------------------------------
// Internal clock probe (VMTC-GAP lines from lab/guest/vmtc-probe.c on the guest console)

export interface InternalGap {
  /** The guest's loop counter. */
  n: number;
  monoMs: number;
  realMs: number;
  /** Guest CLOCK_REALTIME (epoch ms) at the end of the gap. */
  atReal: number;
  /** max(monoMs, realMs). */
  gapMs: number;
  file: string;
}

const GAP_LINE = /VMTC-GAP n=(\d+) mono_ms=([\d.]+) real_ms=([\d.]+) at_real=([\d.]+)/g;

/**
 * The VMTC-GAP lines of the given console logs (source's and destination's; a missing file is
 * skipped) whose gap [atReal - gapMs, atReal] overlaps [fromEpochMs, toEpochMs]. The guest's
 * realtime clock starts from the host's (RTC) at boot, so it agrees roughly — to about a second —
 * with the host clock: widen the window accordingly. `maxMs` is the largest gap, null if none
 * (which may mean the guest's clocks did not see the pause: docs/design.md#lab-facts, the
 * in-guest clock is blind to the pause).
 */
export async function readInternalGaps(consoleLogPaths: string[], fromEpochMs: number, toEpochMs: number): Promise<{ gaps: InternalGap[]; maxMs: number | null }> {
  const gaps: InternalGap[] = [];
  for (const file of consoleLogPaths) {
    let text: string;
    try { text = await readFile(file, 'latin1'); } catch { continue; }
    for (const m of text.matchAll(GAP_LINE)) {
      const monoMs = Number(m[2]);
      const realMs = Number(m[3]);
      const atReal = Number(m[4]);
      const gapMs = Math.max(monoMs, realMs);
      if (atReal - gapMs <= toEpochMs && atReal >= fromEpochMs) gaps.push({ n: Number(m[1]), monoMs, realMs, atReal, gapMs, file });
    }
  }
  gaps.sort((a, b) => a.atReal - b.atReal);
  return { gaps, maxMs: gaps.length ? Math.max(...gaps.map((g) => g.gapMs)) : null };
}

// ---------------------------------------------------------------------------------------------
// Analysis (pure)

export interface Gap { gapMs: number; start: number; end: number }

/**
 * The longest silence between two consecutive arrivals that overlaps [from, to].
 *
 * A gap is the open interval (a, b) between consecutive distinct arrival times a < b (input order
 * and duplicates do not matter). It counts when it overlaps the window: a < to and b > from. It
 * is reported whole (not clipped to the window): a silence that began before the window is still
 * that long. Only silences closed by an arrival count: the time before the first arrival or
 * after the last one is not a gap (a stream that ended before the window, or never resumed, is
 * not evidence of a silence of any particular length), so a window with at most one arrival
 * around it gives null. Ties: the earliest of equal gaps. Non-finite times are ignored.
 */
export function longestGap(times: readonly number[], from: number, to: number): Gap | null {
  const t = [...new Set(times.filter((x) => Number.isFinite(x)))].sort((x, y) => x - y);
  let best: Gap | null = null;
  for (let i = 1; i < t.length; i++) {
    const a = t[i - 1]!;
    const b = t[i]!;
    if (a >= to) break;
    if (b <= from) continue;
    if (!best || b - a > best.gapMs) best = { gapMs: r2(b - a), start: a, end: b };
  }
  return best;
}

/**
 * UDP loss: sends whose send time is in [from, to] and for which no reply ever came (a late reply
 * still counts as a reply). `sends[seq]` is the send time of seq. The caller should end the
 * window well before the probe stopped, or the last datagrams in flight count as lost.
 */
export function countLost(sends: readonly number[], replySeqs: Iterable<number>, from: number, to: number): number {
  const replied = new Set(replySeqs);
  let lost = 0;
  for (let seq = 0; seq < sends.length; seq++) {
    const at = sends[seq]!;
    if (at >= from && at <= to && !replied.has(seq)) lost++;
  }
  return lost;
}

/**
 * Ping loss in the gaps overlapping [from, to]: ping gives no send time, so losses are located by
 * the replies around them. Replies are reduced to the first arrival of each seq and ordered by
 * seq; for each pair of consecutive replied seqs p < q whose arrivals (p.at, q.at) overlap the
 * window (p.at < to and q.at > from), the seqs p+1 .. q-1 are lost. Probes after the last reply
 * are not counted (they may simply have been in flight when ping stopped).
 */
export function lostInGap(replies: readonly { seq: number; at: number }[], from: number, to: number): number {
  const first = new Map<number, number>();
  for (const r of replies) {
    const prev = first.get(r.seq);
    if (prev === undefined || r.at < prev) first.set(r.seq, r.at);
  }
  const bySeq = [...first.entries()].sort((x, y) => x[0] - y[0]);
  let lost = 0;
  for (let i = 1; i < bySeq.length; i++) {
    const [ps, pa] = bySeq[i - 1]!;
    const [qs, qa] = bySeq[i]!;
    if (qs - ps > 1 && Math.min(pa, qa) < to && Math.max(pa, qa) > from) lost += qs - ps - 1;
  }
  return lost;
}

/**
 * Nearest-rank percentiles: with the n finite values sorted ascending, the p-th percentile is the
 * value at rank ceil(p/100 × n) (1-based), so it is always an observed value. null, undefined and
 * non-finite values are ignored; with none left every figure is null and n is 0.
 */
export function percentiles(values: readonly (number | null | undefined)[]): Percentiles {
  const v = values.filter((x): x is number => typeof x === 'number' && Number.isFinite(x)).sort((a, b) => a - b);
  const n = v.length;
  if (n === 0) return { p50: null, p95: null, max: null, n: 0 };
  const rank = (p: number): number => v[Math.max(1, Math.ceil((p / 100) * n)) - 1]!;
  return { p50: rank(50), p95: rank(95), max: v[n - 1]!, n };
}

/**
 * The serial figure (the paper's external measurement): the first destination arrival after the
 * last source arrival, minus that last source arrival. null when either side has no sample or
 * no destination arrival follows the last source one. It includes up to one heartbeat period
 * (the guest writes once per period), so it exceeds the pause by at most that much.
 */
export function serialDowntime(samples: readonly SerialSample[], sourceLabel: string, destLabel: string): number | null {
  const edge = serialEdge(samples, sourceLabel, destLabel);
  return edge ? r2(edge.first.at - edge.last.at) : null;
}

/** The last source sample and the first destination sample after it (null if none). */
export function serialEdge(samples: readonly SerialSample[], sourceLabel: string, destLabel: string): { last: SerialSample; first: SerialSample } | null {
  let last: SerialSample | null = null;
  for (const s of samples) if (s.label === sourceLabel && (!last || s.at > last.at)) last = s;
  if (!last) return null;
  let first: SerialSample | null = null;
  for (const s of samples) if (s.label === destLabel && s.at > last.at && (!first || s.at < first.at)) first = s;
  return first ? { last, first } : null;
}

/**
 * Heartbeats missing across the switchover: the guest numbers them, so the seqs between the last
 * one at the source and the first at the destination never reached the host side (written while
 * neither socket had a reader). null when serialDowntime is null.
 */
export function serialLost(samples: readonly SerialSample[], sourceLabel: string, destLabel: string): number | null {
  const edge = serialEdge(samples, sourceLabel, destLabel);
  return edge ? Math.max(0, edge.first.seq - edge.last.seq - 1) : null;
}

/** Offsets (ms from t0, 0.01 ms) of the times whose offset lies in [fromMs, toMs], sorted. */
export function window(times: readonly number[], t0: number, fromMs: number, toMs: number): number[] {
  const out: number[] = [];
  for (const t of times) {
    if (!Number.isFinite(t)) continue;
    const off = t - t0;
    if (off >= fromMs && off <= toMs) out.push(r2(off));
  }
  return out.sort((a, b) => a - b);
}
