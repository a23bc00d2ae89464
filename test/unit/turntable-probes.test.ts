// The turntable's probe analysis (lab/turntable/probes/): pure functions on hand-built sample
// sets whose answers were worked out by hand, plus the parsers (ping output, guest console log).
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { countAnsweredTwice, countLost, longestGap, longestOutage, lostInGap, percentiles, serialDowntime, serialLost, window } from '../../lab/turntable/probes/analysis.ts';
import { readInternalGaps } from '../../lab/turntable/probes/clock.ts';
import { parsePing, pingReplyTimes } from '../../lab/turntable/probes/ping.ts';
import type { SerialSample } from '../../lab/turntable/probes/serial.ts';
import { udpReplyTimes } from '../../lab/turntable/probes/udp.ts';

describe('longestGap', () => {
  const t = [0, 10, 20, 100, 110];

  it('finds the longest silence between consecutive arrivals in the window', () => {
    expect(longestGap(t, 0, 200)).toEqual({ gapMs: 80, start: 20, end: 100 });
  });

  it('counts a gap that contains the whole window, reported whole (not clipped)', () => {
    expect(longestGap(t, 50, 60)).toEqual({ gapMs: 80, start: 20, end: 100 });
    expect(longestGap(t, 90, 105)).toEqual({ gapMs: 80, start: 20, end: 100 });
  });

  it('ignores gaps that end at or before the window start, or start at or after its end', () => {
    // (20,100) ends at 100 < 105: only (100,110) overlaps.
    expect(longestGap(t, 105, 200)).toEqual({ gapMs: 10, start: 100, end: 110 });
    // Window [0,20]: (20,100) starts at the window's end, so it does not overlap (strict).
    expect(longestGap(t, 0, 20)).toEqual({ gapMs: 10, start: 0, end: 10 });
    expect(longestGap(t, 0, 20.5)).toEqual({ gapMs: 80, start: 20, end: 100 });
    // (20,100) ending exactly at the window's start does not overlap either.
    expect(longestGap(t, 100, 200)).toEqual({ gapMs: 10, start: 100, end: 110 });
  });

  it('a stream that ended before the window (or began after it) is not a gap', () => {
    expect(longestGap(t, 200, 300)).toBeNull();
    expect(longestGap(t, -100, -50)).toBeNull();
    // Silence after the last arrival is not closed by any arrival: not counted.
    expect(longestGap(t, 105, 1000)).toEqual({ gapMs: 10, start: 100, end: 110 });
  });

  it('empty, single arrival, no gap', () => {
    expect(longestGap([], 0, 100)).toBeNull();
    expect(longestGap([50], 0, 100)).toBeNull();
    expect(longestGap([50, 50, 50], 0, 100)).toBeNull();
    // Evenly spaced: the first of equal gaps.
    expect(longestGap([0, 10, 20, 30], 0, 100)).toEqual({ gapMs: 10, start: 0, end: 10 });
  });

  it('input order, duplicates and non-finite values do not matter', () => {
    expect(longestGap([110, 20, 0, 100, 10, 20, 100, Number.NaN, Infinity], 0, 200)).toEqual({ gapMs: 80, start: 20, end: 100 });
  });

  it('sub-millisecond times are rounded to 0.01 ms in gapMs only', () => {
    expect(longestGap([1000.001, 1000.5, 1250.5059], 0, 2000)).toEqual({ gapMs: 250.01, start: 1000.5, end: 1250.5059 });
  });
});

