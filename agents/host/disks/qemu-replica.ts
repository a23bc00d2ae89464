// The QEMU driver's disk-state operations for replicas (agents/host/replicas.ts ReplicaOps;
// docs/disks.md#replicas), over the QEMU copy-on-write backend (qemu-cow.ts) and its stores
// (qemu-store.ts):
//   destination  one QemuStore per writable disk of the VM, DATA/replicas/ID/diskN.qcow2 of the
//                virtual size the source's QEMU reported (spec.extra.diskBytes); each exported
//                by its own qemu-storage-daemon on the listen host (the lightpath address), port
//                picked by the kernel and read back from /proc, for one transfer
//   source       the VM's drives diskN (a running VM through the driver's QMP connection, a
//                stopped one through a storage daemon, qemu-cow.ts); one checkpoint id for all
//                of its disks, bitmaps vmtc-cp.ID-SEQ. A transfer that fails on one disk folds
//                the new checkpoint of the disks before it back (qemu-cow.ts foldBack), so a
//                retry from the same checkpoint finds no stray one
import { existsSync } from 'node:fs';
import { mkdir, rm, rmdir } from 'node:fs/promises';
import { dirname, join, sep } from 'node:path';
import type { ReplicaCheckpoint, ReplicaDigest, ReplicaDigestAsk, ReplicaStoreHandoff, ReplicaTransfer, VmSpec } from '../../../src/common/agent-protocol.ts';
import { systemClock, type Clock } from '../../../src/common/clock.ts';
import type { Logger } from '../../../src/common/log.ts';
import { hostError } from '../errors.ts';
import { listeningPorts } from '../qemu/proc.ts';
import { isReplicaCheckpoint, type ReplicaOps } from '../replicas.ts';
import type { Checkpoint, SourceDisk, TransferReport } from './backend.ts';
import { bitmapOf, exportKey, QemuCowBackend, type PreconnectedRelay, type QmpPort } from './qemu-cow.ts';
import { QemuStore, type CloseOptions, type NbdDestination } from './qemu-store.ts';
import { KeptLeaves } from './kept-leaves.ts';
import { cutFollows, followsResumed, startFollow, stopFollow } from './qemu-follow.ts';
import { chunksOfRanges, refreshLeaves, type LeafCache } from './leaf-cache.ts';
import type { ImageReader } from './image-reader.ts';

export interface QemuReplicaOptions {
  dataDir: string;
  logger: Logger;
  clock?: Clock;
  /** The QMP connection of a running VM of the driver. */
  qmpFor(vmId: string): Promise<QmpPort>;
  /** The spec of a VM of the driver and whether its QEMU runs (throws for an unknown VM). */
  vmOf(vmId: string): { spec: VmSpec; running: boolean };
  /** Copy rate limit of seeds and deltas, bytes/s. */
  speed?: number;
  /** The network namespace the driver's guests run in: storage daemons run there too, so that
   *  a store listens on, and a cold transfer reaches, the lightpath address. */
  netns?: string;
}

type Handoff = { qemu: { exports: { index: number; exportName: string; host: string; port: number }[] } };

/** The writable disks of a spec: their index among spec.disks (the drive is disk<index>). */
function writable(spec: VmSpec): { index: number; path: string; format: string }[] {
  return (spec.disks ?? []).flatMap((d, index) => (d.readonly ? [] : [{ index, path: d.path, format: d.format }]));
}

export class QemuReplicas implements ReplicaOps {
  private readonly clock: Clock;
  private backend: QemuCowBackend;
  private readonly exports = new Map<string, ((o?: CloseOptions) => Promise<void>)[]>();
  /** Leaves kept for incremental digests (docs/disks.md#incremental-digests). */
  readonly leaves = new KeptLeaves();
  /** Relays connected ahead to stores' exports (preconnect), by export. */
  private readonly preconnected = new Map<string, PreconnectedRelay>();

  constructor(private readonly o: QemuReplicaOptions) {
    this.clock = o.clock ?? systemClock;
    this.backend = new QemuCowBackend({ qmpFor: o.qmpFor, logger: o.logger, clock: this.clock, tmpDir: join(o.dataDir, 'replicas'), preconnected: this.preconnected, ...(o.speed ? { speed: o.speed } : {}), ...(o.netns ? { netns: o.netns } : {}) });
  }

