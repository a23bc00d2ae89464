// `vmtc init`: the command around initDeployment (init.ts): parse the flags, write, and say what
// was written and what to run next (docs/deploy.md#vmtc-init).
import { dirname, resolve } from 'node:path';
import type { Command } from '../common/command.ts';
import { commonError } from '../common/errors.ts';
import { INIT_DEFAULTS, initDeployment, type InitResult, type PortName } from './init.ts';

const PORT_NAMES = Object.keys(INIT_DEFAULTS.ports) as PortName[];

/** "controller=7700,aaa=7400" -> { controller: 7700, aaa: 7400 }; every name and port checked. */
export function parsePorts(v: string): Partial<Record<PortName, number>> {
  const out: Partial<Record<PortName, number>> = {};
  for (const part of v.split(',').map((s) => s.trim()).filter(Boolean)) {
    const m = /^([a-z]+)=(\d{1,5})$/.exec(part);
    const name = m?.[1] as PortName | undefined;
    const port = Number(m?.[2]);
    if (!m || !name || !PORT_NAMES.includes(name) || !(port >= 1 && port <= 65535)) {
      throw commonError('VMTC_CONFIG_INVALID', { field: 'ports', value: part, expected: `${PORT_NAMES.join('|')}=PORT (1-65535)` }, { message: `--ports: '${part}' is not NAME=PORT with NAME one of ${PORT_NAMES.join(', ')}` });
    }
    out[name] = port;
  }
  return out;
}

function list(v: unknown): string[] | undefined {
  return typeof v === 'string' ? v.split(',').map((s) => s.trim()).filter(Boolean) : undefined;
}

function positive(v: unknown, field: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) throw commonError('VMTC_CONFIG_INVALID', { field, value: v }, { message: `--${field} must be a positive integer` });
  return n;
}

/** The human summary: what was written, then the commands to run next. */
export function initSummary(r: InitResult): string {
  const d = r.deployment;
  const cfg = r.file;
  const width = Math.max(...r.wrote.map((w) => w.path.length)) + 2;
  const ca = r.tlsCaFile ? `NODE_EXTRA_CA_CERTS=${r.tlsCaFile} ` : '';
  const lines = [
    `vmtc init: domain ${d.domain}, sites ${d.sites.join(', ')}`,
    '',
    'wrote:',
    ...r.wrote.map((w) => `  ${w.path.padEnd(width)}${w.what}`),
    '',
    `controller ${d.controller.url} (agents: wss://${d.controller.agentListen}), AAA ${d.aaa.url}, broker ${d.broker.url} (driver ${d.broker.driver}${d.broker.driver === 'memory' ? ': a test double that touches no network element; docs/broker.md#drivers' : ''})`,
    '',
    'next:',
    `  vmtc up --config ${cfg}                     # all three services on this machine`,
    `  #   or, one per machine: vmtc aaa --config ${cfg}; vmtc broker --config ${cfg}; vmtc controller --config ${cfg}`,
    `  vmtc enroll-token --config ${cfg} --host HOST_ID`,
    `  ${ca}vmtc agent --config ${cfg} --enroll TOKEN --data /var/lib/vmtc/agent --site ${d.sites[0]} --migration-address IP`,
    `  ${ca}vmtc hosts --controller ${d.controller.url} --token-file ${resolve(dirname(cfg), d.controller.dataDir, 'admin.token')}     # written at the controller's first start`,
  ];
  return lines.join('\n');
}

export const init: Command = {
  name: 'init',
  summary: "write a domain's whole configuration (vmtc.json, keys, trust, AAA policy, broker topology) wired together",
  usage: [
    'vmtc init --dir /etc/vmtc --domain a --sites amsterdam,san-diego [--listen-host 10.0.0.1] [--tls]',
    'Refuses to overwrite a deployment (VMTC_DEPLOY_EXISTS) unless --force, which rewrites the configuration and keeps the keys. docs/deploy.md.',
  ].join('\n'),
  options: {
    dir: { type: 'string', arg: 'DIR', required: true, help: 'directory of the deployment: vmtc.json and the services\' data directories' },
    domain: { type: 'string', arg: 'NAME', required: true, help: 'the domain: AAA issuer aaa:NAME, broker audience broker:NAME' },
    sites: { type: 'string', arg: 'A,B,…', default: INIT_DEFAULTS.sites.join(','), help: 'the sites hosts are in (AAA policy sites, broker topology nodes)' },
    'listen-host': { type: 'string', arg: 'HOST', default: INIT_DEFAULTS.listenHost, help: "the controller's address (REST API and agent hub)" },
    'advertise-host': { type: 'string', arg: 'HOST', help: "name or address in the controller's URL (default: --listen-host; required with a wildcard)" },
    'services-host': { type: 'string', arg: 'HOST', default: INIT_DEFAULTS.servicesHost, help: 'the address of the AAA and the broker (only the controller calls them)' },
    ports: { type: 'string', arg: 'NAME=PORT,…', help: `override ports: ${PORT_NAMES.map((n) => `${n}=${INIT_DEFAULTS.ports[n]}`).join(',')}` },
    tls: { type: 'boolean', help: 'make a CA and a certificate for the REST API (https)' },
    'tls-names': { type: 'string', arg: 'NAME,…', help: 'more DNS names or addresses for the REST API certificate' },
    'broker-driver': { type: 'string', arg: 'NAME', default: INIT_DEFAULTS.brokerDriver, help: 'network element driver of the broker (memory is a test double)' },
    'max-bandwidth-mbps': { type: 'string', arg: 'N', default: String(INIT_DEFAULTS.maxBandwidthMbps), help: 'largest lightpath the AAA policy grants the controller' },
    'link-mbps': { type: 'string', arg: 'N', default: String(INIT_DEFAULTS.linkCapacityMbps), help: 'capacity of each link of the starter topology' },
    force: { type: 'boolean', help: 'rewrite an existing deployment\'s configuration (keys are kept)' },
    output: { type: 'string', short: 'o', arg: 'text|json', default: 'text', help: 'output format' },
  },
  async run(o) {
    const output = o.output as string;
    if (output !== 'text' && output !== 'json') throw commonError('VMTC_CONFIG_INVALID', { field: 'output', value: output }, { message: '-o must be text or json' });
    const r = initDeployment({
      dir: o.dir as string,
      domain: o.domain as string,
      sites: list(o.sites)!,
      listenHost: o['listen-host'] as string,
      servicesHost: o['services-host'] as string,
      ...(o['advertise-host'] ? { advertiseHost: o['advertise-host'] as string } : {}),
      ...(o.ports ? { ports: parsePorts(o.ports as string) } : {}),
      tls: o.tls === true,
      ...(o['tls-names'] ? { tlsNames: list(o['tls-names'])! } : {}),
      brokerDriver: o['broker-driver'] as string,
      maxBandwidthMbps: positive(o['max-bandwidth-mbps'], 'max-bandwidth-mbps')!,
      linkCapacityMbps: positive(o['link-mbps'], 'link-mbps')!,
      force: o.force === true,
    });
    process.stdout.write(output === 'json' ? JSON.stringify({ file: r.file, deployment: r.deployment, wrote: r.wrote, controllerJkt: r.controllerJkt, agentCaFingerprint: r.agentCaFingerprint, aaaKid: r.aaaKid, ...(r.tlsCaFile ? { tlsCaFile: r.tlsCaFile } : {}) }) + '\n' : initSummary(r) + '\n');
    return 0;
  },
};
