// `vmtc agent` as a real process (node bin/vmtc.js agent …) against a hub started here: it enrols,
// connects with mTLS, reports its inventory, serves a request, and exits 0 on SIGTERM.
import { describe, it, expect, afterEach } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { startHub, tempDir, waitFor, type HubFixture } from './agent-fixture.ts';

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

function spawnAgent(args: string[]): { child: ChildProcess; exited: Promise<number | null>; output: () => string } {
  const child = spawn(process.execPath, ['bin/vmtc.js', 'agent', ...args], { cwd: join(import.meta.dirname, '..', '..'), stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d) => { out += d; });
  child.stderr!.on('data', (d) => { out += d; });
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  cleanups.push(async () => {
    if (child.exitCode === null && child.signalCode === null && child.pid) {
      process.kill(child.pid, 'SIGKILL');
      await exited;
    }
  });
  return { child, exited, output: () => out };
}

describe('vmtc agent (process)', () => {
  it('enrols, connects, reports inventory, serves requests, and stops on SIGTERM', async () => {
    const f: HubFixture = await startHub();
    cleanups.push(() => f.close());
    const d = tempDir();
    cleanups.push(() => rmSync(d, { recursive: true, force: true }));
    const cfg = join(d, 'double.json');
    writeFileSync(cfg, JSON.stringify({ version: '9.9', memoryMb: 2048, vms: [{ vmId: 'vm-p', project: 'p', vcpus: 2, memoryMb: 128, diskGb: 2 }] }));
    const minted = f.hub.mintEnrollToken({ kind: 'host', hostId: 'proc-host' });
    const inv = waitFor(f.hub, 'inventory', (h) => h === 'proc-host', 25_000);
    const p = spawnAgent(['--controller', f.controllerUrl, '--enroll', minted.token, '--ca-fingerprint', minted.caFingerprint, '--data', join(d, 'agent'), '--driver', 'double', '--double-config', cfg, '--site', 'site-p', '--migration-address', '198.51.100.7', '--log-level', 'warn']);
    let inventory;
    try {
      [, inventory] = await inv;
    } catch (e) {
      throw new Error(`agent never reported: ${p.output()}`, { cause: e });
    }
    expect(inventory).toMatchObject({ hostId: 'proc-host', site: 'site-p', migrationAddress: '198.51.100.7', hypervisor: { type: 'double', version: '9.9' }, memoryMb: 2048 });
    expect(inventory.vms[0]).toMatchObject({ vmId: 'vm-p', state: 'running' });
    expect((await f.hub.request('proc-host', 'vm.describe', { vmId: 'vm-p' })).vcpus).toBe(2);
    expect(existsSync(join(d, 'agent', 'agent.key'))).toBe(true);
    expect(JSON.parse(readFileSync(join(d, 'agent', 'agent.json'), 'utf8')).hostId).toBe('proc-host');

    const gone = waitFor(f.hub, 'disconnected', (h) => h === 'proc-host');
    process.kill(p.child.pid!, 'SIGTERM');
    expect(await p.exited).toBe(0);
    await gone;
    expect(f.hub.isConnected('proc-host')).toBe(false);
  });

  it('fails at start with a coded error when it has neither credentials nor a token', async () => {
    const d = tempDir();
    cleanups.push(() => rmSync(d, { recursive: true, force: true }));
    const p = spawnAgent(['--data', d, '--driver', 'double']);
    expect(await p.exited).toBe(1);
    expect(p.output()).toContain('VMTC_CONFIG_INVALID');
    expect(p.output()).toContain('"field":"enroll"');
  });
});
