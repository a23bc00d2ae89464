// delayLineStatsBetween reads a delay line's stats file. The file here is written the way
// lab/delay-line-main.ts writes it (a listening line, periodic stats lines without config, a
// final line), from reports of the real DelayLine driven by a virtual clock, so a change of the
// report format shows up here.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DelayLine, type DelayLineIo, type DelayLineOptions } from '../../lab/delay-line.ts';
import { delayLineStatsBetween } from '../../lab/delay-line-process.ts';

const WALL = 1_700_000_000_000;
const OPTS: DelayLineOptions = { oneWayMs: 5, rateMbps: 8, queueMs: 2, loss: 0, overheadBytes: 28 };
/** Serialisation time of one 1000-byte datagram at 8 Mbit/s: (1000 + 28) * 8 bits / 8000 bits per ms. */
const SER_MS = (1028 * 8) / 8000;

/** A virtual clock with timers that fire when it is advanced. */
function virtualIo(): DelayLineIo & { advance(to: number): void; sent: number } {
  let now = 0;
  let timers: { at: number; fn: () => void; live: boolean }[] = [];
  const io = {
    sent: 0,
    now: () => now,
    send: () => { io.sent++; },
    setTimer: (fn: () => void, ms: number) => {
      const t = { at: now + ms, fn, live: true };
      timers.push(t);
      return { cancel: () => { t.live = false; } };
    },
    random: () => 0.5,
    advance(to: number) {
      for (;;) {
        const due = timers.filter((t) => t.live && t.at <= to).sort((x, y) => x.at - y.at)[0];
        if (!due) break;
        due.live = false;
        now = due.at;
        due.fn();
      }
      timers = timers.filter((t) => t.live);
      now = to;
    },
  };
  return io;
}

let dir: string;
let statsFile: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vmtc-dls-'));
  statsFile = join(dir, 'stats.jsonl');
  const io = virtualIo();
  const a = { address: '203.0.113.10', port: 4789 };
  const b = { address: '203.0.113.20', port: 4789 };
  const line = new DelayLine(a, b, OPTS, io);
  const dgram = Buffer.alloc(1000);
  const lines: unknown[] = [{ event: 'listening', address: '203.0.113.1', port: 40000, pid: 1234, a, b, config: OPTS, tag: 'vmtc-dl:test' }];
  const stats = (t: number) => lines.push({ ...line.report('stats', WALL + t), config: undefined });

  // Second 1: three datagrams a→b, 10 ms apart: none waits, all delivered.
  for (let i = 0; i < 3; i++) { io.advance(i * 10); line.receive(dgram, a); }
  io.advance(1000);
  stats(1000);
  // Second 2: forty datagrams a→b 5 ms apart (none waits), then a burst of five a→b at one
  // instant: the 1st waits 0, the 2nd one serialisation time (≤ the 2 ms queue), the 3rd would
  // wait two of them (> 2 ms) and so on: 3 dropped. And one b→a.
  for (let i = 0; i < 40; i++) { io.advance(1000 + i * 5); line.receive(dgram, a); }
  io.advance(1800);
  for (let i = 0; i < 5; i++) line.receive(dgram, a);
  line.receive(dgram, b);
  io.advance(2000);
  stats(2000);
  // Second 3: idle; then the final report on SIGTERM.
  io.advance(3000);
  stats(3000);
  io.advance(3200);
  lines.push(line.report('final', WALL + 3200));
  line.stop();
  // A torn last line, as when the file is read while the delay line writes.
  writeFileSync(statsFile, lines.map((l) => JSON.stringify(l) + '\n').join('') + '{"event":"stats","at":');
  expect(io.sent).toBe(3 + 42 + 1);
});

afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe('delayLineStatsBetween', () => {
  it('sums the whole file: drops, bytes, peak rate and worst queueing of both directions', () => {
    const st = delayLineStatsBetween(statsFile);
    expect(st.reports).toBe(4);
    expect(st.drops).toBe(3);
    expect(st.bytes).toBe(46_000);
    // Second 2 carried the most: 42 000 bytes a→b in 1000 ms (reports give Mbit/s to 0.01).
    expect(st.peakMbps).toBe(Math.round(((42_000 * 8) / 1e6) * 100) / 100);
    expect(st.queueMaxMs).toBeCloseTo(SER_MS, 2);
  });

  it('counts a window from what the total was before its first report, not from zero', () => {
    const st = delayLineStatsBetween(statsFile, WALL + 1500, WALL + 2500);
    expect(st.reports).toBe(1);
    expect(st.drops).toBe(3);
    expect(st.bytes).toBe(43_000);
    expect(st.queueMaxMs).toBeCloseTo(SER_MS, 2);
  });

  it('is zero over a window of idle reports', () => {
    const st = delayLineStatsBetween(statsFile, WALL + 2500, WALL + 4000);
    expect(st).toEqual({ reports: 2, peakMbps: 0, queueMaxMs: 0, drops: 0, bytes: 0 });
  });

  it('bounds are inclusive', () => {
    expect(delayLineStatsBetween(statsFile, WALL + 1000, WALL + 1000)).toMatchObject({ reports: 1, bytes: 3000, drops: 0 });
  });

  it('is all zero with no report in the window, no file, or no file name', () => {
    const zero = { reports: 0, peakMbps: 0, queueMaxMs: 0, drops: 0, bytes: 0 };
    expect(delayLineStatsBetween(statsFile, WALL + 5000, WALL + 6000)).toEqual(zero);
    expect(delayLineStatsBetween(join(dir, 'absent.jsonl'))).toEqual(zero);
    expect(delayLineStatsBetween(undefined)).toEqual(zero);
  });
});
