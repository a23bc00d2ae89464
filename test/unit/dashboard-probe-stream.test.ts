// The probe stream's pure and timed parts (docs/dashboard.md "Probe stream"): the agent's batching
// of a capture log (agents/tunnel/downtime.ts nextProbeBatch, agents/tunnel/probe-stream.ts on a
// ManualClock), the controller's bounded tail per migration (src/controller/probe-stream.ts), and
// the dashboard's sessions and cookie (src/controller/dashboard/session.ts).
import { describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/common/clock.ts';
import { emptyCaptureLog, newProbeCursor, nextProbeBatch } from '../../agents/tunnel/downtime.ts';
import { probeStreams } from '../../agents/tunnel/probe-stream.ts';
import { PROBE_STREAM, type TunnelProbeBatch } from '../../src/common/tunnel-protocol.ts';
import { PROBE_TAIL_LIMITS, ProbeTails } from '../../src/controller/probe-stream.ts';
import { SessionStore, cookieValue, sessionCookie } from '../../src/controller/dashboard/session.ts';

const T0 = 1_700_000_000_000_000; // µs

describe('nextProbeBatch', () => {
  it('reports each probe once with its round trip or null, then again when a late reply comes', () => {
    const log = emptyCaptureLog();
    const cur = newProbeCursor();
    for (let s = 1; s <= 4; s++) log.sent.set(s, T0 + s * 20_000);
    log.replies.set(1, T0 + 20_000 + 1500);
    log.replies.set(2, T0 + 40_000 + 800);
    expect(nextProbeBatch(log, cur)).toEqual([
      [1, (T0 + 20_000) / 1000, 1.5], [2, (T0 + 40_000) / 1000, 0.8], [3, (T0 + 60_000) / 1000, null], [4, (T0 + 80_000) / 1000, null],
    ]);
    expect(nextProbeBatch(log, cur)).toEqual([]);
    log.replies.set(4, T0 + 80_000 + 250_000);
    log.sent.set(5, T0 + 100_000);
    log.replies.set(5, T0 + 100_000 + 300);
    expect(nextProbeBatch(log, cur)).toEqual([[4, (T0 + 80_000) / 1000, 250], [5, (T0 + 100_000) / 1000, 0.3]]);
    // 3 never answered: still watched, never reported twice as unanswered.
    expect([...cur.unanswered.keys()]).toEqual([3]);
    expect(nextProbeBatch(log, cur)).toEqual([]);
  });

  it('sends at most `max` a batch and the rest in the next, and forgets the oldest unanswered past the bound', () => {
    const log = emptyCaptureLog();
    const cur = newProbeCursor();
    const n = PROBE_STREAM.maxUnanswered + 10;
    for (let s = 1; s <= n; s++) log.sent.set(s, T0 + s * 20_000);
    const sizes: number[] = [];
    for (let i = 0; i < 10; i++) {
      const b = nextProbeBatch(log, cur, 400);
      if (b.length === 0) break;
      sizes.push(b.length);
    }
    expect(sizes).toEqual([400, 400, 210]);
    expect(cur.unanswered.size).toBe(PROBE_STREAM.maxUnanswered);
    expect(cur.unanswered.has(1)).toBe(false);
    expect(cur.unanswered.has(n)).toBe(true);
  });
});

describe('the agent\'s probe streams (ManualClock)', () => {
  it('sends a batch every batchMs while probes come, a final one at stop, and nothing after', () => {
    const clock = new ManualClock();
    const sent: TunnelProbeBatch[] = [];
    const streams = probeStreams(clock, (b) => sent.push(b));
    const log = emptyCaptureLog();
    streams.start('vm1', { log, periodMs: 20 });
    log.sent.set(1, T0);
    clock.advance(PROBE_STREAM.batchMs);
    expect(sent).toEqual([{ vmId: 'vm1', periodMs: 20, samples: [[1, T0 / 1000, null]] }]);
    clock.advance(PROBE_STREAM.batchMs);
    expect(sent.length).toBe(1); // nothing new, nothing sent
    log.replies.set(1, T0 + 5000);
    log.sent.set(2, T0 + 20_000);
    streams.stop('vm1');
    expect(sent.at(-1)).toEqual({ vmId: 'vm1', periodMs: 20, samples: [[1, T0 / 1000, 5], [2, (T0 + 20_000) / 1000, null]], final: true });
    expect(clock.pending()).toBe(0);
    clock.advance(10 * PROBE_STREAM.batchMs);
    expect(sent.length).toBe(2);
  });

  it('stops by itself after maxMs, and close() stops every stream without a final batch', () => {
    const clock = new ManualClock();
    const sent: TunnelProbeBatch[] = [];
    const streams = probeStreams(clock, (b) => sent.push(b));
    streams.start('vm1', { log: emptyCaptureLog(), periodMs: 20 });
    clock.advance(PROBE_STREAM.maxMs + PROBE_STREAM.batchMs);
    expect(sent.at(-1)).toMatchObject({ vmId: 'vm1', final: true });
    expect(clock.pending()).toBe(0);
    streams.start('vm2', { log: emptyCaptureLog(), periodMs: 20 });
    const before = sent.length;
    streams.close();
    expect(clock.pending()).toBe(0);
    expect(sent.length).toBe(before);
  });
});

describe('the controller\'s probe tails', () => {
  const store = (rows: { id: string; vmId: string }[]) => ({ activeMigrations: () => rows as never });
  it('gives a batch to the migration in flight for its VM, drops the others, and keeps a bounded tail of one agent', () => {
    const tails = new ProbeTails(store([{ id: 'mig_1', vmId: 'vm1' }]));
    const seen: unknown[] = [];
    tails.on('probe', (e) => seen.push(e));
    expect(tails.add('tun1', { vmId: 'vm9', periodMs: 20, samples: [[1, 1, null]] })).toBeUndefined();
    const n = PROBE_TAIL_LIMITS.samplesPerMigration + 50;
    for (let i = 0; i < n; i += 500) {
      tails.add('tun1', { vmId: 'vm1', periodMs: 20, samples: Array.from({ length: Math.min(500, n - i) }, (_, k) => [i + k, i + k, 1] as [number, number, number]) });
    }
    // A second agent's stream for the same migration is not mixed in.
    expect(tails.add('tun2', { vmId: 'vm1', periodMs: 20, samples: [[0, 0, null]] })).toBeUndefined();
    const t = tails.tail('mig_1')!;
    expect(t.samples.length).toBe(PROBE_TAIL_LIMITS.samplesPerMigration);
    expect(t.samples[0]![0]).toBe(50);
    expect(t).toMatchObject({ migrationId: 'mig_1', vmId: 'vm1', agent: 'tun1', periodMs: 20 });
    expect(seen.length).toBe(Math.ceil(n / 500));
  });
});

describe('dashboard sessions', () => {
  const ids = { next: (p: string) => `${p}_1`, secret: (() => { let i = 0; return () => `sid${++i}`; })() };
  it('live until their expiry, forgotten after, bounded in number', () => {
    const clock = new ManualClock();
    const s = new SessionStore(clock, ids, 1000, 2);
    const a = s.create('tokA', { id: 'c1', name: 'admin', role: 'admin' });
    expect(s.get(a.id)).toMatchObject({ token: 'tokA', expiresAt: clock.now() + 1000 });
    clock.advance(999);
    expect(s.get(a.id)).toBeDefined();
    clock.advance(1);
    expect(s.get(a.id)).toBeUndefined();
    const b = s.create('b', { id: 'c', name: 'n', role: 'reader' });
    s.create('c', { id: 'c', name: 'n', role: 'reader' });
    s.create('d', { id: 'c', name: 'n', role: 'reader' });
    expect(s.size).toBe(2);
    expect(s.get(b.id)).toBeUndefined();
    expect(s.get(undefined)).toBeUndefined();
  });

  it('reads its cookie among others and writes it HttpOnly, SameSite=Strict, Secure over TLS', () => {
    expect(cookieValue('a=1; vmtc_session=xyz; b=2', 'vmtc_session')).toBe('xyz');
    expect(cookieValue('vmtc_sessionX=1; =2; junk', 'vmtc_session')).toBeUndefined();
    expect(cookieValue(undefined, 'vmtc_session')).toBeUndefined();
    expect(sessionCookie('vmtc_session', 'v', 60.7, true)).toBe('vmtc_session=v; Path=/; Max-Age=60; HttpOnly; SameSite=Strict; Secure');
    expect(sessionCookie('vmtc_session', '', 0, false)).toBe('vmtc_session=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict');
  });
});
