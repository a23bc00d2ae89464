// The turntable's tuning in flight (lab/turntable/retune.ts, `--retune-after-ms` in
// lab/turntable/command.ts): the options' validation, the record made of the controller's answer,
// the PATCH sent against a stand-in for the controller's API, and how the summary table and the
// report show it. The lab run itself is test/lab/turntable.test.ts.
import { describe, expect, it } from 'vitest';
import { command, diskLines, retuneOptions, summaryTable, turntableOptions, TURNTABLE_DISK_MB } from '../../lab/turntable/command.ts';
import { diskFigures, diskLoadFor, dirtiesMemory, replicaForRound, writesDisk } from '../../lab/turntable/disk.ts';
import { summarize } from '../../lab/turntable/summary.ts';
import { diskSection } from '../../lab/turntable/report/disk.ts';
import { retuneAfter, retuneRecord } from '../../lab/turntable/retune.ts';
import { migrationTable } from '../../lab/turntable/report/tables.ts';
import type { TurntableMigration, TurntableResult } from '../../lab/turntable/types.ts';

function thrown(f: () => unknown): { code?: string; field?: unknown; message?: string } {
  try {
    f();
  } catch (e) {
    const x = e as { code?: string; details?: { field?: unknown }; message?: string };
    return { code: x.code, field: x.details?.field, message: x.message };
  }
  return {};
}

