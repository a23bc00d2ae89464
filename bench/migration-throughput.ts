// Why a migration copies slower than the path carries (docs/lab.md "Throughput"): on the
// lab's delay line at a given RTT, in one run, a bulk TCP flow over the same lightpath (its
// rate is the reference) and live migrations of a populated guest (memory written once at boot
// with non-zero data: lab/turntable/fill.ts) under several tunings. Run as root, through the lab
// lock, bounded in time:
//   flock /tmp/vmtc-lab.lock timeout 1200 npx tsx bench/migration-throughput.ts [--rtt-ms 198]
//     [--rate-mbps 1000] [--memory-mb 256] [--fill-mb N] [--bulk-seconds 8] [--cc bbr|cubic|reno]
//     [--configs default,bw1000,unset,mfd2,mfd4,mfd8,...]
// Each config is a migration request (the VM moves back and forth); `default` sends no tuning at
// all, so it measures whatever the controller picks. Prints one JSON line per migration and a
// table: Mbit/s (bytes ÷ QEMU's total), QEMU total, controller total, ratio = QEMU total ÷
// (bytes ÷ bulk rate), drops at the delay line.
import { parseArgs } from 'node:util';
import { join } from 'node:path';
import { relayStatsFile, startStack } from '../lab/stack.ts';
import { delayLineStatsBetween } from '../lab/delay-line-process.ts';
import { netnsExec } from '../lab/net.ts';
import { awaitGuestFill } from '../lab/turntable/fill.ts';
import { bulkMsFor, measureBulkTcp } from '../lab/turntable/bulk.ts';
import { bdpQueueMs, defaultFillMb } from '../lab/turntable/instrument.ts';
import { delayLineIntervals } from '../lab/delay-line-process.ts';
import { qemuVmPaths } from '../agents/host/qemu/cmdline.ts';

const { values } = parseArgs({
  options: {
    'rtt-ms': { type: 'string', default: '198' },
    'rate-mbps': { type: 'string', default: '1000' },
    'memory-mb': { type: 'string', default: '256' },
    'fill-mb': { type: 'string' },
    'bulk-seconds': { type: 'string', default: '8' },
    'queue-ms': { type: 'string' },
    'tcp-max-mb': { type: 'string', default: '64' },
    'max-downtime-ms': { type: 'string', default: '30' },
    cc: { type: 'string' },
    configs: { type: 'string', default: 'default,mfd,bw1000,unset,mfd2,mfd4,mfd8,mfd4-unset' },
  },
  strict: true,
});

/** The configs by name: the request body (besides vmId/destination) of each. */
function body(name: string): Record<string, unknown> {
  const maxDowntimeMs = Number(values['max-downtime-ms']);
  if (name === 'default') return {};
  if (name === 'unset') return { maxDowntimeMs };
  const bw = /^bw(\d+)$/.exec(name);
  if (bw) return { maxDowntimeMs, bandwidthMbps: Number(bw[1]) };
  const m = /^mfd(\d+)(-unset|-bw(\d+))?$/.exec(name);
  if (m) {
    const b: Record<string, unknown> = { maxDowntimeMs, multifd: true, multifdChannels: Number(m[1]) };
    if (m[2] === undefined) b.bandwidthMbps = Number(values['rate-mbps']);
    else if (m[3]) b.bandwidthMbps = Number(m[3]);
    return b;
  }
  if (name === 'nomfd') return { maxDowntimeMs, multifd: false };
  // multifd asked without a count: the controller sizes the streams (tuning-default.ts).
  if (name === 'mfd') return { maxDowntimeMs, multifd: true };
  throw new Error(`unknown config ${name}: default, unset, bwN, mfd, mfdN, mfdN-unset, mfdN-bwM, nomfd`);
}

const rtt = Number(values['rtt-ms']);
const rate = Number(values['rate-mbps']);
const memoryMb = Number(values['memory-mb']);
const fillMb = values['fill-mb'] !== undefined ? Number(values['fill-mb']) : defaultFillMb(memoryMb, 0);
const configs = values.configs.split(',').map((c) => c.trim()).filter(Boolean);
for (const c of configs) body(c);
const say = (m: string) => console.error(`… ${m}`);
const startedAt = Date.now();

