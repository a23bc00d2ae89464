// The deployment file (`vmtc.json`, docs/deploy.md#the-deployment-file): one domain's controller,
// AAA and broker, where each listens and is reached, where each keeps its state, and the
// service files it reads (the AAA policy, the broker's topology and trust). `vmtc init` writes
// it with keys and trust wired together; `vmtc up` and every service's `--config` read it.
// Declared once with TypeBox: the same object is the check and, through Static<>, the type.
// Relative paths are relative to the directory of the file, so a deployment can be moved whole.
import { readFileSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import { Compile } from 'typebox/compile';
import { Type, type Static } from '../common/schemas.ts';
import { commonError } from '../common/errors.ts';
import { parseListen } from '../common/listen.ts';

const HostPort = Type.String({ minLength: 3, maxLength: 300, description: 'HOST:PORT to listen on ([::1]:PORT for IPv6)' });
const Url = Type.String({ pattern: '^https?://[^\\s/]+(/[^\\s]*)?$', maxLength: 2000, description: 'http(s)://HOST:PORT[/prefix]: how the others reach the service' });
const Path = Type.String({ minLength: 1, maxLength: 4096, description: 'a file or directory; relative to the directory of this file' });
const Name = Type.String({ pattern: '^[A-Za-z0-9._-]{1,64}$', description: 'letters, digits, ".", "_", "-" (at most 64)' });
const Site = Type.String({ pattern: '^[A-Za-z0-9_.:-]{1,64}$', description: 'a site: an AAA policy site and a broker topology node' });
const LogLevel = Type.Union(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].map((l) => Type.Literal(l)));

export const ControllerSection = Type.Object({
  listen: HostPort,
  agentListen: HostPort,
  url: Url,
  dataDir: Path,
  /** sha256 of DATA/pki/ca.crt, the CA that signs agents' certificates: agents pin it at enrolment. */
  agentCaFingerprint: Type.String({ pattern: '^([0-9A-Fa-f]{2}:){31}[0-9A-Fa-f]{2}$', description: "sha256 of the agents' CA (dataDir/pki/ca.crt), as AB:CD:…; agents enrolling with --config check it" }),
  heartbeatMs: Type.Optional(Type.Integer({ minimum: 100, maximum: 600_000 })),
  tls: Type.Optional(Type.Object({
    cert: Path,
    key: Path,
    ca: Type.Optional(Path),
  }, { additionalProperties: false, description: "TLS of the REST API: server certificate and key (PEM); ca = what clients trust (vmtc enroll-token reads it)" })),
  brokerCa: Type.Optional(Path),
  logLevel: Type.Optional(LogLevel),
}, { additionalProperties: false });

export const AaaSection = Type.Object({
  listen: HostPort,
  url: Url,
  dataDir: Path,
  policy: Path,
  tokenLifetimeSec: Type.Optional(Type.Integer({ minimum: 1, maximum: 86_400 })),
  logLevel: Type.Optional(LogLevel),
}, { additionalProperties: false });

export const BrokerSection = Type.Object({
  listen: HostPort,
  url: Url,
  dataDir: Path,
  topology: Path,
  trust: Path,
  driver: Type.String({ pattern: '^[A-Za-z0-9_-]{1,64}$', description: 'a registered network element driver: memory (test double), linux, lab-lightpath' }),
  holdTimeoutSec: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 86_400 })),
}, { additionalProperties: false });

export const DeploymentSchema = Type.Object({
  version: Type.Literal(1),
  domain: Name,
  sites: Type.Array(Site, { minItems: 1, maxItems: 256 }),
  controller: ControllerSection,
  aaa: AaaSection,
  broker: BrokerSection,
}, { additionalProperties: false });

export type Deployment = Static<typeof DeploymentSchema>;

/** A deployment read from its file, paths made absolute. */
export interface LoadedDeployment {
  file: string;
  /** The directory relative paths are resolved against. */
  dir: string;
  doc: Deployment;
  /** Absolute path of a path field of the file. */
  path(p: string): string;
}

const compiled = Compile(DeploymentSchema);

/** "/controller/tls/cert" -> "controller.tls.cert"; "/sites/2" -> "sites[2]". */
export function fieldOf(pointer: string): string {
  let out = '';
  for (const part of pointer.split('/').slice(1)) {
    const p = part.replace(/~1/g, '/').replace(/~0/g, '~');
    out += /^\d+$/.test(p) ? `[${p}]` : out ? `.${p}` : p;
  }
  return out;
}

/**
 * Check a parsed deployment document; the first problem is VMTC_CONFIG_INVALID with
 * `details.field` naming the field (dotted, `sites[1]`) and `details.reason`.
 */
export function checkDeployment(doc: unknown, file = 'vmtc.json'): Deployment {
  if (!compiled.Check(doc)) {
    const errors = [...compiled.Errors(doc)];
    // An unknown field is reported at the field itself (TypeBox reports it twice: at the field,
    // "schema is false", and at its object); a missing one is named from the object's list.
    const e = errors.find((x) => x.keyword !== 'additionalProperties') ?? errors[0];
    let field = e ? fieldOf(e.instancePath) : '';
    let reason = e?.message ?? 'does not match the schema';
    if (e?.keyword === 'boolean') reason = 'unknown field';
    if (e?.keyword === 'required') {
      const missing = (e.params as { requiredProperties?: string[] }).requiredProperties ?? [];
      field = [field, missing[0]].filter(Boolean).join('.');
      reason = 'required';
    }
    throw invalid(file, field || '(root)', reason);
  }
  const d = doc as Deployment;
  for (const [field, v] of [['controller.listen', d.controller.listen], ['controller.agentListen', d.controller.agentListen], ['aaa.listen', d.aaa.listen], ['broker.listen', d.broker.listen]] as const) {
    try {
      parseListen(v, field);
    } catch {
      throw invalid(file, field, 'must be HOST:PORT with a port from 0 to 65535');
    }
  }
  const seen = new Set<string>();
  d.sites.forEach((s, i) => {
    if (seen.has(s)) throw invalid(file, `sites[${i}]`, `site "${s}" is listed twice`);
    seen.add(s);
  });
  for (const [field, v] of [['controller.url', d.controller.url], ['aaa.url', d.aaa.url], ['broker.url', d.broker.url]] as const) {
    try {
      new URL(v);
    } catch {
      throw invalid(file, field, 'not a URL');
    }
  }
  if (d.controller.tls && !d.controller.url.startsWith('https://')) throw invalid(file, 'controller.url', 'the REST API has tls: the URL must be https://');
  if (!d.controller.tls && d.controller.url.startsWith('https://')) throw invalid(file, 'controller.tls', 'the URL is https:// but the REST API has no tls (cert and key)');
  return d;
}

function invalid(file: string, field: string, reason: string) {
  return commonError('VMTC_CONFIG_INVALID', { file, field, reason }, { message: `${file}: ${field}: ${reason}` });
}

/** Read, parse and check a deployment file. */
export function loadDeployment(file: string): LoadedDeployment {
  const abs = resolve(file);
  let text: string;
  try {
    text = readFileSync(abs, 'utf8');
  } catch (e) {
    throw commonError('VMTC_CONFIG_INVALID', { file: abs, field: 'config', reason: (e as NodeJS.ErrnoException).code ?? (e as Error).message }, { message: `cannot read the deployment file ${abs}` });
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw invalid(abs, '(root)', `not JSON: ${(e as Error).message}`);
  }
  const dir = dirname(abs);
  return { file: abs, dir, doc: checkDeployment(doc, abs), path: (p) => (isAbsolute(p) ? p : resolve(dir, p)) };
}
