// A service's own bearer credential kept in a 0600 file in its data directory (the AAA's
// admin.token, the broker's operator.token): read it, or create it on first start. Two processes
// racing on a new directory end up with the same secret (the loser reads the winner's file).
import { chmodSync, readFileSync, writeFileSync } from 'node:fs';

/** `check` may refuse what was read (e.g. an empty file) by throwing. */
export function readOrCreateSecretFile(file: string, secret: () => string, check: (value: string) => void = () => undefined): string {
  const read = () => {
    const value = readFileSync(file, 'utf8').trim();
    check(value);
    return value;
  };
  try {
    return read();
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  const value = secret();
  try {
    writeFileSync(file, value + '\n', { mode: 0o600, flag: 'wx' });
    chmodSync(file, 0o600);
    return value;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') return read();
    throw e;
  }
}