  /** Limit the copy rate of the seeds and deltas that start from now on (bytes/s; 0: none). */
  limit(bytesPerSecond: number): void {
    this.backend = new QemuCowBackend({ qmpFor: this.o.qmpFor, logger: this.o.logger, clock: this.clock, tmpDir: join(this.o.dataDir, 'replicas'), preconnected: this.preconnected, ...(bytesPerSecond > 0 ? { speed: bytesPerSecond } : {}), ...(this.o.netns ? { netns: this.o.netns } : {}) });
  }

  /** The checkpoints of the replica that each of the VM's disks carries (bitmap names). */
  async checkpoints(vmId: string, replicaId: string): Promise<string[][]> {
    const out: string[][] = [];
    for (const disk of await this.sourceDisks(vmId)) out.push((await this.backend.checkpointBitmaps(disk)).map((b) => b.name).filter((n) => isReplicaCheckpoint(replicaId, n.slice('vmtc-cp.'.length))));
    return out;
  }

  private dir(replicaId: string): string {
    return join(this.o.dataDir, 'replicas', replicaId);
  }

  private stores(replicaId: string, n: number): QemuStore[] {
    return Array.from({ length: n }, (_, i) => new QemuStore(join(this.dir(replicaId), `disk${i}.qcow2`), { clock: this.clock, ...(this.o.netns ? { netns: this.o.netns } : {}) }));
  }

  private async existing(replicaId: string): Promise<QemuStore[]> {
    const out: QemuStore[] = [];
    for (let i = 0; i < 64 && existsSync(join(this.dir(replicaId), `disk${i}.qcow2`)); i++) out.push(this.stores(replicaId, i + 1)[i]!);
    return out;
  }

  // ---- destination --------------------------------------------------------------------------

  async openStore(replicaId: string, spec: VmSpec, listenHost: string, expect: ReplicaCheckpoint | null): Promise<ReplicaStoreHandoff> {
    const disks = writable(spec);
    if (disks.length === 0 || disks.some((d) => d.format !== 'qcow2')) throw hostError('VMTC_HOST_DISK_UNSUPPORTED', { vmId: spec.vmId, reason: 'replicas need qcow2 disks (persistent dirty bitmaps)' });
    await this.closeExports(replicaId);
    const stores = this.stores(replicaId, disks.length);
    if (expect === null) {
      for (const s of stores) if (await s.held()) throw hostError('VMTC_HOST_DISK_CHECKPOINT_EXISTS', { replicaId, reason: 'the store is seeded; remove the replica first' });
      const sizes = (spec.extra as { diskBytes?: number[] } | undefined)?.diskBytes;
      await rm(this.dir(replicaId), { recursive: true, force: true });
      await mkdir(this.dir(replicaId), { recursive: true });
      for (const [i, d] of disks.entries()) {
        const size = sizes?.[d.index];
        if (!(typeof size === 'number' && size > 0)) throw hostError('VMTC_HOST_BAD_PARAMS', { field: `spec.extra.diskBytes[${d.index}]`, reason: "the disk's virtual size, as the source's QEMU reports it" });
        await stores[i]!.create(size);
      }
    }
    const closers: (() => Promise<void>)[] = [];
    this.exports.set(replicaId, closers);
    const out: Handoff['qemu']['exports'] = [];
    try {
      for (const [i, s] of stores.entries()) {
        const ex = await s.export({ type: 'inet', host: listenHost, port: 0 }, expect ? this.perDisk(expect) : null, `disk${disks[i]!.index}`);
        closers.push(ex.close);
        const ports = await listeningPorts(ex.daemon.pid);
        if (ports.length !== 1) throw hostError('VMTC_HOST_DISK_TOOL_FAILED', { tool: 'qemu-storage-daemon', reason: 'could not tell the NBD server port', ports });
        out.push({ index: disks[i]!.index, exportName: `disk${disks[i]!.index}`, host: listenHost, port: ports[0]! });
      }
    } catch (e) {
      await this.closeExports(replicaId);
      throw e;
    }
    return { qemu: { exports: out } } satisfies Handoff;
  }

