// Helpers shared by the QEMU lab tests (not a test file itself).
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { promisify } from 'node:util';
import { rm } from 'node:fs/promises';
import type { MigrationProgress, VmSpec } from '../../src/common/agent-protocol.ts';
import type { QemuDriver } from '../../agents/host/qemu/driver.ts';
import { pino } from 'pino';

export const exec = promisify(execFile);

/** Test logs go to stderr only when VMTC_TEST_LOG is set (e.g. VMTC_TEST_LOG=debug). */
export function testLogger() {
  return pino({ level: process.env.VMTC_TEST_LOG ?? 'silent' }, pino.destination(2));
}

/** The controller's part at the point of no return, for tests that drive the driver directly
 *  (docs/design.md#switchover): let the source continue as soon as it waits before its final
 *  state. Wrap a progress callback with it. */
export function continueAtSwitchover(d: QemuDriver, vmId: string, migrationId: string, onProgress: (p: MigrationProgress) => void = () => undefined): (p: MigrationProgress) => void {
  return (p) => {
    onProgress(p);
    if (p.status === 'pre-switchover') void d.continueMigration(vmId, migrationId);
  };
}

export function shortId(): string {
  return randomBytes(3).toString('hex');
}

/** Wait until `file` contains a line matching `re`; returns the match. */
export async function waitForLine(file: string, re: RegExp, timeoutMs: number): Promise<RegExpMatchArray> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const text = await readFile(file, 'utf8').catch(() => '');
    const m = text.match(re);
    if (m) return m;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${re} in ${file}; it holds:\n${text.slice(-2000)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Read what a unix-socket serial port says for `ms` milliseconds. */
export function readSerial(path: string, ms: number): Promise<string> {
  return new Promise((resolve, reject) => {
    let data = '';
    const s = connect(path);
    s.setEncoding('utf8');
    s.on('data', (d: string) => {
      data += d;
    });
    s.on('error', reject);
    s.on('connect', () => setTimeout(() => {
      s.destroy();
      resolve(data);
    }, ms));
  });
}

export function guestSpec(vmId: string, kernel: string, initrd: string, append: string, extra: Partial<VmSpec> = {}): VmSpec {
  return { vmId, project: 'lab', vcpus: 1, memoryMb: 128, diskGb: 0, kernel, initrd, append, serialPorts: 1, ...extra };
}

/** A throwaway namespace holding bridge `br0` with the paper's virtual gateway 10.1.1.1/24. */
export async function makeSiteNetns(): Promise<{ ns: string; remove(): Promise<void> }> {
  const ns = `vq${shortId()}`;
  const remove = async () => {
    await exec('ip', ['netns', 'del', ns]).catch(() => undefined);
  };
  try {
    await exec('ip', ['netns', 'add', ns]);
    const batch = ['link set lo up', 'link add br0 type bridge', 'addr add 10.1.1.1/24 dev br0', 'link set br0 up'];
    for (const l of batch) await exec('ip', ['-n', ns, ...l.split(' ')]);
  } catch (e) {
    await remove();
    throw e;
  }
  return { ns, remove };
}

/** Test teardown: destroy every VM each driver knows, close the drivers, then kill by pid any
 *  QEMU still left (a driver that failed halfway may have lost track of one) and remove tmp. */
export async function teardownDrivers(drivers: Iterable<QemuDriver | undefined>, pids: Set<number>, tmp?: string): Promise<void> {
  for (const d of drivers) {
    if (!d) continue;
    for (const vm of await d.list().catch(() => [])) {
      const pid = await d.pid(vm.vmId).catch(() => undefined);
      if (pid) pids.add(pid);
      await d.destroy(vm.vmId).catch(() => undefined);
    }
    await d.close().catch(() => undefined);
  }
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* already gone */
    }
  }
  if (tmp) await rm(tmp, { recursive: true, force: true });
}
