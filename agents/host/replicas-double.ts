// ReplicaDouble: a TEST DOUBLE of a driver's disk-state operations (agents/host/replicas.ts
// ReplicaOps), for DoubleDriver (docs/contributing.md#real-things-in-tests). It follows the
// protocol of the QEMU backend (agents/host/disks/qemu-replica.ts) with real bytes over real TCP,
// so a destination that dies mid-transfer, a store at another checkpoint or a corrupt store
// behave as they do there:
//   disks        the VM spec's `disks` paths at the source, read as plain bytes (whatever their
//                format); the store at the destination is one file per disk in its own dir
//   checkpoint   the SHA-256 of every 64 KiB block of every disk at that instant, kept in
//                memory (an agent restart loses them: the next delta is
//                VMTC_HOST_DISK_CHECKPOINT_MISSING, as a QEMU bitmap of a VM that crashed);
//                they belong to the disks, as bitmaps in a qcow2 image do: dropCheckpoints
//                needs the VM here (VMTC_HOST_VM_NOT_FOUND once it is gone), dropDiskCheckpoints
//                drops them by the disks' paths
//   seed/delta   the disks are read at one instant, and the blocks that are not zero (seed) or
//                whose hash differs from `from` (delta) go over one TCP connection to the
//                export: a header line, then [u32 disk][u32 length][f64 offset] + data frames,
//                an end frame, and the destination's "OK\n" once all is written (replicas-double-wire.ts)
//   store        export = a TCP server on listenHost for one transfer; closeStore records the
//                checkpoint (IMAGE.vmtc.json beside the files, as qemu-store.ts) only if the
//                export received a complete transfer of it
//   pacing       `bandwidthMbps` paces the source (tests that kill a destination mid-seed)
//                or limit() (replica.limit / a send's rateBytesPerS), read at every frame
//   follow       (a live move, docs/disks.md#following) the catch-up delta as a delta; then, as
//                QEMU's write-blocking mirror leaves the store, every block written since is in
//                the store when unfollow returns: the double sends them at unfollow over the
//                same export, under the catch-up's checkpoint, whose hashes become the disks'
//                at that instant (so, as the QEMU bitmaps' union, the digests at the pause
//                re-read every block written since `from`). An export that went away fails
//                the "mirror": unfollow reports it and nothing is counted as carried
//   digests      Merkle digests of the files (disks/digest.ts); incremental ones as the QEMU
//                backend's (docs/disks.md#incremental-digests): leaves kept with `keepAs`, and
//                with `since` only the chunks re-read that the checkpoint after `since` found
//                changed (the source) or the controller names (`changed`, the store)
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rename, rm, rmdir, stat, truncate, writeFile, open } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, sep } from 'node:path';
import type { ReplicaCheckpoint, ReplicaDigest, ReplicaDigestAsk, ReplicaStoreHandoff, ReplicaTransfer, VmSpec } from '../../src/common/agent-protocol.ts';
import type { Clock } from '../../src/common/clock.ts';
import { hostError } from './errors.ts';
import { digestDisk } from './disks/digest.ts';
import { KeptLeaves, type DigestNote } from './disks/kept-leaves.ts';
import { refreshLeaves, type LeafCache } from './disks/leaf-cache.ts';
import { isReplicaCheckpoint, type ReplicaOps } from './replicas.ts';
import { BLOCK, END, blockFrames, blockHashes, isZero, readAll, ship } from './replicas-double-wire.ts';


export interface ReplicaDoubleOptions {
  clock: Clock;
  /** The disk files of a VM this host runs (throws VMTC_HOST_VM_NOT_FOUND). */
  disksOf(vmId: string): { path: string }[];
  /** Where stores go (default: a temp dir of its own, removed by close()). */
  dir?: string;
  /** Pace of the source's sends, Mbit/s (default unpaced). */
  bandwidthMbps?: number;
}

interface Held { checkpoint: ReplicaCheckpoint; disks: number; sizes: number[] }
interface Export { server: Server; sockets: Set<Socket>; received?: { checkpoint: ReplicaCheckpoint; sizes: number[] }; expect: ReplicaCheckpoint | null }

