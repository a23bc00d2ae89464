// The runner: the machinery around the pure machine (machine.ts, migration/reducer.ts). It keeps
// one queue per migration (events are applied one at a time), the timers (deadline, lost
// destination agent), the abort signals, and launches the effects the states name
// (migration/effects.ts). Each effect remembers the state(s) it was started for and its outcome
// is dropped if the migration has moved on meanwhile (for example a cancel arrived), so a late
// reply can never drive a transition.
import { EventEmitter } from 'node:events';
import type { Logger } from '../common/log.ts';
import type { Clock, Ids } from '../common/clock.ts';
import { toVmtcError, type ErrorBody, type VmtcError } from '../common/errors.ts';
import type { ColdExport } from '../common/agent-protocol.ts';
import { CANCELLABLE, TERMINAL, outcomeStates, transition, type Effect, type MigrationEvent, type MigrationState } from './machine.ts';
import type { ControllerStore, MigrationCtx, MigrationRow } from './store.ts';
import type { AuthorizationPort, HubPort, LightpathPort, TunnelPort } from './ports.ts';
import { err } from './errors.ts';
import { reduce } from './migration/reducer.ts';
import { EFFECTS } from './migration/effects.ts';
import { reconcile, releaseLeftLightpaths } from './migration/reconcile.ts';
import { deadlineAt } from './migration/request.ts';
import type { EffectContext, RunnerOptions } from './migration/context.ts';
import { MigrationControl } from './migration/control.ts';
import { checkPolicy } from './migration/policy.ts';
import { PolicyStore } from './migration/policy-store.ts';
import { POLICY_EVENT, PolicyWatch } from './migration/policy-watch.ts';

export type { RunnerOptions };

/** Retries of releasing the lightpaths of ended migrations: the first delay, doubled each time
 *  up to the last. */
const LEFTOVER_RETRY_MS = { first: 1_000, max: 60_000 } as const;

export interface RunnerDeps {
  store: ControllerStore;
  hub: HubPort;
  logger: Logger;
  clock: Clock;
  ids: Ids;
  options: RunnerOptions;
  aaa?: AuthorizationPort;
  lightpath?: LightpathPort;
  tunnel?: TunnelPort;
}

interface DispatchOptions {
  ctxPatch?: Partial<MigrationCtx>;
  error?: ErrorBody;
  /** Apply only if the migration is (still) in one of these states; otherwise drop. */
  expectState?: MigrationState | MigrationState[];
}

interface Live {
  abort: AbortController;
  deadline?: { cancel(): void };
}

export class MigrationRunner extends EventEmitter {
  private readonly live = new Map<string, Live>();
  private readonly queues = new Map<string, Promise<unknown>>();
  private closed = false;
  /** Watchdogs of lost destination agents, by migration id. */
  private readonly lost = new Map<string, { cancel(): void }>();
  /** Tokens and cold exports are secrets: kept in memory only, never in the store. A restarted
   *  controller rolls a cold migration back rather than resume it (STATE_DEFS' reconcile). */
  private readonly secrets = new Map<string, string>();
  private readonly exports = new Map<string, ColdExport>();
  private leftoverRetry: { cancel(): void } | undefined;
  /** A pass over the held lightpaths is running; `leftoverAgain`: another was asked for meanwhile. */
  private leftoverBusy = false;
  private leftoverAgain = false;
  private leftoverDelayMs: number = LEFTOVER_RETRY_MS.first;
  /** The migration policies' timers (migration/policy-watch.ts), one per copy running. */
  private readonly policy: PolicyWatch;

  constructor(private readonly d: RunnerDeps) {
    super();
    if (d.options.policy) checkPolicy(d.options.policy, 'controller');
    this.policy = new PolicyWatch({
      store: d.store, hub: d.hub, clock: d.clock, log: d.logger, policies: new PolicyStore(d.store.db),
      ...(d.options.policy ? { controllerPolicy: d.options.policy } : {}),
      // The operator's controls, with their changes told on the migration's stream (as
      // migration-control-routes.ts's CONTROL_EVENT, 'control').
      control: new MigrationControl({ store: d.store, hub: d.hub, clock: d.clock, log: d.logger, notify: (id, event, change) => { this.emit('control', id, event, change); } }),
      cancel: (id, error, detail) => this.cancel(id, { error, detail }),
      fired: (id, firing) => {
        this.emit('control', id, 'policy', firing);
        this.emit(POLICY_EVENT, id, firing);
      },
    });
    d.hub.on('disconnected', this.onDisconnected);
    d.hub.on('connected', this.onConnected);
  }

  private readonly onDisconnected = (hostId: string): void => {
    if (this.closed) return;
    const ms = this.d.options.agentLostMs ?? 60_000;
    for (const id of this.live.keys()) {
      const row = this.d.store.migration(id);
      if (!row || row.destinationHostId !== hostId || !CANCELLABLE.has(row.state) || this.lost.has(id)) continue;
      this.log(row).warn({ lostHostId: hostId, afterMs: ms }, 'destination agent disconnected; waiting for it to come back');
      this.lost.set(id, this.d.clock.setTimeout(() => {
        this.lost.delete(id);
        const cur = this.d.store.migration(id);
        if (!cur || !CANCELLABLE.has(cur.state) || this.d.hub.isConnected(hostId)) return;
        void this.dispatch(id, { type: 'FAIL' }, { agentLost: hostId }, { error: err('VMTC_AGENT_LOST', { hostId, role: 'destination', afterMs: ms, state: cur.state }).toJSON(), expectState: cur.state });
      }, ms));
    }
  };

