// The runner's side of a migration policy (policy.ts decides): while a live copy runs (state
// precopy) it follows the source's progress reports, keeps the one timer of the next timeout,
// and when one fires runs the action the decision names through the operator's controls
// (control.ts: tune, force-complete) or the runner's cancel, with `policy` as who asked. Each
// firing is recorded in the record's ctx.policy (and a warning for a firing with no action left
// or a throttled guest), told to the migration's listeners (a `policy` event on its stream) and
// counted (metrics.ts).
import type { Clock } from '../../common/clock.ts';
import { toVmtcError, type ErrorBody } from '../../common/errors.ts';
import type { Logger } from '../../common/log.ts';
import type { MigrationProgress } from '../../common/agent-protocol.ts';
import { err } from '../errors.ts';
import type { HubPort } from '../ports.ts';
import type { ControllerStore, MigrationCtx, MigrationRow } from '../store.ts';
import type { MigrationControl } from './control.ts';
import type { PolicyStore } from './policy-store.ts';
import {
  HYPERVISOR_DEFAULT_DOWNTIME_MS, MAX_FIRINGS, decide, observe, resolvePolicy, startWatch, takenStep,
  type CopyTuning, type Decision, type EffectivePolicy, type MigrationPolicy, type PolicyFiring, type PolicyRecord, type WatchState,
} from './policy.ts';

/** The runner's event for each firing: (migrationId, firing). metrics.ts counts them. */
export const POLICY_EVENT = 'policy';

export interface PolicyWatchDeps {
  store: ControllerStore;
  hub: HubPort;
  clock: Clock;
  log: Logger;
  policies: PolicyStore;
  /** The controller's configured policy (runner.policy), over the built-in defaults. */
  controllerPolicy?: MigrationPolicy;
  control: Pick<MigrationControl, 'tune' | 'forceComplete'>;
  /** Cancel the migration with this error; the detail goes into its CANCEL transition. */
  cancel(id: string, error: ErrorBody, detail: unknown): Promise<unknown>;
  /** A firing was recorded. */
  fired(id: string, firing: PolicyFiring): void;
}

interface Watch {
  sourceHostId: string;
  policy: EffectivePolicy;
  state: WatchState;
  timer?: { cancel(): void };
  /** An action is running: no other decision until it is recorded. */
  busy: boolean;
}

/** Who the record's `changes` name for an action a policy took. */
export const POLICY_ACTOR = 'policy';

export class PolicyWatch {
  private readonly watches = new Map<string, Watch>();

  constructor(private readonly d: PolicyWatchDeps) {
    d.hub.on('event', this.onEvent);
  }

  /** The copy started (or a restarted controller found it running): watch it. */
  watch(row: MigrationRow): void {
    if (this.watches.has(row.id)) return;
    const now = this.d.clock.now();
    let record = row.ctx.policy;
    if (!record) {
      const group = this.d.policies.forVm(row.vmId);
      const { policy, from } = resolvePolicy([
        { source: 'request', policy: row.request.policy },
        ...(group ? [{ source: `group:${group.group}` as const, policy: group.policy }] : []),
        { source: 'controller', policy: this.d.controllerPolicy },
      ]);
      record = { policy, from, fired: [], firings: 0 };
      this.saveCtx(row.id, (ctx) => ({ ...ctx, policy: record! }));
    }
    const memoryMb = this.d.hub.inventory(row.sourceHostId)?.vms.find((v) => v.vmId === row.vmId)?.memoryMb;
    const state = startWatch(now, memoryMb ? memoryMb * 1024 * 1024 : undefined);
    this.watches.set(row.id, { sourceHostId: row.sourceHostId, policy: record.policy, state: { ...state, firings: record.firings }, busy: false });
    this.d.log.debug({ migrationId: row.id, policy: record.policy }, 'migration policy watch started');
    this.schedule(row.id);
  }

  /** The copy ended (switchover, failure, cancel): stop watching. */
  unwatch(id: string): void {
    const w = this.watches.get(id);
    if (!w) return;
    w.timer?.cancel();
    this.watches.delete(id);
  }

  close(): void {
    this.d.hub.off('event', this.onEvent);
    for (const id of [...this.watches.keys()]) this.unwatch(id);
  }

  private readonly onEvent = (hostId: string, name: string, data: unknown): void => {
    if (name !== 'migration.progress' || !data || typeof data !== 'object') return;
    const p = data as MigrationProgress & { cpuThrottlePercent?: number };
    const w = this.watches.get(p.migrationId);
    if (!w || w.sourceHostId !== hostId || p.status !== 'active') return;
    const now = this.d.clock.now();
    const o = observe(w.state, {
      at: now, remainingBytes: p.remainingBytes, totalBytes: p.totalBytes,
      ...(p.pass !== undefined ? { pass: p.pass } : {}), ...(typeof p.cpuThrottlePercent === 'number' ? { cpuThrottlePercent: p.cpuThrottlePercent } : {}),
    }, w.policy);
    w.state = o.state;
    if (o.throttleWarning !== undefined) {
      const pct = o.throttleWarning;
      this.record(p.migrationId, { at: now, trigger: 'throttle', action: 'warn', outcome: 'done', cpuThrottlePercent: pct, reason: `the hypervisor throttles the guest CPU at ${pct} % (threshold ${w.policy.throttleWarnPercent} %)` },
        err('VMTC_MIGRATION_THROTTLED', { cpuThrottlePercent: pct, throttleWarnPercent: w.policy.throttleWarnPercent }).toJSON());
    }
    if (o.progress) this.schedule(p.migrationId);
  };