export class ReplicaDouble implements ReplicaOps {
  private readonly checkpoints = new Map<string, { cp: ReplicaCheckpoint; hashes: string[][] }[]>();
  /** The disk paths each chain's checkpoints were taken of. */
  private readonly chainDisks = new Map<string, string[]>();
  private readonly exports = new Map<string, Export>();
  private dir: string | undefined;
  private ownDir = false;
  /** Leaves kept for incremental digests; `notes` says which kind each digest was. */
  readonly leaves = new KeptLeaves();

  /** The copy rate limit() set (bytes/s, 0: none; then opts.bandwidthMbps paces), and every
   *  rate it was set to, in order (what a test reads). */
  private rateBytesPerS = 0;
  readonly limits: number[] = [];

  constructor(private readonly opts: ReplicaDoubleOptions) {
    this.dir = opts.dir;
  }

  /** The source's pace: limit()'s rate, read at every frame, else opts.bandwidthMbps. */
  private readonly pace = { clock: () => this.opts.clock, mbps: () => (this.rateBytesPerS > 0 ? (this.rateBytesPerS * 8) / 1e6 : this.opts.bandwidthMbps) };

  limit(bytesPerSecond: number): void {
    this.rateBytesPerS = bytesPerSecond;
    this.limits.push(bytesPerSecond);
  }

  /** Live moves' follows: the export and the catch-up delta's checkpoint, by VM/replica. */
  private readonly follows = new Map<string, { addr: { host: string; port: number }; cp: ReplicaCheckpoint }>();

  async follow(vmId: string, replicaId: string, store: ReplicaStoreHandoff, from: ReplicaCheckpoint, checkpointId: string): Promise<ReplicaTransfer> {
    const t = await this.send(vmId, replicaId, store, from, checkpointId);
    this.follows.set(`${vmId}/${replicaId}`, { addr: (store as { double: { host: string; port: number } }).double, cp: t.checkpoint });
    return t;
  }

  /** TEST ONLY: the next unfollow finds its "mirror" failed (as a QEMU mirror whose store went
   *  away mid-follow): nothing carried, the error reported; the export itself stays. */
  failNextFollow = false;

  async unfollow(vmId: string, replicaId: string): Promise<{ bytes: number; following: boolean; error?: string }> {
    const k = `${vmId}/${replicaId}`;
    const f = this.follows.get(k);
    this.follows.delete(k);
    if (!f) return { bytes: 0, following: false };
    if (this.failNextFollow) {
      this.failNextFollow = false;
      return { bytes: 0, following: true, error: 'Input/output error (injected)' };
    }
    const c = this.chain(vmId, replicaId).find((x) => x.cp.id === f.cp.id);
    if (!c) return { bytes: 0, following: true, error: 'the followed checkpoint is gone' };
    const images = await Promise.all(this.opts.disksOf(vmId).map((d) => readAll(d.path)));
    const hashes = images.map(blockHashes);
    const { frames, bytes, end } = blockFrames(images, hashes, (di, bi, h) => c.hashes[di]?.[bi] !== h);
    try {
      await ship(f.addr, JSON.stringify({ checkpoint: f.cp, sizes: images.map((b) => b.length) }) + '\n', frames, end, { vmId, replicaId, checkpoint: f.cp.id }, this.pace);
    } catch (e) {
      return { bytes: 0, following: true, error: (e as Error).message };
    }
    c.hashes = hashes;
    return { bytes, following: true };
  }

  /** TEST ONLY: the checkpoint ids the source keeps for the VM (all replicas). */
  checkpointIds(vmId: string): string[] {
    return [...this.checkpoints.entries()].filter(([k]) => k.startsWith(`${vmId}/`)).flatMap(([, l]) => l.map((c) => c.cp.id));
  }

  /** TEST ONLY: whether a store exists here for the replica. */
  hasStore(replicaId: string): boolean {
    return !!this.dir && existsSync(join(this.dir, replicaId));
  }

  /** TEST ONLY: the file of disk `index` in the replica's store (seeded or not). */
  storeFile(replicaId: string, index: number): string | undefined {
    return this.dir ? join(this.dir, replicaId, `disk${index}.img`) : undefined;
  }

