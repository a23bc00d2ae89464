// Where the client verbs find the controller and which credential they present: a config file
// (`$VMTC_CONFIG`, else `$XDG_CONFIG_HOME/vmtc/config`, else `~/.config/vmtc/config`), under the
// environment, under the flags (docs/cli.md#configuration). Pure but for reading files, so the
// precedence is tested without a controller.
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { UsageError } from './usage.ts';

export const DEFAULT_CONTROLLER = 'http://127.0.0.1:7700';

/** The keys a config file may hold (YAML or JSON; paths relative to the file). */
export const CONFIG_KEYS = ['controller', 'ca', 'token-file'] as const;
type ConfigKey = typeof CONFIG_KEYS[number];
export type ConfigFile = Partial<Record<ConfigKey, string>>;

export interface ClientConfig {
  /** Base URL without a trailing slash. */
  baseUrl: string;
  /** Bearer credential; undefined sends none (the API then answers VMTC_UNAUTHENTICATED). */
  token: string | undefined;
  /** PEM of the CA that signed an https controller's certificate. */
  ca?: string;
  /** Where each setting came from (flag, env, file or default), for messages. */
  from?: { controller: Source; token: Source | 'none'; ca?: Source };
}
export type Source = 'flag' | 'env' | 'file' | 'default';

export interface ClientFlags {
  controller?: string;
  tokenFile?: string;
  ca?: string;
}

/** The config file's path: `$VMTC_CONFIG` (which must exist), else the per-user default (optional). */
export function configPath(env: NodeJS.ProcessEnv, home: string = homedir()): { path: string; explicit: boolean } {
  if (env.VMTC_CONFIG) return { path: env.VMTC_CONFIG, explicit: true };
  const base = env.XDG_CONFIG_HOME && isAbsolute(env.XDG_CONFIG_HOME) ? env.XDG_CONFIG_HOME : join(home, '.config');
  return { path: join(base, 'vmtc', 'config'), explicit: false };
}

/** Read and check a config file; undefined when the default file does not exist. */
export function readConfigFile(path: string, explicit: boolean, home: string = homedir()): ConfigFile | undefined {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (!explicit && code === 'ENOENT') return undefined;
    throw new UsageError(`config file '${path}' cannot be read: ${code ?? (e as Error).message}`, { file: path, reason: code ?? null });
  }
  let doc: unknown;
  try {
    doc = parseYaml(text, { uniqueKeys: true, maxAliasCount: 0 });
  } catch (e) {
    throw new UsageError(`config file '${path}' is not valid YAML: ${(e as Error).message.split('\n')[0]}`, { file: path });
  }
  if (doc === null || doc === undefined) return {};
  if (typeof doc !== 'object' || Array.isArray(doc)) throw new UsageError(`config file '${path}' must be a mapping of ${CONFIG_KEYS.join(', ')}`, { file: path });
  const out: ConfigFile = {};
  for (const [k, v] of Object.entries(doc as Record<string, unknown>)) {
    if (!(CONFIG_KEYS as readonly string[]).includes(k)) {
      throw new UsageError(`config file '${path}': unknown key '${k}' (known: ${CONFIG_KEYS.join(', ')})`, { file: path, field: k });
    }
    if (typeof v !== 'string' || v.trim() === '') throw new UsageError(`config file '${path}': '${k}' must be a non-empty string`, { file: path, field: k });
    out[k as ConfigKey] = k === 'controller' ? v.trim() : filePath(v.trim(), dirname(path), home);
  }
  return out;
}

/** `~/x` from home, a relative path from the config file's folder. */
function filePath(p: string, dir: string, home: string): string {
  if (p === '~' || p.startsWith('~/')) return join(home, p.slice(1));
  return resolve(dir, p);
}

function readSecretFile(file: string, what: string): string {
  let text: string;
  try {
    text = readFileSync(file, 'utf8').trim();
  } catch (e) {
    throw new UsageError(`${what}: cannot read '${file}': ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, { field: what, file });
  }
  if (!text) throw new UsageError(`${what}: '${file}' is empty`, { field: what, file });
  return text;
}

/**
 * Each setting from the first of: flag, environment, config file, default.
 * - controller: `--controller` > `$VMTC_CONTROLLER` > file `controller` > http://127.0.0.1:7700
 * - credential: `--token-file` > `$VMTC_TOKEN_FILE` > `$VMTC_TOKEN` (the token itself) > file `token-file`
 * - CA: `--ca` > `$VMTC_CA` > file `ca` (none: the system's CAs, and `NODE_EXTRA_CA_CERTS`)
 */
export function resolveClientConfig(flags: ClientFlags, env: NodeJS.ProcessEnv = process.env, home: string = homedir()): ClientConfig {
  const where = configPath(env, home);
  const file = readConfigFile(where.path, where.explicit, home) ?? {};
  const pick = (flag: string | undefined, envName: string, key: ConfigKey): { value: string; from: Source } | undefined => {
    if (flag !== undefined) return { value: flag, from: 'flag' };
    if (env[envName]) return { value: env[envName]!, from: 'env' };
    if (file[key] !== undefined) return { value: file[key]!, from: 'file' };
    return undefined;
  };

  const c = pick(flags.controller, 'VMTC_CONTROLLER', 'controller') ?? { value: DEFAULT_CONTROLLER, from: 'default' as const };
  const label = c.from === 'file' ? `controller (in ${where.path})` : c.from === 'env' ? '$VMTC_CONTROLLER' : '--controller';
  let url: URL;
  try {
    url = new URL(c.value);
  } catch {
    throw new UsageError(`${label}: '${c.value}' is not a URL (e.g. http://127.0.0.1:7700)`, { field: 'controller', value: c.value });
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new UsageError(`${label}: '${c.value}' must be an http:// or https:// URL`, { field: 'controller', value: c.value });
  const baseUrl = url.toString().replace(/\/+$/, '');

  let token: string | undefined;
  let tokenFrom: Source | 'none' = 'none';
  if (flags.tokenFile !== undefined) { token = readSecretFile(flags.tokenFile, '--token-file'); tokenFrom = 'flag'; }
  else if (env.VMTC_TOKEN_FILE) { token = readSecretFile(env.VMTC_TOKEN_FILE, '$VMTC_TOKEN_FILE'); tokenFrom = 'env'; }
  else if (env.VMTC_TOKEN?.trim()) { token = env.VMTC_TOKEN.trim(); tokenFrom = 'env'; }
  else if (file['token-file'] !== undefined) { token = readSecretFile(file['token-file'], `token-file (in ${where.path})`); tokenFrom = 'file'; }

  const ca = pick(flags.ca, 'VMTC_CA', 'ca');
  if (!ca) return { baseUrl, token, from: { controller: c.from, token: tokenFrom } };
  return {
    baseUrl, token,
    ca: readSecretFile(ca.value, ca.from === 'flag' ? '--ca' : ca.from === 'env' ? '$VMTC_CA' : `ca (in ${where.path})`),
    from: { controller: c.from, token: tokenFrom, ca: ca.from },
  };
}
