// The controller as a real `vmtc controller` process (so that a test can kill it with -9 and
// start it again on the same data and ports), its REST API with the admin token, and in-process
// host agents on the DoubleDriver hypervisor test double enrolled with it. Everything started is
// undone by the test's cleanups. Not a test file itself.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { startHostAgent, type HostAgent } from '../../agents/host/index.ts';
import { DoubleDriver, type DoubleDriverConfig } from '../../agents/host/double-driver.ts';
import { silentLogger } from '../../src/common/log.ts';
import type { Cleanup } from './cleanups.ts';
import { until } from './agent-fixture.ts';
import { freePort, startVmtc, type Proc } from './proc.ts';

export interface ControllerProcess {
  url: string;
  /** The running process (the last one started). */
  proc(): Proc;
  /** Start it again on the same data directory and ports (after a kill). */
  start(): Promise<Proc>;
  api(method: string, path: string, body?: unknown): Promise<{ status: number; body: any }>;
  /** Enrol in-process host agents, each on its own DoubleDriver, and wait until all are connected. */
  addDoubleAgents(dir: string, hosts: [string, DoubleDriverConfig][]): Promise<Map<string, { agent: HostAgent; driver: DoubleDriver }>>;
}

/** `vmtc controller --data dataDir` on two free loopback ports, heartbeats every 500 ms, plus `extra` flags. */
export async function startControllerProcess(dataDir: string, extra: string[], cleanups: Cleanup[]): Promise<ControllerProcess> {
  const [p1, p2] = [await freePort(), await freePort()];
  const args = ['controller', '--data', dataDir, '--listen', `127.0.0.1:${p1}`, '--agent-listen', `127.0.0.1:${p2}`, '--heartbeat-ms', '500', ...extra];
  const procs: Proc[] = [];
  cleanups.push(async () => { for (const p of procs) await p.stop('SIGKILL').catch(() => undefined); });
  const start = async () => {
    const p = await startVmtc(args);
    procs.push(p);
    return p;
  };
  const url = (await start()).ready.url as string;
  const token = readFileSync(join(dataDir, 'admin.token'), 'utf8').trim();
  const api: ControllerProcess['api'] = async (method, path, body) => {
    const r = await fetch(url + path, { method, headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) }, ...(body ? { body: JSON.stringify(body) } : {}) });
    return { status: r.status, body: await r.json() as any };
  };
  return {
    url, api, start,
    proc: () => procs.at(-1)!,
    async addDoubleAgents(dir, hosts) {
      const out = new Map<string, { agent: HostAgent; driver: DoubleDriver }>();
      for (const [hostId, cfg] of hosts) {
        const t = await api('POST', '/v1/enrollment-tokens', { kind: 'host', hostId });
        const driver = new DoubleDriver(cfg);
        cleanups.push(() => driver.close());
        const agent = await startHostAgent({
          controllerUrl: url, enrollToken: t.body.token, dataDir: join(dir, hostId), driver, site: `site-${hostId}`, logger: silentLogger(),
          migrationAddress: '127.0.0.1', backoff: { initialMs: 50, maxMs: 300, jitter: 0.2 },
        });
        cleanups.push(() => agent.close());
        out.set(hostId, { agent, driver });
      }
      await until(async () => (await api('GET', '/v1/hosts')).body.hosts.filter((x: any) => x.connected).length === hosts.length, 15_000, `${hosts.length} hosts connected`);
      return out;
    },
  };
}
