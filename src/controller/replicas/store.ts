// Replica records, durable in the controller's SQLite file (store.ts's handle), in a table of
// their own with a version of its own (replicas_schema), as the fleet's (fleet/store.ts). Every
// transition of a replica is one statement, written before the step it announces runs again.
import type { Db } from '../../common/db.ts';
import type { ReplicaError, ReplicaRow, ReplicaState } from './machine.ts';

const SCHEMA = [
  `
  CREATE TABLE IF NOT EXISTS replicas (
    id TEXT PRIMARY KEY, vm_id TEXT NOT NULL, source_host TEXT NOT NULL, dest_host TEXT NOT NULL,
    interval_s INTEGER NOT NULL, state TEXT NOT NULL, checkpoint TEXT, disk_bytes INTEGER NOT NULL DEFAULT 0,
    seed_bytes INTEGER NOT NULL DEFAULT 0, last_delta_bytes INTEGER NOT NULL DEFAULT 0, deltas INTEGER NOT NULL DEFAULT 0,
    bytes_sent INTEGER NOT NULL DEFAULT 0, last_sync_at INTEGER, lag_bytes INTEGER NOT NULL DEFAULT 0, migration_id TEXT, error TEXT,
    created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL
  );
  CREATE INDEX IF NOT EXISTS replicas_vm ON replicas(vm_id);
  `,
];

type Raw = Record<string, unknown>;
const json = <T>(v: unknown): T | null => (typeof v === 'string' ? (JSON.parse(v) as T) : null);

function rowOf(r: Raw): ReplicaRow {
  return {
    id: r.id as string, vmId: r.vm_id as string, sourceHostId: r.source_host as string, destinationHostId: r.dest_host as string,
    intervalS: r.interval_s as number, state: r.state as ReplicaState, checkpoint: json(r.checkpoint), diskBytes: r.disk_bytes as number,
    seedBytes: r.seed_bytes as number, lastDeltaBytes: r.last_delta_bytes as number, deltas: r.deltas as number, bytesSent: r.bytes_sent as number,
    lastSyncAt: (r.last_sync_at as number | null) ?? null, lagBytes: r.lag_bytes as number, migrationId: (r.migration_id as string | null) ?? null, error: json<ReplicaError>(r.error),
    createdAt: r.created_at as number, updatedAt: r.updated_at as number,
  };
}

export class ReplicaStore {
  constructor(readonly db: Db) {
    db.exec('CREATE TABLE IF NOT EXISTS replicas_schema (version INTEGER NOT NULL)');
    const v = (db.prepare('SELECT version FROM replicas_schema').get() as { version: number } | undefined)?.version ?? 0;
    for (let i = v; i < SCHEMA.length; i++) {
      db.transaction(() => {
        db.exec(SCHEMA[i]!);
        db.prepare('DELETE FROM replicas_schema').run();
        db.prepare('INSERT INTO replicas_schema (version) VALUES (?)').run(i + 1);
      })();
    }
  }

  /** Insert a new replica unless one of the VM to the same destination exists (not removing):
   *  returns that one instead. */
  create(row: ReplicaRow): { created: boolean; row: ReplicaRow } {
    return this.db.transaction(() => {
      const same = this.db.prepare("SELECT * FROM replicas WHERE vm_id = ? AND dest_host = ? AND state != 'removing'").get(row.vmId, row.destinationHostId) as Raw | undefined;
      if (same) return { created: false, row: rowOf(same) };
      this.db.prepare(`INSERT INTO replicas (id, vm_id, source_host, dest_host, interval_s, state, checkpoint, disk_bytes, seed_bytes, last_delta_bytes, deltas, bytes_sent, last_sync_at, lag_bytes, error, created_at, updated_at)
        VALUES (@id, @vmId, @sourceHostId, @destinationHostId, @intervalS, @state, NULL, 0, 0, 0, 0, 0, NULL, 0, NULL, @createdAt, @updatedAt)`).run(row);
      return { created: true, row };
    })();
  }

  save(row: ReplicaRow): void {
    this.db.prepare(`UPDATE replicas SET state = ?, checkpoint = ?, disk_bytes = ?, seed_bytes = ?, last_delta_bytes = ?, deltas = ?, bytes_sent = ?,
      last_sync_at = ?, lag_bytes = ?, migration_id = ?, error = ?, updated_at = ? WHERE id = ?`).run(
      row.state, row.checkpoint ? JSON.stringify(row.checkpoint) : null, row.diskBytes, row.seedBytes, row.lastDeltaBytes, row.deltas, row.bytesSent,
      row.lastSyncAt, row.lagBytes, row.migrationId, row.error ? JSON.stringify(row.error) : null, row.updatedAt, row.id);
  }

  delete(id: string): void {
    this.db.prepare('DELETE FROM replicas WHERE id = ?').run(id);
  }

  get(id: string): ReplicaRow | undefined {
    const r = this.db.prepare('SELECT * FROM replicas WHERE id = ?').get(id) as Raw | undefined;
    return r ? rowOf(r) : undefined;
  }

  forVm(vmId: string): ReplicaRow[] {
    return (this.db.prepare('SELECT * FROM replicas WHERE vm_id = ? ORDER BY created_at, id').all(vmId) as Raw[]).map(rowOf);
  }

  all(): ReplicaRow[] {
    return (this.db.prepare('SELECT * FROM replicas ORDER BY created_at, id').all() as Raw[]).map(rowOf);
  }
}
