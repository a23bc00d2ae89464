// The client verbs' formatting, pure: the progress line fitted to a terminal's width (never a
// wrapped line, never more than 100 %, an ETA), word-wrapping for terminals, the DURATION column
// of an in-flight migration, and the once-only usage error of the common parser.
import { describe, it, expect } from 'vitest';
import { etaSeconds, fmtDuration, fmtProgressLine, progressPercent } from '../../src/cli/client/progress.ts';
import { formatMigrationTable, wrapText, type MigrationView } from '../../src/cli/client/format.ts';
import { usableWidth } from '../../src/cli/client/watch.ts';
import { formatCliError, parseCommandArgs, suggestOptions, type Command } from '../../src/common/command.ts';
import { VmtcError } from '../../src/common/errors.ts';
import { migrate } from '../../src/cli/client/commands.ts';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

/** A pre-copy in its third pass: more sent than the guest's memory, a quarter left. */
const busy = {
  status: 'active', totalBytes: 4 * GiB, transferredBytes: 5.2 * GiB, remainingBytes: 1 * GiB,
  dirtyPagesRate: 2950, pass: 3, throughputMbps: 800, expectedDowntimeMs: 310,
};

describe('progress line', () => {
  it('fits 40, 60 and 200 columns; the wider, the more it says; the first fields are always there', () => {
    const at = (w: number) => fmtProgressLine('precopy', busy, w)!;
    for (const w of [40, 60, 200]) {
      expect(at(w).length).toBeLessThanOrEqual(w);
      expect(at(w)).toMatch(/^precopy {2}75% {2}/);
    }
    expect(at(200)).toBe('precopy  75%  3.0/4.0 GiB  800 Mbit/s  left 1.0 GiB  dirty 3.0k pg/s  pass 3  ETA 11s  sent 5.2 GiB  downtime ~310 ms');
    // Narrower: the least useful go first (downtime, sent, dirty, left, pass), rate and ETA stay.
    expect(at(60)).toBe('precopy  75%  3.0/4.0 GiB  800 Mbit/s  pass 3  ETA 11s');
    expect(at(40)).toBe('precopy  75%  800 Mbit/s  ETA 11s');
    expect(at(200).length).toBeGreaterThan(at(60).length);
  });

  it('a terminal narrower than the essentials gets them cut, never a wrapped line', () => {
    expect(fmtProgressLine('cold_importing', { ...busy, phase: 'download' }, 12)).toBe('cold_importi');
    expect(usableWidth(60)).toBe(59);
    expect(usableWidth(undefined)).toBe(79);
  });

  it('never shows more than 100 %, and 100 % only when nothing remains', () => {
    expect(progressPercent({ totalBytes: 100, transferredBytes: 250, remainingBytes: 1 })).toBe(99);
    expect(progressPercent({ totalBytes: 100, transferredBytes: 250, remainingBytes: 0 })).toBe(100);
    expect(progressPercent({ totalBytes: 100, transferredBytes: 250 })).toBe(100);
    expect(progressPercent({ totalBytes: 100, transferredBytes: 40 })).toBe(40);
    expect(progressPercent({ totalBytes: 100, transferredBytes: 10, remainingBytes: 150 })).toBe(0);
    expect(progressPercent({ totalBytes: 0, transferredBytes: 10 })).toBeUndefined();
    // Seeded random records: the percentage stays in 0..100 and the line within its width.
    let seed = 42;
    const rnd = () => { seed = (seed * 1103515245 + 12345) % 2 ** 31; return seed / 2 ** 31; };
    for (let i = 0; i < 2000; i++) {
      const total = Math.floor(rnd() * 8 * GiB);
      const p = { totalBytes: total, transferredBytes: Math.floor(rnd() * 3 * total), ...(rnd() < 0.7 ? { remainingBytes: Math.floor((rnd() * 1.5 - 0.2) * total) } : {}), throughputMbps: rnd() * 2000, pass: 1 + Math.floor(rnd() * 9) };
      const w = 10 + Math.floor(rnd() * 200);
      const line = fmtProgressLine('precopy', p, w)!;
      expect(line.length).toBeLessThanOrEqual(w);
      const pct = progressPercent(p);
      if (pct !== undefined) expect(pct).toBeGreaterThanOrEqual(0);
      if (pct !== undefined) expect(pct).toBeLessThanOrEqual(100);
      for (const m of line.matchAll(/(\d+)%/g)) expect(Number(m[1])).toBeLessThanOrEqual(100);
    }
  });

  it('ETA is what remains at the current rate, and absent without a rate', () => {
    expect(etaSeconds({ remainingBytes: 100e6, throughputMbps: 800 })).toBeCloseTo(1, 6);
    expect(fmtDuration(etaSeconds({ remainingBytes: GiB, throughputMbps: 80 })!)).toBe('1m48s');
    expect(etaSeconds({ remainingBytes: GiB, throughputMbps: 0 })).toBeUndefined();
    expect(etaSeconds({ remainingBytes: 0, throughputMbps: 100 })).toBeUndefined();
    expect(etaSeconds({ totalBytes: 200e6, transferredBytes: 100e6, throughputMbps: 8 })).toBeCloseTo(100, 6);
    expect(fmtDuration(0.2)).toBe('1s');
    expect(fmtDuration(3725)).toBe('1h02m');
    expect(fmtDuration(1e7)).toBe('>99h');
    expect(fmtProgressLine('precopy', { totalBytes: GiB, transferredBytes: 0, remainingBytes: GiB, throughputMbps: 0 })).not.toMatch(/ETA/);
  });
});

