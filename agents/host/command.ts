// `vmtc agent`: run a host agent on a hypervisor host until SIGINT/SIGTERM.
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { formatCliError, type Command, type OptionSpec } from '../../src/common/command.ts';
import { isoTime, keepAliveClock, type Clock } from '../../src/common/clock.ts';
import { commonError } from '../../src/common/errors.ts';
import { createLogger, type Logger } from '../../src/common/log.ts';
import { linkArgs, linkOptions, LOG_LEVEL_OPTION, serveAgent } from '../common/agent-command.ts';
import type { HypervisorDriver } from './driver.ts';
import { DoubleDriver, type DoubleDriverConfig } from './double-driver.ts';
import { startHostAgent } from './index.ts';
import { hostAgentRegistry } from './metrics.ts';
import { METRICS_LISTEN_OPTION, servingMetrics } from '../../src/common/metrics.ts';
import { HOST_SETTING_FLAGS, HOST_SETTINGS_FILE, mergeHostSettings, readHostSettings, settingsDiffer, writeHostSettings, type HostSettings } from './host-settings.ts';
import { agentFlags, deferDefaults, given } from '../../src/deploy/config-flags.ts';
import { loadDeployment } from '../../src/deploy/schema.ts';

const OPTIONS: Record<string, OptionSpec> = {
  ...linkOptions({
    enroll: 'one-time enrolment token (first run only)',
    data: 'agent state: key, certificates, agent.json, host.json (the settings below), driver state',
  }),
  driver: { type: 'string', arg: 'qemu|double', default: 'qemu', help: 'hypervisor driver; "double" is a test double with real TCP migration' },
  'double-config': { type: 'string', arg: 'FILE', help: 'JSON configuration of the double driver' },
  accel: { type: 'string', arg: 'tcg|kvm', default: 'tcg', help: 'QEMU acceleration (qemu driver)' },
  netns: { type: 'string', arg: 'NAME', help: 'network namespace the QEMU guests run in (qemu driver); the cold path\'s disk transfer goes through it too, on --migration-address' },
  site: { type: 'string', arg: 'NAME', help: 'site name reported in the inventory' },
  'migration-address': { type: 'string', arg: 'IP', help: "this host's lightpath address, reported in the inventory" },
  'export-listen': { type: 'string', arg: 'HOST:PORT', default: '127.0.0.1:0', help: 'HTTPS (mutual TLS) server that publishes disks to the destination of a cold migration' },
  'stats-interval': { type: 'string', arg: 'SECONDS', default: '10', help: 'how often host and VM use is reported to the controller (docs/monitoring.md); 0: never' },
  ...METRICS_LISTEN_OPTION,
  ...LOG_LEVEL_OPTION,
};

// Defaults are applied after DATA/host.json and --config (src/deploy/config-flags.ts), so that
// a restart with only --data runs with what was stored, not with the defaults.
const { options: deferred, finish } = deferDefaults(OPTIONS);

export const command: Command = {
  name: 'agent',
  summary: 'run a host agent on a hypervisor host',
  usage: [
    'First run:  vmtc agent --controller http://CONTROLLER:PORT --enroll TOKEN --data DIR --site SITE --migration-address IP [--driver …]',
    '            (or --config vmtc.json instead of --controller and --ca-fingerprint)',
    `Afterwards: vmtc agent --data DIR        (certificate and hub URL in DIR/agent.json; ${HOST_SETTING_FLAGS.map((f) => `--${f}`).join(', ')} in DIR/${HOST_SETTINGS_FILE})`,
    'A setting given again as a flag replaces the stored one (the change is logged).',
  ].join('\n'),
  options: {
    ...deferred,
    config: { type: 'string', arg: 'FILE', help: "deployment file (vmtc.json): the controller's URL and CA fingerprint to enrol with; --site must be one of its sites" },
  },
  async run(values) {
    const { config, ...flags } = values;
    if (typeof flags.data !== 'string') {
      process.stderr.write(`${formatCliError(commonError('VMTC_CONFIG_INVALID', { field: 'data' }, { message: 'vmtc agent: --data is required' }))}\nsee 'vmtc agent --help'\n`);
      return 2;
    }
    const dataDir = resolve(flags.data);
    const deployment = typeof config === 'string' ? loadDeployment(config) : undefined;
    const stored = readHostSettings(dataDir);
    const givenSettings: HostSettings = {};
    for (const k of HOST_SETTING_FLAGS) if (typeof flags[k] === 'string') givenSettings[k] = k === 'double-config' ? resolve(flags[k] as string) : flags[k] as string;
    const { settings, changes } = mergeHostSettings(stored, givenSettings);
    const o = finish({ ...(deployment ? given(agentFlags(deployment)) : {}), ...given(flags), ...settings }, 'agent');
    if (deployment && !deployment.doc.sites.includes(o.site as string)) {
      throw commonError('VMTC_CONFIG_INVALID', { field: 'site', value: o.site ?? null, sites: deployment.doc.sites }, { message: `--site must be one of the deployment's sites: ${deployment.doc.sites.join(', ')}` });
    }
    // What this agent runs with, stored once it has enrolled (or found its credentials).
    const effective: HostSettings = {};
    for (const k of HOST_SETTING_FLAGS) if (typeof o[k] === 'string') effective[k] = o[k] as string;
    if (effective.driver !== 'qemu') { delete effective.accel; delete effective.netns; }
    const logger = createLogger({ svc: 'agent', level: o['log-level'] as string });
    // The one clock of the process: the agent, its link, the cold path and the driver wait on it.
    const clock = keepAliveClock;
    const statsSecs = Number(o['stats-interval']);
    if (!(Number.isFinite(statsSecs) && statsSecs >= 0 && statsSecs <= 86_400)) throw commonError('VMTC_CONFIG_INVALID', { field: 'stats-interval', value: o['stats-interval'] ?? null }, { message: '--stats-interval must be a number of seconds between 0 and 86400' });
    const driver = await makeDriver(o, dataDir, logger, clock);
    return serveAgent(driver, servingMetrics(o['metrics-listen'], (agent) => hostAgentRegistry(driver, agent.link), async () => {
      const agent = await startHostAgent({
        controllerUrl: (o.controller as string | undefined) ?? '',
        dataDir,
        driver,
        logger,
        clock,
        ...linkArgs(o),
        ...(o.site ? { site: o.site as string } : {}),
        ...(o['migration-address'] ? { migrationAddress: o['migration-address'] as string } : {}),
        // The QEMU driver's namespace: the cold path's disk transfer goes through it too.
        ...(o.driver === 'qemu' && o.netns ? { netns: o.netns as string } : {}),
        exportListen: o['export-listen'] as string,
        statsIntervalMs: statsSecs * 1000,
      });
      if (settingsDiffer(stored, effective)) {
        writeHostSettings(dataDir, effective, isoTime(clock.now()));
        if (changes.length) logger.warn({ changes, file: HOST_SETTINGS_FILE }, 'flags changed stored agent settings');
        logger.info({ settings: effective, file: HOST_SETTINGS_FILE }, 'agent settings stored');
      }
      return agent;
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
