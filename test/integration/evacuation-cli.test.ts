// `vmtc evacuate` and `vmtc evacuation list|show|cancel` as real processes against a real
// controller with DoubleDriver host agents.
import { describe, it, expect, afterEach } from 'vitest';
import { startHarness, vmSpec, type Harness } from '../helpers/controller-harness.ts';
import { cleanupsAfterEach } from '../helpers/cleanups.ts';
import { cliEnv, runCli } from '../helpers/cli-run.ts';

let h: Harness | undefined;
afterEach(async () => { await h?.close(); h = undefined; });
const cleanups = cleanupsAfterEach();

describe('vmtc evacuate / vmtc evacuation', () => {
  it('drains a host from the command line, shows and lists it, refuses to cancel it once ended', async () => {
    h = await startHarness();
    await h.addHost('A', { vms: ['v1', 'v2', 'v3'].map((n) => vmSpec(n)) });
    await h.addHost('B');
    const env = cliEnv({ url: h.controller.url, token: h.controller.adminToken });
    const started = await runCli(['evacuate', 'A', '--per-source', '1', '--to', 'site-B', '--json'], env, cleanups);
    expect(started.code, started.stderr).toBe(0);
    const ev = JSON.parse(started.stdout);
    expect(ev.target).toEqual({ host: 'A' });
    expect(ev.request.limits.perSourceHost).toBe(1);
    expect(ev.request.toSites).toEqual(['site-B']);
    await h.waitFor(async () => (await h!.api('GET', `/v1/evacuations/${ev.id}`)).body.state === 'completed', 'the evacuation to complete', 60_000);
    const shown = await runCli(['evacuation', 'show', ev.id], env, cleanups);
    expect(shown.code, shown.stderr).toBe(0);
    expect(shown.stdout).toContain(`evacuation ${ev.id}: host A, completed (3 completed)`);
    expect(shown.stdout).toMatch(/^ {2}v1 {2}A -> B {2}completed at \+/m);
    const listed = await runCli(['evacuation', 'list', '-o', 'json'], env, cleanups);
    expect(JSON.parse(listed.stdout).evacuations.map((e: any) => e.id)).toEqual([ev.id]);
    const cancel = await runCli(['evacuation', 'cancel', ev.id], env, cleanups);
    expect(cancel.code).toBe(1);
    expect(cancel.stderr).toContain('VMTC_EVACUATION_NOT_CANCELLABLE');
    // Usage mistakes exit 2 before asking anything.
    for (const args of [['evacuate'], ['evacuate', 'A', '--site', 's'], ['evacuate', 'A', '--priority', 'x'], ['evacuate', 'A', '--per-lightpath', '0'], ['evacuation', 'show']]) {
      const r = await runCli(args, env, cleanups);
      expect(r.code, args.join(' ')).toBe(2);
    }
  }, 120_000);

  it('vmtc migrate without --to lets the controller choose; --to-site narrows the choice', async () => {
    h = await startHarness();
    await h.addHost('A', { vms: [vmSpec('v1'), vmSpec('v2')] });
    await h.addHost('B');
    await h.addHost('C');
    const env = cliEnv({ url: h.controller.url, token: h.controller.adminToken });
    const r = await runCli(['migrate', 'v1', '--to-site', 'site-C', '-o', 'json'], env, cleanups);
    expect(r.code, r.stderr).toBe(0);
    const m = JSON.parse(r.stdout);
    expect(m.state).toBe('completed');
    expect(m.destinationHostId).toBe('C');
    const shown = (await h.api('GET', `/v1/migrations/${m.id}`)).body;
    expect(shown.placement.chosen).toBe('C');
    expect(shown.placement.refused.map((x: any) => [x.hostId, x.reason]).sort()).toEqual([['A', 'source'], ['B', 'site-not-requested']]);
    const any = await runCli(['migrate', 'v2', '--no-wait'], env, cleanups);
    expect(any.code, any.stderr).toBe(0);
    const id = any.stdout.trim();
    const chosen = (await h.api('GET', `/v1/migrations/${id}`)).body;
    expect(['B', 'C']).toContain(chosen.destinationHostId);
    expect(chosen.placement.chosen).toBe(chosen.destinationHostId);
    const bad = await runCli(['migrate', 'v2', '--to', 'B', '--to-site', 'site-B'], env, cleanups);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('not with --to HOST_ID');
  }, 120_000);
});
