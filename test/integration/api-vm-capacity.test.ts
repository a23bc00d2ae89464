// Starting a VM that does not fit (POST /v1/vms) is a client's 4xx, never a 507: a VM bigger than
// any host of the fleet is 422 VMTC_VM_TOO_LARGE (it fits nowhere, whatever else runs), a host
// that could hold it but is too full now is 409 VMTC_INSUFFICIENT_* (as is the agent's own
// refusal, VMTC_HOST_INSUFFICIENT_RESOURCES, when its count disagrees with the controller's).
// A real controller and host agents on the hypervisor test double.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startHarness, vmSpec, type Harness } from '../helpers/controller-harness.ts';

let h: Harness;
beforeAll(async () => {
  h = await startHarness();
  // A: 4 GiB, 100 GB of its own disk, already running a 3 GiB VM; BIG: 16 GiB, 500 GB.
  await h.addHost('A', { memoryMb: 4096, diskGb: 100, sharedStorage: false, vms: [vmSpec('resident', { memoryMb: 3072 })] });
  await h.addHost('BIG', { memoryMb: 16_384, diskGb: 500, sharedStorage: false });
});
afterAll(async () => { await h?.close(); });

const start = (hostId: string, over: { memoryMb?: number; diskGb?: number }, vmId = `v-${Math.random().toString(36).slice(2, 8)}`) =>
  h.api('POST', '/v1/vms', { hostId, spec: { ...vmSpec(vmId), ...over } });

describe('POST /v1/vms that does not fit', () => {
  it('422 VMTC_VM_TOO_LARGE for more memory or disk than any host has in all', async () => {
    expect(await start('A', { memoryMb: 20_000 })).toMatchObject({ status: 422, body: { code: 'VMTC_VM_TOO_LARGE', details: { resource: 'memoryMb', need: 20_000, largestHost: 16_384 } } });
    expect(await start('BIG', { diskGb: 600 })).toMatchObject({ status: 422, body: { code: 'VMTC_VM_TOO_LARGE', details: { resource: 'diskGb', need: 600, largestHost: 500 } } });
  });

  it('409 VMTC_INSUFFICIENT_* for a VM another host could hold, or this one once it has room', async () => {
    // Bigger than A in all, but BIG could hold it.
    expect(await start('A', { memoryMb: 8192 })).toMatchObject({ status: 409, body: { code: 'VMTC_INSUFFICIENT_MEMORY', details: { hostId: 'A' } } });
    // Fits A's totals, not what is free on it now.
    expect(await start('A', { memoryMb: 2048 })).toMatchObject({ status: 409, body: { code: 'VMTC_INSUFFICIENT_MEMORY', details: { hostId: 'A', availableMb: 1024 } } });
    expect(await start('A', { diskGb: 200 })).toMatchObject({ status: 409, body: { code: 'VMTC_INSUFFICIENT_DISK' } });
    // And one that fits starts.
    expect((await start('A', { memoryMb: 512 })).status).toBe(201);
  });

  it('the agent\'s own "no room" crosses the agent link as a 409, not a 507', async () => {
    await expect(h.controller.hub.request('A', 'vm.start', { spec: vmSpec('past-controller', { memoryMb: 4096 }) }))
      .rejects.toMatchObject({ code: 'VMTC_HOST_INSUFFICIENT_RESOURCES', status: 409 });
  });
});
