// `vmtc tunnel`: run a tunnel agent where clients' traffic enters, until SIGINT/SIGTERM.
// stdout carries one JSON line {"event":"ready",…} once the agent is connected to the controller
// (scripts and tests wait for it); the log goes to stderr so stdout stays machine-readable.
import { resolve } from 'node:path';
import type { Command } from '../../src/common/command.ts';
import { keepAliveClock } from '../../src/common/clock.ts';
import { commonError } from '../../src/common/errors.ts';
import { createLogger, type Logger } from '../../src/common/log.ts';
import { linkArgs, linkOptions, LOG_LEVEL_OPTION, serveAgent } from '../common/agent-command.ts';
import type { TunnelDriver } from './driver.ts';
import { MemoryTunnelDriver } from './memory-driver.ts';
import { startTunnelAgent } from './index.ts';

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
    ...LOG_LEVEL_OPTION,
  },
  async run(o) {
    const logger = createLogger({ svc: 'tunnel', level: o['log-level'] as string, destination: process.stderr });
    const dataDir = resolve(o.data as string);
    const driver = await makeDriver(o, logger);
    const start = () => startTunnelAgent({
      dataDir,
      driver,
      logger,
      // The one place the tunnel agent's time comes from: its history timestamps and its link's
      // timers (which must keep the process alive while it waits to reconnect).
      clock: keepAliveClock,
      ...linkArgs(o),
      ...(o['initial-site'] ? { initialSite: o['initial-site'] as string } : {}),
    });
    // The ready line: once, at the first connection.
    return serveAgent(driver, start, (a) => {
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
