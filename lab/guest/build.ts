// The lab's guest image: a Debian kernel plus a busybox initramfs (docs/design.md#lab-facts, guest
// image), with the VM's address 10.1.1.2 and the turntable's probe programs. Built once and cached
// under a key that hashes every input, so a changed init script or probe rebuilds and nothing else
// does.
//
//   import { buildGuestImage, guestAppend } from './lab/guest/build.ts';
//   const g = await buildGuestImage();            // { kernel, initrd, dir, append, key }
//   spec.kernel = g.kernel; spec.initrd = g.initrd; spec.append = guestAppend({ heartbeatMs: 10 });
//
// CLI: `npx tsx lab/guest/build.ts` builds (or finds) the image and prints it as JSON.
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, readFile, readdir, rename, rm, writeFile, chmod } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { run as runCommand } from '../../src/common/proc.ts';
import { guestError } from './errors.ts';

const HERE = dirname(fileURLToPath(import.meta.url));
const REPO = resolve(HERE, '../..');

/** insmod order that works (docs/design.md#lab-facts, guest image): each module needs the ones
 * before it. */
export const GUEST_MODULES = [
  'virtio_ring', 'virtio', 'virtio_pci_modern_dev', 'virtio_pci_legacy_dev', 'virtio_pci',
  'failover', 'net_failover', 'virtio_net', 'virtio_blk',
] as const;

/** The line /init prints on the console once the network and probes are up. */
export const GUEST_READY_LINE = 'VMTC-GUEST-READY';

export interface GuestBuildOptions {
  /** Cache root; the image goes to `<cacheDir>/guest/`. Default: env VMTC_CACHE, else lab/cache. */
  cacheDir?: string;
  /** Debian kernel package, e.g. linux-image-6.1.0-56-amd64. Default: what linux-image-amd64 depends on. */
  kernelPackage?: string;
  /** Busybox binary to embed (must be static). Default /bin/busybox (package busybox-static). */
  busybox?: string;
}

export interface GuestImage {
  kernel: string;
  initrd: string;
  /** Directory holding the image (kernel, initrd, manifest.json). */
  dir: string;
  /** A default kernel command line: serial console, VM address 10.1.1.2/24 via 10.1.1.1. */
  append: string;
  /** Hash of the inputs. */
  key: string;
}

export interface GuestAppendOptions {
  /** eth0 address with prefix length. Default 10.1.1.2/24. */
  ip?: string;
  /** Default gateway. Default 10.1.1.1 (the paper's virtual gateway). */
  gateway?: string;
  /** TCP echo port (0 = off). Default 7. */
  tcpEchoPort?: number;
  /** UDP echo port (0 = off). Default 7. */
  udpEchoPort?: number;
  /** Internal clock probe: report gaps over this many ms (0/undefined = off). */
  clockGapMs?: number;
  /** Clock probe sampling period in µs. Default 200 (the paper's 0.2 ms). */
  clockPeriodUs?: number;
  /** Serial heartbeat period on ttyS1 in ms (0/undefined = off). Needs spec.serialPorts >= 1. */
  heartbeatMs?: number;
  /** Memory-dirtying load: MB rewritten every dirtyPeriodMs (0/undefined = off). */
  dirtyMb?: number;
  dirtyPeriodMs?: number;
  /** Populated guest: MiB of non-zero data written once at boot, before the ready line (0/undefined = idle). */
  fillMb?: number;
  /** Disk-writing load on /dev/vda (the first data disk): KiB/s of random data in 64 KiB blocks,
   *  cycling over `windowMb` MiB from `offsetMb` MiB, synced every second (undefined = off). */
  diskLoad?: { kibPerS: number; windowMb: number; offsetMb: number };
}

/** The kernel command line for the lab guest; /init reads the vmtc.* settings (see init.sh). */
export function guestAppend(o: GuestAppendOptions = {}): string {
  const parts = [
    'console=ttyS0', 'quiet', 'panic=1',
    `vmtc.ip=${o.ip ?? '10.1.1.2/24'}`, `vmtc.gw=${o.gateway ?? '10.1.1.1'}`,
    `vmtc.tcp=${o.tcpEchoPort ?? 7}`, `vmtc.udp=${o.udpEchoPort ?? 7}`,
  ];
  if (o.clockGapMs) parts.push(`vmtc.clock=${o.clockGapMs}`, `vmtc.clockus=${o.clockPeriodUs ?? 200}`);
  if (o.heartbeatMs) parts.push(`vmtc.hb=${o.heartbeatMs}`);
  if (o.dirtyMb) parts.push(`vmtc.dirty=${o.dirtyMb}:${o.dirtyPeriodMs ?? 100}`);
  if (o.fillMb) parts.push(`vmtc.fill=${Math.floor(o.fillMb)}`);
  if (o.diskLoad) parts.push(`vmtc.disk=${Math.floor(o.diskLoad.kibPerS)}:${Math.floor(o.diskLoad.windowMb)}:${Math.floor(o.diskLoad.offsetMb)}`);
  return parts.join(' ');
}

