// What a VM's QEMU pays to open its follow node over a long path (docs/disks.md#following): the
// follow relay (agents/host/disks/nbd-relay.ts startFollowRelay, the real process) in front of a
// store's export (qemu-storage-daemon, a 16 MiB qcow2) behind a forwarder that delays each
// direction by --delay-ms (test/helpers/nbd-gate.ts, the path). Timed per run: the relay's start
// until it is ready, then `qemu-io -c 'write ...'` through it (connect, handshake, one 64 KiB write
// that crosses the path, exit), then the relay's close. Run by hand, not in CI:
//   node --import tsx bench/nbd-relay-connect.ts [--delay-ms 150] [--runs 5]
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { startFollowRelay } from '../agents/host/disks/nbd-relay.ts';
import { startStorageDaemon } from '../agents/host/disks/qemu-images.ts';
import { systemClock } from '../src/common/clock.ts';
import { silentLogger } from '../src/common/log.ts';
import { run } from '../src/common/proc.ts';
import { startGate } from '../test/helpers/nbd-gate.ts';

const { values } = parseArgs({ options: { 'delay-ms': { type: 'string', default: '150' }, runs: { type: 'string', default: '5' } } });
const delayMs = Number(values['delay-ms']);
const runs = Number(values.runs);
if (!(delayMs >= 0 && delayMs <= 2000) || !(Number.isInteger(runs) && runs >= 1 && runs <= 50)) throw new Error('--delay-ms 0..2000, --runs 1..50');

const dir = await mkdtemp(join(tmpdir(), 'vmtc-bench-relay-'));
const cleanups: (() => Promise<void> | void)[] = [];
const image = join(dir, 'store.qcow2');
const steps = { ready: [] as number[], qemuIo: [] as number[], close: [] as number[] };
try {
  await run(['qemu-img', 'create', '-q', '-f', 'qcow2', image, '16M']);
  const store = await startStorageDaemon({ image, format: 'qcow2', dir, clock: systemClock, exportName: 'x', nbd: { type: 'unix' } });
  cleanups.push(() => store.stop({ now: true }));
  const gate = await startGate({ to: { path: store.nbdSocket! }, delayMs }, cleanups);
  for (let i = 0; i < runs; i++) {
    let t = performance.now();
    const lap = (k: keyof typeof steps) => {
      const now = performance.now();
      steps[k].push(now - t);
      t = now;
    };
    const relay = await startFollowRelay({ remote: { host: '127.0.0.1', port: gate.port, exportName: 'x' }, dir, clock: systemClock, logger: silentLogger() });
    lap('ready');
    const opts = `driver=nbd,server.type=unix,server.path=${relay.server.path},export=x`;
    const code = await new Promise<number | null>((resolve) => {
      const c = spawn('qemu-io', ['--image-opts', opts, '-c', `write -P ${i + 1} ${i}M 64k`], { stdio: 'ignore' });
      c.once('exit', resolve);
    });
    if (code !== 0) throw new Error(`qemu-io exited ${code}`);
    lap('qemuIo');
    await relay.close();
    lap('close');
  }
} finally {
  for (const c of cleanups.reverse()) await c();
  await rm(dir, { recursive: true, force: true });
}

const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const fmt = (xs: number[]) => `median ${med(xs).toFixed(0)} ms (${xs.map((x) => x.toFixed(0)).join(', ')})`;
console.log(`follow relay, ${delayMs} ms each way, ${runs} runs; ${cpus().length}× ${cpus()[0]?.model ?? '?'}`);
console.log(`  relay ready                     ${fmt(steps.ready)}`);
console.log(`  qemu-io connect + write + exit  ${fmt(steps.qemuIo)}`);
console.log(`  relay close                     ${fmt(steps.close)}`);
