// The fleet's durable state, in the controller's SQLite file (store.ts's handle): hosts in
// maintenance, evacuations and their planned items. Its tables are its own, created here with a
// version of their own (fleet_schema), so they never collide with the migrations list of the
// controller store. Every change an evacuation makes to an item is one statement or one
// transaction, written before the action it announces (docs/fleet.md "Restart").
import type { Db } from '../../common/db.ts';

const FLEET_SCHEMA = [
  `
  CREATE TABLE IF NOT EXISTS host_maintenance (
    host_id TEXT PRIMARY KEY, reason TEXT, evacuation_id TEXT, since INTEGER NOT NULL
  );
  CREATE TABLE IF NOT EXISTS evacuations (
    id TEXT PRIMARY KEY, target_kind TEXT NOT NULL, target TEXT NOT NULL, request TEXT NOT NULL,
    state TEXT NOT NULL, plan TEXT NOT NULL, cancel_running TEXT, created_by TEXT,
    created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, ended_at INTEGER
  );
  CREATE TABLE IF NOT EXISTS evacuation_items (
    evacuation_id TEXT NOT NULL REFERENCES evacuations(id), seq INTEGER NOT NULL, vm_id TEXT NOT NULL,
    source_host TEXT NOT NULL, dest_host TEXT, link TEXT, path TEXT, rate_mbps REAL,
    planned_start REAL, planned_end REAL, batch INTEGER, state TEXT NOT NULL, attempt INTEGER NOT NULL DEFAULT 0,
    migration_id TEXT, migration_ids TEXT NOT NULL DEFAULT '[]', request TEXT, error TEXT, placement TEXT,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (evacuation_id, seq)
  );
  CREATE INDEX IF NOT EXISTS evacuation_items_mig ON evacuation_items(migration_id);
  `,
  // Advance reservations per planned move (bookings.ts): the intent before the broker is asked
  // ('booking', with its idempotency key), the reservation after ('booked'), handed to the move's
  // migration ('claimed') or given back ('released'); gen counts the bookings of one item.
  `
  CREATE TABLE IF NOT EXISTS evacuation_bookings (
    evacuation_id TEXT NOT NULL, seq INTEGER NOT NULL, gen INTEGER NOT NULL, batch INTEGER,
    idem_key TEXT NOT NULL, state TEXT NOT NULL, reservation_id TEXT, jti TEXT, src TEXT NOT NULL, dst TEXT NOT NULL,
    link TEXT, mbps REAL NOT NULL, window_start INTEGER NOT NULL, window_end INTEGER NOT NULL,
    migration_id TEXT, error TEXT, updated_at INTEGER NOT NULL,
    PRIMARY KEY (evacuation_id, seq, gen)
  );
  `,
];

export type EvacuationState = 'running' | 'cancelling' | 'completed' | 'completed_with_errors' | 'cancelled';
export const EVACUATION_ENDED: ReadonlySet<EvacuationState> = new Set(['completed', 'completed_with_errors', 'cancelled']);

/** planned → starting (the request recorded, before admission) → running (its migration id
 *  recorded) → completed | failed | cancelled; unplaced: no host could take it at planning. */
export type ItemState = 'planned' | 'starting' | 'running' | 'completed' | 'failed' | 'cancelled' | 'unplaced';
export const ITEM_ENDED: ReadonlySet<ItemState> = new Set(['completed', 'failed', 'cancelled', 'unplaced']);

export interface EvacuationRequest {
  host?: string;
  site?: string;
  toSites?: string[];
  order: 'smallest-first' | 'priority';
  priorities?: Record<string, number>;
  limits: { perSourceHost: number; perDestinationHost: number; perLightpath: number };
  allowCold: boolean;
  mode: 'live' | 'auto';
}

export interface EvacuationRow {
  id: string;
  targetKind: 'host' | 'site';
  target: string;
  request: EvacuationRequest;
  state: EvacuationState;
  plan: Record<string, unknown>;
  cancelRunning: 'finish' | 'rollback' | null;
  createdBy: string | null;
  createdAt: number;
  updatedAt: number;
  endedAt: number | null;
}

export interface ItemRow {
  evacuationId: string;
  seq: number;
  vmId: string;
  sourceHostId: string;
  destinationHostId: string | null;
  link: string | null;
  path: 'live' | 'cold' | null;
  rateMbps: number | null;
  plannedStart: number | null;
  plannedEnd: number | null;
  batch: number | null;
  state: ItemState;
  attempt: number;
  migrationId: string | null;
  migrationIds: string[];
  request: Record<string, unknown> | null;
  error: Record<string, unknown> | null;
  placement: Record<string, unknown> | null;
  updatedAt: number;
}

