// The lightpath emulator's core: a user-space delay line for UDP datagrams
// (docs/design.md#lab-facts: the lab kernel has no netem/tbf, so the WAN's delay and line rate
// come from here). It carries the VXLAN underlay of one lightpath between two endpoints A and B.
//
// Model, per direction (like one port of a switch followed by a long fibre):
//   - a serialiser at `rateMbps`: a datagram starts serialising when the previous one is done,
//     so departures are paced to the line rate;
//   - a bounded queue in front of it: a datagram that would wait longer than `queueMs` before
//     serialising is dropped (tail drop), as a switch port with a finite buffer does — an
//     unbounded queue would add bufferbloat the real path does not have (docs/design.md#lab-facts);
//   - optional random loss;
//   - then the one-way propagation delay.
// Because every datagram of one direction leaves the serialiser in arrival order and the
// propagation delay is constant, delivery times are non-decreasing: a FIFO per direction with a
// single timer on its head is an exact (and cheap) scheduler — no timer per packet, and each
// timer firing sends every datagram that is due as one batch.
//
// This file is pure logic plus an injectable socket/clock so it can be unit-tested without
// sleeping; `delay-line-main.ts` wires it to a real UDP socket.

export interface DelayLineOptions {
  /** One-way propagation delay, ms (default 99: 198 ms RTT, the paper's Amsterdam–San Diego). */
  oneWayMs: number;
  /** Line rate, Mbit/s (default 1000). */
  rateMbps: number;
  /** Queue bound in ms of serialisation at the line rate; a datagram beyond it is dropped. */
  queueMs: number;
  /** Probability in [0,1) that a datagram is lost at random. */
  loss: number;
  /** Bytes counted per datagram beyond its UDP payload (IPv4 + UDP headers). */
  overheadBytes: number;
}

export const DELAY_LINE_DEFAULTS: DelayLineOptions = {
  oneWayMs: 99,
  rateMbps: 1000,
  // 20 ms at 1 Gbit/s is 2.5 MB: a generous switch-port buffer, far below the 198 ms BDP, so
  // the emulated path does not add a bloated queue of its own.
  queueMs: 20,
  loss: 0,
  overheadBytes: 28,
};

/** A queue bound given in bytes, converted to ms at the line rate. */
export function queueBytesToMs(bytes: number, rateMbps: number): number {
  return (bytes * 8) / (rateMbps * 1000);
}

/** Bounds of the default queue: never below the lab's library default of 20 ms (a switch port's buffer
 *  at short RTTs), never above 1 s (125 MB at 1 Gbit/s). */
export const QUEUE_MS_MIN = 20;
export const QUEUE_MS_MAX = 1000;

/**
 * The delay line's queue bound (ms at the line rate) by default: one bandwidth-delay product of
 * the reserved rate. BDP bytes = min(bandwidth, rate) × RTT / 8; a queue of Q ms at the line rate
 * holds rate × Q / 8 bytes; so Q = RTT × min(bandwidth, rate) / rate, clamped to
 * [QUEUE_MS_MIN, QUEUE_MS_MAX]. At 198 ms, 500 of 1000 Mbit/s: 99 ms (12.4 MB). The htb at the
 * reserved rate paces the sender below the line rate, so a healthy relay keeps this queue near
 * empty; it fills only when the relay reads late (a busy machine) and then absorbs the burst
 * instead of dropping it (a drop costs TCP a round trip at the switchover).
 */
export function bdpQueueMs(rttMs: number, bandwidthMbps: number, rateMbps: number): number {
  if (!(rttMs >= 0) || !(bandwidthMbps > 0) || !(rateMbps > 0)) return QUEUE_MS_MIN;
  const q = Math.ceil((rttMs * Math.min(bandwidthMbps, rateMbps)) / rateMbps);
  return Math.min(QUEUE_MS_MAX, Math.max(QUEUE_MS_MIN, q));
}

export interface Endpoint {
  address: string;
  port: number;
}

