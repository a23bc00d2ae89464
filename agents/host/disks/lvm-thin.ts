// The LVM thin backend (docs/disks.md#lvm-thin): the paper's LVM delta protocol on thin pools.
//   checkpoint   a thin snapshot of the origin (`lvcreate -s -kn`: no size, so thin; activation
//                skip off so its device exists to be read)
//   changes      `thin_delta` between the two snapshots' thin ids, read from a metadata snapshot
//                of the live pool (`dmsetup message POOL-tpool 0 reserve_metadata_snap`, always
//                released after)
//   transfer     block-wise: the changed ranges are read from the newer snapshot's device into a
//                delta file (delta-file.ts); at the destination they are written into a thin LV
//                (created on the seed with `lvcreate -V -T`), zero chunks skipped so it stays
//                thin; the checkpoint it holds is an LV tag (vmtc_cp.SEQ.ID)
//   remove       `lvremove -f`
// Every command goes through the injected CommandRunner and every block read and write through
// the injected BlockIo (io.ts). These machines have no device-mapper: this backend has run only
// against the named double test/helpers/lvm-double.ts (docs/disks.md says how to check it on a
// real host).
import { systemClock, type Clock } from '../../../src/common/clock.ts';
import { hostError } from '../errors.ts';
import { CHECKPOINT_ID, type ChangedBlocks, type Checkpoint, type DigestOptions, type DiskDigest, type DiskStateBackend, type SourceDisk, type TransferReport } from './backend.ts';
import { DeltaWriter, openDelta, type DeltaHeader } from './delta-file.ts';
import { digestDisk } from './digest.ts';
import { runOk, systemBlockIo, systemRunner, type BlockIo, type CommandRunner } from './io.ts';
import { changedRanges, LVM_MESSAGES, LVS_FIELDS, parseLvsJson, parseThinDelta, type LvReport } from './lvm-parse.ts';

/** Where a replica lives at the destination: a thin LV in a thin pool, and the delta file that
 *  carries each transfer (written by the source, applied at the destination). */
export interface LvmDestination {
  vg: string;
  pool: string;
  lv: string;
  file: string;
}

export interface LvmThinOptions {
  runner?: CommandRunner;
  io?: BlockIo;
  clock?: Clock;
  /** Largest read or write of one block I/O (default 4 MiB). */
  ioBytes?: number;
  timeoutMs?: number;
}

const ZERO_GRAIN = 64 * 1024;
const ZEROS = Buffer.alloc(ZERO_GRAIN);
const isZero = (b: Buffer) => b.equals(ZEROS.subarray(0, b.length));
const NAME = /^[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,126}$/;
const TAG = /^vmtc_cp\.(\d+)\.([A-Za-z0-9_.-]+)$/;

/** device-mapper's name for vg/lv: each '-' inside a name doubled, the two joined by '-'. */
export const dmName = (vg: string, lv: string) => `${vg.replace(/-/g, '--')}-${lv.replace(/-/g, '--')}`;

export class LvmThinBackend implements DiskStateBackend<LvmDestination> {
  readonly kind = 'lvm-thin' as const;
  private readonly run: CommandRunner;
  private readonly io: BlockIo;
  private readonly clock: Clock;
  private readonly ioBytes: number;
  private readonly timeoutMs: number;

  constructor(opts: LvmThinOptions = {}) {
    this.run = opts.runner ?? systemRunner;
    this.io = opts.io ?? systemBlockIo;
    this.clock = opts.clock ?? systemClock;
    this.ioBytes = opts.ioBytes ?? 4 * 1024 * 1024;
    this.timeoutMs = opts.timeoutMs ?? 120_000;
  }

  // ---- source ------------------------------------------------------------------------------

  async seed(disk: SourceDisk, id: string, dest: LvmDestination): Promise<TransferReport> {
    const { vg, lv } = thinDisk(disk);
    const t0 = this.clock.now();
    const cp = await this.snapshot(vg, lv, id, 0);
    try {
      const size = (await this.lvs(vg, [cp.ref]))[0]!.sizeBytes;
      const bytes = await this.writeDelta(dest.file, { format: 'vmtc-delta/1', kind: 'full', diskBytes: size, checkpoint: cp, extents: [] }, vg, cp.ref, [{ offset: 0, length: size }]);
      return { kind: 'full', checkpoint: cp, diskBytes: size, bytes, ms: this.clock.now() - t0 };
    } catch (e) {
      await this.removeCheckpoint(disk, cp).catch(() => undefined);
      throw e;
    }
  }

