// `vmtc agent`: run a host agent on a hypervisor host until SIGINT/SIGTERM.
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import type { Command } from '../../src/cli/registry.ts';
import { runUntilSignal } from '../../src/cli/registry.ts';
import { commonError } from '../../src/common/errors.ts';
import { createLogger, type Logger } from '../../src/common/log.ts';
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
    controller: { type: 'string', arg: 'URL', help: 'base URL of the controller REST API (needed to enrol)' },
    enroll: { type: 'string', arg: 'TOKEN', help: 'one-time enrolment token (first run only)' },
    'ca-fingerprint': { type: 'string', arg: 'SHA256', help: 'expected fingerprint of the controller CA, checked at enrolment' },
    data: { type: 'string', arg: 'DIR', required: true, help: 'agent state: key, certificates, agent.json, driver state' },
    driver: { type: 'string', arg: 'qemu|double', default: 'qemu', help: 'hypervisor driver; "double" is a test double with real TCP migration' },
    'double-config': { type: 'string', arg: 'FILE', help: 'JSON configuration of the double driver' },
    accel: { type: 'string', arg: 'tcg|kvm', default: 'tcg', help: 'QEMU acceleration (qemu driver)' },
    netns: { type: 'string', arg: 'NAME', help: 'network namespace the QEMU guests run in (qemu driver)' },
    site: { type: 'string', arg: 'NAME', help: 'site name reported in the inventory' },
    'migration-address': { type: 'string', arg: 'IP', help: "this host's lightpath address, reported in the inventory" },
    'log-level': { type: 'string', arg: 'LEVEL', default: 'info', help: 'pino log level' },
  },
  async run(o) {
    const logger = createLogger({ svc: 'agent', level: o['log-level'] as string });
    const dataDir = resolve(o.data as string);
    const driver = await makeDriver(o, dataDir, logger);
    let agent;
    try {
      agent = await startHostAgent({
        controllerUrl: (o.controller as string | undefined) ?? '',
        dataDir,
        driver,
        logger,
        ...(o.enroll ? { enrollToken: o.enroll as string } : {}),
        ...(o['ca-fingerprint'] ? { caFingerprint: o['ca-fingerprint'] as string } : {}),
        ...(o.site ? { site: o.site as string } : {}),
        ...(o['migration-address'] ? { migrationAddress: o['migration-address'] as string } : {}),
      });
    } catch (e) {
      await driver.close();
      throw e;
    }
    const a = agent;
    // A revoked certificate is permanent: exit non-zero so a supervisor shows it.
    let refused = false;
    const done = runUntilSignal(async () => {
      await a.close();
      await driver.close();
    });
    a.link.once('refused', () => {
      refused = true;
      process.kill(process.pid, 'SIGTERM');
    });
    const code = await done;
    return refused ? 3 : code;
  },
};

async function makeDriver(o: Record<string, unknown>, dataDir: string, logger: Logger): Promise<HypervisorDriver> {
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
    return new DoubleDriver(cfg);
  }
  if (kind === 'qemu') {
    const accel = o.accel as string;
    if (accel !== 'tcg' && accel !== 'kvm') throw commonError('VMTC_CONFIG_INVALID', { field: 'accel', value: accel }, { message: '--accel must be tcg or kvm' });
    // Loaded only when chosen, so a host running the double never needs QEMU's module.
    const { QemuDriver } = await import('./qemu-driver.ts');
    return new QemuDriver({ dataDir: resolve(dataDir, 'qemu'), logger, accel, ...(o.netns ? { netns: o.netns as string } : {}) });
  }
  throw commonError('VMTC_CONFIG_INVALID', { field: 'driver', value: kind }, { message: '--driver must be qemu or double' });
}
