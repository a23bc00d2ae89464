// The controller (a real process) must never leak a lightpath across its own death:
// - killed with -9 while the broker commits and provisions the circuit, before the reservation's
//   id came back: on restart it finds the reservation by the idempotency key it recorded before
//   asking, releases it, and rolls the migration back;
// - a migration that ended while the broker could not be reached keeps its reservation only
//   until the controller restarts: then it is released.
import { describe, it, expect } from 'vitest';
import net from 'node:net';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { startHostAgent, type HostAgent } from '../../agents/host/index.ts';
import { DoubleDriver } from '../../agents/host/double-driver.ts';
import { MemoryDoubleDriver } from '../../src/broker/drivers/memory-double.ts';
import type { NetworkElementDriver, SegmentRequest } from '../../src/broker/driver.ts';
import { silentLogger } from '../../src/common/log.ts';
import { cleanupsAfterEach } from '../helpers/cleanups.ts';
import { tempDir, until } from '../helpers/agent-fixture.ts';
import { vmSpec } from '../helpers/controller-harness.ts';
import { startLightpathServices } from '../helpers/lightpath-services.ts';
import { freePort, startVmtc, type Proc } from '../helpers/proc.ts';

const cleanups = cleanupsAfterEach();
const TERMINAL = ['completed', 'rolled_back', 'failed', 'cancelled'];

/** The broker's network element driver (the memory test double) with provision held at a gate
 *  the test opens: the reservation is committed and provisioning while it waits. */
class GatedDriver implements NetworkElementDriver {
  readonly name = 'gated-memory-double';
  readonly inner = new MemoryDoubleDriver();
  private open!: () => void;
  private readonly gate = new Promise<void>((r) => { this.open = r; });
  private entered!: (req: SegmentRequest) => void;
  readonly provisioning = new Promise<SegmentRequest>((r) => { this.entered = r; });
  async provision(req: SegmentRequest) {
    this.entered(req);
    await this.gate;
    return this.inner.provision(req);
  }
  release(id: string) { return this.inner.release(id); }
  close() { return this.inner.close(); }
  letGo() { this.open(); }
}

/** A TCP relay in front of the broker that the test can take down and bring back on the same
 *  port: "the broker cannot be reached". */
async function relay(targetPort: number, port: number) {
  let server: net.Server | undefined;
  const socks = new Set<net.Socket>();
  const up = () => new Promise<void>((resolve, reject) => {
    server = net.createServer((c) => {
      const b = net.connect(targetPort, '127.0.0.1');
      for (const s of [c, b]) { socks.add(s); s.on('close', () => socks.delete(s)); s.on('error', () => s.destroy()); }
      c.pipe(b).pipe(c);
    });
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve());
  });
  const down = () => new Promise<void>((resolve) => {
    for (const s of socks) s.destroy();
    if (!server) return resolve();
    server.close(() => resolve());
    server = undefined;
  });
  await up();
  return { up, down };
}

async function setup(o: { driver?: NetworkElementDriver; relayed?: boolean } = {}) {
  const dir = tempDir('vmtc-lp-restart-');
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const ctlDir = join(dir, 'ctl');
  const relayPort = await freePort();
  const services = await startLightpathServices(ctlDir, { ...(o.driver ? { driver: o.driver } : {}), ...(o.relayed ? { brokerPublicUrl: `http://127.0.0.1:${relayPort}` } : {}) });
  cleanups.push(() => services.close());
  const gateway = o.relayed ? await relay(Number(new URL(services.broker.url).port), relayPort) : undefined;
  if (gateway) cleanups.push(() => gateway.down());
  const brokerUrl = gateway ? `http://127.0.0.1:${relayPort}` : services.broker.url;
  const [p1, p2] = [await freePort(), await freePort()];
  const args = ['controller', '--data', ctlDir, '--listen', `127.0.0.1:${p1}`, '--agent-listen', `127.0.0.1:${p2}`, '--heartbeat-ms', '500', '--aaa', services.aaaUrl, '--broker', brokerUrl];
  const procs: Proc[] = [];
  cleanups.push(async () => { for (const p of procs) await p.stop('SIGKILL').catch(() => undefined); });
  const startCtl = async () => { const p = await startVmtc(args); procs.push(p); return p; };
  const ctl = await startCtl();
  const url = ctl.ready.url as string;
  const token = readFileSync(join(ctlDir, 'admin.token'), 'utf8').trim();
  const api = async (method: string, path: string, body?: unknown) => {
    const r = await fetch(url + path, { method, headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) }, ...(body ? { body: JSON.stringify(body) } : {}) });
    return { status: r.status, body: await r.json() as any };
  };
  for (const [hostId, cfg] of [['A', { vms: [vmSpec('vm1')] }], ['B', {}]] as const) {
    const t = await api('POST', '/v1/enrollment-tokens', { kind: 'host', hostId });
    const driver = new DoubleDriver({ bytesPerMb: 16 * 1024, ...cfg });
    cleanups.push(() => driver.close());
    const agent: HostAgent = await startHostAgent({ controllerUrl: url, enrollToken: t.body.token, dataDir: join(dir, hostId), driver, logger: silentLogger(), site: `site-${hostId}`, migrationAddress: '127.0.0.1', backoff: { initialMs: 50, maxMs: 300, jitter: 0.2 } });
    cleanups.push(() => agent.close());
  }
  await until(async () => (await api('GET', '/v1/hosts')).body.hosts.filter((h: any) => h.connected).length === 2, 15_000, 'two hosts connected');
  const migration = async (id: string) => (await api('GET', `/v1/migrations/${id}`)).body;
  return { services, gateway, api, migration, startCtl, ctl };
}