describe('text for a terminal', () => {
  it('wraps long lines at words with a hanging indent, every line within the width, nothing lost', () => {
    const line = 'result: downtime 859 ms (hypervisor), transferred 84.0 MiB, copy time 17.66 s, setup 20 ms';
    const w = wrapText(line, 40);
    for (const l of w.split('\n')) expect(l.length).toBeLessThanOrEqual(40);
    expect(w.split('\n')[1]).toMatch(/^ {2}\S/);
    expect(w.replace(/\s+/g, ' ')).toBe(line);
    expect(wrapText('short', 40)).toBe('short');
    const long = wrapText(`x ${'y'.repeat(100)}`, 30);
    for (const l of long.split('\n')) expect(l.length).toBeLessThanOrEqual(30);
  });
});

describe('vmtc status table', () => {
  const base = { vmId: 'vm1', sourceHostId: 'A', destinationHostId: 'B', mode: 'live' as const, createdAt: '2030-01-01T00:00:00.000Z' };
  it('DURATION of an in-flight migration is the time since it started, not since its last update', () => {
    const inFlight: MigrationView = { ...base, id: 'mig-1', state: 'precopy', updatedAt: '2030-01-01T00:00:02.000Z' };
    const done: MigrationView = { ...base, id: 'mig-2', state: 'completed', updatedAt: '2030-01-01T00:00:03.000Z' };
    const now = Date.parse('2030-01-01T00:00:12.500Z');
    const t = formatMigrationTable([inFlight, done], { now });
    expect(t).toMatch(/^mig-1\s.*\sprecopy\s+\S+\s+12\.50 s/m);
    expect(t).toMatch(/^mig-2\s.*\scompleted\s+\S+\s+3\.00 s/m);
  });

  it('-o wide adds columns; an empty cell is "-" so every row splits into the same fields', () => {
    const m: MigrationView = { ...base, id: 'mig-3', state: 'completed', updatedAt: '2030-01-01T00:00:01.000Z', path: 'live', project: 'demo', result: { transferredBytes: 3 * MiB, downtimeMs: 12 } };
    const wide = formatMigrationTable([m], { wide: true, now: 0 }).split('\n');
    expect(wide[0]!.split(/\s{2,}/)).toEqual(['ID', 'VM', 'FROM', 'TO', 'MODE', 'STATE', 'CREATED', 'DURATION', 'ERROR', 'PATH', 'PROJECT', 'TRANSFERRED', 'DOWNTIME', 'UPDATED']);
    expect(wide[1]!.split(/\s{2,}/)).toEqual(['mig-3', 'vm1', 'A', 'B', 'live', 'completed', base.createdAt, '1.00 s', '-', 'live', 'demo', '3.0 MiB', '12 ms', '2030-01-01T00:00:01.000Z']);
  });
});

describe('the common parser', () => {
  const cmd: Command = {
    name: 'svc', summary: 's', options: {
      to: { type: 'string', help: 'x' },
      'log-level': { type: 'string', default: 'info', help: 'pino log level' },
      'bandwidth-mbps': { type: 'string', help: 'x' },
    }, run: async () => 0,
  };
  const refusal = (argv: string[]) => {
    try {
      parseCommandArgs(cmd, argv, {});
    } catch (e) {
      return formatCliError(e);
    }
    throw new Error('not refused');
  };

  it('says an unknown option once, with what it probably meant', () => {
    const line = refusal(['-x', 'sd-1']);
    expect(line).toBe("error VMTC_CONFIG_INVALID: vmtc svc: unknown option '-x'");
    expect(refusal(['--bandwith-mbps', '3'])).toBe("error VMTC_CONFIG_INVALID: vmtc svc: unknown option '--bandwith-mbps' (did you mean --bandwidth-mbps?)");
    expect(refusal(['--to'])).toBe('error VMTC_CONFIG_INVALID: vmtc svc: --to needs a value');
    // vmtc migrate's -t is --to; another letter is a mistake said once.
    expect(parseCommandArgs(migrate, ['vm1', '-t', 'sd-1'], {}).values.to).toBe('sd-1');
    expect(suggestOptions(migrate, '-m')).toEqual(['--mode', '--max-downtime-ms', '--multifd']);
  });

  it('prints details only where the message does not already say them', () => {
    expect(formatCliError(new VmtcError('VMTC_X', 400, "bad '-q'", { option: '-q', field: 'f' }))).toBe(`error VMTC_X: bad '-q' {"field":"f"}`);
  });

  it('--log-level: the flag, else $VMTC_LOG_LEVEL, else the default', () => {
    expect(parseCommandArgs(cmd, [], {}).values['log-level']).toBe('info');
    expect(parseCommandArgs(cmd, [], { VMTC_LOG_LEVEL: 'warn' }).values['log-level']).toBe('warn');
    expect(parseCommandArgs(cmd, ['--log-level', 'debug'], { VMTC_LOG_LEVEL: 'warn' }).values['log-level']).toBe('debug');
    expect(parseCommandArgs(cmd, [], { VMTC_LOG_LEVEL: '' }).values['log-level']).toBe('info');
  });
});
