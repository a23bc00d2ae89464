// Signing keys: Ed25519, kept in SQLite, published as a JWKS. Rotation without downtime: the new
// key signs from the moment it is created, and the old one stays in the JWKS until every token it
// signed has expired (retired_at + token lifetime + clock skew), so verifiers never see a token
// whose key they cannot fetch.
import { createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import type { Db } from '../common/db.ts';
import type { Clock, Ids } from '../common/clock.ts';
import type { PublicJwk } from '../common/dpop.ts';

export interface SigningKey {
  kid: string;
  privateKey: KeyObject;
  publicKey: KeyObject;
  publicJwk: PublicJwk & { kid: string; alg: 'EdDSA'; use: 'sig' };
  createdAt: number;
  retiredAt: number | null;
  publishUntil: number | null;
}

interface Row {
  kid: string;
  private_jwk: string;
  public_jwk: string;
  created_at: number;
  retired_at: number | null;
  publish_until: number | null;
}

export class KeyStore {
  private current!: SigningKey;
  private byKid = new Map<string, SigningKey>();

  constructor(private readonly db: Db, private readonly clock: Clock, private readonly ids: Ids) {
    this.reload();
    if (!this.byKid.size || ![...this.byKid.values()].some((k) => k.retiredAt === null)) this.rotate(0);
  }

  private reload(): void {
    const rows = this.db.prepare('SELECT * FROM keys ORDER BY created_at').all() as Row[];
    this.byKid = new Map();
    for (const r of rows) {
      const privateKey = createPrivateKey({ key: JSON.parse(r.private_jwk), format: 'jwk' });
      const k: SigningKey = {
        kid: r.kid,
        privateKey,
        publicKey: createPublicKey(privateKey),
        publicJwk: JSON.parse(r.public_jwk),
        createdAt: r.created_at,
        retiredAt: r.retired_at,
        publishUntil: r.publish_until,
      };
      this.byKid.set(k.kid, k);
      if (k.retiredAt === null) this.current = k;
    }
  }

  /** The key that signs now. */
  signing(): SigningKey {
    return this.current;
  }

  /** A key that may still verify (current, or retired and not past publishUntil). */
  get(kid: string): SigningKey | undefined {
    const k = this.byKid.get(kid);
    if (!k) return undefined;
    if (k.publishUntil !== null && k.publishUntil <= this.clock.now()) return undefined;
    return k;
  }

  /** Public keys to publish: the current one first, then retired ones still covering live tokens. */
  jwks(): { keys: SigningKey['publicJwk'][] } {
    const now = this.clock.now();
    const live = [...this.byKid.values()].filter((k) => k.publishUntil === null || k.publishUntil > now);
    live.sort((a, b) => (a.retiredAt === null ? -1 : b.retiredAt === null ? 1 : b.createdAt - a.createdAt));
    return { keys: live.map((k) => k.publicJwk) };
  }

  /**
   * Make a new current key; the previous one is retired and stays published for `graceMs` (the
   * longest token lifetime plus skew). Returns the new key.
   */
  rotate(graceMs: number): SigningKey {
    const now = this.clock.now();
    const { privateKey } = generateKeyPairSync('ed25519');
    const priv = privateKey.export({ format: 'jwk' }) as { kty: string; crv: string; x: string; d: string };
    const kid = this.ids.next('k');
    const pub = { kty: 'OKP' as const, crv: 'Ed25519' as const, x: priv.x, kid, alg: 'EdDSA' as const, use: 'sig' as const };
    this.db.transaction(() => {
      this.db.prepare('UPDATE keys SET retired_at = ?, publish_until = ? WHERE retired_at IS NULL').run(now, now + graceMs);
      this.db.prepare('INSERT INTO keys (kid, private_jwk, public_jwk, created_at) VALUES (?, ?, ?, ?)').run(kid, JSON.stringify(priv), JSON.stringify(pub), now);
    })();
    this.reload();
    return this.current;
  }
}
