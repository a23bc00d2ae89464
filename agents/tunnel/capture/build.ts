// The capture helper (vmtc-capture.c here): compiled on first use with gcc and cached under a key
// that hashes the source, as the lab's delay line is (lab/delay-line/build.ts).
//
//   const bin = await ensureCaptureBinary(dir);   // <dir>/<key>/vmtc-capture
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, rename, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { run } from '../../../src/common/proc.ts';
import { tunnelError } from '../../../src/common/tunnel-protocol.ts';

const HERE = dirname(fileURLToPath(import.meta.url));
export const CAPTURE_SOURCE = join(HERE, 'vmtc-capture.c');
export const CAPTURE_BINARY_NAME = 'vmtc-capture';
const CFLAGS = ['-O2', '-Wall'];

/** The path of the compiled helper under `dir`, building it if there is none for this source.
 *  Several processes at once are safe: each compiles to a temp name, then renames into place. */
export async function ensureCaptureBinary(dir: string): Promise<string> {
  const src = await readFile(CAPTURE_SOURCE);
  const key = createHash('sha256').update(JSON.stringify({ v: 1, cflags: CFLAGS })).update(src).digest('hex').slice(0, 16);
  const out = join(dir, key);
  const bin = join(out, CAPTURE_BINARY_NAME);
  if (existsSync(bin)) return bin;
  await mkdir(out, { recursive: true });
  const tmp = join(out, `.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
  try {
    await run(['gcc', ...CFLAGS, '-o', tmp, CAPTURE_SOURCE], { timeoutMs: 120_000 });
    await rename(tmp, bin);
  } catch (e) {
    const stderr = String((e as { details?: { stderr?: unknown } }).details?.stderr ?? '');
    throw tunnelError('VMTC_TUNNEL_MEASURE_FAILED', { step: 'build', stderr }, { message: `gcc failed building the capture helper: ${stderr || (e as Error).message}`, cause: e });
  } finally {
    await rm(tmp, { force: true });
  }
  return bin;
}
