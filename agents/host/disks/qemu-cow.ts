// The QEMU copy-on-write backend (docs/disks.md#qemu-cow), with QEMU's own incremental backup
// machinery (QEMU's dirty-bitmap documentation, "Incremental Backups - Push Model"):
//   checkpoint  a persistent dirty bitmap `vmtc-cp.ID` on the disk's qcow2 node, added in the
//               same QMP `transaction` that starts the backup job, so the copy is the disk as of
//               that instant (the job copies a block out before the guest overwrites it) and the
//               bitmap records exactly the writes after it. The previous checkpoint's bitmap is
//               disabled in that transaction: it then holds exactly the blocks between the two.
//   full        `blockdev-backup sync=full` into the destination's NBD export (a block node
//               `blockdev-add`ed with the nbd driver)
//   delta       `blockdev-backup sync=bitmap` with the previous checkpoint's bitmap and
//               bitmap-mode never (sync=incremental would clear it on success; it is kept for
//               a retry until removeCheckpoint)
//   failure     the new bitmap is merged back into the previous one, which records again, and
//               removed: nothing written meanwhile is lost, the retry starts from `from`
//   remove      `block-dirty-bitmap-remove`
// A disk no VM runs (the cold path) is opened by a qemu-storage-daemon for the transfer, with
// the persistent bitmaps the VM left in the image; the same jobs run there.
// The destination store (qemu-store.ts) is a qcow2 image exported over NBD by a
// qemu-storage-daemon; what it holds is recorded beside it.
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { clockSleep, systemClock, type Clock } from '../../../src/common/clock.ts';
import type { Logger } from '../../../src/common/log.ts';
import { hostError } from '../errors.ts';
import { QmpClient } from '../qemu/qmp.ts';
import { CHECKPOINT_ID, type ChangedBlocks, type Checkpoint, type DigestOptions, type DiskDigest, type DiskStateBackend, type SourceDisk, type TransferReport } from './backend.ts';
import { runOk, systemRunner, type CommandRunner } from './io.ts';
import { digestImageByMap, openImageReader, parseMap, type ImageReader } from './image-reader.ts';
import { dirtyReader, storedDirtyRanges, type ByteRange, type DirtyReader, type QmpPort } from './qemu-dirty.ts';
import { startNbdRelay, startStorageDaemon } from './qemu-images.ts';
import { QemuStore, type NbdDestination } from './qemu-store.ts';

export type { QmpPort } from './qemu-dirty.ts';

export interface QemuCowOptions {
  /** The QMP connection of a running VM. */
  qmpFor(vmId: string): Promise<QmpPort>;
  logger: Logger;
  runner?: CommandRunner;
  clock?: Clock;
  /** Scratch space (digests, storage daemon sockets). Default the OS temp dir. */
  tmpDir?: string;
  /** Bitmap granularity in bytes (default: QEMU's, the image's cluster size, 64 KiB). */
  granularity?: number;
  /** Longest a backup job may run (default 1 h). */
  jobTimeoutMs?: number;
  pollMs?: number;
  /** Copy rate limit, bytes/s (the job's `speed`). */
  speed?: number;
  /** Network namespace for the storage daemons (qemu-images.ts startStorageDaemon). */
  netns?: string;
  /** Relays connected ahead to stores' exports (QemuReplicas.preconnect), by NbdConnections.key:
   *  the next job writing to that export takes one instead of connecting then. */
  preconnected?: Map<string, PreconnectedRelay>;
}

/** An NBD server a QEMU node can open: the store's export itself, or a local relay to it. */
export type NbdConnection = { server: Record<string, unknown>; exportName: string; close(): Promise<void>; pid?: number };
export interface PreconnectedRelay { replicaId: string; conn: NbdConnection; timer: { cancel(): void } }
/** The key of an export across the path, for preconnected relays. */
export const exportKey = (dest: NbdDestination): string => (dest.nbd.type === 'inet' ? `${dest.nbd.host}:${dest.nbd.port}/${dest.exportName}` : `unix:${dest.nbd.path}/${dest.exportName}`);

