// The QEMU driver's control of a running migration without QEMU (QMP double, manual clock;
// test/helpers/qemu-double.ts): tuneMigration sets max-bandwidth and downtime-limit and answers
// with what query-migrate-parameters reads back; forceComplete 'pause' stops the guest (and a
// migration that then fails leaves it running again), 'postcopy' switches once and only with the
// capability; both are refused once the switchover was continued. Real QEMU:
// test/lab/qemu-migration-control.test.ts.
import { describe, expect, it } from 'vitest';
import { cleanupsAfterEach } from '../helpers/cleanups.ts';
import { driverUnderTest, idle, runUntilSettled, vmSpec, watch, type DriverUnderTest } from '../helpers/qemu-double.ts';

const cleanups = cleanupsAfterEach();
const URI = 'tcp:192.0.2.9:4444';
const ram = (transferred: number, pass: number) => ({ total: 1000, transferred, remaining: Math.max(0, 1000 - transferred), 'dirty-sync-count': pass, mbps: 8 });

/** A VM migrating (pre-copy active, pass 1) with these params. */
async function migrating(t: DriverUnderTest, vmId: string, params: { postcopy?: boolean; bandwidthMbps?: number; maxDowntimeMs?: number } = {}) {
  expect((await t.driver.start(vmSpec(vmId))).state).toBe('running');
  const q = await t.qmp(vmId);
  const m = watch(t.driver.migrate(vmId, URI, { migrationId: `mig-${vmId}`, ...params }, () => undefined), t.clock);
  await idle(t.clock, () => m.settled);
  q.migration = { status: 'active', ram: ram(100, 1) };
  t.clock.advance(200);
  await idle(t.clock);
  return { q, m };
}

