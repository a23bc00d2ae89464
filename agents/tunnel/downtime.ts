// The pure half of the tunnel agent's client-seen downtime (docs/tunnel.md "Client-seen
// downtime"): what the capture helper (capture/vmtc-capture.c, run by meter.ts) saw between
// bicast and prune, reduced to the figures the prune returns. No I/O, no clock.
import { PROBE_STREAM, type ProbeSample, type TunnelPassiveDowntime, type TunnelProbeDowntime } from '../../src/common/tunnel-protocol.ts';

/** Frames of the VM from one site within one millisecond (a capture line "F …"). Times: µs. */
export interface FrameBatch { src: string; firstUs: number; lastUs: number; count: number }
/** What the capture printed, parsed. */
export interface CaptureLog {
  batches: FrameBatch[];
  /** Probe sends and replies: seq → µs. */
  sent: Map<number, number>;
  replies: Map<number, number>;
}

export const PASSIVE_METHOD = 'af_packet on the underlay: VXLAN frames whose inner IPv4 source is the VM, site from the outer source';
export const PROBE_METHOD = 'icmp echo from the tunnel agent namespace';

export function emptyCaptureLog(): CaptureLog {
  return { batches: [], sent: new Map(), replies: new Map() };
}

/** Add one line of the helper's output to `log`; returns false for a line it does not know. */
export function parseCaptureLine(line: string, log: CaptureLog): boolean {
  const f = line.trim().split(' ');
  const num = (s: string | undefined) => (s !== undefined && /^\d+$/.test(s) ? Number(s) : NaN);
  if (f[0] === 'F' && f.length === 5) {
    const [firstUs, lastUs, count] = [num(f[2]), num(f[3]), num(f[4])];
    if (!f[1] || [firstUs, lastUs, count].some(Number.isNaN) || lastUs < firstUs) return false;
    log.batches.push({ src: f[1], firstUs, lastUs, count });
    return true;
  }
  if ((f[0] === 'S' || f[0] === 'R') && f.length === 3) {
    const [seq, at] = [num(f[1]), num(f[2])];
    if (Number.isNaN(seq) || Number.isNaN(at)) return false;
    (f[0] === 'S' ? log.sent : log.replies).set(seq, at);
    return true;
  }
  return f[0] === 'READY' || f[0] === 'E';
}

const ms1 = (us: number) => Math.round(us / 100) / 10;

/** Arrivals (a batch of `count` frames from firstUs to lastUs), sorted by time. */
interface Arrivals { firstUs: number; lastUs: number; count: number }

/** A silence broken by fewer than this many arrivals is one outage (below). */
export const RESTORED_AFTER = 3;

/**
 * The longest outage, µs: silences of at least `minGapUs` separated by fewer than `restoredAfter`
 * arrivals count as one. A client whose service comes back for one reply and goes silent again
 * has not had its service restored: after a switchover a frame queued during the pause is often
 * delivered at once, then the resumed guest stalls again. The lab's UDP probe reads its replies
 * by the same rule (lab/turntable/probes/analysis.ts longestOutage), so the two compare.
 */
export function longestOutageUs(a: readonly Arrivals[], minGapUs: number, restoredAfter = RESTORED_AFTER): number | null {
  return longestOutageSpan(a, minGapUs, restoredAfter)?.us ?? null;
}

/** longestOutageUs with where it starts and ends (µs). */
export function longestOutageSpan(a: readonly Arrivals[], minGapUs: number, restoredAfter = RESTORED_AFTER): { us: number; startUs: number; endUs: number } | null {
  let best: { us: number; startUs: number; endUs: number } | null = null;
  const keep = (start: number, end: number) => { if (!best || end - start > best.us) best = { us: end - start, startUs: start, endUs: end }; };
  let cur: { start: number; end: number; since: number } | null = null;
  let prevLast: number | null = null;
  for (const b of a) {
    if (prevLast !== null && b.firstUs - prevLast >= minGapUs) {
      if (cur && cur.since < restoredAfter) cur.end = b.firstUs;
      else {
        if (cur) keep(cur.start, cur.end);
        cur = { start: prevLast, end: b.firstUs, since: 0 };
      }
      cur.since = b.count;
    } else if (cur) cur.since += b.count;
    prevLast = prevLast === null ? b.lastUs : Math.max(prevLast, b.lastUs);
  }
  if (cur) keep(cur.start, cur.end);
  if (best === null && a.length > 1) {
    // No silence reached minGapUs: the longest plain gap.
    for (let i = 1; i < a.length; i++) keep(a[i - 1]!.lastUs, Math.max(a[i - 1]!.lastUs, a[i]!.firstUs));
  }
  return best;
}

/**
 * The passive figures over [fromMs, toMs]: the longest outage between frames of the VM (from
 * either site; silences of at least `minGapMs` joined as longestOutageUs says), the last frame
 * from the source site's address before the first from the destination's, and the switch
 * between them.
 */