interface NodeInfo {
  'node-name': string;
  drv: string;
  'dirty-bitmaps'?: { name: string; count: number; granularity: number; recording: boolean; persistent: boolean; busy: boolean }[];
}

interface JobInfo {
  id: string;
  status: string;
  'current-progress': number;
  'total-progress': number;
  error?: string;
}

export const bitmapOf = (id: string) => `vmtc-cp.${id}`;

export class QemuCowBackend implements DiskStateBackend<NbdDestination> {
  readonly kind = 'qemu-cow' as const;
  private readonly run: CommandRunner;
  private readonly clock: Clock;
  private readonly tmp: string;
  private readonly jobTimeoutMs: number;
  private readonly pollMs: number;

  constructor(private readonly opts: QemuCowOptions) {
    this.run = opts.runner ?? systemRunner;
    this.clock = opts.clock ?? systemClock;
    this.tmp = opts.tmpDir ?? tmpdir();
    this.jobTimeoutMs = opts.jobTimeoutMs ?? 3_600_000;
    this.pollMs = opts.pollMs ?? 50;
  }

  /** The backend's scratch directory (relays, storage daemons' sockets). */
  /** The network namespace its storage daemons and relays run in (the lightpath's side). */
  get netns(): string | undefined {
    return this.opts.netns;
  }

  get scratchDir(): string {
    return this.tmp;
  }

  // ---- source ------------------------------------------------------------------------------

  async seed(disk: SourceDisk, id: string, dest: NbdDestination): Promise<TransferReport> {
    checkId(id);
    return this.withNode(disk, async (qmp, node, size) => {
      const t0 = this.clock.now();
      const bm = bitmapOf(id);
      if ((await this.bitmaps(qmp, node)).some((b) => b.name === bm)) throw hostError('VMTC_HOST_DISK_CHECKPOINT_EXISTS', { checkpoint: id });
      const add: Record<string, unknown> = { node, name: bm, persistent: true };
      if (this.opts.granularity) add.granularity = this.opts.granularity;
      const cp: Checkpoint = { id, seq: 0, takenAt: this.clock.now(), ref: bm };
      const bytes = await this.backup(qmp, node, dest, id, [{ type: 'block-dirty-bitmap-add', data: add }], { sync: 'full' }, disk.kind === 'qcow2' && disk.vmId !== undefined, async () => {
        await qmp.execute('block-dirty-bitmap-remove', { node, name: bm }).catch(() => undefined);
      });
      return { kind: 'full', checkpoint: cp, diskBytes: size, bytes, ms: this.clock.now() - t0 };
    });
  }

  async changedSince(disk: SourceDisk, from: Checkpoint): Promise<ChangedBlocks> {
    return this.withNode(disk, async (qmp, node) => {
      const b = (await this.bitmaps(qmp, node)).find((x) => x.name === from.ref);
      if (!b) throw hostError('VMTC_HOST_DISK_CHECKPOINT_MISSING', { checkpoint: from.id, bitmap: from.ref });
      // A recording bitmap: since `from` until now; a disabled one: until the next checkpoint.
      return { bytes: b.count, granularity: b.granularity };
    });
  }

