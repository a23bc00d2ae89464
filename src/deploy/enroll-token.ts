// `vmtc enroll-token --host HOST_ID`: mint a one-time enrolment token for an agent through the
// controller's API (POST /v1/enrollment-tokens, admin), so an operator never needs curl
// (docs/deploy.md#agents). With --config the controller's URL, the CA its REST API's certificate
// chains to and the admin credential (DATA/admin.token) come from the deployment.
import { join } from 'node:path';
import { formatCliError, type Command } from '../common/command.ts';
import { commonError } from '../common/errors.ts';
import { JsonClient } from '../common/http-client.ts';
import { UsageError, resolveClientConfig } from '../cli/client/http.ts';
import type { Static } from '../common/schemas.ts';
import type { EnrollToken, EnrollTokenBody as EnrollTokenBodySchema } from '../controller/schemas.ts';

type EnrollTokenBody = Static<typeof EnrollTokenBodySchema>;
import { loadDeployment } from './schema.ts';

export const enrollToken: Command = {
  name: 'enroll-token',
  summary: 'mint a one-time enrolment token for a host or tunnel agent (through the controller API)',
  usage: [
    'vmtc enroll-token --config /etc/vmtc/vmtc.json --host ams-1',
    'Prints the token alone on stdout (TOKEN=$(vmtc enroll-token …)); -o json adds hostId, kind, expiresAt, caFingerprint and the controller URL.',
    'Without --config: --controller (or $VMTC_CONTROLLER) and an admin credential in --token-file ($VMTC_TOKEN_FILE, $VMTC_TOKEN).',
  ].join('\n'),
  options: {
    host: { type: 'string', arg: 'HOST_ID', required: true, help: 'the host id the agent will have (its certificate CN)' },
    kind: { type: 'string', arg: 'host|tunnel', default: 'host', help: 'kind of agent' },
    ttl: { type: 'string', arg: 'SECONDS', help: 'how long the token stays usable (default: the controller\'s, 1 hour)' },
    config: { type: 'string', arg: 'FILE', help: 'deployment file: the controller URL, its TLS CA and DATA/admin.token' },
    controller: { type: 'string', arg: 'URL', help: 'base URL of the controller (overrides --config)' },
    'token-file': { type: 'string', arg: 'FILE', help: 'admin credential (overrides --config)' },
    ca: { type: 'string', arg: 'FILE', help: "PEM of the CA of an https controller (overrides --config's controller.tls.ca)" },
    output: { type: 'string', short: 'o', arg: 'text|json', default: 'text', help: 'output format' },
  },
  async run(o) {
    let request: { url: string; token: string | undefined; ca?: string; body: EnrollTokenBody; json: boolean };
    try {
      request = resolveRequest(o);
    } catch (e) {
      if (!(e instanceof UsageError)) throw e;
      process.stderr.write(`${formatCliError(commonError('VMTC_CONFIG_INVALID', { reason: e.message }, { message: e.message }))}\nsee 'vmtc enroll-token --help'\n`);
      return 2;
    }
    const { url, token, ca, body, json } = request;
    const client = new JsonClient({ baseUrl: url, ...(ca ? { tls: { ca } } : {}), headers: (): Record<string, string> => (token ? { authorization: `Bearer ${token}` } : {}) });
    const t = await client.post<EnrollToken>('/v1/enrollment-tokens', body);
    if (json) {
      process.stdout.write(JSON.stringify({ ...t, controllerUrl: url }) + '\n');
    } else {
      process.stdout.write(t.token + '\n');
      process.stderr.write(`one-time ${t.kind} token for ${t.hostId}, valid until ${t.expiresAt}; controller CA sha256 ${t.caFingerprint}\n`
        + `on the ${t.kind === 'host' ? 'host' : 'tunnel headend'}: vmtc ${t.kind === 'host' ? 'agent' : 'tunnel'} --controller ${url} --ca-fingerprint ${t.caFingerprint} --enroll TOKEN --data DIR …\n`);
    }
    return 0;
  },
};

function resolveRequest(o: Record<string, unknown>) {
  const kind = o.kind as string;
  if (kind !== 'host' && kind !== 'tunnel') throw new UsageError(`--kind: '${kind}' must be host or tunnel`);
  const output = o.output as string;
  if (output !== 'text' && output !== 'json') throw new UsageError(`-o: '${output}' must be text or json`);
  let ttlSeconds: number | undefined;
  if (o.ttl !== undefined) {
    ttlSeconds = Number(o.ttl);
    if (!/^\d+$/.test(String(o.ttl)) || ttlSeconds < 1 || ttlSeconds > 30 * 86400) throw new UsageError(`--ttl: '${String(o.ttl)}' must be a whole number of seconds from 1 to 2592000`);
  }
  const d = typeof o.config === 'string' ? loadDeployment(o.config) : undefined;
  const controller = (o.controller as string | undefined) ?? d?.doc.controller.url;
  const tokenFile = (o['token-file'] as string | undefined) ?? (d ? join(d.path(d.doc.controller.dataDir), 'admin.token') : undefined);
  const caFile = (o.ca as string | undefined) ?? (d?.doc.controller.tls?.ca !== undefined ? d.path(d.doc.controller.tls.ca) : undefined);
  // The client verbs' own resolution (flags, then $VMTC_CONTROLLER, $VMTC_TOKEN_FILE, $VMTC_CA
  // and the client config file; docs/cli.md), with the deployment's values as flags.
  const cfg = resolveClientConfig({ ...(controller ? { controller } : {}), ...(tokenFile ? { tokenFile } : {}), ...(caFile ? { ca: caFile } : {}) });
  const ca = cfg.ca;
  const body: EnrollTokenBody = { kind, hostId: o.host as string, ...(ttlSeconds !== undefined ? { ttlSeconds } : {}) };
  return { url: cfg.baseUrl, token: cfg.token, ...(ca ? { ca } : {}), body, json: output === 'json' };
}