  async changedSince(disk: SourceDisk, from: Checkpoint, to?: Checkpoint): Promise<ChangedBlocks> {
    const { vg, lv } = thinDisk(disk);
    return this.delta(vg, lv, from, to);
  }

  async sendDelta(disk: SourceDisk, from: Checkpoint, id: string, dest: LvmDestination): Promise<TransferReport> {
    const { vg, lv } = thinDisk(disk);
    const t0 = this.clock.now();
    await this.checkpointLv(vg, lv, from);
    const cp = await this.snapshot(vg, lv, id, from.seq + 1);
    try {
      const size = (await this.checkpointLv(vg, lv, cp)).sizeBytes;
      const changes = await this.delta(vg, lv, from, cp);
      const bytes = await this.writeDelta(dest.file, { format: 'vmtc-delta/1', kind: 'delta', diskBytes: size, from, checkpoint: cp, extents: [] }, vg, cp.ref, changes.ranges!);
      return { kind: 'delta', from, checkpoint: cp, diskBytes: size, bytes, ms: this.clock.now() - t0 };
    } catch (e) {
      // The new view is of no use without its delta; `from` stays for the retry.
      await this.removeCheckpoint(disk, cp).catch(() => undefined);
      throw e;
    }
  }

  async removeCheckpoint(disk: SourceDisk, cp: Checkpoint): Promise<void> {
    const { vg } = thinDisk(disk);
    if (!NAME.test(cp.ref)) throw hostError('VMTC_HOST_BAD_PARAMS', { field: 'checkpoint.ref' });
    const r = await this.run(['lvremove', '-f', `${vg}/${cp.ref}`], { timeoutMs: this.timeoutMs });
    if (r.code !== 0 && !LVM_MESSAGES.notFound.test(r.stderr)) throw hostError('VMTC_HOST_DISK_TOOL_FAILED', { argv: ['lvremove', '-f', `${vg}/${cp.ref}`], exitCode: r.code, stderr: r.stderr.trim().slice(0, 1000) });
  }

  /** Every checkpoint snapshot of the LV (`LV.vmtc.*` whose origin it is): `lvremove -f` each. */
  async removeAllCheckpoints(disk: SourceDisk): Promise<string[]> {
    const { vg, lv } = thinDisk(disk);
    checkNames(vg, lv);
    const argv = ['lvs', '--reportformat', 'json', '--units', 'b', '--nosuffix', '-o', LVS_FIELDS.join(','), vg];
    const r = await this.run(argv, { timeoutMs: this.timeoutMs });
    if (r.code !== 0) throw hostError('VMTC_HOST_DISK_TOOL_FAILED', { argv, exitCode: r.code, stderr: r.stderr.trim().slice(0, 1000) });
    const snaps = parseLvsJson(r.stdout).filter((l) => l.vg === vg && l.origin === lv && l.name.startsWith(`${lv}.vmtc.`)).map((l) => l.name);
    for (const name of snaps) await this.removeCheckpoint(disk, { id: name.slice(lv.length + '.vmtc.'.length), seq: 0, takenAt: 0, ref: name });
    return snaps;
  }

  async digestSource(disk: SourceDisk, opts: DigestOptions = {}, at?: Checkpoint): Promise<DiskDigest> {
    const { vg, lv } = thinDisk(disk);
    const name = at ? (await this.checkpointLv(vg, lv, at)).name : lv;
    const size = (await this.lvs(vg, [name]))[0]!.sizeBytes;
    return digestDisk(this.reader(`/dev/${vg}/${name}`), size, opts);
  }

  // ---- destination ---------------------------------------------------------------------------

