// `vmtc tunnel`: run a tunnel agent where clients' traffic enters, until SIGINT/SIGTERM.
// stdout carries one JSON line {"event":"ready",…} once the agent is connected to the controller
// (scripts and tests wait for it); the log goes to stderr so stdout stays machine-readable.
import { isIP } from 'node:net';
import { join, resolve } from 'node:path';
import type { Command } from '../../src/common/command.ts';
import { keepAliveClock } from '../../src/common/clock.ts';
import { commonError } from '../../src/common/errors.ts';
import { createLogger, type Logger } from '../../src/common/log.ts';
import { linkArgs, linkOptions, LOG_LEVEL_OPTION, serveAgent } from '../common/agent-command.ts';
import type { TunnelDriver } from './driver.ts';
import { MemoryTunnelDriver } from './memory-driver.ts';
import { CaptureDowntimeMeter, SyntheticDowntimeMeter, type DowntimeMeter } from './meter.ts';
import { ensureCaptureBinary } from './capture/build.ts';
import { startTunnelAgent } from './index.ts';
import { tunnelAgentRegistry } from './metrics.ts';
import { METRICS_LISTEN_OPTION, servingMetrics } from '../../src/common/metrics.ts';

export const command: Command = {
  name: 'tunnel',
  summary: "run a tunnel agent where clients enter: keeps IP tunnels pointed at the VM's site, make-before-break",
  usage: [
    'First run:  vmtc tunnel --controller http://CONTROLLER:PORT --enroll TOKEN --data DIR \\',
    '                        --netns NS --device DEV --site siteA=198.51.100.10 --site siteB=198.51.100.20 --initial-site siteA',
    'Afterwards: the same without --enroll (the certificate and hub URL are kept in DIR)',
  ].join('\n'),
  options: {
    ...linkOptions({
      enroll: 'one-time enrolment token (first run only; mint it with kind "tunnel")',
      data: 'agent state: key, certificates, agent.json',
    }),
    driver: { type: 'string', arg: 'vxlan|memory', default: 'vxlan', help: 'tunnel driver; "memory" is a test double that touches no network' },
    netns: { type: 'string', arg: 'NAME', help: 'network namespace holding the tunnel device (vxlan driver; default: the current one)' },
    device: { type: 'string', arg: 'NAME', help: 'the client vxlan device, created with nolearning (vxlan driver)' },
    site: { type: 'string', arg: 'NAME=IP', multiple: true, help: "a site and its underlay address (repeat per site; the memory driver accepts NAME alone)" },
    'initial-site': { type: 'string', arg: 'NAME', help: 'site the tunnel must send to at start (added if absent)' },
    watch: { type: 'string', arg: 'VMID=IP', multiple: true, help: "measure this VM's client-seen downtime from bicast to prune (its IPv4 address; repeat per VM)" },
    'capture-dev': { type: 'string', arg: 'NAME', help: 'underlay device where the VXLAN packets arrive, captured for --watch (vxlan driver)' },
    'probe-period-ms': { type: 'string', arg: 'MS', default: '20', help: 'ICMP echo period of the active probe during a watched migration; 0: passive only' },
    ...METRICS_LISTEN_OPTION,
    ...LOG_LEVEL_OPTION,
  },
  async run(o) {
    const logger = createLogger({ svc: 'tunnel', level: o['log-level'] as string, destination: process.stderr });
    const dataDir = resolve(o.data as string);
    const driver = await makeDriver(o, logger);
    const meter = await makeMeter(o, dataDir, logger);
    const start = () => startTunnelAgent({
      dataDir,
      driver,
      logger,
      // The one place the tunnel agent's time comes from: its history timestamps and its link's
      // timers (which must keep the process alive while it waits to reconnect).
      clock: keepAliveClock,
      ...linkArgs(o),
      ...(o['initial-site'] ? { initialSite: o['initial-site'] as string } : {}),
      ...(meter ? { meter } : {}),
    });
    // The ready line: once, at the first connection.
    return serveAgent(driver, servingMetrics(o['metrics-listen'], tunnelAgentRegistry, start), (a) => {
      void a.state().then((s) => {
        process.stdout.write(JSON.stringify({ event: 'ready', hostId: a.hostId, kind: 'tunnel', driver: s.driver, sites: s.sites }) + '\n');
      }, () => undefined);
    });
  },
};

