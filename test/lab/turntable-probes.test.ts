// The turntable's probes as real processes (no VM): the 2 ms UDP echo client against an echo
// server this test runs on loopback and pauses; the serial watcher against two unix-socket
// heartbeat servers standing in for the source's and the destination's QEMU; ping on loopback,
// here and inside a throwaway namespace (the `ip netns exec` path the turntable uses).
// Bounds are generous: these check behaviour, not timing goals.
import { randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { run, tryRun } from '../../lab/exec.ts';
import { countLost, longestGap, lostInGap, serialDowntime, serialLost } from '../../lab/turntable/probes/analysis.ts';
import { realtimeAvailable, type ProbeHandle } from '../../lab/turntable/probes/child.ts';
import { pingReplyTimes, startPing } from '../../lab/turntable/probes/ping.ts';
import { SerialWatcher } from '../../lab/turntable/probes/serial.ts';
import { hostNow } from '../../lab/turntable/probes/time.ts';
import { startUdpProbe, udpReplyTimes } from '../../lab/turntable/probes/udp.ts';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Poll `cond` every 10 ms until true or `ms` passed (bounded, so a loaded machine is not a failure). */
async function waitFor(cond: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond() && Date.now() < deadline) await sleep(10);
}

// Everything started here, so it is stopped even when an assertion fails halfway.
const handles: ProbeHandle<unknown>[] = [];
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const h of handles.splice(0)) await h.stop().catch(() => undefined);
  for (const c of cleanups.splice(0).reverse()) await Promise.resolve(c()).catch(() => undefined);
});

describe('UDP echo probe', () => {
  it('sees the echo server pause as a gap, loses exactly the probes sent during it, and keeps a ~2 ms pace', async () => {
    // The server stops answering for 100 consecutive probes (seqs 200..299, ~200 ms of sends).
    // Choosing them by seq rather than by the test's clock keeps the expectation exact even when
    // this process is starved and reads a backlog late. The payload is 8 bytes of run nonce, then
    // the seq as uint32 big-endian (lab/probes/udp-echo-client.mjs).
    const PAUSE_FIRST = 200;
    const PAUSE_LAST = 299;
    const server = dgram.createSocket('udp4');
    server.on('message', (m, r) => {
      const seq = m.length >= 12 ? m.readUInt32BE(8) : -1;
      if (seq < PAUSE_FIRST || seq > PAUSE_LAST) server.send(m, r.port, r.address);
    });
    await new Promise<void>((res) => server.bind(0, '127.0.0.1', res));
    cleanups.push(() => new Promise<void>((res) => server.close(() => res())));
    const port = server.address().port;

    const probe = startUdpProbe(null, '127.0.0.1', { port, intervalMs: 2, maxSeconds: 20 });
    handles.push(probe);
    await probe.ready;
    await sleep(1000);
    handles.splice(handles.indexOf(probe), 1);
    const s = await probe.stop();

    expect(s.probe).toBe('udp');
    expect(s.sends.length).toBe(s.sent);
    expect(s.sent).toBeGreaterThan(400);
    const meanInterval = (s.sends.at(-1)! - s.sends[0]!) / (s.sends.length - 1);
    expect(meanInterval).toBeLessThan(4);
    const intervals = s.sends.slice(1).map((t, i) => t - s.sends[i]!).sort((a, b) => a - b);
    const pauseFrom = s.sends[PAUSE_FIRST]!;
    const pauseTo = s.sends[PAUSE_LAST]!;
    const gap = longestGap(udpReplyTimes(s), pauseFrom, pauseTo);
    console.log(`UDP probe: ${s.sent} sent, ${s.received} received, skipped ${s.skipped}; interval mean ${meanInterval.toFixed(3)} ms, ` +
      `p50 ${intervals[Math.floor(intervals.length / 2)]!.toFixed(2)}, p99 ${intervals[Math.floor(intervals.length * 0.99)]!.toFixed(2)}, ` +
      `max ${intervals.at(-1)!.toFixed(2)} ms; pause of ${(pauseTo - pauseFrom).toFixed(1)} ms of sends seen as a ${gap?.gapMs} ms gap`);

    expect(gap).not.toBeNull();
    expect(gap!.gapMs).toBeGreaterThan(150);
    expect(gap!.gapMs).toBeLessThan(600);
    const replied = s.replies.map((r) => r[0]);
    expect(countLost(s.sends, replied, pauseFrom, pauseTo)).toBe(100);
    // Nothing else is lost on loopback (the last 50 sends may still be in flight at stop).
    expect(countLost(s.sends, replied, s.sends[0]!, s.sends.at(-50)!)).toBe(100);
    // Every reply carries the send time of its seq.
    for (const [seq, sentAt] of s.replies.slice(0, 50)) expect(sentAt).toBe(s.sends[seq]);
  });

  it('with nothing answering it still starts, stops on request and reports no replies', async () => {
    const probe = startUdpProbe(null, '127.0.0.1', { port: 9, intervalMs: 5, maxSeconds: 20 });
    handles.push(probe);
    await probe.ready;
    await sleep(200);
    handles.splice(handles.indexOf(probe), 1);
    const s = await probe.stop();
    expect(s.sent).toBeGreaterThan(10);
    expect(s.received).toBe(0);
    expect(s.replies).toEqual([]);
  });

  it('ends by itself at --max-count', async () => {
    const probe = startUdpProbe(null, '127.0.0.1', { port: 9, intervalMs: 2, maxCount: 25, maxSeconds: 20 });
    handles.push(probe);
    await probe.ready;
    await sleep(500);
    handles.splice(handles.indexOf(probe), 1);
    const s = await probe.stop();
    expect(s.sent).toBe(25);
  });
});

