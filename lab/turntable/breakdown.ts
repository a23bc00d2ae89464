// Where a migration's client-seen downtime goes (docs/lab.md "The switchover, step by
// step"): five instants on the lab machine's one clock, the four steps between them, and whether
// they add up to what the client saw. Pure: measure.ts gathers the instants, this judges them.
//
// The instants and where each comes from (every one is epoch ms on the host's CLOCK_REALTIME; the
// probes read it through lab/turntable/probes/time.ts, kept within 1 ms of it):
//   sourcePaused       QEMU's STOP event at the source (its QMP timestamp, g_get_real_time, µs):
//                      the migration record's result.pausedAt (agents/host/qemu/events.ts);
//   lastPageSent       sourcePaused + QEMU's own `downtime` (query-migrate, whole ms, measured by
//                      QEMU from its stop to the migration's completion at the source, when the
//                      last page and the device state were handed to the socket); live moves only;
//   destinationResumed QEMU's RESUME event at the destination: result.resumedAt;
//   firstHeartbeat     the first `hb N` line read from the destination's ttyS1 socket on the host
//                      side (lab/turntable/probes/serial.ts);
//   firstClientReply   the end of the UDP probe's outage (lab/turntable/probes/analysis.ts
//                      longestOutage): the reply that restored the client's service.
// The UDP figure runs from the client's last reply before the pause to firstClientReply, so the
// steps (sourcePaused → firstClientReply) fall short of it by the `lead`: how long before the
// pause the last reply came, at most one probe period when the guest answers evenly. A guest
// never answers perfectly evenly (TCG, a busy machine, auto-converge's throttle), so the bound
// also allows what the probe itself showed in the second before the pause: the longest gap
// between UDP replies there. Beyond that, something happened at the pause that the steps do not
// explain.
// The first heartbeat and the first client reply are not a sequence: both follow the RESUME, on
// two paths of the guest (its UART and its network stack) that a TCG guest runs for the first
// time in the new QEMU in whichever order it reaches them (a capture at the destination, docs/
// lab.md, saw the heartbeat first in most moves and the client's reply up to 41 ms before it in
// others). So `heartbeatToReply` may be negative; what must hold is RESUME ≤ first client reply.

/** Clock reads: the probes' time base is within 1 ms of CLOCK_REALTIME (probes/time.ts), and
 *  QEMU's downtime is a whole number of ms. */
export const CLOCK_READ_TOLERANCE_MS = 2;
/** The lead may exceed the probe period (or the gaps seen before the pause) by the clock reads plus
 *  this much: a TCG guest's echo answers one probe a few ms later than the one before. */
export const ANSWER_JITTER_MS = 3;
/** How far before the pause the probes' own regularity is measured. */
export const BEFORE_PAUSE_MS = 1000;

export interface BreakdownInstants {
  sourcePaused: number | null;
  lastPageSent: number | null;
  destinationResumed: number | null;
  firstHeartbeat: number | null;
  firstClientReply: number | null;
}

export interface BreakdownSteps {
  /** Source pause → last page sent (QEMU's own downtime figure). */
  pauseToLastPage: number | null;
  /** Last page sent → destination resumed: the one-way delay, the tail at line rate, loading the
   *  device state. */
  lastPageToResume: number | null;
  /** Destination resumed → the guest's first heartbeat read at the host. */
  resumeToHeartbeat: number | null;
  /** First heartbeat → the client's first reply (negative when the client heard first: the
   *  heartbeat is sent every serial period, so by up to one period it may legitimately). */
  heartbeatToReply: number | null;
}

export interface MigrationBreakdown {
  /** Which clock every instant is on. */
  clock: 'host CLOCK_REALTIME (epoch ms)';
  at: BreakdownInstants;
  stepsMs: BreakdownSteps;
  /** sourcePaused → firstClientReply (the steps' sum where all are known). */
  totalMs: number | null;
  /** The UDP probe's client-seen figure. */
  clientSeenMs: number | null;
  /** clientSeenMs − totalMs: the client's last reply before the pause → the pause. */
  leadMs: number | null;
  /** The probes' own regularity in the BEFORE_PAUSE_MS before the pause: the longest gap between
   *  UDP replies (up to the outage's start) and between heartbeats read at the source. */
  beforePauseMs: { udpMaxGap: number | null; heartbeatMaxGap: number | null };
  /** The serial line's regularity at the destination: the longest gap between its heartbeats in
   *  the BEFORE_PAUSE_MS after the first one (information; no verdict depends on it). */
  afterResumeMs: { heartbeatMaxGap: number | null };
  /** Pause → last page → RESUME → first heartbeat and RESUME → first client reply each ≥
   *  −tolerance (heartbeat → reply may be negative: both follow the RESUME in parallel), and the
   *  lead within [−tolerance, max(UDP period, UDP gap before the pause) + tolerance + answer
   *  jitter]. False also when an instant a live move must have is missing. */
  consistent: boolean;
  /** What made it inconsistent, one line each (empty when consistent). */
  problems: string[];
}

export interface BreakdownInput {
  mode: 'live' | 'nonlive';
  pausedAt?: number | null | undefined;
  /** QEMU's downtime (live moves; null for non-live: its VM was paused before the copy). */
  hypervisorDowntimeMs?: number | null | undefined;
  resumedAt?: number | null | undefined;
  /** Host-side arrival times of the destination's heartbeats. */
  destinationHeartbeats: readonly number[];
  /** …and of the source's (for their regularity before the pause; default none). */
  sourceHeartbeats?: readonly number[];
  /** Arrival times of the UDP replies (for their regularity before the pause; default none). */
  udpReplies?: readonly number[];
  /** The UDP probe's outage (null: none seen). */
  udpOutage: { start: number; end: number; gapMs: number } | null;
  udpIntervalMs: number;
  serialPeriodMs: number;
}