  async sendDelta(disk: SourceDisk, from: Checkpoint, id: string, dest: NbdDestination): Promise<TransferReport> {
    checkId(id);
    return this.withNode(disk, async (qmp, node, size) => {
      const t0 = this.clock.now();
      const have = await this.bitmaps(qmp, node);
      const prev = have.find((b) => b.name === from.ref);
      if (!prev) throw hostError('VMTC_HOST_DISK_CHECKPOINT_MISSING', { checkpoint: from.id, bitmap: from.ref });
      const bm = bitmapOf(id);
      if (have.some((b) => b.name === bm)) throw hostError('VMTC_HOST_DISK_CHECKPOINT_EXISTS', { checkpoint: id });
      const add: Record<string, unknown> = { node, name: bm, persistent: true, granularity: prev.granularity };
      const actions = [
        { type: 'block-dirty-bitmap-add', data: add },
        ...(prev.recording ? [{ type: 'block-dirty-bitmap-disable', data: { node, name: from.ref } }] : []),
      ];
      const cp: Checkpoint = { id, seq: from.seq + 1, takenAt: this.clock.now(), ref: bm };
      const bytes = await this.backup(qmp, node, dest, id, actions, { sync: 'bitmap', bitmap: from.ref, 'bitmap-mode': 'never' }, disk.kind === 'qcow2' && disk.vmId !== undefined, async () => {
        // Writes since the failed attempt began are in the new bitmap: give them back to `from`.
        await qmp.execute('transaction', {
          actions: [
            { type: 'block-dirty-bitmap-merge', data: { node, target: from.ref, bitmaps: [bm] } },
            { type: 'block-dirty-bitmap-enable', data: { node, name: from.ref } },
            { type: 'block-dirty-bitmap-remove', data: { node, name: bm } },
          ],
        }).catch((e: unknown) => this.opts.logger.warn({ err: String(e), bitmap: bm }, 'could not fold the failed checkpoint back'));
      });
      return { kind: 'delta', from, checkpoint: cp, diskBytes: size, bytes, ms: this.clock.now() - t0 };
    });
  }

  async removeCheckpoint(disk: SourceDisk, cp: Checkpoint): Promise<void> {
    await this.withNode(disk, async (qmp, node) => {
      if (!(await this.bitmaps(qmp, node)).some((b) => b.name === cp.ref)) return;
      await qmp.execute('block-dirty-bitmap-remove', { node, name: cp.ref });
    });
  }

  /** Every checkpoint bitmap (vmtc-cp.*) of an image no VM runs: `qemu-img bitmap --remove` each
   *  (`qemu-img info` without -U first: an image some process holds is refused, not changed). */
  async removeAllCheckpoints(disk: SourceDisk): Promise<string[]> {
    if (disk.kind !== 'qcow2' || disk.vmId !== undefined) throw hostError('VMTC_HOST_BAD_PARAMS', { field: 'disk', reason: 'an image no VM runs: { kind: qcow2, image }' });
    const info = (await runOk(this.run, ['qemu-img', 'info', '--output=json', disk.image], { image: disk.image })).stdout;
    let bitmaps: { name?: unknown }[];
    try {
      bitmaps = (JSON.parse(info) as { 'format-specific'?: { data?: { bitmaps?: { name?: unknown }[] } } })['format-specific']?.data?.bitmaps ?? [];
    } catch {
      throw hostError('VMTC_HOST_DISK_TOOL_FAILED', { tool: 'qemu-img info', reason: 'not JSON', output: info.slice(0, 300) });
    }
    const names = bitmaps.map((b) => b.name).filter((n): n is string => typeof n === 'string' && n.startsWith(bitmapOf('')));
    for (const n of names) await runOk(this.run, ['qemu-img', 'bitmap', '--remove', disk.image, n], { image: disk.image, bitmap: n });
    return names;
  }

  /** The checkpoints (bitmap names) the disk carries, with whether each records and its count. */
  async checkpointBitmaps(disk: SourceDisk): Promise<{ name: string; recording: boolean; count: number }[]> {
    return this.withNode(disk, async (qmp, node) => (await this.bitmaps(qmp, node)).map((b) => ({ name: b.name, recording: b.recording, count: b.count })));
  }

