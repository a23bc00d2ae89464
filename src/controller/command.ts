// `vmtc controller`: run the VM Traffic Controller.
import { readFileSync } from 'node:fs';
import type { Command } from '../common/command.ts';
import { runUntilSignal } from '../common/command.ts';
import { parseListen } from '../common/http.ts';
import { createLogger } from '../common/log.ts';
import { startController } from './index.ts';
import { parseFleetOptions } from './fleet/options.ts';
import { commonError } from '../common/errors.ts';
import { controllerFlags, withDeploymentConfig } from '../deploy/config-flags.ts';

const base: Command = {
  name: 'controller',
  summary: 'Run the VM Traffic Controller: REST API for orchestrators, migration state machine, agent hub (WebSocket, mutual TLS), SQLite state.',
  usage: 'On first start it creates DIR, a certificate authority in DIR/pki and an admin credential in DIR/admin.token (mode 0600).',
  options: {
    listen: { type: 'string', arg: 'HOST:PORT', default: '127.0.0.1:7700', help: 'REST API address' },
    'agent-listen': { type: 'string', arg: 'HOST:PORT', default: '127.0.0.1:7701', help: 'agent WebSocket (mutual TLS) address' },
    data: { type: 'string', arg: 'DIR', required: true, help: 'state directory' },
    aaa: { type: 'string', arg: 'URL', help: 'AAA that grants capability tokens (without it the token step is skipped)' },
    broker: { type: 'string', arg: 'URL', help: "this domain's lightpath broker (without it the lightpath step is skipped)" },
    'broker-ca': { type: 'string', arg: 'FILE', help: "PEM of the CA of an https broker" },
    'tls-cert': { type: 'string', arg: 'FILE', help: 'serve the REST API over HTTPS with this certificate (PEM; with --tls-key)' },
    'tls-key': { type: 'string', arg: 'FILE', help: 'private key of --tls-cert (PEM)' },
    'heartbeat-ms': { type: 'string', arg: 'MS', default: '5000', help: 'agent heartbeat interval' },
    'log-level': { type: 'string', arg: 'LEVEL', default: 'info', help: 'pino log level' },
    monitoring: { type: 'string', arg: 'FILE', help: 'JSON of the monitoring options (docs/monitoring.md): thresholds, sustain, autoMitigate, followTheMoon, siteUtcOffsetMinutes, …' },
    'replica-mbps': { type: 'string', arg: 'MBPS', help: 'background bandwidth a replica\'s seed or delta asks the broker for (docs/disks.md#replicas; default 100; 0: none, transfers unreserved)' },
    fleet: { type: 'string', arg: 'FILE', help: 'JSON of the fleet options (docs/fleet.md): links (the lightpaths between sites: { id?, a, b, mbps, available?, distance? }), booking { stretch, slackS }' },
  },
  async run(o) {
    const logger = createLogger({ svc: 'controller', level: o['log-level'] as string });
    const heartbeatMs = Number(o['heartbeat-ms']);
    if (!Number.isInteger(heartbeatMs) || heartbeatMs < 100) {
      throw commonError('VMTC_CONFIG_INVALID', { field: 'heartbeat-ms', value: o['heartbeat-ms'] }, { message: '--heartbeat-ms must be an integer ≥ 100' });
    }
    if (Boolean(o['tls-cert']) !== Boolean(o['tls-key'])) {
      throw commonError('VMTC_CONFIG_INVALID', { field: o['tls-cert'] ? 'tls-key' : 'tls-cert' }, { message: '--tls-cert and --tls-key go together' });
    }
    const monitoring = o.monitoring ? readJson(o.monitoring as string, 'monitoring') : undefined;
    const fleet = o.fleet ? parseFleetOptions(readJson(o.fleet as string, 'fleet'), 'fleet') : undefined;
    const replicaMbps = o['replica-mbps'] === undefined ? undefined : Number(o['replica-mbps']);
    if (replicaMbps !== undefined && !(Number.isFinite(replicaMbps) && replicaMbps >= 0 && replicaMbps <= 1e6)) {
      throw commonError('VMTC_CONFIG_INVALID', { field: 'replica-mbps', value: o['replica-mbps'] }, { message: '--replica-mbps must be a number of Mbit/s, 0 to 1000000' });
    }
    const c = await startController({
      dataDir: o.data as string,
      listen: parseListen(o.listen as string, 'listen'),
      agentListen: parseListen(o['agent-listen'] as string, 'agent-listen'),
      heartbeatMs,
      logger,
      ...(o.aaa ? { aaaUrl: o.aaa as string } : {}),
      ...(o.broker ? { brokerUrl: o.broker as string } : {}),
      ...(o['broker-ca'] ? { brokerCa: readFileSync(o['broker-ca'] as string, 'utf8') } : {}),
      ...(monitoring ? { monitoring } : {}),
      ...(fleet ? { fleet } : {}),
      ...(replicaMbps !== undefined ? { replicaBandwidth: replicaMbps === 0 ? false as const : { mbps: replicaMbps } } : {}),
      ...(o['tls-cert'] ? { tls: { cert: readPem(o['tls-cert'] as string, 'tls-cert'), key: readPem(o['tls-key'] as string, 'tls-key') } } : {}),
    });
    process.stdout.write(JSON.stringify({ event: 'ready', url: c.url, agentUrl: c.agentUrl, adminTokenFile: `${o.data}/admin.token`, jkt: c.jkt }) + '\n');
    return runUntilSignal(() => c.close());
  },
};

/** `--config FILE` reads the deployment's controller section (src/deploy/config-flags.ts). */
export const command = withDeploymentConfig(base, controllerFlags);

function readPem(file: string, field: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (e) {
    throw commonError('VMTC_CONFIG_INVALID', { field, file, reason: (e as NodeJS.ErrnoException).code ?? (e as Error).message }, { message: `--${field}: cannot read ${file}` });
  }
}

function readJson(file: string, field: string): Record<string, never> {
  try {
    const v = JSON.parse(readFileSync(file, 'utf8')) as unknown;
    if (!v || typeof v !== 'object' || Array.isArray(v)) throw new Error('not a JSON object');
    return v as Record<string, never>;
  } catch (e) {
    throw commonError('VMTC_CONFIG_INVALID', { field, file, reason: (e as NodeJS.ErrnoException).code ?? (e as Error).message }, { message: `--${field}: cannot read ${file} as a JSON object` });
  }
}
