// The C delay line (lab/delay-line/delay-line.c) as a real process on loopback: endpoints a and
// b are two UDP sockets on 127.0.0.2 and 127.0.0.3 sharing one port (--dst-port), a third on
// 127.0.0.4 sends strays. It must behave as the Node.js one does (delay, both directions, the
// bounded queue at the line rate, random loss, strays) and write the same JSON lines, read here
// with the same parsers the lab uses. Then a lab lightpath with delayLineImpl 'c'.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import dgram from 'node:dgram';
import { spawn } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ensureDelayLineBinary } from '../../lab/delay-line/build.ts';
import { defaultDelayLineCpu, readProcSched } from '../../lab/delay-line-sched.ts';
import { delayLineSched, delayLineStatsBetween, isOurDelayLine, lastDelayLineReport, resolveDelayLineImpl, stopDelayLine } from '../../lab/delay-line-process.ts';
import { pidAlive } from '../../src/common/proc.ts';
import type { DelayLineReport } from '../../lab/delay-line.ts';
import { labDown, labUp, provisionLightpath, type Lab } from '../../lab/net.ts';
import { tryRun } from '../../lab/exec.ts';
import { randomPrefix } from '../../lab/topology.ts';
import { LabLightpathDriver } from '../../lab/lightpath-driver.ts';
import { sleep } from '../../src/common/clock.ts';
import { tcpTransfer } from './net-helpers.ts';

let dir: string;
let bin: string;
const started: { pid: number; tag: string }[] = [];
const sockets: dgram.Socket[] = [];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vmtc-dlc-'));
  bin = await ensureDelayLineBinary();
});

