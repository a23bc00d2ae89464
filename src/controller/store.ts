// The controller's durable state: one SQLite file (DIR/controller.db). Every migration
// transition is written in the same transaction as the state change, so a controller killed with
// -9 restarts with an exact record of how far each migration got.
import { createHash } from 'node:crypto';
import { openDb, type Db } from '../common/db.ts';
import type { HostInventory } from '../common/agent-protocol.ts';
import { inventoryFromStore } from '../common/agent-schemas.ts';
import type { MigrationState } from './machine.ts';
import type { MigrationCtx, MigrationRequest } from './migration/record.ts';
import type { ErrorBody } from '../common/errors.ts';
import { err } from './errors.ts';

const MIGRATIONS = [
  `
  CREATE TABLE credentials (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL, token_hash TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL, revoked_at INTEGER
  );
  CREATE TABLE hosts (
    host_id TEXT PRIMARY KEY, inventory TEXT NOT NULL, connected INTEGER NOT NULL DEFAULT 0,
    last_seen INTEGER NOT NULL
  );
  CREATE TABLE migrations (
    id TEXT PRIMARY KEY, vm_id TEXT NOT NULL, project TEXT NOT NULL, source_host TEXT NOT NULL,
    dest_host TEXT NOT NULL, mode TEXT NOT NULL, state TEXT NOT NULL, request TEXT NOT NULL,
    ctx TEXT NOT NULL, error TEXT, progress TEXT, request_id TEXT UNIQUE, request_hash TEXT,
    created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL
  );
  CREATE INDEX migrations_vm ON migrations(vm_id, state);
  CREATE TABLE transitions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, migration_id TEXT NOT NULL REFERENCES migrations(id),
    from_state TEXT, to_state TEXT NOT NULL, event TEXT NOT NULL, at INTEGER NOT NULL, detail TEXT
  );
  CREATE INDEX transitions_mig ON transitions(migration_id, seq);
  CREATE TABLE holds (
    migration_id TEXT PRIMARY KEY REFERENCES migrations(id), host_id TEXT NOT NULL, project TEXT NOT NULL,
    vcpus INTEGER NOT NULL, memory_mb INTEGER NOT NULL, disk_gb INTEGER NOT NULL, created_at INTEGER NOT NULL
  );
  `,
  // Paging the list newest first (created_at, id), and agents' connections and disconnections
  // as a log the fleet event stream resumes from (events-routes.ts).
  `
  CREATE INDEX migrations_created ON migrations(created_at, id);
  CREATE TABLE host_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, host_id TEXT NOT NULL, kind TEXT NOT NULL, connected INTEGER NOT NULL, at INTEGER NOT NULL
  );
  `,
  // VM groups' default migration policies and their VMs (migration/policy-store.ts).
  `
  CREATE TABLE policy_groups (name TEXT PRIMARY KEY, policy TEXT NOT NULL, updated_at INTEGER NOT NULL);
  CREATE TABLE policy_group_vms (vm_id TEXT PRIMARY KEY, name TEXT NOT NULL REFERENCES policy_groups(name));
  `,
  // Monitoring: the hosts' and VMs' stats reports, kept with retention (monitoring/store.ts).
  `
  CREATE TABLE host_stats (seq INTEGER PRIMARY KEY AUTOINCREMENT, host_id TEXT NOT NULL, at INTEGER NOT NULL, stats TEXT NOT NULL);
  CREATE INDEX host_stats_host ON host_stats(host_id, seq);
  CREATE INDEX host_stats_at ON host_stats(at);
  CREATE TABLE vm_stats (seq INTEGER PRIMARY KEY AUTOINCREMENT, vm_id TEXT NOT NULL, host_id TEXT NOT NULL, at INTEGER NOT NULL, stats TEXT NOT NULL);
  CREATE INDEX vm_stats_vm ON vm_stats(vm_id, seq);
  CREATE INDEX vm_stats_at ON vm_stats(at);
  `,
];

export interface MigrationRow {
  id: string;
  vmId: string;
  project: string;
  sourceHostId: string;
  destinationHostId: string;
  mode: 'live' | 'cold' | 'auto';
  state: MigrationState;
  request: MigrationRequest;
  ctx: MigrationCtx;
  error: ErrorBody | null;
  progress: Record<string, unknown> | null;
  createdAt: number;
  updatedAt: number;
}

export interface TransitionRow {
  seq: number;
  from: MigrationState | null;
  to: MigrationState;
  event: string;
  at: number;
  detail?: unknown;
}

