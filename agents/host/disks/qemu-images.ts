// qemu-img and qemu-storage-daemon as the QEMU backend uses them (docs/disks.md#qemu-cow):
// backing chains, digests of an image's guest-visible bytes, and a storage daemon that holds an
// image no VM runs, with a QMP socket and (at the destination) an NBD export.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { clockSleep, type Clock } from '../../../src/common/clock.ts';
import { hostError } from '../errors.ts';
import type { DigestOptions, DiskDigest } from './backend.ts';
import { digestDisk } from './digest.ts';
import { runOk, systemBlockIo, type CommandRunner } from './io.ts';

export interface ImageInfo {
  filename: string;
  format: string;
  virtualSize: number;
  backingFilename?: string;
  /** Persistent dirty bitmaps stored in a qcow2 image. */
  bitmaps: { name: string; granularity: number; flags: string[] }[];
}

/** `qemu-img info --backing-chain --output=json`: the image first, then each backing file. The
 *  guest sees the chain as one disk; a copy of it must carry every layer (or be flattened). */
export async function backingChain(run: CommandRunner, image: string): Promise<ImageInfo[]> {
  const r = await runOk(run, ['qemu-img', 'info', '-U', '--backing-chain', '--output=json', image], { image });
  let doc: unknown;
  try {
    doc = JSON.parse(r.stdout);
  } catch {
    throw hostError('VMTC_HOST_DISK_TOOL_FAILED', { tool: 'qemu-img info', reason: 'not JSON', output: r.stdout.slice(0, 300) });
  }
  const list = Array.isArray(doc) ? doc : [doc];
  return list.map((i: Record<string, unknown>) => {
    const data = ((i['format-specific'] as { data?: { bitmaps?: unknown } } | undefined)?.data?.bitmaps ?? []) as { name: string; granularity: number; flags: string[] }[];
    const info: ImageInfo = { filename: String(i.filename), format: String(i.format), virtualSize: Number(i['virtual-size']), bitmaps: data.map((b) => ({ name: b.name, granularity: b.granularity, flags: b.flags ?? [] })) };
    if (typeof i['backing-filename'] === 'string') info.backingFilename = i['backing-filename'] as string;
    return info;
  });
}

/** Digest of an image's guest-visible bytes (backing chain included): `qemu-img convert` to a
 *  sparse raw file in `tmpDir` (local I/O only), read by chunks, then removed. `-U` reads an
 *  image a paused QEMU still holds. */