const r2 = (x: number): number => Math.round(x * 100) / 100;
const diff = (a: number | null, b: number | null): number | null => (a === null || b === null ? null : r2(b - a));
const fin = (v: number | null | undefined): number | null => (typeof v === 'number' && Number.isFinite(v) ? v : null);

/** Longest gap between consecutive times within [from, to] (null: fewer than two). */
export function maxGapWithin(times: readonly number[], from: number, to: number): number | null {
  const t = times.filter((x) => x >= from && x <= to).sort((a, b) => a - b);
  let best: number | null = null;
  for (let k = 1; k < t.length; k++) best = Math.max(best ?? 0, t[k]! - t[k - 1]!);
  return best === null ? null : r2(best);
}

export function computeBreakdown(i: BreakdownInput): MigrationBreakdown {
  const sourcePaused = fin(i.pausedAt);
  const downtime = i.mode === 'live' ? fin(i.hypervisorDowntimeMs) : null;
  const lastPageSent = sourcePaused !== null && downtime !== null ? r2(sourcePaused + downtime) : null;
  const destinationResumed = fin(i.resumedAt);
  const beats = i.destinationHeartbeats.filter((t) => Number.isFinite(t));
  const firstHeartbeat = beats.length ? Math.min(...beats) : null;
  const firstClientReply = i.udpOutage ? i.udpOutage.end : null;
  const at: BreakdownInstants = { sourcePaused, lastPageSent, destinationResumed, firstHeartbeat, firstClientReply };
  const stepsMs: BreakdownSteps = {
    pauseToLastPage: diff(sourcePaused, lastPageSent),
    lastPageToResume: diff(lastPageSent, destinationResumed),
    resumeToHeartbeat: diff(destinationResumed, firstHeartbeat),
    heartbeatToReply: diff(firstHeartbeat, firstClientReply),
  };
  const totalMs = diff(sourcePaused, firstClientReply);
  const clientSeenMs = i.udpOutage ? i.udpOutage.gapMs : null;
  const leadMs = clientSeenMs !== null && totalMs !== null ? r2(clientSeenMs - totalMs) : null;
  const beforePauseMs = {
    udpMaxGap: sourcePaused !== null && i.udpOutage ? maxGapWithin(i.udpReplies ?? [], sourcePaused - BEFORE_PAUSE_MS, i.udpOutage.start) : null,
    heartbeatMaxGap: sourcePaused !== null ? maxGapWithin(i.sourceHeartbeats ?? [], sourcePaused - BEFORE_PAUSE_MS, sourcePaused) : null,
  };
  const afterResumeMs = { heartbeatMaxGap: firstHeartbeat !== null ? maxGapWithin(beats, firstHeartbeat, firstHeartbeat + BEFORE_PAUSE_MS) : null };

  const problems: string[] = [];
  const required: (keyof BreakdownInstants)[] = i.mode === 'live'
    ? ['sourcePaused', 'lastPageSent', 'destinationResumed', 'firstHeartbeat', 'firstClientReply']
    : ['sourcePaused', 'destinationResumed', 'firstHeartbeat', 'firstClientReply'];
  for (const k of required) if (at[k] === null) problems.push(`${k} is missing`);
  const tol = CLOCK_READ_TOLERANCE_MS;
  // Every step that is a sequence is ≥ 0 within the clock reads; heartbeat → reply is not one.
  for (const k of ['pauseToLastPage', 'lastPageToResume', 'resumeToHeartbeat'] as const) {
    const v = stepsMs[k];
    if (v !== null && v < -tol) problems.push(`${k} is ${v} ms (below ${-tol} ms)`);
  }
  // Without a last page (non-live) the resume still follows the pause, and the reply the resume.
  if (lastPageSent === null) {
    const v = diff(sourcePaused, destinationResumed);
    if (v !== null && v < -tol) problems.push(`pause to resume is ${v} ms (below ${-tol} ms)`);
  }
  {
    const v = diff(destinationResumed, firstClientReply);
    if (v !== null && v < -tol) problems.push(`resume to first client reply is ${v} ms (below ${-tol} ms)`);
  }
  const leadMax = r2(Math.max(i.udpIntervalMs, beforePauseMs.udpMaxGap ?? 0) + tol + ANSWER_JITTER_MS);
  if (leadMs !== null && (leadMs < -tol || leadMs > leadMax)) {
    problems.push(`the steps add up to ${totalMs} ms where the UDP probe saw ${clientSeenMs} ms: its last reply came ${leadMs} ms before the pause (allowed ${-tol}…${leadMax} ms${leadMs > 0 ? ': the guest stopped answering before QEMU paused it' : ''})`);
  }
  return { clock: 'host CLOCK_REALTIME (epoch ms)', at, stepsMs, totalMs, clientSeenMs, leadMs, beforePauseMs, afterResumeMs, consistent: problems.length === 0, problems };
}

/** Labels of the steps, in order, for tables. */
export const STEP_LABELS: [keyof BreakdownSteps, string][] = [
  ['pauseToLastPage', 'pause → last page'],
  ['lastPageToResume', 'last page → RESUME'],
  ['resumeToHeartbeat', 'RESUME → heartbeat'],
  ['heartbeatToReply', 'heartbeat → reply'],
];
