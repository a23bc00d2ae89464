// The QEMU command line, as a pure function of the VM spec and the host-side paths, so the
// destination of a migration builds exactly the source's device model (QEMU migrates device
// state by id and order: both ends must agree). Only host-local things differ between the two
// ends: paths, tap names, and `-incoming defer` on the destination.
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { VmSpec, VmState } from '../../../src/common/agent-protocol.ts';
import { sha256Hex } from '../../../src/common/hash.ts';
import { qemuError } from './errors.ts';

export type Accel = 'tcg' | 'kvm';

/** Settings in spec.extra this driver reads (all optional; everything else is ignored). How one
 *  migration runs (multifd, post-copy, storage copy, suspend) is never here: it comes with that
 *  migration (prepareIncoming's tuning, migrate's params). */
export interface QemuSpecExtra {
  /** Concrete machine type. The driver fills it in at start (resolving the `pc` alias) so the
   *  destination gets the same versioned type. */
  machine?: string;
  /** CPU model. Default qemu64: migratable between any two x86 hosts, TCG or KVM. */
  cpu?: string;
  /** Virtual size in bytes of each entry of spec.disks, read from QEMU (query-block) at start,
   *  so a destination without shared storage can create copies of the same size. */
  diskBytes?: number[];
  /** Extra QEMU arguments appended verbatim (both ends must be given the same). */
  qemuArgs?: string[];
}

export interface VmPaths {
  /** Per-VM directory: vm.json, qemu.pid, console.log. */
  dir: string;
  pidfile: string;
  console: string;
  qmp: string;
  /** Host side of the guest's serial ports 1..n (unix sockets; the lab reads the heartbeat here). */
  serial: string[];
}

/** Host-side paths of a VM under a QEMU driver's data dir (also for the lab's probes, which read
 *  the serial heartbeat and console of a VM run by an agent in another process). */
export function qemuVmPaths(dataDir: string, vmId: string, serialPorts: number): VmPaths {
  const dir = join(dataDir, 'vms', vmId);
  // Unix socket paths are limited to 108 bytes; a long dataDir gets its sockets in a short,
  // deterministic directory (so a restarted agent computes the same one).
  const longest = join(dir, 'serial3.sock');
  const sockDir = longest.length <= 100 ? dir : join(tmpdir(), `vmtc-q-${sha256Hex(dir).slice(0, 12)}`);
  const serial: string[] = [];
  for (let n = 1; n <= serialPorts; n++) serial.push(join(sockDir, `serial${n}.sock`));
  return { dir, pidfile: join(dir, 'qemu.pid'), console: join(dir, 'console.log'), qmp: join(sockDir, 'qmp.sock'), serial };
}

export interface CmdlineInput {
  spec: VmSpec;
  paths: VmPaths;
  taps: string[];
  accel: Accel;
  machine: string;
  incoming: boolean;
  /** `-S`: do not start the guest by itself (a storage-copy destination starts it after closing
   *  its NBD exports). Changes nothing in the device model. */
  startPaused?: boolean;
  /** The writable qcow2 disks are this host's own files (a storage copy's, a replica store's),
   *  not shared storage: an incoming VM's activation need not drop their page cache (QEMU's
   *  `drop-cache`, there for storage another host wrote; dropping a just-written 1 GiB file's
   *  pages took tens of ms at the landing in the lab, and its first reads then went to disk). */
  localDisks?: boolean;
}

const VM_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const MAC = /^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/;

export function validateSpec(spec: VmSpec): void {
  const bad = (field: string, reason: string) => qemuError('VMTC_QEMU_BAD_SPEC', { field, reason });
  if (typeof spec.vmId !== 'string' || !VM_ID.test(spec.vmId)) throw bad('vmId', 'letters, digits, _ . - only, at most 64');
  if (!Number.isInteger(spec.vcpus) || spec.vcpus < 1 || spec.vcpus > 256) throw bad('vcpus', 'an integer 1..256');
  if (!Number.isInteger(spec.memoryMb) || spec.memoryMb < 16) throw bad('memoryMb', 'an integer >= 16');
  if (!spec.kernel && !(spec.disks && spec.disks.length)) throw bad('kernel', 'a kernel or at least one disk is needed to boot');
  if (spec.initrd && !spec.kernel) throw bad('initrd', 'an initrd needs a kernel');
  for (const [i, n] of (spec.nics ?? []).entries()) {
    if (!MAC.test(n.mac)) throw bad(`nics[${i}].mac`, 'six hex bytes separated by colons');
    if (!/^[A-Za-z0-9_.-]{1,15}$/.test(n.bridge)) throw bad(`nics[${i}].bridge`, 'an interface name');
  }
  const sp = spec.serialPorts ?? 0;
  if (!Number.isInteger(sp) || sp < 0 || sp > 3) throw bad('serialPorts', 'an integer 0..3 (ttyS1..ttyS3)');
}

