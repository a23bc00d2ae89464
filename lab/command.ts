// `vmtc lab up|down|status|topology` (also `npm run lab -- …`): the lab for people. Tests and the
// turntable call the same functions in lab/net.ts.
import type { Command } from '../src/common/command.ts';
import { commonError } from '../src/common/errors.ts';
import { labDown, labDownAll, labStatus, labUp, listLabs, loadLab, provisionLightpath, type LabStatus } from './net.ts';
import { brokerTopologyFor, LAB_DEFAULTS } from './topology.ts';
import { bdpQueueMs } from './delay-line.ts';

function numOpt(v: unknown, field: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isFinite(n)) throw commonError('VMTC_CONFIG_INVALID', { field, value: v }, { message: `--${field} must be a number` });
  return n;
}

function table(st: LabStatus): string {
  const lines = [`lab ${st.prefix}${st.recorded ? '' : ' (no state file)'}`];
  for (const [ns, ok] of Object.entries(st.namespaces)) lines.push(`  ns ${ns.padEnd(16)} ${ok ? 'present' : 'MISSING'}`);
  if (st.lab) {
    const l = st.lab;
    lines.push(`  client ${l.client.ns}: ${l.client.ip} on ${l.client.tunnelDev}, tunnel → ${st.tunnelSites.join(', ') || '(none)'}`);
    for (const s of l.sites) lines.push(`  ${s.name} ${s.ns}: public ${s.publicIp}, gateway ${s.gatewayIp} on ${s.bridge}, lightpath ${s.lightpathIp} (underlay ${s.underlayIp})`);
    lines.push(`  lightpath emulator: ${l.lightpath.oneWayMs * 2} ms RTT, ${l.lightpath.rateMbps} Mbit/s, queue ${l.lightpath.queueMs} ms, loss ${l.lightpath.loss}`);
  }
  for (const lp of st.lightpaths) {
    const r = lp.report?.total;
    lines.push(`  lightpath ${lp.connectionId}: ${lp.device} ${lp.ends.join(' ↔ ')} relay pid ${lp.relayPid} port ${lp.relayPort}` +
      (r ? `; delivered a→b ${r.ab.bytes} B (${r.ab.drops} drops), b→a ${r.ba.bytes} B (${r.ba.drops} drops)` : ''));
  }
  return lines.join('\n');
}