  /** Drop checkpoint `newer`, a view taken after `into` by a transfer the destination never
   *  recorded: the writes it recorded go back into `into`, which records again, in one
   *  transaction (as a failed delta's are), so nothing written since `into` is lost. */
  async foldBack(disk: SourceDisk, into: Checkpoint, newer: Checkpoint): Promise<void> {
    await this.withNode(disk, async (qmp, node) => {
      const have = await this.bitmaps(qmp, node);
      if (!have.some((b) => b.name === newer.ref)) return;
      if (!have.some((b) => b.name === into.ref)) throw hostError('VMTC_HOST_DISK_CHECKPOINT_MISSING', { checkpoint: into.id, bitmap: into.ref });
      await qmp.execute('transaction', {
        actions: [
          { type: 'block-dirty-bitmap-merge', data: { node, target: into.ref, bitmaps: [newer.ref] } },
          { type: 'block-dirty-bitmap-enable', data: { node, name: into.ref } },
          { type: 'block-dirty-bitmap-remove', data: { node, name: newer.ref } },
        ],
      });
    });
  }

  /** Reads the image file from outside QEMU: for a running VM, take it paused (the commit
   *  point), after QEMU has written its cached qcow2 metadata out (a flush, done here). */
  async digestSource(disk: SourceDisk, opts: DigestOptions = {}): Promise<DiskDigest> {
    if (disk.kind !== 'qcow2') throw hostError('VMTC_HOST_BAD_PARAMS', { field: 'disk.kind', reason: 'qcow2' });
    if (disk.vmId !== undefined) await this.flush(disk);
    return digestImageByMap(this.run, disk.image, 'qcow2', this.tmp, opts);
  }

  /** Whether the VM of `disk` completed its migration (QEMU status `postmigrate`): it gave the
   *  disk up, wrote its image out and stored its persistent bitmaps in the file. */
  async migratedAway(disk: SourceDisk): Promise<boolean> {
    if (disk.kind !== 'qcow2' || disk.vmId === undefined) return false;
    return this.withNode(disk, async (qmp) => (await qmp.execute<{ status: string }>('query-status')).status === 'postmigrate');
  }

  /** The same ranges read from the image file itself, for a disk no process holds (qemu-dirty.ts). */
  storedDirtyRanges(disk: SourceDisk, cp: Checkpoint, also: (bitmap: string) => boolean = () => false): Promise<ByteRange[]> {
    return storedDirtyRanges(disk, cp, also);
  }

  /** A reader of the disk's image file as it is now (image-reader.ts). A running VM's QEMU keeps
   *  qcow2 metadata in memory until a flush: flushed first, unless its migration completed
   *  (status `postmigrate`: QEMU wrote everything out as it gave the disks up, and a flush of a
   *  node it no longer holds active is refused). */
  async fileReader(disk: SourceDisk): Promise<ImageReader> {
    if (disk.kind !== 'qcow2') throw hostError('VMTC_HOST_BAD_PARAMS', { field: 'disk.kind', reason: 'qcow2' });
    if (disk.vmId !== undefined) {
      const status = await this.withNode(disk, async (qmp) => (await qmp.execute<{ status: string }>('query-status')).status);
      if (status !== 'postmigrate') await this.flush(disk);
    }
    return openImageReader(this.run, disk.image, 'qcow2');
  }

  /** The byte ranges checkpoint `cp`'s bitmap marks (with `also`, the union with the disk's
   *  later bitmaps it picks) and a reader of the disk as it is now, over NBD (qemu-dirty.ts). */
  dirtyReader(disk: SourceDisk, cp: Checkpoint, also: (bitmap: string) => boolean = () => false): Promise<DirtyReader> {
    return dirtyReader({ withNode: (dk, fn) => this.withNode(dk, fn), bitmaps: (q, n) => this.bitmaps(q, n), tmp: this.tmp, clock: this.clock, logger: this.opts.logger }, disk, cp, also);
  }

  /** QEMU keeps qcow2 metadata (L2 tables, refcounts) in memory until a flush: before anything
   *  reads a running VM's image file, flush it (HMP `qemu-io DEVICE flush`, the block layer's
   *  flush without a guest request; QMP has no per-drive flush). */
  async flush(disk: SourceDisk): Promise<void> {
    await this.withNode(disk, async (qmp) => {
      if (disk.kind !== 'qcow2' || disk.vmId === undefined) return;
      const out = await qmp.execute<string>('human-monitor-command', { 'command-line': `qemu-io ${disk.device} "flush"` });
      if (out.trim()) throw hostError('VMTC_HOST_DISK_TOOL_FAILED', { tool: 'qemu-io flush', output: out.slice(0, 300) });
    });
  }

