// Migration policies, the pure parts (src/controller/migration/policy.ts): the layers a policy
// comes from, what is refused, what counts as progress, and which action a timeout fires on a
// manual clock; then the watch (policy-watch.ts) with that clock, an in-memory store and a hub
// that is an EventEmitter: its one timer, the actions it asks for and what it records.
import { EventEmitter } from 'node:events';
import { describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/common/clock.ts';
import { silentLogger } from '../../src/common/log.ts';
import { ControllerStore } from '../../src/controller/store.ts';
import { CONTROL_EVENT } from '../../src/controller/migration-control-routes.ts';
import {
  POLICY_DEFAULTS, checkPolicy, decide, observe, resolvePolicy, startWatch,
  type CopyTuning, type Decision, type EffectivePolicy, type WatchState,
} from '../../src/controller/migration/policy.ts';
import { PolicyStore } from '../../src/controller/migration/policy-store.ts';
import { PolicyWatch } from '../../src/controller/migration/policy-watch.ts';
import type { MigrationRow } from '../../src/controller/store.ts';
import { err } from '../../src/controller/errors.ts';
import { autoConvergeStep, copyControl, nextPass } from '../../agents/host/double-copy.ts';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const tuning = (over: Partial<CopyTuning> = {}): CopyTuning => ({ postcopy: false, autoConverge: false, maxDowntimeMs: 300, ...over });
const policy = (over: Partial<EffectivePolicy> = {}): EffectivePolicy => ({ ...POLICY_DEFAULTS, ...over });
const codeOf = (fn: () => unknown): { code?: string; details?: Record<string, unknown> } => {
  try {
    fn();
    return {};
  } catch (e) {
    return e as { code: string; details: Record<string, unknown> };
  }
};

describe('policy layers and validation', () => {
  it('each field comes from the first layer that sets it: request, group, controller, then the defaults', () => {
    const r = resolvePolicy([
      { source: 'request', policy: { progressTimeoutS: 5 } },
      { source: 'group:db', policy: { progressTimeoutS: 30, onTimeout: ['raise-downtime', 'cancel'] } },
      { source: 'controller', policy: { maxDowntimeMs: 900, onTimeout: ['cancel'] } },
    ]);
    expect(r.policy).toEqual({ ...POLICY_DEFAULTS, progressTimeoutS: 5, onTimeout: ['raise-downtime', 'cancel'], maxDowntimeMs: 900 });
    expect(r.from).toMatchObject({ progressTimeoutS: 'request', onTimeout: 'group:db', maxDowntimeMs: 'controller', downtimeStepMs: 'default' });
    // Nothing configured: the defaults, which never act (a warning only).
    expect(resolvePolicy([]).policy).toEqual(POLICY_DEFAULTS);
    expect(POLICY_DEFAULTS.onTimeout).toEqual([]);
  });

  it('refuses with VMTC_POLICY_INVALID what the schema cannot say: cancel before another action, an action twice, an unknown one', () => {
    expect(codeOf(() => checkPolicy({ onTimeout: ['cancel', 'postcopy'] }, 'request'))).toMatchObject({ code: 'VMTC_POLICY_INVALID', details: { where: 'request', field: 'onTimeout' } });
    expect(codeOf(() => checkPolicy({ onTimeout: ['postcopy', 'postcopy'] }, 'group:x')).code).toBe('VMTC_POLICY_INVALID');
    expect(codeOf(() => checkPolicy({ onTimeout: ['reboot' as never] }, 'controller')).code).toBe('VMTC_POLICY_INVALID');
    expect(codeOf(() => checkPolicy({ progressTimeoutS: -1 }, 'controller')).code).toBe('VMTC_POLICY_INVALID');
    expect(codeOf(() => checkPolicy({ throttleWarnPercent: 101 }, 'controller')).code).toBe('VMTC_POLICY_INVALID');
    expect(codeOf(() => checkPolicy({ onTimeout: ['raise-downtime', 'auto-converge', 'postcopy', 'cancel'], progressTimeoutS: 0 }, 'request'))).toEqual({});
  });
});

describe('progress', () => {
  const p = policy();
  /** Feed reports (remaining bytes, pass) one second apart; the times progress was seen. */
  const feed = (reports: [number, number][], total = 1000): { state: WatchState; progressAt: number[] } => {
    let s = startWatch(0);
    const progressAt: number[] = [];
    reports.forEach(([remainingBytes, pass], i) => {
      const o = observe(s, { at: (i + 1) * 1000, remainingBytes, totalBytes: total, pass }, p);
      s = o.state;
      if (o.progress) progressAt.push((i + 1) * 1000);
    });
    return { state: s, progressAt };
  };

  it('the first pass moving is progress; passes as big as the first (a copy that does not converge) are not, however many', () => {
    const { progressAt } = feed([[1000, 1], [700, 1], [400, 1], [100, 1], [1000, 2], [600, 2], [200, 2], [1000, 3], [500, 3], [150, 3], [1000, 4], [300, 4]]);
    expect(progressAt).toEqual([2000, 3000, 4000]);
  });

  it('a pass 10 % smaller than every earlier one is progress (the dirty set shrinks); a wiggle of the remaining bytes below 2 % of the total is not', () => {
    const { progressAt } = feed([[1000, 1], [100, 1], [950, 2], [95, 2], [850, 3], [90, 3], [60, 3]]);
    // 950 is not 10 % below 1000; 95 is not 2 % of 1000 below 100; 850 is; 60 is 40 below 100.
    expect(progressAt).toEqual([2000, 5000, 7000]);
  });

  it('a throttle at or above the threshold is reported once', () => {
    let s = startWatch(0);
    const seen: (number | undefined)[] = [];
    for (const pct of [20, 49, 50, 99, 99]) {
      const o = observe(s, { at: 1, remainingBytes: 10, totalBytes: 100, cpuThrottlePercent: pct }, { throttleWarnPercent: 50 });
      s = o.state;
      seen.push(o.throttleWarning);
    }
    expect(seen).toEqual([undefined, undefined, 50, undefined, undefined]);
    expect(observe(startWatch(0), { at: 1, remainingBytes: 1, totalBytes: 1, cpuThrottlePercent: 99 }, { throttleWarnPercent: 0 }).throttleWarning).toBeUndefined();
  });
});

describe('decide: which action a timeout fires, on a manual clock', () => {
  /** Run the decision on the clock as the watch does: at each check time, with no progress. */
  const run = (p: EffectivePolicy, t: CopyTuning, untilMs: number, memoryBytes = GiB): { at: number; d: Extract<Decision, { fire: true }> }[] => {
    const clock = new ManualClock(0);
    let s = startWatch(clock.now(), memoryBytes);
    let tun = t;
    const out: { at: number; d: Extract<Decision, { fire: true }> }[] = [];
    for (let i = 0; i < 100; i++) {
      const d = decide(p, s, clock.now(), tun);
      if (d.fire) {
        out.push({ at: clock.now(), d });
        s = d.state;
        const taken = d.steps.find((x) => x.take)!;
        if (taken.action === 'raise-downtime') tun = { ...tun, maxDowntimeMs: taken.maxDowntimeMs };
        if (taken.action === 'cancel') break;
        continue;
      }
      if (d.checkAt === undefined || d.checkAt > untilMs) break;
      clock.advance(d.checkAt - clock.now());
    }
    return out;
  };

  it('no progress for progressTimeoutS: the downtime limit is raised step by step to its maximum, post-copy skipped (not allowed), then cancel', () => {
    const fired = run(policy({ progressTimeoutS: 10, onTimeout: ['raise-downtime', 'postcopy', 'cancel'], downtimeStepMs: 150, maxDowntimeMs: 600 }), tuning({ maxDowntimeMs: 300 }), 600_000);
    expect(fired.map((f) => [f.at, f.d.trigger, f.d.steps])).toEqual([
      [10_000, 'progress', [{ action: 'raise-downtime', take: true, maxDowntimeMs: 450, previousMs: 300 }]],
      [20_000, 'progress', [{ action: 'raise-downtime', take: true, maxDowntimeMs: 600, previousMs: 450 }]],
      [30_000, 'progress', [{ action: 'postcopy', take: false, reason: expect.stringContaining('postcopy: true') }, { action: 'cancel', take: true }]],
    ]);
    expect(fired[2]!.d).toMatchObject({ timeoutS: 10, waitedMs: 10_000 });
  });

  it('post-copy when the copy started with it allowed; auto-converge is skipped (it can only start with the copy)', () => {
    const fired = run(policy({ progressTimeoutS: 5, onTimeout: ['auto-converge', 'postcopy'] }), tuning({ postcopy: true }), 60_000);
    expect(fired[0]!.d.steps).toEqual([
      { action: 'auto-converge', take: false, reason: expect.stringContaining('autoConverge: true') },
      { action: 'postcopy', take: true },
    ]);
    // Nothing left after it: later firings are warnings only.
    expect(fired.slice(1).every((f) => f.d.steps.at(-1)!.action === 'none')).toBe(true);
    expect(fired.length).toBeGreaterThan(1);
  });

  it('the completion timeout is per GiB of memory, and fires even while the copy makes progress', () => {
    const p = policy({ progressTimeoutS: 0, completionTimeoutPerGiBS: 4, onTimeout: ['cancel'] });
    let s = startWatch(0, 2 * GiB);
    // Progress every second, as a copy that moves.
    for (let t = 1000; t < 8000; t += 1000) {
      s = observe(s, { at: t, remainingBytes: 2 * GiB - t * 100_000, totalBytes: 2 * GiB, pass: 1 }, p).state;
      expect(decide(p, s, t, tuning())).toEqual({ fire: false, checkAt: 8000 });
    }
    expect(decide(p, s, 8000, tuning())).toMatchObject({ fire: true, trigger: 'completion', timeoutS: 8, steps: [{ action: 'cancel', take: true }] });
  });

  it('progress moves the progress window: no firing while the copy keeps converging', () => {
    const p = policy({ progressTimeoutS: 3, onTimeout: ['cancel'] });
    let s = startWatch(0, GiB);
    for (let t = 1000; t <= 20_000; t += 1000) {
      s = observe(s, { at: t, remainingBytes: GiB - t * 50_000, totalBytes: GiB, pass: 1 }, p).state;
      expect(decide(p, s, t, tuning()).fire).toBe(false);
    }
    expect(decide(p, s, 23_000, tuning()).fire).toBe(true);
  });

  it('the defaults never act: after 60 s without progress a warning only, again each window', () => {
    const fired = run(POLICY_DEFAULTS, tuning(), 200_000);
    expect(fired.map((f) => f.at)).toEqual([60_000, 120_000, 180_000]);
    expect(fired[0]!.d.steps).toEqual([{ action: 'none', take: true, reason: 'the policy lists no action' }]);
  });

  it('raise-downtime with the limit already at the maximum is skipped; timeouts at 0 never fire', () => {
    const fired = run(policy({ progressTimeoutS: 1, onTimeout: ['raise-downtime', 'cancel'], maxDowntimeMs: 200 }), tuning({ maxDowntimeMs: 300 }), 10_000);
    expect(fired[0]!.d.steps).toEqual([{ action: 'raise-downtime', take: false, reason: expect.stringContaining('at or above') }, { action: 'cancel', take: true }]);
    expect(decide(policy({ progressTimeoutS: 0, completionTimeoutPerGiBS: 0 }), startWatch(0, GiB), 1e12, tuning())).toEqual({ fire: false });
  });
});

describe("the double's auto-converge (agents/host/double-copy.ts), which the integration test's throttle comes from", () => {
  it('throttles 20 %, then 10 points more each pass that did not converge, at most 99 %; the guest dirties that much less', () => {
    const c = copyControl({ bandwidthMbps: 8, maxDowntimeMs: 50, autoConverge: true }, 1000);
    const seen: number[] = [];
    for (let i = 0; i < 12; i++) {
      autoConvergeStep(c);
      seen.push(c.throttlePercent!);
    }
    expect(seen).toEqual([20, 30, 40, 50, 60, 70, 80, 90, 99, 99, 99, 99]);
    const m = { mem: 1_000_000, passes: 4, dirtyBytesPerMs: 4000 };
    // At 99 % the guest dirties 40 bytes a ms: 1 s of it fits in the 50 ms limit at 1000 bytes a ms.
    expect(nextPass(m, c, { size: m.mem, last: false }, 9, 1000)).toEqual({ size: 40_000, last: true });
    const off = copyControl({ bandwidthMbps: 8 }, 1000);
    autoConvergeStep(off);
    expect(off.throttlePercent).toBeUndefined();
    expect(nextPass(m, off, { size: m.mem, last: false }, 9, 1000)).toEqual({ size: m.mem, last: false });
  });
});

describe('the watch: one timer, the actions through the controls, the record', () => {
  const row = (over: Partial<MigrationRow> = {}): MigrationRow => ({
    id: 'mig-1', vmId: 'vm1', project: 'demo', sourceHostId: 'A', destinationHostId: 'B', mode: 'live', state: 'precopy',
    request: { vmId: 'vm1', destinationHostId: 'B', mode: 'live', maxDowntimeMs: 300 }, ctx: { path: 'live' }, error: null, progress: null, createdAt: 0, updatedAt: 0, ...over,
  });

  function setup(r: MigrationRow, controllerPolicy?: EffectivePolicy | Record<string, unknown>) {
    const clock = new ManualClock(0);
    const store = new ControllerStore(':memory:');
    store.createMigration(r, null, null, {});
    const hub = Object.assign(new EventEmitter(), { inventory: () => ({ vms: [{ vmId: 'vm1', memoryMb: 1024 }] }) });
    const calls: unknown[][] = [];
    const fired: unknown[] = [];
    const out = { refuse: false } as { refuse: boolean; clock: ManualClock; store: ControllerStore; watch: PolicyWatch; calls: unknown[][]; fired: unknown[]; progress: (r: number, p: number) => void; close: () => void };
    const watch = new PolicyWatch({
      store, hub: hub as never, clock, log: silentLogger(), policies: new PolicyStore(store.db),
      ...(controllerPolicy ? { controllerPolicy } : {}),
      control: {
        tune: async (id, limits, by) => {
          calls.push(['tune', id, limits, by]);
          store.saveCtx(id, { ...store.migration(id)!.ctx, limits: { ...limits } }, clock.now());
          return store.migration(id)!;
        },
        forceComplete: async (id, mode, by) => {
          calls.push(['force', id, mode, by]);
          if (out.refuse) throw err('VMTC_MIGRATION_NOT_FORCEABLE', { state: 'precopy' });
          return store.migration(id)!;
        },
      },
      cancel: async (id, error, detail) => { calls.push(['cancel', id, error.code, detail]); },
      fired: (_id, f) => { fired.push(f); },
    });
    const progress = (remainingBytes: number, pass: number) => hub.emit('event', 'A', 'migration.progress', { migrationId: 'mig-1', vmId: 'vm1', status: 'active', totalBytes: 1000, transferredBytes: 0, remainingBytes, pass });
    Object.assign(out, { clock, store, watch, calls, fired, progress, close: () => { watch.close(); store.close(); } });
    return out;
  }
  const settle = () => new Promise((r) => setImmediate(r));

  it("a group's policy fires on a copy that does not converge: raise-downtime, then cancel with VMTC_MIGRATION_POLICY_TIMEOUT; each recorded", async () => {
    const t = setup(row());
    try {
      new PolicyStore(t.store.db).put('db', { progressTimeoutS: 10, onTimeout: ['raise-downtime', 'cancel'], downtimeStepMs: 200, maxDowntimeMs: 500 }, ['vm1'], 0);
      t.watch.watch(t.store.migration('mig-1')!);
      expect(t.store.migration('mig-1')!.ctx.policy).toMatchObject({ policy: { progressTimeoutS: 10 }, from: { progressTimeoutS: 'group:db', throttleWarnPercent: 'default' } });
      // One timer: the progress timeout.
      expect(t.clock.pending()).toBe(1);
      // The first pass moves (progress at 2 s); then every pass is as big as the first: none.
      for (let s = 1; s <= 11; s++) {
        t.clock.advance(1000);
        t.progress(s % 2 ? 1000 : 50, Math.ceil(s / 2));
      }
      expect(t.calls).toEqual([]);
      t.clock.advance(1000);
      await settle();
      expect(t.calls).toEqual([['tune', 'mig-1', { maxDowntimeMs: 500 }, 'policy']]);
      t.clock.advance(10_000);
      await settle();
      expect(t.calls[1]).toEqual(['cancel', 'mig-1', 'VMTC_MIGRATION_POLICY_TIMEOUT', { policy: expect.objectContaining({ trigger: 'progress', action: 'cancel' }) }]);
      const rec = t.store.migration('mig-1')!.ctx.policy!;
      expect(rec.fired.map((f) => [f.at, f.trigger, f.action, f.outcome, f.maxDowntimeMs])).toEqual([[12_000, 'progress', 'raise-downtime', 'done', 500], [22_000, 'progress', 'cancel', 'done', undefined]]);
      expect(rec.firings).toBe(2);
      expect(t.fired).toHaveLength(2);
    } finally {
      t.close();
    }
  });

  it('progress keeps it quiet; a refused action is recorded as failed with the code; no action left is one warning on the record', async () => {
    const t = setup(row(), { progressTimeoutS: 5, onTimeout: ['postcopy'] });
    try {
      t.watch.watch(t.store.migration('mig-1')!);
      // A shrinking copy for 20 s: nothing fires.
      for (let s = 1; s <= 20; s++) {
        t.clock.advance(1000);
        t.progress(1000 - s * 40, 1);
      }
      expect(t.fired).toEqual([]);
      // Stuck: the post-copy is not allowed (request.postcopy unset) -> skipped, nothing left: a warning.
      t.clock.advance(5000);
      await settle();
      t.clock.advance(5000);
      await settle();
      const ctx = t.store.migration('mig-1')!.ctx;
      // A skipped action is not tried again.
      expect(ctx.policy!.fired.map((f) => [f.action, f.skipped?.[0]?.action])).toEqual([['none', 'postcopy'], ['none', undefined]]);
      expect(ctx.warnings!.filter((w) => w.code === 'VMTC_MIGRATION_NOT_CONVERGING')).toHaveLength(1);
      expect(t.calls).toEqual([]);
    } finally {
      t.close();
    }
  });

  it('an action the source refuses is recorded as failed with its code, and the next firing goes on', async () => {
    const t = setup(row({ request: { vmId: 'vm1', destinationHostId: 'B', mode: 'live', postcopy: true } }), { progressTimeoutS: 5, onTimeout: ['postcopy', 'cancel'] });
    try {
      t.refuse = true;
      t.watch.watch(t.store.migration('mig-1')!);
      t.clock.advance(5000);
      await settle();
      t.clock.advance(5000);
      await settle();
      const fired = t.store.migration('mig-1')!.ctx.policy!.fired;
      expect(fired.map((f) => [f.action, f.outcome, f.error?.code])).toEqual([['postcopy', 'failed', 'VMTC_MIGRATION_NOT_FORCEABLE'], ['cancel', 'done', undefined]]);
      expect(t.calls.map((c) => c[0])).toEqual(['force', 'cancel']);
    } finally {
      t.close();
    }
  });

  it('unwatch drops the timer; the runner tells the stream on the control channel', () => {
    const t = setup(row());
    try {
      t.watch.watch(t.store.migration('mig-1')!);
      expect(t.clock.pending()).toBe(1);
      t.watch.unwatch('mig-1');
      expect(t.clock.pending()).toBe(0);
      // runner.ts emits firings as ('control', id, 'policy', firing): the channel events-routes.ts reads.
      expect(CONTROL_EVENT).toBe('control');
    } finally {
      t.close();
    }
  });
});
