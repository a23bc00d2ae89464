// Analysis (pure) of what the turntable's probes saw (lab/turntable/probes/: udp.ts, ping.ts,
// serial.ts, clock.ts; times as described in time.ts).
import type { Percentiles } from '../types.ts';
import type { SerialSample } from './serial.ts';
import { r2 } from './time.ts';

export interface Gap { gapMs: number; start: number; end: number }

/**
 * The longest silence between two consecutive arrivals that overlaps [from, to].
 *
 * A gap is the open interval (a, b) between consecutive distinct arrival times a < b (input order
 * and duplicates do not matter). It counts when it overlaps the window: a < to and b > from. It
 * is reported whole (not clipped to the window): a silence that began before the window is still
 * that long. Only silences closed by an arrival count: the time before the first arrival or
 * after the last one is not a gap (a stream that ended before the window, or never resumed, is
 * not evidence of a silence of any particular length), so a window with at most one arrival
 * around it gives null. Ties: the earliest of equal gaps. Non-finite times are ignored.
 */
export function longestGap(times: readonly number[], from: number, to: number): Gap | null {
  const t = [...new Set(times.filter((x) => Number.isFinite(x)))].sort((x, y) => x - y);
  let best: Gap | null = null;
  for (let i = 1; i < t.length; i++) {
    const a = t[i - 1]!;
    const b = t[i]!;
    if (a >= to) break;
    if (b <= from) continue;
    if (!best || b - a > best.gapMs) best = { gapMs: r2(b - a), start: a, end: b };
  }
  return best;
}

/**
 * The longest outage overlapping [from, to]: like longestGap, but silences of at least `minGapMs`
 * separated by fewer than `restoredAfter` arrivals are one outage. A client whose service comes
 * back for one reply and then goes silent again has not had its service restored: the fine UDP
 * probe sees exactly that after a switchover (one probe queued at the destination during the
 * pause is answered when the VM resumes, then the new guest stalls again for a few hundred ms),
 * and measuring only the longer half made it disagree with ping by up to two ping intervals and
 * more (README, "The turntable"). The outage runs from the arrival before its first silence to the
 * arrival that ends its last one.
 */
export function longestOutage(times: readonly number[], from: number, to: number, minGapMs: number, restoredAfter = 3): Gap | null {
  const t = [...new Set(times.filter((x) => Number.isFinite(x)))].sort((x, y) => x - y);
  let best: Gap | null = null;
  let cur: { start: number; end: number; lastGapIdx: number } | null = null;
  const close = () => {
    if (cur && cur.start < to && cur.end > from && (!best || cur.end - cur.start > best.gapMs)) {
      best = { gapMs: r2(cur.end - cur.start), start: cur.start, end: cur.end };
    }
  };
  for (let i = 1; i < t.length; i++) {
    const a = t[i - 1]!;
    const b = t[i]!;
    if (b - a < minGapMs) continue;
    // i - 1 - lastGapIdx arrivals came between the previous silence's end (t[lastGapIdx]) and
    // this one's start (t[i-1]), both included: fewer than restoredAfter joins the two.
    if (cur && i - cur.lastGapIdx < restoredAfter) {
      cur.end = b;
      cur.lastGapIdx = i;
    } else {
      close();
      cur = { start: a, end: b, lastGapIdx: i };
    }
  }
  close();
  return best;
}

/**
 * UDP loss: sends whose send time is in [from, to] and for which no reply ever came (a late reply
 * still counts as a reply). `sends[seq]` is the send time of seq. The caller should end the
 * window well before the probe stopped, or the last datagrams in flight count as lost.
 */
export function countLost(sends: readonly number[], replySeqs: Iterable<number>, from: number, to: number): number {
  const replied = new Set(replySeqs);
  let lost = 0;
  for (let seq = 0; seq < sends.length; seq++) {
    const at = sends[seq]!;
    if (at >= from && at <= to && !replied.has(seq)) lost++;
  }
  return lost;
}

/**
 * Probes answered more than once whose later answer arrived in [from, to]: with the tunnel
 * bicasting, a probe reaches both copies of the VM; one sent while the source still ran is
 * answered there, and answered again if it also waited for the destination and was replayed into
 * the guest when it resumed there. `replies` are [seq, recvAt] in any order.
 */