describe('QEMU driver: tune and force-complete a running migration', () => {
  it('tuneMigration sets the parameters in QEMU\'s units and answers with what QEMU reads back', async () => {
    const t = driverUnderTest(cleanups);
    const { q } = await migrating(t, 'vm-1', { bandwidthMbps: 8, maxDowntimeMs: 30 });
    expect(q.argsOf('migrate-set-parameters')).toEqual([{ 'max-bandwidth': 1_000_000, 'downtime-limit': 30 }]);
    const now = await t.driver.tuneMigration('vm-1', 'mig-vm-1', { bandwidthMbps: 100, maxDowntimeMs: 2000 });
    expect(q.argsOf('migrate-set-parameters').at(-1)).toEqual({ 'max-bandwidth': 12_500_000, 'downtime-limit': 2000 });
    expect(now).toEqual({ bandwidthMbps: 100, maxDowntimeMs: 2000 });
    // Only what is asked changes; the answer is QEMU's, not an echo of the request.
    q.handlers.set('query-migrate-parameters', () => ({ 'max-bandwidth': 12_500_000, 'downtime-limit': 4000 }));
    expect(await t.driver.tuneMigration('vm-1', 'mig-vm-1', { maxDowntimeMs: 4000 })).toEqual({ bandwidthMbps: 100, maxDowntimeMs: 4000 });
    expect(q.argsOf('migrate-set-parameters').at(-1)).toEqual({ 'downtime-limit': 4000 });
    expect(await t.driver.migrationLimits('vm-1')).toEqual({ bandwidthMbps: 100, maxDowntimeMs: 4000 });
    await expect(t.driver.tuneMigration('vm-1', 'another', { maxDowntimeMs: 1 })).rejects.toMatchObject({ code: 'VMTC_QEMU_BAD_STATE', details: { reason: 'no such migration runs' } });
  });

  it('forceComplete pause: `stop` once; the migration that then fails leaves the source running again', async () => {
    const t = driverUnderTest(cleanups);
    const { q, m } = await migrating(t, 'vm-2');
    await t.driver.forceComplete('vm-2', 'mig-vm-2', 'pause');
    await t.driver.forceComplete('vm-2', 'mig-vm-2', 'pause');
    expect(q.commands().filter((c) => c === 'stop')).toHaveLength(1);
    expect(q.runState).toBe('paused');
    await expect(t.driver.forceComplete('vm-2', 'mig-vm-2', 'postcopy')).rejects.toMatchObject({ code: 'VMTC_QEMU_BAD_STATE', details: { forced: 'pause' } });
    q.migration = { status: 'failed', 'error-desc': 'Connection reset by peer', ram: ram(300, 2) };
    await runUntilSettled(t.clock, m, 1000);
    expect(m.value?.status).toBe('failed');
    const cmds = q.commands();
    expect(cmds.lastIndexOf('cont')).toBeGreaterThan(cmds.indexOf('stop'));
    expect(q.runState).toBe('running');
    expect((await t.driver.describe('vm-2')).state).toBe('running');
  });

  it('forceComplete postcopy: refused without the capability; with it, one migrate-start-postcopy, not repeated when the pass count comes', async () => {
    const t = driverUnderTest(cleanups);
    const without = await migrating(t, 'vm-3');
    await expect(t.driver.forceComplete('vm-3', 'mig-vm-3', 'postcopy')).rejects.toMatchObject({ code: 'VMTC_QEMU_BAD_STATE', details: { mode: 'postcopy' } });
    expect(without.q.commands()).not.toContain('migrate-start-postcopy');

    const { q, m } = await migrating(t, 'vm-4', { postcopy: true });
    expect(q.commands()).not.toContain('migrate-start-postcopy');
    await t.driver.forceComplete('vm-4', 'mig-vm-4', 'postcopy');
    expect(q.commands().filter((c) => c === 'migrate-start-postcopy')).toHaveLength(1);
    q.migration = { status: 'active', ram: ram(900, 2) };
    t.clock.advance(200);
    await idle(t.clock);
    expect(q.commands().filter((c) => c === 'migrate-start-postcopy')).toHaveLength(1);
    // The switch was forced: a failure after the continue leaves the source paused, as for any
    // post-copy (the destination may run the VM).
    q.runState = 'finish-migrate';
    q.migration = { status: 'pre-switchover', ram: ram(900, 2) };
    t.clock.advance(200);
    await idle(t.clock);
    await t.driver.continueMigration('vm-4', 'mig-vm-4');
    q.migration = { status: 'failed', 'error-desc': 'Detected IO failure for postcopy', ram: ram(950, 2) };
    await runUntilSettled(t.clock, m, 1000);
    expect(m.value?.error).toMatchObject({ details: { postcopy: true, sourcePaused: true } });
    expect(q.commands()).not.toContain('cont');
  });

  it('a completed migration says whether it went post-copy: only when QEMU accepted the switch', async () => {
    const t = driverUnderTest(cleanups);
    const complete = async (q: Awaited<ReturnType<typeof migrating>>['q'], m: Awaited<ReturnType<typeof migrating>>['m'], vmId: string) => {
      q.migration = { status: 'active', ram: ram(900, 2) };
      t.clock.advance(200);
      await idle(t.clock);
      q.runState = 'finish-migrate';
      q.migration = { status: 'pre-switchover', ram: ram(900, 2) };
      t.clock.advance(200);
      await idle(t.clock);
      await t.driver.continueMigration(vmId, `mig-${vmId}`);
      q.runState = 'postmigrate';
      q.migration = { status: 'completed', ram: { ...ram(1000, 2), 'postcopy-requests': 7 }, downtime: 9, 'total-time': 99 };
      await runUntilSettled(t.clock, m, 1000);
      return m.value!;
    };
    // Switched at pass 2 (the driver's default), accepted: the result says so, with QEMU's count.
    const a = await migrating(t, 'vm-7', { postcopy: true });
    const ra = await complete(a.q, a.m, 'vm-7');
    expect(a.q.commands().filter((c) => c === 'migrate-start-postcopy')).toHaveLength(1);
    expect(ra).toMatchObject({ status: 'completed', postcopy: true, postcopyRequests: 7 });
    // QEMU refused the switch (it had converged first): a plain pre-copy result.
    const b = await migrating(t, 'vm-8', { postcopy: true });
    b.q.handlers.set('migrate-start-postcopy', () => {
      throw new Error('Postcopy must be started after migration has been started');
    });
    const rb = await complete(b.q, b.m, 'vm-8');
    expect(rb.status).toBe('completed');
    expect(rb.postcopy).toBeUndefined();
    expect(rb.postcopyRequests).toBeUndefined();
  });

  it('refuses both once the switchover was continued, without a word to QEMU', async () => {
    const t = driverUnderTest(cleanups);
    const { q, m } = await migrating(t, 'vm-5');
    q.runState = 'finish-migrate';
    q.migration = { status: 'pre-switchover', ram: ram(990, 3) };
    t.clock.advance(200);
    await idle(t.clock);
    await t.driver.continueMigration('vm-5', 'mig-vm-5');
    const before = q.commands().length;
    await expect(t.driver.tuneMigration('vm-5', 'mig-vm-5', { bandwidthMbps: 1 })).rejects.toMatchObject({ code: 'VMTC_QEMU_BAD_STATE', details: { reason: expect.stringMatching(/switchover/) } });
    await expect(t.driver.forceComplete('vm-5', 'mig-vm-5', 'pause')).rejects.toMatchObject({ code: 'VMTC_QEMU_BAD_STATE', details: { reason: expect.stringMatching(/switchover/) } });
    expect(q.commands().slice(before).filter((c) => c !== 'query-migrate' && c !== 'query-status')).toEqual([]);
    q.runState = 'postmigrate';
    q.migration = { status: 'completed', ram: ram(1000, 3), downtime: 9, 'total-time': 99 };
    await runUntilSettled(t.clock, m, 1000);
    expect(m.value?.status).toBe('completed');
  });
});