  // ---- destination ---------------------------------------------------------------------------

  async applyDelta(dest: NbdDestination, report: TransferReport): Promise<void> {
    await new QemuStore(dest.image, { runner: this.run, clock: this.clock, ...(this.opts.netns ? { netns: this.opts.netns } : {}) }).record(report);
  }

  /** A reader of the store's guest-visible bytes (take it with no transfer under way). */
  async destinationReader(dest: NbdDestination): Promise<ImageReader> {
    return openImageReader(this.run, dest.image, 'qcow2');
  }

  async digestDestination(dest: NbdDestination, opts: DigestOptions = {}): Promise<DiskDigest> {
    return digestImageByMap(this.run, dest.image, 'qcow2', this.tmp, opts);
  }

  // ---- steps ---------------------------------------------------------------------------------

  /** QMP and the qcow2 node of the disk: the running VM's, or a storage daemon's (cold). */
  async withNode<T>(disk: SourceDisk, fn: (qmp: QmpPort, node: string, size: number, top?: string) => Promise<T>): Promise<T> {
    if (disk.kind !== 'qcow2') throw hostError('VMTC_HOST_BAD_PARAMS', { field: 'disk.kind', reason: 'the QEMU backend takes { kind: qcow2, image, vmId?, device? }' });
    if (disk.vmId !== undefined) {
      if (!disk.device || !/^[A-Za-z0-9_.-]{1,64}$/.test(disk.device)) throw hostError('VMTC_HOST_BAD_PARAMS', { field: 'disk.device', reason: 'the drive id, e.g. disk0' });
      const qmp = await this.opts.qmpFor(disk.vmId);
      const blocks = await qmp.execute<{ device: string; qdev?: string; inserted?: { 'node-name': string; image: { 'virtual-size': number; format: string } } }[]>('query-block');
      const b = blocks.find((x) => x.device === disk.device || x.qdev === disk.device);
      if (!b?.inserted) throw hostError('VMTC_HOST_DISK_NOT_FOUND', { vmId: disk.vmId, device: disk.device });
      if (b.inserted.image.format === 'qcow2') return fn(qmp, b.inserted['node-name'], b.inserted.image['virtual-size']);
      // The driver's writable qcow2 drives: a raw pass-through node (the drive's top, `top`)
      // over the qcow2 node `DRIVE-fmt` (agents/host/qemu/cmdline.ts).
      if (b.inserted.image.format === 'raw') {
        const fmt = `${b.device || disk.device}-fmt`;
        const n = (await qmp.execute<(NodeInfo & { image: { 'virtual-size': number } })[]>('query-named-block-nodes', { flat: true })).find((x) => x['node-name'] === fmt);
        if (n?.drv === 'qcow2') return fn(qmp, fmt, n.image['virtual-size'], b.inserted['node-name']);
      }
      throw hostError('VMTC_HOST_BAD_PARAMS', { field: 'disk', reason: `persistent bitmaps need qcow2, the drive is ${b.inserted.image.format}` });
    }
    // Cold: nobody runs the image; a storage daemon opens it for the transfer and, stopping,
    // stores the bitmaps back into it.
    const dir = await mkdtemp(join(this.tmp, 'vmtc-qsd-'));
    const qsd = await startStorageDaemon({ image: disk.image, format: 'qcow2', dir, clock: this.clock, ...(this.opts.netns ? { netns: this.opts.netns } : {}) }).catch(async (e: unknown) => {
      await rm(dir, { recursive: true, force: true });
      throw e;
    });
    let qmp: QmpClient | undefined;
    try {
      qmp = await QmpClient.connect(qsd.qmpSocket, { logger: this.opts.logger, clock: this.clock, commandTimeoutMs: 60_000 });
      const nodes = await qmp.execute<(NodeInfo & { image: { 'virtual-size': number } })[]>('query-named-block-nodes', { flat: true });
      const n = nodes.find((x) => x['node-name'] === 'disk');
      if (!n) throw hostError('VMTC_HOST_DISK_TOOL_FAILED', { tool: 'qemu-storage-daemon', reason: 'no node "disk"' });
      return await fn(qmp, 'disk', n.image['virtual-size']);
    } finally {
      qmp?.close();
      await qsd.stop();
      await rm(dir, { recursive: true, force: true });
    }
  }

