// A live move with a warm replica at the destination, through the controller and real host
// agents (DoubleDriver and its replica double: real disk bytes over real TCP; hosts without
// shared storage, so without a replica the disks would be mirrored): the destination's incoming
// VM boots from the replica's store, only the delta since its checkpoint crosses (during the
// pre-copy and in the pause before the switchover), and the digests of both sides are compared
// at that pause; a corrupt store cancels the move with the VM running at the source.
import { afterEach, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { startHarness, type Harness } from '../helpers/controller-harness.ts';
import { diskVm, traceRequests, warmReplica, writeAt } from '../helpers/replica-disks.ts';
import { replicaServiceOf } from '../../src/controller/replicas/service.ts';

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

const KiB = 1024;
const MiB = 1024 * KiB;

describe('live migration with a warm replica (DoubleDriver, replica double, no shared storage)', () => {
  it('only the delta since the replica\'s checkpoint crosses; digests equal; B runs from the store, byte-identical to the source', async () => {
    h = await startHarness();
    const vm = diskVm(h, 'vm1', 2, 4);
    const a = await h.addHost('A', { vms: [vm.spec], sharedStorage: false });
    const b = await h.addHost('B', { sharedStorage: false });
    const rid = await warmReplica(h, 'vm1');
    const storeImage = b.replicas.storeFile(rid, 0)!;
    // Written after the seed (interval 1 h: no periodic delta takes it): the migration's delta.
    writeAt(vm.path, 3 * MiB, randomBytes(256 * KiB));
    const final = readFileSync(vm.path);

    const res = await h.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B', mode: 'live' });
    expect(res.status).toBe(202);
    const done = await h.waitState(res.body.id, ['completed', 'rolled_back', 'failed']);
    expect({ state: done.state, error: done.error }).toEqual({ state: 'completed', error: null });
    const used = done.steps.incoming.replica;
    expect(used).toMatchObject({ replicaId: rid, preSeededBytes: 2 * MiB, disks: 1 });
    // Only the delta crossed at migration time: the 256 KiB written since the seed, in the
    // pre-copy delta or the last one, and nothing was mirrored.
    expect(used.precopyDeltaBytes + used.lastDeltaBytes).toBe(256 * KiB);
    expect(done.steps.incoming.storage).toBeUndefined();
    expect(b.lastIncomingTuning('vm1')?.copyStorage).toBeFalsy();
    // B's VM runs from the store's image, which holds the source's final bytes.
    const info = await b.describe('vm1');
    expect(info.state).toBe('running');
    expect(info.spec.disks![0]!.path).toBe(storeImage);
    expect(readFileSync(storeImage).equals(final)).toBe(true);
    // The replica is consumed: its record goes, the image stays as the VM's disk.
    await h.waitFor(async () => (await h!.api('GET', `/v1/vms/vm1/replicas/${rid}`)).status === 404, 'replica removed', 20_000);
    expect(existsSync(storeImage)).toBe(true);
    expect(readFileSync(storeImage).equals(final)).toBe(true);
    await expect(a.describe('vm1')).rejects.toMatchObject({ code: 'VMTC_HOST_VM_NOT_FOUND' });
  });

  it('a VM that runs from a consumed store and moves away for good leaves no store image behind; a store still kept is untouched', async () => {
    h = await startHarness();
    const vm = diskVm(h, 'vm8', 2, 4);
    await h.addHost('A', { vms: [vm.spec], sharedStorage: false });
    const b = await h.addHost('B', { sharedStorage: false });
    const rid = await warmReplica(h, 'vm8');
    const storeImage = b.replicas.storeFile(rid, 0)!;
    const first = await h.api('POST', '/v1/migrations', { vmId: 'vm8', destinationHostId: 'B', mode: 'live' });
    expect((await h.waitState(first.body.id, ['completed', 'rolled_back', 'failed'])).state).toBe('completed');
    expect((await b.describe('vm8')).spec.disks![0]!.path).toBe(storeImage);
    await h.waitFor(async () => (await h!.api('GET', `/v1/vms/vm8/replicas/${rid}`)).status === 404, 'replica consumed', 20_000);
    // A replica of another VM kept at B: its store has a record, and stays.
    const other = diskVm(h, 'vm9', 1, 2);
    await h.addHost('C', { vms: [other.spec], sharedStorage: false });
    const kept = await warmReplica(h, 'vm9', 'B');
    // Back to A, with a replica there (the double does not mirror). Once committed, B's copy,
    // which nobody holds any more, is gone.
    await warmReplica(h, 'vm8', 'A');
    const back = await h.api('POST', '/v1/migrations', { vmId: 'vm8', destinationHostId: 'A', mode: 'live' });
    const backDone = await h.waitState(back.body.id, ['completed', 'rolled_back', 'failed']);
    expect({ state: backDone.state, error: backDone.error }).toEqual({ state: 'completed', error: null });
    expect(existsSync(storeImage)).toBe(false);
    expect(existsSync(b.replicas.storeFile(kept, 0)!)).toBe(true);
  });

  it('the memory copy starts only once the pre-copy delta and both sides\' kept digests are done: the pause never waits for a whole-disk read', async () => {
    h = await startHarness();
    const vm = diskVm(h, 'vm4', 2, 4);
    await h.addHost('A', { vms: [vm.spec], sharedStorage: false });
    await h.addHost('B', { sharedStorage: false });
    const rid = await warmReplica(h, 'vm4');
    expect((await h.api('GET', `/v1/vms/vm4/replicas/${rid}`)).body.lentTo).toBeNull();
    writeAt(vm.path, 1 * MiB, randomBytes(128 * KiB));
    // Every request the controller sends a host, in order; and what the API says of the replica
    // while the memory copy runs.
    let duringCopy: Promise<any> | undefined;
    const sent = traceRequests(h, (method) => {
      if (method === 'vm.migrate') duringCopy ??= h!.api('GET', `/v1/vms/vm4/replicas/${rid}`);
    });
    const res = await h.api('POST', '/v1/migrations', { vmId: 'vm4', destinationHostId: 'B', mode: 'live' });
    const done = await h.waitState(res.body.id, ['completed', 'rolled_back', 'failed']);
    expect({ state: done.state, error: done.error }).toEqual({ state: 'completed', error: null });
    // Lent to the move while it ran: the view says to which.
    expect((await duringCopy!).body).toMatchObject({ state: 'warm', lentTo: res.body.id });
    const migrate = sent.indexOf('vm.migrate@A');
    expect(migrate).toBeGreaterThan(-1);
    for (const keep of ['replica.digest keep@A', 'replica.digest keep@B']) {
      expect(sent.indexOf(keep), sent.join('\n')).toBeGreaterThan(-1);
      expect(sent.indexOf(keep), sent.join('\n')).toBeLessThan(migrate);
    }
    // The pause's digests come after the memory copy started.
    expect(sent.indexOf('replica.digest since@A')).toBeGreaterThan(migrate);
  });

  it('the store follows the disk during the pre-copy: a write made then is carried as it happens (the double: by unfollow), the pause sends nothing, and B holds the final bytes', async () => {
    h = await startHarness();
    const vm = diskVm(h, 'vm5', 2, 4);
    await h.addHost('A', { vms: [vm.spec], sharedStorage: false });
    const b = await h.addHost('B', { sharedStorage: false });
    const rid = await warmReplica(h, 'vm5');
    // Written once the follow began (the memory copy starts after it).
    const sent = traceRequests(h, (method) => {
      if (method === 'vm.migrate') writeAt(vm.path, 2 * MiB, randomBytes(192 * KiB));
    });
    const res = await h.api('POST', '/v1/migrations', { vmId: 'vm5', destinationHostId: 'B', mode: 'live' });
    const done = await h.waitState(res.body.id, ['completed', 'rolled_back', 'failed']);
    expect({ state: done.state, error: done.error }).toEqual({ state: 'completed', error: null });
    // In the pause only the source's side: unfollow, its digest, then the final state goes; the
    // store closes and digests while it crosses, and the held destination runs only after.
    const inOrder = (ms: string[]) => {
      let at = 0;
      for (const m of ms) {
        at = sent.indexOf(m, at);
        expect(at, `${m} in order in\n${sent.join('\n')}`).toBeGreaterThan(-1);
      }
    };
    // In the pause only the mirrors' stop (begun by the source at the VM's stop); the source
    // names the changed chunks itself, in its digest after the final state left; the store
    // digests the chunks it names once closed; B takes its disks as the store closes (while
    // held: disksTaken) and runs only after both digests.
    inOrder(['replica.follow@A', 'vm.migrate@A', 'replica.unfollow@A', 'vm.continueMigration@A']);
    expect(sent, sent.join('\n')).not.toContain('replica.changed@A');
    inOrder(['vm.continueMigration@A', 'replica.digest since@A', 'replica.digest since@B', 'vm.resume@B']);
    inOrder(['replica.unfollow@A', 'replica.closeStore@B', 'replica.digest since@B', 'vm.resume@B']);
    expect(sent.slice(0, sent.indexOf('vm.continueMigration@A')), sent.join('\n')).not.toContain('replica.digest since@A');
    expect(b.disksTaken.has('vm5')).toBe(true);
    expect(b.lastIncomingTuning('vm5')).toMatchObject({ holdAfterLanding: true });
    expect(done.steps.incoming).toMatchObject({ held: true, resumeAsked: true, replica: { storeCheckedAfterSwitchover: true } });
    expect(done.steps.incoming.replica).toMatchObject({ catchUpBytes: 0, mirroredBytes: 192 * KiB, lastDeltaBytes: 0 });
    // No openStore in the pause: the follow's export served it.
    expect(sent.slice(sent.indexOf('vm.migrate@A')).filter((m) => m.startsWith('replica.openStore'))).toEqual([]);
    expect(readFileSync(b.replicas.storeFile(rid, 0)!).equals(readFileSync(vm.path))).toBe(true);
  });

  it('a mirror that fails while the store follows: unfollow reports it, nothing is recorded, the last delta runs in the pause from the checkpoint the store holds, and B holds the final bytes', async () => {
    h = await startHarness();
    const vm = diskVm(h, 'vm6', 2, 4);
    const a = await h.addHost('A', { vms: [vm.spec], sharedStorage: false });
    const b = await h.addHost('B', { sharedStorage: false });
    const rid = await warmReplica(h, 'vm6');
    a.replicas.failNextFollow = true;
    const sent = traceRequests(h, (method) => {
      if (method === 'vm.migrate') writeAt(vm.path, 3 * MiB, randomBytes(128 * KiB));
    });
    const res = await h.api('POST', '/v1/migrations', { vmId: 'vm6', destinationHostId: 'B', mode: 'live' });
    const done = await h.waitState(res.body.id, ['completed', 'rolled_back', 'failed']);
    expect({ state: done.state, error: done.error }).toEqual({ state: 'completed', error: null });
    expect(done.steps.incoming.replica).toMatchObject({ mirroredBytes: 0, lastDeltaBytes: 128 * KiB });
    // The last delta opened the store anew, after the failed follow ended.
    expect(sent.indexOf('replica.openStore@B', sent.indexOf('replica.unfollow@A')), sent.join('\n')).toBeGreaterThan(-1);
    expect(readFileSync(b.replicas.storeFile(rid, 0)!).equals(readFileSync(vm.path))).toBe(true);
  });

  it('a move that fails while the store follows gives the replica back with its follow ended; the next delta brings the store up to date', async () => {
    h = await startHarness();
    const vm = diskVm(h, 'vm7', 2, 4);
    const a = await h.addHost('A', { vms: [vm.spec], sharedStorage: false, failures: { failMigrateAfterBytes: 1 } });
    const b = await h.addHost('B', { sharedStorage: false });
    const rid = await warmReplica(h, 'vm7');
    const sent = traceRequests(h, (method) => {
      if (method === 'vm.migrate') writeAt(vm.path, 1 * MiB, randomBytes(64 * KiB));
    });
    const res = await h.api('POST', '/v1/migrations', { vmId: 'vm7', destinationHostId: 'B', mode: 'live' });
    const done = await h.waitState(res.body.id, ['completed', 'rolled_back', 'failed']);
    expect(done.state).toBe('rolled_back');
    expect((await a.describe('vm7')).state).toBe('running');
    await h.waitFor(() => sent.includes('replica.unfollow@A') || undefined, 'the follow ended');
    const row = await h.waitFor(() => { const r = replicaServiceOf(h!.controller.hub)!.records.get(rid); return r && !r.migrationId ? r : undefined; }, 'replica given back');
    expect(row.state).toBe('warm');
    // The store still holds the checkpoint before the follow: the next delta (run now) carries
    // the write, and the store equals the disk.
    const svc = replicaServiceOf(h.controller.hub)!;
    const next = await svc.exclusive(rid, async () => svc.transferStep(svc.records.get(rid)!));
    expect(next).toMatchObject({ state: 'warm', error: null });
    expect(readFileSync(b.replicas.storeFile(rid, 0)!).equals(readFileSync(vm.path))).toBe(true);
  });

  it('a corrupt replica (a byte flipped in its store) fails the digests at the pause: the move rolls back, the VM runs at the source, B has nothing', async () => {
    h = await startHarness();
    const vm = diskVm(h, 'vm2', 2, 4);
    const a = await h.addHost('A', { vms: [vm.spec], sharedStorage: false });
    const b = await h.addHost('B', { sharedStorage: false });
    const rid = await warmReplica(h, 'vm2');
    const [store] = await b.replicas.storePaths(rid);
    const bad = readFileSync(store!);
    bad[12345] ^= 0xff;
    writeFileSync(store!, bad);
    const before = readFileSync(vm.path);
    const sent = traceRequests(h);

    const res = await h.api('POST', '/v1/migrations', { vmId: 'vm2', destinationHostId: 'B', mode: 'live' });
    const done = await h.waitState(res.body.id, ['completed', 'rolled_back', 'failed']);
    expect(done.state).toBe('rolled_back');
    // The store was checked while the final state crossed: the held destination, which never
    // ran, was removed by the rollback and the source resumed (reducer.ts heldDestinationNeverRan).
    expect(sent.indexOf('vm.continueMigration@A'), sent.join('\n')).toBeGreaterThan(-1);
    expect(sent.indexOf('replica.digest since@B', sent.indexOf('vm.continueMigration@A')), sent.join('\n')).toBeGreaterThan(-1);
    expect(sent).not.toContain('vm.resume@B');
    expect(done.error).toMatchObject({ code: 'VMTC_MIGRATION_FAILED', details: { phase: 'digest', replica: rid, cause: { code: 'VMTC_HOST_DISK_DIGEST_MISMATCH', details: { disks: [{ index: 0, chunks: [0] }] } } } });
    expect((await a.describe('vm2')).state).toBe('running');
    await expect(b.describe('vm2')).rejects.toMatchObject({ code: 'VMTC_HOST_VM_NOT_FOUND' });
    expect(readFileSync(vm.path).equals(before)).toBe(true);
    // The replica failed and is not lent to anyone: not used again.
    expect((await h.api('GET', `/v1/vms/vm2/replicas/${rid}`)).body).toMatchObject({ state: 'failed', error: { code: 'VMTC_HOST_DISK_DIGEST_MISMATCH' } });
  });

  it('a live move that fails for another reason (the destination refuses to prepare) gives the replica back: warm, not lent, its deltas go on', async () => {
    h = await startHarness();
    const vm = diskVm(h, 'vm3', 1, 2);
    await h.addHost('A', { vms: [vm.spec], sharedStorage: false });
    await h.addHost('B', { sharedStorage: false, failures: { failPrepareIncoming: true } });
    const rid = await warmReplica(h, 'vm3');
    const res = await h.api('POST', '/v1/migrations', { vmId: 'vm3', destinationHostId: 'B', mode: 'live' });
    const done = await h.waitState(res.body.id, ['completed', 'rolled_back', 'failed']);
    expect(done.state).toBe('rolled_back');
    expect(done.steps.incoming.replica).toMatchObject({ replicaId: rid });
    // The terminal state's effect gives it back (the record's migrationId, the view's lentTo).
    const row = await h.waitFor(() => { const r = replicaServiceOf(h!.controller.hub)!.records.get(rid); return r && !r.migrationId ? r : undefined; }, 'replica given back');
    expect(row.state).toBe('warm');
    expect((await h.api('GET', `/v1/vms/vm3/replicas/${rid}`)).body).toMatchObject({ state: 'warm', lentTo: null });
    // Lent no more: the next live move may borrow it again (it fails the same way, lending first).
    const again = await h.api('POST', '/v1/migrations', { vmId: 'vm3', destinationHostId: 'B', mode: 'live' });
    const second = await h.waitState(again.body.id, ['completed', 'rolled_back', 'failed']);
    expect(second.steps.incoming.replica).toMatchObject({ replicaId: rid });
  });
});
