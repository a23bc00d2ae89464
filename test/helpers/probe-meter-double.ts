// A test double of the tunnel agent's downtime meter (named as one: docs/contributing.md "Real
// things in tests"): it stands in for the capture helper's ICMP echo, which needs the lab's
// namespaces. Every period it "sends" a probe and counts it answered when `answers(vmId)` says
// the VM runs at that moment (on DoubleDriver hosts: vmRunsOnDoubles below), so the VM's pause
// during the switchover is a run of unanswered probes. Its log is a real CaptureLog read by the
// agent's real probe stream (agents/tunnel/probe-stream.ts), and its figures at prune come from
// the real reduction (agents/tunnel/downtime.ts probeDowntime) of the same samples.
import type { DoubleDriver } from '../../agents/host/double-driver.ts';
import type { DowntimeMeter } from '../../agents/tunnel/meter.ts';
import { emptyCaptureLog, probeDowntime, type CaptureLog } from '../../agents/tunnel/downtime.ts';
import type { TunnelDowntime } from '../../src/common/tunnel-protocol.ts';

export class ProbeMeterDouble implements DowntimeMeter {
  private readonly running = new Map<string, { log: CaptureLog; timer: NodeJS.Timeout; from: number; seq: number; pending: Set<Promise<void>> }>();
  constructor(private readonly answers: (vmId: string) => Promise<boolean>, readonly periodMs = 20) {}

  watches(): boolean { return true; }

  async start(vmId: string): Promise<void> {
    if (this.running.has(vmId)) return;
    const r = { log: emptyCaptureLog(), from: Date.now(), seq: 0, timer: undefined as unknown as NodeJS.Timeout, pending: new Set<Promise<void>>() };
    r.timer = setInterval(() => {
      const seq = ++r.seq;
      const sentUs = Date.now() * 1000;
      r.log.sent.set(seq, sentUs);
      // The answer is the VM's state when the probe was sent (asked at once); it is recorded
      // when the ask returns, and stop() waits for asks in flight, as a capture running a
      // moment past the last probe would see its reply.
      const ask = this.answers(vmId).then((yes) => { if (yes) r.log.replies.set(seq, Math.max(sentUs + 200, Date.now() * 1000)); }, () => undefined);
      r.pending.add(ask);
      void ask.finally(() => r.pending.delete(ask));
    }, this.periodMs);
    this.running.set(vmId, r);
  }

  probeLog(vmId: string): { log: CaptureLog; periodMs: number } | undefined {
    const r = this.running.get(vmId);
    return r ? { log: r.log, periodMs: this.periodMs } : undefined;
  }

  async stop(vmId: string, keepSite?: string): Promise<TunnelDowntime | undefined> {
    const r = this.running.get(vmId);
    if (!r) return undefined;
    // Like the real meter's tail (agents/tunnel/meter.ts): a prune that keeps a site may come
    // before the VM is heard from there, so keep probing (bounded, 3 s) until a probe sent from
    // now on is answered.
    if (keepSite !== undefined) {
      const after = r.seq;
      for (let i = 0; i < 300 && ![...r.log.replies.keys()].some((seq) => seq > after); i++) await new Promise((res) => setTimeout(res, 10));
    }
    this.running.delete(vmId);
    clearInterval(r.timer);
    await Promise.race([Promise.allSettled([...r.pending]), new Promise((res) => setTimeout(res, 1000))]);
    return {
      vmId, from: r.from, to: Date.now(),
      tunnelPassive: { gapMs: null, lastFromSourceAt: null, firstFromDestinationAt: null, switchMs: null, samples: 0, method: 'none (test double)' },
      tunnelProbe: { ...probeDowntime(r.log.sent, r.log.replies, this.periodMs), method: 'echo probe (test double: answered while a DoubleDriver runs the VM, also while it copies it)' },
    };
  }

  async close(): Promise<void> {
    for (const r of this.running.values()) clearInterval(r.timer);
    this.running.clear();
  }
}

/**
 * Whether a DoubleDriver host runs `vmId` as a client would see it: 'running' somewhere, or
 * 'migrating' (a live copy runs the guest) before the source reported its stop-and-copy ('device')
 * or 'pre-switchover' (from there the guest is paused until the destination runs it:
 * docs/design.md#switchover).
 * `pausedSince` is fed the agents' progress (the controller hub's 'migration.progress' events).
 */
export function vmRunsOnDoubles(drivers: () => DoubleDriver[]): { answers: (vmId: string) => Promise<boolean>; progress: (vmId: string, status: string) => void } {
  const paused = new Set<string>();
  return {
    // 'device': the double's stop-and-copy pass (agents/host/double-stream.ts), paused from there.
    progress(vmId, status) { if (status === 'device' || status === 'pre-switchover') paused.add(vmId); },
    async answers(vmId) {
      let migrating = false;
      for (const d of drivers()) {
        const state = (await d.describe(vmId).catch(() => undefined))?.state;
        if (state === 'running') { paused.delete(vmId); return true; }
        if (state === 'migrating') migrating = true;
      }
      return migrating && !paused.has(vmId);
    },
  };
}
