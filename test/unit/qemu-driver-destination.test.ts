// The QEMU driver's destination side without QEMU: a QMP double and a ManualClock
// (test/helpers/qemu-double.ts). prepareIncoming takes this migration's tuning (never the spec's
// extra), waitRunning times out on the driver's clock with its own code, and a resume of an
// incoming VM waits for the copy to land. Real QEMU: test/lab/qemu-migration.test.ts.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { cleanupsAfterEach } from '../helpers/cleanups.ts';
import { driverUnderTest, runUntilSettled, vmSpec, watch } from '../helpers/qemu-double.ts';

const cleanups = cleanupsAfterEach();
const MiB = 1024 * 1024;

type Under = ReturnType<typeof driverUnderTest>;
/** A destination whose copy landed (paused) is resumed; `atCont` sees the host as QEMU's `cont`
 *  comes, which then starts the guest. The resume must succeed. */
async function resumeLanded(driver: Under['driver'], clock: Under['clock'], q: Awaited<ReturnType<Under['qmp']>>, vmId: string, atCont: () => void): Promise<void> {
  q.handlers.set('cont', () => {
    atCont();
    q.runState = 'running';
    return {};
  });
  q.runState = 'paused';
  q.migration = { status: 'completed' };
  const o = watch(driver.resume(vmId), clock);
  await runUntilSettled(clock, o, 5000);
  expect(o.error).toBeUndefined();
}

