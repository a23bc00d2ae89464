// `vmtc broker`: run a lightpath broker for one network domain.
import { runUntilSignal, type Command } from '../common/command.ts';
import { commonError } from '../common/errors.ts';
import { createLogger } from '../common/log.ts';
import { describeNetworkDrivers, networkDriverNames } from './drivers/registry.ts';
import { BROKER_DEFAULTS, startBroker } from './index.ts';
import { brokerFlags, withDeploymentConfig } from '../deploy/config-flags.ts';

const base: Command = {
  name: 'broker',
  summary: 'run a lightpath broker: topology, calendar, NSI-style reservations',
  usage: 'Formats of the topology and trust files: docs/broker.md. On first start the operator credential that reads reservations (Authorization: Bearer) is written to DIR/operator.token (mode 0600).',
  options: {
    listen: { type: 'string', arg: 'HOST:PORT', help: 'address to listen on', default: '127.0.0.1:8443' },
    data: { type: 'string', arg: 'DIR', help: 'state directory (DIR/broker.db, DIR/operator.token)', required: true },
    domain: { type: 'string', arg: 'NAME', help: 'this network domain (tokens must name broker:NAME in aud)', required: true },
    topology: { type: 'string', arg: 'FILE', help: 'topology file (JSON)', required: true },
    trust: { type: 'string', arg: 'FILE', help: 'trust file: AAA issuers and keys, peer brokers, TLS (JSON)', required: true },
    // The names known when this module loads: the broker's own and those the entry point
    // registered before loading it (bin/main.ts).
    driver: { type: 'string', arg: 'NAME', help: `network element driver: ${describeNetworkDrivers()}`, default: BROKER_DEFAULTS.driver },
    'hold-timeout-s': { type: 'string', arg: 'SECONDS', help: 'how long a held reservation waits for its commit', default: String(BROKER_DEFAULTS.holdTimeoutMs / 1000) },
    'public-url': { type: 'string', arg: 'URL', help: 'base URL holders use, which their DPoP proofs name (default: scheme://HOST:PORT of --listen)' },
  },
  async run(o) {
    const driver = o.driver as string;
    const known = networkDriverNames();
    if (!known.includes(driver)) throw commonError('VMTC_CONFIG_INVALID', { field: 'driver', value: driver, known }, { message: `--driver must be one of ${known.join(', ')}` });
    const hold = Number(o['hold-timeout-s']);
    if (!Number.isFinite(hold) || hold <= 0) throw commonError('VMTC_CONFIG_INVALID', { field: 'hold-timeout-s', value: o['hold-timeout-s'] }, { message: '--hold-timeout-s must be a positive number' });
    const logger = createLogger({ svc: 'broker' });
    const broker = await startBroker({
      listen: o.listen as string,
      dataDir: o.data as string,
      domain: o.domain as string,
      topology: o.topology as string,
      trust: o.trust as string,
      driver,
      holdTimeoutMs: hold * 1000,
      ...(o['public-url'] !== undefined ? { publicUrl: o['public-url'] as string } : {}),
      logger,
    });
    process.stdout.write(JSON.stringify({ event: 'ready', svc: 'broker', domain: broker.domain, url: broker.url, operatorTokenFile: broker.operatorTokenFile }) + '\n');
    return runUntilSignal(() => broker.close());
  },
};

/** `--config FILE` reads the deployment's broker section (src/deploy/config-flags.ts). */
export const command = withDeploymentConfig(base, brokerFlags);