  async applyDelta(dest: LvmDestination, report: TransferReport): Promise<void> {
    checkNames(dest.vg, dest.pool, dest.lv);
    const { header, dataStart, fh } = await openDelta(dest.file);
    try {
      if (header.checkpoint.id !== report.checkpoint.id || header.kind !== report.kind) throw hostError('VMTC_HOST_DISK_DELTA_REJECTED', { file: dest.file, reason: `the file carries ${header.kind} ${header.checkpoint.id}, not ${report.kind} ${report.checkpoint.id}` });
      const existing = await this.lvsMaybe(dest.vg, dest.lv);
      if (header.kind === 'delta') {
        if (!existing) throw hostError('VMTC_HOST_DISK_NOT_FOUND', { lv: `${dest.vg}/${dest.lv}`, reason: 'a delta needs the seeded LV' });
        const held = heldCheckpoint(existing);
        if (!held || held.id !== header.from?.id || held.seq !== header.from.seq) throw hostError('VMTC_HOST_DISK_DELTA_REJECTED', { lv: `${dest.vg}/${dest.lv}`, reason: `the LV holds ${held ? `${held.id} (${held.seq})` : 'no checkpoint'}, the delta starts from ${header.from?.id} (${header.from?.seq})` });
        if (existing.sizeBytes !== header.diskBytes) throw hostError('VMTC_HOST_DISK_DELTA_REJECTED', { reason: 'the disk size changed', lvBytes: existing.sizeBytes, deltaBytes: header.diskBytes });
      } else if (existing) {
        throw hostError('VMTC_HOST_DISK_CHECKPOINT_EXISTS', { lv: `${dest.vg}/${dest.lv}`, reason: 'a full copy goes into a new LV; remove the old replica first' });
      }
      // Room in the pool for every data byte of the delta (worst case: none of it overwrites a
      // block the LV already maps), checked before writing anything.
      const pool = (await this.lvs(dest.vg, [dest.pool]))[0]!;
      const dataBytes = header.extents.reduce((n, e) => n + (e.type === 'data' ? e.length : 0), 0);
      const free = pool.sizeBytes * (1 - (pool.dataPercent ?? 0) / 100);
      if (dataBytes > free) throw hostError('VMTC_HOST_DISK_POOL_FULL', { pool: `${dest.vg}/${dest.pool}`, neededBytes: dataBytes, freeBytes: Math.floor(free) });
      if (!existing) {
        await this.lvm(['lvcreate', '-V', `${header.diskBytes}b`, '-T', `${dest.vg}/${dest.pool}`, '-n', dest.lv], `${dest.vg}/${dest.pool}`);
      }
      const device = `/dev/${dest.vg}/${dest.lv}`;
      let at = dataStart;
      for (const e of header.extents) {
        for (let off = 0; off < e.length; off += this.ioBytes) {
          const n = Math.min(this.ioBytes, e.length - off);
          const buf = Buffer.alloc(n); // zero extents: written as zeros (correct whatever the LV mapped there)
          if (e.type === 'data') {
            await fh.read(buf, 0, n, at);
            at += n;
          }
          await this.io.write(device, e.offset + off, buf).catch((err: unknown) => {
            throw hostError((err as NodeJS.ErrnoException).code === 'ENOSPC' ? 'VMTC_HOST_DISK_POOL_FULL' : 'VMTC_HOST_DISK_COPY_FAILED', { device, offset: e.offset + off, reason: String(err) }, { cause: err });
          });
        }
      }
      const old = existing ? existing.tags.filter((t) => TAG.test(t)) : [];
      const args = ['lvchange', ...old.flatMap((t) => ['--deltag', t]), '--addtag', `vmtc_cp.${header.checkpoint.seq}.${header.checkpoint.id}`, `${dest.vg}/${dest.lv}`];
      await this.lvm(args, `${dest.vg}/${dest.lv}`);
    } finally {
      await fh.close();
    }
  }

  async digestDestination(dest: LvmDestination, opts: DigestOptions = {}): Promise<DiskDigest> {
    checkNames(dest.vg, dest.lv);
    const lv = await this.lvsMaybe(dest.vg, dest.lv);
    if (!lv) throw hostError('VMTC_HOST_DISK_NOT_FOUND', { lv: `${dest.vg}/${dest.lv}` });
    return digestDisk(this.reader(`/dev/${dest.vg}/${dest.lv}`), lv.sizeBytes, opts);
  }

  /** The checkpoint a destination LV holds (its tag), or null. */
  async destinationCheckpoint(dest: LvmDestination): Promise<{ id: string; seq: number } | null> {
    const lv = await this.lvsMaybe(dest.vg, dest.lv);
    return lv ? heldCheckpoint(lv) : null;
  }

  // ---- steps ---------------------------------------------------------------------------------

  private async snapshot(vg: string, lv: string, id: string, seq: number): Promise<Checkpoint> {
    if (!CHECKPOINT_ID.test(id)) throw hostError('VMTC_HOST_BAD_PARAMS', { field: 'id', reason: 'letters, digits, _ . - (1..48)' });
    const origin = (await this.lvs(vg, [lv]))[0]!;
    if (!origin.attr.startsWith('V')) throw hostError('VMTC_HOST_BAD_PARAMS', { field: 'disk', reason: `${vg}/${lv} is not a thin volume (lv_attr ${origin.attr}); classic snapshots are not supported (docs/disks.md)` });
    const ref = `${lv}.vmtc.${id}`;
    const takenAt = this.clock.now();
    await this.lvm(['lvcreate', '-s', '-kn', '-n', ref, `${vg}/${lv}`], `${vg}/${origin.pool}`);
    return { id, seq, takenAt, ref };
  }