  // ---- destination ------------------------------------------------------------------------

  private async storeDir(replicaId: string): Promise<string> {
    if (!this.dir) {
      this.dir = await mkdtemp(join(tmpdir(), 'vmtc-replica-double-'));
      this.ownDir = true;
    }
    return join(this.dir, replicaId);
  }

  private async held(replicaId: string): Promise<Held | null> {
    try {
      return JSON.parse(await readFile(join(await this.storeDir(replicaId), 'store.vmtc.json'), 'utf8')) as Held;
    } catch {
      return null;
    }
  }

  async storePaths(replicaId: string): Promise<string[]> {
    const h = await this.held(replicaId);
    if (!h) throw hostError('VMTC_HOST_DISK_NOT_FOUND', { replicaId, reason: 'no seeded store' });
    const d = await this.storeDir(replicaId);
    return Array.from({ length: h.disks }, (_, i) => join(d, `disk${i}.img`));
  }

  async openStore(replicaId: string, _spec: VmSpec, listenHost: string, expect: ReplicaCheckpoint | null): Promise<ReplicaStoreHandoff> {
    const d = await this.storeDir(replicaId);
    const held = await this.held(replicaId);
    if (expect === null) {
      if (held) throw hostError('VMTC_HOST_DISK_CHECKPOINT_EXISTS', { replicaId, reason: 'the store is seeded; remove the replica first' });
      await rm(d, { recursive: true, force: true });
      await mkdir(d, { recursive: true });
    } else if (!held || held.checkpoint.id !== expect.id || held.checkpoint.seq !== expect.seq) {
      throw hostError('VMTC_HOST_DISK_DELTA_REJECTED', { replicaId, holds: held ? { id: held.checkpoint.id, seq: held.checkpoint.seq } : null, expected: { id: expect.id, seq: expect.seq } });
    }
    await this.closeExport(replicaId);
    const ex: Export = { server: createServer(), sockets: new Set(), expect };
    ex.server.on('connection', (s) => this.receive(replicaId, d, ex, s));
    await new Promise<void>((res, rej) => {
      ex.server.once('error', rej);
      ex.server.listen(0, listenHost, () => res());
    });
    this.exports.set(replicaId, ex);
    return { double: { host: listenHost, port: (ex.server.address() as { port: number }).port } };
  }

  private receive(replicaId: string, d: string, ex: Export, s: Socket): void {
    ex.sockets.add(s);
    let buf = Buffer.alloc(0);
    let header: { checkpoint: ReplicaCheckpoint; sizes: number[] } | undefined;
    let chain = Promise.resolve();
    const fail = (): void => { s.destroy(); };
    s.on('error', fail).on('close', () => ex.sockets.delete(s));
    s.on('data', (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      if (!header) {
        const nl = buf.indexOf(10);
        if (nl < 0) return;
        header = JSON.parse(buf.subarray(0, nl).toString('utf8')) as typeof header;
        buf = buf.subarray(nl + 1);
        const sizes = header!.sizes;
        chain = chain.then(async () => {
          for (let i = 0; i < sizes.length; i++) {
            const f = join(d, `disk${i}.img`);
            if (!existsSync(f)) await writeFile(f, '');
            await truncate(f, sizes[i]!);
          }
        });
      }
      while (buf.length >= 16) {
        const disk = buf.readUInt32BE(0);
        if (disk === END) {
          buf = buf.subarray(16);
          const h = header!;
          chain = chain.then(() => {
            ex.received = { checkpoint: h.checkpoint, sizes: h.sizes };
            s.end('OK\n');
          }).catch(fail);
          return;
        }
        const len = buf.readUInt32BE(4);
        const off = buf.readDoubleBE(8);
        if (buf.length < 16 + len) return;
        const data = Buffer.from(buf.subarray(16, 16 + len));
        buf = buf.subarray(16 + len);
        const f = join(d, `disk${disk}.img`);
        chain = chain.then(async () => {
          const fh = await open(f, 'r+');
          try {
            await fh.write(data, 0, data.length, off);
          } finally {
            await fh.close();
          }
        }).catch(fail);
      }
    });
    void replicaId;
  }

