// Spawning vmtc as a real process for tests: wait for its JSON "ready" line, stop it by pid.
import { spawn, type ChildProcess } from 'node:child_process';
import { connect, createServer } from 'node:net';
import { resolve } from 'node:path';

export const VMTC_BIN = resolve(import.meta.dirname, '../../bin/vmtc.js');

export interface Proc {
  child: ChildProcess;
  ready: Record<string, unknown>;
  output(): string;
  /** SIGTERM (or the given signal) and wait for exit. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

export function startVmtc(args: string[], opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<Proc> {
  const child = spawn(process.execPath, [VMTC_BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, VMTC_LOG_LEVEL: 'warn', ...(opts.env ?? {}) } });
  let out = '';
  let err = '';
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  const proc = (ready: Record<string, unknown>): Proc => ({
    child, ready,
    output: () => out + err,
    async stop(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
  });
  return new Promise((resolveP, reject) => {
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`vmtc ${args[0]} not ready in time:\n${out}\n${err}`)); }, opts.timeoutMs ?? 20_000);
    child.stderr!.on('data', (d) => { err += d; });
    child.stdout!.on('data', (d) => {
      out += d;
      for (const line of out.split('\n')) {
        if (!line.startsWith('{')) continue;
        try {
          const j = JSON.parse(line);
          if (j.event === 'ready') { clearTimeout(timer); resolveP(proc(j)); return; }
        } catch { /* a log line */ }
      }
    });
    child.once('exit', (code) => { clearTimeout(timer); reject(new Error(`vmtc ${args[0]} exited with ${code}:\n${out}\n${err}`)); });
  });
}

/** A loopback port where a connection is refused, for as long as the test runs: 1 (tcpmux), below
 *  the ephemeral range, which nothing in the suite listens on. A port taken free and closed again
 *  is not one: another test's server may be given it meanwhile (a run saw a 404 there). Throws if
 *  a connection to it is not refused. */
export async function refusedPort(): Promise<number> {
  const port = 1;
  const outcome = await new Promise<string>((res) => {
    const s = connect(port, '127.0.0.1');
    s.once('connect', () => { s.destroy(); res('accepted'); });
    s.once('error', (e: NodeJS.ErrnoException) => res(e.code ?? String(e)));
  });
  if (outcome !== 'ECONNREFUSED') throw new Error(`127.0.0.1:${port} is not refused (${outcome}): something listens there`);
  return port;
}

/** A TCP port that was free a moment ago (for services that must keep their port across restarts). */
export function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => res(p));
    });
  });
}
