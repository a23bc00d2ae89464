// A cold move without vs with a warm replica at the destination, at the paper's RTT, every disk
// byte across the emulated lightpath (docs/design.md#cold-path, "Across the lightpath"). Run by
// hand as root, on a quiet machine (not in CI):
//   node --import tsx bench/cold-replica.ts [--rtt-ms 198] [--disk-mb 512] [--bandwidth-mbps 500] [--memory-mb 256] [--write-s 10]
// The guest's qcow2 data disk is written whole before it starts (data on every block), and the
// guest keeps writing it (the turntable's disk load, lab/turntable/disk.ts diskLoadFor). Move 1,
// A → B without a replica: the destination fetches the whole disk file (HTTPS, mutual TLS, through
// the agents' relays). Then a replica of the VM at A is seeded (across a lightpath of its own),
// the guest writes for --write-s seconds, and move 2, B → A, uses it: a delta before the power-off,
// the last one after. Each move runs on a lightpath provisioned for it (a cold move asks the broker
// for none: lab/cold-lightpath.ts), whose delay line counts what crossed.
//
// Reported per move: the downtime (the source's power-off to the VM started at the destination,
// as the controller recorded them: lab/cold-lightpath.ts coldDowntime), the disk bytes sent after
// the power-off (the fetch, or the last delta), what the move's delay line carried (whole, and in
// its 1 s reports from the power-off on), and the ratio of the two downtimes.
import { parseArgs } from 'node:util';
import { cpus } from 'node:os';
import { startStack } from '../lab/stack.ts';
import { delayLineStatsBetween } from '../lab/delay-line-process.ts';
import { coldDowntime, migrateCold, withLightpath, type PhaseLine } from '../lab/cold-lightpath.ts';
import { diskLoadFor, waitReplica } from '../lab/turntable/disk.ts';
import type { MigrationOutcome } from '../lab/stack.ts';

const { values } = parseArgs({ options: {
  'rtt-ms': { type: 'string', default: '198' }, 'disk-mb': { type: 'string', default: '512' },
  'bandwidth-mbps': { type: 'string', default: '500' }, 'memory-mb': { type: 'string', default: '256' },
  'write-s': { type: 'string', default: '10' },
} });
const rttMs = Number(values['rtt-ms']);
const diskMb = Number(values['disk-mb']);
const mbps = Number(values['bandwidth-mbps']);
const writeS = Number(values['write-s']);
const load = diskLoadFor(diskMb);
const say = (m: string) => console.error(`… ${m}`);

/** One move's figures. */
function figures(name: string, rec: MigrationOutcome, line: PhaseLine, afterPowerOffBytes: number) {
  if (rec.refused || rec.state !== 'completed') throw new Error(`${name}: ${rec.state ?? 'refused'} ${JSON.stringify(rec.error ?? rec)}`);
  const d = coldDowntime(rec);
  const cold = rec.steps!.cold as any;
  return {
    move: name, downtimeMs: d.ms, diskBytesAfterPowerOff: afterPowerOffBytes,
    lineBytes: line.bytes,
    lineBytesFromPowerOff: delayLineStatsBetween(line.statsFile, d.powerOffAt, d.runningAt + 1000).bytes,
    fetchedBytes: cold.imported?.bytes ?? null, importMs: cold.imported?.ms ?? null, fetchMbps: cold.imported?.mbps ?? null,
    replica: cold.replica ? { precopyDeltaBytes: cold.replica.precopyDeltaBytes, lastDeltaBytes: cold.replica.lastDeltaBytes, lastDeltaMs: cold.replica.lastDeltaMs, digestMs: cold.replica.digestMs, digest: cold.replica.digest } : null,
    timings: rec.timings,
  };
}

const s = await startStack({ rttMs, memoryMb: Number(values['memory-mb']), diskMb, diskFillMb: diskMb, guest: { diskLoad: load }, replicaMbps: mbps, onProgress: say });
try {
  const [a, b] = [s.lab.sites[0]!.name, s.lab.sites[1]!.name];
  console.log(JSON.stringify({ machine: { cores: cpus().length, cpu: cpus()[0]?.model }, rttMs, lightpathMbps: mbps, diskMb, diskLoad: load, writeS }));

  say(`move 1: ${a} → ${b} cold, no replica (the whole disk is fetched across the lightpath)`);
  const m1 = await withLightpath(s, a, b, 'cold1', mbps, () => migrateCold(s, b));
  const f1 = figures('without replica', m1.value, m1.line, (m1.value.steps?.cold as any)?.imported?.bytes ?? 0);
  console.log(JSON.stringify(f1));

  say(`seeding a replica at ${a} across a lightpath of its own`);
  const seed = await withLightpath(s, b, a, 'seed', mbps, async () => {
    const res = await s.api('POST', `/v1/vms/${s.vmId}/replicas`, { destinationHostId: s.hostOf(a), intervalS: 3600 });
    if (res.status !== 202) throw new Error(`replica refused: ${res.status} ${JSON.stringify(res.body)}`);
    return waitReplica(s, res.body.id, (r) => r.state === 'warm', 'warm', 1_800_000);
  });
  console.log(JSON.stringify({ seed: { replicaId: seed.value.id, seedBytes: seed.value.seedBytes, lineBytes: seed.line.bytes } }));
  say(`the guest writes for ${writeS} s`);
  await new Promise((r) => setTimeout(r, writeS * 1000));

  say(`move 2: ${b} → ${a} cold with the warm replica`);
  const m2 = await withLightpath(s, b, a, 'cold2', mbps, () => migrateCold(s, a));
  const f2 = figures('with replica', m2.value, m2.line, ((m2.value.steps?.cold as any)?.replica?.lastDeltaBytes as number | undefined) ?? 0);
  console.log(JSON.stringify(f2));
  console.log(JSON.stringify({ summary: { downtimeWithoutMs: f1.downtimeMs, downtimeWithMs: f2.downtimeMs, ratio: Number((f1.downtimeMs / f2.downtimeMs).toFixed(1)), bytesAfterPowerOffWithout: f1.diskBytesAfterPowerOff, bytesAfterPowerOffWith: f2.diskBytesAfterPowerOff } }));
} finally {
  await s.close();
}
