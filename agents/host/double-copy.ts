// The DoubleDriver's model of a pre-copy (agents/host/double-driver.ts, a TEST DOUBLE): how big
// each pass is, when the copy goes to stop-and-copy, and what an operator's tune or
// force-complete changes while it runs. The bytes themselves go over real TCP
// (double-stream.ts); this file only decides.
//
// Two models:
//   fixed (no dirty rate)  each pass a quarter of the one before, `passes` passes in all: the
//                          copy always converges, whatever the limits (the double's old
//                          behaviour, which most tests rely on).
//   dirty (dirtyMbps > 0)  the guest dirties memory at that rate while it runs; the next pass is
//                          what it dirtied during the last one (at most its memory); the copy
//                          goes to stop-and-copy once that fits in the downtime limit at the
//                          current bandwidth (QEMU's test). A dirty rate at or above the
//                          bandwidth never converges by itself.
// With auto-converge (params.autoConverge) the dirty model throttles the guest as QEMU does by
// default: 20 % after the first pass that did not converge, 10 points more after each further
// one, at most 99 %; the guest dirties that much less (autoConvergeStep).
// In both, a forced pause makes the next pass the last (nothing more is dirtied), and a forced
// post-copy ends pre-copy at once: after the switchover the rest is sent unpaced (QEMU's
// post-copy bandwidth is unlimited by default) and the destination runs the VM.
import type { ForceCompleteMode, MigrationLimits, MigrationParams } from '../../src/common/agent-protocol.ts';
import { hostError } from './errors.ts';

/** QEMU's default downtime limit, used when a migration gives none. */
export const DEFAULT_MAX_DOWNTIME_MS = 300;
/** A copy that has not converged after this many passes fails (a test's runaway, not a model). */
export const MAX_PASSES = 10_000;

/** What an operator may change while the copy runs, and what they did. */
export interface CopyControl {
  limits: { bandwidthMbps: number; maxDowntimeMs: number };
  /** Post-copy was allowed when the migration started (params.postcopy). */
  postcopyAllowed: boolean;
  /** Auto-converge was on when the migration started, and how much it throttles the guest now. */
  autoConverge?: boolean;
  throttlePercent?: number;
  forced?: ForceCompleteMode;
  /** When the forced pause began (the driver's clock): the guest is paused from here. */
  pausedAt?: number;
  /** A new bandwidth: the pacing starts again from now at the new rate. */
  repace?: boolean;
  /** Wakes the stream's pacing sleep early (set while it sleeps). */
  wake?: () => void;
}

export interface CopyModel {
  /** Guest memory in bytes on the wire. */
  mem: number;
  /** Passes of the fixed model, the stop-and-copy included. */
  passes: number;
  /** Bytes the running guest dirties per millisecond (0: the fixed model). */
  dirtyBytesPerMs: number;
}

export interface PassPlan {
  size: number;
  /** This pass is the stop-and-copy (the guest is paused for it). */
  last: boolean;
}

export function copyControl(params: Pick<MigrationParams, 'bandwidthMbps' | 'maxDowntimeMs' | 'postcopy' | 'autoConverge'>, defaultBandwidthMbps: number): CopyControl {
  return {
    limits: {
      bandwidthMbps: params.bandwidthMbps && params.bandwidthMbps > 0 ? params.bandwidthMbps : defaultBandwidthMbps,
      maxDowntimeMs: params.maxDowntimeMs && params.maxDowntimeMs > 0 ? params.maxDowntimeMs : DEFAULT_MAX_DOWNTIME_MS,
    },
    postcopyAllowed: !!params.postcopy,
    ...(params.autoConverge ? { autoConverge: true } : {}),
  };
}

/** QEMU's auto-converge defaults (cpu-throttle-initial, -increment; its maximum). */
export const THROTTLE = { initial: 20, increment: 10, max: 99 } as const;

/** After a pass that did not converge: auto-converge throttles the guest more (a no-op without it). */
export function autoConvergeStep(c: CopyControl): void {
  if (!c.autoConverge) return;
  c.throttlePercent = c.throttlePercent ? Math.min(THROTTLE.max, c.throttlePercent + THROTTLE.increment) : THROTTLE.initial;
}

