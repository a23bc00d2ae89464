// A cold move with a warm replica, through the controller and real host agents (DoubleDriver and
// its replica double: real disk bytes over real TCP): after the power-off only the last delta
// crosses and the destination boots from the replica's store once the digests agree; a corrupt
// store is caught by the digests and the move rolls back. Before the power-off a delta and both
// sides' kept digests; after it the digests re-read only the chunks the last delta carried, each
// side falling back to a full digest on its own. Without a replica
// the cold path is unchanged (test/integration/controller-cold.test.ts).
import { afterEach, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { startHarness, type Harness } from '../helpers/controller-harness.ts';
import { diskVm, traceRequests, warmReplica, writeAt } from '../helpers/replica-disks.ts';

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

const KiB = 1024;
const MiB = 1024 * KiB;

/** The disk file B's VM runs from. */
async function destinationDisk(harness: Harness, vmId: string): Promise<Buffer> {
  const info = await harness.agents.get('B')!.driver.describe(vmId);
  return readFileSync(info.spec.disks![0]!.path);
}

describe('cold migration with a warm replica (DoubleDriver, replica double)', () => {
  it('only the last delta crosses after the power-off; B boots from the replica, byte-identical to the source; the replica goes', async () => {
    h = await startHarness();
    const vm = diskVm(h, 'vm1', 2, 4);
    const a = await h.addHost('A', { vms: [vm.spec] });
    const b = await h.addHost('B');
    const rid = await warmReplica(h, 'vm1');
    // Written after the seed (interval 1 h: no periodic delta takes it): the last delta's bytes.
    writeAt(vm.path, 3 * MiB, randomBytes(256 * KiB));
    const final = readFileSync(vm.path);

    const res = await h.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B', mode: 'cold' });
    expect(res.status).toBe(202);
    const done = await h.waitState(res.body.id, ['completed', 'rolled_back', 'failed']);
    expect({ state: done.state, error: done.error }).toEqual({ state: 'completed', error: null });
    // The 256 KiB went in the delta before the power-off; nothing was written after it.
    expect(done.steps.cold.replica).toMatchObject({ used: true, replicaId: rid, precopyDeltaBytes: 256 * KiB, lastDeltaBytes: 0, preSeededBytes: 2 * MiB, disks: 1 });
    // Nothing was fetched: the disk came from the replica's store. Nor was it checksummed after
    // the power-off (the export came without: downtime for nothing).
    expect(done.steps.cold.imported.bytes).toBe(0);
    expect(done.steps.cold.disks).toEqual([expect.objectContaining({ index: 0, sha256: '' })]);
    expect((await destinationDisk(h, 'vm1')).equals(final)).toBe(true);
    // The replica is gone once the migration ended: the store became the VM's disk.
    await h.waitFor(async () => (await h!.api('GET', `/v1/vms/vm1/replicas/${rid}`)).status === 404, 'replica removed', 20_000);
    expect(b.replicas.hasStore(rid)).toBe(false);
    expect(a.replicas.checkpointIds('vm1')).toEqual([]);
  });

  it('a replica that is no longer usable when the disks move (removed after the export): the source checksums its disks then, B fetches them whole and checks them', async () => {
    h = await startHarness();
    const vm = diskVm(h, 'vm5', 2, 4);
    await h.addHost('A', { vms: [vm.spec] });
    await h.addHost('B');
    const rid = await warmReplica(h, 'vm5');
    writeAt(vm.path, 1 * MiB, randomBytes(64 * KiB));
    const sent = traceRequests(h, (method) => {
      // Once the source is off and its disks published (without checksums), the replica goes.
      if (method === 'vm.coldExport') void h!.api('DELETE', `/v1/vms/vm5/replicas/${rid}`);
    });
    const res = await h.api('POST', '/v1/migrations', { vmId: 'vm5', destinationHostId: 'B', mode: 'cold' });
    const done = await h.waitState(res.body.id, ['completed', 'rolled_back', 'failed']);
    expect({ state: done.state, error: done.error }).toEqual({ state: 'completed', error: null });
    expect(done.steps.cold.replica, JSON.stringify(done.steps.cold.replica)).not.toMatchObject({ used: true });
    expect(sent.indexOf('vm.coldChecksums@A'), sent.join('\n')).toBeGreaterThan(sent.indexOf('vm.coldExport@A'));
    expect(sent.indexOf('vm.coldImport@B')).toBeGreaterThan(sent.indexOf('vm.coldChecksums@A'));
    expect(done.steps.cold.imported.bytes).toBe(4 * MiB);
    expect((await destinationDisk(h, 'vm5')).equals(readFileSync(vm.path))).toBe(true);
  });

  it('a corrupt replica (a byte flipped in its store) is caught by the digests: the move rolls back, the replica is failed, the next move copies the disk whole', async () => {
    h = await startHarness();
    const vm = diskVm(h, 'vm2', 2, 4);
    const a = await h.addHost('A', { vms: [vm.spec] });
    const b = await h.addHost('B');
    const rid = await warmReplica(h, 'vm2');
    const [store] = await b.replicas.storePaths(rid);
    const bad = readFileSync(store!);
    bad[12345] ^= 0xff;
    writeFileSync(store!, bad);

    const res = await h.api('POST', '/v1/migrations', { vmId: 'vm2', destinationHostId: 'B', mode: 'cold' });
    const done = await h.waitState(res.body.id, ['completed', 'rolled_back', 'failed']);
    expect(done.state).toBe('rolled_back');
    expect(done.error).toMatchObject({ code: 'VMTC_COLD_TRANSFER_FAILED', details: { replica: rid, cause: { code: 'VMTC_HOST_DISK_DIGEST_MISMATCH', details: { disks: [{ index: 0, chunks: [0] }] } } } });
    // The source runs again, B has nothing: the corrupt store never became a VM's disk.
    expect((await a.describe('vm2')).state).toBe('running');
    await expect(b.describe('vm2')).rejects.toMatchObject({ code: 'VMTC_HOST_VM_NOT_FOUND' });
    expect((await h.api('GET', `/v1/vms/vm2/replicas/${rid}`)).body).toMatchObject({ state: 'failed', error: { code: 'VMTC_HOST_DISK_DIGEST_MISMATCH' } });
    // A failed replica is not used: the next move fetches the whole disk and B runs the source's bytes.
    const again = await h.api('POST', '/v1/migrations', { vmId: 'vm2', destinationHostId: 'B', mode: 'cold' });
    const ok = await h.waitState(again.body.id, ['completed', 'rolled_back', 'failed']);
    expect({ state: ok.state, error: ok.error }).toEqual({ state: 'completed', error: null });
    expect(ok.steps.cold.replica).toBeUndefined();
    expect(ok.steps.cold.imported.bytes).toBe(4 * MiB);
    expect((await destinationDisk(h, 'vm2')).equals(readFileSync(vm.path))).toBe(true);
  });

  /** Run `before` when the controller asks A to power the VM off and export it (the VM still
   *  runs: the kept digests are done by then); every request sent, in order. */
  function atPowerOff(harness: Harness, before: () => void): string[] {
    return traceRequests(harness, (method) => {
      if (method === 'vm.coldExport') before();
    });
  }
  const lastNote = (host: { replicas: { leaves: { notes: { replicaId: string; side: string }[] } } }, rid: string, side: string) => host.replicas.leaves.notes.filter((n) => n.replicaId === rid && n.side === side).at(-1);

  it('the digests after the power-off are incremental: kept before it (the VM running), then only the chunk the last delta wrote is re-read a side', async () => {
    h = await startHarness();
    const vm = diskVm(h, 'vm3', 2, 4);
    const a = await h.addHost('A', { vms: [vm.spec] });
    const b = await h.addHost('B');
    const rid = await warmReplica(h, 'vm3');
    writeAt(vm.path, 3 * MiB, randomBytes(256 * KiB));
    // A guest write after the kept digests, just before the power-off: chunk 1 (1 MiB chunks).
    const sent = atPowerOff(h, () => writeAt(vm.path, 1 * MiB + 128 * KiB, randomBytes(64 * KiB)));

    const res = await h.api('POST', '/v1/migrations', { vmId: 'vm3', destinationHostId: 'B', mode: 'cold' });
    const done = await h.waitState(res.body.id, ['completed', 'rolled_back', 'failed']);
    expect({ state: done.state, error: done.error }).toEqual({ state: 'completed', error: null });
    expect(done.steps.cold.replica).toMatchObject({
      used: true, replicaId: rid, precopyDeltaBytes: 256 * KiB, lastDeltaBytes: 64 * KiB, preSeededBytes: 2 * MiB,
      keptAt: { seq: 1 }, digest: { source: 'incremental', store: 'incremental' }, readChunks: 1,
    });
    for (const k of ['precopyDeltaMs', 'keptDigestMs', 'lastDeltaMs', 'digestMs']) expect(typeof done.steps.cold.replica[k], k).toBe('number');
    // Both sides kept their leaves before the VM was powered off, and digested `since` them after.
    const exportAt = sent.indexOf('vm.coldExport@A');
    for (const keep of ['replica.digest keep@A', 'replica.digest keep@B']) expect(sent.indexOf(keep), sent.join('\n')).toBeLessThan(exportAt);
    for (const since of ['replica.digest since@A', 'replica.digest since@B']) expect(sent.indexOf(since), sent.join('\n')).toBeGreaterThan(exportAt);
    expect(lastNote(a, rid, 'source')).toMatchObject({ mode: 'incremental', chunks: 1 });
    expect(lastNote(b, rid, 'store')).toMatchObject({ mode: 'incremental', chunks: 1 });
    expect((await destinationDisk(h, 'vm3')).equals(readFileSync(vm.path))).toBe(true);
  });

  it('kept leaves lost at the destination (as an agent restart loses them): its digest falls back to full, the source\'s stays incremental, the move commits', async () => {
    h = await startHarness();
    const vm = diskVm(h, 'vm4', 2, 4);
    const a = await h.addHost('A', { vms: [vm.spec] });
    const b = await h.addHost('B');
    const rid = await warmReplica(h, 'vm4');
    atPowerOff(h, () => {
      writeAt(vm.path, 2 * MiB + 4 * KiB, randomBytes(8 * KiB));
      b.replicas.leaves.forget(rid);
    });
    const res = await h.api('POST', '/v1/migrations', { vmId: 'vm4', destinationHostId: 'B', mode: 'cold' });
    const done = await h.waitState(res.body.id, ['completed', 'rolled_back', 'failed']);
    expect({ state: done.state, error: done.error }).toEqual({ state: 'completed', error: null });
    expect(done.steps.cold.replica).toMatchObject({ used: true, lastDeltaBytes: 64 * KiB, digest: { source: 'incremental', store: 'full' } });
    expect(lastNote(a, rid, 'source')).toMatchObject({ mode: 'incremental', chunks: 1 });
    expect(lastNote(b, rid, 'store')).toMatchObject({ mode: 'full', chunks: 4 });
    expect((await destinationDisk(h, 'vm4')).equals(readFileSync(vm.path))).toBe(true);
  });

  it('a store corrupted in a chunk the last delta wrote (elsewhere in it) is caught by the incremental digests: rolled back', async () => {
    h = await startHarness();
    const vm = diskVm(h, 'vm5', 2, 4);
    const a = await h.addHost('A', { vms: [vm.spec] });
    const b = await h.addHost('B');
    const rid = await warmReplica(h, 'vm5');
    atPowerOff(h, () => {
      // After both sides kept their leaves: the guest writes 64 KiB in chunk 1, and a byte of the
      // store flips in chunk 1 outside what the last delta will write.
      writeAt(vm.path, 1 * MiB, randomBytes(64 * KiB));
      const store = b.replicas.storeFile(rid, 0)!;
      const bad = readFileSync(store);
      bad[1 * MiB + 512 * KiB] ^= 0xff;
      writeFileSync(store, bad);
    });
    const res = await h.api('POST', '/v1/migrations', { vmId: 'vm5', destinationHostId: 'B', mode: 'cold' });
    const done = await h.waitState(res.body.id, ['completed', 'rolled_back', 'failed']);
    expect(done.state).toBe('rolled_back');
    expect(done.error).toMatchObject({ code: 'VMTC_COLD_TRANSFER_FAILED', details: { replica: rid, cause: { code: 'VMTC_HOST_DISK_DIGEST_MISMATCH', details: { disks: [{ index: 0, chunks: [1] }] } } } });
    expect(lastNote(a, rid, 'source')).toMatchObject({ mode: 'incremental', chunks: 1 });
    expect(lastNote(b, rid, 'store')).toMatchObject({ mode: 'incremental', chunks: 1 });
    expect((await a.describe('vm5')).state).toBe('running');
    await expect(b.describe('vm5')).rejects.toMatchObject({ code: 'VMTC_HOST_VM_NOT_FOUND' });
    expect((await h.api('GET', `/v1/vms/vm5/replicas/${rid}`)).body).toMatchObject({ state: 'failed', error: { code: 'VMTC_HOST_DISK_DIGEST_MISMATCH' } });
  });
});