describe('retuneOptions', () => {
  it('is off without --retune-after-ms', () => {
    expect(retuneOptions({}, 500)).toBeUndefined();
  });

  it('takes the time and either or both limits, as integers', () => {
    expect(retuneOptions({ 'retune-after-ms': '1500', 'retune-bandwidth-mbps': '200', 'retune-max-downtime-ms': '100' }, 500))
      .toEqual({ afterMs: 1500, bandwidthMbps: 200, maxDowntimeMs: 100 });
    expect(retuneOptions({ 'retune-after-ms': '0', 'retune-max-downtime-ms': '5' }, 500)).toEqual({ afterMs: 0, maxDowntimeMs: 5 });
    expect(retuneOptions({ 'retune-after-ms': '10', 'retune-bandwidth-mbps': '500' }, 500)).toEqual({ afterMs: 10, bandwidthMbps: 500 });
  });

  it('refuses a limit without a time, a time without a limit, and bad numbers, naming the field', () => {
    expect(thrown(() => retuneOptions({ 'retune-bandwidth-mbps': '200' }, 500))).toMatchObject({ code: 'VMTC_CONFIG_INVALID', field: 'retune-bandwidth-mbps' });
    expect(thrown(() => retuneOptions({ 'retune-max-downtime-ms': '100' }, 500))).toMatchObject({ code: 'VMTC_CONFIG_INVALID', field: 'retune-max-downtime-ms' });
    expect(thrown(() => retuneOptions({ 'retune-after-ms': '1500' }, 500))).toMatchObject({ code: 'VMTC_CONFIG_INVALID', field: 'retune-after-ms' });
    expect(thrown(() => retuneOptions({ 'retune-after-ms': '-1', 'retune-bandwidth-mbps': '200' }, 500))).toMatchObject({ code: 'VMTC_CONFIG_INVALID', field: 'retune-after-ms' });
    expect(thrown(() => retuneOptions({ 'retune-after-ms': 'soon', 'retune-bandwidth-mbps': '200' }, 500))).toMatchObject({ code: 'VMTC_CONFIG_INVALID', field: 'retune-after-ms' });
    expect(thrown(() => retuneOptions({ 'retune-after-ms': '10', 'retune-bandwidth-mbps': '2.5' }, 500))).toMatchObject({ code: 'VMTC_CONFIG_INVALID', field: 'retune-bandwidth-mbps' });
    expect(thrown(() => retuneOptions({ 'retune-after-ms': '10', 'retune-max-downtime-ms': '0' }, 500))).toMatchObject({ code: 'VMTC_CONFIG_INVALID', field: 'retune-max-downtime-ms' });
  });

  it("refuses more bandwidth than the migration's own (its lightpath's reservation)", () => {
    const e = thrown(() => retuneOptions({ 'retune-after-ms': '10', 'retune-bandwidth-mbps': '501' }, 500));
    expect(e).toMatchObject({ code: 'VMTC_CONFIG_INVALID', field: 'retune-bandwidth-mbps' });
    expect(e.message).toContain('500 Mbit/s');
  });

  it("is part of the command's options (pure: nothing starts), against the default bandwidth of half the line rate", () => {
    const base = { 'rtt-ms': '198', 'rate-mbps': '1000', 'memory-mb': '256', load: 'dirty', converge: 'auto-converge', rounds: '5', 'max-downtime-ms': '30', 'serial-period-ms': '5', 'clock-period-us': '200' };
    expect(turntableOptions({ ...base, 'retune-after-ms': '1500', 'retune-bandwidth-mbps': '200', 'retune-max-downtime-ms': '100' }))
      .toMatchObject({ rounds: 5, load: 'dirty', maxDowntimeMs: 30, retune: { afterMs: 1500, bandwidthMbps: 200, maxDowntimeMs: 100 } });
    expect(turntableOptions(base)).not.toHaveProperty('retune');
    expect(thrown(() => turntableOptions({ ...base, 'retune-after-ms': '100', 'retune-bandwidth-mbps': '501' }))).toMatchObject({ code: 'VMTC_CONFIG_INVALID', field: 'retune-bandwidth-mbps' });
    expect(turntableOptions({ ...base, 'bandwidth-mbps': '800', 'retune-after-ms': '100', 'retune-bandwidth-mbps': '700' }).retune).toEqual({ afterMs: 100, bandwidthMbps: 700 });
    expect(thrown(() => turntableOptions({ ...base, 'retune-max-downtime-ms': '100' }))).toMatchObject({ code: 'VMTC_CONFIG_INVALID', field: 'retune-max-downtime-ms' });
    expect(Object.keys(command.options)).toEqual(expect.arrayContaining(['retune-after-ms', 'retune-bandwidth-mbps', 'retune-max-downtime-ms']));
  });

  it('takes the bulk reference flow\'s seconds (0: none), absent by default, and refuses what is not a number in 0-60', () => {
    const base = { 'rtt-ms': '198', 'rate-mbps': '1000', 'memory-mb': '256', load: 'none', converge: 'auto-converge', rounds: '5', 'max-downtime-ms': '30', 'serial-period-ms': '5', 'clock-period-us': '200' };
    expect(turntableOptions(base)).not.toHaveProperty('bulkSeconds');
    expect(turntableOptions({ ...base, 'bulk-seconds': '0' }).bulkSeconds).toBe(0);
    expect(turntableOptions({ ...base, 'bulk-seconds': '12' }).bulkSeconds).toBe(12);
    for (const bad of ['-1', '61', 'x']) expect(thrown(() => turntableOptions({ ...base, 'bulk-seconds': bad }))).toMatchObject({ code: 'VMTC_CONFIG_INVALID', field: 'bulk-seconds' });
    expect(Object.keys(command.options)).toContain('bulk-seconds');
  });
});