/** Parse the repeated --site NAME=IP options (NAME alone is allowed when `ipOptional`). */
export function parseSites(values: string[], ipOptional: boolean): Record<string, string> {
  const out: Record<string, string> = {};
  for (const v of values) {
    const i = v.indexOf('=');
    const name = i < 0 ? v : v.slice(0, i);
    const ip = i < 0 ? '' : v.slice(i + 1);
    if (!name || (!ip && !ipOptional)) throw commonError('VMTC_CONFIG_INVALID', { field: 'site', value: v }, { message: '--site must be NAME=IP' });
    if (Object.hasOwn(out, name)) throw commonError('VMTC_CONFIG_INVALID', { field: 'site', value: v }, { message: `site ${name} is given twice` });
    out[name] = ip;
  }
  return out;
}

/** Parse the repeated --watch VMID=IP options. */
export function parseWatch(values: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const v of values) {
    const i = v.indexOf('=');
    const ip = i < 0 ? '' : v.slice(i + 1);
    if (i <= 0 || isIP(ip) !== 4) throw commonError('VMTC_CONFIG_INVALID', { field: 'watch', value: v }, { message: '--watch must be VMID=IPv4' });
    out[v.slice(0, i)] = ip;
  }
  return out;
}

/** The downtime meter for --watch: the capture helper with the vxlan driver, the synthetic test
 *  double with the memory driver. None without --watch. */
async function makeMeter(o: Record<string, unknown>, dataDir: string, logger: Logger): Promise<DowntimeMeter | undefined> {
  const watch = parseWatch((o.watch as string[] | undefined) ?? []);
  if (Object.keys(watch).length === 0) return undefined;
  const period = Number(o['probe-period-ms']);
  if (!(Number.isInteger(period) && period >= 0 && period <= 10_000)) throw commonError('VMTC_CONFIG_INVALID', { field: 'probe-period-ms', value: o['probe-period-ms'] }, { message: '--probe-period-ms must be an integer 0-10000' });
  if (o.driver === 'memory') return new SyntheticDowntimeMeter(keepAliveClock);
  if (!o['capture-dev']) throw commonError('VMTC_CONFIG_INVALID', { field: 'capture-dev' }, { message: '--capture-dev is required with --watch and the vxlan driver' });
  const meter = new CaptureDowntimeMeter({
    watch, siteIps: parseSites((o.site as string[] | undefined) ?? [], false), device: o['capture-dev'] as string,
    ...(o.netns ? { netns: o.netns as string } : {}), probePeriodMs: period, cacheDir: join(dataDir, 'cache'), clock: keepAliveClock, logger,
  });
  // Built now rather than at the first bicast, which must be quick.
  await ensureCaptureBinary(join(dataDir, 'cache', 'capture'));
  return meter;
}

async function makeDriver(o: Record<string, unknown>, logger: Logger): Promise<TunnelDriver> {
  const kind = o.driver as string;
  const siteArgs = (o.site as string[] | undefined) ?? [];
  if (kind === 'memory') {
    const sites = parseSites(siteArgs, true);
    return new MemoryTunnelDriver(Object.keys(sites).length > 0 ? { known: Object.keys(sites) } : {});
  }
  if (kind === 'vxlan') {
    if (!o.device) throw commonError('VMTC_CONFIG_INVALID', { field: 'device' }, { message: '--device is required with the vxlan driver' });
    // Loaded only when chosen, so the test double never needs iproute2.
    const { VxlanTunnelDriver } = await import('./vxlan-driver.ts');
    return VxlanTunnelDriver.open({ device: o.device as string, sites: parseSites(siteArgs, false), logger, ...(o.netns ? { netns: o.netns as string } : {}) });
  }
  throw commonError('VMTC_CONFIG_INVALID', { field: 'driver', value: kind }, { message: '--driver must be vxlan or memory' });
}
