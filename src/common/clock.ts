// Time, randomness and ids are injected so tests can control them
// (docs/contributing.md#time-randomness-and-ids).
import { randomBytes, randomUUID } from 'node:crypto';

export interface Clock {
  /** Milliseconds since the epoch. */
  now(): number;
  setTimeout(fn: () => void, ms: number): { cancel(): void };
}

export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout(fn, ms) {
    const t = setTimeout(fn, ms);
    t.unref?.();
    return { cancel: () => clearTimeout(t) };
  },
};

/** The system clock whose timers keep the process alive, as a plain setTimeout does. For agents:
 *  a host agent's only pending work may be a timer (a reconnect backoff, a poll of QEMU), and with
 *  systemClock's unref'd timers the process would exit in the middle of it. */
export const keepAliveClock: Clock = {
  now: () => Date.now(),
  setTimeout(fn, ms) {
    const t = setTimeout(fn, ms);
    return { cancel: () => clearTimeout(t) };
  },
};

/** A clock for tests: time moves only when advance() is called. */
export class ManualClock implements Clock {
  private t: number;
  private timers: { at: number; fn: () => void; seq: number; live: boolean }[] = [];
  private seq = 0;
  constructor(start = 1_700_000_000_000) {
    this.t = start;
  }
  now(): number {
    return this.t;
  }
  setTimeout(fn: () => void, ms: number) {
    const timer = { at: this.t + ms, fn, seq: this.seq++, live: true };
    this.timers.push(timer);
    return { cancel: () => { timer.live = false; } };
  }
  advance(ms: number): void {
    const until = this.t + ms;
    for (;;) {
      const due = this.timers.filter((x) => x.live && x.at <= until).sort((a, b) => a.at - b.at || a.seq - b.seq)[0];
      if (!due) break;
      due.live = false;
      this.t = due.at;
      due.fn();
    }
    this.t = until;
    this.timers = this.timers.filter((x) => x.live);
  }
  /** Timers set and not yet fired or cancelled: a test sees whether the code under test waits. */
  pending(): number {
    return this.timers.filter((x) => x.live).length;
  }
  /** Time of the next live timer, if any. */
  nextAt(): number | undefined {
    let at: number | undefined;
    for (const x of this.timers) if (x.live && (at === undefined || x.at < at)) at = x.at;
    return at;
  }
  /** Fire the earliest live timer (moving time to it); false when none is set. */
  advanceToNext(): boolean {
    const at = this.nextAt();
    if (at === undefined) return false;
    this.advance(at - this.t);
    return true;
  }
}

/** A clock reading as an ISO 8601 UTC string (what files and logs record). */
export function isoTime(ms: number): string {
  return new Date(ms).toISOString();
}

export interface Ids {
  /** A new unique id with a readable prefix, e.g. "mig_3f2a…". */
  next(prefix: string): string;
  /** A high-entropy secret, base64url. */
  secret(bytes?: number): string;
}

export const randomIds: Ids = {
  next: (prefix) => `${prefix}_${randomUUID().replace(/-/g, '').slice(0, 20)}`,
  secret: (bytes = 32) => randomBytes(bytes).toString('base64url'),
};

/** Wait `ms` of wall time (the timer keeps the process alive). An abort of `signal` ends the
 *  wait early and resolves, as clockSleep does. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  if (!signal) return new Promise((r) => setTimeout(r, ms));
  return clockSleep(keepAliveClock, ms, signal);
}

/** Wait `ms` on `clock` (on a ManualClock: until the test advances it that far). An abort of
 *  `signal` ends the wait early and resolves: it is a wake-up ("look again now"), not an error. */
export function clockSleep(clock: Clock, ms: number, signal?: AbortSignal): Promise<void> {
  if (signal?.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      timer.cancel();
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const timer = clock.setTimeout(done, Math.max(0, ms));
    signal?.addEventListener('abort', done, { once: true });
  });
}
