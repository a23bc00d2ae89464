// Where the client verbs find the controller, the credential and the CA: config file < environment
// < flags, each setting on its own; the file's paths relative to it; its mistakes are usage
// errors naming the file and key. Real files in a temp dir, no controller.
import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { configPath, resolveClientConfig } from '../../src/cli/client/config.ts';
import { UsageError } from '../../src/cli/client/usage.ts';

let dir: string;
let home: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'vmtc-cfg-'));
  home = join(dir, 'home');
  mkdirSync(join(home, '.config', 'vmtc'), { recursive: true });
  writeFileSync(join(dir, 'file.token'), 'tok-file\n');
  writeFileSync(join(dir, 'env.token'), 'tok-env-file\n');
  writeFileSync(join(dir, 'flag.token'), 'tok-flag\n');
  writeFileSync(join(dir, 'ca.pem'), 'CA FROM FILE');
  writeFileSync(join(dir, 'env-ca.pem'), 'CA FROM ENV');
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

const writeConfig = (text: string, path = join(home, '.config', 'vmtc', 'config')) => { writeFileSync(path, text); return path; };

describe('client configuration', () => {
  it('without a file, environment or flags: the local controller, no credential', () => {
    expect(resolveClientConfig({}, {}, home)).toEqual({ baseUrl: 'http://127.0.0.1:7700', token: undefined, from: { controller: 'default', token: 'none' } });
  });

  it('the per-user file gives everything; the environment overrides it; flags override both', () => {
    writeConfig(`controller: https://file.example:7700\ntoken-file: ${join(dir, 'file.token')}\nca: ${join(dir, 'ca.pem')}\n`);
    const fromFile = resolveClientConfig({}, {}, home);
    expect(fromFile).toMatchObject({ baseUrl: 'https://file.example:7700', token: 'tok-file', ca: 'CA FROM FILE', from: { controller: 'file', token: 'file', ca: 'file' } });

    const env = { VMTC_CONTROLLER: 'http://env.example:1', VMTC_TOKEN_FILE: join(dir, 'env.token'), VMTC_CA: join(dir, 'env-ca.pem') };
    expect(resolveClientConfig({}, env, home)).toMatchObject({ baseUrl: 'http://env.example:1', token: 'tok-env-file', ca: 'CA FROM ENV', from: { controller: 'env', token: 'env', ca: 'env' } });
    // $VMTC_TOKEN (the token itself) is environment too: above the file's token-file.
    expect(resolveClientConfig({}, { VMTC_TOKEN: 'tok-env' }, home).token).toBe('tok-env');

    const flags = { controller: 'http://flag.example:2', tokenFile: join(dir, 'flag.token'), ca: join(dir, 'ca.pem') };
    expect(resolveClientConfig(flags, env, home)).toMatchObject({ baseUrl: 'http://flag.example:2', token: 'tok-flag', ca: 'CA FROM FILE', from: { controller: 'flag', token: 'flag', ca: 'flag' } });
    // Each setting on its own: a flag for one leaves the others to the environment or the file.
    expect(resolveClientConfig({ controller: 'http://flag.example:2' }, { VMTC_TOKEN: 'tok-env' }, home)).toMatchObject({ baseUrl: 'http://flag.example:2', token: 'tok-env', ca: 'CA FROM FILE' });
  });

  it('$VMTC_CONFIG names the file (YAML or JSON); its relative paths are from its folder, ~ from home', () => {
    mkdirSync(join(dir, 'etc'));
    writeFileSync(join(dir, 'etc', 'token'), 'tok-rel');
    const path = writeConfig(JSON.stringify({ controller: 'http://json.example:3', 'token-file': 'token' }), join(dir, 'etc', 'vmtc.json'));
    expect(resolveClientConfig({}, { VMTC_CONFIG: path }, home)).toMatchObject({ baseUrl: 'http://json.example:3', token: 'tok-rel' });
    writeFileSync(join(home, 'my.token'), 'tok-home');
    writeConfig('token-file: ~/my.token\n');
    expect(resolveClientConfig({}, {}, home).token).toBe('tok-home');
    expect(configPath({ XDG_CONFIG_HOME: '/x/cfg' }, home).path).toBe('/x/cfg/vmtc/config');
    expect(configPath({}, home)).toEqual({ path: join(home, '.config', 'vmtc', 'config'), explicit: false });
  });

  it('mistakes are usage errors naming the file and key: unknown key, bad type, bad YAML, a missing $VMTC_CONFIG, a bad URL', () => {
    const refused = (env: NodeJS.ProcessEnv, text?: string) => {
      if (text !== undefined) writeConfig(text);
      try {
        resolveClientConfig({}, env, home);
      } catch (e) {
        expect(e).toBeInstanceOf(UsageError);
        expect((e as UsageError).code).toBe('VMTC_CONFIG_INVALID');
        return (e as Error).message;
      }
      throw new Error('accepted');
    };
    expect(refused({}, 'controler: http://x\n')).toMatch(/unknown key 'controler' \(known: controller, ca, token-file\)/);
    expect(refused({}, 'controller: 7700\n')).toMatch(/'controller' must be a non-empty string/);
    expect(refused({}, 'controller: [\n')).toMatch(/is not valid YAML/);
    expect(refused({}, 'controller: a\ncontroller: b\n')).toMatch(/is not valid YAML/);
    expect(refused({}, '- a\n')).toMatch(/must be a mapping/);
    expect(refused({}, 'controller: ftp://x\n')).toMatch(/controller \(in .*config\): 'ftp:\/\/x' must be an http/);
    expect(refused({}, `token-file: ${join(dir, 'nope')}\n`)).toMatch(/token-file \(in .*\): cannot read .*ENOENT/);
    expect(refused({ VMTC_CONFIG: join(dir, 'absent') })).toMatch(/cannot be read: ENOENT/);
    // The env's bad URL is named as the env's, not the file's.
    expect(refused({ VMTC_CONTROLLER: 'not a url' }, '')).toMatch(/^\$VMTC_CONTROLLER: 'not a url' is not a URL/);
  });
});