export interface Hold {
  migrationId: string;
  hostId: string;
  project: string;
  vcpus: number;
  memoryMb: number;
  diskGb: number;
}

export type { MigrationCtx, MigrationRequest };

/** Which migrations a list (GET /v1/migrations) or the fleet event stream (GET /v1/events) is about. */
export interface MigrationFilter {
  /** In one of these states (the stream: transitions into one of them). */
  states?: string[];
  vmId?: string;
  /** The source or the destination. */
  hostId?: string;
  /** Epoch ms, inclusive (lists: created at; the stream: the transition's time). */
  since?: number;
  /** Epoch ms, exclusive. */
  until?: number;
}

/** A transition with the migration it belongs to (the fleet event stream). */
export interface FleetTransitionRow extends TransitionRow {
  migrationId: string;
  vmId: string;
  sourceHostId: string;
  destinationHostId: string;
}

/** An agent's link coming up or going down (host_events). */
export interface HostEventRow {
  seq: number;
  hostId: string;
  kind: string;
  connected: boolean;
  at: number;
}

/** The query of the list and of the fleet stream (schemas.ts MigrationListQuery, EventsQuery)
 *  as a filter; dates were checked as date-times by the schema. */
export function migrationFilter(q: { state?: string; vmId?: string; hostId?: string; since?: string; until?: string }): MigrationFilter {
  return {
    ...(q.state ? { states: q.state.split(',') } : {}),
    ...(q.vmId !== undefined ? { vmId: q.vmId } : {}),
    ...(q.hostId !== undefined ? { hostId: q.hostId } : {}),
    ...(q.since !== undefined ? { since: Date.parse(q.since) } : {}),
    ...(q.until !== undefined ? { until: Date.parse(q.until) } : {}),
  };
}

/**
 * The list's cursor: the (created_at, id) of the last migration of a page, opaque to clients.
 * Keyset paging, so a page never repeats or skips a migration when newer ones are created
 * meanwhile (they sort before the cursor).
 */
export function encodeCursor(row: { createdAt: number; id: string }): string {
  return Buffer.from(JSON.stringify([row.createdAt, row.id])).toString('base64url');
}

export function decodeCursor(cursor: string): { createdAt: number; id: string } {
  let v: unknown;
  try {
    v = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
  } catch {
    v = undefined;
  }
  if (!Array.isArray(v) || v.length !== 2 || !Number.isSafeInteger(v[0]) || typeof v[1] !== 'string') {
    throw err('VMTC_CURSOR_INVALID', { cursor: cursor.slice(0, 64) });
  }
  return { createdAt: v[0] as number, id: v[1] as string };
}

/** SQL conditions of a filter over `migrations` (aliased `m`): a list's states and times are the
 *  migration's (state, created_at), a stream's are its transitions' (`t`: to_state, at). */
function filterSql(f: MigrationFilter, of: 'list' | 'stream'): { where: string[]; args: unknown[] } {
  const [stateColumn, timeColumn] = of === 'list' ? ['m.state', 'm.created_at'] : ['t.to_state', 't.at'];
  const where: string[] = [];
  const args: unknown[] = [];
  if (f.states?.length) { where.push(`${stateColumn} IN (${f.states.map(() => '?').join(',')})`); args.push(...f.states); }
  if (f.vmId !== undefined) { where.push('m.vm_id = ?'); args.push(f.vmId); }
  if (f.hostId !== undefined) { where.push('(m.source_host = ? OR m.dest_host = ?)'); args.push(f.hostId, f.hostId); }
  if (f.since !== undefined) { where.push(`${timeColumn} >= ?`); args.push(f.since); }
  if (f.until !== undefined) { where.push(`${timeColumn} < ?`); args.push(f.until); }
  return { where, args };
}

type Raw = Record<string, unknown>;

function rowToMigration(r: Raw): MigrationRow {
  return {
    id: r.id as string,
    vmId: r.vm_id as string,
    project: r.project as string,
    sourceHostId: r.source_host as string,
    destinationHostId: r.dest_host as string,
    mode: r.mode as MigrationRow['mode'],
    state: r.state as MigrationState,
    request: JSON.parse(r.request as string),
    ctx: JSON.parse(r.ctx as string),
    error: r.error ? JSON.parse(r.error as string) : null,
    progress: r.progress ? JSON.parse(r.progress as string) : null,
    createdAt: r.created_at as number,
    updatedAt: r.updated_at as number,
  };
}

export function hashSecret(s: string): string {
  return createHash('sha256').update(s).digest('hex');
}

