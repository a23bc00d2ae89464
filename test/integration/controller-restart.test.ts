// kill -9 the controller (a real process) in the middle of a migration and start it again: the
// record is still there and the controller asks the agents what really happened.
import { describe, it, expect } from 'vitest';
import { mkdtempSync, rmSync, readFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startHostAgent, type HostAgent } from '../../agents/host/index.ts';
import { DoubleDriver } from '../../agents/host/double-driver.ts';
import { silentLogger } from '../../src/common/log.ts';
import { startVmtc, freePort, type Proc } from '../helpers/proc.ts';
import { vmSpec } from '../helpers/controller-harness.ts';

async function until<T>(fn: () => Promise<T | undefined | false>, what: () => string, ms = 30_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn().catch(() => undefined);
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out: ${what()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('controller restart', () => {
  for (const scenario of ['destination survives', 'destination dies while the controller is down'] as const) {
    it(`keeps the record and reconciles with the agents (${scenario})`, async () => {
      const dir = mkdtempSync(join(tmpdir(), 'vmtc-restart-'));
      const started: { agents: HostAgent[]; drivers: DoubleDriver[]; procs: Proc[] } = { agents: [], drivers: [], procs: [] };
      try {
        const [p1, p2] = [await freePort(), await freePort()];
        const args = ['controller', '--data', join(dir, 'ctl'), '--listen', `127.0.0.1:${p1}`, '--agent-listen', `127.0.0.1:${p2}`, '--heartbeat-ms', '500'];
        let ctl = await startVmtc(args);
        started.procs.push(ctl);
        const url = ctl.ready.url as string;
        const adminFile = join(dir, 'ctl', 'admin.token');
        expect(statSync(adminFile).mode & 0o777).toBe(0o600);
        const token = readFileSync(adminFile, 'utf8').trim();
        const api = async (method: string, path: string, body?: unknown) => {
          const r = await fetch(url + path, { method, headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) }, ...(body ? { body: JSON.stringify(body) } : {}) });
          return { status: r.status, body: await r.json() as any };
        };
        const agentsFor: Record<string, HostAgent> = {};
        for (const [hostId, cfg] of [['A', { vms: [vmSpec('vm1', { memoryMb: 256 })] }], ['B', {}]] as const) {
          const t = await api('POST', '/v1/enrollment-tokens', { kind: 'host', hostId });
          expect(t.status).toBe(201);
          const driver = new DoubleDriver({ bytesPerMb: 16 * 1024, ...cfg });
          started.drivers.push(driver);
          const agent = await startHostAgent({ controllerUrl: url, enrollToken: t.body.token, dataDir: join(dir, hostId), driver, logger: silentLogger(), migrationAddress: '127.0.0.1', backoff: { initialMs: 50, maxMs: 300, jitter: 0.2 } });
          started.agents.push(agent);
          agentsFor[hostId] = agent;
        }
        await until(async () => (await api('GET', '/v1/hosts')).body.hosts.filter((h: any) => h.connected).length === 2, () => 'two hosts connected');
        // ~5.5 MB at 8 Mbit/s: a few seconds of pre-copy.
        const m = await api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B', bandwidthMbps: 8 });
        expect(m.status).toBe(202);
        await until(async () => (await api('GET', `/v1/migrations/${m.body.id}`)).body.state === 'precopy', () => 'precopy');

        await ctl.stop('SIGKILL');
        if (scenario === 'destination dies while the controller is down') {
          // The destination host goes away: the source's stream breaks and it resumes the VM.
          await agentsFor.B!.close();
          await started.drivers[1]!.close();
        }
        await new Promise((r) => setTimeout(r, 800));
        ctl = await startVmtc(args);
        started.procs.push(ctl);

        let last: any;
        const final = await until(async () => {
          last = (await api('GET', `/v1/migrations/${m.body.id}`)).body;
          return ['completed', 'rolled_back', 'failed', 'cancelled'].includes(last.state) && last;
        }, () => `terminal state, last ${JSON.stringify(last?.state)}`, 40_000);
        const where = scenario === 'destination survives' ? 'B' : 'A';
        if (scenario === 'destination survives') expect({ state: final.state, error: final.error }).toEqual({ state: 'completed', error: null });
        else expect({ state: final.state, code: final.error?.code }).toMatchObject({ state: 'rolled_back', code: 'VMTC_HOST_MIGRATION_FAILED' });
        // The VM runs in exactly one place (agents report inventory changes asynchronously).
        await until(async () => {
          const vms = (await api('GET', '/v1/vms')).body.vms.filter((v: any) => v.vmId === 'vm1' && v.hostConnected);
          return vms.length === 1 && vms[0].hostId === where && vms[0].state === 'running';
        }, () => `vm1 running only at ${where}`, 10_000);
        // The record kept the history from before the crash.
        expect(final.transitions.map((t: any) => t.to).slice(0, 6)).toEqual(['prechecking', 'reserved', 'authorizing', 'provisioning', 'preparing', 'precopy']);
      } finally {
        for (const a of started.agents) await a.close().catch(() => undefined);
        for (const d of started.drivers) await d.close().catch(() => undefined);
        for (const p of started.procs) await p.stop('SIGKILL').catch(() => undefined);
        rmSync(dir, { recursive: true, force: true });
      }
    }, 90_000);
  }
});
