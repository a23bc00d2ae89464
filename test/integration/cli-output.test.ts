// The client verbs as a person or a script uses them, as real processes against a real
// controller with DoubleDriver host agents (the hypervisor test double): output formats
// (-o json|yaml|wide), `vmtc help VERB`, `vmtc version`, shell completion scripts that the shells
// accept and that complete, the config file under the environment under the flags, and a bad
// flag said once.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { startHarness, vmSpec, type Harness } from '../helpers/controller-harness.ts';
import { cleanupsAfterEach } from '../helpers/cleanups.ts';
import { cliEnv, runCli } from '../helpers/cli-run.ts';
import { freePort } from '../helpers/proc.ts';

const cleanups = cleanupsAfterEach();
let h: Harness | undefined;
let tmp: string | undefined;

beforeAll(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'vmtc-cli-out-'));
  h = await startHarness();
  await h.addHost('A', { vms: [vmSpec('vm1'), vmSpec('vm2')] });
  await h.addHost('B');
  // Two migrations to list.
  for (const vmId of ['vm1', 'vm2']) {
    const r = await h.api('POST', '/v1/migrations', { vmId, destinationHostId: 'B' });
    await h.waitState(r.body.id, ['completed']);
  }
});
afterAll(async () => {
  await h?.close();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

const env = (extra: Record<string, string | undefined> = {}) => cliEnv({ url: h!.controller.url, token: h!.controller.adminToken }, extra);
const run = (args: string[], extra?: Record<string, string | undefined>) => runCli(args, env(extra), cleanups);

describe('output formats', () => {
  it('-o json and -o yaml print what the API answers; --json is -o json', async () => {
    for (const [args, path] of [[['status'], '/v1/migrations'], [['hosts'], '/v1/hosts'], [['vms'], '/v1/vms'], [['hosts', 'A'], '/v1/hosts/A']] as const) {
      const api = (await h!.api('GET', path)).body;
      const j = await run([...args, '-o', 'json']);
      expect(j.code).toBe(0);
      const y = await run([...args, '-o', 'yaml']);
      expect(y.code).toBe(0);
      // Hosts' lastSeen moves between two reads; compare the rest.
      const stable = (v: any) => JSON.parse(JSON.stringify(v, (k, x) => (k === 'lastSeen' ? undefined : x)));
      expect(stable(JSON.parse(j.stdout))).toEqual(stable(api));
      expect(stable(parseYaml(y.stdout))).toEqual(stable(api));
      expect(y.stdout.trimStart()).not.toMatch(/^\{/);
    }
    const both = await run(['vms', '--json', '-o', 'json']);
    expect(both.code).toBe(0);
    const conflict = await run(['vms', '--json', '-o', 'yaml']);
    expect(conflict.code).toBe(2);
    expect(conflict.stderr).toMatch(/^error VMTC_CONFIG_INVALID: vmtc vms: --json and --output \(-o\) yaml ask for different outputs$/m);
    const bad = await run(['vms', '-o', 'xml']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/--output: 'xml' must be one of json, yaml, wide/);
    // A refusal in yaml is the error body in yaml.
    const nf = await run(['hosts', 'ZZ', '-o', 'yaml']);
    expect(nf.code).toBe(1);
    expect(parseYaml(nf.stdout)).toMatchObject({ code: 'VMTC_HOST_NOT_FOUND' });
  });

  it('-o wide adds columns to the lists, each row as many fields as the header', async () => {
    for (const [verb, extra] of [['status', ['PATH', 'PROJECT', 'TRANSFERRED', 'DOWNTIME', 'UPDATED']], ['hosts', ['CPU', 'STORAGE', 'MIGRATION ADDRESS', 'ADVISORIES', 'LAST SEEN']], ['vms', ['SITE', 'DISK GB']]] as const) {
      const narrow = await run([verb]);
      const wide = await run([verb, '-o', 'wide']);
      expect(wide.code).toBe(0);
      const header = wide.stdout.split('\n')[0]!.split(/\s{2,}/);
      expect(header.slice(-extra.length)).toEqual(extra);
      expect(header.slice(0, -extra.length)).toEqual(narrow.stdout.split('\n')[0]!.split(/\s{2,}/));
      const rows = wide.stdout.trim().split('\n').slice(1).filter((l) => !l.startsWith('('));
      expect(rows.length).toBeGreaterThan(0);
      for (const r of rows) expect(r.split(/\s{2,}/)).toHaveLength(header.length);
    }
  });

  it('status --limit 1 shows one page and says there is more; --all follows the cursors', async () => {
    const one = await run(['status', '--limit', '1']);
    expect(one.code).toBe(0);
    expect(one.stdout.trim().split('\n')).toHaveLength(2);
    expect(one.stderr).toContain('(more migrations: --all lists every page');
    const all = await run(['status', '--all', '--limit', '1', '-o', 'json']);
    expect(all.code).toBe(0);
    expect(JSON.parse(all.stdout).migrations.map((m: any) => m.vmId).sort()).toEqual(['vm1', 'vm2']);
    const two = await run(['status', '--state', 'completed,cancelled', '--host', 'A', '-o', 'json']);
    expect(two.code).toBe(0);
    expect(JSON.parse(two.stdout).migrations).toHaveLength(2);
  });
});

describe('help, version, completion', () => {
  it('vmtc help VERB is the verb\'s own help (not the global one); an unknown verb exits 2', async () => {
    const help = await run(['help', 'migrate']);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/^vmtc migrate VM_ID \[options\]/);
    expect(help.stdout).toContain('--to HOST_ID');
    expect(help.stdout).not.toContain('commands:');
    expect(help.stdout).toBe((await run(['migrate', '--help'])).stdout);
    const unknown = await run(['help', 'nope']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain("unknown command 'nope'");
    const global = await run(['help']);
    expect(global.code).toBe(0);
    for (const v of ['watch', 'force-complete', 'tune', 'completion', 'version']) expect(global.stdout).toMatch(new RegExp(`^  ${v}\\s+\\S`, 'm'));
  });

  it('vmtc version and --version print the package version', async () => {
    const pkg = JSON.parse(readFileSync(resolve(import.meta.dirname, '../../package.json'), 'utf8')).version as string;
    const v = await run(['version']);
    expect(v.code).toBe(0);
    expect(v.stdout).toBe(`vmtc ${pkg} (node ${process.version})\n`);
    expect((await run(['--version'])).stdout).toBe(v.stdout);
    expect(JSON.parse((await run(['version', '-o', 'json'])).stdout)).toEqual({ version: pkg, node: process.version });
  });

  it('completion bash: bash accepts it, and it completes verbs, options and their choices', async () => {
    const r = await run(['completion', 'bash']);
    expect(r.code).toBe(0);
    const file = join(tmp!, 'vmtc.bash');
    writeFileSync(file, r.stdout);
    expect(spawnSync('bash', ['-n', file], { encoding: 'utf8' })).toMatchObject({ status: 0, stderr: '' });
    const complete = (...words: string[]) => {
      const script = `source ${JSON.stringify(file)}; COMP_WORDS=(${words.map((w) => `'${w}'`).join(' ')}); COMP_CWORD=${words.length - 1}; _vmtc; printf '%s\\n' "\${COMPREPLY[@]}"`;
      const out = spawnSync('bash', ['--norc', '--noprofile', '-c', script], { encoding: 'utf8' });
      expect(out.status).toBe(0);
      return out.stdout.split('\n').filter(Boolean).sort();
    };
    expect(complete('vmtc', 'mi')).toEqual(['migrate']);
    expect(complete('vmtc', 'migrate', 'vm1', '--mo')).toEqual(['--mode']);
    expect(complete('vmtc', 'migrate', 'vm1', '--mode', '')).toEqual(['auto', 'cold', 'live']);
    expect(complete('vmtc', 'status', '-o', '')).toEqual(['json', 'wide', 'yaml']);
    expect(complete('vmtc', 'force-complete', 'mig_1', '--mode', '')).toEqual(['pause', 'postcopy']);
    expect(complete('vmtc', 'completion', '')).toEqual(['bash', 'zsh']);
    expect(complete('vmtc', 'help', 'fo')).toEqual(['force-complete']);
    expect(complete('vmtc', 'tune', 'mig_1', '--')).toContain('--bandwidth-mbps');
    expect(complete('vmtc', 'status', '--token-file', file.slice(0, -3))).toEqual([file]);
    const bad = await run(['completion', 'fish']);
    expect(bad.code).toBe(2);
  });

  it.skipIf(spawnSync('zsh', ['--version']).status !== 0)('completion zsh: zsh accepts it (when zsh is installed)', async () => {
    const r = await run(['completion', 'zsh']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^#compdef vmtc\n/);
    const file = join(tmp!, '_vmtc');
    writeFileSync(file, r.stdout);
    expect(spawnSync('zsh', ['-n', file], { encoding: 'utf8' })).toMatchObject({ status: 0, stderr: '' });
    // Loaded after compinit, it registers itself for vmtc.
    const reg = spawnSync('zsh', ['-f', '-c', `autoload -U compinit; compinit -u -D; source ${JSON.stringify(file)}; print -r -- $_comps[vmtc]`], { encoding: 'utf8' });
    expect(reg.stdout.trim()).toBe('_vmtc');
  });
});

describe('configuration and usage errors', () => {
  it('the config file gives the controller and token file; the environment overrides it; a flag overrides both', async () => {
    const tokenFile = join(tmp!, 'token');
    writeFileSync(tokenFile, h!.controller.adminToken + '\n', { mode: 0o600 });
    const config = join(tmp!, 'config.yaml');
    writeFileSync(config, `# vmtc client\ncontroller: ${h!.controller.url}\ntoken-file: token\n`);
    const fromFile = await run(['vms'], { VMTC_CONFIG: config, VMTC_CONTROLLER: undefined, VMTC_TOKEN: undefined });
    expect({ code: fromFile.code, stderr: fromFile.stderr }).toEqual({ code: 0, stderr: '' });
    expect(fromFile.stdout).toMatch(/^vm1\s+B\s/m);
    const dead = `http://127.0.0.1:${await freePort()}`;
    const fromEnv = await run(['vms'], { VMTC_CONFIG: config, VMTC_CONTROLLER: dead, VMTC_TOKEN: undefined });
    expect(fromEnv.code).toBe(1);
    expect(fromEnv.stderr).toContain(`cannot reach the controller at ${dead}`);
    const fromFlag = await run(['vms', '--controller', h!.controller.url], { VMTC_CONFIG: config, VMTC_CONTROLLER: dead, VMTC_TOKEN: undefined });
    expect(fromFlag.code).toBe(0);
    const wrongKey = join(tmp!, 'bad.yaml');
    writeFileSync(wrongKey, 'server: http://x\n');
    const bad = await run(['vms'], { VMTC_CONFIG: wrongKey });
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/^error VMTC_CONFIG_INVALID: vmtc vms: config file '.*bad\.yaml': unknown key 'server'/m);
  });

  it('a bad flag is said once (code, message, hint), and -t is --to', async () => {
    const r = await run(['migrate', 'vm1', '-x', 'sd-1']);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe("error VMTC_CONFIG_INVALID: vmtc migrate: unknown option '-x'\nsee 'vmtc migrate --help'\n");
    const typo = await run(['migrate', 'vm1', '--too', 'B']);
    expect(typo.stderr.split('\n')[0]).toBe("error VMTC_CONFIG_INVALID: vmtc migrate: unknown option '--too' (did you mean --to?)");
    const bw = await run(['tune', 'mig_1', '--bandwidth-mbps', 'fast']);
    expect(bw.code).toBe(2);
    expect(bw.stderr).toBe("error VMTC_CONFIG_INVALID: vmtc tune: --bandwidth-mbps: 'fast' must be a number above 0 and at most 1000000\nsee 'vmtc tune --help'\n");
    const nothing = await run(['tune', 'mig_1']);
    expect(nothing.code).toBe(2);
    const t = await run(['migrate', 'vm1', '-t', 'A', '--no-wait']);
    expect(t.code).toBe(0);
    await h!.waitState(t.stdout.trim(), ['completed']);
  });

  it('force-complete and tune of a migration that has ended: the API\'s coded refusal, exit 1', async () => {
    const id = (await h!.api('GET', '/v1/migrations?vmId=vm2')).body.migrations[0].id as string;
    const f = await run(['force-complete', id]);
    expect(f.code).toBe(1);
    expect(f.stderr).toMatch(/^vmtc: VMTC_MIGRATION_NOT_FORCEABLE: /m);
    const t = await run(['tune', id, '--max-downtime-ms', '50', '-o', 'json']);
    expect(t.code).toBe(1);
    expect(JSON.parse(t.stdout).code).toBe('VMTC_MIGRATION_NOT_TUNABLE');
  });
});
