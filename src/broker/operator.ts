// The operator credential of the broker (docs/broker.md "Reads"). Reservation records name
// endpoints, bandwidth, windows and requesters, so reading them needs a credential: a bearer token
// made on first start and kept in DIR/operator.token (mode 0600), like the AAA's admin.token.
import { createHash, timingSafeEqual } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { commonError } from '../common/errors.ts';
import { readOrCreateSecretFile } from '../common/secret-file.ts';

export const OPERATOR_TOKEN_FILE = 'operator.token';

const sha = (s: string) => createHash('sha256').update(s).digest();

export class OperatorCredential {
  private readonly hash: Buffer;

  constructor(readonly token: string, readonly file: string) {
    this.hash = sha(token);
  }

  /**
   * Read DIR/operator.token, or create it (0600) with a fresh secret on first start. Two
   * processes racing on a new directory end up with the same token (the loser reads the winner's).
   */
  static load(dataDir: string, secret: () => string): OperatorCredential {
    mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    const file = join(dataDir, OPERATOR_TOKEN_FILE);
    const token = readOrCreateSecretFile(file, secret, (t) => {
      // An empty or truncated file would make a guessable credential: refuse to start instead.
      if (t.length < 16 || /\s/.test(t)) throw commonError('VMTC_CONFIG_INVALID', { field: 'operator.token', file }, { message: 'the operator token file is empty or malformed; delete it to make a new one' });
    });
    return new OperatorCredential(token, file);
  }

  /** `Authorization: Bearer <operator token>`, compared in constant time (hashes of equal length). */
  matches(authorization: string | undefined): boolean {
    const m = /^Bearer\s+(\S+)$/i.exec(authorization?.trim() ?? '');
    return Boolean(m && timingSafeEqual(sha(m[1]!), this.hash));
  }
}
