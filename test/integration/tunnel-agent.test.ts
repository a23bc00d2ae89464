// The tunnel agent against a real agent hub (mutual TLS wss on port 0, SQLite file, enrolment over
// REST) with the MemoryTunnelDriver test double, and the controller's HubTunnelPort against two
// such agents. What is checked: enrolment as kind 'tunnel'; make-before-break order (the old site
// still receives until prune); the last site is never removed; bad parameters are coded and
// change nothing; the port succeeds only if every tunnel agent does and names the one that failed.
import { describe, it, expect, afterEach } from 'vitest';
import { rmSync } from 'node:fs';
import { ManualClock } from '../../src/common/clock.ts';
import { VmtcError } from '../../src/common/errors.ts';
import { startTunnelAgent, type TunnelAgent, type TunnelState } from '../../agents/tunnel/index.ts';
import { MemoryTunnelDriver } from '../../agents/tunnel/memory-driver.ts';
import { TUNNEL_AGENT_ERRORS } from '../../agents/tunnel/errors.ts';
import { HubTunnelPort } from '../../src/controller/tunnel-port.ts';
import { startHostAgent } from '../../agents/host/index.ts';
import { DoubleDriver } from '../../agents/host/double-driver.ts';
import { startHub, tempDir, waitFor, until, type HubFixture } from '../helpers/agent-fixture.ts';

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function hub(): Promise<HubFixture> {
  const f = await startHub();
  cleanups.push(() => f.close());
  return f;
}

const SITES = ['siteA', 'siteB', 'siteC'];

async function tunnelAgent(f: HubFixture, hostId: string, o: { initial?: string[]; clock?: ManualClock } = {}): Promise<{ agent: TunnelAgent; driver: MemoryTunnelDriver }> {
  const driver = new MemoryTunnelDriver({ known: SITES, initial: o.initial ?? ['siteA'] });
  const d = tempDir('vmtc-tunnel-');
  cleanups.push(() => rmSync(d, { recursive: true, force: true }));
  const { token, caFingerprint } = f.hub.mintEnrollToken({ kind: 'tunnel', hostId });
  const connected = waitFor(f.hub, 'connected', (h: string) => h === hostId);
  const agent = await startTunnelAgent({ controllerUrl: f.controllerUrl, enrollToken: token, caFingerprint, dataDir: d, driver, ...(o.clock ? { clock: o.clock } : {}) });
  cleanups.push(() => agent.close());
  await connected;
  return { agent, driver };
}

async function caught(p: Promise<unknown>): Promise<VmtcError | undefined> {
  try {
    await p;
  } catch (e) {
    return e as VmtcError;
  }
  return undefined;
}

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    return (e as VmtcError).code;
  }
  throw new Error('expected a rejection');
}

