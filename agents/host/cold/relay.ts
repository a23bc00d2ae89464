// Starting and stopping the cold path's relay (relay-main.ts) in the driver's network namespace
// (docs/design.md#cold-path, "Across the lightpath"). In the lab the agent runs in the root
// namespace and its guests, storage daemons and lightpath address in the site's; the relay puts
// the disk fetch's TCP where the lightpath is, keeping HTTPS with mutual TLS end to end between
// the agents (the relay carries TLS records only).
//
// One relay process per export (source) and per import (destination), started by pid through
// `ip netns exec` (which execs: the pid is the relay's), stopped by that pid, and gone with the
// agent too (it exits when its stdin, a pipe from the agent, closes).
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Clock } from '../../../src/common/clock.ts';
import type { Logger } from '../../../src/common/log.ts';
import { hostError } from '../errors.ts';
import { startHelper } from '../helper-process.ts';

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
  const details = { netns: o.netns, listen: endArg(o.listen), to: endArg(o.to) };
  const p = await startHelper({
    argv: relayArgv(o.netns, o.listen, o.to),
    clock: o.clock,
    startTimeoutMs: o.startTimeoutMs ?? 10_000,
    failure: (why, cause) => hostError('VMTC_HOST_COLD_RELAY_FAILED', { ...details, ...why }, cause === undefined ? undefined : { cause }),
  });
  const port = Number(p.ready.port ?? 0);
  o.log.info({ ...details, pid: p.pid, port }, 'cold path relay listening');
  return { pid: p.pid, port, stop: () => p.stop(5000) };
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
