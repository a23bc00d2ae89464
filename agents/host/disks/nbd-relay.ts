// The follow relay (docs/disks.md#following): a local NBD proxy between a running VM's QEMU and
// a replica's store across the path, which can release the VM from waiting on the path.
//
// During a live move with a replica, the source VM's QEMU mirrors every guest write into the
// store (qemu-follow.ts: an active write-blocking mirror into an NBD client node). When QEMU
// stops the VM for the migration's end it drains every request in flight and flushes every node;
// through a relay that only forwards, both wait a round trip of the path inside the VM's pause.
// This relay speaks NBD on both sides (nbd-relay-session.ts, nbd-relay-conn.ts, the table in
// nbd-relay-frames.ts):
//   - it negotiates with the store when it starts (nbd-relay-store.ts) and answers its client's
//     handshake itself (nbd-relay-handshake.ts): opening a node holds QEMU's main loop until its
//     handshake ends, and here that crosses no round trip of the path;
//   - it hides NBD_FLAG_SEND_FLUSH and NBD_FLAG_SEND_FUA, so QEMU never sends a flush (the
//     store's daemon flushes as it closes, before the store records anything);
//   - release() (the VM stopped): every write-like request in flight is answered at once, its
//     real reply dropped; later ones are answered at once too and sent behind a barrier (each
//     after the server answered everything before it), so overlapping writes stay in order;
//   - a client that leaves (or the relay closing) gets what it sent forwarded, then
//     NBD_CMD_DISC, then a half-close: the store's daemon processes every write, never a reset.
// Whether the store got every write is not the relay's to prove: the digests at the pause do
// (docs/disks.md#incremental-digests); a write answered early that failed is logged.
//
// startNbdProxy runs it in-process (tests); nbd-relay-main.ts is the process the agent starts in
// the driver's network namespace (startFollowRelay, below).
import { lstat, mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Clock } from '../../../src/common/clock.ts';
import { silentLogger, type Logger } from '../../../src/common/log.ts';
import { hostError } from '../errors.ts';
import { startHelper } from '../helper-process.ts';
import { newCounters, type ConnState, type RelayCounters } from './nbd-relay-plumbing.ts';
import { RelaySession } from './nbd-relay-session.ts';
import { StoreLink } from './nbd-relay-store.ts';

export type ProxyListen = { path: string } | { host: string; port: number };
export type ProxyTarget = ProxyListen | (() => net.Socket);

export interface NbdProxyOptions {
  listen: ProxyListen;
  /** The store's NBD server: an address, or a function that opens a new connection to it. */
  connect: ProxyTarget;
  /** The store's export: negotiated before startNbdProxy resolves, and the only name the relay's
   *  clients may ask for. */
  exportName: string;
  clock: Clock;
  logger?: Logger;
  /** How long a server may take to close after NBD_CMD_DISC (and a client after the server),
   *  and close() at most, before sockets are cut (default 60 s). */
  closeWaitMs?: number;
  /** The bound on one handshake with the store (default 30 s). */
  handshakeTimeoutMs?: number;
}

export interface NbdProxyStats extends RelayCounters {
  released: boolean;
  /** Connections accepted so far. */
  connections: number;
  /** The store connection negotiated at the start is still there, waiting for a client. */
  storeIdle: boolean;
  open: ConnState[];
}

export interface NbdProxy {
  /** Where it listens (a TCP listen's port as bound). */
  address: ProxyListen;
  /** The VM stopped: stop making it wait for the path (synchronous). */
  release(): void;
  /** Stop listening; each connection forwards what it has, sends NBD_CMD_DISC, half-closes and
   *  waits for the server to close (an idle store connection no client took, too); cut after
   *  `timeoutMs` (default closeWaitMs). */
  close(opts?: { timeoutMs?: number }): Promise<void>;
  stats(): NbdProxyStats;
}

export const DEFAULT_CLOSE_WAIT_MS = 60_000;
export const DEFAULT_HANDSHAKE_TIMEOUT_MS = 30_000;

/** Start the relay: negotiate with the store (a store that cannot be reached or refuses the
 *  export: VMTC_HOST_DISK_TOOL_FAILED, `details.reason` says why), then listen. */
