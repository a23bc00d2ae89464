// Where does the client-seen gap go? One stack at the paper's RTT; each migration is decomposed
// with the host clock: source paused (QEMU STOP event) → destination resumed (RESUME event) →
// first ping reply after the gap. Run as root:
//   node --import tsx bench/switchover.ts [--rtt-ms 198] [--rounds 4] [--max-downtime-ms 300] [--bandwidth-mbps 1000]
import { spawn } from 'node:child_process';
import { parseArgs } from 'node:util';
import { relayStatsFile, startStack } from '../lab/stack.ts';
import { delayLineStatsBetween } from '../lab/delay-line-process.ts';

const { values } = parseArgs({ options: { 'rtt-ms': { type: 'string', default: '198' }, 'memory-mb': { type: 'string', default: '256' }, rounds: { type: 'string', default: '4' }, 'bandwidth-mbps': { type: 'string', default: '1000' }, 'max-downtime-ms': { type: 'string', default: '300' }, suspend: { type: 'boolean', default: false }, 'notsent-kb': { type: 'string', default: '128' } } });
const s = await startStack({ rttMs: Number(values['rtt-ms']), memoryMb: Number(values['memory-mb']), lab: { tcpNotsentLowatBytes: Number(values['notsent-kb']) * 1024 }, onProgress: (m) => console.error(`… ${m}`) });
try {
  const sites = s.lab.sites.map((x) => x.name);
  for (let round = 0; round < Number(values.rounds); round++) {
    const to = sites[(round + 1) % 2]!;
    const ping = spawn('ip', ['netns', 'exec', s.lab.client.ns, 'ping', '-D', '-O', '-i', '0.02', '-W', '1', '-w', '120', s.lab.vm.ip], { stdio: ['ignore', 'pipe', 'ignore'] });
    let out = '';
    ping.stdout.on('data', (d) => { out += d; });
    await new Promise((r) => setTimeout(r, 1000));
    const rec = await s.migrate(to, { bandwidthMbps: Number(values['bandwidth-mbps']), maxDowntimeMs: Number(values['max-downtime-ms']), ...(values.suspend ? { suspend: true } : {}) });
    await new Promise((r) => setTimeout(r, 1000));
    ping.kill('SIGINT');
    await new Promise((r) => ping.once('exit', r));
    const replies = [...out.matchAll(/^\[(\d+\.\d+)\] \d+ bytes from .* icmp_seq=(\d+)/gm)].map((m) => Number(m[1]) * 1000);
    let gap = { ms: 0, start: 0, end: 0 };
    for (let i = 1; i < replies.length; i++) if (replies[i]! - replies[i - 1]! > gap.ms) gap = { ms: replies[i]! - replies[i - 1]!, start: replies[i - 1]!, end: replies[i]! };
    const r = rec.result ?? {};
    const tr = Object.fromEntries((rec.transitions ?? []).map((t: any) => [t.to, Date.parse(t.at)]));
    const statsFile = relayStatsFile(rec);
    const { drops, queueMaxMs, peakMbps } = delayLineStatsBetween(statsFile);
    console.log(JSON.stringify({ drops, queueMaxMs, peakMbps: Math.round(peakMbps),
      round, to, state: rec.state, qemuDowntimeMs: r.downtimeMs, qemuTotalMs: r.totalTimeMs, bytes: r.transferredBytes,
      pingGapMs: Math.round(gap.ms),
      pauseToResumeMs: r.pausedAt && r.resumedAt ? Math.round(r.resumedAt - r.pausedAt) : null,
      lastReplyToPauseMs: r.pausedAt ? Math.round(r.pausedAt - gap.start) : null,
      resumeToFirstReplyMs: r.resumedAt ? Math.round(gap.end - r.resumedAt) : null,
      pauseToCommitting: r.pausedAt && tr.committing ? Math.round(tr.committing - r.pausedAt) : null,
      timings: rec.timings,
    }));
  }
} finally {
  await s.close();
}
