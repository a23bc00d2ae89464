// The controller's side of the tunnel agent's probe stream (docs/dashboard.md "Probe stream"): a
// `tunnel.probe` batch names a VM; the migration in flight for that VM takes it. Each batch is
// passed on as a `probe` event of the event streams (events-routes.ts) and kept in a bounded tail
// per migration, so a dashboard that opens mid-migration draws the radar from the start. Nothing
// of it is persisted: the figures that count are the prune's, in the record.
import { EventEmitter } from 'node:events';
import type { ProbeSample, TunnelProbeBatch } from '../common/tunnel-protocol.ts';
import type { ControllerStore } from './store.ts';
import { TERMINAL } from './machine.ts';

/** What a `probe` event carries. */
export interface ProbeEvent { migrationId: string; vmId: string; agent: string; periodMs: number; samples: ProbeSample[]; final?: boolean }

/** Samples kept per migration (a minute at the default 20 ms period), and migrations kept. */
export const PROBE_TAIL_LIMITS = { samplesPerMigration: 3000, migrations: 64 } as const;

export class ProbeTails extends EventEmitter {
  private readonly tails = new Map<string, ProbeEvent>();

  constructor(private readonly store: Pick<ControllerStore, 'activeMigrations'>) {
    super();
    this.setMaxListeners(0);
  }

  /** A batch from tunnel agent `agent`; dropped when no migration of its VM is in flight. */
  add(agent: string, b: TunnelProbeBatch): ProbeEvent | undefined {
    const row = this.store.activeMigrations(TERMINAL).find((r) => r.vmId === b.vmId);
    if (!row) return undefined;
    const ev: ProbeEvent = { migrationId: row.id, vmId: b.vmId, agent, periodMs: b.periodMs, samples: b.samples, ...(b.final ? { final: true } : {}) };
    let tail = this.tails.get(row.id);
    if (!tail || tail.agent !== agent) {
      // One agent's radar per migration: the first that streams (as the prune's figures are the
      // first agent's that measured).
      if (tail) return undefined;
      tail = { ...ev, samples: [] };
      this.tails.set(row.id, tail);
      while (this.tails.size > PROBE_TAIL_LIMITS.migrations) this.tails.delete(this.tails.keys().next().value!);
    }
    tail.samples.push(...b.samples);
    if (tail.samples.length > PROBE_TAIL_LIMITS.samplesPerMigration) tail.samples.splice(0, tail.samples.length - PROBE_TAIL_LIMITS.samplesPerMigration);
    if (b.final) tail.final = true;
    this.emit('probe', ev);
    return ev;
  }

  /** What was kept of a migration's probe stream. */
  tail(migrationId: string): ProbeEvent | undefined {
    const t = this.tails.get(migrationId);
    return t ? { ...t, samples: [...t.samples] } : undefined;
  }
}