type Raw = Record<string, unknown>;
const json = <T>(v: unknown): T | null => (typeof v === 'string' ? (JSON.parse(v) as T) : null);

function evacRow(r: Raw): EvacuationRow {
  return {
    id: r.id as string, targetKind: r.target_kind as 'host' | 'site', target: r.target as string,
    request: JSON.parse(r.request as string), state: r.state as EvacuationState, plan: JSON.parse(r.plan as string),
    cancelRunning: (r.cancel_running as 'finish' | 'rollback' | null) ?? null, createdBy: (r.created_by as string | null) ?? null,
    createdAt: r.created_at as number, updatedAt: r.updated_at as number, endedAt: (r.ended_at as number | null) ?? null,
  };
}

function itemRow(r: Raw): ItemRow {
  return {
    evacuationId: r.evacuation_id as string, seq: r.seq as number, vmId: r.vm_id as string, sourceHostId: r.source_host as string,
    destinationHostId: (r.dest_host as string | null) ?? null, link: (r.link as string | null) ?? null, path: (r.path as 'live' | 'cold' | null) ?? null,
    rateMbps: (r.rate_mbps as number | null) ?? null, plannedStart: (r.planned_start as number | null) ?? null, plannedEnd: (r.planned_end as number | null) ?? null,
    batch: (r.batch as number | null) ?? null, state: r.state as ItemState, attempt: r.attempt as number,
    migrationId: (r.migration_id as string | null) ?? null, migrationIds: JSON.parse(r.migration_ids as string),
    request: json(r.request), error: json(r.error), placement: json(r.placement), updatedAt: r.updated_at as number,
  };
}

export class FleetStore {
  constructor(readonly db: Db) {
    const v = (() => {
      this.db.exec('CREATE TABLE IF NOT EXISTS fleet_schema (version INTEGER NOT NULL)');
      const r = this.db.prepare('SELECT version FROM fleet_schema').get() as { version: number } | undefined;
      return r?.version ?? 0;
    })();
    for (let i = v; i < FLEET_SCHEMA.length; i++) {
      this.db.transaction(() => {
        this.db.exec(FLEET_SCHEMA[i]!);
        this.db.prepare('DELETE FROM fleet_schema').run();
        this.db.prepare('INSERT INTO fleet_schema (version) VALUES (?)').run(i + 1);
      })();
    }
  }

  // ---- maintenance
  maintenance(): Map<string, { reason: string | null; evacuationId: string | null; since: number }> {
    return new Map((this.db.prepare('SELECT * FROM host_maintenance').all() as Raw[]).map((r) => [r.host_id as string, { reason: (r.reason as string | null) ?? null, evacuationId: (r.evacuation_id as string | null) ?? null, since: r.since as number }]));
  }
  setMaintenance(hostId: string, reason: string | null, evacuationId: string | null, at: number): void {
    this.db.prepare(`INSERT INTO host_maintenance (host_id, reason, evacuation_id, since) VALUES (?, ?, ?, ?)
      ON CONFLICT(host_id) DO UPDATE SET reason = coalesce(excluded.reason, reason), evacuation_id = coalesce(excluded.evacuation_id, evacuation_id)`).run(hostId, reason, evacuationId, at);
  }
  clearMaintenance(hostId: string): boolean {
    return this.db.prepare('DELETE FROM host_maintenance WHERE host_id = ?').run(hostId).changes > 0;
  }

