// Per-test teardown for tests that start servers, processes and temp dirs: each test pushes what
// it must undo as soon as it has started it, and everything runs (last first) after the test,
// also when it failed halfway. Not a test file itself.
import { afterEach } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { VMTC_BIN } from './proc.ts';

export type Cleanup = () => Promise<void> | void;

/** Call once at the top of a test file; push undo steps onto the returned list. */
export function cleanupsAfterEach(): Cleanup[] {
  const cleanups: Cleanup[] = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });
  return cleanups;
}

export interface CliProcess {
  child: ChildProcess;
  /** Resolves with the exit code. */
  exited: Promise<number | null>;
  stdout(): string;
  stderr(): string;
  /** stdout and stderr interleaved as they arrived. */
  output(): string;
}

/**
 * `node bin/vmtc.js <args>` as a real process, output captured. A cleanup SIGKILLs it (by pid) and
 * waits for the exit if the test has not stopped it itself.
 */
export function spawnVmtcCli(args: string[], cleanups: Cleanup[]): CliProcess {
  const child = spawn(process.execPath, [VMTC_BIN, ...args], { cwd: join(import.meta.dirname, '..', '..'), stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  let all = '';
  child.stdout!.on('data', (d) => { out += d; all += d; });
  child.stderr!.on('data', (d) => { err += d; all += d; });
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  cleanups.push(async () => {
    if (child.exitCode === null && child.signalCode === null && child.pid) {
      process.kill(child.pid, 'SIGKILL');
      await exited;
    }
  });
  return { child, exited, stdout: () => out, stderr: () => err, output: () => all };
}