describe('countLost (UDP: sends in the window with no reply at all)', () => {
  const sends = [0, 2, 4, 6, 8, 10]; // seq 0..5

  it('counts unreplied seqs whose send time is in [from, to]', () => {
    expect(countLost(sends, [0, 1, 3, 3, 5], 0, 10)).toBe(2); // seqs 2 and 4
    expect(countLost(sends, [0, 1, 3, 3, 5], 3, 7)).toBe(1); // seqs 2 (t=4) and 3 (t=6): only 2 lost
    expect(countLost(sends, [0, 1, 3, 5], 8, 8)).toBe(1); // inclusive bounds: seq 4
  });

  it('replies out of order, duplicated or for unknown seqs change nothing', () => {
    expect(countLost(sends, [5, 3, 99, 1, 0, 3, -1], 0, 10)).toBe(2);
  });

  it('empty inputs', () => {
    expect(countLost([], [], 0, 10)).toBe(0);
    expect(countLost(sends, [], 0, 10)).toBe(6);
    expect(countLost(sends, [], 20, 30)).toBe(0);
  });
});

describe('lostInGap (ping: missing seqs between replies whose arrivals overlap the window)', () => {
  const replies = [
    { seq: 1, at: 100 },
    { seq: 2, at: 150 },
    { seq: 5, at: 300 },
    { seq: 5, at: 320 }, // duplicate
    { seq: 6, at: 350 },
    { seq: 9, at: 500 },
  ];

  it('counts the holes of the gaps that overlap the window', () => {
    expect(lostInGap(replies, 200, 260)).toBe(2); // (2..5): 3, 4
    expect(lostInGap(replies, 400, 450)).toBe(2); // (6..9): 7, 8
    expect(lostInGap(replies, 0, 1000)).toBe(4);
    expect(lostInGap(replies, 600, 700)).toBe(0); // after the last reply: not counted
    expect(lostInGap(replies, 110, 140)).toBe(0); // (1..2) has no hole
  });

  it('replies arriving out of order are placed by seq', () => {
    const shuffled = [replies[4]!, replies[0]!, replies[5]!, replies[2]!, replies[1]!];
    expect(lostInGap(shuffled, 0, 1000)).toBe(4);
  });

  it('empty', () => {
    expect(lostInGap([], 0, 100)).toBe(0);
    expect(lostInGap([{ seq: 3, at: 10 }], 0, 100)).toBe(0);
  });
});

describe('percentiles (nearest rank)', () => {
  it('empty and null-only inputs', () => {
    expect(percentiles([])).toEqual({ p50: null, p95: null, max: null, n: 0 });
    expect(percentiles([null, undefined, Number.NaN])).toEqual({ p50: null, p95: null, max: null, n: 0 });
  });

  it('one value', () => {
    expect(percentiles([5])).toEqual({ p50: 5, p95: 5, max: 5, n: 1 });
  });

  it('ranks ceil(p/100 * n)', () => {
    const ten = [10, 9, 8, 7, 6, 5, 4, 3, 2, 1];
    expect(percentiles(ten)).toEqual({ p50: 5, p95: 10, max: 10, n: 10 }); // ranks 5 and 10
    const twenty = Array.from({ length: 20 }, (_, i) => 20 - i);
    expect(percentiles(twenty)).toEqual({ p50: 10, p95: 19, max: 20, n: 20 }); // ranks 10 and 19
  });

  it('ignores nulls among values', () => {
    expect(percentiles([null, 3, 1, undefined, 2, Number.NaN])).toEqual({ p50: 2, p95: 3, max: 3, n: 3 });
  });
});

describe('serialDowntime / serialLost', () => {
  const src = (at: number, seq: number): SerialSample => ({ at, seq, label: 'src' });
  const dst = (at: number, seq: number): SerialSample => ({ at, seq, label: 'dst' });

  it('silence from the last source heartbeat to the first destination one after it', () => {
    const s = [src(0, 0), src(10, 1), src(20, 2), dst(170, 17), dst(180, 18)];
    expect(serialDowntime(s, 'src', 'dst')).toBe(150);
    expect(serialLost(s, 'src', 'dst')).toBe(14); // seqs 3..16
  });

  it('order of samples does not matter; destination samples before the last source one are ignored', () => {
    const s = [dst(180, 18), src(20, 2), dst(5, 99), src(0, 0), dst(170, 17), src(10, 1)];
    expect(serialDowntime(s, 'src', 'dst')).toBe(150);
  });

  it('null when either side is empty or nothing follows the last source heartbeat', () => {
    expect(serialDowntime([], 'src', 'dst')).toBeNull();
    expect(serialDowntime([src(0, 0)], 'src', 'dst')).toBeNull();
    expect(serialDowntime([dst(0, 0)], 'src', 'dst')).toBeNull();
    expect(serialDowntime([dst(0, 0), src(10, 1)], 'src', 'dst')).toBeNull();
    expect(serialLost([src(0, 0)], 'src', 'dst')).toBeNull();
  });

  it('no missing heartbeat gives 0 lost', () => {
    expect(serialLost([src(0, 4), dst(12, 5)], 'src', 'dst')).toBe(0);
  });
});

