// The migration machine's pure parts: table, per-state properties, reducer, rollback decision,
// deadline and tuning. No servers, no clock.
import { describe, it, expect } from 'vitest';
import {
  CANCELLABLE, FAILABLE, STATES, STATE_DEFS, TERMINAL, edges, effectOf, outcomeStates, transition,
  type MigrationEvent, type MigrationRecord, type MigrationState, type StateDef,
} from '../../src/controller/machine.ts';
import { decideRollbackOutcome, finalStateMayHaveLeft, heldDestinationNeverRan, reduce, sourceMayBeRestored, type RollbackFacts, type SourceReport } from '../../src/controller/migration/reducer.ts';
import { deadlineAt, migrationTuning, mustCopyStorage, sourceParams } from '../../src/controller/migration/request.ts';
import { EFFECTS } from '../../src/controller/migration/effects.ts';
import type { MigrationCtx, MigrationRequest } from '../../src/controller/store.ts';
import type { ErrorBody } from '../../src/common/errors.ts';

const UNDOABLE: MigrationState[] = ['prechecking', 'reserved', 'authorizing', 'provisioning', 'preparing', 'precopy', 'stopcopy', 'cold_exporting', 'cold_importing', 'cold_verifying'];

/** Every edge of the machine, written out: the table must be exactly this. */
const EDGES: [MigrationState, MigrationEvent['type'], string][] = [
  ['prechecking', 'PRECHECKS_PASSED', 'reserved'],
  ['reserved', 'START_LIVE', 'authorizing'],
  ['reserved', 'START_COLD', 'cold_exporting'],
  ['authorizing', 'TOKEN_GRANTED', 'provisioning'],
  ['provisioning', 'LIGHTPATH_UP', 'preparing'],
  ['preparing', 'DESTINATION_PREPARED', 'precopy'],
  ['precopy', 'STOP_AND_COPY', 'stopcopy'],
  ['precopy', 'SWITCHOVER_READY', 'switchover'],
  ['stopcopy', 'SWITCHOVER_READY', 'switchover'],
  ['switchover', 'MIGRATION_COMPLETED', 'committing'],
  ['committing', 'DESTINATION_RUNNING', 'activating'],
  ['activating', 'ACTIVATED', 'cleanup'],
  ['cleanup', 'CLEANED_UP', 'completed'],
  ['cold_exporting', 'COLD_EXPORTED', 'cold_importing'],
  ['cold_importing', 'COLD_IMPORTED', 'cold_verifying'],
  ['cold_verifying', 'COLD_VERIFIED', 'activating'],
  ['rolling_back', 'ROLLED_BACK', 'rolled_back|cancelled'],
  ['rolling_back', 'ROLLBACK_FAILED', 'failed'],
  ['rolling_back', 'FALLBACK_COLD', 'cold_exporting'],
  ...[...UNDOABLE, 'switchover' as const, 'committing' as const].map((s): [MigrationState, 'FAIL', string] => [s, 'FAIL', 'rolling_back']),
  ...UNDOABLE.map((s): [MigrationState, 'CANCEL', string] => [s, 'CANCEL', 'rolling_back']),
];

const key = (e: { from: string; event: string; to: string }) => `${e.from} --${e.event}--> ${e.to}`;
const ev = (type: MigrationEvent['type']): MigrationEvent => (type === 'ROLLED_BACK' ? { type, cancelled: false } : { type }) as MigrationEvent;

