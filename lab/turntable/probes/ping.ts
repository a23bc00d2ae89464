// Ping (paper Table 3: a client pinging every 50 ms), a probe of the turntable: `ping -D`
// (iputils), reply times from ping's own gettimeofday (lab/turntable/probes/time.ts).
import { spawn } from 'node:child_process';
import { labError } from '../../errors.ts';
import { nsArgv, stopChild, type ProbeHandle } from './child.ts';
import { r2 } from './time.ts';

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
