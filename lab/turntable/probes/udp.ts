// UDP echo probe of the turntable: lab/probes/udp-echo-client.mjs, run in the client namespace,
// every 2 ms by default; send and reply times on the host clock (lab/turntable/probes/time.ts).
import { spawn } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { labError } from '../../errors.ts';
import { lineReader, nsArgv, stopChild, type ProbeHandle } from './child.ts';

const REPO_ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const UDP_CLIENT = join(REPO_ROOT, 'lab', 'probes', 'udp-echo-client.mjs');

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
