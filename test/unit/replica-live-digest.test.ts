// The controller's side of the digests at a live move's pause (src/controller/replicas/migration.ts
// verifyLiveReplica; docs/disks.md#incremental-digests), against a hub that answers as agents
// would: with `since`, the source is asked first and the store is told the chunks the source
// found written; a source that answered with a full digest makes the store's full too; a
// mismatch names the chunks and fails the move before the switchover.
import { EventEmitter } from 'node:events';
import { describe, expect, it } from 'vitest';
import type { HostMethods, ReplicaDigest } from '../../src/common/agent-protocol.ts';
import { silentLogger } from '../../src/common/log.ts';
import type { HubPort } from '../../src/controller/ports.ts';
import { verifyLiveReplica } from '../../src/controller/replicas/migration.ts';

type DigestParams = HostMethods['replica.digest'][0];

function hubAnswering(answer: (hostId: string, p: DigestParams) => ReplicaDigest): { hub: HubPort; asked: { hostId: string; params: DigestParams; at: number }[] } {
  const asked: { hostId: string; params: DigestParams; at: number }[] = [];
  let n = 0;
  const hub = Object.assign(new EventEmitter(), {
    isConnected: () => true,
    inventory: () => undefined,
    async request(hostId: string, method: string, params: unknown) {
      if (method !== 'replica.digest') throw new Error(`unexpected ${method}`);
      asked.push({ hostId, params: params as DigestParams, at: n++ });
      await new Promise((r) => setImmediate(r));
      return answer(hostId, params as DigestParams);
    },
  }) as unknown as HubPort;
  return { hub, asked };
}

const cp = { id: 'rep_1-4', seq: 4, takenAt: 10, ref: 'vmtc-cp.rep_1-4' };
const m = { vmId: 'vm1', sourceHostId: 'A', destinationHostId: 'B', replicaId: 'rep_1' };
const disk = (leaves: string[], changed?: number[]): ReplicaDigest['disks'][number] => ({ index: 0, size: leaves.length * 1024 * 1024, chunkBytes: 1024 * 1024, root: leaves.join(''), leaves, ...(changed ? { changed } : {}) });

describe('digests at a live move\'s pause', () => {
  it('with `since`: the store is asked after the source, with the chunks the source found written', async () => {
    const { hub, asked } = hubAnswering((h) => ({ disks: [disk(['a', 'b', 'c'], h === 'A' ? [1] : [1])] }));
    await expect(verifyLiveReplica(hub, silentLogger(), { ...m, since: cp })).resolves.toEqual({ disks: 1, readChunks: 1 });
    expect(asked.map((a) => [a.hostId, a.params])).toEqual([
      ['A', { replicaId: 'rep_1', side: 'source', vmId: 'vm1', since: cp }],
      ['B', { replicaId: 'rep_1', side: 'store', since: cp, changed: [[1]] }],
    ]);
  });

  it('a source that read every chunk (no leaves kept there): the store reads every chunk too', async () => {
    const { hub, asked } = hubAnswering(() => ({ disks: [disk(['a', 'b'])] }));
    await expect(verifyLiveReplica(hub, silentLogger(), { ...m, since: cp })).resolves.toEqual({ disks: 1 });
    expect(asked[1]).toMatchObject({ hostId: 'B', params: { replicaId: 'rep_1', side: 'store' } });
    expect(asked[1]!.params.changed).toBeUndefined();
    expect(asked[1]!.params.since).toBeUndefined();
  });

  it('without `since`: both full, asked at once', async () => {
    const { hub, asked } = hubAnswering(() => ({ disks: [disk(['a'])] }));
    await verifyLiveReplica(hub, silentLogger(), m);
    expect(asked.map((a) => a.params)).toEqual([{ replicaId: 'rep_1', side: 'source', vmId: 'vm1' }, { replicaId: 'rep_1', side: 'store' }]);
  });

  it('a kept leaf that differs (a chunk no delta touched) fails the move with the chunk named', async () => {
    const { hub } = hubAnswering((h) => ({ disks: [disk(h === 'A' ? ['a', 'b', 'c'] : ['a', 'X', 'c'], [2])] }));
    await expect(verifyLiveReplica(hub, silentLogger(), { ...m, since: cp })).rejects.toMatchObject({
      code: 'VMTC_MIGRATION_FAILED', details: { phase: 'digest', replica: 'rep_1', cause: { code: 'VMTC_HOST_DISK_DIGEST_MISMATCH', details: { disks: [{ index: 0, chunks: [1] }] } } },
    });
  });
});
