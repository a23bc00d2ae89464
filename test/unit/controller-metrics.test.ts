// Which downtime figures a finished migration's record gives the controller's
// vmtc_migration_downtime_seconds histogram (src/controller/metrics.ts), by source label.
import { describe, it, expect } from 'vitest';
import { downtimesOf } from '../../src/controller/metrics.ts';
import type { MigrationRow } from '../../src/controller/store.ts';

const row = (ctx: Record<string, unknown>): MigrationRow => ({
  id: 'mig_1', vmId: 'vm1', project: 'demo', sourceHostId: 'A', destinationHostId: 'B', mode: 'live', state: 'completed',
  request: { vmId: 'vm1', destinationHostId: 'B', mode: 'live' }, ctx: { path: 'live', ...ctx } as MigrationRow['ctx'],
  error: null, progress: null, createdAt: 0, updatedAt: 1,
});

describe('downtimesOf', () => {
  it("reads the hypervisor's figure and each tunnel measurement's longest gap, in ms", () => {
    expect(downtimesOf(row({ result: { downtimeMs: 42 } }))).toEqual({ hypervisor: 42 });
    expect(downtimesOf(row({
      result: { downtimeMs: 40 },
      downtime: {
        hypervisor: 40,
        tunnelPassive: { gapMs: 180, lastFromSourceAt: 1, firstFromDestinationAt: 2, switchMs: 1, samples: 9, method: 'capture' },
        tunnelProbe: { gapMs: 220, sent: 10, received: 8, periodMs: 20, method: 'icmp' },
      },
    }))).toEqual({ hypervisor: 40, tunnel_passive: 180, tunnel_probe: 220 });
  });

  it('leaves out what was not measured: no figure, a null gap, a record without downtime', () => {
    expect(downtimesOf(row({}))).toEqual({});
    expect(downtimesOf(row({ downtime: { tunnelPassive: { gapMs: null, samples: 0, method: 'capture' } } }))).toEqual({});
    expect(downtimesOf(row({ downtime: { hypervisor: 12 } }))).toEqual({ hypervisor: 12 });
  });
});