  /** Decide now; if nothing fires, arm the timer for the next moment something could. */
  private schedule(id: string): void {
    const w = this.watches.get(id);
    if (!w || w.busy) return;
    w.timer?.cancel();
    delete w.timer;
    const row = this.d.store.migration(id);
    if (!row || row.state !== 'precopy') return;
    const now = this.d.clock.now();
    const decision = decide(w.policy, w.state, now, tuningOf(row));
    if (decision.fire) {
      void this.run(id, w, decision);
      return;
    }
    if (decision.checkAt !== undefined) w.timer = this.d.clock.setTimeout(() => this.schedule(id), Math.max(0, decision.checkAt - now));
  }

  private async run(id: string, w: Watch, d: Extract<Decision, { fire: true }>): Promise<void> {
    w.busy = true;
    w.state = d.state;
    const step = takenStep(d);
    const skipped = d.steps.filter((s) => !s.take).map((s) => ({ action: s.action as Exclude<typeof s.action, 'none'>, reason: (s as { reason: string }).reason }));
    const firing: PolicyFiring = {
      at: this.d.clock.now(), trigger: d.trigger, timeoutS: d.timeoutS, waitedMs: d.waitedMs, action: step.action, outcome: 'done',
      ...(skipped.length ? { skipped } : {}), ...(step.action === 'raise-downtime' ? { maxDowntimeMs: step.maxDowntimeMs } : {}),
      ...(step.action === 'none' ? { reason: step.reason } : {}),
    };
    this.d.log.warn({ migrationId: id, trigger: d.trigger, action: step.action, waitedMs: d.waitedMs }, 'migration policy fired');
    try {
      if (step.action === 'raise-downtime') await this.d.control.tune(id, { maxDowntimeMs: step.maxDowntimeMs }, POLICY_ACTOR);
      else if (step.action === 'postcopy') await this.d.control.forceComplete(id, 'postcopy', POLICY_ACTOR);
      else if (step.action === 'cancel') {
        // Recorded first: the record that ends the migration's stream has it.
        const index = this.record(id, firing);
        const error = err('VMTC_MIGRATION_POLICY_TIMEOUT', { trigger: d.trigger, timeoutS: d.timeoutS, waitedMs: d.waitedMs }).toJSON();
        try {
          await this.d.cancel(id, error, { policy: firing });
        } catch (e) {
          this.update(id, index, { outcome: 'failed', error: toVmtcError(e).toJSON() });
        }
        return;
      }
    } catch (e) {
      firing.outcome = 'failed';
      firing.error = toVmtcError(e).toJSON();
    } finally {
      w.busy = false;
    }
    const first = step.action === 'none' && !(this.d.store.migration(id)?.ctx.warnings ?? []).some((x) => x.code === 'VMTC_MIGRATION_NOT_CONVERGING');
    this.record(id, firing, first ? err('VMTC_MIGRATION_NOT_CONVERGING', { trigger: d.trigger, timeoutS: d.timeoutS, waitedMs: d.waitedMs }).toJSON() : undefined);
    this.schedule(id);
  }

  /** Append a firing (and a warning) to the record; returns its index in `fired` (-1: not kept). */
  private record(id: string, firing: PolicyFiring, warning?: ErrorBody): number {
    let index = -1;
    this.saveCtx(id, (ctx) => {
      const rec: PolicyRecord = ctx.policy ?? { policy: this.watches.get(id)!.policy, from: {} as PolicyRecord['from'], fired: [], firings: 0 };
      const fired = rec.fired.length < MAX_FIRINGS ? [...rec.fired, firing] : rec.fired;
      if (fired !== rec.fired) index = fired.length - 1;
      return { ...ctx, policy: { ...rec, fired, firings: rec.firings + 1 }, ...(warning ? { warnings: [...(ctx.warnings ?? []), warning] } : {}) };
    });
    this.d.fired(id, firing);
    return index;
  }

  private update(id: string, index: number, patch: Partial<PolicyFiring>): void {
    if (index < 0) return;
    this.saveCtx(id, (ctx) => {
      if (!ctx.policy?.fired[index]) return ctx;
      const fired = ctx.policy.fired.map((f, i) => (i === index ? { ...f, ...patch } : f));
      return { ...ctx, policy: { ...ctx.policy, fired } };
    });
  }

  private saveCtx(id: string, fn: (ctx: MigrationCtx) => MigrationCtx): void {
    const row = this.d.store.migration(id);
    if (row) this.d.store.saveCtx(id, fn(row.ctx), this.d.clock.now());
  }
}

/** What the migration runs with now (an operator's or a policy's change over the request). */
export function tuningOf(row: Pick<MigrationRow, 'request' | 'ctx'>): CopyTuning {
  return {
    postcopy: !!row.request.postcopy,
    autoConverge: !!row.request.autoConverge,
    maxDowntimeMs: row.ctx.limits?.maxDowntimeMs ?? row.request.maxDowntimeMs ?? HYPERVISOR_DEFAULT_DOWNTIME_MS,
  };
}
