// Benchmark: bulk TCP over the emulated lightpath (VXLAN through the user-space delay line).
//   npx tsx bench/delay-line-throughput.ts [--rtt-ms 198] [--rate-mbps 1000] [--queue-ms 20]
//                                          [--seconds 20] [--streams 1] [--bandwidth-mbps RATE] [--cc bbr|reno]
//                                          [--impl node|c]   (which delay line; default env VMTC_DELAY_LINE, else node)
// Brings up a throwaway lab, provisions the lightpath siteA↔siteB with the lab's lightpath driver,
// measures the RTT with ping, runs a Node TCP sender in siteA and receiver in siteB (bounded by
// time), prints delivered Mbit/s beside the nominal rate and the delay line's own report, and
// removes everything. The same file is the TCP peer when run with --role send|recv.
import net from 'node:net';
import { parseArgs } from 'node:util';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { readFileSync } from 'node:fs';

const { values } = parseArgs({
  options: {
    role: { type: 'string' },
    host: { type: 'string' },
    port: { type: 'string', default: '5001' },
    seconds: { type: 'string', default: '20' },
    streams: { type: 'string', default: '1' },
    'rtt-ms': { type: 'string', default: '198' },
    'rate-mbps': { type: 'string', default: '1000' },
    'queue-ms': { type: 'string', default: '20' },
    'bandwidth-mbps': { type: 'string' },
    'tcp-max-mb': { type: 'string', default: '64' },
    cc: { type: 'string' },
    impl: { type: 'string' },
  },
  strict: true,
});

async function receiver(): Promise<void> {
  // Counts bytes per 250 ms bucket from the first byte; prints one JSON line when all senders end.
  const streams = Number(values.streams);
  let first = 0;
  let total = 0;
  const buckets: number[] = [];
  let ended = 0;
  const srv = net.createServer((s) => {
    s.on('data', (d) => {
      const now = performance.now();
      if (!first) first = now;
      total += d.length;
      const i = Math.floor((now - first) / 250);
      buckets[i] = (buckets[i] ?? 0) + d.length;
    });
    s.on('end', () => {
      if (++ended === streams) {
        const ms = performance.now() - first;
        process.stdout.write(JSON.stringify({ bytes: total, ms, buckets: Array.from(buckets, (x) => x ?? 0) }) + '\n');
        srv.close();
      }
    });
  });
  srv.listen(Number(values.port), values.host, () => process.stdout.write('ready\n'));
}

async function sender(): Promise<void> {
  const until = Date.now() + Number(values.seconds) * 1000;
  const chunk = Buffer.alloc(1 << 20, 0x5a);
  await Promise.all(Array.from({ length: Number(values.streams) }, () => new Promise<void>((resolve, reject) => {
    const s = net.connect(Number(values.port), values.host!, () => {
      const pump = () => {
        while (Date.now() < until) if (!s.write(chunk)) return void s.once('drain', pump);
        s.end(resolve);
      };
      pump();
    });
    s.on('error', reject);
  })));
}

/** utime+stime of a process, ms (clock ticks of 10 ms on Linux). */
function cpuMs(pid: number): number {
  const c = cpuSplitMs(pid);
  return c.user + c.sys;
}

/** utime and stime apart: the kernel's share includes the veth/bridge/vxlan work it does on the
 * relay's behalf when it sends. */
function cpuSplitMs(pid: number): { user: number; sys: number } {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return { user: Number(f[11]) * 10, sys: Number(f[12]) * 10 };
}