  private async closeExports(replicaId: string, opts: { waitClients?: boolean } = {}): Promise<void> {
    const c = this.exports.get(replicaId);
    this.exports.delete(replicaId);
    // Several disks' exports wait for their clients at once (each is a one-way trip of the path).
    await Promise.all((c ?? []).map((f) => f({ ...opts, logger: this.o.logger }).catch((e: unknown) => this.o.logger.warn({ replicaId, err: String(e) }, 'closing a replica export failed'))));
  }

  /** The checkpoint as each disk's bitmap names it. */
  private perDisk(cp: ReplicaCheckpoint): Checkpoint {
    return { ...cp, ref: bitmapOf(cp.id) };
  }

  /** Closes under way, by replica: a store digest asked meanwhile waits for it (ReplicaOps). */
  private readonly closing = new Map<string, Promise<unknown>>();

  async closeStore(replicaId: string, transfer?: ReplicaTransfer, opts: { waitClients?: boolean } = {}): Promise<ReplicaCheckpoint | null> {
    const p = this.closeStoreNow(replicaId, transfer, opts);
    this.closing.set(replicaId, p);
    try {
      return await p;
    } finally {
      if (this.closing.get(replicaId) === p) this.closing.delete(replicaId);
    }
  }

  private async closeStoreNow(replicaId: string, transfer?: ReplicaTransfer, opts: { waitClients?: boolean } = {}): Promise<ReplicaCheckpoint | null> {
    await this.closeExports(replicaId, opts);
    const stores = await this.existing(replicaId);
    if (transfer) {
      if (stores.length !== transfer.disks) throw hostError('VMTC_HOST_DISK_DELTA_REJECTED', { replicaId, disks: stores.length, transferDisks: transfer.disks });
      for (const s of stores) {
        const report: TransferReport = { kind: transfer.kind, checkpoint: this.perDisk(transfer.checkpoint), ...(transfer.from ? { from: this.perDisk(transfer.from) } : {}), diskBytes: 0, bytes: 0, ms: 0 };
        await s.record(report);
      }
    }
    const held = stores.length ? await stores[0]!.held() : null;
    return held?.checkpoint ?? null;
  }

  async removeStore(replicaId: string, opts: { keepImages?: boolean } = {}): Promise<void> {
    await this.closeExports(replicaId);
    this.leaves.forget(replicaId);
    if (opts.keepImages) {
      // The images are a VM's disks now (a live move booted from them): only the records of
      // what the store held go (IMAGE.vmtc.json beside each image).
      for (const s of await this.existing(replicaId)) await rm(`${s.image}.vmtc.json`, { force: true });
      return;
    }
    await rm(this.dir(replicaId), { recursive: true, force: true });
  }

  async storePaths(replicaId: string): Promise<string[]> {
    const stores = await this.existing(replicaId);
    if (stores.length === 0 || !(await stores[0]!.held())) throw hostError('VMTC_HOST_DISK_NOT_FOUND', { replicaId, reason: 'no seeded store' });
    return stores.map((s) => s.image);
  }

  async digestStore(replicaId: string, ask: ReplicaDigestAsk = {}): Promise<ReplicaDigest> {
    await this.closing.get(replicaId)?.catch(() => undefined);
    const paths = await this.storePaths(replicaId);
    await this.scratch();
    const held = (await this.existing(replicaId))[0]!.held().then((h) => h?.checkpoint);
    const dest = (image: string): NbdDestination => ({ image, exportName: 'x', nbd: { type: 'unix', path: '/nonexistent' } });
    // Incremental: the leaves kept at `since`, the store one delta further (the last one), and
    // the chunks that delta's source found written since `since`.
    const kept = ask.since ? this.leaves.take('store', replicaId, ask.since) : undefined;
    const now = await held;
    let out: ReplicaDigest | undefined;
    if (kept && ask.since && ask.changed && now?.seq === ask.since.seq + 1) {
      out = await this.incremental('store', replicaId, kept, paths.map((image, i) => ({ chunks: () => Promise.resolve(ask.changed![i]), reader: () => this.backend.destinationReader(dest(image)) })));
    }
    if (!out) {
      out = { disks: [] };
      for (const [index, image] of paths.entries()) {
        const d = await this.backend.digestDestination(dest(image));
        out.disks.push({ index, size: d.size, chunkBytes: d.chunkBytes, root: d.root, leaves: d.leaves });
      }
      this.leaves.note({ side: 'store', replicaId, mode: 'full', chunks: out.disks.reduce((n, d) => n + d.leaves.length, 0) });
    }
    if (ask.keepAs && now?.id === ask.keepAs.id && now.seq === ask.keepAs.seq) this.leaves.keep('store', replicaId, ask.keepAs, out);
    return out;
  }