  private async closeExport(replicaId: string): Promise<Export | undefined> {
    const ex = this.exports.get(replicaId);
    if (!ex) return undefined;
    this.exports.delete(replicaId);
    for (const s of ex.sockets) s.destroy();
    await new Promise<void>((r) => ex.server.close(() => r()));
    return ex;
  }

  /** Closes under way, by replica: a store digest asked meanwhile waits for it (ReplicaOps). */
  private readonly closing = new Map<string, Promise<unknown>>();

  async closeStore(replicaId: string, transfer?: ReplicaTransfer): Promise<ReplicaCheckpoint | null> {
    const p = this.closeStoreNow(replicaId, transfer);
    this.closing.set(replicaId, p);
    try {
      return await p;
    } finally {
      if (this.closing.get(replicaId) === p) this.closing.delete(replicaId);
    }
  }

  private async closeStoreNow(replicaId: string, transfer?: ReplicaTransfer): Promise<ReplicaCheckpoint | null> {
    const ex = await this.closeExport(replicaId);
    if (transfer) {
      const got = ex?.received;
      if (!got || got.checkpoint.id !== transfer.checkpoint.id) throw hostError('VMTC_HOST_DISK_COPY_FAILED', { replicaId, reason: 'the export did not receive this transfer whole', checkpoint: transfer.checkpoint.id });
      const d = await this.storeDir(replicaId);
      const rec: Held = { checkpoint: transfer.checkpoint, disks: got.sizes.length, sizes: got.sizes };
      await writeFile(join(d, 'store.vmtc.json.tmp'), JSON.stringify(rec));
      await rename(join(d, 'store.vmtc.json.tmp'), join(d, 'store.vmtc.json'));
    }
    return (await this.held(replicaId))?.checkpoint ?? null;
  }

  async removeStore(replicaId: string, opts: { keepImages?: boolean } = {}): Promise<void> {
    await this.closeExport(replicaId);
    this.leaves.forget(replicaId);
    if (!this.dir) return;
    const d = join(this.dir, replicaId);
    if (opts.keepImages) {
      // The images are a VM's disks now: only the store's record goes.
      await rm(join(d, 'store.vmtc.json'), { force: true });
      return;
    }
    await rm(d, { recursive: true, force: true });
  }

  async removeConsumedStores(spec: VmSpec): Promise<string[]> {
    if (!this.dir) return [];
    const root = this.dir + sep;
    const out: string[] = [];
    for (const d of spec.disks ?? []) {
      if (d.readonly || !d.path.startsWith(root) || existsSync(join(dirname(d.path), 'store.vmtc.json'))) continue;
      await rm(d.path, { force: true });
      out.push(d.path);
      await rmdir(dirname(d.path)).catch(() => undefined); // only when empty
    }
    return out;
  }

  async digestStore(replicaId: string, ask: ReplicaDigestAsk = {}): Promise<ReplicaDigest> {
    await this.closing.get(replicaId)?.catch(() => undefined);
    const paths = await this.storePaths(replicaId);
    const now = (await this.held(replicaId))?.checkpoint;
    const kept = ask.since ? this.leaves.take('store', replicaId, ask.since) : undefined;
    let out: ReplicaDigest | undefined;
    // Incremental: the store is exactly one delta (the last) further than the kept leaves, and
    // the controller names the chunks that delta's source found written.
    if (kept && ask.since && ask.changed && now?.seq === ask.since.seq + 1) out = await this.incremental('store', replicaId, kept, paths, (i) => ask.changed![i]);
    if (!out) out = await this.fullDigest('store', replicaId, paths);
    if (ask.keepAs && now?.id === ask.keepAs.id && now.seq === ask.keepAs.seq) this.leaves.keep('store', replicaId, ask.keepAs, out);
    return out;
  }

  private async fullDigest(side: DigestNote['side'], replicaId: string, paths: string[]): Promise<ReplicaDigest> {
    const out = await this.digestFiles(paths);
    this.leaves.note({ side, replicaId, mode: 'full', chunks: out.disks.reduce((n, d) => n + d.leaves.length, 0) });
    return out;
  }