describe('migration machine: the table', () => {
  it('has exactly the documented edges', () => {
    expect(edges().map(key).sort()).toEqual(EDGES.map(([from, event, to]) => key({ from, event, to })).sort());
  });

  it('takes every edge to its target and launches the target state\'s effect', () => {
    for (const [from, type, to] of EDGES) {
      const t = transition(from, ev(type));
      expect(to.split('|')).toContain(t.to);
      const onEnter = (STATE_DEFS[t.to] as StateDef).onEnter;
      expect(t.effects).toEqual(onEnter ? [onEnter] : []);
    }
    expect(transition('rolling_back', { type: 'ROLLED_BACK', cancelled: true }).to).toBe('cancelled');
  });

  it('refuses every event a state has no edge for, with a code naming the state', () => {
    const all = [...new Set(EDGES.map((e) => e[1]))];
    const allowed = new Set(EDGES.map(([f, e]) => `${f}/${e}`));
    for (const s of STATES) {
      for (const e of all) {
        if (allowed.has(`${s}/${e}`)) continue;
        expect(() => transition(s, ev(e))).toThrowError(expect.objectContaining({
          code: e === 'CANCEL' ? 'VMTC_MIGRATION_NOT_CANCELLABLE' : 'VMTC_ILLEGAL_TRANSITION',
          details: e === 'CANCEL' ? { state: s } : { state: s, event: e },
        }));
      }
    }
  });

  it('names no effect that does nothing, and every effect named is implemented', () => {
    const named = STATES.map((s) => (STATE_DEFS[s] as StateDef).onEnter).filter(Boolean);
    for (const e of ['startLive', 'startCold', 'watchStopAndCopy']) expect(named).not.toContain(e);
    expect(Object.keys(EFFECTS).sort()).toEqual([...new Set(named)].sort());
  });
});

describe('migration machine: per-state properties', () => {
  it('derives the sets from STATE_DEFS', () => {
    expect([...TERMINAL].sort()).toEqual(['cancelled', 'completed', 'failed', 'rolled_back']);
    expect([...CANCELLABLE].sort()).toEqual([...UNDOABLE].sort());
    expect([...FAILABLE].sort()).toEqual([...UNDOABLE, 'switchover', 'committing'].sort());
    for (const s of CANCELLABLE) expect(FAILABLE.has(s)).toBe(true);
    for (const s of TERMINAL) expect(STATE_DEFS[s]).toMatchObject({ onEnter: 'finish', terminal: true });
  });

  it('says what a restarted controller does in each state and which host it waits for', () => {
    const plan = Object.fromEntries(STATES.map((s) => [s, (STATE_DEFS[s] as StateDef).reconcile ?? null]));
    const rollback = { action: 'rollback', ask: 'source' };
    expect(plan).toEqual({
      prechecking: rollback, reserved: rollback, authorizing: rollback, provisioning: rollback, preparing: rollback,
      precopy: { action: 'resume', ask: 'source' }, stopcopy: { action: 'resume', ask: 'source' },
      switchover: { action: 'resume', ask: 'source' },
      committing: { action: 'resume', ask: 'destination' }, activating: { action: 'resume', ask: 'destination' },
      cleanup: { action: 'resume', ask: 'source' },
      cold_exporting: rollback, cold_importing: rollback, cold_verifying: rollback,
      rolling_back: { action: 'resume', ask: 'source' },
      completed: null, rolled_back: null, cancelled: null, failed: null,
    });
    // Every state a restart resumes has an effect to run again.
    for (const s of STATES) if (plan[s]?.action === 'resume') expect(effectOf(s)).toBeDefined();
  });

  it('lets stop-and-copy share the pre-copy\'s effect and its outcome', () => {
    expect(effectOf('stopcopy')).toBe('startMigration');
    expect(transition('precopy', { type: 'STOP_AND_COPY' }).effects).toEqual([]);
    expect(outcomeStates('precopy')).toEqual(['precopy', 'stopcopy']);
    expect(outcomeStates('stopcopy')).toEqual(['precopy', 'stopcopy']);
    expect(outcomeStates('committing')).toEqual(['committing']);
  });

  it('makes the switchover the point of no return: its own effect, no cancel, a failure still rolls back', () => {
    expect(transition('precopy', { type: 'SWITCHOVER_READY' })).toMatchObject({ to: 'switchover', effects: ['switchover'] });
    expect(transition('stopcopy', { type: 'SWITCHOVER_READY' })).toMatchObject({ to: 'switchover', effects: ['switchover'] });
    expect(effectOf('switchover')).toBe('switchover');
    expect(outcomeStates('switchover')).toEqual(['switchover']);
    expect(CANCELLABLE.has('switchover')).toBe(false);
    expect(() => transition('switchover', { type: 'CANCEL' })).toThrowError(expect.objectContaining({ code: 'VMTC_MIGRATION_NOT_CANCELLABLE', details: { state: 'switchover' } }));
    expect(transition('switchover', { type: 'FAIL' }).to).toBe('rolling_back');
    // A copy completes only through the switchover: the source waits for the decision.
    for (const s of ['precopy', 'stopcopy'] as const) {
      expect(() => transition(s, { type: 'MIGRATION_COMPLETED' })).toThrowError(expect.objectContaining({ code: 'VMTC_ILLEGAL_TRANSITION' }));
    }
  });
});