export function countAnsweredTwice(replies: Iterable<readonly [number, number]>, from: number, to: number): number {
  const sorted = [...replies].sort((a, b) => a[1] - b[1]);
  const seen = new Set<number>();
  let twice = 0;
  for (const [seq, at] of sorted) {
    if (seen.has(seq) && at >= from && at <= to) twice++;
    seen.add(seq);
  }
  return twice;
}

/**
 * Ping loss in the gaps overlapping [from, to]: ping gives no send time, so losses are located by
 * the replies around them. Replies are reduced to the first arrival of each seq and ordered by
 * seq; for each pair of consecutive replied seqs p < q whose arrivals (p.at, q.at) overlap the
 * window (p.at < to and q.at > from), the seqs p+1 .. q-1 are lost. Probes after the last reply
 * are not counted (they may simply have been in flight when ping stopped).
 */
export function lostInGap(replies: readonly { seq: number; at: number }[], from: number, to: number): number {
  const first = new Map<number, number>();
  for (const r of replies) {
    const prev = first.get(r.seq);
    if (prev === undefined || r.at < prev) first.set(r.seq, r.at);
  }
  const bySeq = [...first.entries()].sort((x, y) => x[0] - y[0]);
  let lost = 0;
  for (let i = 1; i < bySeq.length; i++) {
    const [ps, pa] = bySeq[i - 1]!;
    const [qs, qa] = bySeq[i]!;
    if (qs - ps > 1 && Math.min(pa, qa) < to && Math.max(pa, qa) > from) lost += qs - ps - 1;
  }
  return lost;
}

/**
 * Nearest-rank percentiles: with the n finite values sorted ascending, the p-th percentile is the
 * value at rank ceil(p/100 × n) (1-based), so it is always an observed value. null, undefined and
 * non-finite values are ignored; with none left every figure is null and n is 0.
 */
export function percentiles(values: readonly (number | null | undefined)[]): Percentiles {
  const v = values.filter((x): x is number => typeof x === 'number' && Number.isFinite(x)).sort((a, b) => a - b);
  const n = v.length;
  if (n === 0) return { p50: null, p95: null, max: null, n: 0 };
  const rank = (p: number): number => v[Math.max(1, Math.ceil((p / 100) * n)) - 1]!;
  return { p50: rank(50), p95: rank(95), max: v[n - 1]!, n };
}

/**
 * The serial figure (the paper's external measurement): the first destination arrival after the
 * last source arrival, minus that last source arrival. null when either side has no sample or
 * no destination arrival follows the last source one. It includes up to one heartbeat period
 * (the guest writes once per period), so it exceeds the pause by at most that much.
 */
export function serialDowntime(samples: readonly SerialSample[], sourceLabel: string, destLabel: string): number | null {
  const edge = serialEdge(samples, sourceLabel, destLabel);
  return edge ? r2(edge.first.at - edge.last.at) : null;
}

/** The last source sample and the first destination sample after it (null if none). */
export function serialEdge(samples: readonly SerialSample[], sourceLabel: string, destLabel: string): { last: SerialSample; first: SerialSample } | null {
  let last: SerialSample | null = null;
  for (const s of samples) if (s.label === sourceLabel && (!last || s.at > last.at)) last = s;
  if (!last) return null;
  let first: SerialSample | null = null;
  for (const s of samples) if (s.label === destLabel && s.at > last.at && (!first || s.at < first.at)) first = s;
  return first ? { last, first } : null;
}

/**
 * Heartbeats missing across the switchover: the guest numbers them, so the seqs between the last
 * one at the source and the first at the destination never reached the host side (written while
 * neither socket had a reader). null when serialDowntime is null.
 */
export function serialLost(samples: readonly SerialSample[], sourceLabel: string, destLabel: string): number | null {
  const edge = serialEdge(samples, sourceLabel, destLabel);
  return edge ? Math.max(0, edge.first.seq - edge.last.seq - 1) : null;
}

/** Offsets (ms from t0, 0.01 ms) of the times whose offset lies in [fromMs, toMs], sorted. */
export function window(times: readonly number[], t0: number, fromMs: number, toMs: number): number[] {
  const out: number[] = [];
  for (const t of times) {
    if (!Number.isFinite(t)) continue;
    const off = t - t0;
    if (off >= fromMs && off <= toMs) out.push(r2(off));
  }
  return out.sort((a, b) => a - b);
}
