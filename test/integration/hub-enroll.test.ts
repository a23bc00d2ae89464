// Enrolment over REST and the first mTLS link: real fastify, real hub (wss + mutual TLS), real
// SQLite file, real host agent with the DoubleDriver test double.
import { describe, it, expect } from 'vitest';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { X509Certificate } from 'node:crypto';
import { ManualClock } from '../../src/common/clock.ts';
import { makeKeyAndCsr } from '../../src/common/pki.ts';
import { HUB_ERRORS } from '../../src/controller/hub-errors.ts';
import { COMMON_ERRORS, mergeCatalogues } from '../../src/common/errors.ts';
import { startHostAgent, type HostAgent } from '../../agents/host/index.ts';
import { DoubleDriver } from '../../agents/host/double-driver.ts';
import { ADMIN, waitFor } from '../helpers/agent-fixture.ts';
import { useHubFixtures } from '../helpers/hub-fixture.ts';

const { cleanups, hubFixture, dir } = useHubFixtures();

async function post(url: string, body: unknown, headers: Record<string, string> = {}) {
  const init: RequestInit = body === undefined
    ? { method: 'POST', headers }
    : { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) };
  const res = await fetch(url, init);
  return { status: res.status, body: (await res.json()) as Record<string, any> };
}

describe('enrolment', () => {
  it('HUB_ERRORS merges into a catalogue without clashing with the common codes', () => {
    expect(() => mergeCatalogues(COMMON_ERRORS, HUB_ERRORS)).not.toThrow();
  });

  it('enrols a host agent over REST, connects with mTLS and delivers its inventory', async () => {
    const f = await hubFixture();
    // Minting needs the admin credential.
    expect((await post(`${f.controllerUrl}/v1/enrollment-tokens`, { kind: 'host', hostId: 'host-a' })).status).toBe(401);
    const minted = await post(`${f.controllerUrl}/v1/enrollment-tokens`, { kind: 'host', hostId: 'host-a', ttlSeconds: 600 }, ADMIN);
    expect(minted.status).toBe(201);
    expect(minted.body.caFingerprint).toBe(f.hub.caFingerprint);

    const d = dir();
    const driver = new DoubleDriver({ memoryMb: 4096, vms: [{ vmId: 'vm-1', project: 'p', vcpus: 1, memoryMb: 256, diskGb: 1 }] });
    cleanups.push(() => driver.close());
    const inv = waitFor(f.hub, 'inventory', (h: string) => h === 'host-a');
    const connected = waitFor(f.hub, 'connected');
    const agent = await startHostAgent({ controllerUrl: f.controllerUrl, enrollToken: minted.body.token, caFingerprint: minted.body.caFingerprint, dataDir: d, driver, site: 'site-a', migrationAddress: '192.0.2.10' });
    cleanups.push(() => agent.close());
    expect(agent.hostId).toBe('host-a');
    expect(await connected).toEqual(['host-a', 'host']);
    const [, inventory] = (await inv) as [string, any];
    expect(inventory).toMatchObject({ hostId: 'host-a', site: 'site-a', migrationAddress: '192.0.2.10', hypervisor: { type: 'double' }, memoryMb: 4096 });
    expect(inventory.vms.map((v: any) => [v.vmId, v.state])).toEqual([['vm-1', 'running']]);
    expect(f.hub.inventory('host-a')?.vms).toHaveLength(1);
    expect(f.hub.isConnected('host-a')).toBe(true);

    // Stored credentials: key private to the agent, cert for host-a from our CA.
    expect(statSync(join(d, 'agent.key')).mode & 0o777).toBe(0o600);
    const cert = new X509Certificate(readFileSync(join(d, 'agent.crt')));
    expect(cert.subject).toContain('CN=host-a');
    expect(cert.checkIssued(new X509Certificate(f.hub.caCertPem))).toBe(true);
    expect(JSON.parse(readFileSync(join(d, 'agent.json'), 'utf8'))).toMatchObject({ hostId: 'host-a', kind: 'host', agentUrl: f.hub.url });

    // A request goes through the link to the driver.
    const described = await f.hub.request('host-a', 'vm.describe', { vmId: 'vm-1' });
    expect(described.state).toBe('running');
    await expect(f.hub.request('host-a', 'vm.describe', { vmId: 'nope' })).rejects.toMatchObject({ code: 'VMTC_HOST_VM_NOT_FOUND', status: 404 });

    const list = await fetch(`${f.controllerUrl}/v1/agents`, { headers: ADMIN });
    const agents = ((await list.json()) as any).agents;
    expect(agents).toHaveLength(1);
    expect(agents[0]).toMatchObject({ hostId: 'host-a', kind: 'host', connected: true, agentVersion: '0.1.0' });
    expect(agents[0].certSerials).toHaveLength(1);
  });

  it('restarting with stored credentials (and the same spent token) connects without enrolling again', async () => {
    const f = await hubFixture();
    const { token } = f.hub.mintEnrollToken({ kind: 'host', hostId: 'host-b' });
    const d = dir();
    const driver = new DoubleDriver();
    cleanups.push(() => driver.close());
    let agent: HostAgent = await startHostAgent({ controllerUrl: f.controllerUrl, enrollToken: token, dataDir: d, driver });
    await agent.link.waitConnected();
    await agent.close();
    const c1 = waitFor(f.hub, 'connected');
    agent = await startHostAgent({ controllerUrl: f.controllerUrl, enrollToken: token, dataDir: d, driver });
    cleanups.push(() => agent.close());
    await c1;
    const c2 = waitFor(f.hub, 'connected');
    await agent.close();
    agent = await startHostAgent({ controllerUrl: 'http://127.0.0.1:1', dataDir: d, driver });
    await c2;
    expect(f.hub.agents().find((a) => a.hostId === 'host-b')?.certSerials).toHaveLength(1);
    await agent.close();
    // Without credentials and without a token there is nothing to go on.
    await expect(startHostAgent({ controllerUrl: f.controllerUrl, dataDir: dir(), driver })).rejects.toMatchObject({ code: 'VMTC_CONFIG_INVALID', details: { field: 'enroll' } });
  });

  it('a token is single-use; a bad CSR does not spend it; the CN comes from the token', async () => {
    const f = await hubFixture();
    const minted = f.hub.mintEnrollToken({ kind: 'host', hostId: 'host-c' });
    const bad = await post(`${f.controllerUrl}/v1/enroll`, { token: minted.token, csr: '-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n' });
    expect(bad.status).toBe(400);
    expect(bad.body.code).toBe('VMTC_CSR_INVALID');
    const { csrPem } = makeKeyAndCsr('host-admin-please');
    const ok = await post(`${f.controllerUrl}/v1/enroll`, { token: minted.token, csr: csrPem });
    expect(ok.status).toBe(200);
    expect(ok.body).toMatchObject({ hostId: 'host-c', kind: 'host', agentUrl: f.hub.url, caCertificate: f.hub.caCertPem });
    expect(new X509Certificate(ok.body.certificate).subject).toContain('CN=host-c');
    const again = await post(`${f.controllerUrl}/v1/enroll`, { token: minted.token, csr: csrPem });
    expect(again.status).toBe(409);
    expect(again.body.code).toBe('VMTC_ENROLL_TOKEN_USED');
    const unknown = await post(`${f.controllerUrl}/v1/enroll`, { token: 'vmtc-enroll-nope', csr: csrPem });
    expect(unknown.body.code).toBe('VMTC_ENROLL_TOKEN_INVALID');
    expect(unknown.status).toBe(401);
    const extra = await post(`${f.controllerUrl}/v1/enroll`, { token: minted.token, csr: csrPem, hostId: 'x' });
    expect(extra.body.code).toBe('VMTC_VALIDATION');
    // The database holds only the hash of the token.
    const rows = f.db.prepare('SELECT token_hash FROM pki_enroll_tokens').all() as { token_hash: string }[];
    expect(rows.some((r) => r.token_hash.includes(minted.token))).toBe(false);
  });

  it('a token expires (injected clock)', async () => {
    const clock = new ManualClock(Date.now());
    const f = await hubFixture({ clock });
    const t = await post(`${f.controllerUrl}/v1/enrollment-tokens`, { kind: 'host', hostId: 'host-d', ttlSeconds: 60 }, ADMIN);
    expect(new Date(t.body.expiresAt).getTime()).toBe(clock.now() + 60_000);
    clock.advance(60_000);
    const { csrPem } = makeKeyAndCsr('x');
    const r = await post(`${f.controllerUrl}/v1/enroll`, { token: t.body.token, csr: csrPem });
    expect(r.status).toBe(401);
    expect(r.body.code).toBe('VMTC_ENROLL_TOKEN_EXPIRED');
    // One just inside its lifetime still works.
    const t2 = f.hub.mintEnrollToken({ kind: 'host', hostId: 'host-d', ttlMs: 60_000 });
    clock.advance(59_999);
    expect(f.hub.enroll(t2.token, csrPem).hostId).toBe('host-d');
  });

  it('refuses bad host ids and a host id enrolled as another kind', async () => {
    const f = await hubFixture();
    expect((await post(`${f.controllerUrl}/v1/enrollment-tokens`, { kind: 'host', hostId: '../etc' }, ADMIN)).body.code).toBe('VMTC_VALIDATION');
    expect(() => f.hub.mintEnrollToken({ kind: 'host', hostId: '-x' })).toThrow(expect.objectContaining({ code: 'VMTC_HOST_ID_INVALID' }));
    f.hub.mintEnrollToken({ kind: 'tunnel', hostId: 'tun-1' });
    const r = await post(`${f.controllerUrl}/v1/enrollment-tokens`, { kind: 'host', hostId: 'tun-1' }, ADMIN);
    expect(r.status).toBe(409);
    expect(r.body.code).toBe('VMTC_AGENT_KIND_CONFLICT');
    expect((await post(`${f.controllerUrl}/v1/agents/nobody/revoke`, undefined, ADMIN)).body.code).toBe('VMTC_AGENT_UNKNOWN');
    expect(existsSync(join(f.dir, 'pki', 'ca.key'))).toBe(true);
  });
});
