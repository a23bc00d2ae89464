// An operator's control of a running migration: force-complete (nova's `server migration force
// complete`, virsh's switch to post-copy) and tune in flight (virsh `migrate-setspeed`,
// `migrate-setmaxdowntime`). The REST routes are in ../migration-control-routes.ts. The machine's
// guards decide whether the state allows it and what it means (decideForceComplete, checkTune in
// machine.ts); the source agent does it, and refuses once it was told to continue, so the two
// agree on the point of no return (docs/design.md#switchover); the record keeps who changed what
// (ctx.changes, applyChange in reducer.ts) and the migration's listeners hear of it.
import type { ForceCompleteMode, MigrationLimits } from '../../common/agent-protocol.ts';
import type { Clock } from '../../common/clock.ts';
import { toVmtcError, type VmtcError } from '../../common/errors.ts';
import type { Logger } from '../../common/log.ts';
import { checkTune, decideForceComplete } from '../machine.ts';
import { err } from '../errors.ts';
import type { HubPort } from '../ports.ts';
import type { ControllerStore, MigrationCtx, MigrationRow } from '../store.ts';
import type { MigrationChange } from './record.ts';
import { applyChange } from './reducer.ts';
import { lightpathMbps } from './request.ts';

export interface ControlDeps {
  store: ControllerStore;
  hub: HubPort;
  clock: Clock;
  log: Logger;
  /** Tell the migration's listeners (its event stream) what changed. */
  notify(migrationId: string, event: 'tuned' | 'forced', change: MigrationChange): void;
}

export class MigrationControl {
  /** Force-completes being asked of a source, by migration: a second request waits for the first
   *  and then finds it in effect (recorded once). */
  private readonly forcing = new Map<string, Promise<unknown>>();

  constructor(private readonly d: ControlDeps) {}

  private row(id: string): MigrationRow {
    const row = this.d.store.migration(id);
    if (!row) throw err('VMTC_MIGRATION_NOT_FOUND', { migrationId: id });
    return row;
  }

  /** Read-modify-write of the record's ctx in one synchronous step (no transition can come
   *  between: the runner writes its transitions synchronously too). */
  private update(id: string, fn: (ctx: MigrationCtx) => MigrationCtx): MigrationRow {
    const now = this.d.clock.now();
    this.d.store.saveCtx(id, fn(this.row(id).ctx), now);
    return this.row(id);
  }

  /** POST /v1/migrations/:id/force-complete. Resolves with the record once the source has it. */
  async forceComplete(id: string, asked: ForceCompleteMode | undefined, by: string): Promise<MigrationRow> {
    for (let i = 0; i < 3; i++) {
      const pending = this.forcing.get(id);
      if (!pending) break;
      await pending.catch(() => undefined);
    }
    const row = this.row(id);
    const { mode, already } = decideForceComplete(row, asked);
    // In effect and confirmed by the source: nothing to do. In effect but never confirmed (a
    // controller that restarted while it asked): ask again, the source's force is idempotent.
    if (already && (row.ctx.changes ?? []).some((c) => c.what === 'force-complete')) return row;
    const run = this.askSource(row, mode, by);
    this.forcing.set(id, run);
    try {
      return await run;
    } finally {
      if (this.forcing.get(id) === run) this.forcing.delete(id);
    }
  }

  private async askSource(row: MigrationRow, mode: ForceCompleteMode, by: string): Promise<MigrationRow> {
    const at = row.ctx.forced?.at ?? this.d.clock.now();
    // Intent first: a destination that lands paused after a forced pause must be resumed
    // (effects-live.ts awaitDestinationRunning), however the source's answer and the copy's end
    // race.
    this.update(row.id, (ctx) => ({ ...ctx, forced: { mode, at, by } }));
    try {
      await this.d.hub.request(row.sourceHostId, 'vm.forceComplete', { vmId: row.vmId, migrationId: row.id, mode });
    } catch (e) {
      this.update(row.id, ({ forced: _, ...ctx }) => ctx);
      throw this.refusal(e, row.id, 'VMTC_MIGRATION_NOT_FORCEABLE', { mode });
    }
    const change: MigrationChange = { at, by, what: 'force-complete', mode };
    const done = this.update(row.id, (ctx) => applyChange(ctx, change));
    this.d.log.info({ migrationId: row.id, mode, by }, 'migration forced to complete');
    this.d.notify(row.id, 'forced', change);
    return done;
  }

  /** PATCH /v1/migrations/:id. Resolves with the record once the source has the new limits. */
  async tune(id: string, limits: MigrationLimits, by: string): Promise<MigrationRow> {
    const row = this.row(id);
    checkTune(row, limits, row.ctx.lightpath?.provisioned ? lightpathMbps(row.request) : undefined);
    const at = this.d.clock.now();
    let reported: MigrationLimits;
    try {
      reported = await this.d.hub.request(row.sourceHostId, 'vm.tuneMigration', { vmId: row.vmId, migrationId: row.id, ...limits });
    } catch (e) {
      throw this.refusal(e, row.id, 'VMTC_MIGRATION_NOT_TUNABLE', {});
    }
    const before = { ...pick(row.request), ...(this.row(id).ctx.limits ?? {}) };
    const previous: MigrationLimits = {};
    for (const k of Object.keys(limits) as (keyof MigrationLimits)[]) if (before[k] !== undefined) previous[k] = before[k];
    const change: MigrationChange = { at, by, what: 'tune', limits, previous, reported };
    const done = this.update(id, (ctx) => applyChange(ctx, change));
    this.d.log.info({ migrationId: id, limits, reported, by }, 'migration limits changed');
    this.d.notify(id, 'tuned', change);
    return done;
  }

  /** The source refused (its own code, 4xx, or it does not know the method: an older agent): the
   *  operator gets the route's code with the state the migration is in now and the cause. A
   *  source that cannot be asked (not connected, no answer) is that failure, as it is. */
  private refusal(e: unknown, id: string, code: 'VMTC_MIGRATION_NOT_FORCEABLE' | 'VMTC_MIGRATION_NOT_TUNABLE', details: Record<string, unknown>): VmtcError {
    const ve = toVmtcError(e);
    if (!(ve.code === 'VMTC_UNKNOWN_METHOD' || (ve.status >= 400 && ve.status < 500))) return ve;
    return err(code, { state: this.row(id).state, ...details, cause: ve.toJSON() }, { message: `the source refused: ${ve.message}` });
  }
}

function pick(r: MigrationLimits): MigrationLimits {
  return { ...(r.bandwidthMbps !== undefined ? { bandwidthMbps: r.bandwidthMbps } : {}), ...(r.maxDowntimeMs !== undefined ? { maxDowntimeMs: r.maxDowntimeMs } : {}) };
}

/** The record's view of the migration's tuning: the request's, with the limits operators
 *  changed since; the history of their changes; and the migration policy in effect with what it
 *  fired (policy-watch.ts; its actions are changes `by: policy` too). */
export function presentControl(ctx: Pick<MigrationCtx, 'limits' | 'changes' | 'policy'>, tuning: Record<string, unknown>): { tuning: Record<string, unknown>; changes: (Omit<MigrationChange, 'at'> & { at: string })[]; policy?: Record<string, unknown> } {
  return {
    tuning: { ...tuning, ...(ctx.limits ?? {}) },
    changes: (ctx.changes ?? []).map((c) => ({ ...c, at: new Date(c.at).toISOString() })),
    ...(ctx.policy ? { policy: { ...ctx.policy, fired: ctx.policy.fired.map((f) => ({ ...f, at: new Date(f.at).toISOString() })) } } : {}),
  };
}
