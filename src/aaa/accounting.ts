// Accounting (docs/aaa.md#accounting): an append-only record of every grant, refusal, consent, use
// and release, with who, what, when and how much. The store refuses UPDATE/DELETE (see store.ts);
// this module only ever INSERTs and SELECTs.
import type { Db } from '../common/db.ts';

export type AccountingKind = 'grant' | 'refusal' | 'consent-grant' | 'consent-refusal' | 'use' | 'release';

export interface AccountingEvent {
  seq: number;
  /** ISO time of the record. */
  at: string;
  kind: AccountingKind;
  who: string;
  reporter?: string;
  rule?: string;
  jti?: string;
  migrationId?: string;
  vmId?: string;
  project?: string;
  src?: string;
  dst?: string;
  domains?: string[];
  bandwidthMbps?: number;
  window?: { start: number; end: number };
  /** Bandwidth x time. For a grant: what was booked; for a release: what was used. */
  mbitSeconds?: number;
  bytes?: number;
  code?: string;
  details?: Record<string, unknown>;
}

export type NewAccountingEvent = Omit<AccountingEvent, 'seq' | 'at'> & { at: number };

/**
 * Who reads or reports (docs/aaa.md#accounting): the operator (the admin credential) sees and
 * reports on everything; a requester or reporter of the policy, by its id, only its own records.
 */
export type AccountingParty = { role: 'operator' } | { role: 'requester' | 'reporter'; id: string };

interface Row {
  seq: number;
  at: number;
  kind: AccountingKind;
  who: string;
  reporter: string | null;
  rule: string | null;
  jti: string | null;
  migration_id: string | null;
  vm_id: string | null;
  project: string | null;
  src: string | null;
  dst: string | null;
  domains: string | null;
  bandwidth_mbps: number | null;
  window_start: number | null;
  window_end: number | null;
  mbit_seconds: number | null;
  bytes: number | null;
  code: string | null;
  details: string | null;
}

function fromRow(r: Row): AccountingEvent {
  const e: AccountingEvent = { seq: r.seq, at: new Date(r.at).toISOString(), kind: r.kind, who: r.who };
  if (r.reporter !== null) e.reporter = r.reporter;
  if (r.rule !== null) e.rule = r.rule;
  if (r.jti !== null) e.jti = r.jti;
  if (r.migration_id !== null) e.migrationId = r.migration_id;
  if (r.vm_id !== null) e.vmId = r.vm_id;
  if (r.project !== null) e.project = r.project;
  if (r.src !== null) e.src = r.src;
  if (r.dst !== null) e.dst = r.dst;
  if (r.domains !== null) e.domains = JSON.parse(r.domains);
  if (r.bandwidth_mbps !== null) e.bandwidthMbps = r.bandwidth_mbps;
  if (r.window_start !== null && r.window_end !== null) e.window = { start: r.window_start, end: r.window_end };
  if (r.mbit_seconds !== null) e.mbitSeconds = r.mbit_seconds;
  if (r.bytes !== null) e.bytes = r.bytes;
  if (r.code !== null) e.code = r.code;
  if (r.details !== null) e.details = JSON.parse(r.details);
  return e;
}

export class Accounting {
  private readonly insert;
  private readonly usageStmt;
  private readonly grantStmt;
  private readonly useStmt;

  constructor(private readonly db: Db) {
    this.insert = db.prepare(`INSERT INTO accounting
      (at, kind, who, reporter, rule, jti, migration_id, vm_id, project, src, dst, domains, bandwidth_mbps, window_start, window_end, mbit_seconds, bytes, code, details)
      VALUES (@at, @kind, @who, @reporter, @rule, @jti, @migrationId, @vmId, @project, @src, @dst, @domains, @bandwidthMbps, @windowStart, @windowEnd, @mbitSeconds, @bytes, @code, @details)`);
    // A withdrawn consent (a release marked withdrawn by the same party) does not count.
    this.usageStmt = db.prepare(`SELECT COUNT(*) AS n, COALESCE(SUM(mbit_seconds), 0) AS mbs FROM accounting g
      WHERE who = ? AND rule = ? AND kind = ? AND at > ?
        AND NOT EXISTS (SELECT 1 FROM accounting w WHERE w.jti = g.jti AND w.kind = 'release' AND w.who = g.who
                        AND json_extract(w.details, '$.withdrawn') = 1)`);
    // A grant made here, or a consent this domain gave to a peer's grant (so the brokers of a
    // transit or destination domain can report use to their own AAA).
    this.grantStmt = db.prepare(`SELECT * FROM accounting WHERE jti = ? AND kind IN ('grant', 'consent-grant') ORDER BY kind = 'grant' DESC, seq LIMIT 1`);
    this.useStmt = db.prepare(`SELECT * FROM accounting WHERE jti = ? AND kind = 'use' ORDER BY seq DESC LIMIT 1`);
  }