/** QEMU option values use ',' as a separator; a literal comma is written twice. */
function q(v: string): string {
  return v.replace(/,/g, ',,');
}

export function extraOf(spec: VmSpec): QemuSpecExtra {
  return (spec.extra ?? {}) as QemuSpecExtra;
}

export function buildQemuArgs(i: CmdlineInput): string[] {
  const { spec, paths, taps } = i;
  const x = extraOf(spec);
  const a: string[] = [
    '-name', `guest=${spec.vmId},debug-threads=on`,
    '-machine', q(i.machine),
    '-accel', i.accel,
    '-cpu', q(x.cpu ?? 'qemu64'),
    '-m', `${spec.memoryMb}M`,
    '-smp', String(spec.vcpus),
    '-nodefaults', '-no-user-config', '-display', 'none',
    // A guest reboot or panic ends the process, which the driver reports; no silent reboot loops.
    '-no-reboot',
    '-rtc', 'base=utc',
  ];
  if (spec.kernel) a.push('-kernel', spec.kernel);
  if (spec.initrd) a.push('-initrd', spec.initrd);
  if (spec.append) a.push('-append', spec.append);
  for (const [n, d] of (spec.disks ?? []).entries()) {
    // A writable qcow2 disk is a raw pass-through node over the qcow2 node `diskN-fmt`: a live
    // move's mirror into a replica's store runs on the top node while the backup jobs and the
    // checkpoint bitmaps use the qcow2 node below it (QEMU allows one job a node;
    // docs/disks.md#following). The guest sees the same bytes.
    if (d.format === 'qcow2' && !d.readonly) a.push('-drive', `if=virtio,id=disk${n},driver=raw,file.driver=qcow2,file.node-name=disk${n}-fmt,file.file.driver=file,file.file.filename=${q(d.path)}${i.localDisks ? ',file.file.drop-cache=off' : ''}`);
    else a.push('-drive', `file=${q(d.path)},format=${d.format},if=virtio,id=disk${n}${d.readonly ? ',readonly=on' : ''}`);
  }
  for (const [n, nic] of (spec.nics ?? []).entries()) {
    a.push('-netdev', `tap,id=net${n},ifname=${taps[n]},script=no,downscript=no`);
    a.push('-device', `virtio-net-pci,netdev=net${n},mac=${nic.mac.toLowerCase()},id=nic${n}`);
  }
  a.push('-chardev', `file,id=ser0,path=${q(paths.console)},append=on`, '-serial', 'chardev:ser0');
  for (const [n, sock] of paths.serial.entries()) {
    // server=on,wait=off: QEMU listens and never blocks the guest waiting for a reader.
    a.push('-chardev', `socket,id=ser${n + 1},path=${q(sock)},server=on,wait=off`, '-serial', `chardev:ser${n + 1}`);
  }
  a.push('-chardev', `socket,id=qmp,path=${q(paths.qmp)},server=on,wait=off`, '-mon', 'chardev=qmp,mode=control');
  a.push('-pidfile', paths.pidfile, '-daemonize');
  // The destination starts with the same devices and waits for `migrate-incoming` (QMP), which
  // lets the driver set capabilities and pick the listen address first.
  if (i.incoming) a.push('-incoming', 'defer');
  if (i.startPaused) a.push('-S');
  if (x.qemuArgs) a.push(...x.qemuArgs);
  return a;
}

/** QEMU run states (qapi RunState) → vmtc VM states. Pure, so the mapping is tested directly. */
export function mapRunState(status: string, ctx: { migrating: boolean; incoming: boolean }): VmState {
  switch (status) {
    case 'running':
      return ctx.migrating ? 'migrating' : 'running';
    case 'inmigrate':
      return 'incoming';
    case 'finish-migrate':
      return 'migrating';
    case 'postmigrate':
      return 'postmigrate';
    case 'prelaunch':
      return ctx.incoming ? 'incoming' : 'paused';
    case 'shutdown':
      return 'stopped';
    case 'internal-error':
    case 'guest-panicked':
      return 'crashed';
    default:
      // paused, suspended, save-vm, restore-vm, debug, io-error, watchdog, colo
      return 'paused';
  }
}