/** src/common/proc.ts run with the guest build's code and a build's patience (5 min). */
async function run(argv: string[], opts: { cwd?: string; timeoutMs?: number } = {}): Promise<string> {
  try {
    return (await runCommand(argv, { timeoutMs: opts.timeoutMs ?? 300_000, maxBuffer: 64 * 1024 * 1024, ...(opts.cwd ? { cwd: opts.cwd } : {}) })).stdout;
  } catch (e) {
    const stderr = String((e as { details?: { stderr?: unknown } }).details?.stderr ?? '');
    throw guestError('VMTC_GUEST_BUILD_FAILED', { argv, stderr }, { message: (e as Error).message, cause: e });
  }
}

export function guestCacheRoot(cacheDir?: string): string {
  return join(cacheDir ?? process.env.VMTC_CACHE ?? join(REPO, 'lab', 'cache'), 'guest');
}

async function resolveKernelPackage(): Promise<string> {
  let out = '';
  try {
    out = await run(['apt-cache', 'depends', 'linux-image-amd64']);
  } catch (e) {
    throw guestError('VMTC_GUEST_KERNEL_UNAVAILABLE', { step: 'apt-cache depends linux-image-amd64' }, { cause: e });
  }
  const m = /Depends:\s*(linux-image-\d[^\s]*-amd64)/.exec(out);
  if (!m) throw guestError('VMTC_GUEST_KERNEL_UNAVAILABLE', { step: 'apt-cache depends linux-image-amd64', output: out.slice(0, 500) });
  return m[1]!;
}

/** Move a finished temp dir into place. Another builder may have won the race: keep theirs. */
async function publish(tmp: string, final: string): Promise<void> {
  try {
    await rename(tmp, final);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw e;
    await rm(tmp, { recursive: true, force: true });
  }
}

/** Kernel + uncompressed virtio modules of one package, cached apart from the initramfs. */
async function kernelDir(root: string, pkg: string): Promise<string> {
  const final = join(root, `kernel-${pkg}`);
  if (existsSync(join(final, 'done'))) return final;
  const tmp = await mkdtemp(join(root, '.tmp-kernel-'));
  try {
    try {
      await run(['apt-get', 'download', pkg], { cwd: tmp });
    } catch {
      // The package lists may be stale or absent on a fresh machine.
      await run(['apt-get', 'update']).catch(() => undefined);
      try {
        await run(['apt-get', 'download', pkg], { cwd: tmp });
      } catch (e) {
        throw guestError('VMTC_GUEST_KERNEL_UNAVAILABLE', { package: pkg, step: 'apt-get download' }, { cause: e });
      }
    }
    const deb = (await readdir(tmp)).find((f) => f.endsWith('.deb'));
    if (!deb) throw guestError('VMTC_GUEST_KERNEL_UNAVAILABLE', { package: pkg, step: 'no .deb after apt-get download' });
    const x = join(tmp, 'x');
    await run(['dpkg', '-x', join(tmp, deb), x]);
    const out = join(tmp, 'out');
    await mkdir(join(out, 'modules'), { recursive: true });
    const vmlinuz = (await readdir(join(x, 'boot'))).find((f) => f.startsWith('vmlinuz-'));
    if (!vmlinuz) throw guestError('VMTC_GUEST_BUILD_FAILED', { package: pkg, step: 'no boot/vmlinuz-* in package' });
    await copyFile(join(x, 'boot', vmlinuz), join(out, 'vmlinuz'));
    const found = (await run(['find', join(x, 'lib', 'modules'), '-name', '*.ko'])).split('\n').filter(Boolean);
    for (const m of GUEST_MODULES) {
      const path = found.find((p) => p.endsWith(`/${m}.ko`));
      if (!path) throw guestError('VMTC_GUEST_BUILD_FAILED', { package: pkg, step: `module ${m}.ko not in package (compressed modules are not supported)` });
      await copyFile(path, join(out, 'modules', `${m}.ko`));
    }
    await extractVmlinux(join(out, 'vmlinuz'), join(out, 'vmlinux'));
    await writeFile(join(out, 'done'), `${pkg}\n${vmlinuz}\n`);
    await publish(out, final);
    return final;
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

/**
 * The bzImage's payload as an uncompressed ELF: QEMU boots it through the PVH entry point
 * (CONFIG_PVH=y in Debian's kernel), skipping the BIOS's Linux loader and the XZ decompression,
 * which under TCG takes seconds (measured: ready line after about 4.5 s instead of 11 s on a
 * loaded 2-core machine). Needs `xz` (xz-utils); without it the bzImage is used as it is.
 */
async function extractVmlinux(bzImage: string, out: string): Promise<boolean> {
  const data = await readFile(bzImage);
  const at = data.indexOf(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]));
  if (at < 0) return false;
  const xzFile = `${out}.xz`;
  await writeFile(xzFile, data.subarray(at));
  try {
    // --single-stream: the payload is followed by the bzImage's trailer, which is not xz.
    await run(['sh', '-c', `xz -dc --single-stream < '${xzFile}' > '${out}'`]);
    const head = (await readFile(out)).subarray(0, 4);
    if (!head.equals(Buffer.from([0x7f, 0x45, 0x4c, 0x46]))) throw new Error('not an ELF');
    return true;
  } catch {
    await rm(out, { force: true });
    return false;
  } finally {
    await rm(xzFile, { force: true });
  }
}

