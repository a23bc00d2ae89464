// The lab's lightpath driver (lab/lightpath-driver.ts) against real namespaces: settings
// validation, nothing left behind on failure, conflicts, re-provision with another bandwidth,
// release from another instance (the broker restarted), and the topology file the lab emits for
// the broker.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { labUp, labDown, netnsExec, type Lab } from '../../lab/net.ts';
import { run, linkExists } from '../../lab/exec.ts';
import { brokerTopologyFor, randomPrefix } from '../../lab/topology.ts';
import { LabLightpathDriver, lightpathHash } from '../../lab/lightpath-driver.ts';
import { VmtcError } from '../../src/common/errors.ts';
import type { SegmentRequest } from '../../src/broker/driver.ts';
import { parseTopology } from '../../src/broker/topology.ts';
import Fastify from 'fastify';
import { registerBrokerMetrics } from '../../src/broker/metrics.ts';
import { systemClock } from '../../src/common/clock.ts';
import { havePromtool, promtoolCheck, sample } from '../helpers/metrics-text.ts';

let stateDir: string;
let lab: Lab;
let driver: LabLightpathDriver;

function nodesFromTopology(l: Lab): Record<string, Record<string, unknown>> {
  return Object.fromEntries(brokerTopologyFor(l).nodes.map((n) => [n.id, n.driver]));
}

function req(connectionId: string, over: Partial<SegmentRequest> = {}): SegmentRequest {
  return { connectionId, path: ['siteA', 'wan', 'siteB'], nodes: nodesFromTopology(lab), bandwidthMbps: 100, ...over };
}

/** Delay-line processes carrying the tag of this connection id (scanned in /proc). */
function relaysOf(connectionId: string): number[] {
  const tag = `vmtc-dl:${lightpathHash(connectionId)}`;
  const out: number[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      if (readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0').includes(tag)) out.push(Number(d));
    } catch { /* gone */ }
  }
  return out;
}

async function lpDevices(ns: string): Promise<string[]> {
  const { stdout } = await run(['ip', '-n', ns, '-j', 'link', 'show']);
  return (JSON.parse(stdout) as { ifname: string }[]).map((l) => l.ifname).filter((n) => /^lp[0-9a-f]{8}$/.test(n));
}

async function expectCode(p: Promise<unknown>, code: string): Promise<VmtcError> {
  const e = await p.then(() => null, (x: unknown) => x);
  expect(e).toBeInstanceOf(VmtcError);
  expect((e as VmtcError).code).toBe(code);
  return e as VmtcError;
}

async function expectNothingLeft(connectionId: string): Promise<void> {
  for (const s of lab.sites) expect(await lpDevices(s.ns)).toEqual([]);
  expect((await driver.records()).map((r) => r.connectionId)).not.toContain(connectionId);
  expect(relaysOf(connectionId)).toEqual([]);
}

beforeAll(async () => {
  stateDir = await mkdtemp(join(tmpdir(), 'vmtc-lab-'));
  lab = await labUp({ prefix: randomPrefix(), rttMs: 4, sites: 3, stateDir, tunnelSite: null });
  driver = new LabLightpathDriver({ stateDir });
});

afterAll(async () => {
  if (lab) await labDown(lab.prefix, stateDir).catch(() => undefined);
  await rm(stateDir, { recursive: true, force: true });
});

