// The bulk-TCP reference rate (docs/lab.md "Throughput"): one TCP flow across the same
// emulated lightpath a migration uses (the lab's lightpath driver: VXLAN through the delay line,
// htb at the reserved rate, the route's initial windows), bounded in time, measured in the same
// run as the migrations so that total time ÷ (bytes ÷ bulk rate) compares like with like.
// The lightpath is provisioned for the measurement and released before any migration asks for
// its own (two lightpaths between the same namespaces would conflict).
// The same file is the TCP peer when run as `node --import tsx lab/turntable/bulk.ts --bulk-role
// send|recv --host IP --port N [--seconds S]` inside a site's namespace.
import net from 'node:net';
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import type { Lab } from '../topology.ts';
import { labError } from '../errors.ts';
import { percentiles } from './probes/analysis.ts';
import type { BulkTcpFigure, Percentiles } from './types.ts';

export type { BulkTcpFigure };

/** The flow's figures, with the receiver's 250 ms buckets (turntable.json keeps them out). */
export interface BulkTcpResult extends BulkTcpFigure {
  /** Bytes received per 250 ms from the first byte (the flow's ramp: see bulkMsFor). */
  buckets: number[];
}

export interface BulkTcpOptions {
  bandwidthMbps: number;
  /** How long the sender sends (default 8 s; at most 60). */
  seconds?: number;
  port?: number;
  /** Lightpath id for the measurement (default `bulk-<prefix>`). */
  connectionId?: string;
}

/** Delivered Mbit/s of `bytes` over `ms`. */
export function mbpsOf(bytes: number, ms: number): number {
  return ms > 0 ? Math.round((bytes * 8) / (ms * 1000)) : 0;
}

/** The rate of the second half of a flow from its 250 ms buckets (the last, partial one left
 *  out); null with fewer than 4 buckets. */
export function steadyMbps(buckets: readonly number[], bucketMs = 250): number | null {
  if (buckets.length < 4) return null;
  const half = buckets.slice(Math.floor(buckets.length / 2), -1);
  return mbpsOf(half.reduce((a, b) => a + b, 0), half.length * bucketMs);
}

/** How long the measured flow took to deliver its first `bytes` (ms from its first byte, at
 *  250 ms resolution, interpolated inside the bucket): what a fresh flow of this path needs for a
 *  copy of that size, slow start included. null when the flow delivered less. */
export function bulkMsFor(buckets: readonly number[], bytes: number, bucketMs = 250): number | null {
  let sum = 0;
  for (let i = 0; i < buckets.length; i++) {
    const b = buckets[i]!;
    if (sum + b >= bytes) return Math.round(i * bucketMs + (b ? ((bytes - sum) / b) * bucketMs : 0));
    sum += b;
  }
  return null;
}

/** The reference rate of a bulk measurement: its second half (after slow start), else the whole. */
export function bulkRateMbps(b: Pick<BulkTcpResult, 'mbps' | 'steadyMbps'>): number {
  return b.steadyMbps ?? b.mbps;
}

/** One migration's copy against the bulk flow: hypervisor total ÷ (bytes ÷ bulk rate), i.e. how
 *  many times longer QEMU took than one TCP flow of the same path would at its rate; null without
 *  the figures. */
export function copyVsBulkRatio(m: { hypervisorTotalMs: number | null; bytes: number }, bulkMbps: number): number | null {
  if (m.hypervisorTotalMs === null || !(m.bytes > 0) || !(bulkMbps > 0)) return null;
  const atBulkMs = (m.bytes * 8) / (bulkMbps * 1000);
  return Math.round((m.hypervisorTotalMs / atBulkMs) * 100) / 100;
}

/** The ratio's percentiles over the migrations given (the caller passes those that count). */
export function copyVsBulk(ms: readonly { hypervisorTotalMs: number | null; bytes: number }[], bulk: Pick<BulkTcpResult, 'mbps' | 'steadyMbps'>): Percentiles {
  return percentiles(ms.map((m) => copyVsBulkRatio(m, bulkRateMbps(bulk))));
}

