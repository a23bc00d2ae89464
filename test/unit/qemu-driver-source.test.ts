// The QEMU driver's source side without QEMU: a QMP double and a ManualClock
// (test/helpers/qemu-double.ts). migrate() polls query-migrate on the driver's clock (or sooner, at a
// MIGRATION event), reports progress from it, ends on 'completed' (source postmigrate) or
// 'failed' (source running again), switches to post-copy when asked, and a cancel in flight ends
// it with the source running. Every migration pauses before its final state
// (pause-before-switchover) until the controller says continue (docs/design.md#switchover).
// Real QEMU: test/lab/qemu-migration.test.ts.
import { describe, expect, it } from 'vitest';
import type { MigrationProgress } from '../../src/common/agent-protocol.ts';
import { cleanupsAfterEach } from '../helpers/cleanups.ts';
import { driverUnderTest, idle, runUntilSettled, vmSpec, watch, type DriverUnderTest } from '../helpers/qemu-double.ts';

const cleanups = cleanupsAfterEach();
const URI = 'tcp:192.0.2.9:4444';
const ram = (transferred: number, pass: number) => ({ total: 1000, transferred, remaining: Math.max(0, 1000 - transferred), 'dirty-sync-count': pass, mbps: 80 });

async function running(t: DriverUnderTest, vmId: string) {
  expect((await t.driver.start(vmSpec(vmId))).state).toBe('running');
  return t.qmp(vmId);
}

