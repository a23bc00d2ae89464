// Every vmtc state store is one SQLite file per service (docs/design.md#state-stores). WAL so
// readers do not block the writer; synchronous=FULL because a migration record must survive
// kill -9.
import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { commonError } from './errors.ts';

export type Db = Database.Database;

/**
 * Open (creating if needed) a SQLite file and bring its schema up to date. `migrations[i]` is the
 * SQL that takes the schema from version i to i+1; applied ones are never edited, only appended.
 */
export function openDb(file: string, migrations: string[]): Db {
  try {
    if (file !== ':memory:') mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
    const db = new Database(file);
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = FULL');
    db.pragma('foreign_keys = ON');
    db.pragma('busy_timeout = 5000');
    const current = db.pragma('user_version', { simple: true }) as number;
    for (let v = current; v < migrations.length; v++) {
      db.transaction(() => {
        db.exec(migrations[v]!);
        db.pragma(`user_version = ${v + 1}`);
      })();
    }
    return db;
  } catch (e) {
    throw commonError('VMTC_CONFIG_INVALID', { field: 'data', file, reason: (e as Error).message }, { message: `cannot open state store ${file}`, cause: e });
  }
}