/** A hosts row made safe to read: a row stored before inventories were checked at the hub (or a
 *  damaged one) reads with defaults instead of breaking every caller (src/common/agent-schemas.ts). */
function hostRow(r: Raw): { inventory: HostInventory; connected: boolean; lastSeen: number } {
  let raw: unknown;
  try {
    raw = JSON.parse(r.inventory as string);
  } catch {
    raw = {};
  }
  return { inventory: inventoryFromStore(raw, r.host_id as string), connected: r.connected === 1, lastSeen: typeof r.last_seen === 'number' ? r.last_seen : 0 };
}

export class ControllerStore {
  readonly db: Db;
  constructor(file: string) {
    this.db = openDb(file, MIGRATIONS);
  }
  close(): void {
    this.db.close();
  }

  // ---- credentials
  addCredential(c: { id: string; name: string; role: string; token: string; at: number }): void {
    this.db.prepare('INSERT INTO credentials (id, name, role, token_hash, created_at) VALUES (?, ?, ?, ?, ?)').run(c.id, c.name, c.role, hashSecret(c.token), c.at);
  }
  findCredential(token: string): { id: string; name: string; role: string } | undefined {
    return this.db.prepare('SELECT id, name, role FROM credentials WHERE token_hash = ? AND revoked_at IS NULL').get(hashSecret(token)) as { id: string; name: string; role: string } | undefined;
  }
  listCredentials(): { id: string; name: string; role: string; createdAt: number; revokedAt: number | null }[] {
    return (this.db.prepare('SELECT id, name, role, created_at, revoked_at FROM credentials ORDER BY created_at').all() as Raw[]).map((r) => ({
      id: r.id as string, name: r.name as string, role: r.role as string, createdAt: r.created_at as number, revokedAt: (r.revoked_at as number | null) ?? null,
    }));
  }
  revokeCredential(id: string, at: number): boolean {
    return this.db.prepare('UPDATE credentials SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL').run(at, id).changes > 0;
  }
  credentialCount(): number {
    return (this.db.prepare('SELECT COUNT(*) AS n FROM credentials').get() as { n: number }).n;
  }

  // ---- hosts
  saveHost(inv: HostInventory, connected: boolean, at: number): void {
    this.db.prepare(`INSERT INTO hosts (host_id, inventory, connected, last_seen) VALUES (?, ?, ?, ?)
      ON CONFLICT(host_id) DO UPDATE SET inventory = excluded.inventory, connected = excluded.connected, last_seen = excluded.last_seen`)
      .run(inv.hostId, JSON.stringify(inv), connected ? 1 : 0, at);
  }
  setHostConnected(hostId: string, connected: boolean, at: number): void {
    this.db.prepare('UPDATE hosts SET connected = ?, last_seen = ? WHERE host_id = ?').run(connected ? 1 : 0, at, hostId);
  }
  hosts(): { inventory: HostInventory; connected: boolean; lastSeen: number }[] {
    return (this.db.prepare('SELECT host_id, inventory, connected, last_seen FROM hosts ORDER BY host_id').all() as Raw[]).map(hostRow);
  }
  host(hostId: string): { inventory: HostInventory; connected: boolean; lastSeen: number } | undefined {
    const r = this.db.prepare('SELECT host_id, inventory, connected, last_seen FROM hosts WHERE host_id = ?').get(hostId) as Raw | undefined;
    return r && hostRow(r);
  }

  // ---- migrations
  /** Insert a migration, its first transition and its capacity hold in one transaction. */
  createMigration(m: MigrationRow, hold: Hold | null, requestHash: string | null, detail: unknown): void {
    this.db.transaction(() => {
      this.db.prepare(`INSERT INTO migrations (id, vm_id, project, source_host, dest_host, mode, state, request, ctx, error, progress, request_id, request_hash, created_at, updated_at)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, ?, ?, ?, ?)`).run(
        m.id, m.vmId, m.project, m.sourceHostId, m.destinationHostId, m.mode, m.state, JSON.stringify(m.request), JSON.stringify(m.ctx),
        m.request.requestId ?? null, requestHash, m.createdAt, m.updatedAt,
      );
      this.db.prepare('INSERT INTO transitions (migration_id, from_state, to_state, event, at, detail) VALUES (?, NULL, ?, ?, ?, ?)').run(m.id, m.state, 'REQUESTED', m.createdAt, JSON.stringify(detail ?? null));
      if (hold) {
        this.db.prepare('INSERT INTO holds (migration_id, host_id, project, vcpus, memory_mb, disk_gb, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)')
          .run(hold.migrationId, hold.hostId, hold.project, hold.vcpus, hold.memoryMb, hold.diskGb, m.createdAt);
      }
    })();
  }