  private readonly onConnected = (hostId: string): void => {
    for (const [id, t] of this.lost) {
      if (this.d.store.migration(id)?.destinationHostId === hostId) {
        t.cancel();
        this.lost.delete(id);
      }
    }
  };

  private log(row: Pick<MigrationRow, 'id' | 'vmId' | 'sourceHostId' | 'destinationHostId'>): Logger {
    return this.d.logger.child({ migrationId: row.id, vmId: row.vmId, hostId: row.sourceHostId, destHostId: row.destinationHostId });
  }

  /** The controller's configured migration policy (runner.policy), if any. */
  configuredPolicy(): RunnerOptions['policy'] {
    return this.d.options.policy;
  }

  /** Start driving a newly created migration (state 'prechecking'); the machine picks the path. */
  start(row: MigrationRow): void {
    this.arm(row);
    void this.dispatch(row.id, { type: 'PRECHECKS_PASSED' }, { checks: row.ctx.checks });
  }

  /** Operator cancel (REST), or a policy's (`why`: its error and the transition's detail).
   *  Throws a coded error if the state does not allow it. */
  async cancel(id: string, why?: { error: ErrorBody; detail: unknown }): Promise<MigrationRow> {
    const row = this.d.store.migration(id);
    if (!row) throw err('VMTC_MIGRATION_NOT_FOUND', { migrationId: id });
    // Validate synchronously so the caller gets the coded error.
    transition(row.state, { type: 'CANCEL' });
    await this.dispatch(id, { type: 'CANCEL' }, why?.detail, { error: why?.error ?? err('VMTC_CANCELLED', { migrationId: id }).toJSON() });
    return this.d.store.migration(id)!;
  }

  /**
   * Apply one event: the machine's reducer decides, the store persists (state + ctx + log in one
   * transaction), then the new state's effects are launched. Serialised per migration.
   */
  dispatch(id: string, event: MigrationEvent, detail?: unknown, opts: DispatchOptions = {}): Promise<void> {
    const prev = this.queues.get(id) ?? Promise.resolve();
    const next = prev.then(() => this.apply(id, event, detail, opts)).catch((e) => {
      this.d.logger.warn({ migrationId: id, event: event.type, code: (e as VmtcError).code, err: e }, 'event not applied');
      if (event.type === 'CANCEL') throw e;
    });
    this.queues.set(id, next.catch(() => undefined));
    return next;
  }

  private async apply(id: string, event: MigrationEvent, detail: unknown, opts: DispatchOptions): Promise<void> {
    if (this.closed) return;
    const row = this.d.store.migration(id);
    if (!row) throw err('VMTC_MIGRATION_NOT_FOUND', { migrationId: id });
    if (opts.expectState && ![opts.expectState].flat().includes(row.state)) {
      this.log(row).info({ event: event.type, state: row.state, expected: opts.expectState }, 'stale effect outcome dropped');
      return;
    }
    const now = this.d.clock.now();
    const enteredAt = this.d.store.transitions(id).at(-1)?.at ?? row.createdAt;
    const step = reduce(row, { event, ...(opts.ctxPatch ? { ctxPatch: opts.ctxPatch } : {}), ...(opts.error ? { error: opts.error } : {}) }, now, enteredAt);
    const t = step.transition;
    this.d.store.recordTransition(id, t.from, t.to, t.event, now, { ctx: step.ctx, ...(step.error !== undefined ? { error: step.error } : {}) }, detail);
    this.log(row).info({ from: t.from, to: t.to, event: t.event, ...(step.error ? { code: step.error.code } : {}) }, 'migration transition');
    this.emit('change', id);
    if (t.to === 'precopy') this.policy.watch(this.d.store.migration(id)!);
    else this.policy.unwatch(id);
    if (step.abortRunning) this.live.get(id)?.abort.abort();
    const fresh = this.d.store.migration(id)!;
    for (const effect of t.effects) this.launch(fresh, effect);
    if (step.next) void this.dispatch(id, step.next, undefined, { expectState: t.to });
  }

  private arm(row: MigrationRow): void {
    if (this.live.has(row.id)) return;
    const l: Live = { abort: new AbortController() };
    this.live.set(row.id, l);
    const at = deadlineAt(row.request, row.createdAt, this.d.options.defaultDeadlineMs);
    l.deadline = this.d.clock.setTimeout(() => {
      const cur = this.d.store.migration(row.id);
      if (cur && CANCELLABLE.has(cur.state)) {
        void this.dispatch(row.id, { type: 'FAIL' }, undefined, { error: err('VMTC_DEADLINE_EXCEEDED', { deadline: new Date(at).toISOString(), state: cur.state }).toJSON() });
      }
    }, Math.max(0, at - this.d.clock.now()));
  }

