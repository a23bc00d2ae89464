// The agent link itself: mutual TLS refusals, revocation, garbage frames, timeouts, heartbeats
// over a black-holed path, and reconnection to a restarted hub. Real TLS, real ws, real SQLite.
import { describe, it, expect } from 'vitest';
import net from 'node:net';
import { rmSync } from 'node:fs';
import WebSocket from 'ws';
import { createCa, makeKeyAndCsr, signClientCsr } from '../../src/common/pki.ts';
import { RpcPeer } from '../../src/common/rpc.ts';
import { silentLogger } from '../../src/common/log.ts';
import { startHostAgent } from '../../agents/host/index.ts';
import { DoubleDriver } from '../../agents/host/double-driver.ts';
import { AgentHub } from '../../src/controller/hub.ts';
import { ADMIN, startHub, tempDir, waitFor, until, type HubFixture } from '../helpers/agent-fixture.ts';
import { useHubFixtures } from '../helpers/hub-fixture.ts';

const { cleanups, hubFixture, dir } = useHubFixtures();

/** Enrol by hand and return credentials for a hand-driven WebSocket client. */
function creds(hub: AgentHub, hostId: string, kind: 'host' | 'tunnel' = 'host') {
  const { token } = hub.mintEnrollToken({ kind, hostId });
  const { keyPem, csrPem } = makeKeyAndCsr('whatever');
  const r = hub.enroll(token, csrPem);
  return { key: keyPem, cert: r.certPem, ca: r.caCertPem };
}

type Outcome = { open: boolean; error?: string; code?: number; reason?: string };
/** Connect a raw client; resolve when it is closed or failed, or (if stayOpen) once open. */
function connectRaw(url: string, tls: Record<string, unknown>, opts: { autoPong?: boolean } = {}) {
  const ws = new WebSocket(url, { ...tls, ...opts });
  cleanups.push(() => ws.terminate());
  const outcome = new Promise<Outcome>((resolve) => {
    let open = false;
    let error: string | undefined;
    ws.on('open', () => { open = true; });
    ws.on('error', (e) => { error = e.message; });
    ws.on('close', (code, reason) => resolve({ open, ...(error ? { error } : {}), code, reason: reason.toString() }));
  });
  const opened = new Promise<boolean>((resolve) => {
    ws.once('open', () => resolve(true));
    ws.once('close', () => resolve(false));
  });
  return { ws, outcome, opened };
}

/** A hand-driven agent: raw ws + RpcPeer, says hello, waits for the hub's welcome. */
async function rawAgent(f: HubFixture, hostId: string, handlers: Record<string, (p: unknown) => unknown> = {}, opts: { autoPong?: boolean } = {}) {
  const c = connectRaw(f.hub.url, creds(f.hub, hostId), opts);
  const welcome = new Promise<unknown>((resolve) => {
    const peer = new RpcPeer(c.ws, { logger: silentLogger(), handlers, onEvent: (n, d) => { if (n === 'welcome') resolve(d); } });
    c.ws.once('open', () => peer.emit('hello', { kind: 'host', agentVersion: 'raw' }));
  });
  const connected = waitFor(f.hub, 'connected', (h: string) => h === hostId);
  expect(await c.opened).toBe(true);
  await connected;
  expect(await welcome).toMatchObject({ hostId });
  return c;
}

