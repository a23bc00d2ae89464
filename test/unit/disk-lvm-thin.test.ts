// The LVM thin backend (agents/host/disks/lvm-thin.ts) against LvmDouble, the named test double
// of LVM (test/helpers/lvm-double.ts): these machines have no device-mapper. Two doubles are the
// two hosts; the delta file in a temp dir is what would cross between them.
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { SourceDisk } from '../../agents/host/disks/backend.ts';
import { assertSameDisk, compareDigests } from '../../agents/host/disks/digest.ts';
import { LvmThinBackend, type LvmDestination } from '../../agents/host/disks/lvm-thin.ts';
import { ManualClock } from '../../src/common/clock.ts';
import { LvmDouble } from '../helpers/lvm-double.ts';

const KiB = 1024;
const MiB = 1024 * KiB;
const BLOCK = 64 * KiB;

describe('LVM thin backend (against LvmDouble)', () => {
  let tmp: string;
  let src: LvmDouble;
  let dst: LvmDouble;
  let a: LvmThinBackend;
  let b: LvmThinBackend;
  let dest: LvmDestination;
  const disk: SourceDisk = { kind: 'lvm-thin', vg: 'vg0', lv: 'vm1-disk0' };
  const fill = (byte: number, n: number) => Buffer.alloc(n, byte);

  beforeEach(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'vmtc-lvm-'));
    src = new LvmDouble();
    src.addThinPool('vg0', 'pool0', { dataBytes: 64 * MiB });
    src.addThinLv('vg0', 'pool0', 'vm1-disk0', 16 * MiB);
    dst = new LvmDouble();
    dst.addThinPool('vg1', 'pool1', { dataBytes: 64 * MiB });
    const clock = new ManualClock();
    a = new LvmThinBackend({ runner: src.runner, io: src.io, clock, ioBytes: 1 * MiB });
    b = new LvmThinBackend({ runner: dst.runner, io: dst.io, clock, ioBytes: 1 * MiB });
    dest = { vg: 'vg1', pool: 'pool1', lv: 'vm1-disk0-replica', file: join(tmp, 'delta.bin') };
    // The guest's data: 2 MiB of 0x5a at 1 MiB, 64 KiB of 0x11 at 10 MiB.
    await src.io.write('/dev/vg0/vm1-disk0', 1 * MiB, fill(0x5a, 2 * MiB));
    await src.io.write('/dev/vg0/vm1-disk0', 10 * MiB, fill(0x11, BLOCK));
  });

  afterEach(async () => {
    await rm(tmp, { recursive: true, force: true });
  });

  it('removeAllCheckpoints drops every checkpoint snapshot of the LV (after a committed move), and only those', async () => {
    const full = await a.seed(disk, 'c0', dest);
    await b.applyDelta(dest, full);
    await a.sendDelta(disk, full.checkpoint, 'c1', dest);
    expect(src.lvs.has('vg0/vm1-disk0.vmtc.c0') && src.lvs.has('vg0/vm1-disk0.vmtc.c1')).toBe(true);
    expect((await a.removeAllCheckpoints(disk)).sort()).toEqual(['vm1-disk0.vmtc.c0', 'vm1-disk0.vmtc.c1']);
    expect([...src.lvs.keys()].filter((k) => k.includes('.vmtc.'))).toEqual([]);
    expect(src.lvs.has('vg0/vm1-disk0')).toBe(true);
    expect(await a.removeAllCheckpoints(disk)).toEqual([]);
  });

  it('seeds a full copy, then sends only the blocks written since: the destination equals the source at each checkpoint', async () => {
    const full = await a.seed(disk, 'c0', dest);
    expect(full).toMatchObject({ kind: 'full', checkpoint: { id: 'c0', seq: 0, ref: 'vm1-disk0.vmtc.c0' }, diskBytes: 16 * MiB });
    // Only non-zero data crosses: 2 MiB + 64 KiB, not the 16 MiB disk.
    expect(full.bytes).toBe(2 * MiB + BLOCK);
    // The snapshot was taken with -kn (its device exists), as a thin snapshot of the origin.
    expect(src.commands).toContainEqual(['lvcreate', '-s', '-kn', '-n', 'vm1-disk0.vmtc.c0', 'vg0/vm1-disk0']);
    await b.applyDelta(dest, full);
    expect(await b.destinationCheckpoint(dest)).toEqual({ id: 'c0', seq: 0 });
    // The destination stays thin: 33 data blocks, as many as the source LV maps.
    expect(dst.usedBlocks('vg1', 'pool1')).toBe(33);
    assertSameDisk(await a.digestSource(disk, {}, full.checkpoint), await b.digestDestination(dest));

    // The guest writes 3 blocks (one over old data, two new) after the checkpoint.
    await src.io.write('/dev/vg0/vm1-disk0', 1 * MiB, fill(0x77, BLOCK));
    await src.io.write('/dev/vg0/vm1-disk0', 12 * MiB, fill(0x22, 2 * BLOCK));
    const pending = await a.changedSince(disk, full.checkpoint);
    expect(pending).toEqual({ bytes: 3 * BLOCK, granularity: BLOCK, ranges: [{ offset: 1 * MiB, length: BLOCK }, { offset: 12 * MiB, length: 2 * BLOCK }] });
    expect(src.metadataSnapHeld('vg0', 'pool0')).toBe(false);

    const d1 = await a.sendDelta(disk, full.checkpoint, 'c1', dest);
    expect(d1).toMatchObject({ kind: 'delta', from: { id: 'c0' }, checkpoint: { id: 'c1', seq: 1 }, bytes: 3 * BLOCK });
    await b.applyDelta(dest, d1);
    expect(await b.destinationCheckpoint(dest)).toEqual({ id: 'c1', seq: 1 });
    assertSameDisk(await a.digestSource(disk, {}, d1.checkpoint), await b.digestDestination(dest));
    // The old view is no longer needed.
    await a.removeCheckpoint(disk, full.checkpoint);
    expect(src.lvs.has('vg0/vm1-disk0.vmtc.c0')).toBe(false);
    await a.removeCheckpoint(disk, full.checkpoint); // idempotent
    // Nothing written since c1: an empty delta.
    expect((await a.changedSince(disk, d1.checkpoint)).bytes).toBe(0);
  });

  it('a destination that does not hold the delta\'s base, or a delta file altered in transit, is refused before anything is written', async () => {
    const full = await a.seed(disk, 'c0', dest);
    await b.applyDelta(dest, full);
    await src.io.write('/dev/vg0/vm1-disk0', 0, fill(0x01, BLOCK));
    const d1 = await a.sendDelta(disk, full.checkpoint, 'c1', dest);
    const good = await readFile(dest.file);
    // Altered: one data byte flipped.
    const bad = Buffer.from(good);
    bad[good.indexOf(10) + 100] ^= 0xff;
    await writeFile(dest.file, bad);
    const before = await b.digestDestination(dest);
    await expect(b.applyDelta(dest, d1)).rejects.toMatchObject({ code: 'VMTC_HOST_DISK_DELTA_REJECTED', details: { reason: 'checksum mismatch' } });
    await writeFile(dest.file, good.subarray(0, good.length - 10));
    await expect(b.applyDelta(dest, d1)).rejects.toMatchObject({ code: 'VMTC_HOST_DISK_DELTA_REJECTED' });
    expect(compareDigests(before, await b.digestDestination(dest)).equal).toBe(true);
    // Applied twice: the second finds the LV already at c1.
    await writeFile(dest.file, good);
    await b.applyDelta(dest, d1);
    await expect(b.applyDelta(dest, d1)).rejects.toMatchObject({ code: 'VMTC_HOST_DISK_DELTA_REJECTED' });
    // A delta that skips one: c2 from c1 is fine, c3 from c1 again is not.
    const d2 = await a.sendDelta(disk, d1.checkpoint, 'c2', dest);
    await b.applyDelta(dest, d2);
    const d3 = await a.sendDelta(disk, d1.checkpoint, 'c3', dest);
    await expect(b.applyDelta(dest, d3)).rejects.toMatchObject({ code: 'VMTC_HOST_DISK_DELTA_REJECTED' });
  });

  it('thin pool exhaustion: the snapshot is refused with LVM\'s message as VMTC_HOST_DISK_POOL_FULL; a destination pool too small is refused before any write', async () => {
    // Fill the source pool: 64 MiB of data blocks across a second LV.
    src.addThinLv('vg0', 'pool0', 'filler', 64 * MiB);
    await src.io.write('/dev/vg0/filler', 0, fill(0x33, 64 * MiB - (2 * MiB + BLOCK)));
    expect(src.usedBlocks('vg0', 'pool0') * BLOCK).toBe(64 * MiB);
    const lvsBefore = [...src.lvs.keys()];
    const e = await a.seed(disk, 'c0', dest).catch((x: unknown) => x);
    expect(e).toMatchObject({ code: 'VMTC_HOST_DISK_POOL_FULL', details: { pool: 'vg0/pool0', stderr: expect.stringContaining('Cannot create new thin volume, free space in thin pool vg0/pool0 reached threshold.') } });
    expect([...src.lvs.keys()]).toEqual(lvsBefore);
    // A write the guest makes now fails as a full pool does (ENOSPC).
    await expect(src.io.write('/dev/vg0/vm1-disk0', 8 * MiB, fill(1, 4096))).rejects.toMatchObject({ code: 'ENOSPC' });

    // Destination side: a pool of 1 MiB cannot take 2 MiB + 64 KiB.
    const small = new LvmDouble();
    small.addThinPool('vg1', 'pool1', { dataBytes: 1 * MiB });
    const c = new LvmThinBackend({ runner: small.runner, io: small.io });
    src.removeLv('vg0/filler');
    const full = await a.seed(disk, 'c0', dest);
    await expect(c.applyDelta(dest, full)).rejects.toMatchObject({ code: 'VMTC_HOST_DISK_POOL_FULL', details: { neededBytes: 2 * MiB + BLOCK } });
    expect(small.lvs.size).toBe(0);
    expect(small.usedBlocks('vg1', 'pool1')).toBe(0);
  });

  it('a checkpoint removed under the backend: VMTC_HOST_DISK_CHECKPOINT_MISSING, the new view is dropped, the metadata snapshot released', async () => {
    const full = await a.seed(disk, 'c0', dest);
    src.removeLv('vg0/vm1-disk0.vmtc.c0');
    await expect(a.changedSince(disk, full.checkpoint)).rejects.toMatchObject({ code: 'VMTC_HOST_DISK_CHECKPOINT_MISSING', details: { checkpoint: 'c0' } });
    await expect(a.sendDelta(disk, full.checkpoint, 'c1', dest)).rejects.toMatchObject({ code: 'VMTC_HOST_DISK_CHECKPOINT_MISSING' });
    expect(src.lvs.has('vg0/vm1-disk0.vmtc.c1')).toBe(false);

    // Removed while the delta is being read: the read of the device fails, the backend cleans up.
    const c0 = await a.seed(disk, 'c0b', dest);
    await src.io.write('/dev/vg0/vm1-disk0', 0, fill(0x44, BLOCK));
    src.beforeCommand = (argv) => {
      if (argv[0] === 'dmsetup' && argv[4] === 'release_metadata_snap') {
        src.beforeCommand = null;
        src.removeLv('vg0/vm1-disk0.vmtc.c2');
      }
    };
    await expect(a.sendDelta(disk, c0.checkpoint, 'c2', dest)).rejects.toMatchObject({ code: 'VMTC_HOST_DISK_CHECKPOINT_MISSING', details: { device: '/dev/vg0/vm1-disk0.vmtc.c2' } });
    expect(src.metadataSnapHeld('vg0', 'pool0')).toBe(false);
    expect([...src.lvs.keys()].sort()).toEqual(['vg0/vm1-disk0', 'vg0/vm1-disk0.vmtc.c0b']);
    // A snapshot that is not of this disk is not a checkpoint of it.
    src.addThinLv('vg0', 'pool0', 'other', 16 * MiB);
    await expect(a.changedSince(disk, { ...c0.checkpoint, ref: 'other' })).rejects.toMatchObject({ code: 'VMTC_HOST_DISK_CHECKPOINT_MISSING' });
  });

  it('thin_delta failing still releases the metadata snapshot; a held one (another tool) is a tool failure, not a hang', async () => {
    const full = await a.seed(disk, 'c0', dest);
    src.failNext.set('thin_delta', { code: 1, stdout: '', stderr: 'bad checksum in superblock\n' });
    await expect(a.changedSince(disk, full.checkpoint)).rejects.toMatchObject({ code: 'VMTC_HOST_DISK_TOOL_FAILED', details: { stderr: 'bad checksum in superblock' } });
    expect(src.metadataSnapHeld('vg0', 'pool0')).toBe(false);
    await src.runner(['dmsetup', 'message', '/dev/mapper/vg0-pool0-tpool', '0', 'reserve_metadata_snap']);
    await expect(a.changedSince(disk, full.checkpoint)).rejects.toMatchObject({ code: 'VMTC_HOST_DISK_TOOL_FAILED', details: { stderr: expect.stringContaining('Device or resource busy') } });
  });

  it('a corrupt destination is found by comparing digests, and the chunk named', async () => {
    const full = await a.seed(disk, 'c0', dest);
    await b.applyDelta(dest, full);
    await dst.io.write('/dev/vg1/vm1-disk0-replica', 10 * MiB + 7, Buffer.from([0xee]));
    const s = await a.digestSource(disk, { chunkBytes: MiB }, full.checkpoint);
    const d = await b.digestDestination(dest, { chunkBytes: MiB });
    expect(compareDigests(s, d)).toEqual({ equal: false, differing: [10] });
    expect(() => assertSameDisk(s, d)).toThrow(expect.objectContaining({ code: 'VMTC_HOST_DISK_DIGEST_MISMATCH', details: expect.objectContaining({ differingChunks: [10] }) }));
  });

  it('bad input is a coded error: a classic LV, a bad checkpoint id, an unknown disk', async () => {
    await expect(a.seed(disk, 'no spaces', dest)).rejects.toMatchObject({ code: 'VMTC_HOST_BAD_PARAMS' });
    await expect(a.seed({ kind: 'lvm-thin', vg: 'vg0', lv: 'nope' }, 'c0', dest)).rejects.toMatchObject({ code: 'VMTC_HOST_DISK_NOT_FOUND', details: { lv: 'vg0/nope' } });
    await expect(a.seed({ kind: 'lvm-thin', vg: 'vg0', lv: 'x;rm -rf /' }, 'c0', dest)).rejects.toMatchObject({ code: 'VMTC_HOST_BAD_PARAMS' });
    await expect(a.seed({ kind: 'qcow2', image: '/x.qcow2' }, 'c0', dest)).rejects.toMatchObject({ code: 'VMTC_HOST_BAD_PARAMS' });
    await a.seed(disk, 'c0', dest);
    await expect(a.seed(disk, 'c0', dest)).rejects.toMatchObject({ code: 'VMTC_HOST_DISK_CHECKPOINT_EXISTS' });
    await expect(b.applyDelta({ ...dest, file: join(tmp, 'none') }, { kind: 'full', checkpoint: { id: 'c0', seq: 0, takenAt: 0, ref: 'x' }, diskBytes: 0, bytes: 0, ms: 0 })).rejects.toMatchObject({ code: 'VMTC_HOST_DISK_NOT_FOUND' });
  });
});
