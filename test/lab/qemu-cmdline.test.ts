// The QEMU command line is a pure function of the spec: both ends of a migration must build the
// same device model, differing only in host-local paths, tap names and `-incoming defer`.
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { QEMU_ERRORS } from '../../agents/host/qemu/errors.ts';
import { GUEST_ERRORS } from '../../lab/guest/errors.ts';
import { buildQemuArgs, mapRunState, validateSpec, type VmPaths } from '../../agents/host/qemu/cmdline.ts';
import type { VmSpec } from '../../src/common/agent-protocol.ts';

const spec: VmSpec = {
  vmId: 'vm-1', project: 'p', vcpus: 2, memoryMb: 256, diskGb: 1,
  kernel: '/k/vmlinux', initrd: '/k/initrd', append: 'console=ttyS0 vmtc.ip=10.1.1.2/24',
  disks: [{ path: '/d/a,b.qcow2', format: 'qcow2' }],
  nics: [{ mac: '52:54:00:AA:00:01', bridge: 'brvm' }], serialPorts: 1,
};
const paths = (root: string): VmPaths => ({ dir: root, pidfile: `${root}/qemu.pid`, console: `${root}/console.log`, qmp: `${root}/qmp.sock`, serial: [`${root}/serial1.sock`] });

describe('QEMU command line', () => {
  it('is the same device model at both ends, with -incoming defer at the destination only', () => {
    const src = buildQemuArgs({ spec, paths: paths('/a'), taps: ['vtaaaa0'], accel: 'tcg', machine: 'pc-i440fx-7.2', incoming: false });
    const dst = buildQemuArgs({ spec, paths: paths('/b'), taps: ['vtbbbb0'], accel: 'tcg', machine: 'pc-i440fx-7.2', incoming: true });
    expect(buildQemuArgs({ spec, paths: paths('/a'), taps: ['vtaaaa0'], accel: 'tcg', machine: 'pc-i440fx-7.2', incoming: false })).toEqual(src);
    expect(dst.slice(-2)).toEqual(['-incoming', 'defer']);
    const local = (a: string[]) => a.map((x) => x.replace(/\/[ab]\//g, '/X/').replace(/vt(aaaa|bbbb)0/, 'TAP'));
    expect(local(dst.slice(0, -2))).toEqual(local(src));
    expect(src).toContain('virtio-net-pci,netdev=net0,mac=52:54:00:aa:00:01,id=nic0');
    expect(src).toContain('if=virtio,id=disk0,driver=raw,file.driver=qcow2,file.node-name=disk0-fmt,file.file.driver=file,file.file.filename=/d/a,,b.qcow2');
    expect(src).toContain('socket,id=ser1,path=/a/serial1.sock,server=on,wait=off');
    expect(src.join(' ')).toContain('-m 256M -smp 2');
  });

  it('differs between TCG and KVM only in -accel', () => {
    const t = buildQemuArgs({ spec, paths: paths('/a'), taps: ['t'], accel: 'tcg', machine: 'm', incoming: false });
    const k = buildQemuArgs({ spec, paths: paths('/a'), taps: ['t'], accel: 'kvm', machine: 'm', incoming: false });
    const diff = t.map((x, i) => (x === k[i] ? null : [x, k[i]])).filter(Boolean);
    expect(diff).toEqual([['tcg', 'kvm']]);
  });

  it('refuses a bad spec naming the field', () => {
    expect(() => validateSpec({ ...spec, vmId: '../etc' })).toThrow(expect.objectContaining({ code: 'VMTC_QEMU_BAD_SPEC', details: expect.objectContaining({ field: 'vmId' }) }));
    expect(() => validateSpec({ ...spec, nics: [{ mac: 'nope', bridge: 'br' }] })).toThrow(expect.objectContaining({ details: expect.objectContaining({ field: 'nics[0].mac' }) }));
    expect(() => validateSpec({ ...spec, kernel: undefined, initrd: undefined, disks: [] })).toThrow(expect.objectContaining({ details: expect.objectContaining({ field: 'kernel' }) }));
  });

  it('maps QEMU run states to VM states', () => {
    expect(mapRunState('running', { migrating: false, incoming: false })).toBe('running');
    expect(mapRunState('running', { migrating: true, incoming: false })).toBe('migrating');
    expect(mapRunState('inmigrate', { migrating: false, incoming: true })).toBe('incoming');
    expect(mapRunState('prelaunch', { migrating: false, incoming: true })).toBe('incoming');
    expect(mapRunState('postmigrate', { migrating: false, incoming: false })).toBe('postmigrate');
    expect(mapRunState('paused', { migrating: false, incoming: false })).toBe('paused');
    expect(mapRunState('guest-panicked', { migrating: false, incoming: false })).toBe('crashed');
    expect(mapRunState('shutdown', { migrating: false, incoming: false })).toBe('stopped');
  });

  it('documents every QEMU, QMP and guest error code in docs/qemu.md', () => {
    const doc = readFileSync(resolve(import.meta.dirname, '../../docs/qemu.md'), 'utf8');
    for (const [code, spec] of Object.entries({ ...QEMU_ERRORS, ...GUEST_ERRORS })) {
      expect(doc).toContain(`| \`${code}\` | ${spec.status} | ${spec.message} |`);
    }
  });
});
