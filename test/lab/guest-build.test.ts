// The guest image cache: two builders racing on an empty cache both get one intact image (built
// in temp dirs and renamed into place), keyed by a hash of the inputs.
import { cp, mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GUEST_MODULES, buildGuestImage, guestAppend, guestCacheRoot } from '../../lab/guest/build.ts';
import { exec } from './qemu-helpers.ts';

describe('guest image builder', () => {
  let tmp: string;

  beforeAll(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'vmtc-gb-'));
    // Seed the kernel part from the shared cache (built once by the first call) so this test
    // races the initramfs build without downloading the kernel package again.
    const shared = await buildGuestImage();
    const kernelDir = (await readdir(guestCacheRoot())).find((d) => d.startsWith('kernel-'))!;
    expect(shared.dir.startsWith(guestCacheRoot())).toBe(true);
    await cp(join(guestCacheRoot(), kernelDir), join(guestCacheRoot(tmp), kernelDir), { recursive: true });
  });

  afterAll(async () => {
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  it('two concurrent builds on an empty cache agree and leave one intact image', async () => {
    const [a, b] = await Promise.all([buildGuestImage({ cacheDir: tmp }), buildGuestImage({ cacheDir: tmp })]);
    expect(a).toEqual(b);
    expect(a.dir).toBe(join(tmp, 'guest', a.key));
    const entries = await readdir(join(tmp, 'guest'));
    expect(entries.filter((e) => e.startsWith('.tmp'))).toEqual([]);
    // Exactly the image and the kernel it was built from. (Not a sorted toEqual with a matcher
    // inside: where a matcher lands in a sort depends on the key's first character.)
    expect(entries).toHaveLength(2);
    expect(entries).toContain(a.key);
    expect(entries.find((e) => e !== a.key)).toMatch(/^kernel-/);
    const { stdout } = await exec('sh', ['-c', `gzip -dc '${a.initrd}' | cpio -t --quiet`]);
    const files = stdout.split('\n');
    expect(files).toContain('init');
    expect(files).toContain('bin/busybox');
    expect(files).toContain('bin/vmtc-probe');
    for (const m of GUEST_MODULES) expect(files).toContain(`lib/modules/${m}.ko`);
  });

  it('builds the kernel command line from options', () => {
    expect(guestAppend()).toBe('console=ttyS0 quiet panic=1 vmtc.ip=10.1.1.2/24 vmtc.gw=10.1.1.1 vmtc.tcp=7 vmtc.udp=7');
    expect(guestAppend({ ip: '10.1.1.3/24', heartbeatMs: 10, clockGapMs: 50, dirtyMb: 64 })).toContain('vmtc.ip=10.1.1.3/24 vmtc.gw=10.1.1.1 vmtc.tcp=7 vmtc.udp=7 vmtc.clock=50 vmtc.clockus=200 vmtc.hb=10 vmtc.dirty=64:100');
  });
});
