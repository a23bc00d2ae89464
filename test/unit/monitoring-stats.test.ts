// The host agent's side of monitoring: rates between two driver readings (agents/host/stats.ts),
// the reporter's interval on an injected clock, the DoubleDriver's scripted load
// (agents/host/stats-double.ts), the QEMU driver's counters parsed from /proc and QMP
// (agents/host/qemu/stats.ts, with the QMP double of test/helpers/qemu-double.ts), and the
// controller's check of the 'stats' event (src/common/agent-schemas.ts).
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { statsBetween, StatsReporter } from '../../agents/host/stats.ts';
import { DoubleDriver } from '../../agents/host/double-driver.ts';
import { parseHostCpu, parseNetDev, parseProcStat, readHostCounters, readVmCounters } from '../../agents/host/qemu/stats.ts';
import type { StatsSample } from '../../agents/host/driver.ts';
import type { StatsReport } from '../../src/common/agent-protocol.ts';
import { AGENT_EVENTS } from '../../src/common/agent-schemas.ts';
import { ManualClock } from '../../src/common/clock.ts';
import { silentLogger } from '../../src/common/log.ts';
import { QmpDouble } from '../helpers/qemu-double.ts';

const sample = (at: number, cpuMs: number, net: number, over: Partial<StatsSample['host']> = {}): StatsSample => ({
  at, host: { vcpus: 4, memoryMb: 8192, memoryUsedMb: 2048, ...over },
  vms: [{ vmId: 'v', vcpus: 2, memoryMb: 1024, cpuMs, memoryUsedMb: 512, netRxBytes: net, netTxBytes: net / 2, diskReadBytes: net, diskWriteBytes: 0 }],
});

describe('rates between readings', () => {
  it('CPU share of its vCPUs, Mbit/s and MB/s over the interval; host sums its VMs', () => {
    const r = statsBetween(sample(0, 0, 0), sample(10_000, 10_000, 12_500_000))!;
    // 10 s of CPU time in 10 s on 2 vCPUs: 0.5. 12.5 MB in 10 s: 10 Mbit/s.
    expect(r.vms[0]).toMatchObject({ vmId: 'v', cpu: 0.5, netRxMbps: 10, netTxMbps: 5, diskReadMBps: 1.25, diskWriteMBps: 0, memoryUsedMb: 512 });
    expect(r.host).toMatchObject({ cpu: 0.25, netRxMbps: 10, netTxMbps: 5, memoryUsedMb: 2048 });
    expect(r.intervalMs).toBe(10_000);
    expect(AGENT_EVENTS.stats!.problems(r)).toEqual([]);
  });

  it("uses /proc/stat's busy share for the host when read; a counter that went back counts from 0; a new VM waits a reading", () => {
    const r = statsBetween(sample(0, 5000, 0, { cpuBusyMs: 1000, cpuTotalMs: 10_000 }), sample(1000, 100, 0, { cpuBusyMs: 4000, cpuTotalMs: 14_000 }))!;
    expect(r.host.cpu).toBe(0.75);
    expect(r.vms[0]!.cpu).toBe(0.05);
    const fresh = statsBetween({ ...sample(0, 0, 0), vms: [] }, sample(1000, 100, 0))!;
    expect(fresh.vms).toEqual([]);
    expect(statsBetween(sample(1000, 0, 0), sample(1000, 0, 0))).toBeUndefined();
  });

  it('the event is refused with a share above 1 or a negative rate', () => {
    const r = statsBetween(sample(0, 0, 0), sample(1000, 100, 0))!;
    expect(AGENT_EVENTS.stats!.problems({ ...r, host: { ...r.host, cpu: 1.5 } })).not.toEqual([]);
    expect(AGENT_EVENTS.stats!.problems({ ...r, vms: [{ ...r.vms[0]!, netRxMbps: -1 }] })).not.toEqual([]);
  });
});

describe('the reporter and the double driver', () => {
  it('reads every interval on the injected clock and reports the scripted load, which a load file changes', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vmtc-stats-'));
    try {
      const clock = new ManualClock();
      const loadFile = join(dir, 'load.json');
      const driver = new DoubleDriver({ vms: [{ vmId: 'v', project: 'p', vcpus: 2, memoryMb: 1000, diskGb: 1 }], load: { vms: { v: { cpu: 0.2, memory: 0.5, netMbps: 8 } } }, loadFile }, { clock });
      const sent: StatsReport[] = [];
      const reporter = new StatsReporter({ driver, clock, logger: silentLogger(), intervalMs: 10_000, send: (r) => sent.push(r) });
      await reporter.tick();
      expect(sent).toEqual([]);
      clock.advance(10_000);
      await reporter.tick();
      expect(sent[0]!.vms[0]).toMatchObject({ cpu: 0.2, memoryUsedMb: 500, netRxMbps: 8, netTxMbps: 8 });
      expect(sent[0]!.host.cpu).toBeCloseTo(0.05, 3); // 0.4 cores of the double's 8
      writeFileSync(loadFile, JSON.stringify({ vms: { v: { cpu: 0.95, dirtyRateMBps: 30 } } }));
      clock.advance(10_000);
      await reporter.tick();
      expect(sent[1]!.vms[0]).toMatchObject({ cpu: 0.95, dirtyRateMBps: 30 });
      reporter.stop();
      await driver.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses a bad scripted load naming the field', () => {
    expect(() => new DoubleDriver({ load: { vms: { v: { cpu: 2 } } } })).toThrow(expect.objectContaining({ code: 'VMTC_CONFIG_INVALID', details: expect.objectContaining({ field: 'double.load.vms.v.cpu' }) }));
  });
});

