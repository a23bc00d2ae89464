// The broker's durable state (DIR/broker.db): reservations with their three NSI states, every
// transition ever made (append-only), and the replay cache of capability-token jtis, which must
// survive a restart (docs/broker.md#token-gate).
import { openDb, type Db } from '../common/db.ts';
import type { LifecycleState, ProvisionState, ReservationState, Machine } from './nsi.ts';
import type { ReservationClass } from './classes.ts';

export type Owner = { kind: 'holder'; jkt: string } | { kind: 'peer'; domain: string };

export interface DataPlane {
  active: boolean;
  /** Driver facts while active (device names, VNI, ...). */
  details?: Record<string, unknown>;
  /** The last data-plane failure, kept until the next successful activation. */
  error?: { code: string; message: string; at: number; details?: Record<string, unknown> };
  /** Increases on every data-plane change (NSI dataPlaneStatus.version). */
  version: number;
}

export interface Reservation {
  id: string;
  migrationId?: string;
  /** The caller's name for it, unique per owner (docs/broker.md "Idempotency key"). */
  idempotencyKey?: string;
  src: string;
  dst: string;
  bandwidthMbps: number;
  /** Absent: migration (docs/broker.md "Classes"). */
  class?: ReservationClass;
  /** Background: the floor below which its grant is 0 (suspended). */
  minMbps?: number;
  /** Background: what the calendar grants it now (at its start, before its window). */
  grantedMbps?: number;
  /** Epoch seconds, half-open [start, end). */
  start: number;
  end: number;
  path: { nodes: string[]; links: string[]; cost: number; alternative: boolean };
  reservationState: ReservationState;
  provisionState: ProvisionState;
  lifecycleState: LifecycleState;
  committed: boolean;
  /** Capacity is held in the calendar for this reservation. */
  booked: boolean;
  /** ms (Clock.now()) when the hold started, for the hold timeout. */
  heldAt?: number;
  owner: Owner;
  tokenJti: string;
  /** The segment reserved in the next domain, if the path leaves this one. */
  downstream?: { domain: string; reservationId: string };
  /** The broker that asked for this segment, if any. */
  upstream?: { domain: string; reservationId: string };
  dataPlane: DataPlane;
  createdAt: number;
  updatedAt: number;
}

export interface TransitionRow {
  seq: number;
  reservationId: string;
  machine: Machine | 'dataPlane' | 'grant';
  from: string;
  to: string;
  event: string;
  at: number;
  details?: Record<string, unknown>;
}

const MIGRATIONS = [
  `CREATE TABLE reservations (
     id TEXT PRIMARY KEY,
     doc TEXT NOT NULL,
     lifecycle_state TEXT NOT NULL,
     created_at INTEGER NOT NULL,
     updated_at INTEGER NOT NULL
   );
   CREATE INDEX reservations_lifecycle ON reservations(lifecycle_state);
   CREATE TABLE transitions (
     seq INTEGER PRIMARY KEY AUTOINCREMENT,
     reservation_id TEXT NOT NULL,
     machine TEXT NOT NULL,
     from_state TEXT NOT NULL,
     to_state TEXT NOT NULL,
     event TEXT NOT NULL,
     at INTEGER NOT NULL,
     details TEXT
   );
   CREATE INDEX transitions_reservation ON transitions(reservation_id, seq);
   CREATE TABLE token_jti (
     jti TEXT PRIMARY KEY,
     iss TEXT NOT NULL,
     exp INTEGER NOT NULL,
     reservation_id TEXT NOT NULL,
     used_at INTEGER NOT NULL
   );
   CREATE INDEX token_jti_exp ON token_jti(exp);`,
  // Idempotency keys: "<owner>\n<key>", one reservation per owner and key.
  `ALTER TABLE reservations ADD COLUMN idem TEXT;
   CREATE UNIQUE INDEX reservations_idem ON reservations(idem) WHERE idem IS NOT NULL;`,
];

/** An owner's scope for idempotency keys: a holder's key thumbprint, or a peer domain. */
function idemOf(r: Pick<Reservation, 'owner' | 'idempotencyKey'>): string | null {
  if (r.idempotencyKey === undefined) return null;
  return `${r.owner.kind === 'holder' ? `holder:${r.owner.jkt}` : `peer:${r.owner.domain}`}\n${r.idempotencyKey}`;
}

export class BrokerStore {
  readonly db: Db;
  private readonly stmts;