  /** The migration's current abort signal; a fresh one once the last was used up. */
  private signal(id: string): AbortSignal {
    const l = this.live.get(id);
    if (!l || l.abort.signal.aborted) {
      const fresh = new AbortController();
      if (l) l.abort = fresh;
      else this.live.set(id, { abort: fresh });
      return fresh.signal;
    }
    return l.abort.signal;
  }

  private context(row: MigrationRow): EffectContext {
    const d = this.d;
    return {
      store: d.store, hub: d.hub, clock: d.clock, log: this.log(row), options: d.options,
      ...(d.aaa ? { aaa: d.aaa } : {}), ...(d.lightpath ? { lightpath: d.lightpath } : {}), ...(d.tunnel ? { tunnel: d.tunnel } : {}),
      secrets: this.secrets, exports: this.exports,
      dispatch: (id, { event, detail, ...opts }) => this.dispatch(id, event, detail, opts),
      progress: (id, p) => { this.emit('progress', id, p); },
      finished: (id, state) => this.forget(id, state),
    };
  }

  private launch(row: MigrationRow, effect: Effect): void {
    const states = outcomeStates(row.state);
    const signal = this.signal(row.id);
    const cx = this.context(row);
    const run = async () => {
      const out = await EFFECTS[effect](cx, row, signal);
      if (out) await this.dispatch(row.id, out.event, out.detail, { ...(out.ctxPatch ? { ctxPatch: out.ctxPatch } : {}), expectState: states });
    };
    run().catch(async (e) => {
      if (this.closed) return;
      const ve = toVmtcError(e);
      const cur = this.d.store.migration(row.id);
      if (!cur || !states.includes(cur.state)) {
        cx.log.info({ effect, code: ve.code, state: cur?.state }, 'effect ended after the migration moved on');
        return;
      }
      cx.log.warn({ effect, code: ve.code, details: ve.details, err: ve.status >= 500 ? e : undefined }, 'effect failed');
      await this.dispatch(row.id, { type: 'FAIL' }, { effect }, { error: ve.toJSON(), expectState: states });
    });
  }

  /** A terminal state was reached: stop the timers, tell listeners, and keep trying to release a
   *  lightpath the end could not release (the broker was down then). */
  private forget(id: string, state: MigrationState): void {
    const lp = this.d.store.migration(id)?.ctx.lightpath;
    if (lp && !lp.released && (lp.reservationId || lp.key)) this.releaseLeftovers();
    this.lost.get(id)?.cancel();
    this.lost.delete(id);
    this.live.get(id)?.deadline?.cancel();
    this.live.delete(id);
    this.emit('finished', id, state);
  }

  /** After a restart: bring an unfinished migration to a safe place (migration/reconcile.ts). */
  reconcile(row: MigrationRow): void {
    if (TERMINAL.has(row.state)) return;
    this.arm(row);
    reconcile(row, {
      store: this.d.store, hub: this.d.hub, log: this.log(row),
      dispatch: (id, { event, detail, ...opts }) => this.dispatch(id, event, detail, opts),
      launch: (r, effect) => this.launch(r, effect),
      closed: () => this.closed,
    });
    if (row.state === 'precopy') this.policy.watch(row);
  }

  /** After a restart, and whenever a migration ends with its lightpath held: release the
   *  lightpaths that ended migrations still hold (migration/reconcile.ts), again after 1 s,
   *  2 s, 4 s … up to every minute while some stay held (a broker restarting comes back soon). */
  releaseLeftovers(): void {
    if (this.closed || !this.d.lightpath) return;
    if (this.leftoverBusy) {
      this.leftoverAgain = true;
      return;
    }
    this.leftoverRetry?.cancel();
    this.leftoverRetry = undefined;
    this.leftoverBusy = true;
    this.leftoverAgain = false;
    const done = (held: number) => {
      this.leftoverBusy = false;
      if (this.closed) return;
      if (held > 0 || this.leftoverAgain) {
        this.leftoverRetry = this.d.clock.setTimeout(() => this.releaseLeftovers(), this.leftoverDelayMs);
        this.leftoverDelayMs = Math.min(this.leftoverDelayMs * 2, LEFTOVER_RETRY_MS.max);
      } else this.leftoverDelayMs = LEFTOVER_RETRY_MS.first;
    };
    void releaseLeftLightpaths(this.d.store.unreleasedLightpaths(TERMINAL), (row) => this.context(row)).then(done, (e: unknown) => {
      this.d.logger.warn({ err: e }, 'releasing leftover lightpaths failed');
      done(1);
    });
  }

  close(): void {
    this.closed = true;
    this.policy.close();
    this.leftoverRetry?.cancel();
    this.d.hub.off('disconnected', this.onDisconnected);
    this.d.hub.off('connected', this.onConnected);
    for (const t of this.lost.values()) t.cancel();
    this.lost.clear();
    for (const l of this.live.values()) {
      l.abort.abort();
      l.deadline?.cancel();
    }
    this.live.clear();
  }
}