describe('SerialWatcher', () => {
  let dir = '';
  afterAll(async () => { if (dir) await rm(dir, { recursive: true, force: true }); });

  /** A QEMU-like chardev socket server writing "hb N" every 10 ms to its one client. */
  async function heartbeatServer(path: string, firstSeq: number): Promise<{ close(): Promise<void>; lastSeq(): number; lastWrite(): number }> {
    let seq = firstSeq;
    let last = -1;
    let lastAt = 0;
    const clients = new Set<net.Socket>();
    const server = net.createServer((c) => {
      clients.add(c);
      c.on('error', () => undefined);
      c.on('close', () => clients.delete(c));
    });
    const timer = setInterval(() => {
      if (clients.size === 0) return;
      for (const c of clients) c.write(`hb ${seq}\n`);
      last = seq++;
      lastAt = hostNow();
    }, 10);
    await new Promise<void>((res) => server.listen(path, res));
    let closed = false;
    const close = async (): Promise<void> => {
      if (closed) return;
      closed = true;
      clearInterval(timer);
      for (const c of clients) c.destroy();
      await new Promise<void>((res) => server.close(() => res()));
    };
    cleanups.push(close);
    return { close, lastSeq: () => last, lastWrite: () => lastAt };
  }

  it('follows the source socket until it goes away, then the destination one, and measures the silence', async () => {
    dir = await mkdtemp(join(tmpdir(), 'vmtc-serial-'));
    const a = join(dir, 'a.sock');
    const b = join(dir, 'b.sock');
    const watcher = new SerialWatcher();
    cleanups.push(async () => { await watcher.stop(); });
    const src = await heartbeatServer(a, 0);
    watcher.watch(a, 'source');
    watcher.watch(b, 'destination'); // does not exist yet: retried every 20 ms
    await waitFor(() => watcher.samples().length >= 20);
    await src.close(); // the source QEMU quits: its socket disappears
    const srcLast = src.lastSeq();
    await sleep(150);
    const dst = await heartbeatServer(b, srcLast + 16); // 15 heartbeats "lost" in between
    await waitFor(() => watcher.samples().filter((x) => x.label === 'destination').length >= 20);
    const samples = await watcher.stop();
    await dst.close();

    const source = samples.filter((x) => x.label === 'source');
    const destination = samples.filter((x) => x.label === 'destination');
    expect(source.length).toBeGreaterThan(10);
    expect(destination.length).toBeGreaterThan(10);
    // Every line arrived whole and in order.
    expect(source.map((x) => x.seq)).toEqual(source.map((_, i) => source[0]!.seq + i));
    expect(destination[0]!.seq).toBe(srcLast + 16);
    expect(source.at(-1)!.seq).toBe(srcLast);
    const down = serialDowntime(samples, 'source', 'destination');
    expect(down).not.toBeNull();
    expect(down!).toBeGreaterThan(120);
    expect(down!).toBeLessThan(600);
    console.log(`serial: ${source.length} + ${destination.length} heartbeats, silence ${down} ms for a 150 ms outage`);
    expect(serialLost(samples, 'source', 'destination')).toBe(15);
    expect(watcher.connections().map((c) => [c.label, c.connects])).toEqual([['source', 1], ['destination', 1]]);
  });

  it('reconnects when the same socket comes back (a new QEMU at the same path)', async () => {
    dir = dir || await mkdtemp(join(tmpdir(), 'vmtc-serial-'));
    const p = join(dir, 'c.sock');
    const watcher = new SerialWatcher();
    cleanups.push(async () => { await watcher.stop(); });
    watcher.watch(p, 'x');
    const first = await heartbeatServer(p, 100);
    await waitFor(() => watcher.samples().length >= 5);
    await first.close();
    await sleep(60);
    const second = await heartbeatServer(p, 500);
    await waitFor(() => watcher.samples().some((x) => x.seq >= 505));
    const samples = await watcher.stop();
    await second.close();
    expect(samples.some((x) => x.seq >= 100 && x.seq < 500)).toBe(true);
    expect(samples.some((x) => x.seq >= 500)).toBe(true);
    expect(watcher.connections()[0]!.connects).toBe(2);
  });
});