  /** A digest from leaves kept earlier and the chunks re-read now; undefined (a full digest is
   *  taken instead) when the disks do not match what was kept or a step fails. */
  private async incremental(side: 'source' | 'store', replicaId: string, kept: LeafCache[], disks: { chunks(cache: LeafCache): Promise<number[] | undefined>; reader(): Promise<ImageReader> }[]): Promise<ReplicaDigest | undefined> {
    if (kept.length !== disks.length) return undefined;
    try {
      const out: ReplicaDigest = { disks: [] };
      const t0 = this.clock.now();
      const ms = { chunks: 0, reader: 0, read: 0 };
      for (const [index, d] of disks.entries()) {
        const cache = kept[index]!;
        // What was written and a reader of the disk now, at once (each waits on its own tools).
        let t = this.clock.now();
        const [c, rd] = await Promise.allSettled([d.chunks(cache).finally(() => { ms.chunks += this.clock.now() - t; }), d.reader().finally(() => { ms.reader += this.clock.now() - t; })]);
        if (rd.status === 'rejected') throw rd.reason;
        const r = rd.value;
        try {
          if (c.status === 'rejected') throw c.reason;
          const chunks = c.value;
          if (!chunks || r.size !== cache.size) return undefined;
          t = this.clock.now();
          const g = await refreshLeaves(cache, chunks, r.read);
          ms.read += this.clock.now() - t;
          out.disks.push({ index, size: g.size, chunkBytes: g.chunkBytes, root: g.root, leaves: g.leaves, changed: chunks });
        } finally {
          await r.close();
        }
      }
      const chunks = out.disks.reduce((n, d) => n + d.changed!.length, 0);
      this.leaves.note({ side, replicaId, mode: 'incremental', chunks });
      this.o.logger.info({ replicaId, side, chunks, ms: this.clock.now() - t0, steps: ms }, 'incremental digest');
      return out;
    } catch (e) {
      this.o.logger.warn({ replicaId, side, err: String(e) }, 'incremental digest failed: reading every chunk instead');
      return undefined;
    }
  }

  // ---- source -------------------------------------------------------------------------------

  /** The backend's scratch space (digests, storage daemons' sockets), made on first use. */
  private async scratch(): Promise<void> {
    await mkdir(join(this.o.dataDir, 'replicas'), { recursive: true });
  }

  private async sourceDisks(vmId: string): Promise<SourceDisk[]> {
    await this.scratch();
    const { spec, running } = this.o.vmOf(vmId);
    const disks = writable(spec);
    if (disks.length === 0 || disks.some((d) => d.format !== 'qcow2')) throw hostError('VMTC_HOST_DISK_UNSUPPORTED', { vmId, reason: 'replicas need qcow2 disks (persistent dirty bitmaps)' });
    return disks.map((d) => (running ? { kind: 'qcow2', image: d.path, vmId, device: `disk${d.index}` } : { kind: 'qcow2', image: d.path }));
  }

  async send(vmId: string, replicaId: string, store: ReplicaStoreHandoff, from: ReplicaCheckpoint | null, checkpointId: string): Promise<ReplicaTransfer> {
    const disks = await this.sourceDisks(vmId);
    const ex = (store as Partial<Handoff>).qemu?.exports;
    if (!Array.isArray(ex) || ex.length !== disks.length) throw hostError('VMTC_HOST_BAD_PARAMS', { field: 'store', reason: `one export per writable disk (${disks.length})` });
    const t0 = this.clock.now();
    const done: { disk: SourceDisk; report: TransferReport }[] = [];
    try {
      for (const [i, disk] of disks.entries()) {
        const e = ex[i]!;
        if (typeof e.host !== 'string' || !Number.isInteger(e.port) || typeof e.exportName !== 'string') throw hostError('VMTC_HOST_BAD_PARAMS', { field: `store.exports[${i}]` });
        const dest: NbdDestination = { image: '', exportName: e.exportName, nbd: { type: 'inet', host: e.host, port: e.port } };
        const report = from ? await this.backend.sendDelta(disk, this.perDisk(from), checkpointId, dest) : await this.backend.seed(disk, checkpointId, dest);
        done.push({ disk, report });
      }
    } catch (e) {
      // The disks already done took checkpoint `checkpointId`: undo it there too.
      for (const d of done) {
        if (from) await this.backend.foldBack(d.disk, this.perDisk(from), d.report.checkpoint).catch(() => undefined);
        else await this.backend.removeCheckpoint(d.disk, d.report.checkpoint).catch(() => undefined);
      }
      throw e;
    }
    const cp = done[0]!.report.checkpoint;
    return {
      kind: from ? 'delta' : 'full', checkpoint: { id: cp.id, seq: cp.seq, takenAt: cp.takenAt, ref: cp.ref }, ...(from ? { from } : {}),
      diskBytes: done.reduce((n, d) => n + d.report.diskBytes, 0), bytes: done.reduce((n, d) => n + d.report.bytes, 0), ms: this.clock.now() - t0, disks: done.length,
    };
  }

