// A committed move ends the VM's replicas (docs/disks.md#replicas): their checkpoints were taken
// of the source's disks, which go with the source VM, so a replica kept after the move would
// fail every delta; and the checkpoints left on the disks the source VM leaves go with it (the
// source agent drops them once the VM is destroyed there). Through the controller and real host
// agents (DoubleDriver and its replica double, whose checkpoints belong to the disks).
import { afterEach, describe, expect, it } from 'vitest';
import { startHarness, type Harness } from '../helpers/controller-harness.ts';
import { randomBytes } from 'node:crypto';
import { hostError } from '../../agents/host/errors.ts';
import { diskVm, warmReplica, writeAt } from '../helpers/replica-disks.ts';

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

describe('a committed move removes the VM\'s replicas', () => {
  it('live move to the replica\'s host: the replica (not used by the live path) is removed, store and checkpoints gone', async () => {
    h = await startHarness();
    const vm = diskVm(h, 'vm1', 1, 2);
    const a = await h.addHost('A', { vms: [vm.spec] });
    const b = await h.addHost('B');
    const rid = await warmReplica(h, 'vm1', 'B');
    expect(b.replicas.hasStore(rid)).toBe(true);
    expect(a.replicas.checkpointIds('vm1')).not.toEqual([]);

    const res = await h.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B', mode: 'live' });
    expect(res.status).toBe(202);
    const done = await h.waitState(res.body.id, ['completed', 'rolled_back', 'failed']);
    expect({ state: done.state, error: done.error }).toEqual({ state: 'completed', error: null });
    await h.waitFor(async () => (await h!.api('GET', `/v1/vms/vm1/replicas/${rid}`)).status === 404, 'replica removed', 20_000);
    expect(b.replicas.hasStore(rid)).toBe(false);
    expect((await h.api('GET', '/v1/vms/vm1/replicas')).body).toMatchObject({ replicas: [] });
  });

  it('cold move to another host: the replica at B (not the destination) is removed too', async () => {
    h = await startHarness();
    const vm = diskVm(h, 'vm2', 1, 2);
    await h.addHost('A', { vms: [vm.spec] });
    const b = await h.addHost('B');
    await h.addHost('C');
    const rid = await warmReplica(h, 'vm2', 'B');

    const res = await h.api('POST', '/v1/migrations', { vmId: 'vm2', destinationHostId: 'C', mode: 'cold' });
    const done = await h.waitState(res.body.id, ['completed', 'rolled_back', 'failed']);
    expect({ state: done.state, error: done.error }).toEqual({ state: 'completed', error: null });
    expect(done.steps.cold.replica).toBeUndefined();
    await h.waitFor(async () => (await h!.api('GET', `/v1/vms/vm2/replicas/${rid}`)).status === 404, 'replica removed', 20_000);
    expect(b.replicas.hasStore(rid)).toBe(false);
  });

  it('committed live move with the replica (no shared storage): no checkpoint of it is left on the source\'s disk', async () => {
    h = await startHarness();
    const vm = diskVm(h, 'vm3', 1, 2);
    const a = await h.addHost('A', { vms: [vm.spec], sharedStorage: false });
    await h.addHost('B', { sharedStorage: false });
    const rid = await warmReplica(h, 'vm3');
    writeAt(vm.path, 1536 * 1024, randomBytes(64 * 1024));
    const res = await h.api('POST', '/v1/migrations', { vmId: 'vm3', destinationHostId: 'B', mode: 'live' });
    const done = await h.waitState(res.body.id, ['completed', 'rolled_back', 'failed']);
    expect({ state: done.state, error: done.error }).toEqual({ state: 'completed', error: null });
    expect(done.steps.incoming.replica).toMatchObject({ replicaId: rid });
    expect(a.replicas.checkpointIds('vm3')).toEqual([]);
    expect(done.warnings ?? []).toEqual([]);
  });

  it('committed cold move with the replica: no checkpoint of it is left on the source\'s disk', async () => {
    h = await startHarness();
    const vm = diskVm(h, 'vm4', 1, 2);
    const a = await h.addHost('A', { vms: [vm.spec] });
    await h.addHost('B');
    const rid = await warmReplica(h, 'vm4');
    writeAt(vm.path, 1536 * 1024, randomBytes(64 * 1024));
    const res = await h.api('POST', '/v1/migrations', { vmId: 'vm4', destinationHostId: 'B', mode: 'cold' });
    const done = await h.waitState(res.body.id, ['completed', 'rolled_back', 'failed']);
    expect({ state: done.state, error: done.error }).toEqual({ state: 'completed', error: null });
    expect(done.steps.cold.replica).toMatchObject({ used: true, replicaId: rid });
    expect(a.replicas.checkpointIds('vm4')).toEqual([]);
  });

  it('checkpoints that cannot be dropped leave the move committed, with a warning on it', async () => {
    h = await startHarness();
    const vm = diskVm(h, 'vm5', 1, 2);
    const a = await h.addHost('A', { vms: [vm.spec] });
    await h.addHost('B');
    await warmReplica(h, 'vm5');
    a.replicas.dropDiskCheckpoints = async () => {
      throw hostError('VMTC_HOST_DISK_TOOL_FAILED', { tool: 'qemu-img bitmap' });
    };
    const res = await h.api('POST', '/v1/migrations', { vmId: 'vm5', destinationHostId: 'B', mode: 'cold' });
    const done = await h.waitState(res.body.id, ['completed', 'rolled_back', 'failed']);
    expect({ state: done.state, error: done.error }).toEqual({ state: 'completed', error: null });
    expect(done.warnings).toEqual([expect.objectContaining({ code: 'VMTC_HOST_DISK_TOOL_FAILED', details: expect.objectContaining({ hostId: 'A', step: expect.stringContaining('replica checkpoints') }) })]);
    expect(a.replicas.checkpointIds('vm5')).not.toEqual([]);
  });
});