describe('controller restart and the lightpath', () => {
  it('killed while the broker provisions: the reservation it never heard of is found by its key and released', async () => {
    const driver = new GatedDriver();
    const { services, api, migration, startCtl, ctl } = await setup({ driver });
    const m = await api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B', bandwidthMbps: 100 });
    expect(m.status).toBe(202);
    const id = m.body.id as string;

    // The broker has reserved and committed, and is provisioning: the controller waits for the answer.
    const seg = await driver.provisioning;
    await ctl.stop('SIGKILL');
    driver.letGo();
    const mine = async () => (await services.reservations()).filter((r) => r.migrationId === id);
    await until(async () => (await mine())[0]?.dataPlane.active, 10_000, 'the circuit up');
    expect((await mine()).map((r) => [r.id, r.committed, r.provisionState, r.lifecycleState])).toEqual([[seg.connectionId, true, 'Provisioned', 'Created']]);

    await startCtl();
    let last: any;
    await until(async () => { last = await migration(id).catch(() => undefined); return last && TERMINAL.includes(last.state); }, 30_000, 'a terminal state');
    expect({ state: last.state, code: last.error?.code }).toEqual({ state: 'rolled_back', code: 'VMTC_CONTROLLER_RESTARTED' });
    // Killed in provisioning, before the id came back: only the key chosen before asking was on record.
    expect(last.transitions.map((t: any) => t.to).slice(3)).toEqual(['provisioning', 'rolling_back', 'rolled_back']);
    expect(last.steps.lightpath).toMatchObject({ key: id, reservationId: seg.connectionId, released: true });
    expect((await mine()).map((r) => [r.lifecycleState, r.provisionState, r.dataPlane.active])).toEqual([['Terminated', 'Released', false]]);
    expect(driver.inner.active.size).toBe(0);
  }, 90_000);

  it('a migration that ended while the broker was unreachable has its lightpath released at the next start', async () => {
    const { services, gateway, api, migration, startCtl, ctl } = await setup({ relayed: true });
    // ~5 MB at 8 Mbit/s: a few seconds of pre-copy, during which the broker becomes unreachable.
    const m = await api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B', bandwidthMbps: 8 });
    const id = m.body.id as string;
    await until(async () => (await migration(id)).state === 'precopy', 15_000, 'precopy');
    await gateway!.down();
    let last: any;
    await until(async () => { last = await migration(id); return TERMINAL.includes(last.state); }, 30_000, 'a terminal state');
    expect(last.state).toBe('completed');
    expect(last.steps.lightpath.released).not.toBe(true);
    const mine = async () => (await services.reservations()).filter((r) => r.migrationId === id);
    expect((await mine()).map((r) => r.lifecycleState)).toEqual(['Created']);

    await gateway!.up();
    await ctl.stop('SIGKILL');
    await startCtl();
    await until(async () => (await mine())[0]?.lifecycleState === 'Terminated', 15_000, 'the reservation terminated');
    await until(async () => (await migration(id)).steps.lightpath.released === true, 5_000, 'the record saying so');
    expect((await migration(id)).state).toBe('completed');
  }, 90_000);
});
