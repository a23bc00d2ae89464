// Serial heartbeat (the paper's external measurement, without an oscilloscope), a probe of the
// turntable: arrival of each `hb N` line at the host side of the guest's ttyS1 (a unix socket per
// QEMU; during a migration first the source's, then the destination's), on the host clock
// (lab/turntable/probes/time.ts). The guest's memory check (lab/guest/verify.ts) reports on the
// same port; its lines are kept apart.
import net from 'node:net';
import { parseMemoryLine, type GuestMemoryLine } from '../../guest/verify.ts';
import { hostNow, r2 } from './time.ts';

/** A line of the guest's ttyS1: a heartbeat, a line of the memory check, or neither (null). */
export type SerialLine = { kind: 'hb'; seq: number } | { kind: 'memory'; memory: GuestMemoryLine; text: string };

export function parseSerialLine(raw: string): SerialLine | null {
  const line = raw.trim();
  const hb = /^hb (\d+)$/.exec(line);
  if (hb) return { kind: 'hb', seq: Number(hb[1]) };
  const memory = parseMemoryLine(line);
  return memory ? { kind: 'memory', memory, text: line } : null;
}

/** A memory-check line as it arrived at the host side of a port. */
export interface SerialMemoryLine {
  at: number;
  label: string;
  text: string;
}

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
 * Reads `hb N` lines (and the memory check's) from the host side of guest serial ports (QEMU
 * chardev socket, server=on,wait=off: one client at a time). Several sockets at once: during a migration the
 * source's and the destination's. A socket that does not exist yet or refuses is retried every
 * `retryMs`; one that closes (the source QEMU quits) is retried too, until stop() or the bound.
 * Errors never escape: a vanished socket is the expected end of the source's stream.
 */
export class SerialWatcher {
  private readonly watches: Watch[] = [];
  private readonly out: SerialSample[] = [];
  private readonly mem: SerialMemoryLine[] = [];
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
          const parsed = parseSerialLine(line);
          if (parsed?.kind === 'hb' && this.out.length < this.maxSamples) this.out.push({ at: r2(at), seq: parsed.seq, label });
          if (parsed?.kind === 'memory' && this.mem.length < this.maxSamples) this.mem.push({ at: r2(at), label, text: parsed.text });
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

  /** Memory-check lines so far (of one label, or all), in arrival order. */
  memoryLines(label?: string): SerialMemoryLine[] {
    return this.mem.filter((m) => label === undefined || m.label === label);
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
