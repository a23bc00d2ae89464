// The turntable's instrument (lab/turntable/instrument.ts, lab/delay-line-sched.ts,
// lab/delay-line-process.ts): the delay line's queue sized from the bandwidth-delay product, the
// rule that marks a migration unreliable, the delay line's per-second reports and scheduling read
// from its stats file, the populated guest's default fill, the accelerator check, and the
// command-line options that set them.
import { accessSync, constants, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { bdpQueueMs, defaultFillMb, judgeEmulator, kvmWorks, QUEUE_MS_MAX, QUEUE_MS_MIN, resolveAccel, type EmulatorInterval } from '../../lab/turntable/instrument.ts';
import { delayLineIntervals, delayLineSched } from '../../lab/delay-line-process.ts';
import { defaultDelayLineCpu, expandCpuList, readProcSched } from '../../lab/delay-line-sched.ts';
import { turntableOptions } from '../../lab/turntable/command.ts';
import { guestAppend } from '../../lab/guest/build.ts';

function thrown(f: () => unknown): { code?: string; field?: unknown; message?: string } {
  try {
    f();
  } catch (e) {
    const x = e as { code?: string; details?: { field?: unknown }; message?: string };
    return { code: x.code, field: x.details?.field, message: x.message };
  }
  return {};
}

describe('bdpQueueMs', () => {
  it('is one bandwidth-delay product of the reserved rate, in ms at the line rate', () => {
    // 198 ms × 500 Mbit/s = 12.4 MB = 99 ms at 1000 Mbit/s.
    expect(bdpQueueMs(198, 500, 1000)).toBe(99);
    expect(bdpQueueMs(198, 1000, 1000)).toBe(198);
    expect(bdpQueueMs(120, 250, 1000)).toBe(30);
    // A reservation above the line rate is held to the line rate.
    expect(bdpQueueMs(198, 5000, 1000)).toBe(198);
  });

  it('keeps to its bounds', () => {
    expect(bdpQueueMs(20, 500, 1000)).toBe(QUEUE_MS_MIN);
    expect(bdpQueueMs(2000, 1000, 1000)).toBe(QUEUE_MS_MAX);
    expect(bdpQueueMs(Number.NaN, 500, 1000)).toBe(QUEUE_MS_MIN);
  });
});

describe('judgeEmulator', () => {
  const dir = (o: Partial<EmulatorInterval['ab']> = {}) => ({ bytes: 60e6, mbps: 480, drops: 0, queueP50Ms: 0, queueMaxMs: 0.5, ...o });
  const idle = { bytes: 1e5, mbps: 1, drops: 0, queueP50Ms: 0, queueMaxMs: 0 };
  // Reports every second from t = 1000 to 10000; the copy runs 1500 → 8500.
  const reports = (f: (at: number) => Partial<EmulatorInterval['ab']> = () => ({})): EmulatorInterval[] =>
    Array.from({ length: 10 }, (_, i) => ({ at: 1000 * (i + 1), intervalMs: 1000, ab: dir(f(1000 * (i + 1))), ba: idle }));
  const window = { from: 1000, to: 9000 };
  const copy = { from: 1500, to: 8500 };

  it('is reliable when the line kept up: no drops, and no backlog with a short rate', () => {
    const v = judgeEmulator(reports(), window, copy, 500);
    expect(v).toEqual({ reliable: true, reasons: [], drops: 0, intervalsJudged: 6, shortIntervals: [] });
  });

  it('is unreliable on any queue-full drop in the window, in either direction', () => {
    const r = reports();
    r[4]!.ba = { ...idle, drops: 3 };
    const v = judgeEmulator(r, window, copy, 500);
    expect(v.reliable).toBe(false);
    expect(v.drops).toBe(3);
    expect(v.reasons).toEqual(['the delay line dropped 3 datagrams (queue full)']);
    // Outside the window they are another migration's.
    expect(judgeEmulator(r, { from: 6000, to: 9000 }, copy, 500).reliable).toBe(true);
  });

  it('is unreliable when the data direction had a backlog and delivered under 95 % of the reserved rate', () => {
    const v = judgeEmulator(reports((at) => (at === 5000 ? { mbps: 400, queueP50Ms: 3 } : {})), window, copy, 500);
    expect(v.reliable).toBe(false);
    expect(v.shortIntervals).toEqual([{ at: 5000, mbps: 400, queueP50Ms: 3 }]);
    expect(v.reasons[0]).toMatch(/below 95 % of the reserved 500 Mbit\/s with a backlog in 1 second of the copy \(400 Mbit\/s, median wait 3 ms\)/);
  });

  it('does not blame the line for a slow sender (no backlog) nor a backlog at full rate', () => {
    expect(judgeEmulator(reports(() => ({ mbps: 290 })), window, copy, 500).reliable).toBe(true);
    expect(judgeEmulator(reports(() => ({ mbps: 480, queueP50Ms: 5 })), window, copy, 500).reliable).toBe(true);
    // Brief TSO bursts leave the median wait under 1 ms.
    expect(judgeEmulator(reports(() => ({ mbps: 290, queueP50Ms: 0.4 })), window, copy, 500).reliable).toBe(true);
  });

  it('judges by rate only the seconds wholly inside the copy, and the direction carrying it', () => {
    // The seconds ending at 2000 (starts 1000 < 1500) and 9000 (after 8500) straddle the copy's ends.
    const edges = reports((at) => (at === 2000 || at === 9000 ? { mbps: 100, queueP50Ms: 3 } : {}));
    expect(judgeEmulator(edges, window, copy, 500).reliable).toBe(true);
    expect(judgeEmulator(reports(), window, null, 500).intervalsJudged).toBe(0);
    // The copy going b→a: the a→b direction (acks) is not judged by rate.
    const back = reports().map((r) => ({ ...r, ab: { ...idle, queueP50Ms: 3 }, ba: dir({ mbps: 300, queueP50Ms: 2 }) }));
    expect(judgeEmulator(back, window, copy, 500).shortIntervals.length).toBe(6);
  });
});

describe("the delay line's stats file", () => {
  const dirp = mkdtempSync(join(tmpdir(), 'vmtc-instrument-'));
  afterAll(() => rmSync(dirp, { recursive: true, force: true }));
  const d = (mbps: number, drops = 0) => ({ packets: 1, bytes: 1000, drops, lost: 0, mbps, queueP50Ms: 0.2, queueMaxMs: 1, inFlight: 0 });
  const file = join(dirp, 'stats.jsonl');
  writeFileSync(file, [
    JSON.stringify({ event: 'listening', port: 1, pid: 2, sched: { policy: 'fifo', priority: 1, cpus: '1' } }),
    JSON.stringify({ event: 'stats', at: 1000, intervalMs: 1000, interval: { ab: d(400), ba: d(1) }, total: { ab: d(0), ba: d(0) }, strays: 0 }),
    JSON.stringify({ event: 'stats', at: 2000, intervalMs: 1000, interval: { ab: d(450, 2), ba: d(1) }, total: { ab: d(0), ba: d(0) }, strays: 0 }),
    '{"event":"stats","at":30',
  ].join('\n'));

  it('gives each report in the window as an interval, skipping the listening line and a torn one', () => {
    expect(delayLineIntervals(file).map((r) => [r.at, r.ab.mbps, r.ab.drops])).toEqual([[1000, 400, 0], [2000, 450, 2]]);
    expect(delayLineIntervals(file, 1500, 2500).map((r) => r.at)).toEqual([2000]);
    expect(delayLineIntervals(join(dirp, 'none'))).toEqual([]);
    expect(delayLineIntervals(undefined)).toEqual([]);
  });

  it('reads how the relay was scheduled from its listening line', () => {
    expect(delayLineSched(file)).toEqual({ policy: 'fifo', priority: 1, cpus: '1' });
    writeFileSync(join(dirp, 'old.jsonl'), JSON.stringify({ event: 'listening', port: 1, pid: 2 }) + '\n');
    expect(delayLineSched(join(dirp, 'old.jsonl'))).toBeNull();
    expect(delayLineSched(undefined)).toBeNull();
  });
});

describe("the delay line's scheduling", () => {
  it('pins to the last CPU when there are two or more', () => {
    expect(defaultDelayLineCpu(2)).toBe(1);
    expect(defaultDelayLineCpu(8)).toBe(7);
    expect(defaultDelayLineCpu(1)).toBeNull();
  });

  it("reads a process's policy, priority and CPUs from /proc", () => {
    const me = readProcSched('self');
    expect(me).toMatchObject({ policy: 'other', priority: 0 });
    expect(me!.cpus).toMatch(/^\d+(,\d+)*$/);
    expect(readProcSched(2 ** 22 + 1)).toBeNull();
    expect(expandCpuList('0-2,5')).toBe('0,1,2,5');
    expect(expandCpuList('1')).toBe('1');
  });
});

describe('the populated guest and the accelerator', () => {
  it('fills half of the memory less the dirty load by default, and says so on the command line', () => {
    expect(defaultFillMb(256, 0)).toBe(128);
    expect(defaultFillMb(256, 64)).toBe(64);
    expect(defaultFillMb(64, 100)).toBe(0);
    expect(guestAppend({ fillMb: 192 })).toContain('vmtc.fill=192');
    expect(guestAppend({})).not.toContain('vmtc.fill');
  });

  it('uses tcg without asking, kvm only where it works, else a coded error', async () => {
    let asked = 0;
    expect(await resolveAccel('tcg', async () => { asked++; return { ok: true, why: '' }; })).toBe('tcg');
    expect(asked).toBe(0);
    expect(await resolveAccel('kvm', async () => ({ ok: true, why: '' }))).toBe('kvm');
    await expect(resolveAccel('kvm', async () => ({ ok: false, why: '/dev/kvm is not usable (ENOENT)' }))).rejects.toMatchObject({ code: 'VMTC_LAB_KVM_UNAVAILABLE' });
  });

  it('finds KVM working only when a guest kernel prints under it', async () => {
    // Stand-ins for QEMU: one silent (as a nested host's KVM was: /dev/kvm opened, nothing ran),
    // one that prints what a booting kernel prints.
    const dir = mkdtempSync(join(tmpdir(), 'vmtc-kvm-'));
    try {
      const silent = join(dir, 'silent');
      const boots = join(dir, 'boots');
      writeFileSync(silent, '#!/bin/sh\nexec sleep 5\n', { mode: 0o755 });
      writeFileSync(boots, '#!/bin/sh\necho "[    0.000000] Linux version 6.1.0"\nexec sleep 5\n', { mode: 0o755 });
      const kvmOpens = (() => { try { accessSync('/dev/kvm', constants.R_OK | constants.W_OK); return true; } catch { return false; } })();
      const a = await kvmWorks('/vmlinux', { qemu: silent, timeoutMs: 300 });
      const b = await kvmWorks('/vmlinux', { qemu: boots, timeoutMs: 5000 });
      const c = await kvmWorks('/vmlinux', { qemu: join(dir, 'missing'), timeoutMs: 5000 });
      if (kvmOpens) {
        expect(a).toEqual({ ok: false, why: expect.stringMatching(/printed nothing in 300 ms/) });
        expect(b).toEqual({ ok: true, why: '' });
        expect(c).toEqual({ ok: false, why: expect.stringMatching(/could not start/) });
      } else {
        for (const x of [a, b, c]) expect(x).toEqual({ ok: false, why: expect.stringMatching(/\/dev\/kvm is not usable/) });
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('turntableOptions for the instrument', () => {
  const base = { 'rtt-ms': '198', 'rate-mbps': '1000', 'memory-mb': '256', load: 'none', converge: 'auto-converge', rounds: '5', 'max-downtime-ms': '30', 'serial-period-ms': '5', 'clock-period-us': '200', accel: 'tcg' };

  it('takes --accel, --queue-ms, --guest and --fill-mb', () => {
    const o = turntableOptions({ ...base, accel: 'kvm', 'queue-ms': '150', 'fill-mb': '100' });
    expect(o).toMatchObject({ accel: 'kvm', queueMs: 150, guest: 'populated', fillMb: 100 });
    expect(turntableOptions({ ...base, guest: 'populated' })).toMatchObject({ guest: 'populated' });
    const idle = turntableOptions(base);
    expect(idle.accel).toBe('tcg');
    expect(idle).not.toHaveProperty('guest');
    expect(idle).not.toHaveProperty('queueMs');
  });

  it('refuses bad values, naming the option', () => {
    expect(thrown(() => turntableOptions({ ...base, accel: 'hvf' }))).toMatchObject({ code: 'VMTC_CONFIG_INVALID', field: 'accel' });
    expect(thrown(() => turntableOptions({ ...base, guest: 'busy' }))).toMatchObject({ code: 'VMTC_CONFIG_INVALID', field: 'guest' });
    expect(thrown(() => turntableOptions({ ...base, guest: 'idle', 'fill-mb': '10' }))).toMatchObject({ code: 'VMTC_CONFIG_INVALID', field: 'fill-mb' });
    expect(thrown(() => turntableOptions({ ...base, 'fill-mb': '240' }))).toMatchObject({ code: 'VMTC_CONFIG_INVALID', field: 'fill-mb' });
    expect(thrown(() => turntableOptions({ ...base, 'fill-mb': '0' }))).toMatchObject({ code: 'VMTC_CONFIG_INVALID', field: 'fill-mb' });
    expect(thrown(() => turntableOptions({ ...base, 'queue-ms': '-1' }))).toMatchObject({ code: 'VMTC_CONFIG_INVALID', field: 'queue-ms' });
  });
});
