// The monitoring history in the controller's SQLite file (src/controller/monitoring/store.ts):
// reports stored per host and per VM, retention by age and by count, and the Monitoring
// service's ingest (only hosts the controller knows) and options check.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ControllerStore } from '../../src/controller/store.ts';
import { MonitoringStore } from '../../src/controller/monitoring/store.ts';
import { Monitoring } from '../../src/controller/monitoring/index.ts';
import type { HostInventory, StatsReport } from '../../src/common/agent-protocol.ts';
import { ManualClock } from '../../src/common/clock.ts';
import { silentLogger } from '../../src/common/log.ts';
import { EventEmitter } from 'node:events';

const dirs: string[] = [];
afterEach(() => { for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true }); });
function store(): ControllerStore {
  const d = mkdtempSync(join(tmpdir(), 'vmtc-mon-'));
  dirs.push(d);
  return new ControllerStore(join(d, 'controller.db'));
}
const report = (at: number, vmIds: string[], cpu = 0.5): StatsReport => ({
  at, intervalMs: 1000,
  host: { cpu, vcpus: 8, memoryMb: 1000, memoryUsedMb: 100, netRxMbps: 1, netTxMbps: 1, diskReadMBps: 0, diskWriteMBps: 0 },
  vms: vmIds.map((vmId) => ({ vmId, cpu, memoryMb: 100, memoryUsedMb: 50, netRxMbps: 1, netTxMbps: 2, diskReadMBps: 0, diskWriteMBps: 3 })),
});

describe('monitoring history', () => {
  it('keeps at most retentionSamples per host and per VM, newest kept', () => {
    const s = store();
    const m = new MonitoringStore(s.db, { maxAgeMs: 1e12, maxSamples: 3 });
    for (let i = 1; i <= 5; i++) m.add('h1', report(7, ['a', ...(i === 1 ? ['b'] : [])]), i * 1000);
    expect(m.hostSamples('h1', 100).map((x) => x.at)).toEqual([3000, 4000, 5000]);
    expect(m.vmSamples('a', 100).map((x) => x.at)).toEqual([3000, 4000, 5000]);
    expect(m.vmSamples('b', 100)).toHaveLength(1); // another VM's count is its own
    expect(m.vmSamples('a', 100)[0]).toMatchObject({ hostId: 'h1', cpu: 0.5, netMbps: 3, diskMBps: 3, memoryUsedMb: 50 });
    expect(m.hostSamples('h1', 2).map((x) => x.at)).toEqual([4000, 5000]);
    // Timed by the controller when received; the agent's own time is kept.
    expect(m.hostSamples('h1', 1)[0]!.sampledAt).toBe(7);
    s.close();
  });

  it('deletes samples older than retentionMs (by the controller\'s clock)', () => {
    const s = store();
    const m = new MonitoringStore(s.db, { maxAgeMs: 10_000, maxSamples: 100 });
    m.add('h1', report(1000, ['a']), 1000);
    m.add('h2', report(5000, ['c']), 5000);
    m.add('h1', report(20_000, ['a']), 20_000);
    expect(m.hostSamples('h1', 100).map((x) => x.at)).toEqual([20_000]);
    expect(m.hostSamples('h2', 100)).toEqual([]);
    expect(m.counts()).toEqual({ hostSamples: 1, vmSamples: 1 });
    s.close();
  });

  it('stores reports of known hosts only, and checks its options', () => {
    const s = store();
    const inv: HostInventory = { hostId: 'h1', hypervisor: { type: 'double', version: '1' }, cpu: { model: 'm', features: [], vcpus: 8 }, memoryMb: 1000, diskGb: 10, sharedStorage: true, vms: [], agentVersion: 't' };
    s.saveHost(inv, true, 0);
    const hub = Object.assign(new EventEmitter(), { isConnected: () => true, inventory: () => inv, request: async () => { throw new Error('no'); } });
    const mon = new Monitoring({ store: s, hub: hub as never, clock: new ManualClock(), logger: silentLogger() });
    mon.ingest('h1', report(1, [])); // an agent clock far behind the controller's: kept
    mon.ingest('stranger', report(1, []));
    expect(mon.history.counts().hostSamples).toBe(1);
    expect(() => new Monitoring({ store: s, hub: hub as never, clock: new ManualClock(), logger: silentLogger(), options: { thresholds: { cpu: 1.5 } as never } })).toThrow(expect.objectContaining({ code: 'VMTC_CONFIG_INVALID', details: expect.objectContaining({ field: 'monitoring.thresholds.cpu' }) }));
    for (const [bad, field] of [[{ autoMitigte: true }, 'monitoring.autoMitigte'], [{ thresholds: 'x' }, 'monitoring.thresholds'], [{ thresholds: { disk: 0.5 } }, 'monitoring.thresholds.disk'], [{ siteUtcOffsetMinutes: { a: 30.5 } }, 'monitoring.siteUtcOffsetMinutes.a']] as const) {
      expect(() => new Monitoring({ store: s, hub: hub as never, clock: new ManualClock(), logger: silentLogger(), options: bad as never }), field).toThrow(expect.objectContaining({ code: 'VMTC_CONFIG_INVALID', details: expect.objectContaining({ field }) }));
    }
    s.close();
  });
});
