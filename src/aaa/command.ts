// `vmtc aaa --listen HOST:PORT --data DIR --domain NAME --policy FILE`: run an AAA service until
// SIGINT/SIGTERM. The admin credential is printed as a path, never as a value.
import { join, resolve } from 'node:path';
import type { Command } from '../common/command.ts';
import { runUntilSignal, formatCliError } from '../common/command.ts';
import { parseListen } from '../common/http.ts';
import { commonError } from '../common/errors.ts';
import { createLogger } from '../common/log.ts';
import { AAA_DEFAULTS } from './options.ts';
import { startAaa } from './index.ts';
import { aaaFlags, withDeploymentConfig } from '../deploy/config-flags.ts';

function positiveInt(v: unknown, field: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) throw commonError('VMTC_CONFIG_INVALID', { field, value: v }, { message: `--${field} must be a positive integer` });
  return n;
}

const base: Command = {
  name: 'aaa',
  summary: 'run an AAA service: policy, capability tokens, peering, accounting',
  usage: [
    'vmtc aaa --listen 127.0.0.1:7400 --data /var/lib/vmtc/aaa --domain a --policy /etc/vmtc/aaa-policy.json',
    'Policy format, routes and error codes: docs/aaa.md. The admin bearer credential is written to DIR/admin.token.',
  ].join('\n'),
  options: {
    listen: { type: 'string', arg: 'HOST:PORT', default: '127.0.0.1:7400', help: 'address to listen on' },
    data: { type: 'string', arg: 'DIR', required: true, help: 'state directory (aaa.db, admin.token)' },
    domain: { type: 'string', arg: 'NAME', required: true, help: 'this AAA\'s domain; tokens are issued by "aaa:NAME"' },
    policy: { type: 'string', arg: 'FILE', required: true, help: 'policy file (JSON, see docs/aaa.md)' },
    'token-lifetime': { type: 'string', arg: 'SECONDS', help: `capability token lifetime (default ${AAA_DEFAULTS.tokenLifetimeSec}, or the policy's tokenLifetimeSec)` },
    'peer-timeout': { type: 'string', arg: 'MS', default: String(AAA_DEFAULTS.peerTimeoutMs), help: 'timeout of a consent request to a peer AAA' },
    'public-url': { type: 'string', arg: 'URL', help: 'base URL clients use, which their DPoP proofs name (default: http://HOST:PORT of --listen)' },
    'log-level': { type: 'string', arg: 'LEVEL', default: 'info', help: 'pino log level' },
  },
  async run(o) {
    const { host, port } = parseListen(o.listen as string, 'listen');
    const dataDir = resolve(o.data as string);
    const lifetime = positiveInt(o['token-lifetime'], 'token-lifetime');
    const aaa = await startAaa({
      host,
      port,
      dataDir,
      domain: o.domain as string,
      policyFile: resolve(o.policy as string),
      logger: createLogger({ svc: 'aaa', level: o['log-level'] as string }),
      peerTimeoutMs: positiveInt(o['peer-timeout'], 'peer-timeout')!,
      ...(lifetime !== undefined ? { tokenLifetimeSec: lifetime } : {}),
      ...(o['public-url'] !== undefined ? { publicUrl: o['public-url'] as string } : {}),
    });
    process.stderr.write(`vmtc aaa: ${aaa.issuer} listening on ${aaa.url} (admin credential in ${join(dataDir, 'admin.token')})\n`);
    // One JSON line when ready, like every vmtc service (scripts and the lab wait for it).
    process.stdout.write(JSON.stringify({ event: 'ready', svc: 'aaa', url: aaa.url, issuer: aaa.issuer }) + '\n');
    // SIGHUP reloads the policy file (e.g. to pin a peer's new key after it rotated); a bad file
    // is reported and the policy in force stays.
    const onHup = () => {
      try {
        aaa.reloadPolicy();
        process.stderr.write('vmtc aaa: policy reloaded\n');
      } catch (e) {
        process.stderr.write(`vmtc aaa: policy not reloaded: ${formatCliError(e)}\n`);
      }
    };
    process.on('SIGHUP', onHup);
    return runUntilSignal(async () => {
      process.off('SIGHUP', onHup);
      await aaa.close();
    });
  },
};

/** `--config FILE` reads the deployment's aaa section (src/deploy/config-flags.ts). */
export const command = withDeploymentConfig(base, aaaFlags);
