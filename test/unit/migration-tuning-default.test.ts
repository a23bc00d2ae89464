// The streams the controller picks to fill a lightpath (src/controller/migration/tuning-default.ts)
// and how a request's own tuning wins over them. Pure: no servers, no clock.
import { describe, it, expect } from 'vitest';
import { defaultMultifd, multifdChannelsFor, TUNING_DEFAULTS } from '../../src/controller/migration/tuning-default.ts';
import { migrationTuning, sourceParams } from '../../src/controller/migration/request.ts';
import type { MigrationRequest } from '../../src/controller/store.ts';

const MiB = 1024 * 1024;
const req = (o: Partial<MigrationRequest> = {}): MigrationRequest => ({ vmId: 'vm1', destinationHostId: 'B', mode: 'live', ...o });

describe('multifdChannelsFor', () => {
  it('is the bandwidth-delay product over the per-flow window, rounded up', () => {
    // 1000 Mbit/s × 200 ms = 25 MB; 2 MiB per flow → 11.9 → 12.
    expect(multifdChannelsFor(1000, 200, 2 * MiB, 16)).toBe(12);
    expect(multifdChannelsFor(500, 200, 2 * MiB, 16)).toBe(6);
    // Exactly one window per stream needs no extra stream.
    expect(multifdChannelsFor(8, 1000, 1e6, 16)).toBe(1);
    expect(multifdChannelsFor(16, 1000, 1e6, 16)).toBe(2);
    expect(multifdChannelsFor(16.1, 1000, 1e6, 16)).toBe(3);
  });

  it('needs one stream when one flow already holds the product (large host buffers, short paths)', () => {
    expect(multifdChannelsFor(1000, 200, 32 * MiB, 16)).toBe(1);
    expect(multifdChannelsFor(1000, 2, 2 * MiB, 16)).toBe(1);
  });

  it('stays within [1, maxChannels]', () => {
    expect(multifdChannelsFor(100_000, 300, 2 * MiB, 16)).toBe(16);
    expect(multifdChannelsFor(100_000, 300, 2 * MiB, 0)).toBe(1);
    expect(multifdChannelsFor(100_000, 300, 2 * MiB, 7.9)).toBe(7);
  });

  it('answers one stream for input that makes no sense', () => {
    for (const [bw, rtt, w] of [[0, 200, MiB], [-5, 200, MiB], [NaN, 200, MiB], [1000, Infinity, MiB], [1000, 200, 0]] as const) {
      expect(multifdChannelsFor(bw, rtt, w, 16)).toBe(1);
    }
  });
});

describe('defaultMultifd', () => {
  const d = TUNING_DEFAULTS;
  it('leaves one stream when the request says nothing (multifd costs downtime at the switchover: docs/lab.md "Throughput")', () => {
    expect(defaultMultifd({}, 1000, d)).toEqual({});
    expect(defaultMultifd({}, 500, d)).toEqual({});
    expect(defaultMultifd({ postcopy: true }, 1000, d)).toEqual({});
  });

  it('multifd asked without channels: the computed streams', () => {
    expect(defaultMultifd({ multifd: true }, 1000, d)).toEqual({ multifd: true, multifdChannels: multifdChannelsFor(1000, d.rttMs, d.flowWindowBytes, d.maxChannels) });
    expect(defaultMultifd({ multifd: true }, 500, d)).toEqual({ multifd: true, multifdChannels: 6 });
    expect(defaultMultifd({ multifd: true }, 1000, { ...d, flowWindowBytes: 64 * MiB })).toEqual({ multifd: true, multifdChannels: 1 });
    expect(defaultMultifd({ postcopy: true, multifd: true }, 500, d)).toEqual({ multifd: true, multifdChannels: 6 });
  });

  it('lets the request win: multifd off, its own channel count', () => {
    expect(defaultMultifd({ multifd: false }, 1000, d)).toEqual({});
    expect(defaultMultifd({ multifd: false, multifdChannels: 4 }, 1000, d)).toEqual({});
    expect(defaultMultifd({ multifdChannels: 3 }, 1000, d)).toEqual({ multifd: true, multifdChannels: 3 });
    expect(defaultMultifd({ multifd: true, multifdChannels: 3 }, 1000, d)).toEqual({ multifd: true, multifdChannels: 3 });
  });
});

describe('migrationTuning with multifd asked', () => {
  it('sizes the streams from the reserved bandwidth (the request\'s, else the lightpath default 1000)', () => {
    expect(migrationTuning(req())).toEqual({});
    expect(migrationTuning(req({ multifd: true }))).toEqual({ multifd: true, multifdChannels: 12 });
    expect(migrationTuning(req({ multifd: true, bandwidthMbps: 250 }))).toEqual({ bandwidthMbps: 250, multifd: true, multifdChannels: 3 });
    expect(migrationTuning(req({ multifd: true, bandwidthMbps: 250 }), false, { ...TUNING_DEFAULTS, rttMs: 20 })).toEqual({ bandwidthMbps: 250, multifd: true, multifdChannels: 1 });
  });

  it('gives the destination and the source the same streams', () => {
    const r = req({ bandwidthMbps: 700, multifd: true });
    const dest = migrationTuning(r, true);
    const src = sourceParams('m1', migrationTuning(r));
    expect(dest.multifdChannels).toBe(9);
    expect(src.multifdChannels).toBe(dest.multifdChannels);
    expect(src.multifd).toBe(dest.multifd);
  });
});