describe('retuneRecord', () => {
  const plan = { afterMs: 1500, bandwidthMbps: 200, maxDowntimeMs: 100 };

  it("keeps a 200's state and what the source read back from QEMU (the last tune change)", () => {
    const body = { state: 'precopy', changes: [
      { what: 'tune', limits: { bandwidthMbps: 300 }, reported: { bandwidthMbps: 300 } },
      { what: 'force-complete', mode: 'pause' },
      { what: 'tune', limits: { bandwidthMbps: 200, maxDowntimeMs: 100 }, reported: { bandwidthMbps: 200, maxDowntimeMs: 100 } },
    ] };
    expect(retuneRecord(plan, 1503.4, { status: 200, body })).toEqual({
      atMs: 1503, bandwidthMbps: 200, maxDowntimeMs: 100, ok: true, status: 200, state: 'precopy', reported: { bandwidthMbps: 200, maxDowntimeMs: 100 },
    });
  });

  it("records a 409 (the copy had ended) with its code and the migration's state", () => {
    const body = { code: 'VMTC_MIGRATION_NOT_TUNABLE', message: 'not in the copy', details: { state: 'completed' } };
    expect(retuneRecord({ afterMs: 1500, bandwidthMbps: 200 }, 1510, { status: 409, body })).toEqual({
      atMs: 1510, bandwidthMbps: 200, ok: false, status: 409, code: 'VMTC_MIGRATION_NOT_TUNABLE', state: 'completed',
    });
  });

  it('records a PATCH that could not be sent', () => {
    expect(retuneRecord({ afterMs: 0, maxDowntimeMs: 7 }, 2, { error: 'socket hang up' })).toEqual({ atMs: 2, maxDowntimeMs: 7, ok: false, status: 0, code: 'NOT_SENT' });
  });
});

describe('retuneAfter', () => {
  it('PATCHes the migration once with only the limits asked for', async () => {
    const calls: unknown[][] = [];
    const api = async (...a: [string, string, unknown?]) => { calls.push(a); return { status: 200, body: { state: 'precopy', changes: [] } }; };
    const rec = await retuneAfter(api, 'mig_1', { afterMs: 0, maxDowntimeMs: 100 }, Date.now());
    expect(calls).toEqual([['PATCH', '/v1/migrations/mig_1', { maxDowntimeMs: 100 }]]);
    expect(rec).toMatchObject({ ok: true, status: 200, maxDowntimeMs: 100, state: 'precopy' });
    expect(rec.atMs).toBeGreaterThanOrEqual(0);
  });

  it('sends nothing once aborted, and records it', async () => {
    const calls: unknown[] = [];
    const ctl = new AbortController();
    ctl.abort();
    const rec = await retuneAfter(async (...a) => { calls.push(a); return { status: 200, body: {} }; }, 'mig_1', { afterMs: 60_000, bandwidthMbps: 1 }, Date.now(), ctl.signal);
    expect(calls).toEqual([]);
    expect(rec).toMatchObject({ ok: false, code: 'NOT_SENT' });
  });

  it('records a request that throws instead of throwing', async () => {
    const rec = await retuneAfter(async () => { throw new Error('connection refused'); }, 'mig_1', { afterMs: 0, bandwidthMbps: 1 }, Date.now());
    expect(rec).toMatchObject({ ok: false, status: 0, code: 'NOT_SENT' });
  });
});