afterEach(async () => {
  for (const s of sockets.splice(0)) { try { s.close(); } catch { /* closed */ } }
  for (const p of started.splice(0)) {
    await stopDelayLine(p, 1000);
    if (pidAlive(p.pid) && isOurDelayLine(p.pid, p.tag)) process.kill(p.pid, 'SIGKILL');
  }
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

interface Received { at: number; data: Buffer; from: string }

function udp(address: string, port = 0): Promise<{ sock: dgram.Socket; got: Received[] }> {
  return new Promise((resolve, reject) => {
    const sock = dgram.createSocket({ type: 'udp4', recvBufferSize: 4 << 20 });
    sockets.push(sock);
    const got: Received[] = [];
    sock.on('message', (data, r) => got.push({ at: performance.now(), data, from: r.address }));
    sock.once('error', reject);
    sock.bind(port, address, () => resolve({ sock, got }));
  });
}

/** Two endpoint sockets on one port (a delay line sends to both at --dst-port). */
async function endpoints() {
  for (let i = 0; ; i++) {
    const a = await udp('127.0.0.2');
    const port = a.sock.address().port;
    try {
      const b = await udp('127.0.0.3', port);
      return { a, b, port };
    } catch (e) {
      if (i > 5) throw e;
    }
  }
}

async function startC(args: string[], tag: string) {
  const statsFile = join(dir, `${tag}.jsonl`);
  const out = openSync(statsFile, 'w');
  const child = spawn(bin, [...args, '--listen-host', '127.0.0.1', '--tag', tag], { stdio: ['ignore', out, 'pipe'] });
  closeSync(out);
  let stderr = '';
  child.stderr!.on('data', (d) => { stderr += String(d); });
  const exit = new Promise<number | null>((res) => child.on('exit', (c) => res(c)));
  started.push({ pid: child.pid!, tag });
  for (let i = 0; i < 100; i++) {
    const first = readFileSync(statsFile, 'utf8').split('\n')[0];
    if (first) {
      const m = JSON.parse(first) as { event: string; port: number; pid: number; tag: string; config: Record<string, number>; a: { address: string; port: number } };
      return { listening: m, port: m.port, pid: child.pid!, statsFile, exit, stderr: () => stderr };
    }
    await sleep(20);
  }
  throw new Error(`C delay line did not start: ${stderr}`);
}

function send(s: dgram.Socket, buf: Buffer, port: number): Promise<void> {
  return new Promise((res, rej) => s.send(buf, port, '127.0.0.1', (e) => (e ? rej(e) : res())));
}

async function until(cond: () => boolean, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!cond() && Date.now() < end) await sleep(10);
}

describe('C delay line on loopback', () => {
  it('holds datagrams for the one-way delay, both ways; listening/stats/final lines parse; SIGTERM exits 0', async () => {
    const { a, b, port } = await endpoints();
    const dl = await startC(['--a', '127.0.0.2', '--b', '127.0.0.3', '--dst-port', String(port), '--one-way-ms', '60', '--report-ms', '200'], 'dlc-delay');
    expect(dl.listening).toMatchObject({ event: 'listening', address: '127.0.0.1', pid: dl.pid, tag: 'dlc-delay', a: { address: '127.0.0.2', port } });
    expect(dl.listening.config).toEqual({ oneWayMs: 60, rateMbps: 1000, queueMs: 20, loss: 0, overheadBytes: 28 });
    expect(isOurDelayLine(dl.pid, 'dlc-delay')).toBe(true);
    expect(isOurDelayLine(dl.pid, 'someone-else')).toBe(false);

    const sentAt: number[] = [];
    for (let i = 0; i < 5; i++) {
      sentAt.push(performance.now());
      await send(a.sock, Buffer.from(`ab${i}`), dl.port);
      await send(b.sock, Buffer.from(`ba${i}`), dl.port);
      await sleep(15);
    }
    await until(() => a.got.length >= 5 && b.got.length >= 5, 2000);
    expect(b.got.map((g) => g.data.toString())).toEqual(['ab0', 'ab1', 'ab2', 'ab3', 'ab4']);
    expect(a.got.map((g) => g.data.toString())).toEqual(['ba0', 'ba1', 'ba2', 'ba3', 'ba4']);
    expect(b.got.every((g) => g.from === '127.0.0.1')).toBe(true);
    const delays = b.got.slice(0, 5).map((g, i) => g.at - sentAt[i]!);
    // Never early. Late only by scheduling: on a loaded 2-core machine one datagram may be
    // delivered late, so the check is that most arrive within 40 ms of the delay (a line that
    // held them twice as long, or by the queue too, would put none there).
    for (const d of delays) expect(d).toBeGreaterThanOrEqual(60);
    expect(delays.filter((d) => d < 60 + 40).length, `delays ${delays.map((d) => d.toFixed(1)).join(', ')} ms`).toBeGreaterThanOrEqual(3);

    await sleep(450); // at least two periodic lines
    process.kill(dl.pid, 'SIGUSR2');
    await sleep(100);
    expect(await stopDelayLine({ pid: dl.pid, tag: 'dlc-delay' })).toBe(true);
    expect(await dl.exit).toBe(0);

    const lines = readFileSync(dl.statsFile, 'utf8').trimEnd().split('\n').map((l) => JSON.parse(l) as DelayLineReport & { event: string });
    const periodic = lines.filter((l) => l.event === 'stats' && l.config === undefined);
    expect(periodic.length).toBeGreaterThanOrEqual(2);
    // The SIGUSR2 line carries the config, as DelayLine.report() does.
    expect(lines.some((l) => l.event === 'stats' && l.config?.oneWayMs === 60)).toBe(true);
    const final = await lastDelayLineReport(dl.statsFile);
    expect(final?.event).toBe('final');
    expect(final?.total.ab).toMatchObject({ packets: 5, bytes: 15, drops: 0, lost: 0, inFlight: 0 });
    expect(final?.total.ba).toMatchObject({ packets: 5, bytes: 15, drops: 0, lost: 0 });
    expect(final?.strays).toBe(0);
    const st = delayLineStatsBetween(dl.statsFile);
    expect(st.reports).toBe(lines.length - 1);
    expect(st.bytes).toBe(30);
    expect(st.drops).toBe(0);
  });

  it('paces to the line rate and drops beyond the queue bound when flooded; counts strays', async () => {
    const { a, b, port } = await endpoints();
    const stray = await udp('127.0.0.4');
    // 8 Mbit/s: a 972-byte payload (+28 = 1000 B) takes 1 ms to serialise; the queue holds 5 ms.
    const dl = await startC(['--a', '127.0.0.2', '--b', '127.0.0.3', '--dst-port', String(port), '--one-way-ms', '10', '--rate-mbps', '8', '--queue-ms', '5', '--report-ms', '0'], 'dlc-queue');
    const N = 200;
    const payload = Buffer.alloc(972, 1);
    await Promise.all(Array.from({ length: N }, () => send(a.sock, payload, dl.port)));
    for (let i = 0; i < 3; i++) await send(stray.sock, Buffer.from('x'), dl.port);
    await sleep(400);
    process.kill(dl.pid, 'SIGUSR2');
    await until(() => readFileSync(dl.statsFile, 'utf8').includes('"event":"stats"'), 2000);
    const r = (await lastDelayLineReport(dl.statsFile))!;
    expect(r.strays).toBe(3);
    expect(r.total.ab.drops).toBeGreaterThan(0);
    expect(r.total.ab.packets + r.total.ab.drops).toBe(N);
    expect(r.total.ab.packets).toBe(b.got.length);
    // The burst arrives within a few ms, so most of it exceeds the 5 ms queue.
    expect(b.got.length).toBeLessThan(N / 2);
    expect(r.total.ab.queueMaxMs).toBeLessThanOrEqual(5);
    // Departures are paced: n datagrams of 1 ms each take at least (n-1) ms (small tolerance for
    // the receiver's timestamps).
    const span = b.got.at(-1)!.at - b.got[0]!.at;
    expect(span).toBeGreaterThanOrEqual((b.got.length - 1) * 0.9);
    expect(a.got.length).toBe(0);
    expect(delayLineStatsBetween(dl.statsFile).drops).toBe(r.total.ab.drops);
  });

  it('loses about p of the datagrams at random', async () => {
    const { a, b, port } = await endpoints();
    const dl = await startC(['--a', '127.0.0.2', '--b', '127.0.0.3', '--dst-port', String(port), '--one-way-ms', '1', '--rate-mbps', '10000', '--queue-ms', '1000', '--loss', '0.3', '--report-ms', '0'], 'dlc-loss');
    const N = 2000;
    for (let i = 0; i < N; i += 100) {
      await Promise.all(Array.from({ length: 100 }, (_, j) => send(a.sock, Buffer.from(String(i + j)), dl.port)));
      await sleep(5);
    }
    await sleep(200);
    await stopDelayLine({ pid: dl.pid, tag: 'dlc-loss' });
    const r = (await lastDelayLineReport(dl.statsFile))!;
    expect(r.event).toBe('final');
    expect(r.total.ab.lost + r.total.ab.packets).toBe(N);
    expect(r.total.ab.packets).toBe(b.got.length);
    // Binomial(2000, 0.3): mean 600, sd ~20.5; ±6 sd.
    expect(r.total.ab.lost).toBeGreaterThan(480);
    expect(r.total.ab.lost).toBeLessThan(720);
  });

  it('runs under SCHED_FIFO pinned to a CPU when asked, says so, and warns but runs on when refused', async () => {
    const { a, b, port } = await endpoints();
    const dl = await startC(['--a', '127.0.0.2', '--b', '127.0.0.3', '--dst-port', String(port), '--rt-priority', '1', '--cpu', '0'], 'dlc-rt');
    expect(delayLineSched(dl.statsFile)).toEqual({ policy: 'fifo', priority: 1, cpus: '0' });
    // What the kernel says, not only what the program claims.
    expect(readProcSched(dl.pid)).toEqual({ policy: 'fifo', priority: 1, cpus: '0' });
    await send(a.sock, Buffer.from('x'), dl.port);
    await until(() => b.got.length >= 1, 2000);
    expect(b.got.length).toBe(1);
    // A CPU that does not exist: refused, warned on stderr and in the line, and the relay still runs.
    const bad = await startC(['--a', '127.0.0.2', '--b', '127.0.0.3', '--dst-port', String(port), '--rt-priority', '1', '--cpu', '1023'], 'dlc-rt-bad');
    expect(delayLineSched(bad.statsFile)).toMatchObject({ policy: 'fifo', priority: 1, warning: expect.stringMatching(/pinning to CPU 1023 refused/) });
    await until(() => bad.stderr().includes('warning'), 2000);
    expect(bad.stderr()).toMatch(/delay-line: warning: pinning to CPU 1023 refused/);
    expect(pidAlive(bad.pid)).toBe(true);
  });

  it('is chosen by VMTC_DELAY_LINE where no option says otherwise', () => {
    expect(resolveDelayLineImpl(undefined, {})).toBe('c');
    expect(resolveDelayLineImpl(undefined, { VMTC_DELAY_LINE: 'node' })).toBe('node');
    expect(resolveDelayLineImpl(undefined, { VMTC_DELAY_LINE: 'c' })).toBe('c');
    expect(resolveDelayLineImpl('node', { VMTC_DELAY_LINE: 'c' })).toBe('node');
    expect(() => resolveDelayLineImpl(undefined, { VMTC_DELAY_LINE: 'rust' })).toThrow(/node or c/);
  });
});

describe('lab lightpath through either delay line', () => {
  const RTT = 20;
  let lab: Lab | undefined;
  let stateDir: string | undefined;

  afterEach(async () => {
    if (lab && stateDir) await labDown(lab.prefix, stateDir).catch(() => undefined);
    if (stateDir) await rm(stateDir, { recursive: true, force: true });
    lab = undefined;
    stateDir = undefined;
  });

  // The C relay is the default; the Node.js one stays selectable and is exercised here too.
  it.each(['c', 'node'] as const)('provisions with delayLineImpl %s: the relay is that program, RTT ≥ the configured delay, TCP works', async (impl) => {
    stateDir = await mkdtemp(join(tmpdir(), 'vmtc-lab-dlc-'));
    lab = await labUp({ prefix: randomPrefix(), rttMs: RTT, stateDir, tunnelSite: null, delayLineImpl: impl });
    const [A, B] = lab.sites as [Lab['sites'][0], Lab['sites'][0]];
    const seg = await provisionLightpath(lab, 'siteA', 'siteB', 200, 'conn-dlc');
    const relay = seg.details.relay as { pid: number; statsFile: string };
    const argv = readFileSync(`/proc/${relay.pid}/cmdline`, 'utf8').split('\0');
    if (impl === 'c') expect(argv[0]).toBe(bin);
    else expect(argv.some((a) => a.endsWith('delay-line-main.ts'))).toBe(true);
    // Started at real-time priority and pinned (lab/delay-line-sched.ts), either program.
    const cpu = defaultDelayLineCpu();
    expect(readProcSched(relay.pid)).toMatchObject({ policy: 'fifo', priority: 1, ...(cpu !== null ? { cpus: String(cpu) } : {}) });
    expect(delayLineSched(relay.statsFile)).toMatchObject({ policy: 'fifo', priority: 1 });

    const p = await tryRun(['ip', 'netns', 'exec', A.ns, 'ping', '-n', '-c', '5', '-i', '0.1', '-W', '1', B.lightpathIp]);
    expect(p?.stdout).toMatch(/5 received/);
    const min = Number(/= ([\d.]+)\//.exec(p!.stdout)?.[1]);
    expect(min).toBeGreaterThanOrEqual(RTT);

    const N = 8 * 1024 * 1024;
    expect(await tcpTransfer(A.ns, B.ns, B.lightpathIp, N)).toBe(N);
    // The driver's report asks the C process by SIGUSR2, as it asks the Node.js one.
    const report = await new LabLightpathDriver({ stateDir: stateDir! }).report('conn-dlc');
    expect(report?.total.ab.bytes).toBeGreaterThan(N);
    expect(report?.total.ba.packets).toBeGreaterThan(0);
    // `lab down` recognises the C process by pid and tag and stops it.
    await labDown(lab.prefix, stateDir!);
    lab = undefined;
    expect(pidAlive(relay.pid)).toBe(false);
  });
});
