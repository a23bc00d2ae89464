// Where the controller thinks a VM is (src/controller/capacity.ts locateVm): the host that
// reports it, never an incoming copy, and a host still listing it stopped only when no other
// host reports it otherwise (a cold move's source lists it stopped for a moment after the move).
import { describe, expect, it } from 'vitest';
import { locateVm } from '../../src/controller/capacity.ts';
import type { HostInventory, VmInfo, VmState } from '../../src/common/agent-protocol.ts';

const vm = (state: VmState): VmInfo => ({ vmId: 'vm1', project: 'p', state, vcpus: 1, memoryMb: 128, diskGb: 1, spec: { vmId: 'vm1', project: 'p', vcpus: 1, memoryMb: 128, diskGb: 1 } } as VmInfo);
const host = (hostId: string, ...vms: VmInfo[]): HostInventory => ({ hostId, vms } as unknown as HostInventory);

describe('locateVm', () => {
  it('prefers the host where the VM is not stopped, whatever the order of the hosts', () => {
    expect(locateVm([host('B', vm('stopped')), host('A', vm('running'))], 'vm1')?.host.hostId).toBe('A');
    expect(locateVm([host('A', vm('running')), host('B', vm('stopped'))], 'vm1')?.host.hostId).toBe('A');
  });
  it('falls back to a host that lists it stopped, never to an incoming copy', () => {
    expect(locateVm([host('B', vm('incoming')), host('A', vm('stopped'))], 'vm1')?.host.hostId).toBe('A');
    expect(locateVm([host('B', vm('incoming'))], 'vm1')).toBeUndefined();
    expect(locateVm([host('A')], 'vm1')).toBeUndefined();
  });
});