/** A TCP relay that can black-hole its current connections (bytes dropped, sockets kept open). */
async function blackholeProxy(targetPort: number) {
  const pairs: { a: net.Socket; b: net.Socket; dead: boolean }[] = [];
  const server = net.createServer((a) => {
    const b = net.connect(targetPort, '127.0.0.1');
    const pair = { a, b, dead: false };
    pairs.push(pair);
    a.on('data', (d) => { if (!pair.dead) b.write(d); });
    b.on('data', (d) => { if (!pair.dead) a.write(d); });
    // Once black-holed, a close at one end is not passed on either: each end has to find out
    // by itself (the hub by missing pongs, the agent by missing pings).
    const end = () => { if (!pair.dead) { a.destroy(); b.destroy(); } };
    a.on('close', end); b.on('close', end); a.on('error', end); b.on('error', end);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  cleanups.push(() => new Promise<void>((r) => { for (const p of pairs) { p.a.destroy(); p.b.destroy(); } server.close(() => r()); }));
  return { port: (server.address() as net.AddressInfo).port, blackhole: () => { for (const p of pairs) p.dead = true; } };
}

describe('agent links (mutual TLS)', () => {
  it('refuses a client without a certificate and one from another CA, even naming an enrolled host', async () => {
    const f = await hubFixture();
    creds(f.hub, 'host-a'); // host-a exists
    let connected = 0;
    f.hub.on('connected', () => connected++);
    const none = connectRaw(f.hub.url, { ca: f.hub.caCertPem });
    const r1 = await none.outcome;
    expect(r1.open).toBe(false);
    expect(r1.error).toBeDefined();

    const rogue = createCa();
    const { keyPem, csrPem } = makeKeyAndCsr('host-a');
    const forged = signClientCsr(rogue, csrPem, { commonName: 'host-a' });
    const r2 = await connectRaw(f.hub.url, { key: keyPem, cert: forged.certPem, ca: f.hub.caCertPem }).outcome;
    expect(r2.open).toBe(false);
    expect(r2.error).toBeDefined();
    expect(connected).toBe(0);
    expect(f.hub.isConnected('host-a')).toBe(false);
  });

  it('revocation drops the live link with a coded reason and refuses the certificate afterwards; the agent stops', async () => {
    const f = await hubFixture();
    const c = await rawAgent(f, 'host-r');
    const disc = waitFor(f.hub, 'disconnected');
    const res = await fetch(`${f.controllerUrl}/v1/agents/host-r/revoke`, { method: 'POST', headers: ADMIN });
    expect(await res.json()).toEqual({ hostId: 'host-r', revoked: 1 });
    expect(await disc).toEqual(['host-r', 'host']);
    expect(f.hub.isConnected('host-r')).toBe(false);
    expect(await c.outcome).toMatchObject({ open: true, code: 4403, reason: 'VMTC_CERT_REVOKED' });

    // A host agent whose certificate gets revoked stops retrying and says why.
    const { token } = f.hub.mintEnrollToken({ kind: 'host', hostId: 'host-s' });
    const driver = new DoubleDriver();
    cleanups.push(() => driver.close());
    const agent = await startHostAgent({ controllerUrl: f.controllerUrl, enrollToken: token, dataDir: dir(), driver, backoff: { initialMs: 20, maxMs: 50 } });
    cleanups.push(() => agent.close());
    await agent.link.waitConnected();
    const refused = waitFor(agent.link, 'refused');
    f.hub.revoke('host-s');
    const [err] = (await refused) as [{ code: string }];
    expect(err.code).toBe('VMTC_CERT_REVOKED');
    // It was not readmitted in the meantime.
    expect(f.hub.isConnected('host-s')).toBe(false);
    expect(f.hub.agents().find((a) => a.hostId === 'host-s')).toMatchObject({ connected: false, certSerials: [] });
  });

  it('a revoked certificate cannot reconnect', async () => {
    const f = await hubFixture();
    const tls = creds(f.hub, 'host-x');
    f.hub.revoke('host-x');
    const r = await connectRaw(f.hub.url, tls).outcome;
    expect(r).toMatchObject({ code: 4403, reason: 'VMTC_CERT_REVOKED' });
  });

  it('garbage frames and unexpected replies are dropped and the link stays up, both ways', async () => {
    const f = await hubFixture();
    const c = await rawAgent(f, 'host-g', { echo: (p) => p });
    c.ws.send('this is not json');
    c.ws.send(JSON.stringify({ t: 'res', id: 4242, ok: true, result: 'late' }));
    c.ws.send(JSON.stringify({ t: 'what' }));
    c.ws.send(Buffer.from([1, 2, 3]), { binary: true });
    c.ws.send(JSON.stringify({ t: 'evt', name: 'migration.progress', data: 'not a progress report' }));
    // (An invalid inventory is refused with a coded close: test/integration/hub-agent-messages.test.ts.)
    expect(await f.hub.requestRaw('host-g', 'echo', { x: 1 })).toEqual({ x: 1 });
    expect(f.hub.isConnected('host-g')).toBe(true);
    expect(f.hub.inventory('host-g')).toBeUndefined();

    // The agent side (AgentLink + host agent) shrugs off the same from the hub.
    const { token } = f.hub.mintEnrollToken({ kind: 'host', hostId: 'host-h' });
    const driver = new DoubleDriver();
    cleanups.push(() => driver.close());
    const agent = await startHostAgent({ controllerUrl: f.controllerUrl, enrollToken: token, dataDir: dir(), driver });
    cleanups.push(() => agent.close());
    await agent.link.waitConnected();
    const hubWs = (f.hub as unknown as { links: Map<string, { ws: WebSocket }> }).links.get('host-h')!.ws;
    hubWs.send('{{{garbage');
    hubWs.send(JSON.stringify({ t: 'res', id: 777, ok: false, error: { code: 'X', message: 'y' } }));
    hubWs.send(JSON.stringify({ t: 'req', id: 'not-a-number', method: 'vm.stop' }));
    const inv = await f.hub.request('host-h', 'host.inventory', {});
    expect(inv.hostId).toBe('host-h');
    expect(agent.link.connected).toBe(true);
    expect(agent.link.connections).toBe(1);
  });

  it('a request nobody answers times out with VMTC_TIMEOUT; an absent agent gives VMTC_AGENT_NOT_CONNECTED', async () => {
    const f = await hubFixture();
    await rawAgent(f, 'host-t', { slow: () => new Promise(() => {}) });
    await expect(f.hub.requestRaw('host-t', 'slow', {}, 150)).rejects.toMatchObject({ code: 'VMTC_TIMEOUT' });
    await expect(f.hub.requestRaw('host-t', 'nosuch', {})).rejects.toMatchObject({ code: 'VMTC_UNKNOWN_METHOD' });
    await expect(f.hub.request('ghost', 'host.inventory', {})).rejects.toMatchObject({ code: 'VMTC_AGENT_NOT_CONNECTED', status: 503 });
  });

  it('a second connection with the same identity replaces the first without a disconnect event', async () => {
    const f = await hubFixture();
    const tls = creds(f.hub, 'host-dup');
    let disconnects = 0;
    f.hub.on('disconnected', () => disconnects++);
    const connect = async (tag: string) => {
      const c = connectRaw(f.hub.url, tls);
      const peer = new RpcPeer(c.ws, { logger: silentLogger(), handlers: { who: () => tag } });
      c.ws.once('open', () => peer.emit('hello', { kind: 'host', agentVersion: tag }));
      await waitFor(f.hub, 'connected');
      return c;
    };
    const first = await connect('first');
    await connect('second');
    expect(await first.outcome).toMatchObject({ code: 4409, reason: 'VMTC_AGENT_REPLACED' });
    expect(await f.hub.requestRaw('host-dup', 'who', {})).toBe('second');
    expect(disconnects).toBe(0);
    // A hello claiming the wrong kind is refused.
    const bad = connectRaw(f.hub.url, tls);
    const peer = new RpcPeer(bad.ws, { logger: silentLogger() });
    bad.ws.once('open', () => peer.emit('hello', { kind: 'tunnel', agentVersion: 'x' }));
    expect(await bad.outcome).toMatchObject({ code: 4400, reason: 'VMTC_AGENT_HELLO_INVALID' });
  });

  it('the hub drops a link whose pongs stop (2 heartbeats)', async () => {
    const f = await hubFixture({ heartbeatMs: 100 });
    const c = await rawAgent(f, 'host-np', {}, { autoPong: false });
    const [hostId] = (await waitFor(f.hub, 'disconnected')) as [string];
    expect(hostId).toBe('host-np');
    expect((await c.outcome).open).toBe(true);
  });

  it('a black-holed path is detected at both ends by heartbeat and the agent reconnects', async () => {
    // The hub advertises a relay as its agent URL so the test can silence the path without
    // closing it (what a cut lightpath or a frozen NAT looks like).
    const dataDir = tempDir('vmtc-hub-');
    cleanups.push(() => rmSync(dataDir, { recursive: true, force: true }));
    const probe = await startHub({ dir: dataDir });
    const hubPort = Number(new URL(probe.hub.url).port);
    await probe.stop();
    probe.db.close();
    const proxy = await blackholeProxy(hubPort);
    const { openDb } = await import('../../src/common/db.ts');
    const db = openDb(`${dataDir}/controller.db`, []);
    cleanups.push(() => { db.close(); });
    const hub = await AgentHub.start({ logger: silentLogger(), db, dataDir, listen: { host: '127.0.0.1', port: hubPort }, heartbeatMs: 100, advertiseUrl: `wss://127.0.0.1:${proxy.port}` });
    cleanups.push(() => hub.close());
    const { token } = hub.mintEnrollToken({ kind: 'host', hostId: 'host-bh' });
    // AgentLink enrols over REST, so mount the routes on this hub too.
    const { buildHttp, baseUrl } = await import('../../src/common/http.ts');
    const { registerEnrollRoutes } = await import('../../src/controller/enroll-routes.ts');
    const app = await buildHttp({ logger: silentLogger(), title: 't' });
    registerEnrollRoutes(app, hub, { requireAdmin: async () => {} });
    await app.listen({ host: '127.0.0.1', port: 0 });
    cleanups.push(() => app.close());

    const driver = new DoubleDriver();
    cleanups.push(() => driver.close());
    const agent = await startHostAgent({ controllerUrl: baseUrl(app), enrollToken: token, dataDir: dir(), driver, backoff: { initialMs: 20, maxMs: 100 } });
    cleanups.push(() => agent.close());
    await agent.link.waitConnected();
    expect(hub.isConnected('host-bh')).toBe(true);

    const hubSaw = waitFor(hub, 'disconnected');
    const agentSaw = waitFor(agent.link, 'disconnected');
    const back = waitFor(hub, 'connected', undefined, 15_000);
    const inventoryAgain = waitFor(hub, 'inventory', undefined, 15_000);
    proxy.blackhole();
    await hubSaw;
    await agentSaw;
    await back;
    await inventoryAgain;
    expect(agent.link.connections).toBe(2);
    expect(hub.isConnected('host-bh')).toBe(true);
  });

  it('the agent reconnects to a hub restarted on the same data dir and port, keeping its identity', async () => {
    const f = await hubFixture({ heartbeatMs: 200 });
    const port = Number(new URL(f.hub.url).port);
    const { token } = f.hub.mintEnrollToken({ kind: 'host', hostId: 'host-rs' });
    const driver = new DoubleDriver({ vms: [{ vmId: 'vm-9', project: 'p', vcpus: 1, memoryMb: 64, diskGb: 1 }] });
    cleanups.push(() => driver.close());
    const agent = await startHostAgent({ controllerUrl: f.controllerUrl, enrollToken: token, dataDir: dir(), driver, backoff: { initialMs: 20, maxMs: 100 } });
    cleanups.push(() => agent.close());
    await agent.link.waitConnected();
    const fp = f.hub.caFingerprint;
    const down = waitFor(agent.link, 'disconnected');
    await f.stop();
    await down;
    const f2 = await startHub({ dir: f.dir, db: f.db, port, heartbeatMs: 200 });
    cleanups.push(() => f2.stop());
    expect(f2.hub.caFingerprint).toBe(fp);
    const inv = (await waitFor(f2.hub, 'inventory', undefined, 15_000)) as [string, { vms: { vmId: string }[] }];
    expect(inv[0]).toBe('host-rs');
    expect(inv[1].vms[0]!.vmId).toBe('vm-9');
    await until(() => agent.link.connections === 2, 5000, 'second connection');
  });
});