export const command: Command = {
  name: 'lab',
  summary: 'build, inspect or remove the lab (namespaces, delay line): up|down|status|topology',
  positionals: 'up|down|status|topology',
  usage: [
    'up        build a lab (sites, WAN, client, client tunnel to siteA); --lightpath also provisions siteA↔siteB',
    'down      remove lab --prefix P (or every lab with --all)',
    'status    show lab --prefix P (or every recorded lab)',
    'topology  print the broker topology file for lab --prefix P',
  ].join('\n'),
  options: {
    prefix: { type: 'string', arg: 'P', help: 'lab prefix, 1-4 of [a-z0-9] (up: random when absent)' },
    sites: { type: 'string', arg: 'N', default: String(LAB_DEFAULTS.sites), help: 'number of sites' },
    'rtt-ms': { type: 'string', arg: 'MS', default: String(LAB_DEFAULTS.rttMs), help: 'lightpath round-trip time' },
    'rate-mbps': { type: 'string', arg: 'MBPS', default: String(LAB_DEFAULTS.rateMbps), help: 'lightpath line rate' },
    'queue-ms': { type: 'string', arg: 'MS', help: "delay line queue bound (ms at line rate; default: one bandwidth-delay product of --bandwidth-mbps, else of the line rate: RTT × bandwidth ÷ rate, 20-1000 ms, as the turntable sizes it)" },
    'queue-bytes': { type: 'string', arg: 'BYTES', help: 'delay line queue bound in bytes (instead of --queue-ms)' },
    loss: { type: 'string', arg: 'P', default: '0', help: 'random loss probability on the lightpath' },
    'tcp-max-mb': { type: 'string', arg: 'MB', default: String(LAB_DEFAULTS.tcpMaxBytes / (1024 * 1024)), help: 'tcp_rmem/tcp_wmem maximum in every namespace' },
    lightpath: { type: 'boolean', help: 'up: also provision a standing lightpath siteA↔siteB' },
    'bandwidth-mbps': { type: 'string', arg: 'MBPS', help: 'up --lightpath: reserved bandwidth (default: the line rate)' },
    all: { type: 'boolean', help: 'down: remove every lab and recorded delay line' },
    json: { type: 'boolean', help: 'print JSON' },
    'state-dir': { type: 'string', arg: 'DIR', default: LAB_DEFAULTS.stateDir, help: 'where lab state files live' },
  },
  async run(opts, positionals) {
    const verb = positionals[0] ?? 'status';
    const stateDir = String(opts['state-dir']);
    const prefix = opts.prefix as string | undefined;
    const out = (x: unknown, text: string) => process.stdout.write((opts.json ? JSON.stringify(x, null, 2) : text) + '\n');
    switch (verb) {
      case 'up': {
        const rateMbps = numOpt(opts['rate-mbps'], 'rate-mbps')!;
        const rttMs = numOpt(opts['rtt-ms'], 'rtt-ms')!;
        const bandwidthMbps = numOpt(opts['bandwidth-mbps'], 'bandwidth-mbps');
        const lab = await labUp({
          ...(prefix ? { prefix } : {}),
          sites: numOpt(opts.sites, 'sites')!,
          rttMs,
          rateMbps,
          // A queue of one bandwidth-delay product absorbs a late relay's burst where 20 ms dropped
          // it (docs/lab.md "The instrument"); --queue-ms or --queue-bytes overrides it.
          queueMs: numOpt(opts['queue-ms'], 'queue-ms') ?? bdpQueueMs(rttMs, bandwidthMbps ?? rateMbps, rateMbps),
          ...(opts['queue-bytes'] !== undefined ? { queueBytes: numOpt(opts['queue-bytes'], 'queue-bytes')! } : {}),
          loss: numOpt(opts.loss, 'loss')!,
          tcpMaxBytes: numOpt(opts['tcp-max-mb'], 'tcp-max-mb')! * 1024 * 1024,
          stateDir,
        });
        if (opts.lightpath) await provisionLightpath(lab, lab.sites[0]!.name, lab.sites[1]!.name, bandwidthMbps ?? rateMbps);
        const st = await labStatus(lab.prefix, stateDir);
        out(st, table(st) + `\n\nremove with: vmtc lab down --prefix ${lab.prefix}`);
        return 0;
      }
      case 'down': {
        if (opts.all) {
          const gone = await labDownAll(stateDir);
          out({ removed: gone }, gone.length ? `removed: ${gone.join(', ')}` : 'no labs');
          return 0;
        }
        if (!prefix) throw commonError('VMTC_CONFIG_INVALID', { field: 'prefix' }, { message: 'vmtc lab down: --prefix P or --all is required' });
        await labDown(prefix, stateDir);
        out({ removed: [prefix] }, `removed: ${prefix}`);
        return 0;
      }
      case 'status': {
        const prefixes = prefix ? [prefix] : await listLabs(stateDir);
        const all = [];
        for (const p of prefixes) all.push(await labStatus(p, stateDir));
        out(prefix ? all[0] : all, all.length ? all.map(table).join('\n\n') : 'no labs recorded');
        return 0;
      }
      case 'topology': {
        if (!prefix) throw commonError('VMTC_CONFIG_INVALID', { field: 'prefix' }, { message: 'vmtc lab topology: --prefix P is required' });
        process.stdout.write(JSON.stringify(brokerTopologyFor(await loadLab(prefix, stateDir)), null, 2) + '\n');
        return 0;
      }
      default:
        throw commonError('VMTC_CONFIG_INVALID', { field: 'verb', value: verb }, { message: `vmtc lab: unknown verb '${verb}' (up|down|status|topology)` });
    }
  },
};
