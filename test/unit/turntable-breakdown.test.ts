// The turntable's per-migration breakdown (lab/turntable/breakdown.ts): from the five instants on
// the host clock to the four steps, their sum against the UDP figure, and the consistency verdict
// the lab run (test/lab/turntable.test.ts) checks; and how the summary, the table and the report
// show it.
import { describe, expect, it } from 'vitest';
import { ANSWER_JITTER_MS, CLOCK_READ_TOLERANCE_MS, computeBreakdown, maxGapWithin, type BreakdownInput } from '../../lab/turntable/breakdown.ts';
import { parseFill } from '../../lab/turntable/fill.ts';
import { breakdownLines } from '../../lab/turntable/command.ts';
import { breakdownSection } from '../../lab/turntable/report/breakdown.ts';
import { summarize } from '../../lab/turntable/summary.ts';
import type { TurntableMigration, TurntableResult } from '../../lab/turntable/types.ts';

// A live move at 198 ms as the lab sees it (epoch ms): the client's last reply 1.5 ms before the
// source pauses, QEMU's downtime 27 ms, the destination resumes 104 ms after the last page, the
// first heartbeat 125 ms later, the client's first reply 20 ms after that.
const T = 1_700_000_000_000;
const live: BreakdownInput = {
  mode: 'live', pausedAt: T, hypervisorDowntimeMs: 27, resumedAt: T + 131, destinationHeartbeats: [T + 256, T + 261, T + 266],
  udpOutage: { start: T - 1.5, end: T + 276, gapMs: 277.5 }, udpIntervalMs: 2, serialPeriodMs: 5,
};

