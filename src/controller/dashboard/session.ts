// The dashboard's sessions (docs/dashboard.md "Authentication"): an operator pastes a credential
// once; the controller answers with a random session id in an HttpOnly cookie and keeps, in
// memory only, which credential the session stands for and until when. The browser never holds
// the credential after the login request, and it never appears in a URL. A controller restart
// ends every session (log in again). Pure bookkeeping: the clock and ids come in.
import type { Clock, Ids } from '../../common/clock.ts';

export interface Session { id: string; token: string; credentialId: string; name: string; role: string; createdAt: number; expiresAt: number }

export const SESSION_DEFAULTS = {
  /** How long a session lasts from login (no sliding renewal: an operator logs in again). */
  ttlMs: 8 * 3600_000,
  /** Sessions kept at most; past it the oldest ends first. */
  maxSessions: 1000,
  cookie: 'vmtc_session',
} as const;

export class SessionStore {
  private readonly sessions = new Map<string, Session>();

  constructor(private readonly clock: Clock, private readonly ids: Ids, private readonly ttlMs: number = SESSION_DEFAULTS.ttlMs, private readonly max: number = SESSION_DEFAULTS.maxSessions) {}

  create(token: string, cred: { id: string; name: string; role: string }): Session {
    const now = this.clock.now();
    this.sweep(now);
    const s: Session = { id: this.ids.secret(32), token, credentialId: cred.id, name: cred.name, role: cred.role, createdAt: now, expiresAt: now + this.ttlMs };
    this.sessions.set(s.id, s);
    while (this.sessions.size > this.max) this.sessions.delete(this.sessions.keys().next().value!);
    return s;
  }

  /** The live session with this id, or undefined (unknown, or expired: then it is forgotten). */
  get(id: string | undefined): Session | undefined {
    if (!id) return undefined;
    const s = this.sessions.get(id);
    if (!s) return undefined;
    if (this.clock.now() >= s.expiresAt) {
      this.sessions.delete(id);
      return undefined;
    }
    return s;
  }

  delete(id: string | undefined): void {
    if (id) this.sessions.delete(id);
  }

  get size(): number { return this.sessions.size; }

  private sweep(now: number): void {
    for (const [id, s] of this.sessions) if (now >= s.expiresAt) this.sessions.delete(id);
  }
}

/** The value of cookie `name` in a Cookie header (RFC 6265 section 5.4 syntax), or undefined. */
export function cookieValue(header: string | undefined, name: string): string | undefined {
  if (!header) return undefined;
  for (const part of header.split(';')) {
    const i = part.indexOf('=');
    if (i < 0) continue;
    if (part.slice(0, i).trim() === name) return part.slice(i + 1).trim();
  }
  return undefined;
}

/** The Set-Cookie header of a session (RFC 6265 section 4.1): HttpOnly, SameSite=Strict, Path=/,
 *  an expiry, and Secure when the controller serves HTTPS. `maxAgeS` 0 deletes the cookie. */
export function sessionCookie(name: string, value: string, maxAgeS: number, secure: boolean): string {
  return `${name}=${value}; Path=/; Max-Age=${Math.max(0, Math.floor(maxAgeS))}; HttpOnly; SameSite=Strict${secure ? '; Secure' : ''}`;
}