  /** The kept leaves with the chunks `chunksOf` names re-read from the files; undefined (a full
   *  digest instead) when the files do not match what was kept, a list is missing or a read fails. */
  private async incremental(side: DigestNote['side'], replicaId: string, kept: LeafCache[], paths: string[], chunksOf: (disk: number, cache: LeafCache) => number[] | undefined): Promise<ReplicaDigest | undefined> {
    if (kept.length !== paths.length) return undefined;
    try {
      const out: ReplicaDigest = { disks: [] };
      for (const [index, p] of paths.entries()) {
        const cache = kept[index]!;
        const chunks = chunksOf(index, cache);
        if (!chunks || (await stat(p)).size !== cache.size) return undefined;
        const fh = await open(p, 'r');
        try {
          const g = await refreshLeaves(cache, chunks, async (o, l) => {
            const b = Buffer.alloc(l);
            const { bytesRead } = await fh.read(b, 0, l, o);
            return b.subarray(0, bytesRead);
          });
          out.disks.push({ index, size: g.size, chunkBytes: g.chunkBytes, root: g.root, leaves: g.leaves, changed: chunks });
        } finally {
          await fh.close();
        }
      }
      this.leaves.note({ side, replicaId, mode: 'incremental', chunks: out.disks.reduce((n, d) => n + d.changed!.length, 0) });
      return out;
    } catch {
      return undefined;
    }
  }

  // ---- source -------------------------------------------------------------------------------

  private chain(vmId: string, replicaId: string) {
    const k = `${vmId}/${replicaId}`;
    let l = this.checkpoints.get(k);
    if (!l) this.checkpoints.set(k, (l = []));
    return l;
  }

  async send(vmId: string, replicaId: string, store: ReplicaStoreHandoff, from: ReplicaCheckpoint | null, checkpointId: string): Promise<ReplicaTransfer> {
    const disks = this.opts.disksOf(vmId);
    if (disks.length === 0) throw hostError('VMTC_HOST_DISK_UNSUPPORTED', { vmId, reason: 'the VM has no disk' });
    const addr = (store as { double?: { host: string; port: number } }).double;
    if (!addr || typeof addr.host !== 'string' || !Number.isInteger(addr.port)) throw hostError('VMTC_HOST_BAD_PARAMS', { field: 'store' });
    const chain = this.chain(vmId, replicaId);
    if (chain.some((c) => c.cp.id === checkpointId)) throw hostError('VMTC_HOST_DISK_CHECKPOINT_EXISTS', { vmId, checkpoint: checkpointId });
    const base = from ? chain.find((c) => c.cp.id === from.id && c.cp.seq === from.seq) : undefined;
    if (from && !base) throw hostError('VMTC_HOST_DISK_CHECKPOINT_MISSING', { vmId, checkpoint: from.id });
    // The point-in-time view: every disk read now.
    const started = this.opts.clock.now();
    const images = await Promise.all(disks.map((d) => readAll(d.path)));
    const hashes = images.map(blockHashes);
    const cp: ReplicaCheckpoint = { id: checkpointId, seq: from ? from.seq + 1 : 0, takenAt: started, ref: `double.${checkpointId}` };
    const { frames, bytes, end } = blockFrames(images, hashes, (di, bi, h, data) => (base ? base.hashes[di]?.[bi] !== h : !isZero(data)));
    await ship(addr, JSON.stringify({ checkpoint: cp, sizes: images.map((b) => b.length) }) + '\n', frames, end, { vmId, replicaId, checkpoint: checkpointId }, this.pace);
    chain.push({ cp, hashes });
    this.chainDisks.set(`${vmId}/${replicaId}`, disks.map((d) => d.path));
    return { kind: from ? 'delta' : 'full', checkpoint: cp, ...(from ? { from } : {}), diskBytes: images.reduce((n, b) => n + b.length, 0), bytes, ms: this.opts.clock.now() - started, disks: disks.length };
  }



