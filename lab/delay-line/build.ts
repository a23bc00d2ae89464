// The C delay line (delay-line.c here): compiled on first use with gcc and cached like the guest
// image (lab/guest/build.ts), under a key that hashes the source, so an edited source rebuilds.
//
//   import { ensureDelayLineBinary } from './lab/delay-line/build.ts';
//   const bin = await ensureDelayLineBinary();   // <cache>/delay-line/<key>/vmtc-delay-line
//
// CLI: `npx tsx lab/delay-line/build.ts` builds (or finds) it and prints the path.
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, rename, rm } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { run } from '../../src/common/proc.ts';
import { labError } from '../errors.ts';

const HERE = dirname(fileURLToPath(import.meta.url));
const REPO = resolve(HERE, '../..');
export const DELAY_LINE_SOURCE = join(HERE, 'delay-line.c');
/** The binary's file name: lab/delay-line-process.ts recognises the process by it in /proc. */
export const DELAY_LINE_BINARY_NAME = 'vmtc-delay-line';

const CFLAGS = ['-O2', '-Wall'];

export function delayLineCacheRoot(cacheDir?: string): string {
  return join(cacheDir ?? process.env.VMTC_CACHE ?? join(REPO, 'lab', 'cache'), 'delay-line');
}

async function gcc(args: string[]): Promise<void> {
  try {
    await run(['gcc', ...args], { timeoutMs: 120_000 });
  } catch (e) {
    const stderr = String((e as { details?: { stderr?: unknown } }).details?.stderr ?? '');
    throw labError('VMTC_LAB_DELAY_LINE_FAILED', { step: 'build', argv: ['gcc', ...args], stderr }, { message: `gcc failed building the C delay line: ${stderr || (e as Error).message}`, cause: e });
  }
}

/**
 * The path of the compiled C delay line, building it if the cache has none for this source.
 * Safe to call from several processes at once: each compiles to a temp name, then renames into
 * place (atomic; the last writer wins with an identical binary).
 */
export async function ensureDelayLineBinary(cacheDir?: string): Promise<string> {
  const src = await readFile(DELAY_LINE_SOURCE);
  const key = createHash('sha256').update(JSON.stringify({ v: 1, cflags: CFLAGS })).update(src).digest('hex').slice(0, 16);
  const dir = join(delayLineCacheRoot(cacheDir), key);
  const bin = join(dir, DELAY_LINE_BINARY_NAME);
  if (existsSync(bin)) return bin;
  await mkdir(dir, { recursive: true });
  const tmp = join(dir, `.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
  try {
    await gcc([...CFLAGS, '-o', tmp, DELAY_LINE_SOURCE, '-lm']);
    await rename(tmp, bin);
  } finally {
    await rm(tmp, { force: true });
  }
  return bin;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  process.stdout.write((await ensureDelayLineBinary()) + '\n');
}