describe('window', () => {
  it('offsets from t0 inside [fromMs, toMs], sorted, inclusive', () => {
    expect(window([100, 90, 300, 50, 250], 100, -20, 150)).toEqual([-10, 0, 150]);
    expect(window([], 0, -10, 10)).toEqual([]);
    expect(window([100.123456], 100, 0, 1)).toEqual([0.12]);
  });
});

describe('reply times', () => {
  it('UDP: the first arrival per seq, in time order', () => {
    expect(udpReplyTimes({ replies: [[0, 1, 2], [2, 5, 9], [1, 3, 7], [2, 5, 20]] })).toEqual([2, 7, 9]);
  });
  it('ping: the first arrival per seq, in time order', () => {
    expect(pingReplyTimes({ replies: [{ seq: 2, at: 30 }, { seq: 1, at: 10 }, { seq: 2, at: 25 }] })).toEqual([10, 25]);
  });
});

describe('parsePing', () => {
  it('reads -D replies, -O "no answer yet", duplicates and the summary', () => {
    const text = [
      'PING 10.1.1.2 (10.1.1.2) 56(84) bytes of data.',
      '[1700000000.100000] 64 bytes from 10.1.1.2: icmp_seq=1 ttl=64 time=0.500 ms',
      '[1700000000.150250] 64 bytes from 10.1.1.2: icmp_seq=2 ttl=64 time=0.400 ms',
      '[1700000000.250000] no answer yet for icmp_seq=3',
      '[1700000000.300000] no answer yet for icmp_seq=4',
      'From 10.1.1.1 icmp_seq=4 Destination Host Unreachable',
      '[1700000000.360000] 64 bytes from 10.1.1.2: icmp_seq=5 ttl=64 time=10.1 ms',
      '[1700000000.361000] 64 bytes from 10.1.1.2: icmp_seq=5 ttl=64 time=11.1 ms (DUP!)',
      '',
      '--- 10.1.1.2 ping statistics ---',
      '6 packets transmitted, 3 received, +1 duplicates, 50% packet loss, time 260ms',
    ].join('\n');
    const p = parsePing(text);
    expect(p.sends).toBe(6);
    expect(p.replies).toEqual([
      { seq: 1, at: 1700000000100, rttMs: 0.5 },
      { seq: 2, at: 1700000000150.25, rttMs: 0.4 },
      { seq: 5, at: 1700000000360, rttMs: 10.1 },
      { seq: 5, at: 1700000000361, rttMs: 11.1 },
    ]);
    expect(p.noAnswer).toEqual([3, 4]);
    expect(p.lost).toBe(3); // 6 sent, seqs 1, 2, 5 answered
  });

  it('without a summary (killed), sends is the highest seq seen', () => {
    const p = parsePing('[1.5] 64 bytes from ::1: icmp_seq=1 ttl=64 time=0.1 ms\n[2.0] no answer yet for icmp_seq=2\n');
    expect(p).toEqual({ sends: 2, replies: [{ seq: 1, at: 1500, rttMs: 0.1 }], noAnswer: [2], lost: 1 });
  });

  it('empty output', () => {
    expect(parsePing('')).toEqual({ sends: 0, replies: [], noAnswer: [], lost: 0 });
  });
});

