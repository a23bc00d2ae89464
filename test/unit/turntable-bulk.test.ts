// The bulk-TCP reference of the turntable (lab/turntable/bulk.ts): its rates from the receiver's
// 250 ms buckets and the copy-vs-bulk ratio of summary.copyVsBulk. Pure parts only; the flow
// itself runs in the lab (bench/migration-throughput.ts, the turntable).
import { describe, it, expect } from 'vitest';
import { bulkMsFor, bulkRateMbps, copyVsBulk, copyVsBulkRatio, mbpsOf, steadyMbps } from '../../lab/turntable/bulk.ts';
import { copyVsBulkCell } from '../../lab/turntable/report/tables.ts';

describe('bulk TCP figures', () => {
  it('computes Mbit/s, and the second half of a flow without its last partial bucket', () => {
    expect(mbpsOf(125_000_000, 1000)).toBe(1000);
    expect(mbpsOf(1, 0)).toBe(0);
    // 250 ms buckets: a slow start, then 31.25 MB each (1000 Mbit/s), then a partial last one.
    const b = [1e6, 4e6, 16e6, 31.25e6, 31.25e6, 31.25e6, 31.25e6, 5e6];
    expect(steadyMbps(b)).toBe(1000);
    expect(steadyMbps([1, 2, 3])).toBeNull();
    expect(bulkRateMbps({ mbps: 700, steadyMbps: 900 })).toBe(900);
    expect(bulkRateMbps({ mbps: 700, steadyMbps: null })).toBe(700);
  });

  it('says how long the flow took to deliver a given number of bytes, slow start included', () => {
    const b = [1e6, 4e6, 16e6, 31.25e6];
    expect(bulkMsFor(b, 1e6)).toBe(250);
    expect(bulkMsFor(b, 5e6)).toBe(500);
    expect(bulkMsFor(b, 13e6)).toBe(625);
    expect(bulkMsFor(b, 100e6)).toBeNull();
  });

  it('divides the hypervisor total by the time the bytes take at the bulk rate', () => {
    // 100 MB at 800 Mbit/s: 1000 ms; QEMU took 1500 ms.
    expect(copyVsBulkRatio({ hypervisorTotalMs: 1500, bytes: 100e6 }, 800)).toBe(1.5);
    expect(copyVsBulkRatio({ hypervisorTotalMs: null, bytes: 100e6 }, 800)).toBeNull();
    expect(copyVsBulkRatio({ hypervisorTotalMs: 1500, bytes: 0 }, 800)).toBeNull();
    expect(copyVsBulkRatio({ hypervisorTotalMs: 1500, bytes: 100e6 }, 0)).toBeNull();
    const p = copyVsBulk([{ hypervisorTotalMs: 1000, bytes: 100e6 }, { hypervisorTotalMs: 2000, bytes: 100e6 }, { hypervisorTotalMs: null, bytes: 1 }], { mbps: 500, steadyMbps: 800 });
    expect(p).toMatchObject({ p50: 1, max: 2, n: 2 });
  });
});

describe('the report\'s copy-vs-bulk row', () => {
  it('shows the ratios, or says the run has no bulk figure', () => {
    expect(copyVsBulkCell({ p50: 1.256, p95: 1.3, max: 1.31, n: 3 })).toBe('p50 1.26×, p95 1.30×, max 1.31× (n = 3)');
    expect(copyVsBulkCell({ p50: null, p95: null, max: null, n: 1 })).toBe('p50 —, p95 —, max — (n = 1)');
    expect(copyVsBulkCell(undefined)).toMatch(/no bulk TCP figure/);
    expect(copyVsBulkCell({ p50: null, p95: null, max: null, n: 0 })).toMatch(/no bulk TCP figure/);
  });
});