describe('computeBreakdown', () => {
  it('splits a live move into its four steps, which add up to the UDP figure less the lead', () => {
    const b = computeBreakdown(live);
    expect(b.at).toEqual({ sourcePaused: T, lastPageSent: T + 27, destinationResumed: T + 131, firstHeartbeat: T + 256, firstClientReply: T + 276 });
    expect(b.stepsMs).toEqual({ pauseToLastPage: 27, lastPageToResume: 104, resumeToHeartbeat: 125, heartbeatToReply: 20 });
    expect(b.totalMs).toBe(276);
    expect(b.clientSeenMs).toBe(277.5);
    expect(b.leadMs).toBe(1.5);
    expect(b).toMatchObject({ consistent: true, problems: [], clock: 'host CLOCK_REALTIME (epoch ms)' });
  });

  it('takes the first destination heartbeat whatever order the samples come in', () => {
    expect(computeBreakdown({ ...live, destinationHeartbeats: [T + 266, T + 256] }).at.firstHeartbeat).toBe(T + 256);
  });

  it('lets the client hear the guest before the host reads its heartbeat, but never before the RESUME', () => {
    // Both follow the RESUME on two paths of the guest (docs/lab.md: a capture saw either first).
    const late = computeBreakdown({ ...live, destinationHeartbeats: [T + 337] });
    expect(late.stepsMs.heartbeatToReply).toBe(-61);
    expect(late).toMatchObject({ consistent: true, problems: [] });
    // A reply before the destination resumed is a clock or a label wrong (or another responder).
    const early = computeBreakdown({ ...live, udpOutage: { start: T - 1.5, end: T + 120, gapMs: 121.5 } });
    expect(early.consistent).toBe(false);
    expect(early.problems.join()).toMatch(/resume to first client reply is -11 ms/);
  });

  it('finds a heartbeat before the resume (a clock or a label wrong) and a resume before the last page', () => {
    const b = computeBreakdown({ ...live, resumedAt: T + 20, destinationHeartbeats: [T + 10] });
    expect(b.consistent).toBe(false);
    expect(b.problems.join('\n')).toMatch(/lastPageToResume is -7 ms/);
    expect(b.problems.join('\n')).toMatch(/resumeToHeartbeat is -10 ms/);
  });

  it('does not add up when the UDP outage is not the pause (its last reply long before it)', () => {
    const b = computeBreakdown({ ...live, udpOutage: { start: T - 60, end: T + 276, gapMs: 336 } });
    expect(b.leadMs).toBe(60);
    expect(b.consistent).toBe(false);
    expect(b.problems.join()).toMatch(/add up to 276 ms where the UDP probe saw 336 ms/);
    // The bound is the probe period plus the stated tolerances, on both sides.
    const max = live.udpIntervalMs + CLOCK_READ_TOLERANCE_MS + ANSWER_JITTER_MS;
    expect(computeBreakdown({ ...live, udpOutage: { start: T - max, end: T + 276, gapMs: 276 + max } }).consistent).toBe(true);
    expect(computeBreakdown({ ...live, udpOutage: { start: T - max - 0.5, end: T + 276, gapMs: 276.5 + max } }).consistent).toBe(false);
    expect(computeBreakdown({ ...live, udpOutage: { start: T + 3, end: T + 276, gapMs: 273 } }).consistent).toBe(false);
  });

  it('allows the lead what the probe showed in the second before the pause, no more', () => {
    // The client's replies every 2 ms up to 1.5 ms before the pause, but one 12 ms hole 300 ms before it.
    const even = Array.from({ length: 500 }, (_, k) => T - 1.5 - 2 * k);
    const holed = even.filter((t) => t > T - 300 || t < T - 312);
    const lead9 = { ...live, udpOutage: { start: T - 9, end: T + 276, gapMs: 285 } };
    expect(computeBreakdown({ ...lead9, udpReplies: even.map((t) => t - 7.5) }).consistent).toBe(false);
    const ok = computeBreakdown({ ...lead9, udpReplies: holed.map((t) => t - 7.5) });
    expect(ok.beforePauseMs.udpMaxGap).toBe(14);
    expect(ok.consistent).toBe(true);
    // A stall longer than any before it is not explained.
    const long = computeBreakdown({ ...live, udpOutage: { start: T - 105, end: T + 276, gapMs: 381 }, udpReplies: holed.map((t) => t - 103.5) });
    expect(long.problems.join()).toMatch(/last reply came 105 ms before the pause \(allowed -2…19 ms: the guest stopped answering before QEMU paused it\)/);
  });

  it('measures the longest gap within a window only', () => {
    expect(maxGapWithin([0, 2, 4, 20, 22], 0, 22)).toBe(16);
    expect(maxGapWithin([0, 2, 4, 20, 22], 5, 22)).toBe(2);
    expect(maxGapWithin([0], 0, 10)).toBeNull();
  });

  it('is not consistent when a live move misses an instant, and says which', () => {
    const b = computeBreakdown({ ...live, hypervisorDowntimeMs: null, destinationHeartbeats: [] });
    expect(b.stepsMs).toEqual({ pauseToLastPage: null, lastPageToResume: null, resumeToHeartbeat: null, heartbeatToReply: null });
    expect(b.totalMs).toBe(276);
    expect(b.consistent).toBe(false);
    expect(b.problems).toEqual(['lastPageSent is missing', 'firstHeartbeat is missing']);
    expect(computeBreakdown({ ...live, udpOutage: null }).problems).toContain('firstClientReply is missing');
  });

  it('gives a non-live move no last page (its VM was paused before the copy) and still checks it', () => {
    const b = computeBreakdown({ ...live, mode: 'nonlive', hypervisorDowntimeMs: 5, resumedAt: T + 2400, destinationHeartbeats: [T + 2520], udpOutage: { start: T - 1, end: T + 2530, gapMs: 2531 } });
    expect(b.at.lastPageSent).toBeNull();
    expect(b.stepsMs).toMatchObject({ pauseToLastPage: null, lastPageToResume: null, resumeToHeartbeat: 120, heartbeatToReply: 10 });
    expect(b.consistent).toBe(true);
    expect(computeBreakdown({ ...live, mode: 'nonlive', resumedAt: T - 10, destinationHeartbeats: [T + 2520], udpOutage: { start: T - 1, end: T + 2530, gapMs: 2531 } }).problems.join()).toMatch(/pause to resume is -10 ms/);
  });
});

