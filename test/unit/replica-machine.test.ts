// The replica state machine (src/controller/replicas/machine.ts): every edge of the table, what
// each event leaves in the record, refusals naming the state, and the digest comparison a
// migration makes before it boots from a replica (src/controller/replicas/migration.ts).
import { describe, expect, it } from 'vitest';
import { replicaNext, replicaStep, lagSeconds, REPLICA_STATES, type ReplicaEvent, type ReplicaRow } from '../../src/controller/replicas/machine.ts';
import { digestsDiffer } from '../../src/controller/replicas/migration.ts';

const row = (over: Partial<ReplicaRow> = {}): ReplicaRow => ({
  id: 'rep_1', vmId: 'vm1', sourceHostId: 'A', destinationHostId: 'B', intervalS: 60, state: 'seeding', checkpoint: null,
  diskBytes: 0, seedBytes: 0, lastDeltaBytes: 0, deltas: 0, bytesSent: 0, lastSyncAt: null, lagBytes: 7, migrationId: null, error: null,
  createdAt: 1000, updatedAt: 1000, ...over,
});
const cp = (seq: number) => ({ id: `rep_1-${seq}`, seq, takenAt: 5, ref: `r${seq}` });
const transfer = (kind: 'full' | 'delta', seq: number, bytes: number) => ({ kind, checkpoint: cp(seq), ...(seq ? { from: cp(seq - 1) } : {}), diskBytes: 4096, bytes, ms: 3, disks: 1 });
const error = { code: 'VMTC_HOST_DISK_COPY_FAILED', message: 'x' };

describe('replica state machine', () => {
  it('seeding → warm on SEEDED: the checkpoint, seed and sent bytes, the sync time, no lag', () => {
    expect(replicaNext(row(), { type: 'SEEDED', transfer: transfer('full', 0, 100) }, 2000)).toMatchObject({
      state: 'warm', checkpoint: cp(0), diskBytes: 4096, seedBytes: 100, bytesSent: 100, lastSyncAt: 2000, lagBytes: 0, error: null, updatedAt: 2000,
    });
  });
  it('warm → warm on DELTA_SENT (counts add up) and DELTA_FAILED (error kept, checkpoint unchanged)', () => {
    const w = row({ state: 'warm', checkpoint: cp(0), seedBytes: 100, bytesSent: 100, lastSyncAt: 2000 });
    const d = replicaNext(w, { type: 'DELTA_SENT', transfer: transfer('delta', 1, 30) }, 3000)!;
    expect(d).toMatchObject({ state: 'warm', checkpoint: cp(1), lastDeltaBytes: 30, deltas: 1, bytesSent: 130, seedBytes: 100, lastSyncAt: 3000 });
    const f = replicaNext(d, { type: 'DELTA_FAILED', error }, 4000)!;
    expect(f).toMatchObject({ state: 'warm', checkpoint: cp(1), error, lastSyncAt: 3000 });
    expect(replicaNext(f, { type: 'DELTA_SENT', transfer: transfer('delta', 2, 1) }, 5000)!.error).toBeNull();
  });
  it('failures, verification, consumption and removal', () => {
    expect(replicaNext(row(), { type: 'SEED_FAILED', error }, 2)).toMatchObject({ state: 'failed', error, checkpoint: null });
    const w = row({ state: 'warm', checkpoint: cp(0) });
    expect(replicaNext(w, { type: 'VERIFY_FAILED', error }, 2)).toMatchObject({ state: 'failed', error });
    expect(replicaNext(w, { type: 'CONSUMED', migrationId: 'mig_1' }, 2)).toMatchObject({ state: 'removing', migrationId: 'mig_1' });
    for (const s of REPLICA_STATES) expect(replicaNext(row({ state: s }), { type: 'REMOVE' }, 2)!.state).toBe('removing');
    expect(replicaNext(row({ state: 'removing' }), { type: 'REMOVE_FAILED', error }, 2)).toMatchObject({ state: 'removing', error });
    expect(replicaNext(row({ state: 'removing' }), { type: 'REMOVED' }, 2)).toBeNull();
  });
  it('refuses an event the state does not allow, naming the state', () => {
    const bad: [ReplicaRow['state'], ReplicaEvent][] = [
      ['seeding', { type: 'DELTA_SENT', transfer: transfer('delta', 1, 1) }],
      ['warm', { type: 'SEEDED', transfer: transfer('full', 0, 1) }],
      ['failed', { type: 'DELTA_FAILED', error }],
      ['failed', { type: 'CONSUMED', migrationId: 'm' }],
      ['removing', { type: 'SEEDED', transfer: transfer('full', 0, 1) }],
      ['seeding', { type: 'REMOVED' }],
    ];
    for (const [state, ev] of bad) expect(() => replicaNext(row({ state }), ev, 1)).toThrow(expect.objectContaining({ code: 'VMTC_REPLICA_STATE', details: expect.objectContaining({ state, event: ev.type }) }));
  });
  it('the step of each state, and the lag in seconds from the last sync (or the creation)', () => {
    expect(REPLICA_STATES.map(replicaStep)).toEqual(['seed', 'delta', 'none', 'remove']);
    expect(lagSeconds(row(), 4000)).toBe(3);
    expect(lagSeconds(row({ lastSyncAt: 10_000 }), 12_600)).toBe(3);
  });
});

describe('digestsDiffer', () => {
  const d = (root: string, leaves: string[], size = 2) => ({ index: 0, size, chunkBytes: 1, root, leaves });
  it('equal digests: nothing differs; a root that differs names its chunks; a size or disk count that differs names the disk', () => {
    expect(digestsDiffer({ disks: [d('r', ['a', 'b'])] }, { disks: [d('r', ['a', 'b'])] })).toEqual([]);
    expect(digestsDiffer({ disks: [d('r', ['a', 'b'])] }, { disks: [d('s', ['a', 'c'])] })).toEqual([{ index: 0, chunks: [1] }]);
    expect(digestsDiffer({ disks: [d('r', ['a', 'b'])] }, { disks: [d('r', ['a', 'b'], 3)] })).toEqual([{ index: 0, chunks: [] }]);
    expect(digestsDiffer({ disks: [d('r', ['a', 'b'])] }, { disks: [] })).toEqual([{ index: 0, chunks: [] }]);
  });
});
