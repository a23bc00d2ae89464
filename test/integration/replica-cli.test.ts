// `vmtc replicate` and `vmtc replicas` as real processes (`node bin/vmtc.js`) against a real
// controller and host agents (DoubleDriver with its replica double): create with an interval,
// list with the lag, remove; usage mistakes exit 2 with the field named, API refusals exit 1.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdirSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { startHarness, vmSpec, type Harness } from '../helpers/controller-harness.ts';
import { cleanupsAfterEach } from '../helpers/cleanups.ts';
import { cliEnv, runCli } from '../helpers/cli-run.ts';

const cleanups = cleanupsAfterEach();
let h: Harness | undefined;

beforeAll(async () => {
  h = await startHarness();
  const dir = join(h.dir, 'images');
  mkdirSync(dir, { recursive: true });
  const path = join(dir, 'vm1.img');
  writeFileSync(path, randomBytes(1024 * 1024));
  await h.addHost('A', { vms: [{ ...vmSpec('vm1'), disks: [{ path, format: 'raw' }] }] });
  await h.addHost('B');
});
afterAll(async () => {
  await h?.close();
});

const run = (args: string[]) => runCli(args, cliEnv({ url: h!.controller.url, token: h!.controller.adminToken }), cleanups);

describe('vmtc replicate / vmtc replicas', () => {
  it('creates a replica with --interval, lists it warm with its lag, removes it with --remove', async () => {
    const c = await run(['replicate', 'vm1', '--to', 'B', '--interval', '5m', '-o', 'json']);
    expect({ code: c.code, stderr: c.stderr }).toEqual({ code: 0, stderr: '' });
    const created = JSON.parse(c.stdout);
    expect(created).toMatchObject({ vmId: 'vm1', destinationHostId: 'B', intervalS: 300, state: 'seeding' });
    await h!.waitFor(async () => (await h!.api('GET', `/v1/vms/vm1/replicas/${created.id}`)).body.state === 'warm', 'warm');
    const l = await run(['replicas', 'vm1']);
    expect(l.code).toBe(0);
    expect(l.stdout).toMatch(new RegExp(`^${created.id}  vm1  A -> B  warm at checkpoint 0  every 300 s  seed 1\\.0 MiB, 0 deltas, 1\\.0 MiB sent  lag 0 B / \\d+ s$`, 'm'));
    const d = await run(['replicate', 'vm1', '--remove', created.id]);
    expect(d.code).toBe(0);
    expect(d.stdout).toMatch(/removing: the store at B and the checkpoints at A go/);
    await h!.waitFor(async () => (await run(['replicas', 'vm1'])).stdout.trim() === 'No replica of vm1.', 'no replica left');
  });

  it('usage mistakes exit 2 naming the option; refusals of the API exit 1 with their code', async () => {
    for (const [args, re] of [
      [['replicate', 'vm1'], /--to HOST is required/],
      [['replicate', 'vm1', '--to', 'B', '--interval', '0s'], /--interval: '0s'/],
      [['replicate', 'vm1', '--to', 'B', '--interval', 'soon'], /--interval: 'soon'/],
      [['replicate', 'vm1', '--remove', 'rep_x', '--to', 'B'], /--remove takes no --to/],
    ] as [string[], RegExp][]) {
      const r = await run(args);
      expect({ args, code: r.code }).toEqual({ args, code: 2 });
      expect(r.stderr).toMatch(re);
    }
    const r = await run(['replicate', 'vm1', '--to', 'A']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/VMTC_SAME_HOST/);
    const g = await run(['replicate', 'vm1', '--remove', 'rep_nope']);
    expect(g.code).toBe(1);
    expect(g.stderr).toMatch(/VMTC_REPLICA_NOT_FOUND/);
  });
});