  // ---- evacuations
  /** The evacuation, its items and its hosts' maintenance, in one transaction. */
  createEvacuation(e: EvacuationRow, items: Omit<ItemRow, 'evacuationId' | 'updatedAt'>[], hosts: string[]): void {
    this.db.transaction(() => {
      this.db.prepare(`INSERT INTO evacuations (id, target_kind, target, request, state, plan, cancel_running, created_by, created_at, updated_at, ended_at)
        VALUES (?, ?, ?, ?, ?, ?, NULL, ?, ?, ?, NULL)`).run(e.id, e.targetKind, e.target, JSON.stringify(e.request), e.state, JSON.stringify(e.plan), e.createdBy, e.createdAt, e.updatedAt);
      const ins = this.db.prepare(`INSERT INTO evacuation_items (evacuation_id, seq, vm_id, source_host, dest_host, link, path, rate_mbps, planned_start, planned_end, batch, state, attempt, migration_id, migration_ids, request, error, placement, updated_at)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, NULL, '[]', NULL, ?, ?, ?)`);
      for (const it of items) {
        ins.run(e.id, it.seq, it.vmId, it.sourceHostId, it.destinationHostId, it.link, it.path, it.rateMbps, it.plannedStart, it.plannedEnd, it.batch, it.state,
          it.error ? JSON.stringify(it.error) : null, it.placement ? JSON.stringify(it.placement) : null, e.createdAt);
      }
      for (const h of hosts) this.setMaintenance(h, `evacuation ${e.id}`, e.id, e.createdAt);
    })();
  }
  evacuation(id: string): EvacuationRow | undefined {
    const r = this.db.prepare('SELECT * FROM evacuations WHERE id = ?').get(id) as Raw | undefined;
    return r && evacRow(r);
  }
  evacuations(limit = 100): EvacuationRow[] {
    return (this.db.prepare('SELECT * FROM evacuations ORDER BY created_at DESC, id LIMIT ?').all(limit) as Raw[]).map(evacRow);
  }
  activeEvacuations(): EvacuationRow[] {
    return (this.db.prepare("SELECT * FROM evacuations WHERE state IN ('running', 'cancelling') ORDER BY created_at").all() as Raw[]).map(evacRow);
  }
  setEvacuationState(id: string, state: EvacuationState, at: number, cancelRunning?: 'finish' | 'rollback'): void {
    this.db.prepare(`UPDATE evacuations SET state = ?, updated_at = ?, ended_at = CASE WHEN ? THEN ? ELSE ended_at END, cancel_running = coalesce(?, cancel_running) WHERE id = ?`)
      .run(state, at, EVACUATION_ENDED.has(state) ? 1 : 0, at, cancelRunning ?? null, id);
  }

  // ---- items
  items(evacuationId: string): ItemRow[] {
    return (this.db.prepare('SELECT * FROM evacuation_items WHERE evacuation_id = ? ORDER BY seq').all(evacuationId) as Raw[]).map(itemRow);
  }
  itemByMigration(migrationId: string): ItemRow | undefined {
    const r = this.db.prepare('SELECT * FROM evacuation_items WHERE migration_id = ?').get(migrationId) as Raw | undefined;
    return r && itemRow(r);
  }
  /** Intent before admission: the request of this attempt (its requestId makes admission
   *  idempotent, so a restart that finds an item 'starting' asks again with the same one). */
  markStarting(evacuationId: string, seq: number, attempt: number, request: Record<string, unknown>, at: number): void {
    this.db.prepare("UPDATE evacuation_items SET state = 'starting', attempt = ?, request = ?, migration_id = NULL, error = NULL, updated_at = ? WHERE evacuation_id = ? AND seq = ?")
      .run(attempt, JSON.stringify(request), at, evacuationId, seq);
  }
  markRunning(evacuationId: string, seq: number, migrationId: string, destinationHostId: string, at: number): void {
    this.db.transaction(() => {
      const r = this.db.prepare('SELECT migration_ids FROM evacuation_items WHERE evacuation_id = ? AND seq = ?').get(evacuationId, seq) as { migration_ids: string };
      const ids = JSON.parse(r.migration_ids) as string[];
      if (!ids.includes(migrationId)) ids.push(migrationId);
      this.db.prepare("UPDATE evacuation_items SET state = 'running', migration_id = ?, migration_ids = ?, dest_host = ?, updated_at = ? WHERE evacuation_id = ? AND seq = ?")
        .run(migrationId, JSON.stringify(ids), destinationHostId, at, evacuationId, seq);
    })();
  }
  /** Back to planned for another attempt (a rollback the evacuation did not ask for). */
  markRetry(evacuationId: string, seq: number, path: 'live' | 'cold', error: Record<string, unknown> | null, at: number): void {
    this.db.prepare("UPDATE evacuation_items SET state = 'planned', path = ?, migration_id = NULL, error = ?, updated_at = ? WHERE evacuation_id = ? AND seq = ?")
      .run(path, error ? JSON.stringify(error) : null, at, evacuationId, seq);
  }
  endItem(evacuationId: string, seq: number, state: 'completed' | 'failed' | 'cancelled', error: Record<string, unknown> | null, at: number): void {
    this.db.prepare('UPDATE evacuation_items SET state = ?, error = ?, updated_at = ? WHERE evacuation_id = ? AND seq = ?')
      .run(state, error ? JSON.stringify(error) : null, at, evacuationId, seq);
  }
}