  /** Run fn in one SQLite transaction (synchronous; a throw rolls back). */
  transaction<T>(fn: () => T): T {
    return this.db.transaction(fn)();
  }

  record(e: NewAccountingEvent): number {
    const info = this.insert.run({
      at: e.at,
      kind: e.kind,
      who: e.who,
      reporter: e.reporter ?? null,
      rule: e.rule ?? null,
      jti: e.jti ?? null,
      migrationId: e.migrationId ?? null,
      vmId: e.vmId ?? null,
      project: e.project ?? null,
      src: e.src ?? null,
      dst: e.dst ?? null,
      domains: e.domains ? JSON.stringify(e.domains) : null,
      bandwidthMbps: e.bandwidthMbps ?? null,
      windowStart: e.window?.start ?? null,
      windowEnd: e.window?.end ?? null,
      mbitSeconds: e.mbitSeconds ?? null,
      bytes: e.bytes ?? null,
      code: e.code ?? null,
      details: e.details ? JSON.stringify(e.details) : null,
    });
    return Number(info.lastInsertRowid);
  }

  /** Grants (or consents) by `who` under `rule` since `sinceMs`: what quotas count. */
  usage(who: string, rule: string, kind: 'grant' | 'consent-grant', sinceMs: number): { grantsLastHour: number; mbitSecondsLastHour: number } {
    const r = this.usageStmt.get(who, rule, kind, sinceMs) as { n: number; mbs: number };
    return { grantsLastHour: r.n, mbitSecondsLastHour: r.mbs };
  }

  grant(jti: string): AccountingEvent | undefined {
    const r = this.grantStmt.get(jti) as Row | undefined;
    return r ? fromRow(r) : undefined;
  }

  lastUse(jti: string): AccountingEvent | undefined {
    const r = this.useStmt.get(jti) as Row | undefined;
    return r ? fromRow(r) : undefined;
  }

  /**
   * Records oldest first. With `party` (a requester's or reporter's id) only that party's own: the
   * records it is `who` of (its grants and refusals, and the use/release reports on its grants),
   * those it reported, and those joined by `jti` to a grant or refusal of its own (the consents
   * the peers gave or refused for it).
   */
  query(q: { party?: string; migrationId?: string; jti?: string; kind?: string; sinceMs?: number; afterSeq?: number; limit: number }): AccountingEvent[] {
    const where: string[] = [];
    const args: unknown[] = [];
    if (q.party !== undefined) {
      where.push(`(who = ? OR reporter = ? OR jti IN (SELECT jti FROM accounting WHERE who = ? AND kind IN ('grant', 'refusal') AND jti IS NOT NULL))`);
      args.push(q.party, q.party, q.party);
    }
    if (q.migrationId !== undefined) { where.push('migration_id = ?'); args.push(q.migrationId); }
    if (q.jti !== undefined) { where.push('jti = ?'); args.push(q.jti); }
    if (q.kind !== undefined) { where.push('kind = ?'); args.push(q.kind); }
    if (q.sinceMs !== undefined) { where.push('at >= ?'); args.push(q.sinceMs); }
    if (q.afterSeq !== undefined) { where.push('seq > ?'); args.push(q.afterSeq); }
    const sql = `SELECT * FROM accounting ${where.length ? 'WHERE ' + where.join(' AND ') : ''} ORDER BY seq LIMIT ?`;
    return (this.db.prepare(sql).all(...args, q.limit) as Row[]).map(fromRow);
  }
}
