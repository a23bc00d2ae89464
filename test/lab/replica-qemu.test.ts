// Replicas with real QEMU (TCG) through a real controller and two host agents with the QEMU
// driver, on loopback (the agents' stores listen on their migration address, 127.0.0.1 here:
// no lightpath crosses, the lab stack has none outside a migration): a replica of a running
// guest's qcow2 disk is seeded and kept warm (persistent dirty bitmaps, blockdev-backup into a
// qemu-storage-daemon's NBD export), the guest writes, a cold move uses it (only the last delta
// after the power-off, digests compared, the destination boots from the store) and `qemu-img
// compare` finds the destination's disk equal to the source's final state; the same VM then
// moves back cold without a replica, for the downtime comparison; a corrupt replica is caught by
// the digests and the move rolls back; a destination that dies mid-seed fails the replica and
// leaves the source running without checkpoints of it.
import { readFileSync } from 'node:fs';
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { exec } from './qemu-helpers.ts';
import { ReplicaLab } from './replica-lab.ts';

const MiB = 1024 * 1024;

describe('replicas with real QEMU: seed, deltas, cold move with the replica (loopback)', () => {
  const lab = new ReplicaLab('rq');
  const { drivers, agents, pids, vmId } = lab;
  const api = lab.api.bind(lab);
  const waitFor = lab.waitFor.bind(lab);
  const diskOf = lab.diskOf.bind(lab);

  async function migrateCold(to: string): Promise<any> {
    const res = await api('POST', '/v1/migrations', { vmId, destinationHostId: to, mode: 'cold' });
    expect(res.status, JSON.stringify(res.body)).toBe(202);
    return waitFor(async () => {
      const r = (await api('GET', `/v1/migrations/${res.body.id}`)).body;
      return ['completed', 'rolled_back', 'failed'].includes(r.state) ? r : undefined;
    }, 'the cold move', 300_000);
  }
  /** Source power-off to the VM started at the destination: the transition into cold_exporting
   *  (the source is stopped in it) to the one into cold_verifying (the import returned: the
   *  destination's QEMU runs the VM; the guest's boot after that is the same either way). */
  function coldDowntimeMs(rec: any): number {
    const at = (to: string) => Date.parse(rec.transitions.find((x: any) => x.to === to).at);
    // With a replica the delta and the kept digests run first, the VM still running: the
    // power-off is asked for after them (steps.cold.replica.powerOffAt).
    return at('cold_verifying') - (rec.steps.cold.replica?.powerOffAt ?? at('cold_exporting'));
  }
  /** The persistent bitmaps of a qcow2 image, by name. */
  async function bitmapsOf(image: string): Promise<string[]> {
    const info = JSON.parse((await exec('qemu-img', ['info', '-U', '--output=json', image])).stdout);
    return (info['format-specific']?.data?.bitmaps ?? []).map((b: { name: string }) => b.name);
  }

  beforeAll(() => lab.start('vmtc-rq-'), 300_000);
  afterAll(() => lab.close(), 120_000);

  it('seeds, keeps warm, and a cold move sends only the last delta and boots B from the replica: qemu-img compare equal; back without one for comparison', async () => {
    const res = await api('POST', `/v1/vms/${vmId}/replicas`, { destinationHostId: 'B', intervalS: 2 });
    expect(res.status).toBe(202);
    const rid = res.body.id as string;
    const warm = await waitFor(async () => {
      const r = (await api('GET', `/v1/vms/${vmId}/replicas/${rid}`)).body;
      return r.state === 'warm' || r.state === 'failed' ? r : undefined;
    }, 'replica warm');
    expect({ state: warm.state, error: warm.error }).toEqual({ state: 'warm', error: null });
    expect(warm.diskBytes).toBe(64 * MiB);
    // What the backup job reports it processed: the whole virtual disk (its zero regions go as
    // NBD write-zeroes and carry no data: test/lab/disk-qemu-cow.test.ts counts the wire).
    expect(warm.seedBytes).toBe(64 * MiB);
    // Writes in the guest's disk (through QEMU's block layer): a delta takes them.
    await drivers.get('A')!.humanMonitor(vmId, 'qemu-io disk0 "write -P 0x33 20M 2M"');
    await waitFor(async () => {
      const r = (await api('GET', `/v1/vms/${vmId}/replicas/${rid}`)).body;
      return r.deltas >= 1 && r.bytesSent >= warm.seedBytes + 2 * MiB ? r : undefined;
    }, 'a delta with the 2 MiB');
    // More writes the periodic deltas may or may not take before the move: the last delta does.
    await drivers.get('A')!.humanMonitor(vmId, 'qemu-io disk0 "write -P 0x44 40M 1M"');

    const rec = await migrateCold('B');
    expect({ state: rec.state, error: rec.error }).toEqual({ state: 'completed', error: null });
    expect(rec.steps.cold.replica, JSON.stringify(rec.steps.cold.replica)).toMatchObject({ used: true, replicaId: rid, disks: 1 });
    expect(rec.steps.cold.imported.bytes).toBe(0);
    // Leaves kept before the power-off: after it each side re-read only what the last delta carried.
    expect(rec.steps.cold.replica.digest).toEqual({ source: 'incremental', store: 'incremental' });
    const lastNote = (host: string, side: string) => drivers.get(host)!.replicas.leaves.notes.filter((n) => n.replicaId === rid && n.side === side).at(-1);
    expect(lastNote('A', 'source')).toMatchObject({ mode: 'incremental' });
    expect(lastNote('B', 'store')).toMatchObject({ mode: 'incremental' });
    // The source VM is gone from A: its image keeps no checkpoint bitmap of the replica.
    expect(await bitmapsOf(lab.data)).toEqual([]);
    const lastDelta = rec.steps.cold.replica.lastDeltaBytes as number;
    expect(lastDelta).toBeLessThanOrEqual(1 * MiB + 64 * 1024);
    // B runs from the replica's store; its content is the source's final state.
    const bDisk = await diskOf('B');
    expect(bDisk).toContain(join(lab.tmp, 'B', 'agent', 'disks', vmId));
    await exec('qemu-img', ['compare', '-U', '-f', 'qcow2', '-F', 'qcow2', lab.data, bDisk]);
    pids.add((await drivers.get('B')!.pid(vmId))!);
    await waitFor(async () => (await api('GET', `/v1/vms/${vmId}/replicas/${rid}`)).status === 404, 'the consumed replica removed', 60_000);
    const withReplica = coldDowntimeMs(rec);

    // Back to A without a replica: the whole disk is fetched.
    const back = await migrateCold('A');
    expect({ state: back.state, error: back.error }).toEqual({ state: 'completed', error: null });
    expect(back.steps.cold.replica).toBeUndefined();
    expect(back.steps.cold.imported.bytes).toBeGreaterThan(16 * MiB);
    pids.add((await drivers.get('A')!.pid(vmId))!);
    const without = coldDowntimeMs(back);
    console.log(`[numbers] replica seed ${warm.seedBytes} B (64 MiB disk, 16 MiB data); last delta at the move ${lastDelta} B (1 MiB written after the last periodic delta, or less if one took it); cold downtime with replica ${withReplica} ms (digests ${JSON.stringify(rec.steps.cold.replica.digest)} ${rec.steps.cold.replica.digestMs} ms, last delta ${rec.steps.cold.replica.lastDeltaMs} ms; before the power-off: delta ${rec.steps.cold.replica.precopyDeltaBytes} B ${rec.steps.cold.replica.precopyDeltaMs} ms, kept digests ${rec.steps.cold.replica.keptDigestMs} ms), without ${without} ms (fetched ${back.steps.cold.imported.bytes} B)`);
    expect(withReplica).toBeGreaterThan(0);
    expect(without).toBeGreaterThan(0);
  }, 600_000);

  it('a corrupt replica (a byte flipped in its store image) is caught by the digests: the move rolls back, the source runs again, never the wrong disk', async () => {
    // The VM is at A again; a replica at B, then a byte of guest data flipped in B's store.
    const res = await api('POST', `/v1/vms/${vmId}/replicas`, { destinationHostId: 'B', intervalS: 3600 });
    expect(res.status, JSON.stringify(res.body)).toBe(202);
    const rid = res.body.id as string;
    const warm = await waitFor(async () => {
      const r = (await api('GET', `/v1/vms/${vmId}/replicas/${rid}`)).body;
      return r.state === 'warm' || r.state === 'failed' ? r : undefined;
    }, 'replica warm');
    expect({ state: warm.state, error: warm.error }).toEqual({ state: 'warm', error: null });
    await lab.corruptStore('B', rid);

    const rec = await migrateCold('B');
    expect(rec.state).toBe('rolled_back');
    expect(rec.error).toMatchObject({ code: 'VMTC_COLD_TRANSFER_FAILED', details: { replica: rid, cause: { code: 'VMTC_HOST_DISK_DIGEST_MISMATCH', details: { disks: [{ index: 0, chunks: [4] }] } } } });
    // The source runs again at A; B runs nothing; the corrupt store never became a disk.
    expect((await drivers.get('A')!.describe(vmId)).state).toBe('running');
    pids.add((await drivers.get('A')!.pid(vmId))!);
    await expect(drivers.get('B')!.describe(vmId)).rejects.toMatchObject({ code: expect.stringMatching(/VM_NOT_FOUND$/) });
    expect((await api('GET', `/v1/vms/${vmId}/replicas/${rid}`)).body).toMatchObject({ state: 'failed', error: { code: 'VMTC_HOST_DISK_DIGEST_MISMATCH' } });
    await api('DELETE', `/v1/vms/${vmId}/replicas/${rid}`);
  }, 600_000);

  it('a destination that dies mid-seed: the replica fails with the code, the source VM keeps running and keeps no checkpoint of it', async () => {
    const src = (await drivers.get('A')!.describe(vmId).catch(() => undefined))?.state === 'running' ? 'A' : 'B';
    const dst = src === 'A' ? 'B' : 'A';
    // 4 MiB/s: the ~20 MiB of data take seconds, long enough to stop the destination inside it.
    drivers.get(src)!.replicas.limit(4 * MiB);
    const res = await api('POST', `/v1/vms/${vmId}/replicas`, { destinationHostId: dst, intervalS: 3600 });
    expect(res.status).toBe(202);
    const rid = res.body.id as string;
    const store = join(lab.tmp, dst, 'qemu', 'replicas', rid, 'disk0.qcow2');
    // The store's file grows as data clusters land (its qcow2 metadata stays in the daemon's
    // cache until it closes, so qemu-img map would not show them yet).
    await waitFor(async () => ((await stat(store).catch(() => undefined))?.size ?? 0) >= 2 * MiB, 'the first 2 MiB at the destination', 60_000);
    // The destination host dies: its storage daemon (the store's NBD export; ours, found by its
    // command line naming the store) is killed, then its agent and driver go.
    const daemons = (await readdir('/proc')).filter((p) => /^\d+$/.test(p)).filter((p) => {
      try {
        const cmd = readFileSync(`/proc/${p}/cmdline`, 'utf8');
        return cmd.includes('qemu-storage-daemon') && cmd.includes(store);
      } catch {
        return false;
      }
    });
    expect(daemons).toHaveLength(1);
    process.kill(Number(daemons[0]), 'SIGKILL');
    const idx = dst === 'A' ? 0 : 1;
    await agents[idx]!.close();
    await drivers.get(dst)!.close();
    const failed = await waitFor(async () => {
      const r = (await api('GET', `/v1/vms/${vmId}/replicas/${rid}`)).body;
      return r.state === 'failed' ? r : undefined;
    }, 'replica failed', 120_000);
    expect(failed.error.code, JSON.stringify(failed.error)).toBe('VMTC_HOST_DISK_COPY_FAILED');
    console.log(`[numbers] destination stopped mid-seed: ${failed.error.code} (${JSON.stringify(failed.error.details).slice(0, 200)})`);
    expect((await drivers.get(src)!.describe(vmId)).state).toBe('running');
    expect(await drivers.get(src)!.replicas.checkpoints(vmId, rid)).toEqual([[]]);
    // The guest still writes to its disk and reads it back.
    await drivers.get(src)!.humanMonitor(vmId, 'qemu-io disk0 "write -P 0x66 50M 64k"');
    const r = await drivers.get(src)!.humanMonitor(vmId, 'qemu-io disk0 "read -P 0x66 50M 64k"');
    expect(r).not.toMatch(/Pattern verification failed|error/i);
  }, 600_000);
});
