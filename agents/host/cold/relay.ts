// Starting and stopping the cold path's relay (relay-main.ts) in the driver's network namespace
// (docs/design.md#cold-path, "Across the lightpath"). In the lab the agent runs in the root
// namespace and its guests, storage daemons and lightpath address in the site's; the relay puts
// the disk fetch's TCP where the lightpath is, keeping HTTPS with mutual TLS end to end between
// the agents (the relay carries TLS records only).
//
// One relay process per export (source) and per import (destination), started by pid through
// `ip netns exec` (which execs: the pid is the relay's), stopped by that pid, and gone with the
// agent too (it exits when its stdin, a pipe from the agent, closes).
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Clock } from '../../../src/common/clock.ts';
import type { Logger } from '../../../src/common/log.ts';
import { hostError } from '../errors.ts';

const MAIN = new URL('./relay-main.ts', import.meta.url).pathname;
/** tsx's loader, resolved from this file: the agent's working directory may be anywhere. */
const TSX = import.meta.resolve('tsx');

export type RelayEnd = { type: 'tcp'; host: string; port: number } | { type: 'unix'; path: string };

export interface RelayOptions {
  /** The network namespace to run in (the QEMU driver's `netns`). */
  netns: string;
  listen: RelayEnd;
  to: RelayEnd;
  clock: Clock;
  log: Logger;
  /** How long it may take to listen (default 10 s). */
  startTimeoutMs?: number;
}

export interface Relay {
  pid: number;
  /** The port it listens on (a TCP listen), else 0. */
  port: number;
  stop(): Promise<void>;
}

export const endArg = (e: RelayEnd): string => (e.type === 'unix' ? `unix:${e.path}` : `tcp:${e.host.includes(':') ? `[${e.host}]` : e.host}:${e.port}`);

/** The argv of a relay in `netns`. */
export function relayArgv(netns: string, listen: RelayEnd, to: RelayEnd): string[] {
  return ['ip', 'netns', 'exec', netns, process.execPath, '--import', TSX, MAIN, '--listen', endArg(listen), '--to', endArg(to)];
}

/** Start a relay; resolves once it listens. Throws VMTC_HOST_COLD_RELAY_FAILED (the listen
 *  address not in the namespace, a namespace that does not exist, …) with nothing left running. */
export async function startRelay(o: RelayOptions): Promise<Relay> {
  const argv = relayArgv(o.netns, o.listen, o.to);
  const child: ChildProcess = spawn(argv[0]!, argv.slice(1), { stdio: ['pipe', 'pipe', 'pipe'] });
  const details = { netns: o.netns, listen: endArg(o.listen), to: endArg(o.to) };
  let stderr = '';
  child.stderr!.on('data', (d) => { stderr = (stderr + String(d)).slice(-2000); });
  child.stdin!.on('error', () => undefined);
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  let gone = false;
  void exited.then(() => { gone = true; });
  const stop = async () => {
    if (!gone) {
      child.kill('SIGTERM');
      let timer: { cancel(): void } | undefined;
      await Promise.race([exited, new Promise<void>((r) => { timer = o.clock.setTimeout(() => r(), 5000); })]);
      timer?.cancel();
      if (!gone) {
        child.kill('SIGKILL');
        await exited;
      }
    }
  };
  let timer: { cancel(): void } | undefined;
  try {
    const port = await new Promise<number>((resolve, reject) => {
      let buf = '';
      child.once('error', (e) => reject(hostError('VMTC_HOST_COLD_RELAY_FAILED', { ...details, reason: e.message }, { cause: e })));
      void exited.then(() => reject(hostError('VMTC_HOST_COLD_RELAY_FAILED', { ...details, reason: lastLine(buf) ?? (stderr.trim().slice(-500) || 'exited before listening') })));
      timer = o.clock.setTimeout(() => reject(hostError('VMTC_HOST_COLD_RELAY_FAILED', { ...details, reason: `not listening within ${o.startTimeoutMs ?? 10_000} ms`, stderr: stderr.trim().slice(-500) })), o.startTimeoutMs ?? 10_000);
      child.stdout!.setEncoding('utf8');
      child.stdout!.on('data', (d: string) => {
        buf += d;
        for (const line of buf.split('\n')) {
          if (!line.startsWith('{')) continue;
          try {
            const j = JSON.parse(line) as { event?: string; port?: number };
            if (j.event === 'ready') resolve(Number(j.port ?? 0));
          } catch { /* a partial line */ }
        }
      });
    });
    o.log.info({ ...details, pid: child.pid, port }, 'cold path relay listening');
    return { pid: child.pid!, port, stop };
  } catch (e) {
    await stop();
    throw e;
  } finally {
    timer?.cancel();
  }
}

function lastLine(buf: string): string | undefined {
  for (const line of buf.split('\n').reverse()) {
    try {
      const j = JSON.parse(line) as { event?: string; reason?: string };
      if (j.event === 'error') return j.reason;
    } catch { /* not JSON */ }
  }
  return undefined;
}

/** A short directory of its own for a Unix socket (sun_path is 108 bytes), removed by `remove`. */
export async function socketDir(): Promise<{ dir: string; remove: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), 'vmtc-cold-'));
  return { dir, remove: () => rm(dir, { recursive: true, force: true }) };
}

/** The destination's relays of one import: one per source address, each listening on a Unix
 *  socket the importer's HTTPS requests go to (`socketPath`), connecting from inside `netns`. */
export class FetchRelays {
  private readonly open = new Map<string, Promise<{ path: string; relay: Relay; remove: () => Promise<void> }>>();

  constructor(private readonly o: { netns: string; clock: Clock; log: Logger }) {}

  /** The Unix socket that reaches `host:port` through the namespace (its relay started once). */
  async socketFor(host: string, port: number): Promise<string> {
    const key = `${host}:${port}`;
    let p = this.open.get(key);
    if (!p) {
      p = (async () => {
        const dir = await socketDir();
        const path = join(dir.dir, 'fetch.sock');
        try {
          const relay = await startRelay({ netns: this.o.netns, listen: { type: 'unix', path }, to: { type: 'tcp', host, port }, clock: this.o.clock, log: this.o.log });
          return { path, relay, remove: dir.remove };
        } catch (e) {
          await dir.remove();
          throw e;
        }
      })();
      this.open.set(key, p);
      p.catch(() => this.open.delete(key));
    }
    return (await p).path;
  }

  /** Stop every relay and remove its socket. */
  async close(): Promise<void> {
    const all = [...this.open.values()];
    this.open.clear();
    for (const p of all) {
      const r = await p.catch(() => undefined);
      if (!r) continue;
      await r.relay.stop();
      await r.remove();
    }
  }
}