const rec = (over: Partial<Omit<MigrationRecord, 'ctx'>> & { ctx?: Partial<MigrationCtx> } = {}): MigrationRecord => ({
  state: 'precopy', mode: 'live', error: null, ...over, ctx: { path: 'live', ...(over.ctx ?? {}) },
});
const boom: ErrorBody = { code: 'VMTC_MIGRATION_FAILED', message: 'stream broke', details: { bytes: 5 } };

describe('migration machine: the reducer', () => {
  it('adds the time spent in the state left to its timing and merges what the effect learnt', () => {
    const s = reduce(rec({ state: 'switchover', ctx: { timings: { switchover: 100, preparing: 7 }, migrationStarted: true } }), { event: { type: 'MIGRATION_COMPLETED' }, ctxPatch: { result: { downtimeMs: 12 } } }, 5_000, 4_000);
    expect(s.transition).toMatchObject({ from: 'switchover', to: 'committing', effects: ['awaitDestinationRunning'] });
    expect(s.ctx).toEqual({ path: 'live', migrationStarted: true, result: { downtimeMs: 12 }, timings: { switchover: 1_100, preparing: 7 } });
    expect(s).not.toHaveProperty('error');
    expect(s.abortRunning).toBe(false);
    expect(s.next).toBeUndefined();
  });

  it('sets the error on FAIL and stops the running effect', () => {
    const s = reduce(rec({ state: 'preparing' }), { event: { type: 'FAIL' }, error: boom }, 10, 0);
    expect(s).toMatchObject({ error: boom, abortRunning: true, transition: { to: 'rolling_back', effects: ['rollback'] } });
    expect(s.ctx.cancelRequested).toBeUndefined();
  });

  it('records a CANCEL as asked for, with its error', () => {
    const cancelled: ErrorBody = { code: 'VMTC_CANCELLED', message: 'cancelled' };
    const s = reduce(rec({ state: 'cold_importing', ctx: { path: 'cold' } }), { event: { type: 'CANCEL' }, error: cancelled }, 10, 0);
    expect(s).toMatchObject({ error: cancelled, abortRunning: true, ctx: { cancelRequested: true } });
  });

  it('on FALLBACK_COLD turns the live attempt\'s error into a warning and the path cold', () => {
    const earlier: ErrorBody = { code: 'VMTC_HOST_FAULT', message: 'x' };
    const s = reduce(rec({ state: 'rolling_back', mode: 'auto', error: boom, ctx: { warnings: [earlier] } }), { event: { type: 'FALLBACK_COLD' }, ctxPatch: { fallbackCold: true } }, 10, 0);
    expect(s.transition).toMatchObject({ to: 'cold_exporting', effects: ['coldExport'] });
    expect(s.error).toBeNull();
    expect(s.ctx).toMatchObject({ path: 'cold', fallbackCold: true });
    expect(s.ctx.warnings).toEqual([earlier, { ...boom, details: { bytes: 5, step: 'live-attempt' } }]);
    expect(s.abortRunning).toBe(false);
  });

  it('decides the branch from ctx.path as soon as the reservation is made', () => {
    expect(reduce(rec({ state: 'prechecking' }), { event: { type: 'PRECHECKS_PASSED' } }, 1, 0).next).toEqual({ type: 'START_LIVE' });
    expect(reduce(rec({ state: 'prechecking', ctx: { path: 'cold' } }), { event: { type: 'PRECHECKS_PASSED' } }, 1, 0).next).toEqual({ type: 'START_COLD' });
  });

  it('records the switchover decision with the transition that makes it', () => {
    const s = reduce(rec({ state: 'stopcopy', ctx: { migrationStarted: true } }), { event: { type: 'SWITCHOVER_READY' } }, 7_000, 6_000);
    expect(s.transition).toMatchObject({ from: 'stopcopy', to: 'switchover', effects: ['switchover'] });
    expect(s.ctx.switchover).toEqual({ grantedAt: 7_000 });
    expect(s.abortRunning).toBe(false);
  });

  it('applies a cancel and the source\'s readiness in the order they come: the first wins, the second is refused', () => {
    const cancelled: ErrorBody = { code: 'VMTC_CANCELLED', message: 'cancelled' };
    // The cancel first: rolled back while the source waits; its readiness then changes nothing.
    const c = reduce(rec({ state: 'precopy', ctx: { migrationStarted: true } }), { event: { type: 'CANCEL' }, error: cancelled }, 10, 0);
    expect(c.transition.to).toBe('rolling_back');
    expect(c.ctx.switchover).toBeUndefined();
    expect(() => reduce({ state: 'rolling_back', mode: 'live', ctx: c.ctx, error: cancelled }, { event: { type: 'SWITCHOVER_READY' } }, 11, 10)).toThrowError(expect.objectContaining({ code: 'VMTC_ILLEGAL_TRANSITION' }));
    // The readiness first: past the point of no return, the cancel is refused with its own code.
    const r = reduce(rec({ state: 'precopy', ctx: { migrationStarted: true } }), { event: { type: 'SWITCHOVER_READY' } }, 10, 0);
    expect(() => reduce({ state: 'switchover', mode: 'live', ctx: r.ctx, error: null }, { event: { type: 'CANCEL' }, error: cancelled }, 11, 10)).toThrowError(expect.objectContaining({ code: 'VMTC_MIGRATION_NOT_CANCELLABLE' }));
  });

  it('refuses an event the state does not allow', () => {
    expect(() => reduce(rec({ state: 'activating' }), { event: { type: 'FAIL' }, error: boom }, 1, 0)).toThrowError(expect.objectContaining({ code: 'VMTC_ILLEGAL_TRANSITION' }));
  });
});

