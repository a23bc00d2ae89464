// The source agent (a real `vmtc agent` process) is killed with -9 in pre-copy and started again
// with the same --data: the migration must end within seconds — rolled back, the VM running at
// the source only, the destination's capacity hold freed, the lightpath released — instead of
// waiting for its 30-minute deadline with everything held. With its journal the agent reports the
// migration as interrupted; without it (the journal lost) the controller decides from the
// destination (src/controller/migration/source-lost.ts).
import { describe, it, expect } from 'vitest';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cleanupsAfterEach, spawnVmtcCli, type CliProcess } from '../helpers/cleanups.ts';
import { startHarness, vmSpec, type Harness } from '../helpers/controller-harness.ts';
import { tempDir } from '../helpers/agent-fixture.ts';
import { startLightpathServices, type LightpathServices } from '../helpers/lightpath-services.ts';
import { JOURNAL_FILE } from '../../agents/host/migration-journal.ts';

const cleanups = cleanupsAfterEach();

describe('a source agent restarted during pre-copy', () => {
  for (const journal of ['kept', 'lost'] as const) {
    it(`ends the migration within seconds, rolled back with nothing held (journal ${journal})`, async () => {
      let services: LightpathServices | undefined;
      const h: Harness = await startHarness({}, async (controllerDir) => {
        services = await startLightpathServices(controllerDir);
        return { options: { aaaUrl: services.aaaUrl, brokerUrl: services.broker.url }, cleanup: () => services!.close() };
      });
      cleanups.push(() => h.close());
      const d = tempDir();
      cleanups.push(() => rmSync(d, { recursive: true, force: true }));
      const agentDir = join(d, 'agent-A');
      const cfg = join(d, 'double.json');
      // 256 MB at 64 KiB per MB: 16 MiB in the first pass, about 17 s at 8 Mbit/s, so the kill
      // lands in pre-copy.
      writeFileSync(cfg, JSON.stringify({ vms: [vmSpec('vm1')], bytesPerMb: 65_536 }));
      const minted = h.controller.hub.mintEnrollToken({ kind: 'host', hostId: 'A' });
      const common = ['--data', agentDir, '--driver', 'double', '--double-config', cfg, '--site', 'site-A', '--migration-address', '127.0.0.1', '--log-level', 'warn'];
      let agent: CliProcess = spawnVmtcCli(['agent', '--controller', h.controller.url, '--enroll', minted.token, ...common], cleanups);
      await h.waitFor(() => h.controller.hub.inventory('A')?.vms.length === 1, () => `agent A's inventory:\n${agent.output()}`);
      await h.addHost('B', {}, 'site-B');

      const m = await h.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B', bandwidthMbps: 8 });
      expect(m.status).toBe(202);
      const id = m.body.id as string;
      await h.waitFor(async () => (await h.api('GET', `/v1/migrations/${id}`)).body.progress?.transferredBytes > 0, 'bytes on the wire');
      expect((await h.api('GET', `/v1/migrations/${id}`)).body.state).toBe('precopy');
      expect(h.controller.store.holds()).toHaveLength(1);

      process.kill(agent.child.pid!, 'SIGKILL');
      await agent.exited;
      if (journal === 'lost') rmSync(join(agentDir, JOURNAL_FILE));
      agent = spawnVmtcCli(['agent', ...common], cleanups);

      // Far below the deadline (30 min): the harness waits 20 s at most.
      const done = await h.waitState(id, ['rolled_back', 'failed', 'completed', 'cancelled']);
      expect({ state: done.state, code: done.error?.code }).toEqual({ state: 'rolled_back', code: journal === 'kept' ? 'VMTC_HOST_MIGRATION_INTERRUPTED' : 'VMTC_MIGRATION_LOST' });
      // The VM runs at the source only.
      await h.waitFor(() => {
        const a = h.controller.hub.inventory('A')?.vms.find((v) => v.vmId === 'vm1');
        const b = h.controller.hub.inventory('B')?.vms.find((v) => v.vmId === 'vm1');
        return h.controller.hub.isConnected('A') && a?.state === 'running' && !b;
      }, () => `vm1 running at A only: A ${JSON.stringify(h.controller.hub.inventory('A')?.vms)}, B ${JSON.stringify(h.controller.hub.inventory('B')?.vms)}\n${agent.output()}`);
      // The destination's capacity is free again, and the lightpath released.
      expect(h.controller.store.holds()).toEqual([]);
      expect(done.steps.lightpath).toMatchObject({ released: true });
      const rsv = (await services!.reservations()).filter((r) => r.migrationId === id);
      expect(rsv.map((r) => [r.lifecycleState, r.dataPlane.active])).toEqual([['Terminated', false]]);
    }, 60_000);
  }
});