export interface DirectionStats {
  /** Datagrams and bytes (UDP payload) handed to the far end. */
  packets: number;
  bytes: number;
  /** Dropped because the queue was full. */
  drops: number;
  /** Lost at random (the `loss` option). */
  lost: number;
  /** Delivered rate over the interval, Mbit/s of UDP payload. */
  mbps: number;
  /** Queueing delay (wait before serialisation) of the datagrams accepted in the interval. */
  queueP50Ms: number;
  queueMaxMs: number;
  /** Datagrams currently held (queued or in flight on the emulated fibre). */
  inFlight: number;
}

export interface DelayLineReport {
  event: 'stats' | 'final';
  /** Wall-clock time of the report, ms since the epoch. */
  at: number;
  /** Length of the interval this report covers, ms (for `total`: since start). */
  intervalMs: number;
  /** Present in the final report (periodic lines leave it out). */
  config?: DelayLineOptions;
  /** Over the last interval. */
  interval: { ab: DirectionStats; ba: DirectionStats };
  /** Since start. */
  total: { ab: DirectionStats; ba: DirectionStats };
  /** Datagrams from an address that is neither endpoint. */
  strays: number;
}

/** Queueing delay histogram in 0.1 ms buckets (the last bucket collects everything above). */
class Histogram {
  private readonly buckets: Uint32Array;
  count = 0;
  max = 0;
  constructor(maxMs: number) {
    this.buckets = new Uint32Array(Math.max(2, Math.ceil(maxMs * 10) + 2));
  }
  add(ms: number): void {
    const i = Math.min(this.buckets.length - 1, Math.floor(ms * 10));
    this.buckets[i]!++;
    this.count++;
    if (ms > this.max) this.max = ms;
  }
  quantile(q: number): number {
    if (this.count === 0) return 0;
    const want = Math.ceil(q * this.count);
    let seen = 0;
    for (let i = 0; i < this.buckets.length; i++) {
      seen += this.buckets[i]!;
      if (seen >= want) return Math.min(this.max, (i + 1) / 10);
    }
    return this.max;
  }
  reset(): void {
    this.buckets.fill(0);
    this.count = 0;
    this.max = 0;
  }
}

class Counters {
  packets = 0;
  bytes = 0;
  drops = 0;
  lost = 0;
  readonly hist: Histogram;
  constructor(queueMs: number) {
    this.hist = new Histogram(queueMs + 1);
  }
  reset(): void {
    this.packets = this.bytes = this.drops = this.lost = 0;
    this.hist.reset();
  }
}

export interface DelayLineIo {
  /** Monotonic milliseconds (fractional). */
  now(): number;
  send(buf: Buffer, to: Endpoint): void;
  setTimer(fn: () => void, ms: number): { cancel(): void };
  random(): number;
}

/** One direction: a FIFO of datagrams with non-decreasing delivery times. */
class Direction {
  // Parallel arrays used as a ring-less FIFO: head advances, compacted when half is consumed.
  private bufs: Buffer[] = [];
  private due: number[] = [];
  private head = 0;
  private linkFreeAt = 0;
  private timer: { cancel(): void } | null = null;
  private timerAt = Infinity;
  readonly interval: Counters;
  readonly total: Counters;

  constructor(
    private readonly opts: DelayLineOptions,
    private readonly io: DelayLineIo,
    private readonly to: Endpoint,
  ) {
    this.interval = new Counters(opts.queueMs);
    this.total = new Counters(opts.queueMs);
  }

  get inFlight(): number {
    return this.bufs.length - this.head;
  }

  accept(buf: Buffer): void {
    const o = this.opts;
    if (o.loss > 0 && this.io.random() < o.loss) {
      this.interval.lost++;
      this.total.lost++;
      return;
    }
    const now = this.io.now();
    const start = this.linkFreeAt > now ? this.linkFreeAt : now;
    const wait = start - now;
    if (wait > o.queueMs) {
      this.interval.drops++;
      this.total.drops++;
      return;
    }
    // Rate in Mbit/s is bits per microsecond, i.e. rate*1000 bits per ms.
    this.linkFreeAt = start + ((buf.length + o.overheadBytes) * 8) / (o.rateMbps * 1000);
    this.interval.hist.add(wait);
    this.total.hist.add(wait);
    const due = this.linkFreeAt + o.oneWayMs;
    this.bufs.push(buf);
    this.due.push(due);
    if (this.timer === null) this.arm(due, now);
  }