export async function startNbdProxy(o: NbdProxyOptions): Promise<NbdProxy> {
  const log = o.logger ?? silentLogger();
  const closeWaitMs = o.closeWaitMs ?? DEFAULT_CLOSE_WAIT_MS;
  const counters = newCounters();
  const conns = new Set<RelaySession>();
  let released = false;
  let accepted = 0;
  let closing: Promise<void> | undefined;
  let late = false;
  const open = (): net.Socket => {
    const c = o.connect;
    if (typeof c === 'function') return c();
    return 'path' in c ? net.connect({ path: c.path, allowHalfOpen: true }) : net.connect({ host: c.host, port: c.port, allowHalfOpen: true });
  };
  const to = o.connect;
  const storeAddress = typeof to === 'function' ? 'a connection the caller opens' : 'path' in to ? to.path : `${to.host}:${to.port}`;
  const link = new StoreLink({ open, exportName: o.exportName, server: storeAddress, clock: o.clock, log, counters, handshakeTimeoutMs: o.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS, closeWaitMs });
  const store = await link.start().catch((e: Error & { details?: { nbd?: string } }) => {
    throw hostError('VMTC_HOST_DISK_TOOL_FAILED', { tool: 'nbd-relay', store: storeAddress, export: o.exportName, reason: `cannot negotiate with the store: ${e.details?.nbd ?? e.message}` }, { cause: e });
  });
  log.info({ store: storeAddress, export: o.exportName, size: store.size, flags: store.flags, structured: store.structured }, 'nbd relay: negotiated with the store');
  const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (client) => {
    if (closing) return void client.destroy();
    const id = ++accepted;
    const conn = new RelaySession(client, { id, store, link, released: () => released, counters, clock: o.clock, log, closeWaitMs });
    conns.add(conn);
    void conn.done.then(() => conns.delete(conn));
    client.resume();
    log.debug({ conn: id }, 'nbd relay: client connected');
  });
  server.on('error', (e) => log.warn({ err: e.message }, 'nbd relay: listener error'));
  if ('path' in o.listen) {
    // A socket left by a relay that was killed (only a socket: never another kind of file).
    const st = await lstat(o.listen.path).catch(() => undefined);
    if (st?.isSocket()) await rm(o.listen.path, { force: true });
  }
  await new Promise<void>((resolve, reject) => {
    const onError = (e: Error) => {
      void link.close(0);
      reject(hostError('VMTC_HOST_DISK_TOOL_FAILED', { tool: 'nbd-relay', listen: o.listen, reason: e.message }, { cause: e }));
    };
    server.once('error', onError);
    const done = () => {
      server.off('error', onError);
      resolve();
    };
    if ('path' in o.listen) server.listen(o.listen.path, done);
    else server.listen({ host: o.listen.host, port: o.listen.port }, done);
  });
  const bound = server.address();
  const address: ProxyListen = 'path' in o.listen ? o.listen : { host: o.listen.host, port: typeof bound === 'object' && bound ? bound.port : o.listen.port };

  return {
    address,
    release() {
      if (released) return;
      released = true;
      log.info({ open: conns.size }, 'nbd relay: released (requests that write are answered at once from now on)');
      for (const c of conns) c.release();
    },
    close(opts = {}) {
      const cutAll = () => {
        late = true;
        for (const c of conns) c.cut('the relay closed and the connection did not end in time');
      };
      // Each call bounds the wait (a later call with a shorter bound cuts sooner).
      const limit = opts.timeoutMs ?? closeWaitMs;
      const timer = limit > 0 ? o.clock.setTimeout(cutAll, limit) : undefined;
      if (limit <= 0) cutAll();
      closing ??= (async () => {
        // The listener's close event waits for every connection: not awaited before they end.
        const unlistened = new Promise<void>((r) => server.close(() => r()));
        const all = [...conns];
        for (const c of all) c.shutdown();
        await Promise.all([...all.map((c) => c.done), link.close(limit)]);
        await unlistened;
        log.info({ ...counters, late }, 'nbd relay: closed');
      })();
      return closing.finally(() => timer?.cancel());
    },
    stats: () => ({ ...counters, requests: { ...counters.requests }, released, connections: accepted, storeIdle: link.idleReady, open: [...conns].map((c) => c.state()) }),
  };
}

// ---- the relay as a process, started by the agent ----------------------------------------

