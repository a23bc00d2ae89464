// Starts a real controller (port 0, real TLS hub, SQLite in a temp dir) and in-process host
// agents over real mutual-TLS WebSocket links. Everything started is closed by close(), which
// tests call from afterEach/finally so a half-done setup is still torn down.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startController, type Controller, type ControllerOptions } from '../../src/controller/index.ts';
import { startHostAgent, type HostAgent, type HostAgentOptions } from '../../agents/host/index.ts';
import { DoubleDriver, type DoubleDriverConfig } from '../../agents/host/double-driver.ts';
import { silentLogger } from '../../src/common/log.ts';

export interface Harness {
  dir: string;
  controller: Controller;
  agents: Map<string, { agent: HostAgent; driver: DoubleDriver }>;
  /** `agent`: more of the host agent's options (e.g. inventoryCoalesceMs). */
  addHost(hostId: string, cfg?: DoubleDriverConfig, site?: string, agent?: Partial<HostAgentOptions>): Promise<DoubleDriver>;
  stopHost(hostId: string): Promise<void>;
  api(method: string, path: string, body?: unknown, token?: string): Promise<{ status: number; body: any }>;
  waitFor<T>(fn: () => T | undefined | false | Promise<T | undefined | false>, what: string | (() => string), timeoutMs?: number): Promise<T>;
  waitState(migrationId: string, states: string[], timeoutMs?: number): Promise<any>;
  close(): Promise<void>;
}

export function vmSpec(vmId: string, over: Partial<{ memoryMb: number; vcpus: number; diskGb: number; project: string }> = {}) {
  return { vmId, project: over.project ?? 'demo', vcpus: over.vcpus ?? 1, memoryMb: over.memoryMb ?? 256, diskGb: over.diskGb ?? 2 };
}

/** `prepare` runs before the controller starts, with its data dir (e.g. to start an AAA whose
 *  policy names the controller's key); what it returns is merged into the controller options,
 *  and its cleanup runs in close(). */
export async function startHarness(opts: Partial<ControllerOptions> = {}, prepare?: (controllerDir: string) => Promise<{ options?: Partial<ControllerOptions>; cleanup?: () => Promise<void> }>): Promise<Harness> {
  const dir = mkdtempSync(join(tmpdir(), 'vmtc-ctl-'));
  const agents = new Map<string, { agent: HostAgent; driver: DoubleDriver }>();
  let controller: Controller | undefined;
  let prepared: { options?: Partial<ControllerOptions>; cleanup?: () => Promise<void> } = {};
  const h: Harness = {
    dir,
    get controller() { return controller!; },
    agents,
    async addHost(hostId, cfg = {}, site, agentOpts = {}) {
      const tok = controller!.hub.mintEnrollToken({ kind: 'host', hostId });
      const driver = new DoubleDriver({ bytesPerMb: 4096, ...cfg });
      try {
        const agent = await startHostAgent({
          controllerUrl: controller!.url, enrollToken: tok.token, dataDir: join(dir, 'agent-' + hostId), driver,
          logger: silentLogger(), site: site ?? `site-${hostId}`, migrationAddress: '127.0.0.1',
          backoff: { initialMs: 50, maxMs: 500, jitter: 0.2 },
          ...agentOpts,
        });
        agents.set(hostId, { agent, driver });
      } catch (e) {
        await driver.close();
        throw e;
      }
      await h.waitFor(() => controller!.hub.inventory(hostId), `inventory of ${hostId}`);
      return driver;
    },
    async stopHost(hostId) {
      const a = agents.get(hostId);
      if (!a) return;
      agents.delete(hostId);
      await a.agent.close();
      await a.driver.close();
    },
    async api(method, path, body, token) {
      const res = await fetch(controller!.url + path, {
        method,
        headers: { authorization: `Bearer ${token ?? controller!.adminToken}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
        ...(body !== undefined ? { body: typeof body === 'string' ? body : JSON.stringify(body) } : {}),
      });
      const text = await res.text();
      return { status: res.status, body: text ? JSON.parse(text) : undefined };
    },
    async waitFor(fn, what, timeoutMs = 15_000) {
      const until = Date.now() + timeoutMs;
      for (;;) {
        const v = await fn();
        if (v) return v as never;
        if (Date.now() > until) throw new Error(`timed out waiting for ${typeof what === 'function' ? what() : what}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    },
    async waitState(id, states, timeoutMs = 20_000) {
      let last: any;
      return h.waitFor(async () => {
        last = (await h.api('GET', `/v1/migrations/${id}`)).body;
        return states.includes(last.state) ? last : undefined;
      }, () => `migration ${id} to reach ${states.join('|')} (last: ${JSON.stringify(last?.state)} ${JSON.stringify(last?.error)})`, timeoutMs);
    },
    async close() {
      for (const id of [...agents.keys()]) await h.stopHost(id).catch(() => undefined);
      await controller?.close().catch(() => undefined);
      await prepared.cleanup?.().catch(() => undefined);
      rmSync(dir, { recursive: true, force: true });
    },
  };
  try {
    if (prepare) prepared = await prepare(join(dir, 'controller'));
    controller = await startController({
      dataDir: join(dir, 'controller'), listen: { host: '127.0.0.1', port: 0 }, agentListen: { host: '127.0.0.1', port: 0 },
      logger: silentLogger(), heartbeatMs: 2000, runner: { statusPollMs: 200, destinationRunTimeoutMs: 5000 }, ...opts, ...(prepared.options ?? {}),
    });
  } catch (e) {
    await prepared.cleanup?.().catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  return h;
}

/** A migration's server-sent events as they come (name and data). The stream's AbortController
 *  is pushed onto `streams`, for the test's afterEach to abort. */
export function followMigrationEvents(hh: Harness, id: string, streams: AbortController[]): { events: { event: string; data: any }[] } {
  const ac = new AbortController();
  streams.push(ac);
  const out = { events: [] as { event: string; data: any }[] };
  void (async () => {
    const res = await fetch(`${hh.controller.url}/v1/migrations/${id}/events`, { headers: { authorization: `Bearer ${hh.controller.adminToken}` }, signal: ac.signal });
    const dec = new TextDecoder();
    let buf = '';
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      buf += dec.decode(chunk, { stream: true });
      for (let i = buf.indexOf('\n\n'); i >= 0; i = buf.indexOf('\n\n')) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        const event = /^event: (.*)$/m.exec(block)?.[1];
        const data = /^data: (.*)$/m.exec(block)?.[1];
        if (event && data) out.events.push({ event, data: JSON.parse(data) });
      }
    }
  })().catch(() => undefined);
  return out;
}

/** Wait until `vmId` runs at `hostId` and nowhere else, as the controller's GET /v1/vms says. */
export async function runningOnlyAt(hh: Harness, hostId: string, vmId = 'vm1'): Promise<void> {
  await hh.waitFor(async () => {
    const list = (await hh.api('GET', '/v1/vms')).body.vms.filter((v: any) => v.vmId === vmId);
    return list.length === 1 && list[0].hostId === hostId && list[0].state === 'running';
  }, `${vmId} running only at ${hostId}`);
}