describe('ping', () => {
  it('pings loopback every 50 ms: about 20 replies a second, none lost', async () => {
    const ping = startPing(null, '127.0.0.1', { intervalMs: 50, maxSeconds: 10 });
    handles.push(ping);
    await ping.ready;
    const from = hostNow();
    await sleep(1000);
    const stopAt = hostNow();
    handles.splice(handles.indexOf(ping), 1);
    const p = await ping.stop();
    // iputils paces -i 0.05 at about 55 ms here: ~18-20 replies in a second.
    console.log(`ping: ${p.replies.length} replies in ${(stopAt - from).toFixed(0)} ms`);
    expect(p.replies.length).toBeGreaterThanOrEqual(12);
    expect(p.replies.length).toBeLessThanOrEqual(Math.ceil((stopAt - from) / 50) + 3);
    expect(p.sends).toBe(p.replies.length);
    expect(p.lost).toBe(0);
    // Arrival times are epoch ms on the same clock as hostNow().
    expect(p.replies[0]!.at).toBeGreaterThan(from - 200);
    expect(p.replies.at(-1)!.at).toBeLessThan(hostNow() + 50);
    const gap = longestGap(pingReplyTimes(p), from, hostNow());
    expect(gap!.gapMs).toBeLessThan(200);
    expect(lostInGap(p.replies, from, hostNow())).toBe(0);
  });

  it('runs inside a namespace via ip netns exec and stops by pid with its summary', async () => {
    const ns = `vtp${randomBytes(3).toString('hex')}`;
    await run(['ip', 'netns', 'add', ns]);
    cleanups.push(async () => { await tryRun(['ip', 'netns', 'del', ns]); });
    await run(['ip', '-n', ns, 'link', 'set', 'lo', 'up']);
    const ping = startPing(ns, '127.0.0.1', { intervalMs: 50, maxSeconds: 10 });
    handles.push(ping);
    await ping.ready;
    await sleep(400);
    // The pid we hold is ping itself (ip netns exec execs, it does not fork).
    const { readFile } = await import('node:fs/promises');
    expect((await readFile(`/proc/${ping.pid}/comm`, 'utf8')).trim()).toBe('ping');
    // The UDP client in the same namespace (nothing answers there).
    const udp = startUdpProbe(ns, '127.0.0.1', { port: 9, intervalMs: 2, maxSeconds: 20 });
    handles.push(udp);
    await udp.ready;
    expect((await readFile(`/proc/${udp.pid}/comm`, 'utf8')).trim()).toMatch(/node|MainThread/);
    // Both run at SCHED_FIFO (policy 1) when this machine allows it (root here).
    if (realtimeAvailable()) {
      for (const pid of [ping.pid, udp.pid]) expect(await readFile(`/proc/${pid}/sched`, 'utf8')).toMatch(/^policy\s*:\s*1$/m);
    }
    await sleep(200);
    handles.splice(handles.indexOf(udp), 1);
    const u = await udp.stop();
    expect(u.sent).toBeGreaterThan(20);
    handles.splice(handles.indexOf(ping), 1);
    const p = await ping.stop();
    expect(p.replies.length).toBeGreaterThanOrEqual(4);
    expect(p.lost).toBe(0);
  });
});
