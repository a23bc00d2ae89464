// Live migration with a warm replica, real QEMU (TCG) through a real controller and two host
// agents with the QEMU driver, on loopback (the replica's stores listen on the migration address,
// 127.0.0.1 here; no lightpath): a replica of a running guest's qcow2 disk is seeded, the guest's
// disk is written, and a live move to the replica's host boots the incoming QEMU from the
// replica's store (no drive-mirror): the delta since the store's checkpoint goes while memory is
// pre-copied and the last one in the pause before the switchover, the digests of both sides are
// compared there, and `qemu-img compare` finds B's disk equal to the source's final state. A
// corrupt store cancels the move and the VM runs on at the source. The mirror path without a
// replica: test/lab/qemu-storage-migration.test.ts, test/lab/e2e-storage.test.ts.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { exec } from './qemu-helpers.ts';
import { ReplicaLab } from './replica-lab.ts';

const MiB = 1024 * 1024;

describe('live migration with a warm replica, real QEMU (loopback)', () => {
  const lab = new ReplicaLab('rl');
  const { drivers, pids, vmId } = lab;
  const api = lab.api.bind(lab);
  const waitFor = lab.waitFor.bind(lab);
  const diskOf = lab.diskOf.bind(lab);

  async function migrate(to: string, during?: (migrationId: string) => Promise<void>, bandwidthMbps?: number): Promise<any> {
    const res = await api('POST', '/v1/migrations', { vmId, destinationHostId: to, mode: 'live', ...(bandwidthMbps ? { bandwidthMbps } : {}) });
    expect(res.status, JSON.stringify(res.body)).toBe(202);
    if (during) await during(res.body.id);
    return waitFor(async () => {
      const r = (await api('GET', `/v1/migrations/${res.body.id}`)).body;
      return ['completed', 'rolled_back', 'failed'].includes(r.state) ? r : undefined;
    }, 'the live move', 300_000);
  }

  beforeAll(() => lab.start('vmtc-rl-'), 300_000);
  afterAll(() => lab.close(), 120_000);

  async function warmReplica(to: string): Promise<any> {
    const res = await api('POST', `/v1/vms/${vmId}/replicas`, { destinationHostId: to, intervalS: 3600 });
    expect(res.status, JSON.stringify(res.body)).toBe(202);
    const warm = await waitFor(async () => {
      const r = (await api('GET', `/v1/vms/${vmId}/replicas/${res.body.id}`)).body;
      return r.state === 'warm' || r.state === 'failed' ? r : undefined;
    }, 'replica warm');
    expect({ state: warm.state, error: warm.error }).toEqual({ state: 'warm', error: null });
    return warm;
  }

  it('seeds, the guest writes, a live move to the replica sends only the deltas and B runs from the store: qemu-img compare equal', async () => {
    const warm = await warmReplica('B');
    const rid = warm.id as string;
    // Writes through the guest's block layer after the seed (interval 1 h: no periodic delta).
    const written = 3 * MiB + 64 * 1024;
    await drivers.get('A')!.humanMonitor(vmId, 'qemu-io disk0 "write -P 0x33 20M 2M"');
    await drivers.get('A')!.humanMonitor(vmId, 'qemu-io disk0 "write -P 0x44 40M 1M"');
    await drivers.get('A')!.humanMonitor(vmId, 'qemu-io disk0 "write -P 0x55 50M 64k"');

    // More writes while memory is pre-copied (40 Mbit/s: seconds of it), once the source's
    // mirror into the store runs (docs/disks.md#following): the mirror carries them as they are
    // written, and nothing of the disk is left for the pause.
    const late = 512 * 1024;
    let wroteLate = false;
    const rec = await migrate('B', async (mid) => {
      await waitFor(async () => (await api('GET', `/v1/vms/${vmId}/replicas/${rid}`)).body.deltas === warm.deltas + 1, 'the pre-copy delta', 120_000);
      await waitFor(async () => /vmtc-follow\./.test(await drivers.get('A')!.humanMonitor(vmId, 'info block-jobs')), 'the mirror into the store', 120_000);
      const m = (await api('GET', `/v1/migrations/${mid}`)).body;
      if (m.state !== 'precopy') return;
      await drivers.get('A')!.humanMonitor(vmId, 'qemu-io disk0 "write -P 0x66 52M 512k"');
      wroteLate = true;
    }, 40);
    expect({ state: rec.state, error: rec.error }).toEqual({ state: 'completed', error: null });
    expect(wroteLate, 'the pre-copy outlasted the mirror\'s start').toBe(true);
    const used = rec.steps.incoming.replica;
    expect(used.precopyDeltaBytes).toBe(written);
    // Nothing was written between the pre-copy delta and the mirror's start: the mirror wrote
    // the late writes and the pause sent nothing. The catch-up (what was written before the
    // mirror began, sent once it runs) is empty, unless the late write came before the
    // catch-up took its checkpoint: then it carried that write too (a CI run under load saw
    // it), which the bound on bytes below still holds.
    expect({ mirrored: used.mirroredBytes, last: used.lastDeltaBytes }).toEqual({ mirrored: late, last: 0 });
    expect([0, late]).toContain(used.catchUpBytes);
    // The follow's relay was released at the source's stop (docs/disks.md#following), and that
    // was no failure; the store was checked while the final state crossed, B held until then.
    // Its job was stopped then too: the pause only waited for that (qemu-follow.ts cutFollows).
    expect(used).toMatchObject({ followCut: true, mirrorsStoppedAtCut: true, storeCheckedAfterSwitchover: true });
    expect(used, JSON.stringify(rec.steps.incoming)).toMatchObject({ replicaId: rid, disks: 1 });
    // No drive-mirror: nothing was exported by the destination for one, nothing mirrored.
    expect(rec.steps.incoming.storage).toBeUndefined();
    expect(rec.result?.storageBytes ?? 0).toBe(0);
    // The digests at the pause were incremental (docs/disks.md#incremental-digests): each side
    // re-read only the chunk the last delta carried (52M + 512k: chunk 52), the rest came from
    // the leaves kept after the pre-copy delta.
    const lastNote = (host: string, side: string) => drivers.get(host)!.replicas.leaves.notes.filter((n) => n.replicaId === rid && n.side === side).at(-1);
    expect(lastNote('A', 'source')).toMatchObject({ mode: 'incremental', chunks: 1 });
    expect(lastNote('B', 'store')).toMatchObject({ mode: 'incremental', chunks: 1 });
    const moved = used.precopyDeltaBytes + used.catchUpBytes + used.mirroredBytes + used.lastDeltaBytes;
    expect(moved).toBeLessThanOrEqual(1.2 * (written + late));
    const bDisk = await diskOf('B');
    expect(bDisk).toBe(join(lab.tmp, 'B', 'qemu', 'replicas', rid, 'disk0.qcow2'));
    pids.add((await drivers.get('B')!.pid(vmId))!);
    await exec('qemu-img', ['compare', '-U', '-f', 'qcow2', '-F', 'qcow2', lab.data, bDisk]);
    // The guest at B reads what it wrote at A.
    for (const [pat, at, len] of [['0x55', '50M', '64k'], ['0x66', '52M', '512k']]) {
      const r = await drivers.get('B')!.humanMonitor(vmId, `qemu-io disk0 "read -P ${pat} ${at} ${len}"`);
      expect(r).not.toMatch(/Pattern verification failed|error/i);
    }
    await waitFor(async () => (await api('GET', `/v1/vms/${vmId}/replicas/${rid}`)).status === 404, 'the consumed replica removed', 60_000);
    await exec('qemu-img', ['compare', '-U', '-f', 'qcow2', '-F', 'qcow2', lab.data, bDisk]);
    console.log(`[numbers] live move with a replica: seed ${warm.seedBytes} B before; at migration time disk bytes moved ${moved} B (pre-copy delta ${used.precopyDeltaBytes} B, catch-up ${used.catchUpBytes} B in ${used.catchUpMs} ms, mirrored ${used.mirroredBytes} B, last delta at the pause ${used.lastDeltaBytes} B in ${used.lastDeltaMs} ms, digests ${used.digestMs} ms) for ${written + late} B written (${written} before the move, ${late} during the pre-copy; ${(moved / (written + late)).toFixed(4)}x); memory ${rec.result?.transferredBytes} B, hypervisor downtime ${rec.result?.downtimeMs} ms`);
  }, 600_000);

  it('a corrupt replica is caught by the digests at the pause: the live move rolls back and the VM runs on at the source', async () => {
    // The VM is at B now: a replica at A, a byte of guest data flipped in A's store.
    const warm = await warmReplica('A');
    const rid = warm.id as string;
    await lab.corruptStore('A', rid);

    const rec = await migrate('A');
    expect(rec.state).toBe('rolled_back');
    expect(rec.error).toMatchObject({ code: 'VMTC_MIGRATION_FAILED', details: { phase: 'digest', replica: rid, cause: { code: 'VMTC_HOST_DISK_DIGEST_MISMATCH', details: { disks: [{ index: 0, chunks: [4] }] } } } });
    // Found with the pause's digests reading only the chunks the last delta carried: the store's
    // leaves kept after the pre-copy delta were read from its (corrupt) image.
    const note = drivers.get('B')!.replicas.leaves.notes.filter((n) => n.replicaId === rid && n.side === 'source').at(-1);
    expect(note?.mode).toBe('incremental');
    expect((await drivers.get('B')!.describe(vmId)).state).toBe('running');
    // The store followed the disk until the pause; the mirror ended there (the VM runs on at B
    // without writing through to A's store).
    expect(await drivers.get('B')!.humanMonitor(vmId, 'info block-jobs')).not.toMatch(/vmtc-follow/);
    await expect(drivers.get('A')!.describe(vmId)).rejects.toMatchObject({ code: expect.stringMatching(/VM_NOT_FOUND$/) });
    const r = await drivers.get('B')!.humanMonitor(vmId, 'qemu-io disk0 "read -P 0x55 50M 64k"');
    expect(r).not.toMatch(/Pattern verification failed|error/i);
    expect((await api('GET', `/v1/vms/${vmId}/replicas/${rid}`)).body).toMatchObject({ state: 'failed', error: { code: 'VMTC_HOST_DISK_DIGEST_MISMATCH' } });
    await api('DELETE', `/v1/vms/${vmId}/replicas/${rid}`);
  }, 600_000);

  it('a store that dies while it follows the disk: the mirror fails, the pause falls back to the last delta from the checkpoint the store holds, and the move commits the right disk', async () => {
    // The VM is at B; a replica at A whose storage daemon is killed once the mirror runs, then a
    // write the mirror cannot carry (the guest's write still succeeds: QEMU fails the job, not
    // the write).
    const warm = await warmReplica('A');
    const rid = warm.id as string;
    const source = await diskOf('B');
    let killed: number | undefined;
    const rec = await migrate('A', async (mid) => {
      await waitFor(async () => /vmtc-follow\./.test(await drivers.get('B')!.humanMonitor(vmId, 'info block-jobs')), 'the mirror into the store', 120_000);
      killed = await lab.killStoreDaemon('A', rid);
      await drivers.get('B')!.humanMonitor(vmId, 'qemu-io disk0 "write -P 0x77 30M 256k"');
      expect((await api('GET', `/v1/migrations/${mid}`)).body.state).toBe('precopy');
    }, 40);
    expect(killed, 'the store\'s storage daemon was found and killed').toBeGreaterThan(0);
    expect({ state: rec.state, error: rec.error }).toEqual({ state: 'completed', error: null });
    const used = rec.steps.incoming.replica;
    // The last delta ran in the pause and carried the write the mirror could not.
    expect(used.lastDeltaBytes).toBeGreaterThanOrEqual(256 * 1024);
    const aDisk = await diskOf('A');
    expect(aDisk).toBe(join(lab.tmp, 'A', 'qemu', 'replicas', rid, 'disk0.qcow2'));
    pids.add((await drivers.get('A')!.pid(vmId))!);
    // The guest at A reads everything it wrote: the late write, and those of the first move.
    for (const [pat, at, len] of [['0x77', '30M', '256k'], ['0x55', '50M', '64k'], ['0x66', '52M', '512k']]) {
      const r = await drivers.get('A')!.humanMonitor(vmId, `qemu-io disk0 "read -P ${pat} ${at} ${len}"`);
      expect(r).not.toMatch(/Pattern verification failed|error/i);
    }
    // B's copy was a consumed replica's store (the first move booted from it): it left with the
    // VM (vm.destroy leftForGood), nobody holds it.
    expect(existsSync(source)).toBe(false);
    console.log(`[numbers] store killed while following: last delta at the pause ${used.lastDeltaBytes} B in ${used.lastDeltaMs} ms (mirrored ${used.mirroredBytes} B before it died), digests ${used.digestMs} ms`);
  }, 600_000);
});