  private arm(due: number, now: number): void {
    this.timerAt = due;
    this.timer = this.io.setTimer(() => this.flush(), Math.max(0, due - now));
  }

  /** Send everything that is due (a batch), then re-arm on the new head. */
  flush(): void {
    this.timer = null;
    this.timerAt = Infinity;
    const now = this.io.now();
    // Half a millisecond of slack: timers fire at ms granularity, and sending a datagram 0.5 ms
    // early is far below what the path's delay is measured in, while it halves timer wake-ups.
    const horizon = now + 0.5;
    let h = this.head;
    const n = this.bufs.length;
    while (h < n && this.due[h]! <= horizon) {
      const b = this.bufs[h]!;
      this.io.send(b, this.to);
      this.interval.packets++;
      this.interval.bytes += b.length;
      this.total.packets++;
      this.total.bytes += b.length;
      h++;
    }
    if (h === n) {
      this.bufs = [];
      this.due = [];
      this.head = 0;
    } else {
      this.head = h;
      if (h > 4096 && h * 2 > n) {
        this.bufs = this.bufs.slice(h);
        this.due = this.due.slice(h);
        this.head = 0;
      }
      this.arm(this.due[this.head]!, now);
    }
  }

  stop(): void {
    this.timer?.cancel();
    this.timer = null;
  }

  stats(c: Counters, intervalMs: number): DirectionStats {
    return {
      packets: c.packets,
      bytes: c.bytes,
      drops: c.drops,
      lost: c.lost,
      mbps: intervalMs > 0 ? Math.round(((c.bytes * 8) / (intervalMs * 1000)) * 100) / 100 : 0,
      queueP50Ms: Math.round(c.hist.quantile(0.5) * 10) / 10,
      queueMaxMs: Math.round(c.hist.max * 100) / 100,
      inFlight: this.inFlight,
    };
  }
}

export class DelayLine {
  private readonly ab: Direction;
  private readonly ba: Direction;
  private strays = 0;
  private readonly startedAt: number;
  private intervalStart: number;

  constructor(
    readonly a: Endpoint,
    readonly b: Endpoint,
    readonly opts: DelayLineOptions,
    private readonly io: DelayLineIo,
  ) {
    this.ab = new Direction(opts, io, b);
    this.ba = new Direction(opts, io, a);
    this.startedAt = this.intervalStart = io.now();
  }

  /** A datagram arrived from `from`; it goes to the other endpoint, or is counted as a stray. */
  receive(buf: Buffer, from: { address: string }): void {
    if (from.address === this.a.address) this.ab.accept(buf);
    else if (from.address === this.b.address) this.ba.accept(buf);
    else this.strays++;
  }

  /** The report for the interval since the last call (which it starts afresh) and the totals. */
  report(event: 'stats' | 'final', wallNow: number): DelayLineReport {
    const now = this.io.now();
    const iv = now - this.intervalStart;
    const r: DelayLineReport = {
      event,
      at: wallNow,
      intervalMs: Math.round(iv),
      config: this.opts,
      interval: { ab: this.ab.stats(this.ab.interval, iv), ba: this.ba.stats(this.ba.interval, iv) },
      total: { ab: this.ab.stats(this.ab.total, now - this.startedAt), ba: this.ba.stats(this.ba.total, now - this.startedAt) },
      strays: this.strays,
    };
    this.ab.interval.reset();
    this.ba.interval.reset();
    this.intervalStart = now;
    return r;
  }

  stop(): void {
    this.ab.stop();
    this.ba.stop();
  }
}