  /** Persist a state change and its log entry atomically. */
  recordTransition(id: string, from: MigrationState, to: MigrationState, event: string, at: number, patch: { ctx?: MigrationCtx; error?: ErrorBody | null }, detail?: unknown): void {
    this.db.transaction(() => {
      const sets = ['state = ?', 'updated_at = ?'];
      const args: unknown[] = [to, at];
      if (patch.ctx) { sets.push('ctx = ?'); args.push(JSON.stringify(patch.ctx)); }
      if (patch.error !== undefined) { sets.push('error = ?'); args.push(patch.error ? JSON.stringify(patch.error) : null); }
      const res = this.db.prepare(`UPDATE migrations SET ${sets.join(', ')} WHERE id = ? AND state = ?`).run(...args, id, from);
      if (res.changes !== 1) throw new Error(`migration ${id} is not in state ${from}`);
      this.db.prepare('INSERT INTO transitions (migration_id, from_state, to_state, event, at, detail) VALUES (?, ?, ?, ?, ?, ?)').run(id, from, to, event, at, detail === undefined ? null : JSON.stringify(detail));
    })();
  }

  saveCtx(id: string, ctx: MigrationCtx, at: number): void {
    this.db.prepare('UPDATE migrations SET ctx = ?, updated_at = ? WHERE id = ?').run(JSON.stringify(ctx), at, id);
  }
  saveProgress(id: string, progress: Record<string, unknown>, at: number): void {
    this.db.prepare('UPDATE migrations SET progress = ?, updated_at = ? WHERE id = ?').run(JSON.stringify(progress), at, id);
  }

  migration(id: string): MigrationRow | undefined {
    const r = this.db.prepare('SELECT * FROM migrations WHERE id = ?').get(id) as Raw | undefined;
    return r && rowToMigration(r);
  }
  migrationByRequestId(requestId: string): { row: MigrationRow; hash: string | null } | undefined {
    const r = this.db.prepare('SELECT * FROM migrations WHERE request_id = ?').get(requestId) as Raw | undefined;
    return r && { row: rowToMigration(r), hash: (r.request_hash as string | null) ?? null };
  }
  /** Migrations newest first (created_at descending, then id), after `after` (a page's last). */
  migrations(filter: MigrationFilter & { limit?: number; after?: { createdAt: number; id: string } } = {}): MigrationRow[] {
    const { where, args } = filterSql(filter, 'list');
    if (filter.after) {
      where.push('(m.created_at < ? OR (m.created_at = ? AND m.id > ?))');
      args.push(filter.after.createdAt, filter.after.createdAt, filter.after.id);
    }
    const sql = `SELECT * FROM migrations m ${where.length ? 'WHERE ' + where.join(' AND ') : ''} ORDER BY m.created_at DESC, m.id LIMIT ?`;
    return (this.db.prepare(sql).all(...args, filter.limit ?? 100) as Raw[]).map(rowToMigration);
  }
  /** One page of the list: `limit` migrations and the cursor of the next page when there is one. */
  migrationPage(filter: MigrationFilter, limit: number, cursor?: string): { rows: MigrationRow[]; nextCursor?: string } {
    const rows = this.migrations({ ...filter, limit: limit + 1, ...(cursor !== undefined ? { after: decodeCursor(cursor) } : {}) });
    if (rows.length <= limit) return { rows };
    rows.length = limit;
    return { rows, nextCursor: encodeCursor(rows[limit - 1]!) };
  }
  activeMigrations(terminal: ReadonlySet<string>): MigrationRow[] {
    const states = [...terminal];
    return (this.db.prepare(`SELECT * FROM migrations WHERE state NOT IN (${states.map(() => '?').join(',')}) ORDER BY created_at`).all(...states) as Raw[]).map(rowToMigration);
  }
  /** Migrations in one of `states` (the terminal ones) whose lightpath was asked for and not
   *  released. */
  unreleasedLightpaths(states: ReadonlySet<string>): MigrationRow[] {
    const s = [...states];
    return (this.db.prepare(`SELECT * FROM migrations WHERE state IN (${s.map(() => '?').join(',')})
      AND (json_extract(ctx, '$.lightpath.reservationId') IS NOT NULL OR json_extract(ctx, '$.lightpath.key') IS NOT NULL)
      AND coalesce(json_extract(ctx, '$.lightpath.released'), 0) = 0 ORDER BY created_at`).all(...s) as Raw[]).map(rowToMigration);
  }
  transitions(id: string): TransitionRow[] {
    return (this.db.prepare('SELECT seq, from_state, to_state, event, at, detail FROM transitions WHERE migration_id = ? ORDER BY seq').all(id) as Raw[]).map((r) => ({
      seq: r.seq as number, from: (r.from_state as MigrationState | null) ?? null, to: r.to_state as MigrationState, event: r.event as string, at: r.at as number,
      ...(r.detail ? { detail: JSON.parse(r.detail as string) } : {}),
    }));
  }