describe('QEMU driver, source side (QMP double, manual clock)', () => {
  it('migrate() reports progress from query-migrate every pollMs and ends on completed, the source paused and primary', async () => {
    const t = driverUnderTest(cleanups, { pollMs: 200 });
    const q = await running(t, 'vm-1');
    const seen: { at: number; p: MigrationProgress }[] = [];
    const t0 = t.clock.now();
    const o = watch(t.driver.migrate('vm-1', URI, { migrationId: 'mig-1', bandwidthMbps: 80, maxDowntimeMs: 300, multifd: true, multifdChannels: 4 }, (p) => seen.push({ at: t.clock.now(), p })), t.clock);
    await idle(t.clock, () => o.settled);
    expect((await t.driver.describe('vm-1')).state).toBe('migrating');
    // Parameters in QEMU's units (bytes/s); the stream count comes with the migration's params.
    expect(q.argsOf('migrate-set-parameters')).toEqual([{ 'max-bandwidth': 10_000_000, 'downtime-limit': 300, 'multifd-channels': 4 }]);
    expect(q.argsOf('migrate')).toEqual([{ uri: URI }]);

    q.migration = { status: 'active', ram: ram(400, 1), 'expected-downtime': 30 };
    t.clock.advance(200);
    await idle(t.clock);
    q.migration = { status: 'active', ram: ram(900, 2) };
    t.clock.advance(200);
    await idle(t.clock);
    q.runState = 'postmigrate';
    q.migration = { status: 'completed', ram: ram(1100, 3), downtime: 42, 'total-time': 1234, 'setup-time': 5 };
    t.clock.advance(200);
    await runUntilSettled(t.clock, o, 1000);

    expect(seen.map((s) => [s.at - t0, s.p.status, s.p.transferredBytes])).toEqual([
      [0, 'setup', 0], [200, 'active', 400], [400, 'active', 900], [600, 'completed', 1100],
    ]);
    expect(seen[1]!.p).toMatchObject({ pass: 1, remainingBytes: 600, expectedDowntimeMs: 30, throughputMbps: 80, phase: 'ram' });
    expect(o.value).toMatchObject({ migrationId: 'mig-1', vmId: 'vm-1', status: 'completed', downtimeMs: 42, totalTimeMs: 1234, setupTimeMs: 5, transferredBytes: 1100 });
    expect(await t.driver.describe('vm-1')).toMatchObject({ state: 'postmigrate', migrationId: 'mig-1' });
    expect(q.commands()).not.toContain('cont');
    expect(await t.driver.migrationStatus('vm-1')).toMatchObject({ status: 'completed' });
  });

  it('a MIGRATION event that comes while the loop is querying QEMU is not lost: the completion is seen at once, not a poll later', async () => {
    const t = driverUnderTest(cleanups, { pollMs: 200 });
    const q = await running(t, 'vm-lw');
    const o = watch(t.driver.migrate('vm-lw', URI, { migrationId: 'mig-lw' }, () => undefined), t.clock);
    await idle(t.clock, () => o.settled);
    q.migration = { status: 'device', ram: ram(900, 2) };
    let fired = false;
    q.handlers.set('query-migrate', () => {
      const now = q.migration;
      // QEMU completes while it answers this query: the event arrives before the loop pauses.
      if (now?.status === 'device' && !fired) {
        fired = true;
        q.runState = 'postmigrate';
        q.migration = { status: 'completed', ram: ram(1000, 2), downtime: 5, 'total-time': 50 };
        q.event('MIGRATION', { status: 'completed' });
      }
      return now;
    });
    const t0 = t.clock.now();
    t.clock.advance(200);
    await idle(t.clock, () => o.settled);
    await runUntilSettled(t.clock, o, 1000);
    expect(fired).toBe(true);
    expect(o.value).toMatchObject({ status: 'completed' });
    // Seen at the poll that found 'device' plus a few 10 ms waits, not a whole 200 ms poll later.
    expect(t.clock.now() - t0).toBeLessThan(400);
  });

  it('completed before QEMU filled in its timings: migrate() does not wait for them, the downtime is taken from the STOP and MIGRATION events', async () => {
    // A held destination runs only once the controller has this answer: QEMU was seen to take
    // 200 ms and more to fill in total-time after it said completed.
    const t = driverUnderTest(cleanups, { pollMs: 200 });
    const q = await running(t, 'vm-tt');
    const o = watch(t.driver.migrate('vm-tt', URI, { migrationId: 'mig-tt' }, () => undefined), t.clock);
    await idle(t.clock, () => o.settled);
    q.event('STOP');
    await idle(t.clock);
    t.clock.advance(57);
    q.runState = 'postmigrate';
    q.migration = { status: 'completed', ram: ram(1000, 2) };
    q.event('MIGRATION', { status: 'completed' });
    await idle(t.clock);
    await runUntilSettled(t.clock, o, 1000);
    expect(o.value).toMatchObject({ status: 'completed', downtimeMs: 57 });
    expect(o.value?.totalTimeMs).toBeUndefined();
  });

  it('completed while QEMU still says finish-migrate: migrate() returns only once the source is postmigrate (never reported as migrating)', async () => {
    // QEMU sets the migration `completed` before it moves the source's run state from
    // finish-migrate to postmigrate; a CI run once read the source as 'migrating' after a
    // completed result.
    const t = driverUnderTest(cleanups, { pollMs: 200 });
    const q = await running(t, 'vm-fm');
    const o = watch(t.driver.migrate('vm-fm', URI, { migrationId: 'mig-fm' }, () => undefined), t.clock);
    await idle(t.clock, () => o.settled);
    q.runState = 'finish-migrate';
    q.migration = { status: 'completed', ram: ram(1000, 2), downtime: 20, 'total-time': 900 };
    t.clock.advance(200);
    await idle(t.clock, () => o.settled);
    t.clock.advance(50);
    await idle(t.clock, () => o.settled);
    expect(o.settled).toBe(false);
    q.runState = 'postmigrate';
    await runUntilSettled(t.clock, o, 1000);
    expect(o.value).toMatchObject({ status: 'completed', downtimeMs: 20 });
    expect((await t.driver.describe('vm-fm')).state).toBe('postmigrate');
  });

  it('a MIGRATION event wakes the poll at once instead of waiting for the next one', async () => {
    const t = driverUnderTest(cleanups, { pollMs: 10_000 });
    const q = await running(t, 'vm-2');
    const t0 = t.clock.now();
    const o = watch(t.driver.migrate('vm-2', URI, { migrationId: 'mig-2' }, () => undefined), t.clock);
    await idle(t.clock, () => o.settled);
    q.runState = 'postmigrate';
    q.migration = { status: 'completed', ram: ram(1000, 1), downtime: 7, 'total-time': 99 };
    q.event('MIGRATION', { status: 'completed' });
    await idle(t.clock, () => o.settled);
    expect(o.value?.status).toBe('completed');
    expect(o.at! - t0).toBe(0);
  });

  it('a failed migration ends with VMTC_QEMU_MIGRATION_FAILED and QEMU\'s reason, and the source runs again', async () => {
    const t = driverUnderTest(cleanups);
    const q = await running(t, 'vm-3');
    const o = watch(t.driver.migrate('vm-3', URI, { migrationId: 'mig-3', suspend: true }, () => undefined), t.clock);
    await idle(t.clock, () => o.settled);
    // Non-live: paused before the first page.
    expect(q.commands()).toContain('stop');
    q.migration = { status: 'failed', 'error-desc': 'Unable to write to socket: Connection reset by peer', ram: ram(300, 1) };
    await runUntilSettled(t.clock, o, 1000);
    expect(o.value?.status).toBe('failed');
    expect(o.value?.error).toMatchObject({ code: 'VMTC_QEMU_MIGRATION_FAILED', details: { desc: 'Unable to write to socket: Connection reset by peer' } });
    expect(q.commands().filter((c) => c === 'cont')).toHaveLength(1);
    expect((await t.driver.describe('vm-3')).state).toBe('running');
  });

  it('switches to post-copy once the pass count reaches postcopyAfterPass, and only once', async () => {
    const t = driverUnderTest(cleanups);
    const q = await running(t, 'vm-4');
    const o = watch(t.driver.migrate('vm-4', URI, { migrationId: 'mig-4', postcopy: true }, () => undefined), t.clock);
    await idle(t.clock, () => o.settled);
    expect(q.argsOf('migrate-set-capabilities')[0]?.capabilities).toContainEqual({ capability: 'postcopy-ram', state: true });
    q.migration = { status: 'active', ram: ram(500, 1) };
    t.clock.advance(200);
    await idle(t.clock);
    expect(q.commands()).not.toContain('migrate-start-postcopy');
    q.migration = { status: 'active', ram: ram(900, 2) };
    t.clock.advance(200);
    await idle(t.clock);
    t.clock.advance(200);
    await idle(t.clock);
    expect(q.commands().filter((c) => c === 'migrate-start-postcopy')).toHaveLength(1);
    q.runState = 'postmigrate';
    q.migration = { status: 'completed', ram: ram(1000, 2), 'total-time': 10 };
    await runUntilSettled(t.clock, o, 1000);
    expect(o.value?.status).toBe('completed');
  });

  it('cancelMigration during migrate: migrate_cancel, wait until QEMU has left the active states, migrate() ends cancelled, source running', async () => {
    const t = driverUnderTest(cleanups);
    const q = await running(t, 'vm-5');
    const m = watch(t.driver.migrate('vm-5', URI, { migrationId: 'mig-5' }, () => undefined), t.clock);
    await idle(t.clock, () => m.settled);
    q.migration = { status: 'active', ram: ram(200, 1) };
    t.clock.advance(200);
    await idle(t.clock);
    const c = watch(t.driver.cancelMigration('vm-5'), t.clock);
    // QEMU takes a while to unwind: 'cancelling' for the next 300 ms of the clock.
    await runUntilSettled(t.clock, c, 300);
    expect(c.settled).toBe(false);
    expect(q.migration.status).toBe('cancelling');
    q.migration = { status: 'cancelled', ram: ram(250, 1) };
    await runUntilSettled(t.clock, c, 1000);
    expect(c.error).toBeUndefined();
    await runUntilSettled(t.clock, m, 1000);
    expect(m.value).toMatchObject({ status: 'cancelled', transferredBytes: 250 });
    expect(q.commands().filter((x) => x === 'migrate_cancel')).toHaveLength(1);
    expect((await t.driver.describe('vm-5')).state).toBe('running');
  });

  it('a cancel QEMU never finishes fails with VMTC_QMP_TIMEOUT after 30 s of the clock; one after completion is too late', async () => {
    const t = driverUnderTest(cleanups);
    const q = await running(t, 'vm-6');
    const m = watch(t.driver.migrate('vm-6', URI, { migrationId: 'mig-6' }, () => undefined), t.clock);
    await idle(t.clock, () => m.settled);
    q.migration = { status: 'active', ram: ram(200, 1) };
    q.handlers.set('migrate_cancel', () => ({})); // accepted, and nothing happens
    const t0 = t.clock.now();
    const c = watch(t.driver.cancelMigration('vm-6'), t.clock);
    await runUntilSettled(t.clock, c, 60_000);
    expect(c.error?.code).toBe('VMTC_QMP_TIMEOUT');
    expect(c.error?.details).toMatchObject({ command: 'migrate_cancel', status: 'active' });
    expect(c.at! - t0).toBeGreaterThan(30_000);
    expect(c.at! - t0).toBeLessThanOrEqual(30_050);

    q.runState = 'postmigrate';
    q.migration = { status: 'completed', ram: ram(1000, 2), 'total-time': 10 };
    await runUntilSettled(t.clock, m, 1000);
    expect(m.value?.status).toBe('completed');
    await expect(t.driver.cancelMigration('vm-6')).rejects.toMatchObject({ code: 'VMTC_QEMU_CANCEL_TOO_LATE' });
  });

  it('storage copy: mirrors report disk progress; a cancel before the RAM moves ends the mirrors and keeps the source running', async () => {
    const t = driverUnderTest(cleanups);
    expect((await t.driver.start(vmSpec('vm-7', { disks: [{ path: '/srv/images/vm-7.qcow2', format: 'qcow2' }] }))).state).toBe('running');
    const q = await t.qmp('vm-7');
    const job = 'vmtc-mirror-disk0';
    let jobs = [{ device: job, type: 'mirror', len: 1000, offset: 100, ready: false }];
    q.handlers.set('query-block-jobs', () => structuredClone(jobs));
    q.handlers.set('block-job-cancel', (a) => {
      if (a?.force) {
        jobs = [];
        q.event('BLOCK_JOB_CANCELLED', { device: job, offset: 450 });
      }
      return {};
    });
    const seen: MigrationProgress[] = [];
    const storage = { nbd: { host: '192.0.2.7', port: 10809 }, exports: [{ device: 'disk0', name: 'disk0' }] };
    const m = watch(t.driver.migrate('vm-7', URI, { migrationId: 'mig-7', storage, bandwidthMbps: 8 }, (p) => seen.push(p)), t.clock);
    await idle(t.clock, () => m.settled);
    expect(q.argsOf('migrate-set-capabilities')[0]?.capabilities).toContainEqual({ capability: 'pause-before-switchover', state: true });
    expect(q.argsOf('drive-mirror')).toEqual([{ 'job-id': job, device: 'disk0', target: 'nbd://192.0.2.7:10809/disk0', format: 'raw', mode: 'existing', sync: 'full', speed: 1_000_000, 'buf-size': 1_048_576 }]);
    jobs[0]!.offset = 400;
    t.clock.advance(200);
    await idle(t.clock);
    expect(seen.map((p) => [p.phase, p.transferredBytes, p.totalBytes])).toEqual([['storage', 100, 1000], ['storage', 400, 1000]]);

    const c = watch(t.driver.cancelMigration('vm-7'), t.clock);
    await runUntilSettled(t.clock, c, 5000);
    expect(c.error).toBeUndefined();
    await runUntilSettled(t.clock, m, 5000);
    expect(m.value).toMatchObject({ status: 'cancelled', storageBytes: 450 });
    // The RAM never moved; the mirrors were forced off.
    expect(q.commands()).not.toContain('migrate');
    expect(q.argsOf('block-job-cancel')).toContainEqual({ device: job, force: true });
    expect((await t.driver.describe('vm-7')).state).toBe('running');
  });

  it('pauses before the switchover: reports pre-switchover and sends migrate-continue only when told', async () => {
    const t = driverUnderTest(cleanups, { pollMs: 200 });
    const q = await running(t, 'vm-9');
    const seen: MigrationProgress[] = [];
    const m = watch(t.driver.migrate('vm-9', URI, { migrationId: 'mig-9' }, (p) => seen.push(p)), t.clock);
    await idle(t.clock, () => m.settled);
    expect(q.argsOf('migrate-set-capabilities')[0]?.capabilities).toContainEqual({ capability: 'pause-before-switchover', state: true });
    // Not there yet: a continue is refused.
    await expect(t.driver.continueMigration('vm-9', 'mig-9')).rejects.toMatchObject({ code: 'VMTC_QEMU_BAD_STATE' });
    q.runState = 'finish-migrate';
    q.migration = { status: 'pre-switchover', ram: ram(990, 3) };
    t.clock.advance(200);
    await idle(t.clock);
    expect(seen.at(-1)).toMatchObject({ status: 'pre-switchover', transferredBytes: 990 });
    // QEMU waits, and so does the driver, however long the decision takes.
    for (let i = 0; i < 10; i++) {
      t.clock.advance(200);
      await idle(t.clock);
    }
    expect(m.settled).toBe(false);
    expect(q.commands()).not.toContain('migrate-continue');
    await expect(t.driver.continueMigration('vm-9', 'other-migration')).rejects.toMatchObject({ code: 'VMTC_QEMU_BAD_STATE' });
    await t.driver.continueMigration('vm-9', 'mig-9');
    await t.driver.continueMigration('vm-9', 'mig-9');
    expect(q.argsOf('migrate-continue')).toEqual([{ state: 'pre-switchover' }]);
    // Past the switchover no cancel: the final state is on its way.
    q.migration = { status: 'device', ram: ram(1000, 3) };
    await expect(t.driver.cancelMigration('vm-9')).rejects.toMatchObject({ code: 'VMTC_QEMU_CANCEL_TOO_LATE' });
    expect(q.commands()).not.toContain('migrate_cancel');
    q.runState = 'postmigrate';
    q.migration = { status: 'completed', ram: ram(1000, 3), downtime: 20, 'total-time': 900 };
    await runUntilSettled(t.clock, m, 1000);
    expect(m.value).toMatchObject({ status: 'completed', downtimeMs: 20 });
    expect((await t.driver.describe('vm-9')).state).toBe('postmigrate');
  });

  it('a cancel while paused before the switchover ends the migration without the final state; the source runs', async () => {
    const t = driverUnderTest(cleanups, { pollMs: 200 });
    const q = await running(t, 'vm-10');
    const m = watch(t.driver.migrate('vm-10', URI, { migrationId: 'mig-10' }, () => undefined), t.clock);
    await idle(t.clock, () => m.settled);
    q.runState = 'finish-migrate';
    q.migration = { status: 'pre-switchover', ram: ram(990, 3) };
    t.clock.advance(200);
    await idle(t.clock);
    q.handlers.set('migrate_cancel', () => { q.migration = { status: 'cancelled', ram: ram(990, 3) }; return {}; });
    const c = watch(t.driver.cancelMigration('vm-10'), t.clock);
    await runUntilSettled(t.clock, c, 1000);
    expect(c.error).toBeUndefined();
    await runUntilSettled(t.clock, m, 1000);
    expect(m.value?.status).toBe('cancelled');
    expect(q.commands()).not.toContain('migrate-continue');
    expect(q.commands()).toContain('cont');
    expect((await t.driver.describe('vm-10')).state).toBe('running');
  });

  it('post-copy: the pause comes before the switch; a failure after it leaves the source paused (the destination may run the VM)', async () => {
    const t = driverUnderTest(cleanups, { pollMs: 200 });
    const q = await running(t, 'vm-11');
    const m = watch(t.driver.migrate('vm-11', URI, { migrationId: 'mig-11', postcopy: true }, () => undefined), t.clock);
    await idle(t.clock, () => m.settled);
    q.migration = { status: 'active', ram: ram(900, 2) };
    t.clock.advance(200);
    await idle(t.clock);
    expect(q.commands()).toContain('migrate-start-postcopy');
    q.runState = 'finish-migrate';
    q.migration = { status: 'pre-switchover', ram: ram(900, 2) };
    t.clock.advance(200);
    await idle(t.clock);
    await t.driver.continueMigration('vm-11', 'mig-11');
    q.migration = { status: 'postcopy-active', ram: ram(950, 2) };
    t.clock.advance(200);
    await idle(t.clock);
    q.migration = { status: 'failed', 'error-desc': 'Detected IO failure for postcopy', ram: ram(960, 2) };
    await runUntilSettled(t.clock, m, 1000);
    expect(m.value).toMatchObject({ status: 'failed', error: { code: 'VMTC_QEMU_MIGRATION_FAILED', details: { postcopy: true, sourcePaused: true } } });
    expect(q.commands()).not.toContain('cont');
    expect((await t.driver.describe('vm-11')).state).not.toBe('running');
  });

  it('storage copy: at the pause the mirrors take their last delta first, then the controller is told and decides', async () => {
    const t = driverUnderTest(cleanups, { pollMs: 200 });
    expect((await t.driver.start(vmSpec('vm-12', { disks: [{ path: '/srv/images/vm-12.qcow2', format: 'qcow2' }] }))).state).toBe('running');
    const q = await t.qmp('vm-12');
    const job = 'vmtc-mirror-disk0';
    let jobs = [{ device: job, type: 'mirror', len: 1000, offset: 1000, ready: true }];
    q.handlers.set('query-block-jobs', () => structuredClone(jobs));
    q.handlers.set('block-job-cancel', (a) => {
      // Without force on a READY mirror: the last delta is copied and the job completes.
      if (!a?.force) {
        jobs = [];
        q.event('BLOCK_JOB_COMPLETED', { device: job, offset: 1100 });
      }
      return {};
    });
    const seen: MigrationProgress[] = [];
    const storage = { nbd: { host: '192.0.2.7', port: 10809 }, exports: [{ device: 'disk0', name: 'disk0' }] };
    const m = watch(t.driver.migrate('vm-12', URI, { migrationId: 'mig-12', storage }, (p) => seen.push(p)), t.clock);
    await idle(t.clock, () => q.commands().includes('migrate'));
    q.runState = 'finish-migrate';
    q.migration = { status: 'pre-switchover', ram: ram(990, 3) };
    for (let i = 0; i < 50 && !seen.some((p) => p.status === 'pre-switchover'); i++) {
      t.clock.advance(10);
      await idle(t.clock);
    }
    // Reported (a poll may repeat it: the job's event woke the loop once more), after the sync.
    expect(seen.filter((p) => p.status === 'pre-switchover').length).toBeGreaterThanOrEqual(1);
    expect(q.argsOf('block-job-cancel')).toEqual([{ device: job }]);
    expect(q.commands()).not.toContain('migrate-continue');
    await t.driver.continueMigration('vm-12', 'mig-12');
    const cmds = q.commands();
    expect(cmds.indexOf('block-job-cancel')).toBeLessThan(cmds.indexOf('migrate-continue'));
    q.runState = 'postmigrate';
    q.migration = { status: 'completed', ram: ram(1000, 3), 'total-time': 50 };
    await runUntilSettled(t.clock, m, 1000);
    expect(m.value).toMatchObject({ status: 'completed', storageBytes: 1100 });
  });

  it('refuses storage params that leave a writable disk out, before anything starts', async () => {
    const t = driverUnderTest(cleanups);
    await t.driver.start(vmSpec('vm-8', { disks: [{ path: '/srv/a.qcow2', format: 'qcow2' }, { path: '/srv/b.raw', format: 'raw' }] }));
    const q = await t.qmp('vm-8');
    const storage = { nbd: { host: '192.0.2.7', port: 10809 }, exports: [{ device: 'disk0', name: 'disk0' }] };
    await expect(t.driver.migrate('vm-8', URI, { migrationId: 'mig-8', storage }, () => undefined)).rejects.toMatchObject({ code: 'VMTC_QEMU_BAD_SPEC', details: { field: 'params.storage' } });
    expect(q.commands()).not.toContain('migrate-set-capabilities');
    expect((await t.driver.describe('vm-8')).state).toBe('running');
  });
});