  /** Source, a live move: mirror every write of the VM's disks into the store's exports from now
   *  on (qemu-follow.ts), then send the delta since `from` (what was written before the mirror
   *  began) under `checkpointId` through the same exports. With both, the store keeps up with the
   *  disks until unfollow. A failure stops the mirrors and undoes the delta's checkpoint. */
  async follow(vmId: string, replicaId: string, store: ReplicaStoreHandoff, from: ReplicaCheckpoint, checkpointId: string): Promise<ReplicaTransfer> {
    const disks = await this.sourceDisks(vmId);
    if (disks.some((d) => d.kind !== 'qcow2' || d.vmId === undefined)) throw hostError('VMTC_HOST_DISK_UNSUPPORTED', { vmId, reason: 'only a running VM\'s disks are followed' });
    const ex = (store as Partial<Handoff>).qemu?.exports;
    if (!Array.isArray(ex) || ex.length !== disks.length) throw hostError('VMTC_HOST_BAD_PARAMS', { field: 'store', reason: `one export per writable disk (${disks.length})` });
    const deps = { backend: this.backend, clock: this.clock, logger: this.o.logger };
    const started: SourceDisk[] = [];
    try {
      for (const [i, disk] of disks.entries()) {
        const e = ex[i]!;
        if (typeof e.host !== 'string' || !Number.isInteger(e.port) || typeof e.exportName !== 'string') throw hostError('VMTC_HOST_BAD_PARAMS', { field: `store.exports[${i}]` });
        started.push(disk);
        await startFollow(deps, disk, { image: '', exportName: e.exportName, nbd: { type: 'inet', host: e.host, port: e.port } }, this.followKey(replicaId, disk));
      }
      return await this.send(vmId, replicaId, store, from, checkpointId);
    } catch (e) {
      for (const disk of started) await stopFollow(deps, disk, this.followKey(replicaId, disk)).catch(() => undefined);
      throw e;
    }
  }

  /** Source, before a cold move's power-off (the store's export opened ahead for the last
   *  delta): a local relay per export, connected now, so that the last delta's job, after the
   *  power-off, does not pay the connection's round trips (qemu-images.ts startNbdRelay). Unused
   *  relays go after `ttlMs`, or at the replica's next step (dropCheckpoints). */
  async preconnect(_vmId: string, replicaId: string, store: ReplicaStoreHandoff, ttlMs = 600_000): Promise<{ relays: number }> {
    const ex = (store as Partial<Handoff>).qemu?.exports;
    if (!Array.isArray(ex)) throw hostError('VMTC_HOST_BAD_PARAMS', { field: 'store', reason: 'the store\'s exports' });
    await this.dropPreconnected(replicaId);
    let n = 0;
    for (const [i, e] of ex.entries()) {
      if (typeof e.host !== 'string' || !Number.isInteger(e.port) || typeof e.exportName !== 'string') throw hostError('VMTC_HOST_BAD_PARAMS', { field: `store.exports[${i}]` });
      const dest: NbdDestination = { image: '', exportName: e.exportName, nbd: { type: 'inet', host: e.host, port: e.port } };
      const conn = await this.backend.nbdConnection(dest, join(this.o.dataDir, 'replicas', `pre-${replicaId}-${i}`));
      const key = exportKey(dest);
      const timer = this.clock.setTimeout(() => {
        if (this.preconnected.get(key)?.conn !== conn) return;
        this.preconnected.delete(key);
        void conn.close().catch(() => undefined);
      }, ttlMs);
      this.preconnected.set(key, { replicaId, conn, timer });
      n++;
    }
    return { relays: n };
  }