describe('Linux lightpath driver', () => {
  it('refuses end nodes without the settings it needs, naming node and field, and touches nothing', async () => {
    const nodes = nodesFromTopology(lab);
    const { overlayIp: _drop, ...noOverlay } = nodes.siteB!;
    const e = await expectCode(driver.provision(req('c-bad', { nodes: { ...nodes, siteB: noOverlay } })), 'VMTC_LIGHTPATH_BAD_SETTINGS');
    expect(e.details).toMatchObject({ node: 'siteB', field: 'overlayIp' });
    await expectCode(driver.provision(req('c-bad', { nodes: { ...nodes, siteA: { ...nodes.siteA, namespace: 'x; rm -rf /' } } })), 'VMTC_LIGHTPATH_BAD_SETTINGS');
    await expectCode(driver.provision(req('c-bad', { path: ['siteA', 'wan', 'siteA'] })), 'VMTC_LIGHTPATH_BAD_SETTINGS');
    await expectCode(driver.provision(req('c-bad', { bandwidthMbps: 0 })), 'VMTC_LIGHTPATH_BAD_SETTINGS');
    await expectNothingLeft('c-bad');
  });

  it('leaves nothing behind when the far end cannot be built', async () => {
    const nodes = nodesFromTopology(lab);
    const broken = { ...nodes, siteB: { ...nodes.siteB, namespace: `${lab.prefix}-siteZ` } };
    await expectCode(driver.provision(req('c-half', { nodes: broken })), 'VMTC_LIGHTPATH_PROVISION_FAILED');
    await expectNothingLeft('c-half');
  });

  it('leaves nothing behind when the delay line cannot start', async () => {
    const nodes = nodesFromTopology(lab);
    const noRelay = Object.fromEntries(Object.entries(nodes).map(([k, v]) => [k, { ...v, relayIp: '203.0.113.99' }]));
    await expectCode(driver.provision(req('c-norelay', { nodes: noRelay })), 'VMTC_LAB_DELAY_LINE_FAILED');
    await expectNothingLeft('c-norelay');
  });

  it('provisions between any two sites, refuses a second lightpath joining the same two, and rebuilds on a new bandwidth', async () => {
    const [A, , C] = lab.sites as [Lab['sites'][0], Lab['sites'][0], Lab['sites'][0]];
    const seg = await driver.provision(req('c-ac', { path: ['siteA', 'wan', 'siteC'] }));
    const dev = seg.details.device as string;
    expect(await linkExists(A.ns, dev)).toBe(true);
    expect(await linkExists(C.ns, dev)).toBe(true);
    const ping = await netnsExec(A.ns, ['ping', '-n', '-c', '2', '-i', '0.1', '-W', '1', C.lightpathIp]);
    expect(ping.stdout).toMatch(/2 received/);

    await expectCode(driver.provision(req('c-ac-2', { path: ['siteC', 'wan', 'siteA'] })), 'VMTC_LIGHTPATH_CONFLICT');
    expect(await linkExists(A.ns, dev)).toBe(true);

    const seg2 = await driver.provision(req('c-ac', { path: ['siteA', 'wan', 'siteC'], bandwidthMbps: 300 }));
    expect(seg2.details.bandwidthMbps).toBe(300);
    const tc = await run(['tc', '-n', C.ns, 'class', 'show', 'dev', dev]);
    expect(tc.stdout).toMatch(/rate 300Mbit/);
    expect(relaysOf('c-ac')).toHaveLength(1);

    // Another driver instance (the broker restarted) finds and releases it from the record.
    await new LabLightpathDriver({ stateDir }).release('c-ac');
    await expectNothingLeft('c-ac');
  });

  it('reports each delay line\'s rate, queueing delay and drops per direction, and the broker serves them on /metrics', async () => {
    const [A, B] = lab.sites as [Lab['sites'][0], Lab['sites'][0]];
    await driver.provision(req('c-metrics'));
    const app = Fastify();
    try {
      registerBrokerMetrics(app, { service: { calendar: { peak: () => 0 } } as never, store: { live: () => [] }, driver, clock: systemClock, onRequest: async () => undefined, security: [] });
      const ping = await netnsExec(A.ns, ['ping', '-n', '-c', '20', '-i', '0.05', '-W', '1', B.lightpathIp]);
      expect(ping.stdout).toMatch(/20 received/);
      // The line writes a report every second; wait (bounded) for one that counts the pings.
      let stats = await driver.dataPlaneStats();
      const counted = () => stats.filter((s) => s.connectionId === 'c-metrics' && s.packets >= 20).length === 2;
      for (let i = 0; i < 40 && !counted(); i++) {
        await new Promise((r) => setTimeout(r, 100));
        stats = await driver.dataPlaneStats();
      }
      const mine = stats.filter((s) => s.connectionId === 'c-metrics');
      expect(mine.map((s) => s.direction).sort()).toEqual(['ab', 'ba']);
      for (const s of mine) {
        expect(s.packets).toBeGreaterThanOrEqual(20);
        expect(s.drops).toBe(0);
        expect(s.queueMaxMs).toBeGreaterThanOrEqual(s.queueP50Ms);
      }
      const text = (await app.inject({ method: 'GET', url: '/metrics' })).body;
      expect(sample(text, 'vmtc_broker_dataplane_delivered_packets', { connection: 'c-metrics', direction: 'ab' })).toBeGreaterThanOrEqual(20);
      expect(sample(text, 'vmtc_broker_dataplane_dropped_packets', { connection: 'c-metrics', direction: 'ba' })).toBe(0);
      expect(sample(text, 'vmtc_broker_dataplane_delivered_rate_bytes', { connection: 'c-metrics', direction: 'ab' })).toBeGreaterThanOrEqual(0);
      expect(sample(text, 'vmtc_broker_dataplane_queue_delay_max_seconds', { connection: 'c-metrics', direction: 'ab' })).toBeGreaterThanOrEqual(0);
      if (havePromtool) expect(promtoolCheck(text)).toMatchObject({ code: 0 });
    } finally {
      await app.close();
      await driver.release('c-metrics');
    }
    // Released: its series are gone with it.
    expect((await driver.dataPlaneStats()).filter((s) => s.connectionId === 'c-metrics')).toEqual([]);
  });

  it('two lightpaths asked for at once between the same two sites: one is built whole, the other refused as a conflict (never torn down half-built)', async () => {
    const [A, B] = lab.sites as [Lab['sites'][0], Lab['sites'][0]];
    const results = await Promise.allSettled([driver.provision(req('c-race-1')), driver.provision(req('c-race-2'))]);
    try {
      const won = results.findIndex((r) => r.status === 'fulfilled');
      expect(won, JSON.stringify(results.map((r) => (r.status === 'rejected' ? (r.reason as VmtcError).code : 'ok')))).toBeGreaterThanOrEqual(0);
      const lost = results[1 - won]!;
      expect(lost.status).toBe('rejected');
      expect(((lost as PromiseRejectedResult).reason as VmtcError).code).toBe('VMTC_LIGHTPATH_CONFLICT');
      const ping = await netnsExec(A.ns, ['ping', '-n', '-c', '2', '-i', '0.1', '-W', '1', B.lightpathIp]);
      expect(ping.stdout).toMatch(/2 received/);
    } finally {
      await driver.release('c-race-1');
      await driver.release('c-race-2');
    }
    await expectNothingLeft('c-race-1');
    await expectNothingLeft('c-race-2');
  });

  it('emits a topology file the broker accepts', () => {
    const topo = parseTopology(brokerTopologyFor(lab), `lab-${lab.prefix}`);
    expect([...topo.nodes.keys()].sort()).toEqual(['siteA', 'siteB', 'siteC', 'wan']);
    expect(topo.nodes.get('siteB')?.driver).toMatchObject({ namespace: `${lab.prefix}-siteB`, overlayIp: '192.0.2.2', relayIp: '203.0.113.1' });
  });

  it('clears a stale record (relay and devices gone) instead of refusing the pair forever', async () => {
    const seg = await driver.provision(req('c-stale'));
    const relay = seg.details.relay as { pid: number };
    process.kill(relay.pid, 'SIGKILL');
    for (const s of lab.sites.slice(0, 2)) await run(['ip', '-n', s.ns, 'link', 'del', 'dev', seg.details.device as string]);
    await driver.provision(req('c-fresh'));
    expect((await driver.records()).map((r) => r.connectionId)).toEqual(['c-fresh']);
    await driver.release('c-fresh');
    await expectNothingLeft('c-fresh');
    await expectNothingLeft('c-stale');
  });

  it('keeps two lightpaths from one site apart (A↔B and A↔C at once)', async () => {
    const [A, B, C] = lab.sites as [Lab['sites'][0], Lab['sites'][0], Lab['sites'][0]];
    const ab = await driver.provision(req('c-ab'));
    const ac = await driver.provision(req('c-ac3', { path: ['siteA', 'wan', 'siteC'] }));
    expect(ab.details.device).not.toBe(ac.details.device);
    for (const ip of [B.lightpathIp, C.lightpathIp]) {
      const r = await netnsExec(A.ns, ['ping', '-n', '-c', '2', '-i', '0.1', '-W', '1', ip]);
      expect(r.stdout).toMatch(/2 received/);
    }
    await driver.release('c-ab');
    await driver.release('c-ac3');
    await expectNothingLeft('c-ab');
    await expectNothingLeft('c-ac3');
  });
});