export function passiveDowntime(batches: FrameBatch[], sourceIp: string | undefined, destinationIp: string | undefined, fromMs: number, toMs: number, minGapMs: number): TunnelPassiveDowntime {
  const inWin = batches.filter((b) => b.lastUs >= fromMs * 1000 && b.firstUs <= toMs * 1000).sort((a, b) => a.firstUs - b.firstUs);
  const span = longestOutageSpan(inWin, minGapMs * 1000);
  const gapUs = span?.us ?? null;
  const firstDst = inWin.find((b) => b.src === destinationIp);
  const srcBefore = inWin.filter((b) => b.src === sourceIp && (!firstDst || b.firstUs <= firstDst.firstUs));
  const lastSrc = srcBefore.length ? srcBefore[srcBefore.length - 1]! : undefined;
  const lastFromSourceAt = lastSrc ? lastSrc.lastUs / 1000 : null;
  const firstFromDestinationAt = firstDst ? firstDst.firstUs / 1000 : null;
  return {
    gapMs: gapUs === null ? null : ms1(gapUs),
    ...(span ? { gapFromAt: span.startUs / 1000, gapToAt: span.endUs / 1000 } : {}),
    lastFromSourceAt,
    firstFromDestinationAt,
    switchMs: lastSrc && firstDst ? ms1(firstDst.firstUs - lastSrc.lastUs) : null,
    samples: inWin.reduce((n, b) => n + b.count, 0),
    method: PASSIVE_METHOD,
  };
}

/** Whether the VM's silence has ended as the figures count it: RESTORED_AFTER frames from the
 *  destination's address and, with the probe, a reply that arrived after the first of them. */
export function silenceEnded(log: CaptureLog, destinationIp: string, withProbe: boolean): boolean {
  const fromDst = log.batches.filter((b) => b.src === destinationIp);
  if (fromDst.reduce((n, b) => n + b.count, 0) < RESTORED_AFTER) return false;
  if (!withProbe) return true;
  const first = fromDst[0]!.firstUs;
  for (const at of log.replies.values()) if (at >= first) return true;
  return false;
}

/** The probe's figures: the longest outage between replies (by arrival; silences of at least
 *  two periods joined as longestOutageUs says). */
export function probeDowntime(sent: Map<number, number>, replies: Map<number, number>, periodMs: number): TunnelProbeDowntime {
  const times = [...replies].filter(([seq]) => sent.has(seq)).map(([, at]) => at).sort((a, b) => a - b);
  const gapUs = longestOutageUs(times.map((t) => ({ firstUs: t, lastUs: t, count: 1 })), 2 * periodMs * 1000);
  return { gapMs: gapUs === null ? null : ms1(gapUs), sent: sent.size, received: times.length, periodMs, method: PROBE_METHOD };
}

/** Where the probe stream stands in a capture log: the send time (µs) of the last probe
 *  reported, and the probes reported without a reply (seq → send time, µs), oldest first. */
export interface ProbeCursor { lastSentUs: number; unanswered: Map<number, number> }

export function newProbeCursor(): ProbeCursor {
  return { lastSentUs: -1, unanswered: new Map() };
}

/**
 * The next batch of the probe stream (docs/dashboard.md "Probe stream"): probes sent since the
 * cursor, each with its round trip or null, then earlier probes reported unanswered whose reply
 * has come since. Advances `cur`. At most `max` samples; the rest wait for the next batch. A
 * probe still unanswered when more than PROBE_STREAM.maxUnanswered are watched is forgotten
 * (it stays dark on the radar).
 */
export function nextProbeBatch(log: CaptureLog, cur: ProbeCursor, max: number = PROBE_STREAM.maxSamplesPerBatch): ProbeSample[] {
  const out: ProbeSample[] = [];
  const sample = (seq: number, sentUs: number): ProbeSample => {
    const r = log.replies.get(seq);
    return [seq, sentUs / 1000, r !== undefined && r >= sentUs ? ms1(r - sentUs) : null];
  };
  for (const [seq, sentUs] of cur.unanswered) {
    if (out.length >= max) return out;
    const r = log.replies.get(seq);
    if (r === undefined || r < sentUs) continue;
    cur.unanswered.delete(seq);
    out.push(sample(seq, sentUs));
  }
  for (const [seq, sentUs] of log.sent) {
    if (sentUs <= cur.lastSentUs) continue;
    if (out.length >= max) break;
    const s = sample(seq, sentUs);
    cur.lastSentUs = sentUs;
    if (s[2] === null) {
      cur.unanswered.set(seq, sentUs);
      for (const k of cur.unanswered.keys()) {
        if (cur.unanswered.size <= PROBE_STREAM.maxUnanswered) break;
        cur.unanswered.delete(k);
      }
    }
    out.push(s);
  }
  return out;
}
