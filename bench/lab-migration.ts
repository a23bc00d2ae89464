// One live migration at the paper's RTT, measured as docs/design.md#seeing-it describes:
// QEMU's own downtime, the longest gap a client pinging every 50 ms saw (paper Table 3), total
// time, and the rate the emulated lightpath delivered. Run as root:
//   node --import tsx bench/lab-migration.ts [--rtt-ms 198] [--memory-mb 256] [--rounds 1] [--mode live|cold]
// --mode cold measures the cold path instead (power off, boot at the destination, verified by the
// guest's TCP echo service on port 7): the ping gap is then the reboot.
import { spawn } from 'node:child_process';
import { parseArgs } from 'node:util';
import { relayStatsFile, startStack } from '../lab/stack.ts';
import { delayLineStatsBetween } from '../lab/delay-line-process.ts';

const { values } = parseArgs({ options: { 'rtt-ms': { type: 'string', default: '198' }, 'memory-mb': { type: 'string', default: '256' }, rounds: { type: 'string', default: '1' }, mode: { type: 'string', default: 'live' }, 'bandwidth-mbps': { type: 'string', default: '1000' } } });
const rtt = Number(values['rtt-ms']);
const s = await startStack({ rttMs: rtt, memoryMb: Number(values['memory-mb']), onProgress: (m) => console.error(`… ${m}`) });
try {
  const sites = s.lab.sites.map((x) => x.name);
  for (let round = 0; round < Number(values.rounds); round++) {
    const to = sites[(round + 1) % 2]!;
    // ping -D timestamps replies; -O reports the missing ones; -w bounds the run (50 ms interval as the paper).
    const ping = spawn('ip', ['netns', 'exec', s.lab.client.ns, 'ping', '-D', '-O', '-i', '0.05', '-W', '1', '-w', '120', s.lab.vm.ip], { stdio: ['ignore', 'pipe', 'ignore'] });
    let out = '';
    ping.stdout.on('data', (d) => { out += d; });
    await new Promise((r) => setTimeout(r, 1500));
    const body = values.mode === 'cold'
      ? { mode: 'cold', verifyTcp: { host: s.lab.vm.ip, port: 7 } }
      : { bandwidthMbps: Number(values['bandwidth-mbps']), maxDowntimeMs: 300 };
    const rec = await s.migrate(to, body, (r) => console.error(`  ${r.state}`));
    await new Promise((r) => setTimeout(r, 1500));
    ping.kill('SIGINT');
    await new Promise((r) => ping.once('exit', r));
    const replies = [...out.matchAll(/^\[(\d+\.\d+)\] \d+ bytes from .* icmp_seq=(\d+)/gm)].map((m) => Number(m[1]) * 1000);
    const lost = [...out.matchAll(/no answer yet for icmp_seq=/g)].length;
    let maxGap = 0;
    for (let i = 1; i < replies.length; i++) maxGap = Math.max(maxGap, replies[i]! - replies[i - 1]!);
    // A refused request made no record: there is nothing to measure.
    if (rec.refused) throw new Error(`migration refused: ${rec.code}: ${rec.message}`);
    const statsFile = relayStatsFile(rec);
    const { peakMbps, bytes: bytesAB } = delayLineStatsBetween(statsFile);
    const precopyMs = (rec.timings.precopy ?? 0) + (rec.timings.stopcopy ?? 0) + (rec.timings.switchover ?? 0);
    console.log(JSON.stringify({
      round, to, mode: values.mode, state: rec.state, error: rec.error, rttMs: rtt,
      qemuDowntimeMs: rec.result.downtimeMs, pingMaxGapMs: Math.round(maxGap), pingLost: lost, pingReplies: replies.length,
      qemuTotalMs: rec.result.totalTimeMs, controllerTotalMs: Object.values(rec.timings as Record<string, number>).reduce((a, b) => a + b, 0),
      controlPlaneMs: (rec.timings.authorizing ?? 0) + (rec.timings.provisioning ?? 0) + (rec.timings.preparing ?? 0),
      timings: rec.timings, transferredBytes: rec.result.transferredBytes,
      achievedMbps: rec.result.transferredBytes && precopyMs ? Math.round((rec.result.transferredBytes * 8) / precopyMs / 1000) : null,
      delayLinePeakMbps: Math.round(peakMbps), delayLineBytes: bytesAB,
    }));
  }
} finally {
  await s.close();
}
