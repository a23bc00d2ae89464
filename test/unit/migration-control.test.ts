// An operator's control of a running migration, the pure parts: the machine's guards (which
// states allow force-complete and tune, and what they mean), the reducer's history and its
// downtime warning, and the DoubleDriver's copy model that the integration tests drive
// (agents/host/double-copy.ts). No servers, no clock.
import { describe, it, expect } from 'vitest';
import { COPYING, STATES, checkTune, decideForceComplete, type MigrationRecord, type MigrationState } from '../../src/controller/machine.ts';
import { applyChange, downtimeWarning, reduce } from '../../src/controller/migration/reducer.ts';
import type { MigrationCtx, MigrationRequest } from '../../src/controller/store.ts';
import { copyControl, firstPass, force, nextPass, runningMs, tune, type CopyModel } from '../../agents/host/double-copy.ts';

const req = (over: Partial<MigrationRequest> = {}): MigrationRequest => ({ vmId: 'vm1', destinationHostId: 'B', mode: 'live', ...over });
const rec = (state: MigrationState, ctx: Partial<MigrationCtx> = {}, request: MigrationRequest = req()): Pick<MigrationRecord, 'state' | 'ctx' | 'request'> => ({ state, ctx: { path: 'live', ...ctx }, request });
const codeOf = (fn: () => unknown): { code?: string; details?: Record<string, unknown> } => {
  try {
    fn();
    return {};
  } catch (e) {
    return e as { code: string; details: Record<string, unknown> };
  }
};

describe('guards: force-complete and tune only while the copy runs', () => {
  it('the copy runs in precopy and stopcopy only: never before it, from the switchover on, on the cold path or at the end', () => {
    expect([...COPYING].sort()).toEqual(['precopy', 'stopcopy']);
    for (const s of STATES) {
      const f = codeOf(() => decideForceComplete(rec(s)));
      const t = codeOf(() => checkTune(rec(s), { bandwidthMbps: 10 }));
      if (COPYING.has(s)) {
        expect(f.code).toBeUndefined();
        expect(t.code).toBeUndefined();
      } else {
        expect(f).toMatchObject({ code: 'VMTC_MIGRATION_NOT_FORCEABLE', details: { state: s } });
        expect(t).toMatchObject({ code: 'VMTC_MIGRATION_NOT_TUNABLE', details: { state: s } });
      }
    }
    expect(codeOf(() => decideForceComplete(rec('cold_importing', { path: 'cold' })))).toMatchObject({ details: { state: 'cold_importing', path: 'cold' } });
  });

  it('force-complete: post-copy when the request allowed it, else a pause; post-copy asked without it refused', () => {
    expect(decideForceComplete(rec('precopy'))).toEqual({ mode: 'pause', already: false });
    expect(decideForceComplete(rec('precopy', {}, req({ postcopy: true })))).toEqual({ mode: 'postcopy', already: false });
    expect(decideForceComplete(rec('precopy', {}, req({ postcopy: true })), 'pause')).toEqual({ mode: 'pause', already: false });
    expect(codeOf(() => decideForceComplete(rec('precopy'), 'postcopy'))).toMatchObject({ code: 'VMTC_MIGRATION_NOT_FORCEABLE', details: { state: 'precopy', mode: 'postcopy', reason: 'postcopy-not-allowed' } });
  });

  it('force-complete again: the same (or no) mode is in effect already; the other mode is refused', () => {
    const forced = rec('precopy', { forced: { mode: 'pause', at: 1, by: 'ops' } }, req({ postcopy: true }));
    expect(decideForceComplete(forced)).toEqual({ mode: 'pause', already: true });
    expect(decideForceComplete(forced, 'pause')).toEqual({ mode: 'pause', already: true });
    expect(codeOf(() => decideForceComplete(forced, 'postcopy'))).toMatchObject({ code: 'VMTC_MIGRATION_NOT_FORCEABLE', details: { forced: 'pause', reason: 'already-forced' } });
  });

  it('tune: no more bandwidth than the lightpath reserved', () => {
    expect(() => checkTune(rec('precopy'), { bandwidthMbps: 500 }, 500)).not.toThrow();
    expect(() => checkTune(rec('precopy'), { maxDowntimeMs: 5000 }, 500)).not.toThrow();
    expect(codeOf(() => checkTune(rec('precopy'), { bandwidthMbps: 501 }, 500))).toMatchObject({ code: 'VMTC_MIGRATION_NOT_TUNABLE', details: { field: 'bandwidthMbps', reservedMbps: 500 } });
    expect(() => checkTune(rec('precopy'), { bandwidthMbps: 5000 })).not.toThrow();
  });
});

