// After a controller restart: bring every unfinished migration to a safe place, as its state's
// `reconcile` property in the machine (STATE_DEFS) says: states before any VM state moved roll
// back; later ones run their effect again, which asks the agents what is really happening (a
// live migration still running is re-attached, not restarted). The controller asks the agents,
// it does not guess: it waits for the host that knows.
import type { Logger } from '../../common/log.ts';
import { STATE_DEFS, TERMINAL, effectOf, type Effect, type MigrationState, type StateDef } from '../machine.ts';
import type { ControllerStore, MigrationRow } from '../store.ts';
import type { HubPort } from '../ports.ts';
import type { EventInput } from './reducer.ts';
import { err } from '../errors.ts';
import type { EffectContext } from './context.ts';
import { releaseLightpath } from './effects-rollback.ts';

export interface ReconcileDeps {
  store: ControllerStore;
  hub: HubPort;
  log: Logger;
  dispatch(id: string, input: EventInput & { detail?: unknown; expectState?: MigrationState | MigrationState[] }): Promise<void>;
  launch(row: MigrationRow, effect: Effect): void;
  /** The runner was closed meanwhile: nothing more to do. */
  closed(): boolean;
}

export function reconcile(row: MigrationRow, d: ReconcileDeps): void {
  const how = (STATE_DEFS[row.state] as StateDef).reconcile;
  if (TERMINAL.has(row.state) || !how) return;
  const go = () => {
    if (d.closed()) return;
    const cur = d.store.migration(row.id)!;
    d.log.info({ state: cur.state }, 'reconciling after restart');
    const now = (STATE_DEFS[cur.state] as StateDef).reconcile;
    if (now?.action === 'rollback') {
      void d.dispatch(row.id, { event: { type: 'FAIL' }, detail: { reconcile: true }, error: err('VMTC_CONTROLLER_RESTARTED', { state: cur.state }).toJSON(), expectState: cur.state });
    } else if (now?.action === 'resume') {
      const effect = effectOf(cur.state);
      if (effect) d.launch(cur, effect);
    }
  };
  const need = [how.ask === 'destination' ? row.destinationHostId : row.sourceHostId];
  if (need.every((h) => d.hub.isConnected(h))) return go();
  const onConnected = () => {
    if (d.closed()) return void d.hub.off('connected', onConnected);
    if (need.every((h) => d.hub.isConnected(h))) {
      d.hub.off('connected', onConnected);
      go();
    }
  };
  d.hub.on('connected', onConnected);
}

/**
 * After a restart: a migration that ended still holding its lightpath (the broker could not be
 * reached at its end, or the set-up was cut short before the id came back) releases it now, found
 * by its recorded id or idempotency key. Resolves with how many are still held (to try again).
 */
export async function releaseLeftLightpaths(rows: MigrationRow[], contextOf: (row: MigrationRow) => EffectContext): Promise<number> {
  let held = 0;
  for (const row of rows) {
    const cx = contextOf(row);
    const warnings: NonNullable<MigrationRow['ctx']['warnings']> = [];
    const lightpath = await releaseLightpath(cx, row, warnings);
    if (!lightpath) continue;
    cx.store.saveCtx(row.id, { ...cx.store.migration(row.id)!.ctx, lightpath }, cx.clock.now());
    if (lightpath.released) cx.log.info({ reservationId: lightpath.reservationId ?? null, state: row.state }, 'lightpath of an ended migration released after restart');
    else {
      held++;
      cx.log.warn({ reservationId: lightpath.reservationId ?? null, code: warnings[0]?.code }, 'lightpath of an ended migration still held; trying again later');
    }
  }
  return held;
}
