// The controller uses both: a live migration obtains a capability token from a real AAA and a
// provisioned lightpath from a real broker (memory driver, a named test double for the network
// elements) before any VM state moves, and releases it afterwards or on failure.
import { describe, it, expect, afterEach } from 'vitest';
import { mkdirSync, rmSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startHarness, vmSpec, type Harness } from '../helpers/controller-harness.ts';
import { startAaa } from '../../src/aaa/index.ts';
import { startBroker } from '../../src/broker/index.ts';
import { loadControllerKey } from '../../src/controller/integrations.ts';
import { silentLogger } from '../../src/common/log.ts';

let h: Harness | undefined;
afterEach(async () => { await h?.close(); h = undefined; });

async function withServices(allowedDst: string[]) {
  let brokerRef: Awaited<ReturnType<typeof startBroker>> | undefined;
  h = await startHarness({}, async (controllerDir) => {
    mkdirSync(controllerDir, { recursive: true });
    const { jkt } = loadControllerKey(controllerDir);
    const svcDir = mkdtempSync(join(tmpdir(), 'vmtc-svc-'));
    const aaa = await startAaa({
      dataDir: join(svcDir, 'aaa'), domain: 'a', logger: silentLogger(),
      policy: {
        version: 1, domain: 'a', sites: { 'site-A': 'a', 'site-B': 'a' },
        requesters: [{ id: 'controller', jkt }],
        rules: [{ id: 'ab', requesters: ['controller'], projects: ['demo'], src: ['site-A', 'site-B'], dst: allowedDst, maxBandwidthMbps: 1000 }],
      },
    });
    const broker = await startBroker({
      dataDir: join(svcDir, 'broker'), domain: 'a', logger: silentLogger(), driver: 'memory',
      topology: { domain: 'a', nodes: [{ id: 'site-A' }, { id: 'site-B' }], links: [{ id: 'ab', a: 'site-A', z: 'site-B', capacityMbps: 1000 }] },
      trust: { issuers: [{ iss: 'aaa:a', jwks: aaa.jwks() }] } as never,
    });
    brokerRef = broker;
    return {
      options: { aaaUrl: aaa.url, brokerUrl: broker.url },
      cleanup: async () => { await broker.close(); await aaa.close(); rmSync(svcDir, { recursive: true, force: true }); },
    };
  });
  await h.addHost('A', { vms: [vmSpec('vm1')] }, 'site-A');
  await h.addHost('B', {}, 'site-B');
  return brokerRef!;
}

describe('controller with a real AAA and broker', () => {
  it('gets a token and a lightpath before moving anything, and releases the lightpath after', async () => {
    const broker = await withServices(['site-A', 'site-B']);
    const res = await h!.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B', bandwidthMbps: 500 });
    expect(res.status).toBe(202);
    const done = await h!.waitState(res.body.id, ['completed', 'rolled_back', 'failed']);
    expect({ state: done.state, error: done.error }).toEqual({ state: 'completed', error: null });
    expect(done.steps.token.jti).toMatch(/.+/);
    const rid = done.steps.lightpath.reservationId;
    expect(rid).toMatch(/.+/);
    expect(done.steps.lightpath.released).toBe(true);
    const order = done.transitions.map((t: any) => t.to);
    expect(order.indexOf('provisioning')).toBeLessThan(order.indexOf('preparing'));
    const r = await (await fetch(`${broker.url}/v1/reservations/${rid}`, { headers: { authorization: `Bearer ${broker.operatorToken}` } })).json() as any;
    expect(r.provisionState).toBe('Released');
    expect(['Terminated', 'Terminating']).toContain(r.lifecycleState);
    expect(r.migrationId).toBe(res.body.id);
  });

  it('a refused token means no VM state moved at all', async () => {
    await withServices(['site-A']); // the policy forbids site-B as a destination
    // The AAA's policy check refuses it at admission, with the AAA's code (policy-precheck.ts;
    // a refusal only the token request can know is in api-policy-upfront.test.ts).
    const res = await h!.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B', bandwidthMbps: 500 });
    expect(res).toMatchObject({ status: 403, body: { code: 'VMTC_AAA_POLICY_DENIED', details: { step: 'policy-check', field: 'dst' } } });
    expect((await h!.api('GET', '/v1/migrations')).body.migrations).toEqual([]);
    // B never saw the VM; A still runs it.
    expect(h!.controller.hub.inventory('B')!.vms).toEqual([]);
    expect(h!.controller.hub.inventory('A')!.vms.find((v) => v.vmId === 'vm1')!.state).toBe('running');
  });
});