describe('reducer: history and the downtime warning', () => {
  it('applyChange keeps every change in order; a tune\'s limits become the ones in effect, a force the mode', () => {
    let ctx: MigrationCtx = { path: 'live' };
    ctx = applyChange(ctx, { at: 10, by: 'ops', what: 'tune', limits: { bandwidthMbps: 16 }, previous: { bandwidthMbps: 8 }, reported: { bandwidthMbps: 16, maxDowntimeMs: 300 } });
    ctx = applyChange(ctx, { at: 20, by: 'ops', what: 'tune', limits: { maxDowntimeMs: 900 }, previous: {}, reported: { bandwidthMbps: 16, maxDowntimeMs: 900 } });
    ctx = applyChange({ ...ctx, forced: { mode: 'pause', at: 25, by: 'ops' } }, { at: 25, by: 'ops', what: 'force-complete', mode: 'pause' });
    expect(ctx.limits).toEqual({ bandwidthMbps: 16, maxDowntimeMs: 900 });
    expect(ctx.forced).toEqual({ mode: 'pause', at: 25, by: 'ops' });
    expect(ctx.changes!.map((c) => c.at)).toEqual([10, 20, 25]);
  });

  it('downtimeWarning: only over the limit asked for (an operator\'s later one first); a forced pause counts from the pause', () => {
    expect(downtimeWarning({ result: { downtimeMs: 538 } }, undefined, 0)).toBeUndefined();
    expect(downtimeWarning({ result: { downtimeMs: 30 } }, 30, 0)).toBeUndefined();
    expect(downtimeWarning({ result: { downtimeMs: 538 } }, 300, 0)).toMatchObject({ code: 'VMTC_DOWNTIME_ABOVE_LIMIT', details: { downtimeMs: 538, maxDowntimeMs: 300, hypervisorDowntimeMs: 538 } });
    expect(downtimeWarning({ result: { downtimeMs: 538 }, limits: { maxDowntimeMs: 1000 } }, 300, 0)).toBeUndefined();
    expect(downtimeWarning({ result: { downtimeMs: 20 }, forced: { mode: 'pause', at: 1000, by: 'ops' } }, 300, 3000))
      .toMatchObject({ details: { downtimeMs: 2000, maxDowntimeMs: 300, hypervisorDowntimeMs: 20, forcedPauseMs: 2000 } });
    expect(downtimeWarning({ result: { downtimeMs: 20 }, forced: { mode: 'postcopy', at: 1000, by: 'ops' } }, 300, 3000)).toBeUndefined();
  });

  it('the copy\'s completion carries the warning with its result (written with the transition)', () => {
    const r: MigrationRecord = { state: 'switchover', mode: 'live', error: null, ctx: { path: 'live', warnings: [{ code: 'VMTC_X', message: 'earlier' }] }, request: req({ maxDowntimeMs: 50 }) };
    const step = reduce(r, { event: { type: 'MIGRATION_COMPLETED' }, ctxPatch: { result: { downtimeMs: 538 } } }, 2000, 1000);
    expect(step.ctx.warnings).toEqual([{ code: 'VMTC_X', message: 'earlier' }, expect.objectContaining({ code: 'VMTC_DOWNTIME_ABOVE_LIMIT', details: expect.objectContaining({ downtimeMs: 538, maxDowntimeMs: 50 }) })]);
    expect(reduce({ ...r, request: req() }, { event: { type: 'MIGRATION_COMPLETED' }, ctxPatch: { result: { downtimeMs: 538 } } }, 2000, 1000).ctx.warnings).toHaveLength(1);
  });
});

describe('the DoubleDriver\'s copy model (a test double\'s, agents/host/double-copy.ts)', () => {
  const MiB = 1024 * 1024;
  const fixed: CopyModel = { mem: 4 * MiB, passes: 3, dirtyBytesPerMs: 0 };
  // 32 Mbit/s of dirtying: 4000 bytes/ms.
  const dirty: CopyModel = { mem: MiB, passes: 3, dirtyBytesPerMs: 4000 };

  it('fixed: a quarter each pass, the third the last, whatever the limits', () => {
    const c = copyControl({ bandwidthMbps: 8, maxDowntimeMs: 1 }, 4000);
    const p1 = firstPass(fixed);
    const p2 = nextPass(fixed, c, p1, 1, 1000);
    const p3 = nextPass(fixed, c, p2, 2, 1000);
    expect([p1, p2, p3]).toEqual([{ size: 4 * MiB, last: false }, { size: MiB, last: false }, { size: MiB / 4, last: true }]);
  });

  it('dirty: at four times the bandwidth it never converges; a higher downtime limit or a pause ends it', () => {
    const c = copyControl({ bandwidthMbps: 8, maxDowntimeMs: 50 }, 4000);
    let p = firstPass(dirty);
    for (let i = 1; i <= 100; i++) {
      p = nextPass(dirty, c, p, i, 1000);
      expect(p).toEqual({ size: MiB, last: false });
    }
    // 1 MiB at 1 MB/s is about a second: a 5 s limit takes it.
    tune(c, { maxDowntimeMs: 5000 });
    expect(nextPass(dirty, c, p, 101, 1000)).toEqual({ size: MiB, last: true });
    const d = copyControl({ bandwidthMbps: 8, maxDowntimeMs: 50 }, 4000);
    force(d, 'pause', 5_250, false, { vmId: 'vm1', migrationId: 'm' });
    // Paused a quarter of the way into a pass: it dirtied for 250 ms, then nothing.
    const ran = runningMs(d, 5_000, 6_000);
    expect(ran).toBe(250);
    expect(nextPass(dirty, d, p, 7, ran)).toEqual({ size: 1_000_000, last: true });
  });

  it('force: post-copy only if allowed; the same mode again is fine, the other refused; waiting at the switchover changes nothing', () => {
    const ids = { vmId: 'vm1', migrationId: 'm' };
    const c = copyControl({}, 4000);
    expect(c.limits).toEqual({ bandwidthMbps: 4000, maxDowntimeMs: 300 });
    expect(codeOf(() => force(c, 'postcopy', 0, false, ids))).toMatchObject({ code: 'VMTC_HOST_VM_STATE', details: { mode: 'postcopy' } });
    force(c, 'pause', 7, false, ids);
    force(c, 'pause', 9, false, ids);
    expect(c.pausedAt).toBe(7);
    expect(codeOf(() => force(c, 'postcopy', 0, false, ids))).toMatchObject({ code: 'VMTC_HOST_VM_STATE', details: { forced: 'pause' } });
    const w = copyControl({ postcopy: true }, 4000);
    force(w, 'pause', 3, true, ids);
    expect(w.pausedAt).toBeUndefined();
  });
});
