// The lab setup of the replica tests with real QEMU (test/lab/replica-qemu.test.ts,
// replica-live-qemu.test.ts): a real controller and two host agents A and B with the QEMU driver on
// loopback, and a running guest at A with a 64 MiB qcow2 data disk holding 16 MiB of 0x5a. Not a
// test file. start() in beforeAll, close() in afterAll: close() tears down whatever start() got
// to, also after it failed halfway.
import { mkdtemp, open, readdir, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startController, type Controller } from '../../src/controller/index.ts';
import { startHostAgent, type HostAgent } from '../../agents/host/index.ts';
import { QemuDriver } from '../../agents/host/qemu/driver.ts';
import { buildGuestImage, guestAppend } from '../../lab/guest/build.ts';
import { exec, guestSpec, shortId, testLogger, waitForLine, teardownDrivers } from './qemu-helpers.ts';

const MiB = 1024 * 1024;

export class ReplicaLab {
  tmp = '';
  ctl: Controller | undefined;
  readonly drivers = new Map<string, QemuDriver>();
  readonly agents: HostAgent[] = [];
  readonly pids = new Set<number>();
  readonly vmId: string;
  /** The guest's data disk at A. */
  data = '';

  constructor(vmPrefix: string) {
    this.vmId = `${vmPrefix}-${shortId()}`;
  }

  async api(method: string, path: string, body?: unknown): Promise<{ status: number; body: any }> {
    const res = await fetch(this.ctl!.url + path, {
      method, headers: { authorization: `Bearer ${this.ctl!.adminToken}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    });
    const text = await res.text();
    return { status: res.status, body: text ? JSON.parse(text) : undefined };
  }

  async waitFor<T>(fn: () => Promise<T | undefined | false>, what: string, ms = 120_000): Promise<T> {
    const until = Date.now() + ms;
    for (;;) {
      const v = await fn();
      if (v) return v;
      if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** The disk file `host`'s QEMU runs the VM from. */
  async diskOf(host: string): Promise<string> {
    return (await this.drivers.get(host)!.describe(this.vmId)).spec.disks![0]!.path;
  }

  /** Flip one byte of guest data in `host`'s store image of replica `rid` (guest offset 4 MiB +
   *  777, in the data the seed wrote: chunk 4 of 1 MiB chunks), found through the image's map.
   *  Returns the store image's path. */
  async corruptStore(host: string, rid: string): Promise<string> {
    const store = join(this.tmp, host, 'qemu', 'replicas', rid, 'disk0.qcow2');
    const { stdout } = await exec('qemu-img', ['map', '--output=json', store]);
    const ext = (JSON.parse(stdout) as { start: number; length: number; data: boolean; offset?: number }[]).find((x) => x.data && x.start <= 4 * MiB && x.start + x.length > 4 * MiB)!;
    const fh = await open(store, 'r+');
    try {
      const at = ext.offset! + (4 * MiB - ext.start) + 777;
      const b = Buffer.alloc(1);
      await fh.read(b, 0, 1, at);
      b[0] ^= 0xff;
      await fh.write(b, 0, 1, at);
    } finally {
      await fh.close();
    }
    return store;
  }

  /** Kill -9 the storage daemon exporting `host`'s store of replica `rid` (a child of this
   *  process: the agents run in it). Returns its pid, or undefined when none runs. */
  async killStoreDaemon(host: string, rid: string): Promise<number | undefined> {
    const image = join(this.tmp, host, 'qemu', 'replicas', rid, 'disk0.qcow2');
    for (const d of await readdir('/proc')) {
      if (!/^\d+$/.test(d)) continue;
      const pid = Number(d);
      try {
        const cmd = (await readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0');
        const ppid = Number((await readFile(`/proc/${pid}/stat`, 'utf8')).split(') ')[1]!.split(' ')[1]);
        if (ppid === process.pid && cmd[0]!.endsWith('qemu-storage-daemon') && cmd.some((a) => a.includes(image))) {
          process.kill(pid, 'SIGKILL');
          return pid;
        }
      } catch {
        /* gone meanwhile */
      }
    }
    return undefined;
  }

  private async addHost(hostId: string): Promise<void> {
    const drv = new QemuDriver({ dataDir: join(this.tmp, hostId, 'qemu'), logger: testLogger(), pollMs: 100 });
    this.drivers.set(hostId, drv);
    const tok = this.ctl!.hub.mintEnrollToken({ kind: 'host', hostId });
    this.agents.push(await startHostAgent({ controllerUrl: this.ctl!.url, enrollToken: tok.token, dataDir: join(this.tmp, hostId, 'agent'), driver: drv, logger: testLogger(), migrationAddress: '127.0.0.1', backoff: { initialMs: 50, maxMs: 500, jitter: 0.2 } }));
    await this.waitFor(async () => this.ctl!.hub.inventory(hostId), `inventory of ${hostId}`);
  }

  async start(tmpPrefix: string): Promise<void> {
    const img = await buildGuestImage();
    this.tmp = await mkdtemp(join(tmpdir(), tmpPrefix));
    this.ctl = await startController({ dataDir: join(this.tmp, 'controller'), listen: { host: '127.0.0.1', port: 0 }, agentListen: { host: '127.0.0.1', port: 0 }, logger: testLogger(), runner: { statusPollMs: 200, destinationRunTimeoutMs: 60_000 } });
    await this.addHost('A');
    await this.addHost('B');
    // The guest's data disk: 64 MiB qcow2, 16 MiB of 0x5a.
    this.data = join(this.tmp, 'data.qcow2');
    await exec('qemu-img', ['create', '-q', '-f', 'qcow2', this.data, '64M']);
    await exec('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x5a 0 16M', this.data]);
    const a = this.drivers.get('A')!;
    await a.start(guestSpec(this.vmId, img.kernel, img.initrd, guestAppend({ heartbeatMs: 50 }), { disks: [{ path: this.data, format: 'qcow2' }] }));
    this.pids.add((await a.pid(this.vmId))!);
    await waitForLine((await a.paths(this.vmId)).console, /VMTC-GUEST-READY/, 90_000);
    await this.waitFor(async () => this.ctl!.hub.inventory('A')?.vms.some((v) => v.vmId === this.vmId && v.state === 'running'), 'the VM in A\'s inventory');
  }

  async close(): Promise<void> {
    for (const ag of this.agents.splice(0)) await ag.close().catch(() => undefined);
    await this.ctl?.close().catch(() => undefined);
    await teardownDrivers(this.drivers.values(), this.pids, this.tmp || undefined);
  }
}
