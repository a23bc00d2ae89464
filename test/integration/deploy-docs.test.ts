// docs/deploy.md "Try it on one machine", run as it is written: the shell block between its
// one-machine markers, with `vmtc` on the PATH, free ports and a temp directory. It inits a
// domain with TLS on the REST API, starts it with `vmtc up`, enrols two double-driver agents with
// `vmtc enroll-token`, restarts one with only --data, and moves a VM there and back with
// `vmtc migrate`; the block fails (set -e) if any step does. And the README's quick start for a
// domain (its third command), with its directory and ports moved aside and without `npm ci`.
import { describe, it, expect } from 'vitest';
import { spawn } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cleanupsAfterEach } from '../helpers/cleanups.ts';
import { freePort, VMTC_BIN } from '../helpers/proc.ts';

const cleanups = cleanupsAfterEach();
const ROOT = join(import.meta.dirname, '..', '..');
const DOC = join(ROOT, 'docs', 'deploy.md');

/** The sh block between the markers. */
export function oneMachineBlock(markdown: string): string {
  const m = /<!-- one-machine:begin -->\s*```sh\n([\s\S]*?)```\s*<!-- one-machine:end -->/.exec(markdown);
  if (!m) throw new Error('docs/deploy.md has no one-machine block');
  return m[1]!;
}

describe('docs/deploy.md on one machine', () => {
  it('runs "Try it on one machine" to the end: init --tls, up, enroll-token, agents, restart with only --data, migrate there and back', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vmtc-deploy-doc-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const bin = join(dir, 'bin');
    writeFileSync(join(dir, 'script.sh'), oneMachineBlock(readFileSync(DOC, 'utf8')));
    // `vmtc` as installed by `npm install -g .`: the checkout's entry point.
    mkdirSync(bin);
    writeFileSync(join(bin, 'vmtc'), `#!/bin/sh\nexec "${process.execPath}" "${VMTC_BIN}" "$@"\n`);
    chmodSync(join(bin, 'vmtc'), 0o755);
    const env = {
      ...process.env,
      PATH: `${bin}:${process.env.PATH}`,
      DIR: join(dir, 'try'),
      CTL_PORT: String(await freePort()), HUB_PORT: String(await freePort()), AAA_PORT: String(await freePort()), BROKER_PORT: String(await freePort()),
      VMTC_LOG_LEVEL: 'warn',
    };
    // Its own process group, so that whatever the script left running can be stopped with it.
    const child = spawn('bash', [join(dir, 'script.sh')], { env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { out += d; });
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    cleanups.push(async () => {
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch { /* the group is gone */ }
    });
    const code = await exited;
    const logs = ['aaa', 'broker', 'controller'].map((s) => join(env.DIR, 'log', `${s}.log`)).filter(existsSync).map((f) => `--- ${f}\n${readFileSync(f, 'utf8').slice(-2000)}`).join('\n');
    expect(code, `${out}\n${logs}`).toBe(0);
    expect(out).toMatch(/migration \S+ completed\s+\(vm1: ams-1 -> sd-1/);
    expect(out).toMatch(/migration \S+ completed\s+\(vm1: sd-1 -> ams-1/);
    // The settings the restarted agent ran with came from its data directory.
    expect(JSON.parse(readFileSync(join(env.DIR, 'sd-1', 'host.json'), 'utf8')).settings).toMatchObject({ site: 'san-diego', driver: 'double' });
    expect(readFileSync(join(env.DIR, 'etc', 'vmtc.json'), 'utf8')).toContain(`"url": "https://127.0.0.1:${env.CTL_PORT}"`);
  }, 300_000);

  it("runs the README quick start's third command: init, then up until Ctrl-C", async () => {
    const line = readFileSync(join(ROOT, 'README.md'), 'utf8').split('\n').find((l) => l.includes('npm run vmtc -- init'));
    expect(line).toBeDefined();
    const dir = mkdtempSync(join(tmpdir(), 'vmtc-readme-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const ctl = await freePort();
    const ports = `controller=${ctl},agents=${await freePort()},aaa=${await freePort()},broker=${await freePort()}`;
    // As far as one machine allows: the dependencies are installed, and the ports are free ones.
    const cmd = line!.replace(/^npm ci && /, '').replaceAll('/tmp/vmtc-domain', join(dir, 'domain')).replace('-- init ', `-- init --ports ${ports} `);
    const child = spawn('bash', ['-c', cmd], { cwd: ROOT, detached: true, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, VMTC_LOG_LEVEL: 'warn' } });
    let out = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { out += d; });
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    cleanups.push(() => { try { process.kill(-child.pid!, 'SIGKILL'); } catch { /* gone */ } });
    const deadline = Date.now() + 120_000;
    while (!out.includes('"svc":"up"') && child.exitCode === null && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    expect(out, out).toContain('"svc":"up"');
    // The controller answers (and wants a credential), so the domain is up.
    const r = await fetch(`http://127.0.0.1:${ctl}/v1/hosts`);
    expect(r.status).toBe(401);
    process.kill(-child.pid!, 'SIGINT');
    await exited;
    const after = await fetch(`http://127.0.0.1:${ctl}/v1/hosts`).then(() => 'answered', () => 'refused');
    expect(after).toBe('refused');
  }, 180_000);
});