describe("the populated guest's console", () => {
  it('says when the fill is done, failed or not yet', () => {
    expect(parseFill('boot\nVMTC-FILL mb=192 ms=1432\nVMTC-GUEST-READY ip=… fill=192\n')).toEqual({ ok: true, mb: 192, ms: 1432 });
    expect(parseFill('VMTC-FILL-FAILED mb=300 Cannot allocate memory\n')).toEqual({ ok: false, line: 'VMTC-FILL-FAILED mb=300 Cannot allocate memory' });
    expect(parseFill('VMTC-WARN fill of 300 MiB did not finish\n')).toEqual({ ok: false, line: 'VMTC-WARN fill of 300 MiB did not finish' });
    expect(parseFill('booting…\n')).toBeNull();
  });
});

describe('the breakdown in the summary, the table and the report', () => {
  const mig = (round: number, b: BreakdownInput, reliable = true): TurntableMigration => ({
    round, from: 'siteA', to: 'siteB', mode: b.mode, ok: true, migrationId: `mig_${round}`, state: 'completed',
    downtimeMs: { hypervisor: b.hypervisorDowntimeMs ?? null, internal: null, serial: 200, ping: 250, udp: b.udpOutage!.gapMs }, lost: { ping: 1, udp: 10, serial: 5 }, answeredTwice: { udp: 0 },
    totalMs: 9000, controlPlaneMs: 700, hypervisorTotalMs: 8000, bytes: 70e6, throughputMbps: 200, tcpSessionSurvived: true,
    emulator: { peakMbps: 300, queueMaxMs: 10, drops: reliable ? 0 : 3, reliable, reasons: reliable ? [] : ['the delay line dropped 3 datagrams (queue full)'] }, reliable,
    breakdown: computeBreakdown(b), timings: {}, placesAfter: ['host-siteB'],
    timeline: { t0: 0, fromMs: -1000, toMs: 2000, ping: [], udp: [], serialSource: [], serialDestination: [], marks: [] },
  });
  const ms = [
    mig(1, live),
    mig(2, { ...live, resumedAt: T + 140, destinationHeartbeats: [T + 200], udpOutage: { start: T - 1, end: T + 230, gapMs: 231 } }),
    mig(3, { ...live, udpOutage: { start: T - 1, end: T + 900, gapMs: 901 }, destinationHeartbeats: [T + 890] }, false),
  ];

  it('summarizes the steps over the reliable live moves only and lists the unreliable one', () => {
    const s = summarize(ms, 'idle');
    expect(s.liveCounted).toBe(2);
    expect(s.liveOk).toBe(3);
    expect(s.unreliable).toEqual(['live 3 (mig_3)']);
    expect(s.udp).toEqual({ p50: 231, p95: 277.5, max: 277.5, n: 2 });
    expect(s.breakdown!.lastPageToResume).toEqual({ p50: 104, p95: 113, max: 113, n: 2 });
    expect(s.breakdown!.total.max).toBe(276);
    expect(s.guest).toBe('idle');
  });

  it('prints one row per migration with the steps, the sum, the UDP figure and whether they add up', () => {
    const r = { config: {}, migrations: [ms[0]!, mig(4, { ...live, udpOutage: { start: T - 1.5, end: T + 120, gapMs: 121.5 } })] } as unknown as TurntableResult;
    const lines = breakdownLines(r);
    expect(lines[0]).toMatch(/host CLOCK_REALTIME/);
    expect(lines[2]).toMatch(/^1\s+live\s+27\s+104\s+125\s+20\s+276\s+278\s+2\s+yes$/);
    expect(lines[3]).toMatch(/NO$/);
    expect(lines[4]).toMatch(/live 4 does not add up: resume to first client reply is -11 ms/);
    const html = breakdownSection({ ...r, summary: summarize(r.migrations) } as TurntableResult);
    expect(html).toContain('Where the downtime goes');
    expect(html).toContain('QEMU’s STOP event at the source');
    expect(html).toContain('resume to first client reply is -11 ms');
  });
});
