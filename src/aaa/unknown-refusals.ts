// Refusals of keys the policy does not know (docs/aaa.md#accounting). Anyone can make a key and
// sign a valid proof with it, so writing one accounting row per such request would let anyone
// grow the append-only table without bound. Instead, per fixed window of time: the first
// `perWindow` distinct keys get a row each (with the request, as any refusal: what a misconfigured
// controller needs to be found), and every other such request of the window is only counted; one
// summary row (`who: "jkt:*"`) with the counts is written when the window ends (by a timer, or at
// the next refusal or close() if that comes first). So a flood adds at most perWindow + 1 rows a
// window, however many requests or keys it uses, and memory holds at most perWindow keys.
import type { Clock } from '../common/clock.ts';
import type { VmtcError } from '../common/errors.ts';
import type { Accounting } from './accounting.ts';
import type { LightpathRequest } from './policy.ts';

/** The `who` of the summary row: any key the policy does not know. */
export const UNKNOWN_KEYS_WHO = 'jkt:*';

export interface UnknownRefusalLimits {
  perWindow: number;
  windowSec: number;
}

export class UnknownRefusals {
  private window = -1;
  /** Keys written individually in this window, with how many of their requests were counted only. */
  private readonly written = new Map<string, number>();
  /** Requests of keys beyond perWindow in this window. */
  private others = 0;
  private timer: { cancel(): void } | undefined;

  constructor(
    private readonly accounting: Accounting,
    private readonly clock: Clock,
    private readonly limits: UnknownRefusalLimits,
  ) {}

  private get windowMs(): number {
    return this.limits.windowSec * 1000;
  }

  /** One refused request of an unknown key (`who` is "jkt:<thumbprint>"): write it, or count it. */
  refuse(who: string, req: Partial<LightpathRequest>, e: VmtcError, write: (who: string, req: Partial<LightpathRequest>, e: VmtcError) => void): void {
    const now = this.clock.now();
    const w = Math.floor(now / this.windowMs);
    if (w !== this.window) {
      this.flush();
      this.written.clear();
      this.window = w;
    }
    const repeats = this.written.get(who);
    if (repeats === undefined && this.written.size < this.limits.perWindow) {
      this.written.set(who, 0);
      write(who, req, e);
      return;
    }
    if (repeats !== undefined) this.written.set(who, repeats + 1);
    else this.others++;
    this.timer ??= this.clock.setTimeout(() => {
      this.timer = undefined;
      this.flush();
    }, Math.max(0, (w + 1) * this.windowMs - now));
  }

  /** Write the summary of the counted requests, if any (at the end of their window, or now if earlier). */
  flush(): void {
    this.timer?.cancel();
    this.timer = undefined;
    const repeats = Object.fromEntries([...this.written].filter(([, n]) => n > 0).map(([who, n]) => [who.replace(/^jkt:/, ''), n]));
    const counted = Object.values(repeats).reduce((a, b) => a + b, 0) + this.others;
    if (counted === 0) return;
    const start = this.window * this.windowMs;
    const end = start + this.windowMs;
    this.accounting.record({
      at: Math.min(this.clock.now(), end),
      kind: 'refusal',
      who: UNKNOWN_KEYS_WHO,
      code: 'VMTC_AAA_REQUESTER_UNKNOWN',
      details: {
        aggregated: true,
        period: { start: new Date(start).toISOString(), end: new Date(end).toISOString() },
        // Requests refused but not written one by one in this window.
        requests: counted,
        // Of those: further requests of the keys written individually (thumbprint -> count) …
        repeats,
        // … and requests of keys beyond the first perWindow.
        otherKeysRequests: this.others,
      },
    });
    for (const k of this.written.keys()) this.written.set(k, 0);
    this.others = 0;
  }

  /** Write what is counted (the service is stopping; the database is still open). */
  close(): void {
    this.flush();
  }
}
