// LvmDouble (test/helpers/lvm-double.ts), the test double of LVM the LVM backend's tests run
// against, keeps the real commands' semantics: checked here directly so that the backend's
// tests rest on something that behaves like LVM.
import { describe, expect, it } from 'vitest';
import { LvmDouble, parseLvmSize } from '../helpers/lvm-double.ts';

const MiB = 1024 * 1024;

describe('LvmDouble (a test double of LVM thin provisioning)', () => {
  it('sizes: a bare number is MiB, suffixes as lvm2, rounded up to the 4 MiB extent', async () => {
    expect(parseLvmSize('10')).toBe(10 * MiB);
    expect(parseLvmSize('1g')).toBe(1024 * MiB);
    expect(parseLvmSize('4096b')).toBe(4096);
    expect(parseLvmSize('x')).toBeNull();
    const d = new LvmDouble();
    d.addThinPool('vg', 'pool', { dataBytes: 64 * MiB });
    const r = await d.runner(['lvcreate', '-V', '5m', '-T', 'vg/pool', '-n', 'a']);
    expect(r).toMatchObject({ code: 0, stderr: '  Rounding up size to full physical extent 8.00 MiB\n' });
    const lvs = JSON.parse((await d.runner(['lvs', '--reportformat', 'json', '--units', 'b', '--nosuffix', '-o', 'lv_name,lv_size,origin,thin_id', 'vg/a'])).stdout);
    expect(lvs).toEqual({ report: [{ lv: [{ lv_name: 'a', lv_size: String(8 * MiB), origin: '', thin_id: '1' }] }] });
  });

  it('snapshots share blocks until written (copy-on-write), carry their origin, and are skipped at activation without -kn', async () => {
    const d = new LvmDouble();
    d.addThinPool('vg', 'pool', { dataBytes: 64 * MiB });
    d.addThinLv('vg', 'pool', 'o', 8 * MiB);
    await d.io.write('/dev/vg/o', 0, Buffer.alloc(MiB, 1));
    expect(d.usedBlocks('vg', 'pool')).toBe(16);
    expect((await d.runner(['lvcreate', '-s', '-n', 's1', 'vg/o'])).code).toBe(0);
    await expect(d.io.read('/dev/vg/s1', 0, 10)).rejects.toMatchObject({ code: 'ENOENT' });
    expect((await d.runner(['lvcreate', '-s', '-kn', '-n', 's2', 'vg/o'])).code).toBe(0);
    expect(d.usedBlocks('vg', 'pool')).toBe(16);
    await d.io.write('/dev/vg/o', 0, Buffer.alloc(4096, 2));
    expect(d.usedBlocks('vg', 'pool')).toBe(17);
    expect((await d.io.read('/dev/vg/s2', 0, 1))[0]).toBe(1);
    expect((await d.io.read('/dev/vg/o', 0, 1))[0]).toBe(2);
    const row = JSON.parse((await d.runner(['lvs', '--reportformat', 'json', '--units', 'b', '--nosuffix', '-o', 'lv_name,origin,lv_attr', 'vg/s1'])).stdout).report[0].lv[0];
    expect(row).toEqual({ lv_name: 's1', origin: 'o', lv_attr: 'Vwi---tz-k' });
    expect((await d.runner(['lvcreate', '-s', '-L', '1g', '-n', 's3', 'vg/o'])).stderr).toMatch(/classic/);
  });

  it('LVM\'s errors: a missing LV, a name taken, a full pool', async () => {
    const d = new LvmDouble();
    d.addThinPool('vg', 'pool', { dataBytes: 4 * MiB });
    d.addThinLv('vg', 'pool', 'o', 8 * MiB);
    expect(await d.runner(['lvremove', '-f', 'vg/nope'])).toEqual({ code: 5, stdout: '', stderr: '  Failed to find logical volume "vg/nope"\n' });
    expect((await d.runner(['lvs', '--reportformat', 'json', '--units', 'b', '--nosuffix', 'vg/nope'])).code).toBe(5);
    expect((await d.runner(['lvcreate', '-s', '-kn', '-n', 'o', 'vg/o'])).stderr).toBe('  Logical Volume "o" already exists in volume group "vg"\n');
    await d.io.write('/dev/vg/o', 0, Buffer.alloc(4 * MiB, 1));
    await expect(d.io.write('/dev/vg/o', 4 * MiB, Buffer.alloc(1, 1))).rejects.toMatchObject({ code: 'ENOSPC' });
    expect(await d.runner(['lvcreate', '-s', '-kn', '-n', 's', 'vg/o'])).toEqual({ code: 5, stdout: '', stderr: '  Cannot create new thin volume, free space in thin pool vg/pool reached threshold.\n' });
    // Metadata: the reserve (a quarter of a small metadata volume) also refuses.
    const m = new LvmDouble();
    m.addThinPool('vg', 'pool', { dataBytes: 64 * MiB, metaBytes: 10 * 1024 });
    m.addThinLv('vg', 'pool', 'o', 8 * MiB);
    expect((await m.runner(['lvcreate', '-s', '-kn', '-n', 's', 'vg/o'])).stderr).toMatch(/reached threshold/);
  });

  it('thin_delta reads the metadata snapshot: mappings as they were at reserve, and refuses without one', async () => {
    const d = new LvmDouble();
    d.addThinPool('vg', 'pool', { dataBytes: 64 * MiB });
    d.addThinLv('vg', 'pool', 'o', 8 * MiB);
    await d.runner(['lvcreate', '-s', '-kn', '-n', 's', 'vg/o']);
    const argv = ['thin_delta', '-m', '--snap1', '2', '--snap2', '1', '/dev/mapper/vg-pool_tmeta'];
    expect(await d.runner(argv)).toMatchObject({ code: 1, stderr: 'no current metadata snap\n' });
    await d.io.write('/dev/vg/o', 65536, Buffer.alloc(65536, 3));
    expect((await d.runner(['dmsetup', 'message', '/dev/mapper/vg-pool-tpool', '0', 'reserve_metadata_snap'])).code).toBe(0);
    expect((await d.runner(['dmsetup', 'message', '/dev/mapper/vg-pool-tpool', '0', 'reserve_metadata_snap'])).stderr).toMatch(/Device or resource busy/);
    await d.io.write('/dev/vg/o', 0, Buffer.alloc(65536, 3)); // after the reserve: not in this delta
    const out = (await d.runner(argv)).stdout;
    expect(out).toContain('<right_only begin="1" length="1"/>');
    expect(out).not.toContain('begin="0"');
    expect((await d.runner(['dmsetup', 'message', '/dev/mapper/vg-pool-tpool', '0', 'release_metadata_snap'])).code).toBe(0);
    expect((await d.runner(['dmsetup', 'message', '/dev/mapper/vg-pool-tpool', '0', 'release_metadata_snap'])).stderr).toMatch(/Invalid argument/);
  });
});