function peer(ns: string, args: string[]) {
  return spawn('ip', ['netns', 'exec', ns, process.execPath, '--import', 'tsx', fileURLToPath(import.meta.url), ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
}

function firstLine(child: ReturnType<typeof spawn>, match: (l: string) => boolean): Promise<string> {
  return new Promise((resolve, reject) => {
    let buf = '';
    child.stdout!.on('data', (d) => {
      buf += String(d);
      for (const l of buf.split('\n')) if (l && match(l)) return resolve(l);
    });
    child.on('exit', (c) => reject(new Error(`peer exited ${c}`)));
  });
}

async function orchestrate(): Promise<void> {
  const { labUp, labDown, provisionLightpath, netnsExec } = await import('../lab/net.ts');
  const { LabLightpathDriver } = await import('../lab/lightpath-driver.ts');
  const { resolveDelayLineImpl } = await import('../lab/delay-line-process.ts');
  const rate = Number(values['rate-mbps']);
  if (values.impl !== undefined && values.impl !== 'node' && values.impl !== 'c') throw new Error('--impl must be node or c');
  const impl = resolveDelayLineImpl(values.impl as 'node' | 'c' | undefined);
  const lab = await labUp({ delayLineImpl: impl, rttMs: Number(values['rtt-ms']), rateMbps: rate, queueMs: Number(values['queue-ms']), tcpMaxBytes: Number(values['tcp-max-mb']) * 1024 * 1024, tunnelSite: null });
  try {
    const [a, b] = lab.sites as [typeof lab.sites[0], typeof lab.sites[0]];
    const bw = Number(values['bandwidth-mbps'] ?? rate);
    // Only what net.ipv4.tcp_allowed_congestion_control lists can be chosen inside a namespace.
    if (values.cc) for (const s of [a, b]) await netnsExec(s.ns, ['sysctl', '-q', '-w', `net.ipv4.tcp_congestion_control=${values.cc}`]);
    const cc = (await netnsExec(a.ns, ['sysctl', '-n', 'net.ipv4.tcp_congestion_control'])).stdout.trim();
    const seg = await provisionLightpath(lab, a.name, b.name, bw);
    const ping = await netnsExec(a.ns, ['ping', '-c', '10', '-i', '0.2', b.lightpathIp]);
    const rtt = /= ([\d.]+)\/([\d.]+)\/([\d.]+)/.exec(ping.stdout);
    const common = ['--host', b.lightpathIp, '--port', String(values.port), '--streams', String(values.streams)];
    const relayPid = (seg.details.relay as { pid: number }).pid;
    const cpu0 = cpuMs(relayPid);
    const split0 = cpuSplitMs(relayPid);
    const recv = peer(b.ns, ['--role', 'recv', ...common]);
    await firstLine(recv, (l) => l === 'ready');
    const result = firstLine(recv, (l) => l.startsWith('{'));
    const send = peer(a.ns, ['--role', 'send', '--seconds', String(values.seconds), ...common]);
    const r = JSON.parse(await result) as { bytes: number; ms: number; buckets: number[] };
    send.kill();
    const relayCpu = Math.round(((cpuMs(relayPid) - cpu0) / r.ms) * 100);
    const split1 = cpuSplitMs(relayPid);
    const relayUserPercent = Math.round(((split1.user - split0.user) / r.ms) * 100);
    const relaySysPercent = Math.round(((split1.sys - split0.sys) / r.ms) * 100);
    const driver = new LabLightpathDriver({ stateDir: lab.stateDir });
    const report = await driver.report(seg.connectionId);
    const mbps = (bytes: number, ms: number) => Math.round((bytes * 8) / (ms * 1000));
    // The second half of the transfer: after slow start, what the path sustains.
    const half = r.buckets.slice(Math.floor(r.buckets.length / 2), -1);
    const out = {
      impl,
      nominalMbps: rate,
      reservedMbps: bw,
      rttMs: rtt ? { min: Number(rtt[1]), avg: Number(rtt[2]), max: Number(rtt[3]) } : null,
      configuredRttMs: Number(values['rtt-ms']),
      streams: Number(values.streams),
      congestionControl: cc,
      bytes: r.bytes,
      seconds: Math.round(r.ms) / 1000,
      deliveredMbps: mbps(r.bytes, r.ms),
      steadyMbps: half.length ? mbps(half.reduce((x, y) => x + y, 0), half.length * 250) : null,
      peak250msMbps: mbps(Math.max(...r.buckets), 250),
      relayCpuPercent: relayCpu,
      relayUserPercent,
      relaySysPercent,
      delayLine: report ? { ab: report.total.ab, ba: report.total.ba } : null,
    };
    process.stdout.write(JSON.stringify(out, null, 2) + '\n');
  } finally {
    await labDown(lab.prefix, lab.stateDir);
  }
}

if (values.role === 'recv') await receiver();
else if (values.role === 'send') await sender();
else await orchestrate();