export async function digestImage(run: CommandRunner, image: string, format: string, tmpDir: string, opts: DigestOptions = {}): Promise<DiskDigest> {
  if (!existsSync(image)) throw hostError('VMTC_HOST_DISK_NOT_FOUND', { image });
  const dir = await mkdtemp(join(tmpDir, 'vmtc-digest-'));
  try {
    const raw = join(dir, 'disk.raw');
    await runOk(run, ['qemu-img', 'convert', '-U', '-f', format, '-O', 'raw', image, raw], { image }, 30 * 60_000);
    const size = (await stat(raw)).size;
    return await digestDisk((offset, length) => systemBlockIo.read(raw, offset, length), size, opts);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** sun_path's size less room for the terminating NUL (Linux: 108 bytes). */
const SUN_PATH_MAX = 107;

export interface StorageDaemon {
  pid: number;
  qmpSocket: string;
  /** The NBD server's unix socket, when one was asked for. */
  nbdSocket?: string;
  /** SIGTERM (a clean exit: bitmaps stored, image flushed); `now`: SIGKILL, for a daemon that
   *  holds nothing unwritten (a relay, whose writes were all acknowledged by the remote). */
  stop(opts?: { now?: boolean }): Promise<void>;
}

/** qemu-storage-daemon holding one image as node `disk` (qcow2 over file), with a QMP socket
 *  and optionally a writable NBD export `exportName` (on a unix socket or an inet address). */
export async function startStorageDaemon(opts: {
  image: string;
  format: string;
  dir: string;
  clock: Clock;
  exportName?: string;
  nbd?: { type: 'unix' } | { type: 'inet'; host: string; port: number };
  binary?: string;
  startTimeoutMs?: number;
  /** The network namespace to run it in (the agent's --netns, where its QEMU guests run): an
   *  export on the lightpath address, or a backup job writing to one, needs that namespace's
   *  addresses and routes. `ip netns exec` execs the daemon: its pid is the daemon's. */
  netns?: string;
  /** Instead of the image: the node `disk` is this NBD export elsewhere (a relay, startNbdRelay). */
  remote?: { host: string; port: number; exportName: string };
}): Promise<StorageDaemon> {
  // A unix socket's path must fit sun_path (108 bytes): under a deep data directory the sockets
  // go to a short directory of their own, removed when the daemon stops.
  const sockDir = Buffer.byteLength(join(opts.dir, 'qsd-nbd.sock')) < SUN_PATH_MAX ? opts.dir : await mkdtemp(join(tmpdir(), 'vmtc-qsd-'));
  const ownSockDir = sockDir !== opts.dir;
  const qmpSocket = join(sockDir, 'qsd-qmp.sock');
  const nbdSocket = opts.nbd?.type === 'unix' ? join(sockDir, 'qsd-nbd.sock') : undefined;
  const args = opts.remote
    ? ['--blockdev', `driver=nbd,node-name=disk,server.type=inet,server.host=${opts.remote.host},server.port=${opts.remote.port},export=${opts.remote.exportName.replace(/,/g, ',,')},cache.no-flush=on`]
    : [
        '--blockdev', `driver=file,node-name=file0,filename=${opts.image.replace(/,/g, ',,')}`,
        '--blockdev', `driver=${opts.format},node-name=disk,file=file0`,
      ];
  if (opts.nbd && opts.exportName) {
    args.push('--nbd-server', opts.nbd.type === 'unix' ? `addr.type=unix,addr.path=${nbdSocket}` : `addr.type=inet,addr.host=${opts.nbd.host},addr.port=${opts.nbd.port}`);
    args.push('--export', `type=nbd,id=exp0,node-name=disk,name=${opts.exportName},writable=on`);
  }
  // The daemon takes its options in order: the QMP socket appearing means the export is up.
  args.push('--chardev', `socket,id=qmp0,path=${qmpSocket},server=on,wait=off`, '--monitor', 'chardev=qmp0');
  const binary = opts.binary ?? 'qemu-storage-daemon';
  const argv = opts.netns ? ['ip', 'netns', 'exec', opts.netns, binary, ...args] : [binary, ...args];
  const child: ChildProcess = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d) => {
    stderr = (stderr + String(d)).slice(-2000);
  });
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  let gone = false;
  void exited.then(() => {
    gone = true;
  });
  child.once('error', () => undefined);
  const stop = async (o: { now?: boolean } = {}) => {
    if (!gone && child.pid) await terminate(o.now ? 'SIGKILL' : 'SIGTERM');
    if (ownSockDir) await rm(sockDir, { recursive: true, force: true });
  };
  const terminate = async (signal: 'SIGTERM' | 'SIGKILL') => {
    child.kill(signal); // SIGTERM: a clean exit stores persistent bitmaps and flushes the image
    // Wait for the exit itself (not a polling step: this is on a live move's pause), 10 s at most.
    let timer: { cancel(): void } | undefined;
    const late = await Promise.race([exited.then(() => false), new Promise<boolean>((r) => { timer = opts.clock.setTimeout(() => r(true), 10_000); })]);
    timer?.cancel();
    if (late && !gone) child.kill('SIGKILL');
    await exited;
  };
  const deadline = opts.clock.now() + (opts.startTimeoutMs ?? 10_000);
  for (;;) {
    if (gone) {
      await stop();
      throw hostError('VMTC_HOST_DISK_TOOL_FAILED', { tool: 'qemu-storage-daemon', ...(opts.remote ? { remote: opts.remote } : { image: opts.image }), stderr: stderr.trim() });
    }
    if (existsSync(qmpSocket) && (!nbdSocket || existsSync(nbdSocket))) break;
    if (opts.clock.now() > deadline) {
      await stop();
      throw hostError('VMTC_HOST_DISK_TOOL_FAILED', { tool: 'qemu-storage-daemon', image: opts.image, reason: 'did not start in time', stderr: stderr.trim() });
    }
    await clockSleep(opts.clock, 5);
  }
  return { pid: child.pid!, qmpSocket, ...(nbdSocket ? { nbdSocket } : {}), stop };
}

/** A local relay to a store's NBD export across the path: a qemu-storage-daemon (in `netns`,
 *  where the lightpath address is) whose node is an NBD client of the remote export, exported
 *  again on a unix socket. A running VM's QEMU then opens its NBD node on the local socket:
 *  opening an NBD node holds QEMU's main loop (and so the guest's vCPUs that need it) until the
 *  connection is negotiated, several round trips of the path (about 1 s at 198 ms); the relay
 *  pays them instead, before the VM's QEMU connects. The relay adds no flush and no cache:
 *  a write is acknowledged once the remote acknowledged it. */
export async function startNbdRelay(opts: { remote: { host: string; port: number; exportName: string }; dir: string; clock: Clock; netns?: string; startTimeoutMs?: number }): Promise<StorageDaemon & { exportName: string }> {
  const exportName = 'relay';
  const d = await startStorageDaemon({ image: '', format: 'nbd', dir: opts.dir, clock: opts.clock, exportName, nbd: { type: 'unix' }, remote: opts.remote, startTimeoutMs: opts.startTimeoutMs ?? 30_000, ...(opts.netns ? { netns: opts.netns } : {}) });
  return { ...d, exportName };
}
