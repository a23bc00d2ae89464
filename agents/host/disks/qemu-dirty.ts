// Which byte ranges of a source disk were written since a checkpoint (docs/disks.md#following,
// #incremental-digests): over NBD from the QEMU (or storage daemon) that holds the disk, or, for
// a disk no process holds any more, from the persistent bitmaps stored in its qcow2 file.
import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Clock } from '../../../src/common/clock.ts';
import type { Logger } from '../../../src/common/log.ts';
import { hostError } from '../errors.ts';
import type { Checkpoint, SourceDisk } from './backend.ts';
import type { ImageReader } from './image-reader.ts';
import { connectNbd, type NbdClient } from './nbd-client.ts';
import { openQcow2 } from './qcow2-file.ts';

/** What the QEMU backend needs of a QMP connection (the QEMU driver's, or one of its own). */
export interface QmpPort {
  execute<T = unknown>(command: string, args?: Record<string, unknown>, opts?: { timeoutMs?: number }): Promise<T>;
}

export interface ByteRange { offset: number; length: number }
export interface DirtyReader { ranges: ByteRange[]; reader: ImageReader }

/** What dirtyReader needs of the QEMU backend (qemu-cow.ts). */
export interface DirtyDeps {
  withNode<T>(disk: SourceDisk, fn: (qmp: QmpPort, node: string, size: number) => Promise<T>): Promise<T>;
  bitmaps(qmp: QmpPort, node: string): Promise<{ name: string; granularity: number; recording: boolean }[]>;
  tmp: string;
  clock: Clock;
  logger: Logger;
}

/** What dirtyReader's ranges are, read from the image file itself (qcow2-file.ts: no QMP, no
 *  NBD): checkpoint `cp`'s bitmap and the later ones `also` picks, as QEMU stored them into the
 *  file when it gave the disk up. Only for a disk no process holds (migratedAway): a bitmap
 *  still marked in use (held, or left by a QEMU that crashed) is refused there. */
export async function storedDirtyRanges(disk: SourceDisk, cp: Checkpoint, also: (bitmap: string) => boolean = () => false): Promise<ByteRange[]> {
  if (disk.kind !== 'qcow2') throw hostError('VMTC_HOST_BAD_PARAMS', { field: 'disk.kind', reason: 'qcow2' });
  const img = await openQcow2(disk.image);
  try {
    if (!img.bitmaps.some((b) => b.name === cp.ref)) throw hostError('VMTC_HOST_DISK_CHECKPOINT_MISSING', { checkpoint: cp.id, bitmap: cp.ref, image: disk.image });
    return await img.dirtyRanges(img.bitmaps.map((b) => b.name).filter((n) => n === cp.ref || also(n)));
  } finally {
    await img.close();
  }
}

/** The byte ranges checkpoint `cp`'s bitmap marks, and a reader of the disk's guest-visible
 *  bytes as they are now, over one NBD connection in this process (nbd-client.ts: no `qemu-img`
 *  spawn, no flush: the export reads through QEMU's own block layer). QEMU offers a bitmap's
 *  contents only over NBD (the `qemu:dirty-bitmap:NAME` metadata context of an export): the
 *  disk is exported read-only with the bitmap on a unix socket of the QEMU (or storage daemon)
 *  that holds it. The bitmap must no longer record (QEMU refuses to export a recording one
 *  read-only): it is, after the delta that took the next checkpoint. With `also`, the union
 *  with the disk's other bitmaps it picks (a followed live move's later checkpoints, the newest
 *  still recording) is exported instead, merged into a disabled scratch bitmap. The reader's
 *  close ends the connection, the export, the NBD server and the scratch bitmap. Take it with
 *  the VM paused (the live pause) or off. */
export async function dirtyReader(deps: DirtyDeps, disk: SourceDisk, cp: Checkpoint, also: (bitmap: string) => boolean = () => false): Promise<DirtyReader> {
  // The node stays held (withNode) until the reader closes: the caller reads between.
  let release!: () => void;
  const held = new Promise<void>((r) => { release = r; });
  let handOut!: (v: DirtyReader) => void;
  let fail!: (e: unknown) => void;
  const out = new Promise<DirtyReader>((res, rej) => { handOut = res; fail = rej; });
  const job = deps.withNode(disk, async (qmp, node, size) => {
    const have = await deps.bitmaps(qmp, node);
    const b = have.find((x) => x.name === cp.ref);
    if (!b) throw hostError('VMTC_HOST_DISK_CHECKPOINT_MISSING', { checkpoint: cp.id, bitmap: cp.ref });
    const later = have.map((x) => x.name).filter((n) => n !== cp.ref && also(n));
    if (b.recording && later.length === 0) throw hostError('VMTC_HOST_BAD_PARAMS', { field: 'checkpoint', reason: 'its bitmap still records: take the next checkpoint first', checkpoint: cp.id });
    const dir = await mkdtemp(join(deps.tmp, 'vmtc-nbd-'));
    const sock = join(dir, 's');
    let server = false;
    let exported = false;
    let client: NbdClient | undefined;
    let bitmap = cp.ref;
    const merged = later.length ? 'vmtc-dirty.union' : undefined;
    try {
      if (merged) {
        await qmp.execute('block-dirty-bitmap-remove', { node, name: merged }).catch(() => undefined);
        await qmp.execute('transaction', {
          actions: [
            { type: 'block-dirty-bitmap-add', data: { node, name: merged, granularity: b.granularity, persistent: false, disabled: true } },
            { type: 'block-dirty-bitmap-merge', data: { node, target: merged, bitmaps: [cp.ref, ...later] } },
          ],
        });
        bitmap = merged;
      }
      await qmp.execute('nbd-server-start', { addr: { type: 'unix', data: { path: sock } } });
      server = true;
      await qmp.execute('block-export-add', { type: 'nbd', id: 'vmtc-dirty', 'node-name': node, name: 'vmtc-dirty', writable: false, bitmaps: [bitmap] });
      exported = true;
      const context = `qemu:dirty-bitmap:${bitmap}`;
      client = await connectNbd({ path: sock }, 'vmtc-dirty', { clock: deps.clock, metaContexts: [context], timeoutMs: 5 * 60_000 });
      if (client.size !== size) throw hostError('VMTC_HOST_DISK_TOOL_FAILED', { tool: 'nbd', reason: `the export is ${client.size} B, the node ${size} B` });
      // Flag 1: dirty (written since the checkpoint).
      const ranges = (await client.blockStatus(context, 0, size)).filter((e) => (e.flags & 1) !== 0).map((e) => ({ offset: e.offset, length: e.length }));
      const c = client;
      handOut({ ranges, reader: { size, read: (offset, length) => c.read(offset, Math.min(length, size - offset)), close: async () => { release(); await job.catch(() => undefined); } } });
      await held;
    } finally {
      await client?.close().catch(() => undefined);
      if (exported) await qmp.execute('block-export-del', { id: 'vmtc-dirty', mode: 'hard' }).catch((e: unknown) => deps.logger.warn({ err: String(e) }, 'block-export-del refused'));
      if (server) await qmp.execute('nbd-server-stop').catch((e: unknown) => deps.logger.warn({ err: String(e) }, 'nbd-server-stop refused'));
      if (merged) await qmp.execute('block-dirty-bitmap-remove', { node, name: merged }).catch((e: unknown) => deps.logger.warn({ err: String(e) }, 'the scratch bitmap could not be removed'));
      await rm(dir, { recursive: true, force: true });
    }
  });
  job.catch(fail);
  return out;
}