  async bitmaps(qmp: QmpPort, node: string): Promise<NonNullable<NodeInfo['dirty-bitmaps']>> {
    const nodes = await qmp.execute<NodeInfo[]>('query-named-block-nodes', { flat: true });
    const n = nodes.find((x) => x['node-name'] === node);
    if (!n) throw hostError('VMTC_HOST_DISK_NOT_FOUND', { node });
    return n['dirty-bitmaps'] ?? [];
  }

  /** One backup job into the destination's NBD export, started in one transaction with the
   *  checkpoint's bitmap actions; waits for it to conclude. Returns the bytes it copied. */
  private async backup(qmp: QmpPort, node: string, dest: NbdDestination, id: string, actions: { type: string; data: Record<string, unknown> }[], job: Record<string, unknown>, guest: boolean, undo: () => Promise<void>): Promise<number> {
    // QEMU node names are at most 31 characters: the target is named by a hash of the id.
    const target = `vt${createHash('sha256').update(id).digest('hex').slice(0, 24)}`;
    const jobId = `vmtc-backup.${id}`;
    const conn = await this.nbdConnection(dest, guest ? join(this.tmp, `relay-${target}`) : undefined);
    try {
      // Without flushes over the path (closing the node would wait a round trip for one, in a
      // live move's pause for the last delta): the store's daemon writes everything out when it
      // closes, and only then does the store record the checkpoint (qemu-store.ts).
      await qmp.execute('blockdev-add', { driver: 'nbd', 'node-name': target, server: conn.server, export: conn.exportName, cache: { 'no-flush': true } }, { timeoutMs: 30_000 });
    } catch (e) {
      await conn.close();
      throw hostError('VMTC_HOST_DISK_COPY_FAILED', { step: 'connect to the destination export', nbd: dest.nbd, reason: String((e as Error).message ?? e) }, { cause: e });
    }
    let started = false;
    try {
      const backup: Record<string, unknown> = { 'job-id': jobId, device: node, target, 'auto-dismiss': false, ...job };
      if (this.opts.speed) backup.speed = this.opts.speed;
      try {
        await qmp.execute('transaction', { actions: [...actions, { type: 'blockdev-backup', data: backup }] });
        started = true;
      } catch (e) {
        throw hostError('VMTC_HOST_DISK_COPY_FAILED', { step: 'start the backup job', reason: String((e as Error).message ?? e) }, { cause: e });
      }
      const deadline = this.clock.now() + this.jobTimeoutMs;
      // A small delta (the last one, in a live move's pause) concludes in milliseconds: poll
      // from 2 ms, doubling up to pollMs, rather than a pollMs step on the pause.
      let wait = Math.min(2, this.pollMs);
      for (;;) {
        const j = (await qmp.execute<JobInfo[]>('query-jobs')).find((x) => x.id === jobId);
        if (!j) throw hostError('VMTC_HOST_DISK_COPY_FAILED', { job: jobId, reason: 'the job vanished' });
        if (j.status === 'concluded') {
          await qmp.execute('job-dismiss', { id: jobId });
          if (j.error) throw hostError('VMTC_HOST_DISK_COPY_FAILED', { job: jobId, reason: j.error });
          return j['total-progress'];
        }
        if (this.clock.now() > deadline) {
          await qmp.execute('job-cancel', { id: jobId, force: true }).catch(() => undefined);
          throw hostError('VMTC_HOST_DISK_COPY_FAILED', { job: jobId, reason: 'timed out', done: j['current-progress'], total: j['total-progress'] });
        }
        await clockSleep(this.clock, wait);
        wait = Math.min(this.pollMs, wait * 2);
      }
    } catch (e) {
      if (started) await this.settle(qmp, jobId);
      await undo();
      throw e;
    } finally {
      // The relay first: the job is over (every write acknowledged by the store, or the job
      // failed), so it holds nothing and goes at once; closing the node before it would wait a
      // round trip of the path for the relay's own close.
      await conn.close();
      await qmp.execute('blockdev-del', { 'node-name': target }).catch((e: unknown) => this.opts.logger.warn({ err: String(e), target }, 'blockdev-del of the NBD target refused'));
    }
  }