  async lag(vmId: string, replicaId: string, from: ReplicaCheckpoint): Promise<number> {
    const base = this.chain(vmId, replicaId).find((c) => c.cp.id === from.id);
    if (!base) throw hostError('VMTC_HOST_DISK_CHECKPOINT_MISSING', { vmId, checkpoint: from.id });
    const images = await Promise.all(this.opts.disksOf(vmId).map((d) => readAll(d.path)));
    let n = 0;
    images.forEach((img, di) => blockHashes(img).forEach((h, bi) => {
      if (base.hashes[di]?.[bi] !== h) n += Math.min(BLOCK, img.length - bi * BLOCK);
    }));
    return n;
  }

  async dropCheckpoints(vmId: string, replicaId: string, keep?: ReplicaCheckpoint): Promise<void> {
    this.opts.disksOf(vmId);
    // A follow left behind ends first (as the QEMU backend stops a mirror left by a move).
    this.follows.delete(`${vmId}/${replicaId}`);
    const k = `${vmId}/${replicaId}`;
    const l = (this.checkpoints.get(k) ?? []).filter((c) => keep && c.cp.id === keep.id && isReplicaCheckpoint(replicaId, c.cp.id));
    if (l.length) this.checkpoints.set(k, l);
    else this.checkpoints.delete(k);
  }

  async dropDiskCheckpoints(spec: VmSpec): Promise<string[]> {
    const paths = new Set((spec.disks ?? []).map((d) => d.path));
    const out: string[] = [];
    for (const [k, disks] of this.chainDisks) {
      if (!disks.some((p) => paths.has(p))) continue;
      out.push(...(this.checkpoints.get(k) ?? []).map((c) => c.cp.id));
      this.checkpoints.delete(k);
      this.chainDisks.delete(k);
    }
    return out;
  }

  async digestSource(vmId: string, ask?: ReplicaDigestAsk & { replicaId: string }): Promise<ReplicaDigest> {
    const paths = this.opts.disksOf(vmId).map((d) => d.path);
    if (!ask) return this.digestFiles(paths);
    const since = ask.since;
    const kept = since ? this.leaves.take('source', ask.replicaId, since) : undefined;
    let out: ReplicaDigest | undefined;
    if (kept && since && ask.changed) {
      const changed = ask.changed;
      out = await this.incremental('source', ask.replicaId, kept, paths, (di) => changed[di]);
    } else if (kept && since) {
      const chunksOf = this.changedOf(vmId, ask.replicaId, since);
      out = chunksOf ? await this.incremental('source', ask.replicaId, kept, paths, chunksOf) : undefined;
    }
    if (!out) out = await this.fullDigest('source', ask.replicaId, paths);
    if (ask.keepAs) this.leaves.keep('source', ask.replicaId, ask.keepAs, out);
    return out;
  }

  /** What the source's change tracking says was written since `since`: the blocks that the next
   *  checkpoint (the last delta's) found changed, as `since`'s QEMU bitmap would; undefined
   *  without both checkpoints. */
  private changedOf(vmId: string, replicaId: string, since: ReplicaCheckpoint): ((disk: number, cache: LeafCache) => number[]) | undefined {
    const chain = this.chain(vmId, replicaId);
    const base = chain.find((c) => c.cp.id === since.id && c.cp.seq === since.seq);
    const next = chain.find((c) => c.cp.seq === since.seq + 1);
    if (!base || !next) return undefined;
    return (di, cache) => {
      const a = base.hashes[di] ?? [];
      const b = next.hashes[di] ?? [];
      const out = new Set<number>();
      for (let bi = 0; bi < Math.max(a.length, b.length); bi++) if (a[bi] !== b[bi]) out.add(Math.floor((bi * BLOCK) / cache.chunkBytes));
      return [...out].sort((x, y) => x - y);
    };
  }

  private async digestFiles(paths: string[]): Promise<ReplicaDigest> {
    const disks: ReplicaDigest['disks'] = [];
    for (const [index, p] of paths.entries()) {
      const size = (await stat(p)).size;
      const img = await readAll(p);
      const d = await digestDisk(async (o, l) => img.subarray(o, o + l), size);
      disks.push({ index, size, chunkBytes: d.chunkBytes, root: d.root, leaves: d.leaves });
    }
    return { disks };
  }

  async close(): Promise<void> {
    for (const id of [...this.exports.keys()]) await this.closeExport(id);
    if (this.ownDir && this.dir) await rm(this.dir, { recursive: true, force: true });
  }
}