export const mbpsToBytesPerMs = (mbps: number): number => (mbps * 1e6) / 8 / 1000;

export function bytesPerMs(c: CopyControl): number {
  return mbpsToBytesPerMs(c.limits.bandwidthMbps);
}

export function firstPass(m: CopyModel): PassPlan {
  return { size: m.mem, last: m.dirtyBytesPerMs === 0 && m.passes <= 1 };
}

/** The pass after `prev` (number `prevPass`), during which the guest ran `runningMs`. */
export function nextPass(m: CopyModel, c: CopyControl, prev: PassPlan, prevPass: number, runningMs: number): PassPlan {
  const paused = c.pausedAt !== undefined;
  if (m.dirtyBytesPerMs === 0) return { size: Math.ceil(prev.size / 4), last: paused || prevPass + 1 >= m.passes };
  const size = Math.min(m.mem, Math.round(m.dirtyBytesPerMs * (1 - (c.throttlePercent ?? 0) / 100) * Math.max(0, runningMs)));
  return { size, last: paused || size / bytesPerMs(c) <= c.limits.maxDowntimeMs };
}

/** How long the guest ran during a pass from `start` to `now`, given a forced pause. */
export function runningMs(c: CopyControl, start: number, now: number): number {
  return c.pausedAt === undefined ? now - start : Math.max(0, Math.min(now, c.pausedAt) - start);
}

/** What the guest dirtied during a pass that post-copy cut short (the destination fetches it). */
export function dirtiedDuring(m: CopyModel, ranMs: number): number {
  return Math.min(m.mem, Math.round(m.dirtyBytesPerMs * Math.max(0, ranMs)));
}

/** The stop-and-copy's expected length at the current bandwidth (the last pass of the fixed
 *  model; with a dirty rate, what is being sent now). */
export function expectedDowntimeMs(m: CopyModel, c: CopyControl, current: PassPlan): number {
  const size = m.dirtyBytesPerMs === 0 ? Math.ceil(m.mem / 4 ** Math.max(0, m.passes - 1)) : current.size;
  return Math.ceil(size / bytesPerMs(c));
}

/** The bytes the whole copy is expected to send, as the progress reports it: what was sent,
 *  what is known to be left before the final state (`left`), and the final state unless it went. */
export function estimatedTotal(m: CopyModel, sent: number, left: number, finalStateBytes: number, finalSent: boolean): number {
  const known = sent + left + (finalSent ? 0 : finalStateBytes);
  if (m.dirtyBytesPerMs > 0) return known;
  let fixed = finalStateBytes;
  for (let i = 0, n = m.mem; i < m.passes; i++, n = Math.ceil(n / 4)) fixed += n;
  return Math.max(fixed, known);
}

/** tuneMigration(): new limits for the rest of the copy; the limits now in effect. */
export function tune(c: CopyControl, limits: MigrationLimits): MigrationLimits {
  if (limits.bandwidthMbps !== undefined) {
    c.limits.bandwidthMbps = limits.bandwidthMbps;
    c.repace = true;
  }
  if (limits.maxDowntimeMs !== undefined) c.limits.maxDowntimeMs = limits.maxDowntimeMs;
  c.wake?.();
  return { ...c.limits };
}

/** forceComplete(): refuses what cannot be (coded), accepts the same mode again. A migration
 *  already paused before its final state (`waiting`) has converged: nothing more to do. */
export function force(c: CopyControl, mode: ForceCompleteMode, now: number, waiting: boolean, ids: { vmId: string; migrationId: string }): void {
  if (c.forced === mode) return;
  if (c.forced) throw hostError('VMTC_HOST_VM_STATE', { ...ids, op: 'forceComplete', mode, forced: c.forced, reason: 'the migration was already forced to complete another way' });
  if (mode === 'postcopy' && !c.postcopyAllowed) throw hostError('VMTC_HOST_VM_STATE', { ...ids, op: 'forceComplete', mode, reason: 'post-copy was not allowed when the migration started' });
  c.forced = mode;
  if (waiting) return;
  if (mode === 'pause') c.pausedAt = now;
  c.wake?.();
}
