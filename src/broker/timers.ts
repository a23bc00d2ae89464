// The broker's timers per reservation (the hold timeout, the end of the window, the activation at
// its start), on the injected clock: arming one replaces the one of that kind, and a terminated
// reservation's are cleared together.
import type { Clock } from '../common/clock.ts';

export type TimerKind = 'hold' | 'end' | 'activate' | 'regrant';

export class ReservationTimers {
  private readonly byId = new Map<string, Partial<Record<TimerKind, { cancel(): void }>>>();

  constructor(private readonly clock: Clock) {}

  /** Run `fn` in `ms` (0 if negative), replacing the reservation's timer of this kind. */
  arm(id: string, kind: TimerKind, ms: number, fn: () => void): void {
    this.cancel(id, kind);
    let t = this.byId.get(id);
    if (!t) this.byId.set(id, (t = {}));
    t[kind] = this.clock.setTimeout(fn, Math.max(0, ms));
  }

  cancel(id: string, kind: TimerKind): void {
    const t = this.byId.get(id);
    t?.[kind]?.cancel();
    if (t) delete t[kind];
  }

  /** Every timer of the reservation. */
  clear(id: string): void {
    const t = this.byId.get(id);
    for (const timer of Object.values(t ?? {})) timer.cancel();
    this.byId.delete(id);
  }

  clearAll(): void {
    for (const id of [...this.byId.keys()]) this.clear(id);
  }
}