describe('readInternalGaps', () => {
  let dir = '';
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vmtc-tt-'));
    await writeFile(join(dir, 'a.log'), [
      '[    1.2] booting',
      'VMTC-CLOCK start gap_ms=50.0 period_us=200',
      'VMTC-GAP n=10 mono_ms=60.000 real_ms=61.500 at_real=1000.000', // [938.5, 1000]
      'VMTC-GAP n=20 mono_ms=300.250 real_ms=120.000 at_real=5000.000', // [4699.75, 5000]
    ].join('\n'));
    await writeFile(join(dir, 'b.log'), 'noise VMTC-GAP n=3 mono_ms=55.000 real_ms=400.000 at_real=5300.000\n'); // [4900, 5300]
  });
  afterAll(async () => { if (dir) await rm(dir, { recursive: true, force: true }); });

  it('keeps the gaps overlapping the window from every log; the largest of mono/real', async () => {
    const r = await readInternalGaps([join(dir, 'a.log'), join(dir, 'missing.log'), join(dir, 'b.log')], 4800, 6000);
    expect(r.gaps.map((g) => [g.n, g.gapMs])).toEqual([[20, 300.25], [3, 400]]);
    expect(r.maxMs).toBe(400);
  });

  it('a gap that ends after the window start but began before it counts; one ending before does not', async () => {
    const r = await readInternalGaps([join(dir, 'a.log')], 990, 1500);
    expect(r.gaps.map((g) => g.n)).toEqual([10]);
    expect((await readInternalGaps([join(dir, 'a.log')], 1001, 4600)).maxMs).toBeNull();
  });

  it('no files, no lines: null', async () => {
    expect(await readInternalGaps([], 0, 1e13)).toEqual({ gaps: [], maxMs: null });
  });
});

describe('longestOutage', () => {
  // A 2 ms stream that stops at 0, answers once at 190 (a probe queued during the pause), is
  // silent again until 340, then steady: one outage of 340 ms, where longestGap sees 190.
  const steady = (a: number, b: number) => Array.from({ length: Math.floor((b - a) / 2) + 1 }, (_, i) => a + 2 * i);
  const stream = [...steady(-100, 0), 190, ...steady(340, 440)];

  it('joins silences broken by fewer than restoredAfter replies', () => {
    expect(longestGap(stream, 0, 400)?.gapMs).toBe(190);
    expect(longestOutage(stream, 0, 400, 20)).toEqual({ gapMs: 340, start: 0, end: 340 });
  });

  it('keeps silences apart when service was restored between them', () => {
    const restored = [...steady(-100, 0), ...steady(190, 196), ...steady(340, 440)];
    expect(longestOutage(restored, 0, 400, 20)).toEqual({ gapMs: 190, start: 0, end: 190 });
    expect(longestOutage(restored, 0, 400, 20, 10)).toEqual({ gapMs: 340, start: 0, end: 340 });
  });

  it('ignores spacing under minGapMs and outages outside the window', () => {
    expect(longestOutage(steady(0, 100), 0, 100, 20)).toBeNull();
    expect(longestOutage(stream, 500, 600, 20)).toBeNull();
  });
});

describe('countAnsweredTwice (UDP probes answered by both copies)', () => {
  it('counts the later answers that arrive in the window, whatever the order the replies are listed in', () => {
    // seq 1 answered at 10 (source) and again at 120 (destination, replayed); seq 2 at 12 and
    // 300 (after the window); seq 3 once.
    const replies: [number, number][] = [[1, 120], [2, 12], [1, 10], [3, 130], [2, 300]];
    expect(countAnsweredTwice(replies, 0, 200)).toBe(1);
    expect(countAnsweredTwice(replies, 0, 400)).toBe(2);
    expect(countAnsweredTwice(replies, 150, 400)).toBe(1);
    expect(countAnsweredTwice([[5, 1], [6, 2]], 0, 10)).toBe(0);
  });
});
