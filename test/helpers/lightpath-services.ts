// A real AAA and a real broker for one domain with two sites, set up for a controller whose data
// directory is given (its key is created there, so the AAA policy can name it). The broker's
// network element driver is the named test double (MemoryDoubleDriver) unless one is passed.
// Not a test file itself.
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startAaa } from '../../src/aaa/index.ts';
import { startBroker, type Broker } from '../../src/broker/index.ts';
import type { NetworkElementDriver } from '../../src/broker/driver.ts';
import { loadControllerKey } from '../../src/controller/integrations.ts';
import { silentLogger } from '../../src/common/log.ts';

export interface LightpathServices {
  aaaUrl: string;
  /** The AAA's admin bearer credential. */
  aaaAdminToken: string;
  broker: Broker;
  /** Every reservation, as the operator reads them. */
  reservations(): Promise<{ id: string; migrationId?: string; lifecycleState: string; provisionState: string; committed: boolean; dataPlane: { active: boolean } }[]>;
  close(): Promise<void>;
}

export async function startLightpathServices(controllerDir: string, o: { sites?: [string, string]; driver?: NetworkElementDriver; brokerPublicUrl?: string } = {}): Promise<LightpathServices> {
  const [a, b] = o.sites ?? ['site-A', 'site-B'];
  mkdirSync(controllerDir, { recursive: true });
  const { jkt } = loadControllerKey(controllerDir);
  const dir = mkdtempSync(join(tmpdir(), 'vmtc-svc-'));
  const aaa = await startAaa({
    dataDir: join(dir, 'aaa'), domain: 'a', logger: silentLogger(),
    policy: {
      version: 1, domain: 'a', sites: { [a]: 'a', [b]: 'a' },
      requesters: [{ id: 'controller', jkt }],
      rules: [{ id: 'ab', requesters: ['controller'], projects: ['demo'], src: [a, b], dst: [a, b], maxBandwidthMbps: 1000 }],
    },
  }).catch((e) => { rmSync(dir, { recursive: true, force: true }); throw e; });
  let broker: Broker;
  try {
    broker = await startBroker({
      dataDir: join(dir, 'broker'), domain: 'a', logger: silentLogger(), driver: o.driver ?? 'memory',
      ...(o.brokerPublicUrl ? { publicUrl: o.brokerPublicUrl } : {}),
      topology: { domain: 'a', nodes: [{ id: a }, { id: b }], links: [{ id: 'ab', a, z: b, capacityMbps: 1000 }] },
      trust: { issuers: [{ iss: 'aaa:a', jwks: aaa.jwks() }] } as never,
    });
  } catch (e) {
    await aaa.close();
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  return {
    aaaUrl: aaa.url,
    aaaAdminToken: aaa.adminToken,
    broker,
    async reservations() {
      const r = await fetch(`${broker.url}/v1/reservations`, { headers: { authorization: `Bearer ${broker.operatorToken}` } });
      return ((await r.json()) as { reservations: never[] }).reservations;
    },
    async close() {
      await broker.close();
      await aaa.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
