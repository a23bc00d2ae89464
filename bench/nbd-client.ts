// What the pause of a live move pays to learn and read a disk's dirty chunks: through the agent's
// in-process NBD client (agents/host/disks/nbd-client.ts: connect, block status of the dirty
// bitmap over the whole disk, read the dirty bytes) against spawning `qemu-img map` with the nbd
// driver's x-dirty-bitmap (qemu-cow.ts dirtyRanges), alone and followed by reading the chunks
// through the image's own map (image-reader.ts openImageReader: `qemu-img info` and `qemu-img map`
// of the qcow2 file). Run by hand, not in CI (needs qemu-img, qemu-io, qemu-storage-daemon):
//   node --import tsx bench/nbd-client.ts [--disk-mb 1024] [--chunks 7] [--runs 20]
// The image is a qcow2 of --disk-mb with --chunks separate 1 MiB chunks written after a bitmap
// was added, exported read-only with the (disabled) bitmap by qemu-storage-daemon on a unix socket.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { openImageReader, parseMap } from '../agents/host/disks/image-reader.ts';
import { systemRunner } from '../agents/host/disks/io.ts';
import { connectNbd } from '../agents/host/disks/nbd-client.ts';
import { sleep, systemClock } from '../src/common/clock.ts';
import { run } from '../src/common/proc.ts';

const { values } = parseArgs({ options: { 'disk-mb': { type: 'string', default: '1024' }, chunks: { type: 'string', default: '7' }, runs: { type: 'string', default: '20' } } });
const MiB = 1024 * 1024;
const diskMb = Number(values['disk-mb']);
const chunks = Number(values.chunks);
const runs = Number(values.runs);

const dir = await mkdtemp(join(tmpdir(), 'vmtc-bench-nbd-'));
const image = join(dir, 'd.qcow2');
const sock = join(dir, 'nbd.sock');
await run(['qemu-img', 'create', '-q', '-f', 'qcow2', image, `${diskMb}M`]);
await run(['qemu-img', 'bitmap', '--add', image, 'b0']);
const stride = Math.floor(diskMb / chunks);
await run(['qemu-io', ...Array.from({ length: chunks }, (_, i) => ['-c', `write -P ${i + 1} ${i * stride + 3}M 1M`]).flat(), image]);
await run(['qemu-img', 'bitmap', '--disable', image, 'b0']);
const qsd = spawn('qemu-storage-daemon', [
  '--blockdev', `driver=file,node-name=f,filename=${image},read-only=on`,
  '--blockdev', 'driver=qcow2,node-name=disk,file=f,read-only=on',
  '--nbd-server', `addr.type=unix,addr.path=${sock}`,
  '--export', JSON.stringify({ type: 'nbd', id: 'e', 'node-name': 'disk', name: 'x', writable: false, bitmaps: ['b0'] }),
], { stdio: 'ignore' });
const exited = new Promise((r) => qsd.once('exit', r));

/** The NBD path's steps, each timed (ms). */
const steps = { connect: [] as number[], blockStatus: [] as number[], read: [] as number[], close: [] as number[] };

async function nbdPath(): Promise<number> {
  let t = performance.now();
  const lap = (k: keyof typeof steps) => {
    const now = performance.now();
    steps[k].push(now - t);
    t = now;
  };
  const c = await connectNbd({ path: sock }, 'x', { clock: systemClock, metaContexts: ['qemu:dirty-bitmap:b0'] });
  lap('connect');
  const dirty = (await c.blockStatus('qemu:dirty-bitmap:b0', 0, c.size)).filter((e) => e.flags & 1);
  lap('blockStatus');
  const bufs = await Promise.all(dirty.map((d) => c.read(d.offset, d.length)));
  lap('read');
  await c.close();
  lap('close');
  return bufs.reduce((n, b) => n + b.length, 0);
}

async function mapSpawn(): Promise<{ offset: number; length: number }[]> {
  const opts = `driver=nbd,server.type=unix,server.path=${sock},export=x,x-dirty-bitmap=qemu:dirty-bitmap:b0`;
  return parseMap((await run(['qemu-img', 'map', '--output=json', '--image-opts', opts])).stdout).filter((e) => !e.data).map((e) => ({ offset: e.start, length: e.length }));
}

async function mapSpawnAndRead(): Promise<number> {
  const [dirty, reader] = await Promise.all([mapSpawn(), openImageReader(systemRunner, image, 'qcow2')]);
  // One read at a time: the reader opens its files on first use, and reads started together
  // would each open them.
  let n = 0;
  for (const d of dirty) n += (await reader.read(d.offset, d.length)).length;
  await reader.close();
  return n;
}

function stats(ms: number[]) {
  const s = [...ms].sort((a, b) => a - b);
  return { medianMs: +s[Math.floor(s.length / 2)]!.toFixed(2), minMs: +s[0]!.toFixed(2), maxMs: +s.at(-1)!.toFixed(2) };
}

async function time<T>(fn: () => Promise<T>, check: (v: T) => void): Promise<number[]> {
  check(await fn()); // warm-up, checked
  const out: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    await fn();
    out.push(performance.now() - t0);
  }
  return out;
}

try {
  for (let i = 0; i < 400 && !existsSync(sock); i++) await sleep(25);
  const bytes = chunks * MiB;
  const nbd = await time(nbdPath, (n) => { if (n !== bytes) throw new Error(`nbd read ${n} B, not ${bytes}`); });
  const map = await time(mapSpawn, (d) => { if (d.length !== chunks) throw new Error(`qemu-img map: ${d.length} dirty ranges`); });
  const both = await time(mapSpawnAndRead, (n) => { if (n !== bytes) throw new Error(`map+read ${n} B`); });
  console.log(JSON.stringify({
    machine: { cpus: cpus().length, model: cpus()[0]?.model, node: process.version }, diskMb, dirtyMiB: chunks, runs,
    nbdConnectStatusRead: stats(nbd),
    nbdSteps: Object.fromEntries(Object.entries(steps).map(([k, v]) => [k, stats(v.slice(1)).medianMs])), qemuImgMapDirty: stats(map), qemuImgMapDirtyThenImageReaderRead: stats(both),
  }, null, 2));
} finally {
  if (qsd.pid && qsd.exitCode === null) process.kill(qsd.pid, 'SIGTERM');
  await exited;
  await rm(dir, { recursive: true, force: true });
}
