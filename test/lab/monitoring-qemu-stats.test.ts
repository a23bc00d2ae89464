// The QEMU driver's monitoring counters against a real QEMU (agents/host/qemu/stats.ts,
// docs/monitoring.md): the lab guest in a namespace of its own, dirtying 16 MiB every 100 ms,
// is read twice; calc-dirty-rate started by the first reading is reported by a later one, the
// QEMU process's CPU time grows, the tap's counters see a ping, and the agent's rates between
// the readings (agents/host/stats.ts) pass the controller's check of the 'stats' event.
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QemuDriver } from '../../agents/host/qemu/driver.ts';
import { statsBetween } from '../../agents/host/stats.ts';
import { AGENT_EVENTS } from '../../src/common/agent-schemas.ts';
import { buildGuestImage, guestAppend, type GuestImage } from '../../lab/guest/build.ts';
import { exec, guestSpec, makeSiteNetns, shortId, teardownDrivers, testLogger, waitForLine } from './qemu-helpers.ts';

describe('QEMU stats (calc-dirty-rate, /proc, taps)', () => {
  let img: GuestImage;
  let tmp: string;
  let site: { ns: string; remove(): Promise<void> } | undefined;
  let driver: QemuDriver | undefined;
  const pids = new Set<number>();
  const vmId = `s-${shortId()}`;

  beforeAll(async () => {
    img = await buildGuestImage();
    tmp = await mkdtemp(join(tmpdir(), 'vmtc-qs-'));
    site = await makeSiteNetns();
    driver = new QemuDriver({ dataDir: tmp, logger: testLogger(), netns: site.ns });
  });

  afterAll(async () => {
    await teardownDrivers([driver], pids, tmp);
    await site?.remove();
  });

  it('reads CPU, memory, network, disk and the dirty-page rate of a running guest', async () => {
    const d = driver!;
    const spec = guestSpec(vmId, img.kernel, img.initrd, guestAppend({ dirtyMb: 16, dirtyPeriodMs: 100 }), { nics: [{ mac: '52:54:00:0a:01:02', bridge: 'br0' }] });
    await d.start(spec);
    const pid = await d.pid(vmId);
    if (pid) pids.add(pid);
    await waitForLine((await d.paths(vmId)).console, /VMTC-GUEST-READY/, 60_000);

    const first = await d.stats({ dirtyRate: true });
    await exec('ip', ['netns', 'exec', site!.ns, 'ping', '-c', '5', '-i', '0.2', '-W', '2', '10.1.1.2']);
    // calc-dirty-rate measures for 1 s; the next reading reports its result.
    await new Promise((r) => setTimeout(r, 1500));
    const second = await d.stats({ dirtyRate: false });
    const a = first.vms.find((v) => v.vmId === vmId)!;
    const b = second.vms.find((v) => v.vmId === vmId)!;
    expect(b.cpuMs).toBeGreaterThan(a.cpuMs);
    expect(b.memoryUsedMb).toBeGreaterThan(16);
    expect(b.netRxBytes - a.netRxBytes).toBeGreaterThanOrEqual(5 * 84); // the pings reached the guest
    expect(b.netTxBytes - a.netTxBytes).toBeGreaterThanOrEqual(5 * 84); // and the replies left it
    expect(b.dirtyRateMBps).toBeGreaterThan(0);
    expect(second.host.cpuTotalMs).toBeGreaterThan(first.host.cpuTotalMs!);
    const report = statsBetween(first, second)!;
    expect(AGENT_EVENTS.stats!.problems(report)).toEqual([]);
    process.stderr.write(`qemu stats: ${JSON.stringify(report.vms[0])}\n`);
  }, 180_000);
});
