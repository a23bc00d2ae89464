// The effects half of the tunnel agent's client-seen downtime (docs/tunnel.md "Client-seen
// downtime"): for a watched VM, the capture helper (capture/vmtc-capture.c) runs from bicast to
// prune in the tunnel's namespace; downtime.ts turns what it printed into the figures.
//
// Why a small C helper on AF_PACKET on the underlay device: the vxlan device decapsulates, so on
// it every frame looks alike whichever site sent it; on the underlay the outer IPv4 source names
// the site. tcpdump would need a package and a text format to parse per frame; the helper batches
// frames per site and millisecond, and also sends the ICMP echo probe, so one process per
// migration does both, bounded by its own MAX_SECONDS.
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import type { Clock } from '../../src/common/clock.ts';
import type { Logger } from '../../src/common/log.ts';
import { silentLogger } from '../../src/common/log.ts';
import { tunnelError, type TunnelDowntime } from '../../src/common/tunnel-protocol.ts';
import { ensureCaptureBinary } from './capture/build.ts';
import { emptyCaptureLog, parseCaptureLine, passiveDowntime, probeDowntime, silenceEnded, type CaptureLog } from './downtime.ts';

/** Measures what clients see of a VM between bicast and prune. */
export interface DowntimeMeter {
  /** Whether this meter measures `vmId` (it knows the VM's address). */
  watches(vmId: string): boolean;
  /** Start measuring (a second start for the same VM keeps the first). */
  start(vmId: string, sourceSite: string, destinationSite: string): Promise<void>;
  /** Stop and return the figures (undefined: not being measured). `keepSite`: the site the prune
   *  keeps; when it is the destination, the measurement first waits (bounded) until the VM is
   *  heard from there, since the prune may come before its silence ends. */
  stop(vmId: string, keepSite?: string): Promise<TunnelDowntime | undefined>;
  close(): Promise<void>;
  /** What the probe of a VM being measured has sent and heard so far, and its period (the
   *  agent's probe stream reads it; docs/dashboard.md "Probe stream"). Absent: no probe stream. */
  probeLog?(vmId: string): { log: CaptureLog; periodMs: number } | undefined;
}

export interface CaptureMeterOptions {
  /** vmId → the VM's IPv4 address. */
  watch: Record<string, string>;
  /** Site → its underlay address (the outer source of its VXLAN packets). */
  siteIps: Record<string, string>;
  /** The underlay device where the VXLAN packets arrive (the lab's client: wan0). */
  device: string;
  netns?: string;
  /** ICMP echo period, ms; 0: no active probe. Default 20. */
  probePeriodMs?: number;
  /** The helper stops by itself after this long. Default 600 s. */
  maxSeconds?: number;
  /** After a prune that keeps the destination, how long to wait for the VM's first frame from it
   *  (and the probe's next reply). Default 3000 ms. */
  tailMs?: number;
  /** Where the helper binary is built and cached. */
  cacheDir: string;
  clock: Clock;
  logger?: Logger;
}

export const CAPTURE_METER_DEFAULTS = { probePeriodMs: 20, maxSeconds: 600, tailMs: 3_000, readyTimeoutMs: 10_000, stopTimeoutMs: 3_000 } as const;
const TAIL_POLL_MS = 10;
/** The shortest silence the passive figure joins into an outage (with no probe running). */
const PASSIVE_MIN_GAP_MS = 20;

interface Running { proc: ChildProcess; log: CaptureLog; from: number; src: string; dst: string; dstSite: string; exited: Promise<void>; error?: string }

export class CaptureDowntimeMeter implements DowntimeMeter {
  private readonly running = new Map<string, Running>();
  private readonly log: Logger;
  private readonly periodMs: number;

  constructor(private readonly o: CaptureMeterOptions) {
    this.log = (o.logger ?? silentLogger()).child({ mod: 'downtime-meter' });
    this.periodMs = o.probePeriodMs ?? CAPTURE_METER_DEFAULTS.probePeriodMs;
    if (!(Number.isInteger(this.periodMs) && this.periodMs >= 0 && this.periodMs <= 10_000)) throw tunnelError('VMTC_TUNNEL_BAD_PARAMS', { field: 'probePeriodMs', value: this.periodMs });
  }

  watches(vmId: string): boolean {
    return Object.hasOwn(this.o.watch, vmId);
  }

