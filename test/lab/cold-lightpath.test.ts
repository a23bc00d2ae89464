// The cold path's disk transfer across the emulated lightpath (docs/design.md#cold-path, "Across
// the lightpath"), with real QEMU and every service a real process (lab/stack.ts): the agents run
// in the root namespace, their QEMU in the sites' namespaces; the cold fetch (HTTPS, mutual TLS)
// goes through a relay in each site's namespace, between the sites' lightpath addresses, so the
// delay line carries it. Checked with the delay line's own byte counters: a cold move without a
// replica carries at least the disk; one with a warm replica carries about its deltas and nothing
// of the rest. Without a lightpath up, a cold move of a VM with disks is refused before the power-off
// (the relay cannot listen on an address that is not there) and the VM keeps running.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { startStack, type Stack } from '../../lab/stack.ts';
import { coldDowntime, migrateCold, withLightpath } from '../../lab/cold-lightpath.ts';
import { waitReplica } from '../../lab/turntable/disk.ts';

const MiB = 1024 * 1024;
const DISK_MB = 64;
const FILL_MB = 32;
let s: Stack | undefined;

beforeAll(async () => {
  // The guest writes 512 KiB/s of random data into 8 MiB of its data disk (after the filled part):
  // what a replica's deltas carry.
  s = await startStack({ rttMs: 20, rateMbps: 1000, memoryMb: 128, diskMb: DISK_MB, diskFillMb: FILL_MB, guest: { diskLoad: { kibPerS: 512, windowMb: 8, offsetMb: 40 } }, replicaMbps: 500 });
}, 300_000);

afterAll(async () => {
  await s?.close();
}, 120_000);

describe('cold moves across the lightpath (delay line counts the disk bytes)', () => {
  it('without a lightpath up, the relay cannot listen on the lightpath address: refused before the power-off, the VM keeps running', async () => {
    const [a, b] = [s!.lab.sites[0]!.name, s!.lab.sites[1]!.name];
    const qemuPid = () => readFileSync(join(s!.agentDataDir(s!.hostOf(a)), 'qemu', 'vms', s!.vmId, 'qemu.pid'), 'utf8').trim();
    const pidBefore = qemuPid();
    const rec = await migrateCold(s!, b);
    expect(rec.state).toBe('rolled_back');
    expect(rec.error).toMatchObject({ code: 'VMTC_COLD_EXPORT_FAILED', details: { cause: { code: 'VMTC_HOST_COLD_RELAY_FAILED', details: { netns: s!.lab.sites[0]!.ns } } } });
    expect(await s!.vmPlaces()).toEqual([{ hostId: s!.hostOf(a), state: 'running' }]);
    // Never powered off: the same QEMU process still runs it.
    expect(qemuPid()).toBe(pidBefore);
  }, 300_000);

  it('a cold move without a replica fetches the whole disk across the lightpath; one with a warm replica sends only its deltas there', async () => {
    const [a, b] = [s!.lab.sites[0]!.name, s!.lab.sites[1]!.name];
    const diskFile = statSync(join(s!.dir, `${s!.vmId}-data.qcow2`)).size;
    expect(diskFile).toBeGreaterThan(FILL_MB * MiB);

    // A → B, no replica: the whole disk file is fetched, through the relays, over the delay line.
    const full = await withLightpath(s!, a, b, 'cold', 500, () => migrateCold(s!, b));
    const rec = full.value;
    expect({ state: rec.state, error: rec.error }).toEqual({ state: 'completed', error: null });
    const cold = rec.steps!.cold as any;
    expect(cold.replica).toBeUndefined();
    expect(cold.imported.bytes).toBe(cold.totalBytes);
    expect(cold.totalBytes).toBeGreaterThanOrEqual(diskFile);
    // Over loopback the delay line would see none of it.
    expect(full.line.bytes).toBeGreaterThanOrEqual(cold.imported.bytes);
    expect(full.line.bytes).toBeLessThan(cold.imported.bytes * 1.3 + 4 * MiB);
    expect(await s!.vmPlaces()).toEqual([{ hostId: s!.hostOf(b), state: 'running' }]);

    // A replica of the VM (now at B) seeded at A over a lightpath of its own, then released.
    const seeded = await withLightpath(s!, b, a, 'seed', 500, async () => {
      const res = await s!.api('POST', `/v1/vms/${s!.vmId}/replicas`, { destinationHostId: s!.hostOf(a), intervalS: 3600 });
      expect(res.status, JSON.stringify(res.body)).toBe(202);
      return waitReplica(s!, res.body.id, (r) => r.state === 'warm', 'warm', 180_000);
    });
    const rid = seeded.value.id as string;
    expect(seeded.line.bytes).toBeGreaterThanOrEqual(FILL_MB * MiB);
    // The guest keeps writing: the move's deltas carry what it wrote since the seed.
    await new Promise((r) => setTimeout(r, 3000));

    // B → A with the replica: only the deltas cross (before and after the power-off).
    const withReplica = await withLightpath(s!, b, a, 'cold2', 500, () => migrateCold(s!, a));
    const rec2 = withReplica.value;
    expect({ state: rec2.state, error: rec2.error }).toEqual({ state: 'completed', error: null });
    const cold2 = rec2.steps!.cold as any;
    expect(cold2.replica).toMatchObject({ used: true, replicaId: rid });
    expect(cold2.imported.bytes).toBe(0);
    const deltas = (cold2.replica.precopyDeltaBytes ?? 0) + cold2.replica.lastDeltaBytes;
    expect(deltas).toBeGreaterThan(0);
    expect(withReplica.line.bytes).toBeGreaterThanOrEqual(deltas);
    expect(withReplica.line.bytes).toBeLessThan(deltas * 1.3 + 4 * MiB);
    expect(withReplica.line.bytes).toBeLessThan(full.line.bytes / 2);
    expect(await s!.vmPlaces()).toEqual([{ hostId: s!.hostOf(a), state: 'running' }]);
    console.log(`[numbers] 20 ms RTT, ${DISK_MB} MiB disk (file ${diskFile} B): without replica downtime ${coldDowntime(rec).ms} ms, fetched ${cold.imported.bytes} B, delay line ${full.line.bytes} B; with replica downtime ${coldDowntime(rec2).ms} ms, deltas ${cold2.replica.precopyDeltaBytes} + ${cold2.replica.lastDeltaBytes} B, delay line ${withReplica.line.bytes} B (seed ${seeded.value.seedBytes} B, its line ${seeded.line.bytes} B)`);
  }, 600_000);
});