describe('the summary table and the report', () => {
  const mig = (round: number, retuned?: TurntableMigration['retuned']): TurntableMigration => ({
    round, from: 'siteA', to: 'siteB', mode: 'live', ok: true, migrationId: `mig_${round}`, state: 'completed',
    downtimeMs: { hypervisor: 20, internal: null, serial: 200, ping: 250, udp: 230 }, lost: { ping: 1, udp: 10, serial: 5 }, answeredTwice: { udp: 0 },
    totalMs: 9000, controlPlaneMs: 700, hypervisorTotalMs: 8000, bytes: 70e6, throughputMbps: 200, tcpSessionSurvived: true,
    memory: { verified: true, passesAfter: 3 }, ...(retuned ? { retuned } : {}), emulator: { peakMbps: 300, queueMaxMs: 10, drops: 0 }, timings: {}, placesAfter: ['host-siteB'],
    timeline: { t0: 0, fromMs: -1000, toMs: 2000, ping: [], udp: [], serialSource: [], serialDestination: [], marks: [] },
  });
  const pct = { p50: 1, p95: 1, max: 1, n: 1 };
  const result = (retune: boolean): TurntableResult => ({
    version: 1,
    config: {
      rttMs: 198, rateMbps: 1000, memoryMb: 256, load: 'dirty', dirtyMb: 64, dirtyPeriodMs: 1000, rounds: 2, pingIntervalMs: 50, udpIntervalMs: 2, serialPeriodMs: 5, clockPeriodUs: 200,
      bandwidthMbps: 500, maxDowntimeMs: 30, ...(retune ? { retune: { afterMs: 1500, bandwidthMbps: 200, maxDowntimeMs: 100 } } : {}), out: '/tmp/x', startedAt: '', host: { kernel: 'k', cpus: 2, qemu: 'QEMU 10.0.2', accel: 'tcg' },
    },
    emulator: { nominalMbps: 1000, deliveredMbps: 300, rttMs: 198, queueMaxMs: 10, drops: 0 },
    migrations: retune
      ? [mig(1, { atMs: 1502, bandwidthMbps: 200, maxDowntimeMs: 100, ok: true, status: 200, state: 'precopy' }), mig(2, { atMs: 1550, bandwidthMbps: 200, maxDowntimeMs: 100, ok: false, status: 409, code: 'VMTC_MIGRATION_NOT_TUNABLE', state: 'completed' })]
      : [mig(1)],
    summary: { ping: pct, udp: pct, serial: pct, hypervisor: pct, nonLiveElapsedMs: null, liveClientMedianMs: 230, liveNonLiveRatio: null, liveOk: 2, liveTotal: 2 },
    findings: [], finishedAt: '', durationMs: 1,
  });

  it('show each retune and its answer when the run retuned, and nothing of it otherwise', () => {
    const table = summaryTable(result(true));
    expect(table.split('\n')[0]).toMatch(/memory\s+retuned$/);
    expect(table).toContain('retuned live 1 (mig_1): 200 Mbit/s, 100 ms at 1502 ms: ok (precopy)');
    expect(table).toContain('retuned live 2 (mig_2): 200 Mbit/s, 100 ms at 1550 ms: VMTC_MIGRATION_NOT_TUNABLE (completed)');
    const html = migrationTable(result(true));
    expect(html).toContain('<th>Retuned</th>');
    expect(html).toContain('VMTC_MIGRATION_NOT_TUNABLE');
    expect(summaryTable(result(false))).not.toContain('retuned');
    expect(migrationTable(result(false))).not.toContain('Retuned');
  });
});

describe('the disk options (--disk-mb, --load disk|both, --replica)', () => {
  const base = { 'rtt-ms': '198', 'rate-mbps': '1000', 'memory-mb': '256', load: 'none', converge: 'auto-converge', rounds: '2', 'max-downtime-ms': '30', 'serial-period-ms': '5', 'clock-period-us': '200' };

  it('defaults to a 1 GiB disk without a replica; 0 is no disk', () => {
    expect(TURNTABLE_DISK_MB).toBe(1024);
    expect(turntableOptions(base)).toMatchObject({ diskMb: 1024, replica: 'off' });
    expect(command.options['disk-mb']!.default).toBe('1024');
    const none = turntableOptions({ ...base, 'disk-mb': '0' });
    expect(none.diskMb).toBe(0);
    expect(none).not.toHaveProperty('replica');
  });

  it('takes the loads and replica plans, with the replica interval', () => {
    expect(turntableOptions({ ...base, 'disk-mb': '64', load: 'disk', replica: 'on', 'replica-interval-s': '5' })).toMatchObject({ diskMb: 64, load: 'disk', replica: 'on', replicaIntervalS: 5 });
    expect(turntableOptions({ ...base, load: 'both', replica: 'both' })).toMatchObject({ diskMb: 1024, load: 'both', replica: 'both' });
    expect(turntableOptions({ ...base, 'disk-mb': '0', load: 'dirty' })).toMatchObject({ load: 'dirty', diskMb: 0 });
  });

  it('refuses bad values and combinations with a coded error naming the option', () => {
    const bad = (o: Record<string, unknown>, field: string) => expect(thrown(() => turntableOptions({ ...base, ...o }))).toMatchObject({ code: 'VMTC_CONFIG_INVALID', field });
    bad({ load: 'io' }, 'load');
    bad({ 'disk-mb': '-1' }, 'disk-mb');
    bad({ 'disk-mb': '1.5' }, 'disk-mb');
    bad({ 'disk-mb': 'big' }, 'disk-mb');
    bad({ 'disk-mb': '8' }, 'disk-mb');
    bad({ 'disk-mb': '100000' }, 'disk-mb');
    bad({ 'disk-mb': '0', load: 'disk' }, 'load');
    bad({ 'disk-mb': '0', load: 'both' }, 'load');
    bad({ replica: 'yes' }, 'replica');
    bad({ 'disk-mb': '0', replica: 'on' }, 'replica');
    bad({ replica: 'on', 'replica-interval-s': '1' }, 'replica-interval-s');
    bad({ 'replica-interval-s': '10' }, 'replica-interval-s');
  });
});

