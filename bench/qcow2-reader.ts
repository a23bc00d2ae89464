// What opening a qcow2 image and reading a few chunks of it costs (the check a live move's
// destination waits for: docs/disks.md#reading-images-in-process): the in-process reader
// (agents/host/disks/qcow2-file.ts: header and L1 at open, L2 tables on demand) against the
// qemu-img path it replaced (image-reader.ts openImageReaderByMap: spawns `qemu-img info
// --backing-chain` and `qemu-img map`), and the in-process reader's dirty ranges of a persistent
// bitmap. Run by hand, not in CI (needs qemu-img and qemu-io):
//   node --import tsx bench/qcow2-reader.ts [--disk-mb 1024] [--chunks 7] [--runs 10]
// The image is a qcow2 (64 KiB clusters) of --disk-mb written whole (`write -P 7 0 SIZE`), then
// --chunks separate 1 MiB chunks written again after a bitmap b0 was added (then disabled).
import { mkdtemp, rm } from 'node:fs/promises';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { openImageReader, openImageReaderByMap, type ImageReader } from '../agents/host/disks/image-reader.ts';
import { systemRunner } from '../agents/host/disks/io.ts';
import { openQcow2 } from '../agents/host/disks/qcow2-file.ts';
import { run } from '../src/common/proc.ts';

const { values } = parseArgs({ options: { 'disk-mb': { type: 'string', default: '1024' }, chunks: { type: 'string', default: '7' }, runs: { type: 'string', default: '10' } } });
const MiB = 1024 * 1024;
const diskMb = Number(values['disk-mb']);
const chunks = Number(values.chunks);
const runs = Number(values.runs);

const dir = await mkdtemp(join(tmpdir(), 'vmtc-bench-qcow2-'));
const image = join(dir, 'd.qcow2');
const stride = Math.floor(diskMb / chunks);
const offsets = Array.from({ length: chunks }, (_, i) => (i * stride + 3) * MiB);

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

/** Open, read the chunks (as the digest does, several at once), close: the chunks' bytes. */
const openAndRead = (open: () => Promise<ImageReader>) => async (): Promise<Buffer[]> => {
  const r = await open();
  try {
    return await Promise.all(offsets.map((o) => r.read(o, MiB)));
  } finally {
    await r.close();
  }
};

const checkChunks = (bufs: Buffer[]) => {
  bufs.forEach((b, i) => {
    if (b.length !== MiB || !b.every((x) => x === i + 1)) throw new Error(`chunk ${i} does not read as written`);
  });
};

try {
  await run(['qemu-img', 'create', '-q', '-f', 'qcow2', image, `${diskMb}M`]);
  await run(['qemu-io', '-c', `write -P 7 0 ${diskMb}M`, image], { timeoutMs: 10 * 60_000 });
  await run(['qemu-img', 'bitmap', '--add', image, 'b0']);
  await run(['qemu-io', ...offsets.flatMap((o, i) => ['-c', `write -P ${i + 1} ${o} 1M`]), image]);
  await run(['qemu-img', 'bitmap', '--disable', image, 'b0']);
  const load = loadavg();
  const native = await time(openAndRead(() => openImageReader(systemRunner, image, 'qcow2')), checkChunks);
  const qemuImg = await time(openAndRead(() => openImageReaderByMap(systemRunner, image, 'qcow2')), checkChunks);
  const dirty = await time(async () => {
    const q = await openQcow2(image);
    try {
      return await q.dirtyRanges(['b0']);
    } finally {
      await q.close();
    }
  }, (r) => {
    if (JSON.stringify(r) !== JSON.stringify(offsets.map((offset) => ({ offset, length: MiB })))) throw new Error(`dirty ranges ${JSON.stringify(r)}`);
  });
  console.log(JSON.stringify({
    machine: { cpus: cpus().length, model: cpus()[0]?.model, node: process.version, loadavgBefore: load.map((x) => +x.toFixed(2)) },
    diskMb, chunksMiB: chunks, runs,
    inProcessOpenRead: stats(native),
    qemuImgOpenRead: stats(qemuImg),
    inProcessOpenDirtyRanges: stats(dirty),
  }, null, 2));
} finally {
  await rm(dir, { recursive: true, force: true });
}
