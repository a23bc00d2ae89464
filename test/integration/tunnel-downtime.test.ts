// The tunnel agent's client-seen downtime reaches the migration record, its transition (what the
// event stream sends) and the CLI summary: a real controller, two host agents on the hypervisor
// test double, and a tunnel agent on the memory driver whose meter is the SyntheticDowntimeMeter
// (a test double: fixed figures that no network produced; the real capture is measured by
// test/lab/turntable.test.ts).
import { afterEach, describe, expect, it } from 'vitest';
import { rmSync } from 'node:fs';
import { startHarness, vmSpec, type Harness } from '../helpers/controller-harness.ts';
import { tempDir } from '../helpers/agent-fixture.ts';
import { startTunnelAgent } from '../../agents/tunnel/index.ts';
import { MemoryTunnelDriver } from '../../agents/tunnel/memory-driver.ts';
import { SyntheticDowntimeMeter, type DowntimeMeter } from '../../agents/tunnel/meter.ts';
import { HubTunnelPort } from '../../src/controller/tunnel-port.ts';
import { systemClock } from '../../src/common/clock.ts';
import { silentLogger } from '../../src/common/log.ts';
import { formatSummary } from '../../src/cli/client/format.ts';

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** A meter that cannot start (a capture helper that fails to build, say). */
const brokenMeter: DowntimeMeter = {
  watches: () => true,
  start: async () => { throw new Error('injected: the capture helper cannot start'); },
  stop: async () => undefined,
  close: async () => undefined,
};

async function setup(withMeter: boolean | DowntimeMeter): Promise<{ h: Harness; tunnelId: string }> {
  const h = await startHarness({ integrations: (hub) => ({ tunnel: new HubTunnelPort(hub) }) });
  cleanups.push(() => h.close());
  await h.addHost('A', { vms: [vmSpec('vm1')] });
  await h.addHost('B');
  const d = tempDir('vmtc-tunnel-');
  cleanups.push(() => rmSync(d, { recursive: true, force: true }));
  const { token, caFingerprint } = h.controller.hub.mintEnrollToken({ kind: 'tunnel', hostId: 'tun1' });
  const agent = await startTunnelAgent({
    controllerUrl: h.controller.url, enrollToken: token, caFingerprint, dataDir: d, logger: silentLogger(),
    driver: new MemoryTunnelDriver({ known: ['site-A', 'site-B'], initial: ['site-A'] }),
    ...(withMeter === true ? { meter: new SyntheticDowntimeMeter(systemClock, { passiveGapMs: 42, probeGapMs: 40 }) } : withMeter ? { meter: withMeter } : {}),
  });
  cleanups.push(() => agent.close());
  await h.waitFor(() => h.controller.hub.agents().some((a) => a.hostId === 'tun1' && a.connected), 'tunnel agent connected');
  return { h, tunnelId: agent.hostId };
}

describe('client-seen downtime from the tunnel agent', () => {
  it('is stored in the record, carried by the ACTIVATED transition and printed by the CLI summary', async () => {
    const { h } = await setup(true);
    const m = await h.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B' });
    expect(m.status).toBe(202);
    await h.waitState(m.body.id, ['completed']);
    const rec = (await h.api('GET', `/v1/migrations/${m.body.id}`)).body;
    expect(rec.steps.tunnel).toMatchObject({ bicast: true, pruned: true });
    expect(rec.downtime).toMatchObject({
      tunnelPassive: { gapMs: 42, method: 'synthetic (test double)' },
      tunnelProbe: { gapMs: 40, periodMs: 20 },
      tunnel: { agent: 'tun1' },
    });
    expect(rec.downtime.tunnel.to).toBeGreaterThanOrEqual(rec.downtime.tunnel.from);
    const activated = rec.transitions.find((t: any) => t.event === 'ACTIVATED');
    expect(activated.detail.downtime.tunnelPassive.gapMs).toBe(42);
    expect(formatSummary(rec)).toMatch(/client-seen downtime: passive 42 ms \(0 frames\), probe 40 ms/);
  });

  it('leaves the record without tunnel figures when no tunnel agent measured', async () => {
    const { h } = await setup(false);
    const m = await h.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B' });
    await h.waitState(m.body.id, ['completed']);
    const rec = (await h.api('GET', `/v1/migrations/${m.body.id}`)).body;
    expect(rec.steps.tunnel).toMatchObject({ bicast: true, pruned: true });
    expect(rec.downtime).toBeUndefined();
  });

  it('a measurement that cannot start never fails the switch', async () => {
    const { h } = await setup(brokenMeter);
    const m = await h.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B' });
    await h.waitState(m.body.id, ['completed']);
    const rec = (await h.api('GET', `/v1/migrations/${m.body.id}`)).body;
    expect(rec.steps.tunnel).toMatchObject({ bicast: true, pruned: true });
    expect(rec.warnings).toEqual([]);
    expect(rec.downtime).toBeUndefined();
  });
});