const MAIN = new URL('./nbd-relay-main.ts', import.meta.url).pathname;
/** tsx's loader, resolved from this file: the agent's working directory may be anywhere. */
const TSX = import.meta.resolve('tsx');
/** sun_path's size less room for the terminating NUL (Linux: 108 bytes). */
const SUN_PATH_MAX = 107;

export interface FollowRelay {
  pid: number;
  server: { type: 'unix'; path: string };
  exportName: string;
  /** SIGUSR1: the relay releases the VM from waiting on the path (synchronous). */
  release(): void;
  /** SIGTERM: the relay forwards what it holds, says NBD_CMD_DISC and waits for the store to
   *  close; SIGKILL if it has not exited after `stopTimeoutMs` (default 60 s). */
  close(): Promise<void>;
}

/** The argv of the relay process (in `netns` when given). */
export function followRelayArgv(listen: string, remote: { host: string; port: number; exportName: string }, netns?: string): string[] {
  const host = remote.host.includes(':') ? `[${remote.host}]` : remote.host;
  const argv = [process.execPath, '--import', TSX, MAIN, '--listen', `unix:${listen}`, '--to', `tcp:${host}:${remote.port}`, '--export', remote.exportName];
  return netns ? ['ip', 'netns', 'exec', netns, ...argv] : argv;
}

/** Start the follow relay for the store's export `remote`: a process (in `netns`, where the
 *  lightpath address is) that negotiates with the store, then listens on a unix socket in `dir`
 *  (or a short directory of its own when `dir` is too deep for sun_path). The export name is the
 *  store's: the relay does not rename it. Throws VMTC_HOST_DISK_TOOL_FAILED (`details.tool`
 *  "nbd-relay", `details.reason`) with nothing left running when it cannot start: it cannot
 *  listen, or the store cannot be reached or refuses the export. */
export async function startFollowRelay(o: {
  remote: { host: string; port: number; exportName: string };
  dir: string;
  clock: Clock;
  netns?: string;
  logger: Logger;
  startTimeoutMs?: number;
  stopTimeoutMs?: number;
}): Promise<FollowRelay> {
  const own = Buffer.byteLength(join(o.dir, 'nbd-relay.sock')) >= SUN_PATH_MAX ? await mkdtemp(join(tmpdir(), 'vmtc-nbdr-')) : undefined;
  const path = join(own ?? o.dir, 'nbd-relay.sock');
  const details = { tool: 'nbd-relay', ...(o.netns ? { netns: o.netns } : {}), listen: path, remote: `${o.remote.host}:${o.remote.port}` };
  let p;
  try {
    p = await startHelper({
      argv: followRelayArgv(path, o.remote, o.netns),
      clock: o.clock,
      startTimeoutMs: o.startTimeoutMs ?? 10_000,
      failure: (why, cause) => hostError('VMTC_HOST_DISK_TOOL_FAILED', { ...details, ...why }, cause === undefined ? undefined : { cause }),
      onStderrLine: (line) => relayLogLine(o.logger, line),
    });
  } catch (e) {
    if (own) await rm(own, { recursive: true, force: true });
    throw e;
  }
  const helper = p;
  o.logger.info({ ...details, pid: helper.pid }, 'follow relay listening');
  let closing: Promise<void> | undefined;
  return {
    pid: helper.pid,
    server: { type: 'unix', path },
    exportName: o.remote.exportName,
    release() {
      if (!helper.signal('SIGUSR1')) o.logger.warn({ pid: helper.pid }, 'follow relay: released after it had exited');
    },
    close() {
      closing ??= (async () => {
        await helper.stop(o.stopTimeoutMs ?? DEFAULT_CLOSE_WAIT_MS);
        if (own) await rm(own, { recursive: true, force: true });
      })();
      return closing;
    },
  };
}

/** The relay process logs pino JSON lines on stderr: warnings and errors go to the agent's log. */
function relayLogLine(log: Logger, line: string): void {
  let j: { level?: number; msg?: string } | undefined;
  try {
    j = JSON.parse(line) as { level?: number; msg?: string };
  } catch { /* not JSON: a crash's trace */ }
  const level = j?.level ?? 50;
  const fields = { relay: j ?? line.slice(0, 2000) };
  if (level >= 50) log.error(fields, `follow relay: ${j?.msg ?? 'output'}`);
  else if (level >= 40) log.warn(fields, `follow relay: ${j?.msg ?? 'output'}`);
  else log.debug(fields, `follow relay: ${j?.msg ?? 'output'}`);
}