  /** The snapshot LV of a checkpoint, checked to be a snapshot of this origin. */
  private async checkpointLv(vg: string, lv: string, cp: Checkpoint): Promise<LvReport> {
    if (!NAME.test(cp.ref)) throw hostError('VMTC_HOST_BAD_PARAMS', { field: 'checkpoint.ref' });
    const found = await this.lvsMaybe(vg, cp.ref);
    if (!found) throw hostError('VMTC_HOST_DISK_CHECKPOINT_MISSING', { checkpoint: cp.id, lv: `${vg}/${cp.ref}` });
    if (found.origin !== lv) throw hostError('VMTC_HOST_DISK_CHECKPOINT_MISSING', { checkpoint: cp.id, lv: `${vg}/${cp.ref}`, reason: `a snapshot of ${found.origin || 'nothing'}, not of ${lv}` });
    return found;
  }

  /** thin_delta between two checkpoints (or a checkpoint and the live origin), read from a
   *  metadata snapshot that is always released again. */
  private async delta(vg: string, lv: string, from: Checkpoint, to?: Checkpoint): Promise<ChangedBlocks> {
    const left = await this.checkpointLv(vg, lv, from);
    const right = to ? await this.checkpointLv(vg, lv, to) : (await this.lvs(vg, [lv]))[0]!;
    if (left.thinId === null || right.thinId === null) throw hostError('VMTC_HOST_DISK_TOOL_FAILED', { reason: 'lvs gave no thin_id', lvs: [left.name, right.name] });
    const tpool = `/dev/mapper/${dmName(vg, left.pool)}-tpool`;
    const tmeta = `/dev/mapper/${dmName(vg, `${left.pool}_tmeta`)}`;
    await runOk(this.run, ['dmsetup', 'message', tpool, '0', 'reserve_metadata_snap'], {}, this.timeoutMs);
    let xml: string;
    try {
      xml = (await runOk(this.run, ['thin_delta', '-m', '--snap1', String(left.thinId), '--snap2', String(right.thinId), tmeta], {}, this.timeoutMs)).stdout;
    } finally {
      await runOk(this.run, ['dmsetup', 'message', tpool, '0', 'release_metadata_snap'], {}, this.timeoutMs);
    }
    const d = parseThinDelta(xml);
    const ranges = changedRanges(d);
    return { bytes: ranges.reduce((n, r) => n + r.length, 0), granularity: d.dataBlockSectors * 512, ranges };
  }

  /** Read `ranges` of vg/name into a delta file; chunks of zeros become `zero` extents (nothing
   *  crosses for them). Returns the bytes of disk data written. */
  private async writeDelta(file: string, header: DeltaHeader, vg: string, name: string, ranges: { offset: number; length: number; zeroed?: boolean }[]): Promise<number> {
    const device = `/dev/${vg}/${name}`;
    // First pass decides the extents (the header precedes the data), second writes the data.
    const extents: DeltaHeader['extents'] = [];
    for (const r of ranges) {
      if (r.zeroed) {
        extents.push({ offset: r.offset, length: r.length, type: 'zero' });
        continue;
      }
      for (let off = 0; off < r.length; off += this.ioBytes) {
        const n = Math.min(this.ioBytes, r.length - off);
        const buf = await this.readExact(device, r.offset + off, n);
        // Zeros are found per 64 KiB (the default thin-pool block): what a thin LV leaves unmapped.
        for (let g = 0; g < n; g += ZERO_GRAIN) {
          const len = Math.min(ZERO_GRAIN, n - g);
          const type = isZero(buf.subarray(g, g + len)) ? 'zero' : 'data';
          const at = r.offset + off + g;
          const last = extents[extents.length - 1];
          if (last && last.type === type && last.offset + last.length === at) last.length += len;
          else extents.push({ offset: at, length: len, type });
        }
      }
    }
    // A full copy into a new thin LV needs no zero extents: it reads zeros already.
    const kept = header.kind === 'full' ? extents.filter((e) => e.type === 'data') : extents;
    const w = await DeltaWriter.create(file, { ...header, extents: kept });
    let bytes = 0;
    try {
      for (const e of kept) {
        if (e.type !== 'data') continue;
        for (let off = 0; off < e.length; off += this.ioBytes) {
          const buf = await this.readExact(device, e.offset + off, Math.min(this.ioBytes, e.length - off));
          await w.put(buf);
          bytes += buf.length;
        }
      }
      await w.finish();
    } catch (e) {
      await w.abort();
      throw e;
    }
    return bytes;
  }

