// The AAA's state store: one SQLite file, DIR/aaa.db (docs/design.md#state-stores). Two tables:
//  - keys: Ed25519 signing keys, the current one and retired ones still published until every
//    token they signed has expired (rotation without downtime);
//  - accounting: the append-only record of grants, refusals, consents, uses and releases.
//    Triggers refuse UPDATE and DELETE, so "append-only" is enforced by the store, not by habit.
import { openDb, type Db } from '../common/db.ts';

const MIGRATIONS = [
  `
  CREATE TABLE keys (
    kid TEXT PRIMARY KEY,
    private_jwk TEXT NOT NULL,
    public_jwk TEXT NOT NULL,
    created_at INTEGER NOT NULL,      -- ms since epoch
    retired_at INTEGER,               -- ms; NULL for the current key
    publish_until INTEGER             -- ms; after this the key is dropped from the JWKS
  );
  CREATE TABLE accounting (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,              -- ms since epoch
    kind TEXT NOT NULL CHECK (kind IN ('grant', 'refusal', 'consent-grant', 'consent-refusal', 'use', 'release')),
    who TEXT NOT NULL,                -- requester id, or "aaa:<domain>" for a peer, or the reporter id
    reporter TEXT,                    -- who wrote a use/release event
    rule TEXT,                        -- the policy rule that granted (quotas count per rule)
    jti TEXT,
    migration_id TEXT,
    vm_id TEXT,
    project TEXT,
    src TEXT,
    dst TEXT,
    domains TEXT,                     -- JSON array
    bandwidth_mbps REAL,
    window_start INTEGER,             -- epoch seconds
    window_end INTEGER,
    mbit_seconds REAL,                -- how much: bandwidth x time
    bytes INTEGER,                    -- when known (reported with use/release)
    code TEXT,                        -- refusal code
    details TEXT                      -- JSON
  );
  CREATE INDEX accounting_migration ON accounting (migration_id, seq);
  CREATE INDEX accounting_jti ON accounting (jti);
  CREATE INDEX accounting_quota ON accounting (who, rule, kind, at);
  CREATE INDEX accounting_at ON accounting (at);
  CREATE TRIGGER accounting_no_update BEFORE UPDATE ON accounting BEGIN SELECT RAISE(ABORT, 'accounting is append-only'); END;
  CREATE TRIGGER accounting_no_delete BEFORE DELETE ON accounting BEGIN SELECT RAISE(ABORT, 'accounting is append-only'); END;
  `,
  // Accounting reads are scoped to the party asking (docs/aaa.md#accounting); a reporter's are by
  // this column.
  `
  CREATE INDEX accounting_reporter ON accounting (reporter, seq);
  `,
];

export function openAaaDb(file: string): Db {
  return openDb(file, MIGRATIONS);
}
