// `vmtc agent` as a real process (node bin/vmtc.js agent …) against a hub started here: it enrols,
// connects with mTLS, reports its inventory, serves a request, and exits 0 on SIGTERM.
import { describe, it, expect } from 'vitest';
import { readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { cleanupsAfterEach, spawnVmtcCli } from '../helpers/cleanups.ts';
import { startHub, tempDir, waitFor, type HubFixture } from '../helpers/agent-fixture.ts';

const cleanups = cleanupsAfterEach();

const spawnAgent = (args: string[]) => spawnVmtcCli(['agent', ...args], cleanups);

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