describe('migration machine: how a rollback ends', () => {
  const facts = (over: Partial<RollbackFacts> = {}): RollbackFacts => ({ destinationGone: true, destinationMayRun: false, sourceState: 'running', problems: [], ...over });
  const problem: ErrorBody = { code: 'VMTC_HOST_FAULT', message: 'x', details: { step: 'tunnel-prune' } };
  const lp = { reservationId: 'r1', provisioned: true, released: true };

  it('restores the source unless an uncleaned destination may run the VM', () => {
    expect(sourceMayBeRestored({ destinationGone: true, destinationMayRun: false })).toBe(true);
    expect(sourceMayBeRestored({ destinationGone: true, destinationMayRun: true })).toBe(true);
    expect(sourceMayBeRestored({ destinationGone: false, destinationMayRun: false })).toBe(true);
    expect(sourceMayBeRestored({ destinationGone: false, destinationMayRun: true })).toBe(false);
  });

  it('fails, leaving both alone, when the destination could not be cleaned and may run; releases the rest and says what it kept', () => {
    const token = { jti: 'j1', expiresAt: 1, accountingClosed: true };
    const out = decideRollbackOutcome(facts({ destinationGone: false, destinationMayRun: true, problems: [problem], lightpath: lp, token }), rec({ mode: 'auto', ctx: { warnings: [boom], tunnel: { bicast: true } } }));
    expect(out).toMatchObject({ event: { type: 'ROLLBACK_FAILED' }, releaseHold: true, detail: { reason: expect.stringMatching(/may be running/) } });
    expect(out.ctxPatch).toEqual({ warnings: [boom, problem], lightpath: lp, token, kept: [expect.stringMatching(/^destination VM/), expect.stringMatching(/^source VM/), expect.stringMatching(/^tunnel bicast/)] });
    // A tunnel already pruned (or never bicast) is not kept.
    expect(decideRollbackOutcome(facts({ destinationGone: false, destinationMayRun: true }), rec({ ctx: { tunnel: { bicast: true, pruned: true } } })).ctxPatch?.kept).toHaveLength(2);
  });

  it('decides from what the source says whether its final state may have left', () => {
    const report = (status: SourceReport['status'], vmState?: string): SourceReport => ({ status, ...(vmState ? { vmState } : {}) });
    const before = { migrationStarted: true };
    const after = { migrationStarted: true, switchover: { grantedAt: 1 } };
    // Never started: nothing left.
    expect(finalStateMayHaveLeft({}, report('completed'))).toBe(false);
    // Completed: it left, before or after the grant (a source that did not wait).
    expect(finalStateMayHaveLeft(before, report('completed', 'postmigrate'))).toBe(true);
    expect(finalStateMayHaveLeft(after, report('completed', 'postmigrate'))).toBe(true);
    // Ended otherwise before the grant: the source was waiting, the final state never left.
    expect(finalStateMayHaveLeft(before, report('cancelled', 'running'))).toBe(false);
    expect(finalStateMayHaveLeft(before, report('failed'))).toBe(false);
    // After the grant, only a source that runs again rules it out (post-copy leaves it paused).
    expect(finalStateMayHaveLeft(after, report('failed', 'running'))).toBe(false);
    expect(finalStateMayHaveLeft(after, report('failed', 'paused'))).toBe(true);
    expect(finalStateMayHaveLeft(after, report('cancelled'))).toBe(true);
    // Unknown (unreachable, no record) or still running: only a running source rules it out.
    expect(finalStateMayHaveLeft(before, report('unknown'))).toBe(true);
    expect(finalStateMayHaveLeft(before, report('unknown', 'running'))).toBe(false);
    expect(finalStateMayHaveLeft(after, report('unknown', 'postmigrate'))).toBe(true);
    // Still running: before the grant it waits (never sent it); after, it may be sending it.
    expect(finalStateMayHaveLeft(before, report('running', 'migrating'))).toBe(false);
    expect(finalStateMayHaveLeft(after, report('running', 'migrating'))).toBe(true);
  });

  it('rolls back when the destination could not be cleaned but cannot run', () => {
    const out = decideRollbackOutcome(facts({ destinationGone: false, destinationMayRun: false, problems: [problem] }), rec());
    expect(out).toMatchObject({ event: { type: 'ROLLED_BACK', cancelled: false }, releaseHold: true, ctxPatch: { warnings: [problem] } });
  });

  it('fails when the source is not back in the state it had', () => {
    expect(decideRollbackOutcome(facts({ sourceState: 'paused', lightpath: lp }), rec({ mode: 'auto' }))).toMatchObject({
      event: { type: 'ROLLBACK_FAILED' }, releaseHold: true, detail: { sourceState: 'paused', expected: 'running' }, ctxPatch: { lightpath: lp },
    });
    const { sourceState: _, ...unknown } = facts();
    expect(decideRollbackOutcome(unknown, rec()).detail).toEqual({ sourceState: 'unknown', expected: 'running' });
    // A VM admitted paused must come back paused.
    expect(decideRollbackOutcome(facts({ sourceState: 'paused' }), rec({ ctx: { sourceState: 'paused' } })).event).toEqual({ type: 'ROLLED_BACK', cancelled: false });
    expect(decideRollbackOutcome(facts({ sourceState: 'running' }), rec({ ctx: { sourceState: 'paused' } })).event.type).toBe('ROLLBACK_FAILED');
  });

  it('falls back to cold once, for mode auto after a live attempt that was not cancelled', () => {
    const out = decideRollbackOutcome(facts({ problems: [problem], lightpath: lp }), rec({ mode: 'auto', ctx: { migrationStarted: true, tunnel: { bicast: true } } }));
    expect(out).toEqual({
      event: { type: 'FALLBACK_COLD' }, releaseHold: false,
      ctxPatch: { warnings: [problem], lightpath: lp, fallbackCold: true, migrationStarted: false, tunnel: { bicast: true, pruned: true } },
    });
    expect(decideRollbackOutcome(facts(), rec({ mode: 'auto', ctx: { tunnel: { skipped: 'none' } } })).ctxPatch?.tunnel).toEqual({ skipped: 'none' });
    for (const ctx of [{ cancelRequested: true }, { fallbackCold: true }, { path: 'cold' }] as Partial<MigrationCtx>[]) {
      const o = decideRollbackOutcome(facts(), rec({ mode: 'auto', ctx }));
      expect(o).toMatchObject({ event: { type: 'ROLLED_BACK', cancelled: Boolean(ctx.cancelRequested) }, releaseHold: true });
    }
    expect(decideRollbackOutcome(facts(), rec({ mode: 'live' })).event).toEqual({ type: 'ROLLED_BACK', cancelled: false });
  });

  it('ends cancelled when an operator asked for it', () => {
    expect(decideRollbackOutcome(facts(), rec({ mode: 'cold', ctx: { path: 'cold', cancelRequested: true } })).event).toEqual({ type: 'ROLLED_BACK', cancelled: true });
  });
});

