// The turntable's disk in CI (docs/lab.md "The turntable's disk"): one live round with a small
// data disk that the guest writes, and a replica pre-seeded at the destination across a lightpath
// of its own (lab/turntable/disk.ts), run as people run it — `vmtc turntable` as a child process.
// Checked in turntable.json: the move used the replica, the disk bytes it moved are bounded by
// what the guest's load can dirty between two syncs, the seed is the disk's data, and the seed and
// the migration's bytes crossed the delay line (its stats count them). No wall-clock assertions.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TurntableResult } from '../../lab/turntable/types.ts';
import { listNetns, runTurntableCli, type TurntableRun } from './turntable-cli.ts';

const DISK_MB = 64;
const MiB = 1024 * 1024;
let r: TurntableResult | undefined;
let stdout = '';
let stderr = '';
let code: number | null = null;
let labsBefore: string[] = [];


let run: TurntableRun | undefined;
beforeAll(async () => {
  run = await runTurntableCli(['--rounds', '1', '--no-nonlive', '--memory-mb', '128', '--rtt-ms', '20',
    '--disk-mb', String(DISK_MB), '--load', 'disk', '--replica', 'on', '--replica-interval-s', '5'], 'vmtc-turntable-disk-');
  ({ code, stdout, stderr, netnsBefore: labsBefore } = run);
  r = run.result!;
}, 480_000);

afterAll(() => run?.remove());

describe('vmtc turntable --disk-mb 64 --load disk --replica on (1 round)', () => {
  it('exits 0 and prints the disk table', () => {
    expect({ code, tail: stderr.slice(-3000) }).toMatchObject({ code: 0 });
    expect(stderr).toMatch(/seeding replica rep_\S+ at siteB/);
    expect(stdout).toMatch(/disk 64 MiB .*replica on/);
    expect(stdout).toMatch(/with a replica \(1\): disk at migration median/);
  });

  it('records the disk, the load and the replica plan in the config', () => {
    expect(r!.config).toMatchObject({ load: 'disk', diskMb: DISK_MB, diskFillMb: DISK_MB, replica: 'on', replicaIntervalS: 5, diskLoad: { kibPerS: 1024, windowMb: 16, offsetMb: 8 } });
  });

  it('the live move committed using the replica, the store followed the disk, and the pause sent none of it', () => {
    const m = r!.migrations[0]!;
    expect({ ok: m.ok, state: m.state, error: m.error }).toMatchObject({ ok: true, state: 'completed' });
    const d = m.disk!;
    expect(d).toMatchObject({ diskMb: DISK_MB, replica: true, replicaUsed: true, mirrorBytes: 0 });
    expect(d.replicaId).toMatch(/^rep_/);
    const window = 16 * MiB;
    expect(d.writtenBoundBytes).toBe(window);
    // The pre-copy delta holds at most the window the guest writes in. Then the store followed
    // the disk (docs/disks.md#following): the catch-up delta and every write the mirror carried
    // (followBytes), and nothing was left for the pause.
    expect(d.precopyDeltaBytes).toBeLessThanOrEqual(window);
    expect(d.followBytes).not.toBeNull();
    expect(d.lastDeltaAtPauseBytes).toBe(0);
    expect(d.bytesAtMigration).toBe(d.precopyDeltaBytes! + d.followBytes! + d.lastDeltaAtPauseBytes!);
    expect(d.bytesAtMigration).toBeLessThan(DISK_MB * MiB);
  });

  it('seeded the whole disk before, then one periodic delta of what the guest wrote, all across the delay line', () => {
    const d = r!.migrations[0]!.disk!;
    // The disk is written whole before the guest starts: the seed is its data.
    expect(d.seedBytes).toBeGreaterThanOrEqual(DISK_MB * MiB);
    expect(d.seedBytes).toBeLessThanOrEqual(DISK_MB * MiB * 1.05);
    // The guest's load writes 1 MiB/s: the periodic delta after the seed carried some of it.
    expect(d.replicaDeltaBytes).toBeGreaterThan(0);
    expect(d.replicaLastDeltaBytes).toBeGreaterThan(0);
    expect(d.replicaLastDeltaBytes).toBeLessThanOrEqual(16 * MiB);
    // The seeding lightpath's delay line carried the seed and the deltas (plus framing and the
    // TCP acknowledgements the other way).
    const sent = d.seedBytes! + d.replicaDeltaBytes!;
    expect(d.seedDelayLineBytes).toBeGreaterThanOrEqual(sent);
    expect(d.seedDelayLineBytes).toBeLessThan(sent * 1.3 + 4 * MiB);
    // The migration's delay line carried the memory and the deltas.
    const m = r!.migrations[0]!;
    expect(d.delayLineBytes).toBeGreaterThanOrEqual(m.bytes + d.bytesAtMigration);
  });

  it('summarises with vs without a replica', () => {
    expect(r!.summary.disk!.with.n).toBe(1);
    expect(r!.summary.disk!.without.n).toBe(0);
    expect(r!.summary.disk!.with.bytesAtMigration.p50).toBe(r!.migrations[0]!.disk!.bytesAtMigration);
  });

  it('leaves no namespace and no seeding lightpath behind', () => {
    expect(listNetns().filter((n) => !labsBefore.includes(n))).toEqual([]);
  });
});
