// Time, randomness and ids are injected (STYLE.md §5) so tests can control them.
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

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
