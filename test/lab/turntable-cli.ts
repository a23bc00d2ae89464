// `vmtc turntable` run as people run it, a child process, for the lab tests that read what it
// wrote (test/lab/turntable.test.ts, turntable-disk.test.ts): its exit code, its output, its
// turntable.json, and the network namespaces that existed before it (it must leave none).
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TurntableResult } from '../../lab/turntable/types.ts';

const BIN = join(import.meta.dirname, '../../bin/vmtc.js');
/** A run that has not ended by then is interrupted (SIGINT: the turntable tears down first). */
const RUN_LIMIT_MS = 400_000;

export interface TurntableRun {
  out: string;
  code: number | null;
  stdout: string;
  stderr: string;
  /** Its turntable.json, when it wrote one. */
  result: TurntableResult | undefined;
  netnsBefore: string[];
  /** Remove its output directory. */
  remove(): void;
}

export function listNetns(): string[] {
  try {
    return readdirSync('/run/netns');
  } catch {
    return [];
  }
}

/** `vmtc turntable ARGS --out DIR` with DIR a new temp directory named from `prefix`. */
export async function runTurntableCli(args: string[], prefix: string): Promise<TurntableRun> {
  const out = mkdtempSync(join(tmpdir(), prefix));
  const netnsBefore = listNetns();
  let stdout = '';
  let stderr = '';
  const child = spawn(process.execPath, [BIN, 'turntable', ...args, '--out', out], { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout.on('data', (d) => { stdout += d; });
  child.stderr.on('data', (d) => { stderr += d; });
  const timer = setTimeout(() => child.kill('SIGINT'), RUN_LIMIT_MS);
  const code = await new Promise<number | null>((res) => child.once('exit', (c) => res(c)));
  clearTimeout(timer);
  const file = join(out, 'turntable.json');
  const result = existsSync(file) ? (JSON.parse(readFileSync(file, 'utf8')) as TurntableResult) : undefined;
  return { out, code, stdout, stderr, result, netnsBefore, remove: () => rmSync(out, { recursive: true, force: true }) };
}