  constructor(file: string) {
    this.db = openDb(file, MIGRATIONS);
    this.stmts = {
      insert: this.db.prepare('INSERT INTO reservations (id, doc, lifecycle_state, created_at, updated_at, idem) VALUES (?, ?, ?, ?, ?, ?)'),
      byIdem: this.db.prepare('SELECT doc FROM reservations WHERE idem = ?'),
      update: this.db.prepare('UPDATE reservations SET doc = ?, lifecycle_state = ?, updated_at = ? WHERE id = ?'),
      get: this.db.prepare('SELECT doc FROM reservations WHERE id = ?'),
      all: this.db.prepare('SELECT doc FROM reservations ORDER BY created_at, id'),
      live: this.db.prepare("SELECT doc FROM reservations WHERE lifecycle_state != 'Terminated'"),
      transition: this.db.prepare('INSERT INTO transitions (reservation_id, machine, from_state, to_state, event, at, details) VALUES (?, ?, ?, ?, ?, ?, ?)'),
      transitions: this.db.prepare('SELECT * FROM transitions WHERE reservation_id = ? ORDER BY seq'),
      jtiGet: this.db.prepare('SELECT reservation_id FROM token_jti WHERE jti = ?'),
      jtiPut: this.db.prepare('INSERT INTO token_jti (jti, iss, exp, reservation_id, used_at) VALUES (?, ?, ?, ?, ?)'),
      jtiPrune: this.db.prepare('DELETE FROM token_jti WHERE exp < ?'),
    };
  }

  /** Create a reservation and consume its token's jti in one SQLite transaction; false if the jti was used already. */
  create(r: Reservation, token: { jti: string; iss: string; exp: number }): boolean {
    return this.db.transaction(() => {
      if (this.stmts.jtiGet.get(token.jti)) return false;
      this.stmts.jtiPut.run(token.jti, token.iss, token.exp, r.id, r.createdAt);
      this.stmts.insert.run(r.id, JSON.stringify(r), r.lifecycleState, r.createdAt, r.updatedAt, idemOf(r));
      return true;
    })();
  }

  /** Persist a reservation together with the transition rows that led to it. */
  save(r: Reservation, rows: Omit<TransitionRow, 'seq'>[] = []): void {
    this.db.transaction(() => {
      this.stmts.update.run(JSON.stringify(r), r.lifecycleState, r.updatedAt, r.id);
      for (const t of rows) this.stmts.transition.run(t.reservationId, t.machine, t.from, t.to, t.event, t.at, t.details ? JSON.stringify(t.details) : null);
    })();
  }

  get(id: string): Reservation | undefined {
    const row = this.stmts.get.get(id) as { doc: string } | undefined;
    return row ? (JSON.parse(row.doc) as Reservation) : undefined;
  }

  /** The owner's reservation made with this idempotency key, if any. */
  byKey(owner: Owner, key: string): Reservation | undefined {
    const row = this.stmts.byIdem.get(idemOf({ owner, idempotencyKey: key })) as { doc: string } | undefined;
    return row ? (JSON.parse(row.doc) as Reservation) : undefined;
  }

  list(): Reservation[] {
    return (this.stmts.all.all() as { doc: string }[]).map((r) => JSON.parse(r.doc) as Reservation);
  }

  live(): Reservation[] {
    return (this.stmts.live.all() as { doc: string }[]).map((r) => JSON.parse(r.doc) as Reservation);
  }

  transitions(id: string): TransitionRow[] {
    return (this.stmts.transitions.all(id) as Record<string, unknown>[]).map((r) => {
      const row: TransitionRow = {
        seq: r.seq as number,
        reservationId: r.reservation_id as string,
        machine: r.machine as TransitionRow['machine'],
        from: r.from_state as string,
        to: r.to_state as string,
        event: r.event as string,
        at: r.at as number,
      };
      if (r.details) row.details = JSON.parse(r.details as string) as Record<string, unknown>;
      return row;
    });
  }

  /** The reservation a token jti created, if that jti has been used. */
  jtiUsedBy(jti: string): string | undefined {
    return (this.stmts.jtiGet.get(jti) as { reservation_id: string } | undefined)?.reservation_id;
  }

  /** Forget jtis of tokens that have expired (they are refused as expired anyway). */
  pruneJtis(nowSec: number): number {
    return this.stmts.jtiPrune.run(nowSec).changes;
  }

  close(): void {
    this.db.close();
  }
}
