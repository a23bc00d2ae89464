// The delay line's scheduler, driven by a manual clock (no sleeping): delay, pacing to the line
// rate, the bounded queue, loss, batching, and the report.
import { describe, it, expect } from 'vitest';
import { DelayLine, DELAY_LINE_DEFAULTS, queueBytesToMs, type DelayLineIo, type Endpoint } from '../../lab/delay-line.ts';

class FakeIo implements DelayLineIo {
  t = 0;
  sent: { at: number; len: number; to: Endpoint }[] = [];
  timers: { at: number; fn: () => void; live: boolean }[] = [];
  timerCount = 0;
  rnd: number[] = [];
  now() { return this.t; }
  send(buf: Buffer, to: Endpoint) { this.sent.push({ at: this.t, len: buf.length, to }); }
  setTimer(fn: () => void, ms: number) {
    this.timerCount++;
    const x = { at: this.t + Math.max(1, Math.ceil(ms)), fn, live: true };
    this.timers.push(x);
    return { cancel: () => { x.live = false; } };
  }
  random() { return this.rnd.shift() ?? 0.99; }
  advance(ms: number) {
    const end = this.t + ms;
    for (;;) {
      const due = this.timers.filter((x) => x.live && x.at <= end).sort((a, b) => a.at - b.at)[0];
      if (!due) break;
      due.live = false;
      this.t = due.at;
      due.fn();
    }
    this.t = end;
  }
}

const A = { address: '203.0.113.10', port: 4000 };
const B = { address: '203.0.113.20', port: 4000 };

describe('delay line scheduler', () => {
  it('holds each datagram for the one-way delay and sends it to the other endpoint', () => {
    const io = new FakeIo();
    const dl = new DelayLine(A, B, { ...DELAY_LINE_DEFAULTS, oneWayMs: 99 }, io);
    dl.receive(Buffer.alloc(100), A);
    dl.receive(Buffer.alloc(100), B);
    io.advance(98);
    expect(io.sent).toHaveLength(0);
    io.advance(3);
    expect(io.sent.map((s) => s.to.address).sort()).toEqual([A.address, B.address]);
    expect(io.sent.every((s) => s.at >= 99)).toBe(true);
  });

  it('paces to the line rate and drops beyond the queue bound; counts strays', () => {
    const io = new FakeIo();
    // 8 Mbit/s: a 972-byte payload (+28 overhead = 1000 B) takes exactly 1 ms to serialise.
    const dl = new DelayLine(A, B, { ...DELAY_LINE_DEFAULTS, oneWayMs: 10, rateMbps: 8, queueMs: 5 }, io);
    for (let i = 0; i < 10; i++) dl.receive(Buffer.alloc(972), A);
    dl.receive(Buffer.alloc(10), { address: '198.51.100.1' });
    io.advance(100);
    // Waits 0,1,…,5 ms are within the bound; the rest are dropped.
    expect(io.sent).toHaveLength(6);
    const times = io.sent.map((s) => s.at);
    for (let i = 1; i < times.length; i++) expect(times[i]! - times[i - 1]!).toBeGreaterThanOrEqual(1);
    const r = dl.report('final', 0);
    expect(r.total.ab.drops).toBe(4);
    expect(r.total.ab.packets).toBe(6);
    expect(r.total.ab.queueMaxMs).toBe(5);
    expect(r.strays).toBe(1);
    expect(r.total.ba.packets).toBe(0);
  });

  it('sends what is due in batches, with one timer per wake-up rather than per datagram', () => {
    const io = new FakeIo();
    const dl = new DelayLine(A, B, { ...DELAY_LINE_DEFAULTS, oneWayMs: 50, rateMbps: 10_000, queueMs: 100 }, io);
    for (let i = 0; i < 1000; i++) dl.receive(Buffer.alloc(1000), A);
    io.advance(60);
    expect(io.sent).toHaveLength(1000);
    expect(io.timerCount).toBeLessThan(10);
  });

  it('applies random loss and reports it', () => {
    const io = new FakeIo();
    const dl = new DelayLine(A, B, { ...DELAY_LINE_DEFAULTS, oneWayMs: 1, loss: 0.5 }, io);
    io.rnd = [0.1, 0.9, 0.2, 0.7];
    for (let i = 0; i < 4; i++) dl.receive(Buffer.alloc(100), A);
    io.advance(10);
    const r = dl.report('stats', 0);
    expect(r.total.ab.lost).toBe(2);
    expect(r.total.ab.packets).toBe(2);
    expect(r.interval.ab.bytes).toBe(200);
    expect(dl.report('stats', 0).interval.ab.bytes).toBe(0);
  });

  it('converts a queue bound in bytes to ms at the line rate', () => {
    expect(queueBytesToMs(1_250_000, 1000)).toBe(10);
  });
});