describe('tunnel agent', () => {
  it('enrols as a tunnel agent, connects over mutual TLS and reports its state on connect', async () => {
    const f = await hub();
    const firstState = waitFor(f.hub, 'event', (h: string, name: string) => h === 'tun-1' && name === 'tunnel.state');
    const connected = waitFor(f.hub, 'connected', (h: string) => h === 'tun-1');
    const { agent } = await tunnelAgent(f, 'tun-1');
    const [, kind] = await connected;
    expect(kind).toBe('tunnel');
    expect(agent.hostId).toBe('tun-1');
    expect(f.hub.agents().find((a) => a.hostId === 'tun-1')).toMatchObject({ kind: 'tunnel', connected: true });
    const [, , state] = await firstState;
    expect(state).toMatchObject({ driver: 'memory', sites: ['siteA'], vmSites: {} });
    expect(await f.hub.requestRaw('tun-1', 'tunnel.state', {})).toMatchObject({ sites: ['siteA'] });
  });

  it('bicast keeps the old site until prune, then only the new site remains (make before break)', async () => {
    const f = await hub();
    const clock = new ManualClock(1_000_000);
    const { driver } = await tunnelAgent(f, 'tun-1', { clock });
    const events: TunnelState[] = [];
    f.hub.on('event', (h: string, name: string, data: TunnelState) => { if (h === 'tun-1' && name === 'tunnel.state') events.push(data); });

    clock.advance(10);
    expect(await f.hub.requestRaw('tun-1', 'tunnel.bicast', { vmId: 'vm-1', oldSite: 'siteA', newSite: 'siteB' })).toEqual({ sites: ['siteA', 'siteB'] });
    expect(await driver.sites()).toEqual(['siteA', 'siteB']);
    // A repeated bicast (a retry after a lost reply) changes nothing.
    await f.hub.requestRaw('tun-1', 'tunnel.bicast', { vmId: 'vm-1', oldSite: 'siteA', newSite: 'siteB' });
    clock.advance(250);
    expect(await f.hub.requestRaw('tun-1', 'tunnel.prune', { vmId: 'vm-1', keepSite: 'siteB', dropSite: 'siteA' })).toEqual({ sites: ['siteB'], removed: true });
    expect(await driver.sites()).toEqual(['siteB']);
    // Again: idempotent.
    expect(await f.hub.requestRaw('tun-1', 'tunnel.prune', { vmId: 'vm-1', keepSite: 'siteB', dropSite: 'siteA' })).toEqual({ sites: ['siteB'], removed: false });

    // What the data plane saw, in order: B added while A stayed, then A removed; never empty.
    expect(driver.ops.filter((o) => o.changed).map((o) => [o.op, o.site, o.after])).toEqual([
      ['add', 'siteB', ['siteA', 'siteB']],
      ['remove', 'siteA', ['siteB']],
    ]);
    expect(driver.ops.every((o) => o.after.length > 0)).toBe(true);

    const st = (await f.hub.requestRaw('tun-1', 'tunnel.state', {})) as TunnelState;
    expect(st.vmSites).toEqual({ 'vm-1': ['siteB'] });
    expect(st.history).toEqual([
      { at: 1_000_010, op: 'add', site: 'siteB', cause: 'bicast', vmId: 'vm-1', sites: ['siteA', 'siteB'] },
      { at: 1_000_260, op: 'remove', site: 'siteA', cause: 'prune', vmId: 'vm-1', sites: ['siteB'] },
    ]);
    // The controller heard every change as an event, the last one with the final state.
    await until(() => events.some((e) => e.sites.length === 1 && e.sites[0] === 'siteB'), 5000, 'final tunnel.state event');
    expect(events.some((e) => e.sites.join() === 'siteA,siteB')).toBe(true);
  });

  it('bicast adds the new site before the old one when both are missing', async () => {
    const f = await hub();
    const { driver } = await tunnelAgent(f, 'tun-1', { initial: ['siteC'] });
    await f.hub.requestRaw('tun-1', 'tunnel.bicast', { vmId: 'vm-1', oldSite: 'siteA', newSite: 'siteB' });
    expect(driver.ops.map((o) => o.site)).toEqual(['siteB', 'siteA']);
    expect(driver.ops.some((o) => o.op === 'remove')).toBe(false);
  });

  it('never removes the last site: the driver refuses, and a prune whose keep site cannot be added removes nothing', async () => {
    const alone = new MemoryTunnelDriver({ known: SITES, initial: ['siteA'] });
    expect(await codeOf(alone.remove('siteA'))).toBe('VMTC_TUNNEL_LAST_SITE');
    expect(await alone.sites()).toEqual(['siteA']);
    await alone.remove('siteA', { force: true });
    expect(await alone.sites()).toEqual([]);

    const f = await hub();
    const { driver } = await tunnelAgent(f, 'tun-1');
    // Pruning a VM whose "keep" site is the one already there: nothing is removed.
    expect(await f.hub.requestRaw('tun-1', 'tunnel.prune', { vmId: 'vm-1', keepSite: 'siteA', dropSite: 'siteA' })).toEqual({ sites: ['siteA'], removed: false });
    // The keep site cannot be reached (injected): the request fails and the old site stays.
    driver.failAdd.add('siteB');
    expect(await codeOf(f.hub.requestRaw('tun-1', 'tunnel.prune', { vmId: 'vm-1', keepSite: 'siteB', dropSite: 'siteA' }))).toBe('VMTC_TUNNEL_COMMAND_FAILED');
    expect(await driver.sites()).toEqual(['siteA']);
    expect(driver.ops.some((o) => o.op === 'remove' && o.changed)).toBe(false);
  });

  it('keeps a site another VM still needs', async () => {
    const f = await hub();
    const { driver } = await tunnelAgent(f, 'tun-1');
    await f.hub.requestRaw('tun-1', 'tunnel.bicast', { vmId: 'vm-1', oldSite: 'siteA', newSite: 'siteB' });
    await f.hub.requestRaw('tun-1', 'tunnel.bicast', { vmId: 'vm-2', oldSite: 'siteA', newSite: 'siteC' });
    await f.hub.requestRaw('tun-1', 'tunnel.prune', { vmId: 'vm-2', keepSite: 'siteA', dropSite: 'siteC' });
    // vm-2 rolled back to A; vm-1 moves to B: A is still vm-2's site.
    expect(await f.hub.requestRaw('tun-1', 'tunnel.prune', { vmId: 'vm-1', keepSite: 'siteB', dropSite: 'siteA' })).toEqual({ sites: ['siteA', 'siteB'], removed: false, keptFor: ['vm-2'] });
    expect(await driver.sites()).toEqual(['siteA', 'siteB']);
  });

  it('answers bad parameters with coded errors and changes nothing', async () => {
    const f = await hub();
    const { driver } = await tunnelAgent(f, 'tun-1');
    const req = (m: string, p: unknown) => f.hub.requestRaw('tun-1', m, p);
    const bad: [string, unknown, string, string | undefined][] = [
      ['tunnel.bicast', null, 'VMTC_TUNNEL_BAD_PARAMS', 'params'],
      ['tunnel.bicast', [], 'VMTC_TUNNEL_BAD_PARAMS', 'params'],
      ['tunnel.bicast', { oldSite: 'siteA', newSite: 'siteB' }, 'VMTC_TUNNEL_BAD_PARAMS', 'vmId'],
      ['tunnel.bicast', { vmId: '', oldSite: 'siteA', newSite: 'siteB' }, 'VMTC_TUNNEL_BAD_PARAMS', 'vmId'],
      ['tunnel.bicast', { vmId: 'vm-1', oldSite: 'siteA', newSite: 7 }, 'VMTC_TUNNEL_BAD_PARAMS', 'newSite'],
      ['tunnel.bicast', { vmId: 'vm-1', oldSite: 'siteA', newSite: 'a b' }, 'VMTC_TUNNEL_BAD_PARAMS', 'newSite'],
      ['tunnel.bicast', { vmId: 'vm-1', oldSite: 'siteA', newSite: 'siteB', extra: 1 }, 'VMTC_TUNNEL_BAD_PARAMS', 'extra'],
      ['tunnel.bicast', { vmId: 'vm-1', oldSite: 'siteA', newSite: 'siteZ' }, 'VMTC_TUNNEL_UNKNOWN_SITE', 'newSite'],
      ['tunnel.prune', { vmId: 'vm-1', keepSite: 'siteB' }, 'VMTC_TUNNEL_BAD_PARAMS', 'dropSite'],
      ['tunnel.prune', { vmId: 'vm-1', keepSite: 'siteZ', dropSite: 'siteA' }, 'VMTC_TUNNEL_UNKNOWN_SITE', 'keepSite'],
      ['tunnel.state', { x: 1 }, 'VMTC_TUNNEL_BAD_PARAMS', 'x'],
    ];
    for (const [m, p, code, field] of bad) {
      const err = await caught(req(m, p));
      expect(err, `${m} ${JSON.stringify(p)}`).toBeInstanceOf(VmtcError);
      expect(err!.code, `${m} ${JSON.stringify(p)}`).toBe(code);
      expect(err!.status).toBe(TUNNEL_AGENT_ERRORS[code as keyof typeof TUNNEL_AGENT_ERRORS].status);
      expect(err!.details?.field).toBe(field);
    }
    expect(driver.ops).toEqual([]);
    expect(await driver.sites()).toEqual(['siteA']);
  });

  it('refuses an unknown --initial-site at start', async () => {
    const f = await hub();
    const d = tempDir('vmtc-tunnel-');
    cleanups.push(() => rmSync(d, { recursive: true, force: true }));
    const { token } = f.hub.mintEnrollToken({ kind: 'tunnel', hostId: 'tun-x' });
    const driver = new MemoryTunnelDriver({ known: SITES });
    expect(await codeOf(startTunnelAgent({ controllerUrl: f.controllerUrl, enrollToken: token, dataDir: d, driver, initialSite: 'nowhere' }))).toBe('VMTC_TUNNEL_UNKNOWN_SITE');
    expect(await driver.sites()).toEqual([]);
  });
});