describe('QEMU counters (/proc and QMP)', () => {
  const files: Record<string, string> = {
    // comm with a space and a parenthesis; utime 300, stime 100 ticks.
    '/proc/42/stat': '42 (qemu-system-x86 (v)) S 1 42 42 0 -1 4194560 100 0 0 0 300 100 0 0 20 0 3 0 100 1000000 5000',
    '/proc/42/status': 'Name:\tqemu\nVmRSS:\t  524288 kB\nVmSwap:\t    1024 kB\n',
    '/proc/42/net/dev': 'Inter-|   Receive |  Transmit\n face |bytes packets errs drop fifo frame compressed multicast|bytes packets\n    lo: 999 1 0 0 0 0 0 0 999 1 0 0 0 0 0 0\nvt0a1: 1000 10 0 0 0 0 0 0 5000 20 0 0 0 0 0 0\nvt0a2: 24 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n',
    '/proc/stat': 'cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3 4\n',
    '/proc/meminfo': 'MemTotal:       8388608 kB\nMemAvailable:   6291456 kB\nSwapTotal:       1048576 kB\nSwapFree:         524288 kB\n',
  };
  const read = async (p: string) => { if (p in files) return files[p]!; throw new Error('ENOENT'); };

  it('parses /proc/PID/stat, /proc/PID/net/dev and /proc/stat', () => {
    expect(parseProcStat(files['/proc/42/stat']!)).toBe(4000);
    expect(parseNetDev(files['/proc/42/net/dev']!, ['vt0a1', 'vt0a2'])).toEqual({ rxBytes: 1024, txBytes: 5000 });
    expect(parseHostCpu(files['/proc/stat']!)).toEqual({ busyMs: 2000, totalMs: 10_000 });
    expect(parseProcStat('garbage')).toBeUndefined();
  });

  it('reads a VM through QMP: blockstats summed, balloon, and the dirty rate of the previous calc-dirty-rate', async () => {
    const qmp = new QmpDouble('/x/qmp.sock', 'running', [], { quit() {}, nbdStarted() {} });
    qmp.handlers.set('query-blockstats', () => [{ device: 'd0', stats: { rd_bytes: 1000, wr_bytes: 200 } }, { device: 'd1', stats: { rd_bytes: 24, wr_bytes: 0 } }]);
    qmp.handlers.set('query-balloon', () => ({ actual: 512 * 1048576 }));
    let measured = false;
    qmp.handlers.set('query-dirty-rate', () => (measured ? { status: 'measured', 'dirty-rate': 37, 'calc-time': 1 } : { status: 'unstarted' }));
    const dirtyRates = new Map<string, number>();
    const input = { vmId: 'v', vcpus: 2, memoryMb: 1024, pid: 42, taps: ['vt0a1', 'vt0a2'], qmp };
    const first = await readVmCounters(input, { read, dirtyRate: true, dirtyRates });
    expect(first).toMatchObject({ cpuMs: 4000, memoryUsedMb: 512, swapMb: 1, balloonMb: 512, netRxBytes: 5000, netTxBytes: 1024, diskReadBytes: 1024, diskWriteBytes: 200 });
    expect(first.dirtyRateMBps).toBeUndefined();
    expect(qmp.argsOf('calc-dirty-rate')).toEqual([{ 'calc-time': 1 }]);
    measured = true;
    const second = await readVmCounters(input, { read, dirtyRate: false, dirtyRates });
    expect(second.dirtyRateMBps).toBe(37);
    expect(qmp.argsOf('calc-dirty-rate')).toHaveLength(1); // not every reading starts one
    // A VM without a balloon (QEMU refuses query-balloon) and a dead /proc: no figure, no failure.
    qmp.handlers.set('query-balloon', () => { throw new Error('No balloon device has been activated'); });
    const third = await readVmCounters({ ...input, pid: 7 }, { read, dirtyRate: false, dirtyRates });
    expect(third).toMatchObject({ cpuMs: 0, netRxBytes: 0 });
    expect(third.balloonMb).toBeUndefined();
    expect(await readHostCounters(read, 4)).toEqual({ vcpus: 4, memoryMb: 8192, memoryUsedMb: 2048, swapUsedMb: 512, cpuBusyMs: 2000, cpuTotalMs: 10_000 });
  });
});
