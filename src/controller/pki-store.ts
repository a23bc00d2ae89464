// Durable state of enrolment: one-time tokens (stored only as sha256 hashes, so a copy of the
// database cannot enrol anything) and every certificate issued, by serial, with its revocation.
// The tables live in the controller's SQLite file beside its own; they are created here with
// CREATE TABLE IF NOT EXISTS so this module does not depend on the controller's migration list.
import { createHash } from 'node:crypto';
import type { Db } from '../common/db.ts';

export type AgentKind = 'host' | 'tunnel';

export interface TokenRow {
  tokenHash: string;
  kind: AgentKind;
  hostId: string;
  createdAt: number;
  expiresAt: number;
  usedAt: number | null;
}

export interface CertRow {
  serial: string;
  hostId: string;
  kind: AgentKind;
  fingerprint: string;
  issuedAt: number;
  notAfter: number;
  revokedAt: number | null;
}

export function hashToken(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS pki_enroll_tokens (
  token_hash TEXT PRIMARY KEY,
  kind TEXT NOT NULL CHECK (kind IN ('host', 'tunnel')),
  host_id TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  expires_at INTEGER NOT NULL,
  used_at INTEGER
);
CREATE INDEX IF NOT EXISTS pki_enroll_tokens_host ON pki_enroll_tokens (host_id);
CREATE TABLE IF NOT EXISTS pki_certs (
  serial TEXT PRIMARY KEY,
  host_id TEXT NOT NULL,
  kind TEXT NOT NULL CHECK (kind IN ('host', 'tunnel')),
  fingerprint TEXT NOT NULL,
  issued_at INTEGER NOT NULL,
  not_after INTEGER NOT NULL,
  revoked_at INTEGER
);
CREATE INDEX IF NOT EXISTS pki_certs_host ON pki_certs (host_id);
`;

interface RawToken { token_hash: string; kind: AgentKind; host_id: string; created_at: number; expires_at: number; used_at: number | null }
interface RawCert { serial: string; host_id: string; kind: AgentKind; fingerprint: string; issued_at: number; not_after: number; revoked_at: number | null }

const tokenRow = (r: RawToken): TokenRow => ({ tokenHash: r.token_hash, kind: r.kind, hostId: r.host_id, createdAt: r.created_at, expiresAt: r.expires_at, usedAt: r.used_at });
const certRow = (r: RawCert): CertRow => ({ serial: r.serial, hostId: r.host_id, kind: r.kind, fingerprint: r.fingerprint, issuedAt: r.issued_at, notAfter: r.not_after, revokedAt: r.revoked_at });

export class PkiStore {
  constructor(private readonly db: Db) {
    db.exec(SCHEMA);
  }

  addToken(t: Omit<TokenRow, 'usedAt'>): void {
    this.db
      .prepare('INSERT INTO pki_enroll_tokens (token_hash, kind, host_id, created_at, expires_at, used_at) VALUES (?, ?, ?, ?, ?, NULL)')
      .run(t.tokenHash, t.kind, t.hostId, t.createdAt, t.expiresAt);
  }

  token(tokenHash: string): TokenRow | undefined {
    const r = this.db.prepare('SELECT * FROM pki_enroll_tokens WHERE token_hash = ?').get(tokenHash) as RawToken | undefined;
    return r ? tokenRow(r) : undefined;
  }

  /** Mark a token used; false when it already was (the caller lost a race). */
  useToken(tokenHash: string, now: number): boolean {
    return this.db.prepare('UPDATE pki_enroll_tokens SET used_at = ? WHERE token_hash = ? AND used_at IS NULL').run(now, tokenHash).changes === 1;
  }

  /** Tokens minted for a host before it was revoked must not bring it back. */
  voidTokensOf(hostId: string, now: number): number {
    return this.db.prepare('UPDATE pki_enroll_tokens SET used_at = ? WHERE host_id = ? AND used_at IS NULL').run(now, hostId).changes;
  }

  serialExists(serial: string): boolean {
    return this.db.prepare('SELECT 1 FROM pki_certs WHERE serial = ?').get(serial) !== undefined;
  }

  addCert(c: Omit<CertRow, 'revokedAt'>): void {
    this.db
      .prepare('INSERT INTO pki_certs (serial, host_id, kind, fingerprint, issued_at, not_after, revoked_at) VALUES (?, ?, ?, ?, ?, ?, NULL)')
      .run(c.serial, c.hostId, c.kind, c.fingerprint, c.issuedAt, c.notAfter);
  }

  cert(serial: string): CertRow | undefined {
    const r = this.db.prepare('SELECT * FROM pki_certs WHERE serial = ?').get(serial) as RawCert | undefined;
    return r ? certRow(r) : undefined;
  }

  certsOf(hostId: string): CertRow[] {
    return (this.db.prepare('SELECT * FROM pki_certs WHERE host_id = ? ORDER BY issued_at').all(hostId) as RawCert[]).map(certRow);
  }

  allCerts(): CertRow[] {
    return (this.db.prepare('SELECT * FROM pki_certs ORDER BY host_id, issued_at').all() as RawCert[]).map(certRow);
  }

  /** Kind a host id is known as (from its certificates or outstanding tokens), if any. */
  kindOf(hostId: string): AgentKind | undefined {
    const c = this.db.prepare('SELECT kind FROM pki_certs WHERE host_id = ? LIMIT 1').get(hostId) as { kind: AgentKind } | undefined;
    if (c) return c.kind;
    const t = this.db.prepare('SELECT kind FROM pki_enroll_tokens WHERE host_id = ? LIMIT 1').get(hostId) as { kind: AgentKind } | undefined;
    return t?.kind;
  }

  /** Revoke every unrevoked certificate of a host; returns how many were revoked. */
  revokeHost(hostId: string, now: number): number {
    return this.db.prepare('UPDATE pki_certs SET revoked_at = ? WHERE host_id = ? AND revoked_at IS NULL').run(now, hostId).changes;
  }

  transaction<T>(fn: () => T): T {
    return this.db.transaction(fn)();
  }
}
