// The tunnel agent's client-seen downtime, pure half (agents/tunnel/downtime.ts): parsing the
// capture helper's lines and reducing them to the figures tunnel.prune returns.
import { describe, expect, it } from 'vitest';
import { emptyCaptureLog, parseCaptureLine, passiveDowntime, probeDowntime, silenceEnded, type FrameBatch } from '../../agents/tunnel/downtime.ts';

const A = '198.51.100.10';
const B = '198.51.100.20';
const T0 = 1_700_000_000_000; // ms
/** A batch of `count` frames from `src` at `ms` ms after T0. */
const at = (src: string, ms: number, count = 1): FrameBatch => ({ src, firstUs: (T0 + ms) * 1000, lastUs: (T0 + ms) * 1000 + 300, count });

describe('capture lines', () => {
  it('parses frame batches, probe sends and replies, and refuses what it does not know', () => {
    const log = emptyCaptureLog();
    expect(parseCaptureLine('READY', log)).toBe(true);
    expect(parseCaptureLine(`F ${A} 1000 1500 3`, log)).toBe(true);
    expect(parseCaptureLine('S 1 2000', log)).toBe(true);
    expect(parseCaptureLine('R 1 2400', log)).toBe(true);
    expect(parseCaptureLine(`F ${A} 1500 1000 3`, log)).toBe(false); // last before first
    expect(parseCaptureLine('F x y z', log)).toBe(false);
    expect(parseCaptureLine('R -1 5', log)).toBe(false);
    expect(parseCaptureLine('hello', log)).toBe(false);
    expect(log.batches).toEqual([{ src: A, firstUs: 1000, lastUs: 1500, count: 3 }]);
    expect([...log.sent]).toEqual([[1, 2000]]);
    expect([...log.replies]).toEqual([[1, 2400]]);
  });
});

describe('passive figures', () => {
  it('finds the longest silence, the last frame from the source and the first from the destination', () => {
    const frames = [at(A, 0, 2), at(A, 10), at(A, 20), at(B, 150, 4), at(B, 160), at(A, 170)];
    const d = passiveDowntime(frames, A, B, T0 - 100, T0 + 1000, 20);
    expect(d.gapMs).toBe(129.7); // 150 ms - (20 ms + 0.3 ms)
    expect(d.lastFromSourceAt).toBe(T0 + 20.3);
    expect(d.firstFromDestinationAt).toBe(T0 + 150);
    expect(d.switchMs).toBe(129.7);
    expect(d.samples).toBe(10);
    expect(d.method).toMatch(/af_packet/);
  });

  it('counts only frames inside the bicast-prune window', () => {
    const frames = [at(A, -500), at(A, 0), at(B, 50), at(B, 2000)];
    const d = passiveDowntime(frames, A, B, T0 - 10, T0 + 100, 20);
    expect(d.samples).toBe(2);
    expect(d.gapMs).toBe(49.7);
  });

  it('says null when a site was never heard', () => {
    const d = passiveDowntime([at(A, 0), at(A, 30)], A, B, T0 - 10, T0 + 100, 20);
    expect(d.firstFromDestinationAt).toBeNull();
    expect(d.switchMs).toBeNull();
    expect(d.lastFromSourceAt).toBe(T0 + 30.3);
    expect(passiveDowntime([], A, B, T0, T0 + 1, 20).gapMs).toBeNull();
  });
});

describe('outages', () => {
  it('joins two silences broken by fewer than 3 frames, as the lab reads its UDP probe', () => {
    // Source until 20 ms, one queued frame from the destination at 150 ms, silence, then steady.
    const frames = [at(A, 0), at(A, 10), at(A, 20), at(B, 150), at(B, 400), at(B, 410), at(B, 420), at(B, 430)];
    const d = passiveDowntime(frames, A, B, T0 - 10, T0 + 1000, 20);
    expect(d.gapMs).toBe(379.7); // 20.3 ms → 400 ms: the lone frame at 150 ms does not end it
    expect(d.switchMs).toBe(129.7); // the first destination frame still says when the switch came
    // Three frames in a row do restore the service: two outages, the longer one counts.
    const restored = [at(A, 0), at(A, 20), at(B, 150, 3), at(B, 400), at(B, 410)];
    expect(passiveDowntime(restored, A, B, T0 - 10, T0 + 1000, 20).gapMs).toBe(249.7);
  });

  it('gives the plain longest gap when no silence reaches the threshold', () => {
    expect(passiveDowntime([at(A, 0), at(A, 5), at(A, 15)], A, B, T0 - 10, T0 + 100, 20).gapMs).toBe(9.7);
  });
});

describe('probe figures', () => {
  it('is the longest time between consecutive replies, ignoring replies to nothing sent', () => {
    const sent = new Map([[1, 0], [2, 20_000], [3, 40_000], [4, 60_000], [5, 80_000]]);
    const replies = new Map([[1, 1_000], [2, 21_000], [5, 81_500], [99, 50_000]]);
    const p = probeDowntime(sent, replies, 20);
    expect(p).toMatchObject({ gapMs: 60.5, sent: 5, received: 3, periodMs: 20 });
    expect(probeDowntime(sent, new Map(), 20).gapMs).toBeNull();
  });
});

describe('end of the silence (how long the meter waits after a prune)', () => {
  it('needs 3 frames from the destination and, with the probe, a reply after the first of them', () => {
    const log = emptyCaptureLog();
    log.batches.push(at(A, 0, 5), at(B, 100, 2));
    expect(silenceEnded(log, B, false)).toBe(false);
    log.batches.push(at(B, 101));
    expect(silenceEnded(log, B, false)).toBe(true);
    log.replies.set(1, (T0 + 50) * 1000); // a reply from before the destination was heard
    expect(silenceEnded(log, B, true)).toBe(false);
    log.replies.set(2, (T0 + 120) * 1000);
    expect(silenceEnded(log, B, true)).toBe(true);
  });
});
