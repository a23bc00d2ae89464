// `vmtc init`: write one domain's whole configuration, keys and trust wired together
// (docs/deploy.md#vmtc-init), so that the services start from it in any order and work:
//   - the controller's requester key (controller/controller-key.json): its thumbprint is the AAA
//     policy's requester "controller";
//   - the CA that signs agents' certificates (controller/pki/): its fingerprint is in vmtc.json,
//     and agents enrolling with --config pin it;
//   - the AAA's signing key (aaa/aaa.db): its JWKS is the broker's trusted issuer;
//   - the AAA policy, the broker's topology and trust, and vmtc.json naming them, with the AAA's
//     and the broker's URLs the controller calls;
//   - with --tls, a CA and a server certificate for the controller's REST API (tls/).
// Keys already in the data directories are kept (an init with --force only rewrites the
// configuration), so re-running it never cuts off enrolled agents or issued tokens.
import { chmodSync, existsSync, mkdirSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { systemClock, randomIds } from '../common/clock.ts';
import { commonError } from '../common/errors.ts';
import { loadOrCreateCa, issueServerCert, writeAtomic } from '../common/pki.ts';
import { loadControllerKey } from '../controller/integrations.ts';
import { openAaaDb } from '../aaa/store.ts';
import { KeyStore } from '../aaa/keys.ts';
import { parsePolicy } from '../aaa/policy.ts';
import { parseTopology } from '../broker/topology.ts';
import { parseTrust } from '../broker/trust.ts';
import { deployError } from './errors.ts';
import { checkDeployment, type Deployment } from './schema.ts';

export const INIT_DEFAULTS = {
  sites: ['site-a', 'site-b'],
  listenHost: '127.0.0.1',
  servicesHost: '127.0.0.1',
  ports: { controller: 7700, agents: 7701, aaa: 7400, broker: 7500 },
  brokerDriver: 'memory',
  maxBandwidthMbps: 10_000,
  linkCapacityMbps: 10_000,
} as const;

export type PortName = keyof typeof INIT_DEFAULTS.ports;

export interface InitOptions {
  dir: string;
  domain: string;
  sites?: string[];
  /** Where the controller listens (REST API and agent hub): the address agents and operators reach. */
  listenHost?: string;
  /** The host name in the controller's URL, when it differs from listenHost (required for a wildcard). */
  advertiseHost?: string;
  /** Where the AAA and the broker listen; only the controller (and peer domains) call them. */
  servicesHost?: string;
  ports?: Partial<Record<PortName, number>>;
  /** Make a CA and a server certificate for the REST API (names: the hosts above plus these). */
  tls?: boolean;
  tlsNames?: string[];
  brokerDriver?: string;
  maxBandwidthMbps?: number;
  linkCapacityMbps?: number;
  force?: boolean;
}

export interface InitResult {
  file: string;
  deployment: Deployment;
  /** Each file written, relative to dir, with what it is. */
  wrote: { path: string; what: string }[];
  controllerJkt: string;
  agentCaFingerprint: string;
  aaaKid: string;
  tlsCaFile?: string;
}

/** Files of the configuration (as opposed to keys): their presence means "a deployment is here". */
const CONFIG_FILES = ['vmtc.json', 'aaa/policy.json', 'broker/topology.json', 'broker/trust.json'];

const hostPort = (host: string, port: number) => `${host.includes(':') ? `[${host}]` : host}:${port}`;
const isWildcard = (h: string) => h === '0.0.0.0' || h === '::' || h === '';

export function initDeployment(o: InitOptions): InitResult {
  const dir = resolve(o.dir);
  const sites = o.sites ?? [...INIT_DEFAULTS.sites];
  const ports = { ...INIT_DEFAULTS.ports, ...(o.ports ?? {}) };
  const listenHost = o.listenHost ?? INIT_DEFAULTS.listenHost;
  const servicesHost = o.servicesHost ?? INIT_DEFAULTS.servicesHost;
  const advertise = o.advertiseHost ?? listenHost;
  if (isWildcard(advertise)) throw deployInvalid('advertise-host', 'the controller listens on a wildcard address: say which name or address agents and operators reach it by');
  if (isWildcard(servicesHost)) throw deployInvalid('services-host', 'the AAA and the broker name their own URL in DPoP checks: give an address, not a wildcard');
  const existing = CONFIG_FILES.filter((f) => existsSync(join(dir, f)));
  if (existing.length && !o.force) throw deployError('VMTC_DEPLOY_EXISTS', { dir, files: existing });

  const wrote: InitResult['wrote'] = [];
  const ctlDir = join(dir, 'controller');
  const aaaDir = join(dir, 'aaa');
  const brokerDir = join(dir, 'broker');
  for (const d of [dir, ctlDir, aaaDir, brokerDir]) mkdirSync(d, { recursive: true, mode: 0o700 });
  const rel = (p: string) => relative(dir, p);
  const note = (p: string, what: string) => wrote.push({ path: rel(p), what });

  // Keys first (loaded when present), then the documents that name them.
  const { jkt } = loadControllerKey(ctlDir);
  note(join(ctlDir, 'controller-key.json'), `the controller's requester key (0600); thumbprint ${jkt} is the AAA policy's requester "controller"`);
  const agentCa = loadOrCreateCa(join(ctlDir, 'pki'));
  note(join(ctlDir, 'pki', 'ca.crt'), `the CA that signs agents' certificates (key beside it, 0600); sha256 ${agentCa.fingerprint}`);
  const db = openAaaDb(join(aaaDir, 'aaa.db'));
  let jwks: ReturnType<KeyStore['jwks']>;
  let kid: string;
  try {
    const keys = new KeyStore(db, systemClock, randomIds);
    jwks = keys.jwks();
    kid = keys.signing().kid;
  } finally {
    db.close();
  }
  // It holds the private signing key; the directory is 0700 already, the file need not be wider.
  chmodSync(join(aaaDir, 'aaa.db'), 0o600);
  note(join(aaaDir, 'aaa.db'), `the AAA's signing key ${kid}; its public key is the broker's trusted issuer aaa:${o.domain}`);

  let tls: Deployment['controller']['tls'];
  let tlsCaFile: string | undefined;
  if (o.tls) {
    const tlsDir = join(dir, 'tls');
    const ca = loadOrCreateCa(tlsDir, { commonName: `vmtc ${o.domain} REST API CA` });
    const names = [...new Set([advertise, ...(isWildcard(listenHost) ? [] : [listenHost]), ...(o.tlsNames ?? [])])];
    const server = issueServerCert(ca, { commonName: advertise, names });
    writeAtomic(join(tlsDir, 'controller.key'), server.keyPem, 0o600);
    writeAtomic(join(tlsDir, 'controller.crt'), server.certPem, 0o644);
    tls = { cert: 'tls/controller.crt', key: 'tls/controller.key', ca: 'tls/ca.crt' };
    tlsCaFile = join(tlsDir, 'ca.crt');
    note(tlsCaFile, 'the CA of the REST API certificate: what the CLI and agents trust (NODE_EXTRA_CA_CERTS)');
    note(join(tlsDir, 'controller.crt'), `the REST API's certificate (key beside it, 0600) for ${names.join(', ')}`);
  }

  const policy = {
    version: 1,
    domain: o.domain,
    sites: Object.fromEntries(sites.map((s) => [s, o.domain])),
    requesters: [{ id: 'controller', jkt }],
    rules: [{ id: 'controller-any', requesters: ['controller'], projects: '*', src: '*', dst: '*', maxBandwidthMbps: o.maxBandwidthMbps ?? INIT_DEFAULTS.maxBandwidthMbps }],
  };
  const links: { id: string; a: string; z: string; capacityMbps: number }[] = [];
  for (let i = 0; i < sites.length; i++) {
    for (let j = i + 1; j < sites.length; j++) links.push({ id: `${sites[i]}--${sites[j]}`, a: sites[i]!, z: sites[j]!, capacityMbps: o.linkCapacityMbps ?? INIT_DEFAULTS.linkCapacityMbps });
  }
  const topology = { domain: o.domain, nodes: sites.map((id) => ({ id })), links };
  const trust = { issuers: [{ iss: `aaa:${o.domain}`, jwks }] };
  const scheme = tls ? 'https' : 'http';
  const deployment: Deployment = {
    version: 1,
    domain: o.domain,
    sites,
    controller: {
      listen: hostPort(listenHost, ports.controller),
      agentListen: hostPort(listenHost, ports.agents),
      url: `${scheme}://${hostPort(advertise, ports.controller)}`,
      dataDir: 'controller',
      agentCaFingerprint: agentCa.fingerprint,
      ...(tls ? { tls } : {}),
    },
    aaa: { listen: hostPort(servicesHost, ports.aaa), url: `http://${hostPort(servicesHost, ports.aaa)}`, dataDir: 'aaa', policy: 'aaa/policy.json' },
    broker: {
      listen: hostPort(servicesHost, ports.broker), url: `http://${hostPort(servicesHost, ports.broker)}`, dataDir: 'broker',
      topology: 'broker/topology.json', trust: 'broker/trust.json', driver: o.brokerDriver ?? INIT_DEFAULTS.brokerDriver,
    },
  };
  // Everything is checked by the parsers the services themselves use before a file is written,
  // so a bad name or port fails here, naming the field, and not at a service's start.
  checkDeployment(deployment, join(dir, 'vmtc.json'));
  parsePolicy(policy, o.domain, 'aaa/policy.json');
  parseTopology(topology, o.domain);
  parseTrust(trust, brokerDir);

  const json = (v: unknown) => JSON.stringify(v, null, 2) + '\n';
  writeAtomic(join(aaaDir, 'policy.json'), json(policy), 0o644);
  note(join(aaaDir, 'policy.json'), `AAA policy: sites ${sites.join(', ')}; the controller may ask for up to ${policy.rules[0]!.maxBandwidthMbps} Mbit/s between any two`);
  writeAtomic(join(brokerDir, 'topology.json'), json(topology), 0o644);
  note(join(brokerDir, 'topology.json'), `broker topology: one node per site, ${links.length} link(s) of ${o.linkCapacityMbps ?? INIT_DEFAULTS.linkCapacityMbps} Mbit/s (edit to match the network)`);
  writeAtomic(join(brokerDir, 'trust.json'), json(trust), 0o644);
  note(join(brokerDir, 'trust.json'), `broker trust: tokens of aaa:${o.domain} signed by ${kid}`);
  const file = join(dir, 'vmtc.json');
  writeAtomic(file, json(deployment), 0o644);
  note(file, 'the deployment: every service\'s addresses, data and files (docs/deploy.md)');
  return { file, deployment, wrote, controllerJkt: jkt, agentCaFingerprint: agentCa.fingerprint, aaaKid: kid, ...(tlsCaFile ? { tlsCaFile } : {}) };
}

function deployInvalid(field: string, reason: string) {
  return commonError('VMTC_CONFIG_INVALID', { field, reason }, { message: `vmtc init: --${field}: ${reason}` });
}
