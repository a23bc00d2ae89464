// A broken or hostile agent (enrolled, with a real certificate) cannot plant a record that breaks
// the controller's reads: every message it sends is checked at the link against the agent
// protocol's schemas (src/common/agent-schemas.ts). A bad hello or inventory is refused with a
// coded close and never stored; a bad event is dropped; a bad result fails its request with a
// code. Rows stored before the check (or damaged) read with defaults after a restart.
import { describe, it, expect } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import WebSocket from 'ws';
import { makeKeyAndCsr } from '../../src/common/pki.ts';
import { RpcPeer } from '../../src/common/rpc.ts';
import { silentLogger } from '../../src/common/log.ts';
import { startController, type Controller } from '../../src/controller/index.ts';
import type { HostInventory } from '../../src/common/agent-protocol.ts';
import { cleanupsAfterEach } from '../helpers/cleanups.ts';
import { waitFor } from '../helpers/agent-fixture.ts';

const cleanups = cleanupsAfterEach();

async function controller(dataDir: string): Promise<Controller> {
  const c = await startController({ dataDir, listen: { host: '127.0.0.1', port: 0 }, agentListen: { host: '127.0.0.1', port: 0 }, logger: silentLogger(), heartbeatMs: 500 });
  cleanups.push(() => c.close());
  return c;
}

function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'vmtc-rogue-'));
  cleanups.push(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

type Closed = { code: number; reason: string };

/** An agent driven by hand: enrolled for real, says a good hello, then sends what the test says. */
async function rogue(c: Controller, hostId: string, handlers: Record<string, (p: unknown) => unknown> = {}) {
  const { token } = c.hub.mintEnrollToken({ kind: 'host', hostId });
  const { keyPem, csrPem } = makeKeyAndCsr(hostId);
  const r = c.hub.enroll(token, csrPem);
  const ws = new WebSocket(c.agentUrl, { key: keyPem, cert: r.certPem, ca: r.caCertPem });
  cleanups.push(() => ws.terminate());
  const closed = new Promise<Closed>((resolve) => ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() })));
  ws.on('error', () => undefined);
  const peer = new RpcPeer(ws, { logger: silentLogger(), handlers });
  const connected = waitFor(c.hub, 'connected', (h: string) => h === hostId);
  ws.once('open', () => peer.emit('hello', { kind: 'host', agentVersion: 'rogue' }));
  await connected;
  return { ws, peer, closed };
}

function goodInventory(hostId: string): HostInventory {
  const spec = { vmId: 'vm1', project: 'p', vcpus: 1, memoryMb: 256, diskGb: 1 };
  return {
    hostId, hypervisor: { type: 'double', version: '1.0' }, cpu: { model: 'm', features: ['sse2'], vcpus: 8 },
    memoryMb: 4096, diskGb: 100, sharedStorage: true, vms: [{ ...spec, state: 'running', spec }], agentVersion: 'rogue',
  };
}

async function get(c: Controller, path: string) {
  const r = await fetch(c.url + path, { headers: { authorization: `Bearer ${c.adminToken}` } });
  return { status: r.status, body: await r.json() as any };
}

