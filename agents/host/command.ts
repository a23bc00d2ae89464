// `vmtc agent`: run a host agent on a hypervisor host until SIGINT/SIGTERM.
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import type { Command } from '../../src/common/command.ts';
import { keepAliveClock, type Clock } from '../../src/common/clock.ts';
import { commonError } from '../../src/common/errors.ts';
import { createLogger, type Logger } from '../../src/common/log.ts';
import { linkArgs, linkOptions, LOG_LEVEL_OPTION, serveAgent } from '../common/agent-command.ts';
import type { HypervisorDriver } from './driver.ts';
import { DoubleDriver, type DoubleDriverConfig } from './double-driver.ts';
import { startHostAgent } from './index.ts';

export const command: Command = {
  name: 'agent',
  summary: 'run a host agent on a hypervisor host',
  usage: [
    'First run:  vmtc agent --controller http://CONTROLLER:PORT --enroll TOKEN --data DIR',
    'Afterwards: vmtc agent --data DIR        (the certificate and hub URL are kept in DIR)',
  ].join('\n'),
  options: {
    ...linkOptions({
      enroll: 'one-time enrolment token (first run only)',
      data: 'agent state: key, certificates, agent.json, driver state',
    }),
    driver: { type: 'string', arg: 'qemu|double', default: 'qemu', help: 'hypervisor driver; "double" is a test double with real TCP migration' },
    'double-config': { type: 'string', arg: 'FILE', help: 'JSON configuration of the double driver' },
    accel: { type: 'string', arg: 'tcg|kvm', default: 'tcg', help: 'QEMU acceleration (qemu driver)' },
    netns: { type: 'string', arg: 'NAME', help: 'network namespace the QEMU guests run in (qemu driver)' },
    site: { type: 'string', arg: 'NAME', help: 'site name reported in the inventory' },
    'migration-address': { type: 'string', arg: 'IP', help: "this host's lightpath address, reported in the inventory" },
    'export-listen': { type: 'string', arg: 'HOST:PORT', default: '127.0.0.1:0', help: 'HTTPS (mutual TLS) server that publishes disks to the destination of a cold migration' },
    ...LOG_LEVEL_OPTION,
  },
  async run(o) {
    const logger = createLogger({ svc: 'agent', level: o['log-level'] as string });
    const dataDir = resolve(o.data as string);
    // The one clock of the process: the agent, its link, the cold path and the driver wait on it.
    const clock = keepAliveClock;
    const driver = await makeDriver(o, dataDir, logger, clock);
    return serveAgent(driver, () => startHostAgent({
      controllerUrl: (o.controller as string | undefined) ?? '',
      dataDir,
      driver,
      logger,
      clock,
      ...linkArgs(o),
      ...(o.site ? { site: o.site as string } : {}),
      ...(o['migration-address'] ? { migrationAddress: o['migration-address'] as string } : {}),
      exportListen: o['export-listen'] as string,
    }));
  },
};

async function makeDriver(o: Record<string, unknown>, dataDir: string, logger: Logger, clock: Clock): Promise<HypervisorDriver> {
  const kind = o.driver as string;
  if (kind === 'double') {
    let cfg: DoubleDriverConfig = {};
    if (o['double-config']) {
      try {
        cfg = JSON.parse(readFileSync(o['double-config'] as string, 'utf8')) as DoubleDriverConfig;
      } catch (e) {
        throw commonError('VMTC_CONFIG_INVALID', { field: 'double-config', reason: (e as Error).message }, { message: 'cannot read the double driver configuration' });
      }
    }
    return new DoubleDriver(cfg, { clock });
  }
  if (kind === 'qemu') {
    const accel = o.accel as string;
    if (accel !== 'tcg' && accel !== 'kvm') throw commonError('VMTC_CONFIG_INVALID', { field: 'accel', value: accel }, { message: '--accel must be tcg or kvm' });
    // Loaded only when chosen, so a host running the double never needs QEMU's module.
    const { QemuDriver } = await import('./qemu/driver.ts');
    return new QemuDriver({ dataDir: resolve(dataDir, 'qemu'), logger, accel, clock, ...(o.netns ? { netns: o.netns as string } : {}) });
  }
  throw commonError('VMTC_CONFIG_INVALID', { field: 'driver', value: kind }, { message: '--driver must be qemu or double' });
}