// The turntable's queue (one BDP of the line, lab/turntable/instrument.ts) unless told.
const queueMs = values['queue-ms'] !== undefined ? Number(values['queue-ms']) : bdpQueueMs(rtt, rate, rate);
const tcpMaxBytes = Number(values['tcp-max-mb']) * 1024 * 1024;
const s = await startStack({ rttMs: rtt, rateMbps: rate, memoryMb, queueMs, lab: { tcpMaxBytes }, guest: fillMb > 0 ? { fillMb } : {}, onProgress: say });
try {
  const sites = s.lab.sites.map((x) => x.name).slice(0, 2) as [string, string];
  if (values.cc) for (const site of s.lab.sites) await netnsExec(site.ns, ['sysctl', '-q', '-w', `net.ipv4.tcp_congestion_control=${values.cc}`]);
  let here = sites[0];
  const consolePath = qemuVmPaths(join(s.agentDataDir(s.hostOf(here)), 'qemu'), s.vmId, 1).console;
  // --fill-mb 0: the idle guest (only what its kernel touched).
  const fill = fillMb > 0 ? await awaitGuestFill(consolePath, fillMb, { timeoutMs: 300_000 }) : { mb: 0, ms: 0 };
  if (fillMb > 0) say(`guest populated: ${fill.mb} MiB in ${fill.ms} ms`);
  say('bulk TCP over the same lightpath');
  const bulk = await measureBulkTcp(s.lab, sites[0], sites[1], { bandwidthMbps: rate, seconds: Number(values['bulk-seconds']) });
  console.log(JSON.stringify({ bulk, queueMs, tcpMaxBytes }));
  const rows: string[][] = [];
  const bulkRate = bulk.steadyMbps ?? bulk.mbps;
  for (const name of configs) {
    const to = sites.find((x) => x !== here)!;
    say(`${name}: ${here} → ${to} ${JSON.stringify(body(name))}`);
    const t0 = Date.now();
    const rec = await s.migrate(to, body(name));
    if (rec.refused) { rows.push([name, 'refused', rec.code, '', '', '', '', '', '', '', '']); continue; }
    // The last report covers the second after the end.
    await new Promise((r) => setTimeout(r, 1100));
    const stats = delayLineStatsBetween(relayStatsFile(rec), t0, Date.now());
    const perSecond = delayLineIntervals(relayStatsFile(rec), t0, Date.now()).map((i) => Math.round(Math.max(i.ab.mbps, i.ba.mbps)));
    const r = rec.result ?? {};
    const bytes = r.transferredBytes ?? 0;
    const qemuMs = r.totalTimeMs ?? 0;
    const ctlMs = Object.values(rec.timings ?? {}).reduce((a, b) => a + b, 0);
    const mbps = qemuMs ? Math.round((bytes * 8) / qemuMs / 1000) : 0;
    // The copy at the bulk rate: what the same bytes take on one TCP flow of this path.
    const idealMs = bulkRate ? (bytes * 8) / (bulkRate * 1000) : 0;
    // …and what a fresh flow of this path took for the same bytes (slow start included).
    const freshMs = bulkMsFor(bulk.buckets, bytes);
    const tuning = (rec as { tuning?: Record<string, unknown> }).tuning;
    console.log(JSON.stringify({ config: name, state: rec.state, error: rec.error?.code, tuning, bytes, qemuTotalMs: qemuMs, controllerTotalMs: ctlMs, timings: rec.timings, mbps, ratio: idealMs ? qemuMs / idealMs : null, freshFlowMs: freshMs, setupTimeMs: r.setupTimeMs, downtimeMs: r.downtimeMs, perSecondMbps: perSecond, lineBytes: stats.bytes, drops: stats.drops, peakMbps: Math.round(stats.peakMbps), queueMaxMs: stats.queueMaxMs }));
    rows.push([name, rec.state, String(mbps), (qemuMs / 1000).toFixed(2), (ctlMs / 1000).toFixed(2), (bytes / 1e6).toFixed(0), idealMs ? (qemuMs / idealMs).toFixed(2) : '–', freshMs ? (qemuMs / freshMs).toFixed(2) : '–', String(r.downtimeMs ?? '–'), String(stats.drops), String(Math.round(stats.peakMbps))]);
    if (rec.state === 'completed') here = to;
  }
  const head = ['config', 'state', 'Mbit/s', 'QEMU total s', 'ctl total s', 'MB', 'total ÷ (bytes ÷ bulk)', 'total ÷ fresh flow', 'QEMU downtime ms', 'drops', 'line peak'];
  console.log(`\nRTT ${rtt} ms, line ${rate} Mbit/s, queue ${queueMs} ms, TCP buffers ≤ ${values["tcp-max-mb"]} MiB, ${memoryMb} MB guest with ${fill.mb} MiB filled; bulk TCP (${bulk.congestionControl}, ${bulk.bandwidthMbps} Mbit/s htb): ${bulk.mbps} Mbit/s whole flow, ${bulk.steadyMbps ?? '–'} second half, ${bulk.drops} drops; ratio against ${bulkRate}`);
  console.log(`| ${head.join(' | ')} |\n|${head.map(() => '---').join('|')}|`);
  for (const r of rows) console.log(`| ${r.join(' | ')} |`);
  console.log(`(${Math.round((Date.now() - startedAt) / 1000)} s)`);
} finally {
  await s.close();
}
