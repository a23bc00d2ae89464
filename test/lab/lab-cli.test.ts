// `vmtc lab up|status|topology|down` as a person runs it: a real child process of bin/vmtc.js.
import { describe, it, expect, afterAll } from 'vitest';
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { labDown } from '../../lab/net.ts';
import { listNetns } from '../../lab/exec.ts';
import { randomPrefix } from '../../lab/topology.ts';

const exec = promisify(execFile);
const prefix = randomPrefix();
let stateDir = '';

function vmtc(...args: string[]) {
  return exec(process.execPath, [join(import.meta.dirname, '../../bin/vmtc.js'), 'lab', ...args, '--state-dir', stateDir], { timeout: 60_000 });
}

afterAll(async () => {
  if (stateDir) {
    await labDown(prefix, stateDir).catch(() => undefined);
    await rm(stateDir, { recursive: true, force: true });
  }
});

describe('vmtc lab', () => {
  it('brings a lab up with a standing lightpath, shows it, emits the broker topology, and removes it', async () => {
    stateDir = await mkdtemp(join(tmpdir(), 'vmtc-lab-cli-'));
    const up = JSON.parse((await vmtc('up', '--prefix', prefix, '--rtt-ms', '100', '--lightpath', '--bandwidth-mbps', '250', '--json')).stdout);
    expect(up.prefix).toBe(prefix);
    // No --queue-ms: the delay line's queue is one bandwidth-delay product of the reserved rate
    // (100 ms × 250 ÷ 1000 Mbit/s = 25 ms), as the turntable sizes it, not the library's 20 ms.
    expect(up.lab.lightpath.queueMs).toBe(25);
    expect(up.tunnelSites).toEqual(['siteA']);
    expect(up.lightpaths).toHaveLength(1);
    expect(up.lightpaths[0].ends).toEqual(['siteA', 'siteB']);

    const status = (await vmtc('status', '--prefix', prefix)).stdout;
    expect(status).toContain(`${prefix}-siteB`);
    expect(status).toContain('lightpath lab-');

    const topo = JSON.parse((await vmtc('topology', '--prefix', prefix)).stdout);
    expect(topo.nodes.find((n: { id: string }) => n.id === 'siteB').driver).toMatchObject({ namespace: `${prefix}-siteB`, overlayIp: '192.0.2.2', oneWayMs: 50 });

    await vmtc('down', '--prefix', prefix);
    expect((await listNetns()).filter((n) => n.startsWith(`${prefix}-`))).toEqual([]);
    const after = JSON.parse((await vmtc('status', '--json')).stdout);
    expect(after).toEqual([]);
  });

  it('reports a missing prefix as a coded error', async () => {
    stateDir ||= await mkdtemp(join(tmpdir(), 'vmtc-lab-cli-'));
    const r = await vmtc('down').then(() => null, (e: { code: number; stderr: string }) => e);
    expect(r?.code).toBe(1);
    expect(r?.stderr).toContain('VMTC_CONFIG_INVALID');
  });
});