  /** How a QEMU opens its NBD node for `dest`. A running VM's QEMU (`relayDir` given) reaches an
   *  export across the path through a local relay started here (qemu-images.ts startNbdRelay:
   *  its own connection's round trips do not hold the guest); a unix export, or a storage
   *  daemon's (cold) QEMU, connects directly. `close` stops the relay. */
  async nbdConnection(dest: NbdDestination, relayDir?: string): Promise<NbdConnection> {
    // A relay connected ahead (before a cold move's power-off: its round trips were paid then).
    const pre = this.opts.preconnected?.get(exportKey(dest));
    if (pre) {
      this.opts.preconnected!.delete(exportKey(dest));
      pre.timer.cancel();
      return pre.conn;
    }
    if (dest.nbd.type === 'unix') return { server: { type: 'unix', path: dest.nbd.path }, exportName: dest.exportName, close: async () => undefined };
    if (!relayDir) return { server: { type: 'inet', host: dest.nbd.host, port: String(dest.nbd.port) }, exportName: dest.exportName, close: async () => undefined };
    await rm(relayDir, { recursive: true, force: true });
    await mkdir(relayDir, { recursive: true });
    let relay;
    try {
      relay = await startNbdRelay({ remote: { host: dest.nbd.host, port: dest.nbd.port, exportName: dest.exportName }, dir: relayDir, clock: this.clock, ...(this.opts.netns ? { netns: this.opts.netns } : {}) });
    } catch (e) {
      await rm(relayDir, { recursive: true, force: true });
      throw hostError('VMTC_HOST_DISK_COPY_FAILED', { step: 'connect to the destination export', nbd: dest.nbd, reason: String((e as Error).message ?? e) }, { cause: e });
    }
    const r = relay;
    return {
      server: { type: 'unix', path: r.nbdSocket! }, exportName: r.exportName, pid: r.pid,
      // A relay holds nothing unwritten (a write is acknowledged once the store acknowledged
      // it), so it is killed, not asked to close: its close would wait a round trip of the path.
      close: async () => {
        await r.stop({ now: true });
        await rm(relayDir, { recursive: true, force: true });
      },
    };
  }

  /** After a failure: make sure the job is gone before its target node is deleted. */
  private async settle(qmp: QmpPort, jobId: string): Promise<void> {
    for (let i = 0; i < 200; i++) {
      const j = (await qmp.execute<JobInfo[]>('query-jobs').catch(() => [] as JobInfo[])).find((x) => x.id === jobId);
      if (!j) return;
      if (j.status === 'concluded' || j.status === 'aborting' || j.status === 'null') await qmp.execute('job-dismiss', { id: jobId }).catch(() => undefined);
      else await qmp.execute('job-cancel', { id: jobId, force: true }).catch(() => undefined);
      await clockSleep(this.clock, this.pollMs);
    }
  }
}

function checkId(id: string): void {
  if (typeof id !== 'string' || !CHECKPOINT_ID.test(id)) throw hostError('VMTC_HOST_BAD_PARAMS', { field: 'id', reason: 'letters, digits, _ . - (1..48)' });
}