  private async readExact(device: string, offset: number, length: number): Promise<Buffer> {
    const buf = await this.io.read(device, offset, length).catch((e: unknown) => {
      throw hostError((e as NodeJS.ErrnoException).code === 'ENOENT' ? 'VMTC_HOST_DISK_CHECKPOINT_MISSING' : 'VMTC_HOST_DISK_UNREADABLE', { device, offset, reason: String(e) }, { cause: e });
    });
    if (buf.length !== length) throw hostError('VMTC_HOST_DISK_UNREADABLE', { device, offset, wanted: length, got: buf.length });
    return buf;
  }

  private reader(device: string) {
    return (offset: number, length: number) => this.readExact(device, offset, length);
  }

  private async lvsMaybe(vg: string, name: string): Promise<LvReport | null> {
    try {
      return (await this.lvs(vg, [name]))[0]!;
    } catch (e) {
      if ((e as { code?: string }).code === 'VMTC_HOST_DISK_NOT_FOUND') return null;
      throw e;
    }
  }

  private async lvs(vg: string, names: string[]): Promise<LvReport[]> {
    checkNames(vg, ...names);
    const argv = ['lvs', '--reportformat', 'json', '--units', 'b', '--nosuffix', '-o', LVS_FIELDS.join(','), ...names.map((n) => `${vg}/${n}`)];
    const r = await this.run(argv, { timeoutMs: this.timeoutMs });
    const missing = r.stderr.match(LVM_MESSAGES.notFound);
    if (r.code !== 0 && missing) throw hostError('VMTC_HOST_DISK_NOT_FOUND', { lv: missing[1] });
    if (r.code !== 0) throw hostError('VMTC_HOST_DISK_TOOL_FAILED', { argv, exitCode: r.code, stderr: r.stderr.trim().slice(0, 1000) });
    const out = parseLvsJson(r.stdout);
    for (const n of names) if (!out.some((l) => l.name === n && l.vg === vg)) throw hostError('VMTC_HOST_DISK_NOT_FOUND', { lv: `${vg}/${n}` });
    return names.map((n) => out.find((l) => l.name === n)!);
  }

  /** An lvm command whose refusals have codes of their own: pool full, name taken, LV missing. */
  private async lvm(argv: string[], pool: string): Promise<void> {
    const r = await this.run(argv, { timeoutMs: this.timeoutMs });
    if (r.code === 0) return;
    const stderr = r.stderr.trim().slice(0, 1000);
    if (LVM_MESSAGES.poolThreshold.test(r.stderr)) throw hostError('VMTC_HOST_DISK_POOL_FULL', { pool, argv, stderr });
    if (LVM_MESSAGES.exists.test(r.stderr)) throw hostError('VMTC_HOST_DISK_CHECKPOINT_EXISTS', { argv, stderr });
    const missing = r.stderr.match(LVM_MESSAGES.notFound);
    if (missing) throw hostError('VMTC_HOST_DISK_NOT_FOUND', { lv: missing[1], argv, stderr });
    throw hostError('VMTC_HOST_DISK_TOOL_FAILED', { argv, exitCode: r.code, stderr });
  }
}

function thinDisk(disk: SourceDisk): { vg: string; lv: string } {
  if (disk.kind !== 'lvm-thin') throw hostError('VMTC_HOST_BAD_PARAMS', { field: 'disk.kind', reason: 'the LVM thin backend takes { kind: lvm-thin, vg, lv }' });
  checkNames(disk.vg, disk.lv);
  return disk;
}

function checkNames(...names: string[]): void {
  for (const n of names) if (typeof n !== 'string' || !NAME.test(n)) throw hostError('VMTC_HOST_BAD_PARAMS', { field: 'name', value: String(n).slice(0, 64), reason: 'an LVM name: letters, digits, + _ . -' });
}

function heldCheckpoint(lv: LvReport): { id: string; seq: number } | null {
  for (const t of lv.tags) {
    const m = t.match(TAG);
    if (m) return { seq: Number(m[1]), id: m[2]! };
  }
  return null;
}