describe('the disk: load, rounds and figures (lab/turntable/disk.ts)', () => {
  it('bounds the disk load by a window inside the disk', () => {
    expect(diskLoadFor(1024)).toEqual({ kibPerS: 1024, windowMb: 16, offsetMb: 8 });
    expect(diskLoadFor(64)).toEqual({ kibPerS: 1024, windowMb: 16, offsetMb: 8 });
    expect(diskLoadFor(16)).toEqual({ kibPerS: 1024, windowMb: 4, offsetMb: 8 });
    for (const mb of [16, 17, 33, 64, 1024, 65_536]) {
      const l = diskLoadFor(mb);
      expect(l.offsetMb + l.windowMb).toBeLessThanOrEqual(mb);
    }
    expect(dirtiesMemory('both') && dirtiesMemory('dirty') && !dirtiesMemory('disk') && !dirtiesMemory('none')).toBe(true);
    expect(writesDisk('both') && writesDisk('disk') && !writesDisk('dirty') && !writesDisk('none')).toBe(true);
  });

  it('pre-seeds only live rounds: all with on, odd ones with both, none with off', () => {
    const rounds = (plan: 'on' | 'off' | 'both') => [1, 2, 3, 4].map((r) => replicaForRound(plan, 'live', r));
    expect(rounds('on')).toEqual([true, true, true, true]);
    expect(rounds('both')).toEqual([true, false, true, false]);
    expect(rounds('off')).toEqual([false, false, false, false]);
    expect(replicaForRound('on', 'nonlive', 3)).toBe(false);
  });

  const prep = { replicaId: 'rep_1', seedBytes: 64 << 20, deltaBytes: 3 << 20, lastDeltaBytes: 2 << 20, deltas: 2, delayLineBytes: 70 << 20, seedMs: 4000 };

  it('with a replica, the disk at migration time is the deltas the move sent', () => {
    const rec = { steps: { incoming: { replica: { replicaId: 'rep_1', preSeededBytes: 67 << 20, precopyDeltaBytes: 1 << 20, lastDeltaBytes: 65_536, lastDeltaMs: 40, digestMs: 12, disks: 1 } } }, result: { transferredBytes: 1e8 } } as any;
    expect(diskFigures(rec, prep, 64, 2e8, 16 << 20)).toEqual({
      diskMb: 64, replica: true, replicaUsed: true, replicaId: 'rep_1', bytesAtMigration: (1 << 20) + 65_536, mirrorBytes: 0,
      precopyDeltaBytes: 1 << 20, followBytes: null, lastDeltaAtPauseBytes: 65_536, lastDeltaAtPauseMs: 40, digestMs: 12,
      seedBytes: 64 << 20, replicaDeltaBytes: 3 << 20, replicaLastDeltaBytes: 2 << 20, seedDelayLineBytes: 70 << 20, seedMs: 4000,
      delayLineBytes: 2e8, writtenBoundBytes: 16 << 20,
    });
  });

  it('with a replica the store followed, the catch-up delta and the mirrored writes count, and the pause sent nothing', () => {
    const rec = { steps: { incoming: { replica: { replicaId: 'rep_1', preSeededBytes: 67 << 20, precopyDeltaBytes: 1 << 20, catchUpBytes: 131_072, catchUpMs: 300, mirroredBytes: 4 << 20, lastDeltaBytes: 0, lastDeltaMs: 15, digestMs: 70, disks: 1 } } } } as any;
    expect(diskFigures(rec, prep, 64, 2e8, 16 << 20)).toMatchObject({ replicaUsed: true, bytesAtMigration: (1 << 20) + 131_072 + (4 << 20), followBytes: 131_072 + (4 << 20), lastDeltaAtPauseBytes: 0, lastDeltaAtPauseMs: 15 });
  });

  it('without one, it is what the mirror copied; a replica the move did not use is told apart', () => {
    const rec = { steps: { incoming: { storage: {} } }, result: { storageBytes: 1 << 30 } } as any;
    expect(diskFigures(rec, null, 1024, 3e9, 16 << 20)).toMatchObject({ replica: false, replicaUsed: false, bytesAtMigration: 1 << 30, mirrorBytes: 1 << 30, precopyDeltaBytes: null, seedBytes: null });
    expect(diskFigures(rec, prep, 1024, 3e9, 16 << 20)).toMatchObject({ replica: true, replicaUsed: false, bytesAtMigration: 1 << 30, seedBytes: 64 << 20 });
    expect(diskFigures(undefined, null, 64, 0, 0)).toMatchObject({ bytesAtMigration: 0, replicaUsed: false });
  });

  it('the summary compares with and without a replica, and the table shows it', () => {
    const mig = (round: number, used: boolean, bytes: number, udp: number): TurntableMigration => ({
      round, from: 'siteA', to: 'siteB', mode: 'live', ok: true, migrationId: `mig_${round}`, state: 'completed', reliable: true,
      downtimeMs: { hypervisor: 10, internal: null, serial: 100, ping: 100, udp },
      disk: diskFigures(used ? { steps: { incoming: { replica: { replicaId: 'r', preSeededBytes: 1, precopyDeltaBytes: bytes, lastDeltaBytes: 0, disks: 1 } } } } as any : { result: { storageBytes: bytes } } as any, used ? prep : null, 1024, bytes, 16 << 20),
    } as unknown as TurntableMigration);
    const ms = [mig(1, true, 2e6, 300), mig(2, false, 1e9, 900)];
    const s = summarize(ms);
    expect(s.disk).toMatchObject({ with: { n: 1, bytesAtMigration: { p50: 2e6 }, udp: { p50: 300 }, seedBytes: { p50: 64 << 20 } }, without: { n: 1, bytesAtMigration: { p50: 1e9 }, udp: { p50: 900 } } });
    expect(summarize(ms.map((m) => ({ ...m, disk: undefined })))).not.toHaveProperty('disk');
    const lines = diskLines({ config: { diskMb: 1024, diskFillMb: 1024, diskLoad: diskLoadFor(1024), replica: 'both' }, migrations: ms, summary: s } as unknown as TurntableResult).join('\n');
    expect(lines).toContain('replica both');
    expect(lines).toMatch(/with a replica \(1\): disk at migration median 2\.00 max 2\.00 MB, udp downtime median 300/);
    expect(lines).toMatch(/without \(1\): disk at migration median 1000\.00/);
    expect(diskLines({ config: {}, migrations: ms.map((m) => ({ ...m, disk: undefined })), summary: s } as unknown as TurntableResult)).toEqual([]);
    const html = diskSection({ config: { diskMb: 1024, diskFillMb: 1024, diskLoad: diskLoadFor(1024), replica: 'both' }, migrations: ms, summary: s } as unknown as TurntableResult);
    expect(html).toContain('<h2>Disk</h2>');
    expect(html).toContain('<span class="ok">used</span>');
    expect(html).toContain('none (mirror)');
    expect(html).toMatch(/With a replica \(1\): disk at migration median/);
    expect(diskSection({ config: {}, migrations: ms.map((m) => ({ ...m, disk: undefined })), summary: s } as unknown as TurntableResult)).toBe('');
  });
});