  async start(vmId: string, sourceSite: string, destinationSite: string): Promise<void> {
    if (!this.watches(vmId) || this.running.has(vmId)) return;
    const bin = await ensureCaptureBinary(join(this.o.cacheDir, 'capture'));
    const argv = [bin, this.o.device, this.o.watch[vmId]!, String(this.periodMs), String(this.o.maxSeconds ?? CAPTURE_METER_DEFAULTS.maxSeconds)];
    const full = this.o.netns ? ['ip', 'netns', 'exec', this.o.netns, ...argv] : argv;
    const proc = spawn(full[0]!, full.slice(1), { stdio: ['pipe', 'pipe', 'pipe'] });
    const log = emptyCaptureLog();
    const r: Running = { proc, log, from: this.o.clock.now(), src: this.o.siteIps[sourceSite] ?? '', dst: this.o.siteIps[destinationSite] ?? '', dstSite: destinationSite, exited: new Promise((res) => proc.once('close', () => res())) };
    let stderr = '';
    proc.stderr!.on('data', (b: Buffer) => { stderr = (stderr + b.toString()).slice(-2000); });
    proc.on('error', (e) => { r.error = e.message; });
    let ready!: () => void;
    const isReady = new Promise<void>((res) => { ready = res; });
    let buf = '';
    proc.stdout!.on('data', (b: Buffer) => {
      buf += b.toString();
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        if (line === 'READY') ready();
        else parseCaptureLine(line, log);
      }
    });
    void r.exited.then(() => { ready(); if (!r.error && stderr) r.error = stderr.trim(); });
    this.running.set(vmId, r);
    const t = this.o.clock.setTimeout(ready, CAPTURE_METER_DEFAULTS.readyTimeoutMs);
    await isReady;
    t.cancel();
    r.from = this.o.clock.now();
    if (proc.exitCode !== null || r.error) this.log.warn({ vmId, argv: full, error: r.error ?? stderr }, 'capture helper did not start');
    else this.log.info({ vmId, device: this.o.device, periodMs: this.periodMs }, 'measuring client-seen downtime');
  }

  probeLog(vmId: string): { log: CaptureLog; periodMs: number } | undefined {
    const r = this.running.get(vmId);
    return r && this.periodMs > 0 ? { log: r.log, periodMs: this.periodMs } : undefined;
  }

  async stop(vmId: string, keepSite?: string): Promise<TunnelDowntime | undefined> {
    const r = this.running.get(vmId);
    if (!r) return undefined;
    this.running.delete(vmId);
    if (keepSite === r.dstSite && r.dst) await this.tail(r);
    const to = this.o.clock.now();
    await this.end(r);
    const out: TunnelDowntime = {
      vmId, from: r.from, to,
      // Silences shorter than the probe's period are traffic's own rhythm, not an outage.
      tunnelPassive: passiveDowntime(r.log.batches, r.src, r.dst, r.from, to, Math.max(this.periodMs, PASSIVE_MIN_GAP_MS)),
      ...(this.periodMs > 0 ? { tunnelProbe: probeDowntime(r.log.sent, r.log.replies, this.periodMs) } : {}),
    };
    if (r.error) out.error = tunnelError('VMTC_TUNNEL_MEASURE_FAILED', { vmId, reason: r.error.slice(0, 500) }).toJSON() as { code: string; message: string };
    return out;
  }

  /** Wait until the silence has ended by the rule the figures use: RESTORED_AFTER frames from the
   *  destination and, with the probe, a reply after the first of them. Bounded by tailMs, polled
   *  on the injected clock. */
  private async tail(r: Running): Promise<void> {
    const tailMs = this.o.tailMs ?? CAPTURE_METER_DEFAULTS.tailMs;
    const wait = (ms: number) => new Promise<void>((res) => { this.o.clock.setTimeout(res, ms); });
    for (let waited = 0; waited < tailMs && r.proc.exitCode === null; waited += TAIL_POLL_MS) {
      if (silenceEnded(r.log, r.dst, this.periodMs > 0)) return;
      await wait(TAIL_POLL_MS);
    }
  }

  /** Ask the helper to stop (stdin EOF, then SIGTERM to its pid), bounded. */
  private async end(r: Running): Promise<void> {
    r.proc.stdin!.end();
    const t = this.o.clock.setTimeout(() => { if (r.proc.exitCode === null) r.proc.kill('SIGTERM'); }, CAPTURE_METER_DEFAULTS.stopTimeoutMs);
    await r.exited;
    t.cancel();
  }

  async close(): Promise<void> {
    const all = [...this.running.values()];
    this.running.clear();
    await Promise.all(all.map((r) => this.end(r)));
  }
}

/**
 * A test double (named as one): returns synthetic figures that no network produced, so the
 * controller's side (record, events, CLI) can be tested with the memory driver. Never used by the
 * vxlan driver's agent.
 */
export class SyntheticDowntimeMeter implements DowntimeMeter {
  private readonly started = new Map<string, number>();
  constructor(private readonly clock: Clock, private readonly figures = { passiveGapMs: 42, probeGapMs: 40 }) {}
  watches(): boolean { return true; }
  async start(vmId: string): Promise<void> { if (!this.started.has(vmId)) this.started.set(vmId, this.clock.now()); }
  async stop(vmId: string): Promise<TunnelDowntime | undefined> {
    const from = this.started.get(vmId);
    if (from === undefined) return undefined;
    this.started.delete(vmId);
    const to = this.clock.now();
    return {
      vmId, from, to,
      tunnelPassive: { gapMs: this.figures.passiveGapMs, lastFromSourceAt: null, firstFromDestinationAt: null, switchMs: null, samples: 0, method: 'synthetic (test double)' },
      tunnelProbe: { gapMs: this.figures.probeGapMs, sent: 0, received: 0, periodMs: 20, method: 'synthetic (test double)' },
    };
  }
  async close(): Promise<void> { this.started.clear(); }
}