  /** Transitions of every migration after `afterSeq`, oldest first, filtered (the fleet stream). */
  transitionsAfter(afterSeq: number, filter: MigrationFilter, limit: number): FleetTransitionRow[] {
    const { where, args } = filterSql(filter, 'stream');
    const sql = `SELECT t.seq, t.migration_id, t.from_state, t.to_state, t.event, t.at, t.detail, m.vm_id, m.source_host, m.dest_host
      FROM transitions t JOIN migrations m ON m.id = t.migration_id WHERE t.seq > ? ${where.map((w) => 'AND ' + w).join(' ')} ORDER BY t.seq LIMIT ?`;
    return (this.db.prepare(sql).all(afterSeq, ...args, limit) as Raw[]).map((r) => ({
      seq: r.seq as number, from: (r.from_state as MigrationState | null) ?? null, to: r.to_state as MigrationState, event: r.event as string, at: r.at as number,
      ...(r.detail ? { detail: JSON.parse(r.detail as string) } : {}),
      migrationId: r.migration_id as string, vmId: r.vm_id as string, sourceHostId: r.source_host as string, destinationHostId: r.dest_host as string,
    }));
  }
  /** The newest seq of the transitions and of the host events (0 when there is none), or the
   *  last ones before `at` (epoch ms): where a stream starts. */
  eventSeqs(before?: number): { transitions: number; hosts: number } {
    const q = (table: string) => (before === undefined
      ? this.db.prepare(`SELECT coalesce(max(seq), 0) AS n FROM ${table}`).get()
      : this.db.prepare(`SELECT coalesce((SELECT min(seq) FROM ${table} WHERE at >= ?) - 1, (SELECT coalesce(max(seq), 0) FROM ${table})) AS n`).get(before)) as { n: number };
    return { transitions: q('transitions').n, hosts: q('host_events').n };
  }

  // ---- agents' connections (the fleet event stream)
  addHostEvent(hostId: string, kind: string, connected: boolean, at: number): void {
    this.db.prepare('INSERT INTO host_events (host_id, kind, connected, at) VALUES (?, ?, ?, ?)').run(hostId, kind, connected ? 1 : 0, at);
  }
  hostEventsAfter(afterSeq: number, filter: { hostId?: string; since?: number; until?: number }, limit: number): HostEventRow[] {
    const where: string[] = ['seq > ?'];
    const args: unknown[] = [afterSeq];
    if (filter.hostId !== undefined) { where.push('host_id = ?'); args.push(filter.hostId); }
    if (filter.since !== undefined) { where.push('at >= ?'); args.push(filter.since); }
    if (filter.until !== undefined) { where.push('at < ?'); args.push(filter.until); }
    return (this.db.prepare(`SELECT * FROM host_events WHERE ${where.join(' AND ')} ORDER BY seq LIMIT ?`).all(...args, limit) as Raw[]).map((r) => ({
      seq: r.seq as number, hostId: r.host_id as string, kind: r.kind as string, connected: r.connected === 1, at: r.at as number,
    }));
  }

  // ---- capacity holds
  holds(hostId?: string): (Hold & { vmId: string })[] {
    const base = 'SELECT h.*, m.vm_id FROM holds h JOIN migrations m ON m.id = h.migration_id';
    const rows = (hostId ? this.db.prepare(`${base} WHERE h.host_id = ?`).all(hostId) : this.db.prepare(base).all()) as Raw[];
    return rows.map((r) => ({
      migrationId: r.migration_id as string, hostId: r.host_id as string, project: r.project as string, vmId: r.vm_id as string,
      vcpus: r.vcpus as number, memoryMb: r.memory_mb as number, diskGb: r.disk_gb as number,
    }));
  }
  releaseHold(migrationId: string): void {
    this.db.prepare('DELETE FROM holds WHERE migration_id = ?').run(migrationId);
  }
}