  private async dropPreconnected(replicaId: string): Promise<void> {
    for (const [key, p] of [...this.preconnected.entries()]) {
      if (p.replicaId !== replicaId) continue;
      this.preconnected.delete(key);
      p.timer.cancel();
      await p.conn.close().catch(() => undefined);
    }
  }

  /** Source: stop following (idempotent). `bytes`: what the mirrors wrote into the store;
   *  `error`: a mirror that failed (the store misses writes: the last delta must send them). */
  async unfollow(vmId: string, replicaId: string): Promise<{ bytes: number; following: boolean; error?: string; cut?: boolean; stoppedAtCut?: boolean }> {
    const deps = { backend: this.backend, clock: this.clock, logger: this.o.logger };
    let bytes = 0;
    let found = false;
    let cut = false;
    let atCut = true;
    let error: string | undefined;
    for (const disk of await this.sourceDisks(vmId)) {
      const r = await stopFollow(deps, disk, this.followKey(replicaId, disk));
      bytes += r.bytes;
      found ||= r.found;
      cut ||= !!r.cut;
      if (r.found) atCut &&= !!r.stoppedAtCut;
      error ??= r.error;
    }
    return { bytes, following: found, ...(error ? { error } : {}), ...(cut ? { cut } : {}), ...(found && atCut ? { stoppedAtCut: true } : {}) };
  }

  /** Source: the VM stopped for its migration's end (its QEMU's STOP event): cut its follows. */
  cut(vmId: string, ended: (jobId: string) => boolean): void {
    cutFollows(vmId, ended, this.o.logger);
  }

  /** Source: the VM runs again: a cut follow no longer holds every write. */
  resumed(vmId: string): void {
    followsResumed(vmId);
  }

  private followKey(replicaId: string, disk: SourceDisk): string {
    return `${replicaId}.${disk.kind === 'qcow2' ? disk.device ?? '' : ''}`;
  }

  async lag(vmId: string, _replicaId: string, from: ReplicaCheckpoint): Promise<number> {
    let n = 0;
    for (const d of await this.sourceDisks(vmId)) n += (await this.backend.changedSince(d, this.perDisk(from))).bytes;
    return n;
  }

  async dropCheckpoints(vmId: string, replicaId: string, keep?: ReplicaCheckpoint): Promise<void> {
    // A mirror a live move left (its controller restarted) ends before the chain is tidied: the
    // next delta, from `keep`, sends everything it wrote.
    if (this.o.vmOf(vmId).running) await this.unfollow(vmId, replicaId);
    await this.dropPreconnected(replicaId);
    for (const disk of await this.sourceDisks(vmId)) {
      const prefix = 'vmtc-cp.';
      const mine = (await this.backend.checkpointBitmaps(disk))
        .map((b) => b.name.slice(prefix.length))
        .filter((id) => isReplicaCheckpoint(replicaId, id))
        .map((id) => ({ id, seq: Number(id.slice(replicaId.length + 1)), takenAt: 0, ref: bitmapOf(id) }))
        .sort((a, b) => a.seq - b.seq);
      for (const cp of mine) {
        if (keep && cp.id === keep.id) continue;
        // A newer one than the store holds was taken by a transfer never recorded there: its
        // writes go back into `keep`. An older one is no longer needed.
        if (keep && cp.seq > keep.seq) await this.backend.foldBack(disk, this.perDisk(keep), cp);
        else await this.backend.removeCheckpoint(disk, cp);
      }
    }
  }

  /** Whether a bitmap is one of the replica's checkpoints after `cp`. */
  private laterOf(replicaId: string, cp: ReplicaCheckpoint): (bitmap: string) => boolean {
    const prefix = bitmapOf('');
    return (n) => n.startsWith(prefix) && isReplicaCheckpoint(replicaId, n.slice(prefix.length)) && Number(n.slice(prefix.length + replicaId.length + 1)) > cp.seq;
  }