describe('messages from agents are checked at the link', () => {
  it('refuses an inventory without cpu or with wrong types with a coded close; nothing is stored and GET /v1/hosts stays 200', async () => {
    const c = await controller(tempDir());
    const { cpu: _cpu, ...noCpu } = goodInventory('rogue-1');
    const wrongTypes = { ...goodInventory('rogue-2'), memoryMb: 'lots', vms: [{ vmId: 5 }] };
    for (const [hostId, inv] of [['rogue-1', noCpu], ['rogue-2', wrongTypes]] as const) {
      const a = await rogue(c, hostId);
      a.peer.emit('inventory', inv);
      expect(await a.closed).toEqual({ code: 4422, reason: 'VMTC_AGENT_MESSAGE_INVALID' });
      expect(c.hub.inventory(hostId)).toBeUndefined();
      expect(c.store.host(hostId)).toBeUndefined();
    }
    const hosts = await get(c, '/v1/hosts');
    expect(hosts.status).toBe(200);
    expect(hosts.body.hosts).toEqual([]);
  });

  it('keeps the last good inventory when a later one is bad', async () => {
    const c = await controller(tempDir());
    const a = await rogue(c, 'rogue-3');
    const stored = waitFor(c.hub, 'inventory', (h: string) => h === 'rogue-3');
    a.peer.emit('inventory', goodInventory('rogue-3'));
    await stored;
    a.peer.emit('inventory', { ...goodInventory('rogue-3'), cpu: { model: 'm', features: 'all', vcpus: -1 } });
    expect((await a.closed).reason).toBe('VMTC_AGENT_MESSAGE_INVALID');
    const host = await get(c, '/v1/hosts/rogue-3');
    expect(host.status).toBe(200);
    expect(host.body).toMatchObject({ hostId: 'rogue-3', cpu: { vcpus: 8, features: 1 }, totals: { memoryMb: 4096 } });
  });

  it('drops an event that does not match its schema (and an unknown event) and keeps the link', async () => {
    const c = await controller(tempDir());
    const a = await rogue(c, 'rogue-4');
    const seen: string[] = [];
    c.hub.on('event', (_h: string, name: string, data: { vmId?: unknown }) => seen.push(`${name}:${String(data?.vmId)}`));
    a.peer.emit('migration.progress', { migrationId: 'm', vmId: 'bad', status: 'active', totalBytes: 'many' });
    a.peer.emit('migration.done', { migrationId: 'm', vmId: 'bad', status: 'exploded' });
    a.peer.emit('made.up', { vmId: 'bad' });
    const good = waitFor(c.hub, 'event', (_h: string, name: string) => name === 'cold.progress');
    a.peer.emit('cold.progress', { migrationId: 'm', vmId: 'good', phase: 'download', transferredBytes: 1, totalBytes: 2 });
    await good;
    expect(seen).toEqual(['cold.progress:good']);
    expect(a.ws.readyState).toBe(WebSocket.OPEN);
  });

  it('fails a request whose result does not match its schema with a coded error', async () => {
    const c = await controller(tempDir());
    await rogue(c, 'rogue-5', { 'vm.describe': () => ({ vmId: 'vm1', state: 'running' }), 'vm.stop': () => ({ ok: true }) });
    await expect(c.hub.request('rogue-5', 'vm.describe', { vmId: 'vm1' })).rejects.toMatchObject({ code: 'VMTC_AGENT_MESSAGE_INVALID', details: { hostId: 'rogue-5', method: 'vm.describe' } });
    expect(await c.hub.request('rogue-5', 'vm.stop', { vmId: 'vm1' })).toEqual({ ok: true });
  });

  it('reads rows stored before the check (or damaged) with defaults, also after the agent is revoked and the controller restarted', async () => {
    const dir = tempDir();
    const first = await controller(dir);
    const a = await rogue(first, 'rogue-6');
    a.peer.emit('inventory', goodInventory('rogue-6'));
    await waitFor(first.hub, 'inventory', (h: string) => h === 'rogue-6');
    // What an unchecked hub used to store for a hostile agent, and a row that is not JSON at all.
    const put = first.store.db.prepare('INSERT OR REPLACE INTO hosts (host_id, inventory, connected, last_seen) VALUES (?, ?, 1, ?)');
    put.run('rogue-6', JSON.stringify({ hostId: 'elsewhere', hypervisor: { type: 'double' }, vms: [{ vmId: 'vm9', state: 'running' }, { state: 'running' }, 7] }), Date.now());
    put.run('broken', '{not json', 'yesterday');
    await (await fetch(`${first.url}/v1/agents/rogue-6/revoke`, { method: 'POST', headers: { authorization: `Bearer ${first.adminToken}` } })).text();
    await first.close();

    const c = await controller(dir);
    const hosts = await get(c, '/v1/hosts');
    expect(hosts.status).toBe(200);
    expect(hosts.body.hosts.map((h: { hostId: string }) => h.hostId)).toEqual(['broken', 'rogue-6']);
    expect(hosts.body.hosts[1]).toMatchObject({ hostId: 'rogue-6', connected: false, cpu: { vcpus: 0, features: 0 }, vms: [{ vmId: 'vm9', state: 'running' }] });
    expect((await get(c, '/v1/hosts/broken')).status).toBe(200);
    const vms = await get(c, '/v1/vms');
    expect(vms.status).toBe(200);
    expect(vms.body.vms).toEqual([expect.objectContaining({ vmId: 'vm9', hostId: 'rogue-6' })]);
    // A migration request that finds the VM on such a row is refused with a code, not a TypeError.
    const r = await fetch(c.url + '/v1/migrations', {
      method: 'POST', headers: { authorization: `Bearer ${c.adminToken}`, 'content-type': 'application/json' }, body: JSON.stringify({ vmId: 'vm9', destinationHostId: 'broken' }),
    });
    expect(r.status).toBe(409);
    expect(await r.json()).toMatchObject({ code: 'VMTC_HOST_NOT_CONNECTED' });
  });
});