describe('migration request: deadline and tuning', () => {
  const req = (over: Partial<MigrationRequest> = {}): MigrationRequest => ({ vmId: 'vm1', destinationHostId: 'B', mode: 'live', ...over });

  it('takes the request\'s deadline, else the default after creation', () => {
    expect(deadlineAt(req({ deadline: '2030-01-02T03:04:05.000Z' }), 1_000, 60_000)).toBe(Date.parse('2030-01-02T03:04:05.000Z'));
    expect(deadlineAt(req(), 1_000, 60_000)).toBe(61_000);
  });

  it('builds one tuning from the request, for the destination and the source alike', () => {
    const r = req({ bandwidthMbps: 500, maxDowntimeMs: 30, autoConverge: false, multifd: true, postcopy: true, suspend: true, requestId: 'x', verifyTcp: { host: 'h', port: 1 } });
    // multifd asked without channels: as many as fill 500 Mbit/s (tuning-default.ts: 6 at the defaults).
    expect(migrationTuning(r)).toEqual({ bandwidthMbps: 500, maxDowntimeMs: 30, autoConverge: false, multifd: true, multifdChannels: 6, postcopy: true, suspend: true });
    expect(migrationTuning(r, true)).toEqual({ bandwidthMbps: 500, maxDowntimeMs: 30, autoConverge: false, multifd: true, multifdChannels: 6, postcopy: true, suspend: true, copyStorage: true });
    // Nothing asked: one stream.
    expect(migrationTuning(req())).toEqual({});
    expect(migrationTuning(req({ multifd: false }))).toEqual({});
    const storage = { disks: [{ index: 0, uri: 'nbd://d:1/x', device: 'virtio0' }] } as never;
    expect(sourceParams('mig1', migrationTuning(r, true), storage)).toEqual({ migrationId: 'mig1', bandwidthMbps: 500, maxDowntimeMs: 30, autoConverge: false, multifd: true, multifdChannels: 6, postcopy: true, suspend: true, storage });
    expect(sourceParams('mig1', migrationTuning(req({ multifd: true, multifdChannels: 3 })))).toEqual({ migrationId: 'mig1', multifd: true, multifdChannels: 3 });
  });

  it('copies storage only for writable disks not shared by both hosts', () => {
    const rw = { disks: [{ path: '/a', format: 'raw' as const }] };
    const ro = { disks: [{ path: '/a', format: 'raw' as const, readonly: true }] };
    expect(mustCopyStorage(rw, true, true)).toBe(false);
    expect(mustCopyStorage(rw, true, false)).toBe(true);
    expect(mustCopyStorage(rw, undefined, true)).toBe(true);
    expect(mustCopyStorage(ro, false, false)).toBe(false);
    expect(mustCopyStorage({}, false, false)).toBe(false);
  });
});

describe('a held destination that never ran (a move with a replica: docs/disks.md#following)', () => {
  const inc = { uri: 'tcp:x:1', prepared: true };
  it('may be removed when held, never told to run, and incoming or paused', () => {
    expect(heldDestinationNeverRan({ incoming: { ...inc, held: true } }, 'paused')).toBe(true);
    expect(heldDestinationNeverRan({ incoming: { ...inc, held: true } }, 'incoming')).toBe(true);
  });
  it('not once it was told to run, nor when it runs, nor without an answer, nor when not held', () => {
    expect(heldDestinationNeverRan({ incoming: { ...inc, held: true, resumeAsked: true } }, 'paused')).toBe(false);
    expect(heldDestinationNeverRan({ incoming: { ...inc, held: true } }, 'running')).toBe(false);
    expect(heldDestinationNeverRan({ incoming: { ...inc, held: true } }, undefined)).toBe(false);
    expect(heldDestinationNeverRan({ incoming: { ...inc } }, 'paused')).toBe(false);
    expect(heldDestinationNeverRan({}, 'paused')).toBe(false);
  });
});
