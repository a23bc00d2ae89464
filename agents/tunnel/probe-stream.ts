// The tunnel agent's probe stream (docs/dashboard.md "Probe stream"): while the downtime meter's
// echo probe runs for a VM (bicast to prune), every PROBE_STREAM.batchMs the probes sent and
// heard since the last batch go to the controller as a `tunnel.probe` event, for the dashboard's
// radar. Live only: a batch sent while the link is down is dropped, never queued (the figures at
// prune do not depend on it). Bounded: one timer per VM, stopped at prune, at close, or after
// PROBE_STREAM.maxMs.
import type { Clock } from '../../src/common/clock.ts';
import { PROBE_STREAM, type TunnelProbeBatch } from '../../src/common/tunnel-protocol.ts';
import { newProbeCursor, nextProbeBatch, type CaptureLog } from './downtime.ts';

export interface ProbeStreams {
  /** Start streaming `vmId`'s probe log (a second start for the same VM keeps the first). */
  start(vmId: string, source: { log: CaptureLog; periodMs: number }): void;
  /** Send what is left as the final batch and stop. */
  stop(vmId: string): void;
  close(): void;
}

export function probeStreams(clock: Clock, send: (batch: TunnelProbeBatch) => void): ProbeStreams {
  const running = new Map<string, { flush(final: boolean): void; timer?: { cancel(): void } }>();
  const stop = (vmId: string, final: boolean) => {
    const s = running.get(vmId);
    if (!s) return;
    running.delete(vmId);
    s.timer?.cancel();
    if (final) s.flush(true);
  };
  return {
    start(vmId, source) {
      if (running.has(vmId)) return;
      const cur = newProbeCursor();
      const startedAt = clock.now();
      const s: { flush(final: boolean): void; timer?: { cancel(): void } } = {
        flush(final) {
          // A backlog larger than one batch leaves in several, the last one marked final.
          for (let i = 0; i < 100; i++) {
            const samples = nextProbeBatch(source.log, cur);
            const more = samples.length >= PROBE_STREAM.maxSamplesPerBatch;
            if (samples.length === 0 && !final) return;
            send({ vmId, periodMs: source.periodMs, samples, ...(final && !more ? { final: true } : {}) });
            if (!more) return;
          }
        },
      };
      const tick = () => {
        s.flush(false);
        if (clock.now() - startedAt >= PROBE_STREAM.maxMs) { stop(vmId, true); return; }
        s.timer = clock.setTimeout(tick, PROBE_STREAM.batchMs);
      };
      running.set(vmId, s);
      s.timer = clock.setTimeout(tick, PROBE_STREAM.batchMs);
    },
    stop: (vmId) => stop(vmId, true),
    close() { for (const vmId of [...running.keys()]) stop(vmId, false); },
  };
}