/** One bulk TCP flow from site `from` to site `to` over a lightpath provisioned for it. */
export async function measureBulkTcp(lab: Lab, from: string, to: string, o: BulkTcpOptions): Promise<BulkTcpResult> {
  const { provisionLightpath, netnsExec } = await import('../net.ts');
  const { LabLightpathDriver } = await import('../lightpath-driver.ts');
  const { pingMinMs } = await import('./probes/session.ts');
  const seconds = Math.min(60, Math.max(1, o.seconds ?? 8));
  const port = o.port ?? 5301;
  const id = o.connectionId ?? `bulk-${lab.prefix}`;
  const a = lab.sites.find((s) => s.name === from);
  const b = lab.sites.find((s) => s.name === to);
  if (!a || !b) throw labError('VMTC_LAB_COMMAND_FAILED', { step: 'bulk TCP', from, to, why: 'unknown site' });
  const driver = new LabLightpathDriver({ stateDir: lab.stateDir });
  const children: ChildProcess[] = [];
  try {
    await provisionLightpath(lab, from, to, o.bandwidthMbps, id);
    const cc = (await netnsExec(a.ns, ['sysctl', '-n', 'net.ipv4.tcp_congestion_control'])).stdout.trim();
    // The path's RTT while nothing else crosses it (emulator.rttMs of the run).
    const idleRttMs = await pingMinMs(a.ns, b.lightpathIp);
    const before = await driver.report(id);
    const common = ['--host', b.lightpathIp, '--port', String(port)];
    const recv = peer(b.ns, ['--bulk-role', 'recv', ...common]);
    children.push(recv);
    await withTimeout(firstLine(recv, (l) => l === 'ready'), 15_000, 'receiver did not start');
    const result = firstLine(recv, (l) => l.startsWith('{'));
    children.push(peer(a.ns, ['--bulk-role', 'send', '--seconds', String(seconds), ...common]));
    // The receiver answers when the sender ends: seconds plus the last bytes in flight.
    const r = JSON.parse(await withTimeout(result, (seconds + 30) * 1000, 'no result from the receiver')) as { bytes: number; ms: number; buckets: number[] };
    const after = await driver.report(id);
    const drops = (x: typeof after) => (x ? x.total.ab.drops + x.total.ba.drops : 0);
    return { mbps: mbpsOf(r.bytes, r.ms), steadyMbps: steadyMbps(r.buckets), bytes: r.bytes, ms: Math.round(r.ms), congestionControl: cc, drops: drops(after) - drops(before), bandwidthMbps: o.bandwidthMbps, idleRttMs, buckets: r.buckets };
  } finally {
    for (const c of children) if (c.exitCode === null && c.pid) { try { c.kill('SIGKILL'); } catch { /* gone */ } }
    await driver.release(id).catch(() => undefined);
  }
}

function peer(ns: string, args: string[]): ChildProcess {
  return spawn('ip', ['netns', 'exec', ns, process.execPath, '--import', 'tsx', fileURLToPath(import.meta.url), ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
}

function firstLine(child: ChildProcess, match: (l: string) => boolean): Promise<string> {
  return new Promise((resolve, reject) => {
    let buf = '';
    child.stdout!.on('data', (d) => {
      buf += String(d);
      for (const l of buf.split('\n')) if (l && match(l)) return resolve(l);
    });
    child.on('exit', (c) => reject(labError('VMTC_LAB_COMMAND_FAILED', { step: 'bulk TCP', why: `peer exited ${c}` })));
  });
}

function withTimeout<T>(p: Promise<T>, ms: number, why: string): Promise<T> {
  let t: NodeJS.Timeout | undefined;
  return Promise.race([p, new Promise<T>((_, reject) => { t = setTimeout(() => reject(labError('VMTC_LAB_COMMAND_FAILED', { step: 'bulk TCP', why })), ms); })]).finally(() => clearTimeout(t));
}

// ---- the peers (run inside the namespaces) ----

function receiver(host: string, port: number): void {
  // Counts bytes per 250 ms bucket from the first byte; one JSON line when the sender ends.
  let first = 0;
  let total = 0;
  const buckets: number[] = [];
  const srv = net.createServer((s) => {
    s.on('data', (d) => {
      const now = performance.now();
      if (!first) first = now;
      total += d.length;
      const i = Math.floor((now - first) / 250);
      buckets[i] = (buckets[i] ?? 0) + d.length;
    });
    s.on('end', () => {
      process.stdout.write(JSON.stringify({ bytes: total, ms: performance.now() - first, buckets: Array.from(buckets, (x) => x ?? 0) }) + '\n');
      srv.close();
      process.exit(0);
    });
  });
  // Bounded: a receiver nobody talks to goes away after two minutes.
  setTimeout(() => process.exit(1), 120_000).unref();
  srv.listen(port, host, () => process.stdout.write('ready\n'));
}

function sender(host: string, port: number, seconds: number): void {
  const until = Date.now() + seconds * 1000;
  // Non-zero data, like the populated guest's pages (nothing along the path compresses).
  const chunk = Buffer.alloc(1 << 20, 0x5a);
  const s = net.connect(port, host, () => {
    const pump = (): void => {
      while (Date.now() < until) if (!s.write(chunk)) return void s.once('drain', pump);
      s.end(() => process.exit(0));
    };
    pump();
  });
  s.on('error', () => process.exit(1));
  setTimeout(() => process.exit(1), (seconds + 60) * 1000).unref();
}

if (process.argv.includes('--bulk-role')) {
  const { values } = parseArgs({ options: { 'bulk-role': { type: 'string' }, host: { type: 'string' }, port: { type: 'string' }, seconds: { type: 'string', default: '8' } } });
  if (values['bulk-role'] === 'recv') receiver(values.host!, Number(values.port));
  else sender(values.host!, Number(values.port), Number(values.seconds));
}