describe('QEMU driver, destination side (QMP double, manual clock)', () => {
  it('prepareIncoming sets the capabilities from the tuning it is given, not from spec.extra, and listens on listenHost only', async () => {
    const { driver, qmp } = driverUnderTest(cleanups);
    // A stale flag left in the spec by an earlier migration must not count.
    const spec = vmSpec('vm-1', { extra: { migration: { multifd: true, postcopy: true } } });
    const plain = await driver.prepareIncoming(spec, 'mig-1', '192.0.2.7', {});
    const q1 = await qmp('vm-1');
    expect(q1.argsOf('migrate-set-capabilities')[0]).toEqual({ capabilities: [
      { capability: 'events', state: true }, { capability: 'multifd', state: false }, { capability: 'postcopy-ram', state: false },
    ] });
    expect(q1.commands()).not.toContain('migrate-set-parameters');
    expect(q1.argsOf('migrate-incoming')).toEqual([{ uri: 'tcp:192.0.2.7:0' }]);
    // The port QEMU picked, read back with query-migrate.
    expect(plain).toEqual({ uri: 'tcp:192.0.2.7:49152' });
    await driver.destroy('vm-1');

    const tuned = await driver.prepareIncoming(vmSpec('vm-1'), 'mig-2', '192.0.2.7', { port: 4444, tuning: { multifd: true, multifdChannels: 3, postcopy: true } });
    const q2 = await qmp('vm-1');
    expect(q2.argsOf('migrate-set-capabilities')[0]).toEqual({ capabilities: [
      { capability: 'events', state: true }, { capability: 'multifd', state: true }, { capability: 'postcopy-ram', state: true },
    ] });
    expect(q2.argsOf('migrate-set-parameters')).toEqual([{ 'multifd-channels': 3 }]);
    expect(tuned.uri).toBe('tcp:192.0.2.7:4444');
    // The tuning is this migration's only: nothing of it is written into the VM's spec.
    const d = await driver.describe('vm-1');
    expect(d.state).toBe('incoming');
    expect(d.migrationId).toBe('mig-2');
    expect(d.spec.extra).toEqual({ machine: 'pc' });
  });

  it('tuning.copyStorage: empty copies exported over NBD on listenHost, the guest started only after the landing closed NBD', async () => {
    const { driver, clock, qmp, host, dataDir } = driverUnderTest(cleanups);
    const disks = [{ path: '/srv/images/vm-7.qcow2', format: 'qcow2' as const }, { path: '/srv/images/tools.iso', format: 'raw' as const, readonly: true }];
    // Without the tuning, storage is taken as shared even if an old spec says otherwise.
    const shared = await driver.prepareIncoming(vmSpec('vm-6', { disks, extra: { diskBytes: [MiB], migration: { copyStorage: true } } }), 'mig-6', '192.0.2.7', {});
    expect(shared.storage).toBeUndefined();
    expect((await driver.describe('vm-6')).spec.disks).toEqual(disks);
    expect(host.argvs.some((a) => a[0] === 'qemu-img')).toBe(false);

    const prep = await driver.prepareIncoming(vmSpec('vm-7', { disks, extra: { diskBytes: [MiB] } }), 'mig-7', '192.0.2.7', { tuning: { copyStorage: true } });
    const copy = join(dataDir, 'disks', 'vm-7', 'mig-7-disk0.qcow2');
    expect(host.argvs).toContainEqual(['qemu-img', 'create', '-q', '-f', 'qcow2', copy, String(MiB)]);
    expect((await driver.describe('vm-7')).spec.disks).toEqual([{ ...disks[0], path: copy }, disks[1]]);
    expect(prep.storage).toEqual({ nbd: { host: '192.0.2.7', port: 10809 }, exports: [{ device: 'disk0', name: 'disk0' }] });
    const q = await qmp('vm-7');
    expect(q.argsOf('nbd-server-start')).toEqual([{ addr: { type: 'inet', data: { host: '192.0.2.7', port: '0' } } }]);
    expect(q.argsOf('block-export-add')).toEqual([{ type: 'nbd', id: 'vmtc-nbd-disk0', 'node-name': '#block-disk0', name: 'disk0', writable: true }]);
    // -S: QEMU would otherwise start the guest the moment the RAM lands, NBD still open.
    const qemuArgv = host.argvs.find((a) => a.includes('-pidfile') && a.some((x) => x.includes(copy)));
    expect(qemuArgv).toContain('-S');

    const o = watch(driver.waitRunning('vm-7', 30_000), clock);
    await runUntilSettled(clock, o, 1000);
    expect(o.settled).toBe(false);
    q.runState = 'paused';
    q.migration = { status: 'completed' };
    q.event('MIGRATION', { status: 'completed' });
    await runUntilSettled(clock, o, 30_000);
    expect(o.value?.state).toBe('running');
    const after = q.commands().slice(q.commands().indexOf('nbd-server-stop'));
    expect(after[0]).toBe('nbd-server-stop');
    expect(after).toContain('cont');
  });

  it('waitRunning on an incoming VM that never lands fails with VMTC_QEMU_WAIT_TIMEOUT exactly at its timeout', async () => {
    const { driver, clock, qmp } = driverUnderTest(cleanups);
    await driver.prepareIncoming(vmSpec('vm-2'), 'mig-3', '127.0.0.1', {});
    const q = await qmp('vm-2');
    const t0 = clock.now();
    const polls = q.commands().filter((c) => c === 'query-status').length;
    const o = watch(driver.waitRunning('vm-2', 1000), clock);
    await runUntilSettled(clock, o, 10_000);
    expect(o.error?.code).toBe('VMTC_QEMU_WAIT_TIMEOUT');
    expect(o.error?.details).toMatchObject({ vmId: 'vm-2', state: 'incoming', timeoutMs: 1000 });
    expect(o.at! - t0).toBe(1000);
    // It kept asking QEMU meanwhile (every 200 ms of the clock), not only once.
    expect(q.commands().filter((c) => c === 'query-status').length - polls).toBeGreaterThanOrEqual(5);
    expect((await driver.describe('vm-2')).state).toBe('incoming');
  });

  it('waitRunning returns as soon as QEMU reports the landed VM running, and the VM is then an ordinary one', async () => {
    const { driver, clock, qmp, dataDir } = driverUnderTest(cleanups);
    await driver.prepareIncoming(vmSpec('vm-3'), 'mig-4', '127.0.0.1', {});
    const q = await qmp('vm-3');
    const t0 = clock.now();
    const o = watch(driver.waitRunning('vm-3', 30_000), clock);
    await runUntilSettled(clock, o, 1000);
    expect(o.settled).toBe(false);
    // The stream lands: QEMU starts the guest and says so.
    q.runState = 'running';
    q.migration = { status: 'completed' };
    q.event('MIGRATION', { status: 'completed' });
    q.event('RESUME');
    const landed = clock.now();
    await runUntilSettled(clock, o, 30_000);
    expect(o.error).toBeUndefined();
    expect(o.value?.state).toBe('running');
    // Woken by the event, not by the next poll.
    expect(o.at).toBe(landed);
    expect(landed - t0).toBe(1000);
    const file = JSON.parse(readFileSync(join(dataDir, 'vms', 'vm-3', 'vm.json'), 'utf8')) as { role: string };
    expect(file.role).toBe('normal');
  });

  it('resume of a non-live destination waits for the copy to land before it starts the guest', async () => {
    const { driver, clock, qmp } = driverUnderTest(cleanups);
    await driver.prepareIncoming(vmSpec('vm-4'), 'mig-5', '127.0.0.1', { tuning: { suspend: true } });
    const q = await qmp('vm-4');
    const o = watch(driver.resume('vm-4'), clock);
    await runUntilSettled(clock, o, 5000);
    expect(o.settled).toBe(false);
    expect(q.commands()).not.toContain('cont');
    // The last bytes arrive; the source was paused for the copy, so QEMU holds the guest paused.
    q.runState = 'paused';
    q.migration = { status: 'completed' };
    q.event('MIGRATION', { status: 'completed' });
    await runUntilSettled(clock, o, 5000);
    expect(o.error).toBeUndefined();
    expect(o.value?.state).toBe('running');
    expect(q.commands().filter((c) => c === 'cont')).toHaveLength(1);
  });

  it('resume gives up on a copy that does not land within a minute, with VMTC_QEMU_BAD_STATE and nothing started', async () => {
    const { driver, clock, qmp } = driverUnderTest(cleanups);
    await driver.prepareIncoming(vmSpec('vm-5'), 'mig-6', '127.0.0.1', {});
    const q = await qmp('vm-5');
    const t0 = clock.now();
    const o = watch(driver.resume('vm-5'), clock);
    await runUntilSettled(clock, o, 120_000);
    expect(o.error?.code).toBe('VMTC_QEMU_BAD_STATE');
    expect(o.error?.details).toMatchObject({ state: 'incoming', operation: 'resume' });
    expect(o.at! - t0).toBe(60_000);
    expect(q.commands()).not.toContain('cont');
  });
  describe("an incoming VM's taps: down (dropped at the bridge) until its guest runs here", () => {
    const nics = [{ mac: '52:54:00:00:00:11', bridge: 'br-site' }];
    const tapOf = (host: { links: Map<string, { master?: string; up: boolean }> }) => [...host.links.entries()][0]!;

    it('joins the bridge down, comes up at the RESUME event, before waitRunning answers', async () => {
      const { driver, clock, qmp, host } = driverUnderTest(cleanups);
      await driver.prepareIncoming(vmSpec('vm-t1', { nics }), 'mig-t1', '127.0.0.1', {});
      const [tap, link] = tapOf(host);
      // A tunnel bicasting during the copy must not fill a queue the guest would replay on resume.
      expect(link).toEqual({ master: 'br-site', up: false });
      const q = await qmp('vm-t1');
      const o = watch(driver.waitRunning('vm-t1', 30_000), clock);
      await runUntilSettled(clock, o, 1000);
      expect(host.links.get(tap)?.up).toBe(false);
      q.runState = 'running';
      q.migration = { status: 'completed' };
      q.event('RESUME');
      await runUntilSettled(clock, o, 30_000);
      expect(o.value?.state).toBe('running');
      expect(host.links.get(tap)).toEqual({ master: 'br-site', up: true });
      // …and the bridge sends the VM's MAC to the tap now, not where it learned it while the VM
      // ran at the other site (QEMU's first announce was lost while the tap was down).
      expect(host.fdb.get('br-site/52:54:00:00:00:11')).toBe(tap);
      const ups = host.argvs.findIndex((a) => a.includes('up') && a.includes(tap));
      const fdb = host.argvs.findIndex((a) => a[0] === 'bridge' && a.includes('replace'));
      expect(ups).toBeGreaterThanOrEqual(0);
      expect(fdb).toBeGreaterThan(ups);
    });

    it("a bridge that refuses the VM's MAC entry does not keep the guest from running here", async () => {
      const { driver, clock, qmp, host } = driverUnderTest(cleanups);
      await driver.prepareIncoming(vmSpec('vm-t4', { nics }), 'mig-t4', '127.0.0.1', {});
      const [tap] = tapOf(host);
      host.links.get(tap)!.master = undefined; // out of its bridge: the kernel refuses the entry
      const q = await qmp('vm-t4');
      const o = watch(driver.waitRunning('vm-t4', 30_000), clock);
      q.runState = 'running';
      q.migration = { status: 'completed' };
      q.event('RESUME');
      await runUntilSettled(clock, o, 30_000);
      expect(o.value?.state).toBe('running');
      expect(host.links.get(tap)?.up).toBe(true);
      expect(host.fdb.size).toBe(0);
    });

    it('a non-live destination brings its taps up before the cont that starts the guest', async () => {
      const { driver, clock, qmp, host } = driverUnderTest(cleanups);
      await driver.prepareIncoming(vmSpec('vm-t2', { nics }), 'mig-t2', '127.0.0.1', { tuning: { suspend: true } });
      const [tap] = tapOf(host);
      let upAtCont: boolean | undefined;
      await resumeLanded(driver, clock, await qmp('vm-t2'), 'vm-t2', () => {
        upAtCont = host.links.get(tap)?.up;
      });
      expect(upAtCont).toBe(true);
    });

    it("a held destination's cont waits for its taps' links, not for the bridge's entries for its MAC (they go in while it starts)", async () => {
      const { driver, clock, qmp, host } = driverUnderTest(cleanups);
      await driver.prepareIncoming(vmSpec('vm-t5', { nics }), 'mig-t5', '127.0.0.1', { tuning: { holdAfterLanding: true } });
      const [tap] = tapOf(host);
      let release!: () => void;
      const bridgeHeld = new Promise<void>((r) => { release = r; });
      host.gate = (argv) => (argv[0] === 'bridge' ? bridgeHeld : undefined);
      let atCont: { up?: boolean; fdb: number } | undefined;
      await resumeLanded(driver, clock, await qmp('vm-t5'), 'vm-t5', () => {
        atCont = { up: host.links.get(tap)?.up, fdb: host.fdb.size };
        release();
      });
      expect(atCont).toEqual({ up: true, fdb: 0 });
      expect(host.fdb.get('br-site/52:54:00:00:00:11')).toBe(tap);
    });

    it("a held destination's link commands are made ready as it lands and run at its resume (no process start then); a destroyed one's are cancelled", async () => {
      const { driver, clock, qmp, host } = driverUnderTest(cleanups);
      await driver.prepareIncoming(vmSpec('vm-t6', { nics }), 'mig-t6', '127.0.0.1', { tuning: { holdAfterLanding: true } });
      const [tap] = tapOf(host);
      const q = await qmp('vm-t6');
      expect(host.prepared).toEqual([]);
      q.runState = 'paused';
      q.migration = { status: 'completed' };
      q.event('MIGRATION', { status: 'completed' });
      await runUntilSettled(clock, watch(Promise.resolve(), clock), 100);
      expect(host.prepared.map((p) => [p.argv.slice(-4).join(' '), p.fate])).toEqual([[`link set ${tap} up`, undefined]]);
      expect(host.links.get(tap)?.up).toBe(false);
      const execsBefore = host.argvs.filter((a) => a[0] === 'ip' && a.includes('up')).length;
      const o = watch(driver.resume('vm-t6'), clock);
      await runUntilSettled(clock, o, 5000);
      expect(o.error).toBeUndefined();
      expect(host.prepared[0]!.fate).toBe('run');
      expect(host.links.get(tap)?.up).toBe(true);
      // exec saw the prepared argv once (the double runs it through exec), and nothing else
      expect(host.argvs.filter((a) => a[0] === 'ip' && a.includes('up')).length).toBe(execsBefore + 1);

      await driver.prepareIncoming(vmSpec('vm-t7', { nics }), 'mig-t7', '127.0.0.1', { tuning: { holdAfterLanding: true } });
      const q7 = await qmp('vm-t7');
      q7.runState = 'paused';
      q7.migration = { status: 'completed' };
      q7.event('MIGRATION', { status: 'completed' });
      await runUntilSettled(clock, watch(Promise.resolve(), clock), 100);
      expect(host.prepared[1]?.fate).toBeUndefined();
      const d = watch(driver.destroy('vm-t7'), clock);
      await runUntilSettled(clock, d, 30_000);
      expect(host.prepared[1]?.fate).toBe('cancelled');
    });

    it('a VM started here (not incoming) has its taps up from the start', async () => {
      const { driver, host } = driverUnderTest(cleanups);
      await driver.start(vmSpec('vm-t3', { nics }));
      expect(tapOf(host)[1]).toEqual({ master: 'br-site', up: true });
      await driver.destroy('vm-t3');
      expect(host.links.size).toBe(0);
    });
  });
});