  async removeConsumedStores(spec: VmSpec): Promise<string[]> {
    const root = join(this.o.dataDir, 'replicas') + sep;
    const out: string[] = [];
    for (const d of writable(spec)) {
      if (!d.path.startsWith(root) || existsSync(`${d.path}.vmtc.json`)) continue;
      await rm(d.path, { force: true });
      out.push(d.path);
      await rmdir(dirname(d.path)).catch(() => undefined); // only when empty
    }
    return out;
  }

  async dropDiskCheckpoints(spec: VmSpec): Promise<string[]> {
    const out: string[] = [];
    // The VM's own copies went with it (a cold import's); an operator's image stays and is cleaned.
    for (const d of writable(spec)) if (d.format === 'qcow2' && existsSync(d.path)) out.push(...(await this.backend.removeAllCheckpoints({ kind: 'qcow2', image: d.path })));
    return out;
  }

  async digestSource(vmId: string, ask?: ReplicaDigestAsk & { replicaId: string }): Promise<ReplicaDigest> {
    const disks = await this.sourceDisks(vmId);
    // Incremental: the chunks written since `since` are those its bitmap marks (it stopped
    // recording when the last delta took the next checkpoint; the VM is paused).
    const since = ask?.since;
    const kept = since ? this.leaves.take('source', ask.replicaId, since) : undefined;
    let out: ReplicaDigest | undefined;
    if (kept && since) {
      // A VM whose migration completed (a live move's check after the switchover: pause-check.ts)
      // stored its bitmaps into its image files: both the names and the reads come from them.
      const away = disks.length > 0 && (await this.backend.migratedAway(disks[0]!).catch(() => false));
      out = await this.incremental('source', ask.replicaId, kept, disks.map((d) => {
        if (away) return { chunks: async (cache: LeafCache) => chunksOfRanges(await this.backend.storedDirtyRanges(d, this.perDisk(since), this.laterOf(ask.replicaId, since)), cache.chunkBytes, cache.size), reader: () => this.backend.fileReader(d) };
        // `since`'s bitmap and every later one of the replica: what a mirror carried after the
        // last delta's checkpoint is in the newest (docs/disks.md#following). Both the ranges
        // and the reads over one NBD connection to the VM's QEMU (qemu-cow.ts dirtyReader).
        // A disk no QEMU runs (a cold move's, powered off) is read from its file, at the file's
        // speed; the NBD export (a storage daemon's then) serves only the bitmap's extents.
        if (d.kind === 'qcow2' && d.vmId === undefined) return { chunks: (cache: LeafCache) => this.changedChunks(d, ask.replicaId, since, cache), reader: () => this.backend.fileReader(d) };
        let dr: ReturnType<QemuCowBackend['dirtyReader']> | undefined;
        const open = () => (dr ??= this.backend.dirtyReader(d, this.perDisk(since), this.laterOf(ask.replicaId, since)));
        return {
          chunks: async (cache: LeafCache) => chunksOfRanges((await open()).ranges, cache.chunkBytes, cache.size),
          reader: async () => (await open()).reader,
        };
      }));
    }
    if (!out) {
      out = { disks: [] };
      for (const [index, d] of disks.entries()) {
        const g = await this.backend.digestSource(d);
        out.disks.push({ index, size: g.size, chunkBytes: g.chunkBytes, root: g.root, leaves: g.leaves });
      }
      if (ask) this.leaves.note({ side: 'source', replicaId: ask.replicaId, mode: 'full', chunks: out.disks.reduce((n, d) => n + d.leaves.length, 0) });
    }
    if (ask?.keepAs) this.leaves.keep('source', ask.replicaId, ask.keepAs, out);
    return out;
  }

  /** The chunks (in `cache`'s chunks) of `d` written since `since`: its bitmap and every later
   *  one of the replica, read over NBD (qemu-cow.ts dirtyReader, closed at once). */
  private async changedChunks(d: SourceDisk, replicaId: string, since: ReplicaCheckpoint, cache: LeafCache): Promise<number[]> {
    const dr = await this.backend.dirtyReader(d, this.perDisk(since), this.laterOf(replicaId, since));
    await dr.reader.close();
    return chunksOfRanges(dr.ranges, cache.chunkBytes, cache.size);
  }

  async close(): Promise<void> {
    for (const id of [...this.exports.keys()]) await this.closeExports(id);
    for (const p of new Set([...this.preconnected.values()].map((x) => x.replicaId))) await this.dropPreconnected(p);
  }
}
