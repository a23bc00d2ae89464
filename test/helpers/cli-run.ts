// The client verbs as real processes for tests: `node bin/vmtc.js ARGS` with a controller's URL
// and credential in the environment (and nothing of the caller's VMTC_ settings or config file),
// output captured; a cleanup SIGKILLs it by pid if the test has not seen it exit. Not a test file.
import { spawn, type ChildProcess } from 'node:child_process';
import { resolve } from 'node:path';
import { VMTC_BIN } from './proc.ts';
import type { Cleanup } from './cleanups.ts';

export interface CliRun {
  child: ChildProcess;
  exited: Promise<number | null>;
  stdout(): string;
  stderr(): string;
}

/** The environment of a client verb: the controller and token given, no config file of the user's. */
export function cliEnv(controller: { url: string; token: string }, extra: Record<string, string | undefined> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const k of Object.keys(env)) if (k.startsWith('VMTC_')) delete env[k];
  env.VMTC_CONTROLLER = controller.url;
  env.VMTC_TOKEN = controller.token;
  // A config file of the machine's user must not leak in: point at one that does not exist by default.
  env.XDG_CONFIG_HOME = resolve('/nonexistent-vmtc-test-config');
  for (const [k, v] of Object.entries(extra)) { if (v === undefined) delete env[k]; else env[k] = v; }
  return env;
}

export function startCli(args: string[], env: NodeJS.ProcessEnv, cleanups: Cleanup[]): CliRun {
  const child = spawn(process.execPath, [VMTC_BIN, ...args], { cwd: resolve(import.meta.dirname, '../..'), env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout!.on('data', (d) => { out += d; });
  child.stderr!.on('data', (d) => { err += d; });
  const exited = new Promise<number | null>((r) => child.once('close', (code) => r(code)));
  cleanups.push(async () => {
    if (child.exitCode === null && child.signalCode === null && child.pid) {
      process.kill(child.pid, 'SIGKILL');
      await exited;
    }
  });
  return { child, exited, stdout: () => out, stderr: () => err };
}

export async function runCli(args: string[], env: NodeJS.ProcessEnv, cleanups: Cleanup[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const r = startCli(args, env, cleanups);
  const code = await r.exited;
  return { code, stdout: r.stdout(), stderr: r.stderr() };
}