/** Build (or find in the cache) the guest image. Safe to call from several processes at once. */
export async function buildGuestImage(opts: GuestBuildOptions = {}): Promise<GuestImage> {
  const root = guestCacheRoot(opts.cacheDir);
  await mkdir(root, { recursive: true });
  const pkg = opts.kernelPackage ?? (await resolveKernelPackage());
  const busybox = opts.busybox ?? '/bin/busybox';
  const [initTemplate, probeSrc, busyboxBin] = await Promise.all([
    readFile(join(HERE, 'init.sh'), 'utf8'),
    readFile(join(HERE, 'vmtc-probe.c'), 'utf8'),
    readFile(busybox).catch((e: unknown) => { throw guestError('VMTC_GUEST_BUILD_FAILED', { step: `read ${busybox} (install busybox-static)` }, { cause: e }); }),
  ]);
  const init = initTemplate.replace('@MODULES@', GUEST_MODULES.join(' '));
  const key = createHash('sha256')
    .update(JSON.stringify({ v: 2, pkg, modules: GUEST_MODULES, init, probeSrc }))
    .update(busyboxBin)
    .digest('hex')
    .slice(0, 16);
  const dir = join(root, key);
  const image = (): GuestImage => ({ kernel: join(dir, existsSync(join(dir, 'vmlinux')) ? 'vmlinux' : 'vmlinuz'), initrd: join(dir, 'initrd.cpio.gz'), dir, append: guestAppend(), key });
  if (existsSync(join(dir, 'manifest.json'))) return image();

  const kdir = await kernelDir(root, pkg);
  const kernelName = existsSync(join(kdir, 'vmlinux')) ? 'vmlinux' : 'vmlinuz';
  const tmp = await mkdtemp(join(root, `.tmp-${key}-`));
  try {
    const tree = join(tmp, 'tree');
    for (const d of ['bin', 'lib/modules', 'dev', 'proc', 'sys', 'tmp', 'etc', 'root']) await mkdir(join(tree, d), { recursive: true });
    await copyFile(busybox, join(tree, 'bin', 'busybox'));
    await chmod(join(tree, 'bin', 'busybox'), 0o755);
    // gcc -static: the initramfs has no libc (lab/install-deps.sh installs gcc).
    await run(['gcc', '-O2', '-static', '-Wall', '-o', join(tree, 'bin', 'vmtc-probe'), join(HERE, 'vmtc-probe.c')]);
    await run(['strip', join(tree, 'bin', 'vmtc-probe')]).catch(() => undefined);
    for (const m of GUEST_MODULES) await copyFile(join(kdir, 'modules', `${m}.ko`), join(tree, 'lib', 'modules', `${m}.ko`));
    await writeFile(join(tree, 'init'), init, { mode: 0o755 });
    const out = join(tmp, 'out');
    await mkdir(out);
    // newc is the format the kernel unpacks; --owner keeps the archive free of the builder's uid.
    await run(['sh', '-c', `find . | sort | cpio -o -H newc --owner=0:0 --quiet | gzip -9 > '${join(out, 'initrd.cpio.gz')}'`], { cwd: tree });
    await copyFile(join(kdir, kernelName), join(out, kernelName));
    await writeFile(join(out, 'manifest.json'), JSON.stringify({ key, kernelPackage: pkg, kernel: kernelName, modules: GUEST_MODULES, builtAt: new Date().toISOString() }, null, 2) + '\n');
    await publish(out, dir);
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
  return image();
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  buildGuestImage().then(
    (g) => console.log(JSON.stringify(g, null, 2)),
    (e: unknown) => {
      console.error(e);
      process.exit(1);
    },
  );
}
