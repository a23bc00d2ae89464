// Replicas through the controller's REST API against real host agents (DoubleDriver with its
// replica double, agents/host/replicas-double.ts: real disk bytes over real TCP between the
// agents): a seed, deltas every interval, the lag, removal that leaves nothing behind, a
// destination that dies mid-seed, and refusals of bad requests.
import { afterEach, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { startHarness, type Harness } from '../helpers/controller-harness.ts';
import { diskVm, writeAt } from '../helpers/replica-disks.ts';

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

const KiB = 1024;
const MiB = 1024 * KiB;



describe('replicas: REST API, state machine and the agents (DoubleDriver, replica double)', () => {
  it('seeds a copy while the VM runs, sends deltas every interval with their lag, and removes store and checkpoints', async () => {
    h = await startHarness();
    const vm = diskVm(h, 'vm1', 2, 4);
    const a = await h.addHost('A', { vms: [vm.spec] });
    const b = await h.addHost('B');

    const res = await h.api('POST', '/v1/vms/vm1/replicas', { destinationHostId: 'B', intervalS: 1 });
    expect(res.status).toBe(202);
    expect(res.body).toMatchObject({ vmId: 'vm1', sourceHostId: 'A', destinationHostId: 'B', intervalS: 1, state: 'seeding', checkpoint: null });
    const rid = res.body.id as string;
    // Asked again: the same replica, not a second one.
    const again = await h.api('POST', '/v1/vms/vm1/replicas', { destinationHostId: 'B' });
    expect({ status: again.status, id: again.body.id }).toEqual({ status: 200, id: rid });

    const warm = await h.waitFor(async () => {
      const r = (await h!.api('GET', `/v1/vms/vm1/replicas/${rid}`)).body;
      return r.state === 'warm' ? r : undefined;
    }, 'replica warm');
    // Zeros are not sent: the seed moved the 2 MiB of data of the 4 MiB disk.
    expect(warm).toMatchObject({ state: 'warm', diskBytes: 4 * MiB, seedBytes: 2 * MiB, checkpoint: { id: `${rid}-0`, seq: 0 }, error: null });
    const [store] = await b.replicas.storePaths(rid);
    expect(readFileSync(store!).equals(readFileSync(vm.path))).toBe(true);

    // Writes in the guest's disk: 128 KiB over two 64 KiB blocks, and one byte in a third.
    writeAt(vm.path, 1 * MiB, randomBytes(128 * KiB));
    writeAt(vm.path, 3 * MiB + 5, Buffer.from([0x42]));
    const seq0 = (await h.api('GET', `/v1/vms/vm1/replicas/${rid}`)).body;
    // The lag is what the source counts since the checkpoint the store holds (unless a delta
    // took the writes already: then it is 0 and the next assertion covers them).
    expect([0, 192 * KiB]).toContain(seq0.lag.bytes);
    const synced = await h.waitFor(async () => {
      const r = (await h!.api('GET', `/v1/vms/vm1/replicas/${rid}`)).body;
      return r.deltas >= 1 && readFileSync(store!).equals(readFileSync(vm.path)) && r.lag.bytes === 0 ? r : undefined;
    }, 'a delta with the writes');
    expect(synced.bytesSent).toBe(2 * MiB + 192 * KiB);
    expect(synced.checkpoint.seq).toBe(synced.deltas);
    expect(synced.lag.seconds).toBeGreaterThanOrEqual(0);
    // The source keeps one checkpoint: the one the store holds.
    expect(a.replicas.checkpointIds('vm1')).toEqual([synced.checkpoint.id]);

    const list = await h.api('GET', '/v1/vms/vm1/replicas');
    expect(list.body.replicas.map((r: any) => r.id)).toEqual([rid]);

    const del = await h.api('DELETE', `/v1/vms/vm1/replicas/${rid}`);
    expect({ status: del.status, state: del.body.state }).toEqual({ status: 202, state: 'removing' });
    await h.waitFor(async () => (await h!.api('GET', `/v1/vms/vm1/replicas/${rid}`)).status === 404, 'replica gone');
    expect(b.replicas.hasStore(rid)).toBe(false);
    expect(existsSync(store!)).toBe(false);
    expect(a.replicas.checkpointIds('vm1')).toEqual([]);
    expect((await h.api('GET', '/v1/vms/vm1/replicas')).body.replicas).toEqual([]);
    // The VM ran throughout.
    expect((await a.describe('vm1')).state).toBe('running');
  });

  it('a destination that dies mid-seed: the replica fails with the code, the source VM keeps running and keeps no checkpoint', async () => {
    h = await startHarness();
    const vm = diskVm(h, 'vm2', 4, 4);
    // 16 Mbit/s: the 4 MiB seed takes about 2 s, long enough to stop B inside it.
    const a = await h.addHost('A', { vms: [vm.spec], replicas: { bandwidthMbps: 16 } });
    const b = await h.addHost('B');
    const res = await h.api('POST', '/v1/vms/vm2/replicas', { destinationHostId: 'B' });
    expect(res.status).toBe(202);
    const rid = res.body.id as string;
    // Some of the seed has arrived at B.
    await h.waitFor(async () => {
      const f = b.replicas.storeFile(rid, 0);
      return !!f && existsSync(f) && readFileSync(f).subarray(0, 64 * KiB).equals(readFileSync(vm.path).subarray(0, 64 * KiB));
    }, 'the first block at B');
    await h.stopHost('B');
    const failed = await h.waitFor(async () => {
      const r = (await h!.api('GET', `/v1/vms/vm2/replicas/${rid}`)).body;
      return r.state === 'failed' ? r : undefined;
    }, 'replica failed');
    expect(failed.error.code).toBe('VMTC_HOST_DISK_COPY_FAILED');
    expect(failed.checkpoint).toBeNull();
    expect((await a.describe('vm2')).state).toBe('running');
    expect(a.replicas.checkpointIds('vm2')).toEqual([]);
    // Removal waits for B: the record stays, removing, with why.
    const del = await h.api('DELETE', `/v1/vms/vm2/replicas/${rid}`);
    expect(del.status).toBe(202);
    const removing = await h.waitFor(async () => {
      const r = (await h!.api('GET', `/v1/vms/vm2/replicas/${rid}`)).body;
      return r.state === 'removing' && r.error ? r : undefined;
    }, 'removal refused while B is away');
    expect(removing.error.code).toBe('VMTC_AGENT_NOT_CONNECTED');
  });

  it('bad requests get coded errors', async () => {
    h = await startHarness();
    const vm = diskVm(h, 'vm3', 1, 1);
    await h.addHost('A', { vms: [vm.spec] });
    await h.addHost('B');
    const cases: [string, string, unknown, number, string][] = [
      ['POST', '/v1/vms/nope/replicas', { destinationHostId: 'B' }, 404, 'VMTC_VM_NOT_FOUND'],
      ['POST', '/v1/vms/vm3/replicas', { destinationHostId: 'A' }, 409, 'VMTC_SAME_HOST'],
      ['POST', '/v1/vms/vm3/replicas', { destinationHostId: 'Z' }, 404, 'VMTC_HOST_NOT_FOUND'],
      ['POST', '/v1/vms/vm3/replicas', { destinationHostId: 'B', intervalS: 0 }, 400, 'VMTC_VALIDATION'],
      ['POST', '/v1/vms/vm3/replicas', { destinationHostId: 'B', extra: 1 }, 400, 'VMTC_VALIDATION'],
      ['GET', '/v1/vms/vm3/replicas/rep_nope', undefined, 404, 'VMTC_REPLICA_NOT_FOUND'],
      ['DELETE', '/v1/vms/vm3/replicas/rep_nope', undefined, 404, 'VMTC_REPLICA_NOT_FOUND'],
    ];
    for (const [m, p, body, status, code] of cases) {
      const r = await h.api(m, p, body);
      expect({ m, p, status: r.status, code: r.body?.code }).toEqual({ m, p, status, code });
    }
    expect((await h.api('GET', '/v1/vms/vm3/replicas')).body).toEqual({ replicas: [] });
  });
});
