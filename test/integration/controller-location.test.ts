// Where the controller finds a VM right after a migration ends. Host agents push their
// inventories coalesced, a moment after a change; here the coalescing is stretched to a minute
// so that no push follows the migration: what the API then says of the VM's place comes from
// the fresh inventories the migration asked both hosts for before recording its terminal state
// (hub.refreshInventory, src/controller/migration/context.ts refreshInventories). Without them
// a request right after a completed move was refused as VMTC_SAME_HOST, or placed the VM at
// its old host.
import { afterEach, describe, expect, it } from 'vitest';
import { startHarness, vmSpec, type Harness } from '../helpers/controller-harness.ts';

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

const SLOW_PUSH = { inventoryCoalesceMs: 60_000 };
const places = async (vmId: string) => (await h!.api('GET', '/v1/vms')).body.vms.filter((v: any) => v.vmId === vmId).map((v: any) => `${v.hostId}:${v.state}`);

describe('controller: the VM is located where its migration ended, at once', () => {
  it('after a completed live move, then a rolled-back one: GET /v1/vms and the next request see the VM where it is', async () => {
    h = await startHarness();
    await h.addHost('A', { vms: [vmSpec('vm1')] }, undefined, SLOW_PUSH);
    // B, as a source, drops its stream after 64 KiB: the move back fails and rolls back.
    await h.addHost('B', { failures: { failMigrateAfterBytes: 64 * 1024 } }, undefined, SLOW_PUSH);
    const res = await h.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B', mode: 'live' });
    expect(res.status).toBe(202);
    const done = await h.waitState(res.body.id, ['completed', 'rolled_back', 'failed']);
    expect(done.state).toBe('completed');
    expect(await places('vm1')).toEqual(['B:running']);
    // The next move starts from B: back to A is accepted, to B is the same host.
    expect((await h.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B', mode: 'live' })).body.code).toBe('VMTC_SAME_HOST');
    const back = await h.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'A', mode: 'live' });
    expect(back.status).toBe(202);
    const rolled = await h.waitState(back.body.id, ['completed', 'rolled_back', 'failed']);
    expect(rolled.state).toBe('rolled_back');
    // The rollback removed A's incoming copy: B only, running.
    expect(await places('vm1')).toEqual(['B:running']);
  });
});