describe('HubTunnelPort', () => {
  it('switches every connected tunnel agent, and names the one that fails', async () => {
    const f = await hub();
    // A host agent is connected too: the port must not send tunnel requests to it.
    const hd = tempDir('vmtc-host-');
    cleanups.push(() => rmSync(hd, { recursive: true, force: true }));
    const host = await startHostAgent({ controllerUrl: f.controllerUrl, enrollToken: f.hub.mintEnrollToken({ kind: 'host', hostId: 'host-1' }).token, dataDir: hd, driver: new DoubleDriver({}) });
    cleanups.push(() => host.close());
    await until(() => f.hub.isConnected('host-1'), 10_000, 'host agent');
    const t1 = await tunnelAgent(f, 'tun-1');
    const t2 = await tunnelAgent(f, 'tun-2');
    const port = new HubTunnelPort(f.hub, { timeoutMs: 5000 });
    expect(port.targets()).toEqual(['tun-1', 'tun-2']);

    await port.bicast('vm-1', 'siteA', 'siteB');
    expect(await t1.driver.sites()).toEqual(['siteA', 'siteB']);
    expect(await t2.driver.sites()).toEqual(['siteA', 'siteB']);
    await port.prune('vm-1', 'siteB', 'siteA');
    expect(await t1.driver.sites()).toEqual(['siteB']);
    expect(await t2.driver.sites()).toEqual(['siteB']);

    // tun-2 cannot reach siteC: the bicast fails as a whole and says which agent and why.
    t2.driver.failAdd.add('siteC');
    let err = await caught(port.bicast('vm-1', 'siteB', 'siteC'));
    expect(err?.code).toBe('VMTC_TUNNEL_SWITCH_FAILED');
    expect(err?.details).toMatchObject({ method: 'tunnel.bicast', vmId: 'vm-1', agents: ['tun-2'], succeeded: ['tun-1'] });
    expect((err?.details?.failed as { hostId: string; error: { code: string } }[])[0]).toMatchObject({ hostId: 'tun-2', error: { code: 'VMTC_TUNNEL_COMMAND_FAILED' } });
    expect(err?.message).toContain('tun-2');
    // The rollback prune (keep the old site) works on both and leaves only B.
    t2.driver.failAdd.clear();
    await port.prune('vm-1', 'siteB', 'siteC');
    expect(await t1.driver.sites()).toEqual(['siteB']);
    expect(await t2.driver.sites()).toEqual(['siteB']);

    // A configured agent that is away fails the switch (it would leave its clients behind).
    const only = new HubTunnelPort(f.hub, { agentIds: ['tun-1', 'tun-gone'] });
    err = await caught(only.bicast('vm-1', 'siteB', 'siteA'));
    expect(err?.code).toBe('VMTC_TUNNEL_SWITCH_FAILED');
    expect(err?.details).toMatchObject({ agents: ['tun-gone'], succeeded: ['tun-1'] });
    expect((err?.details?.failed as { error: { code: string } }[])[0]!.error.code).toBe('VMTC_AGENT_NOT_CONNECTED');
  });

  it('is a no-op when no tunnel agent is connected', async () => {
    const f = await hub();
    const port = new HubTunnelPort(f.hub);
    expect(port.targets()).toEqual([]);
    await expect(port.bicast('vm-1', 'siteA', 'siteB')).resolves.toBeUndefined();
    await expect(port.prune('vm-1', 'siteB', 'siteA')).resolves.toBeUndefined();
  });
});
