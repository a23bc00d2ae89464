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
