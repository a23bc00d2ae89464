// The follow relay's connections to the store (nbd-relay.ts; docs/disks.md#following). The relay
// negotiates with the store as an NBD client when it starts, before it says it is ready: fixed
// newstyle, NBD_OPT_STRUCTURED_REPLY, NBD_OPT_GO for the export (no extended headers, no metadata
// contexts), keeping what the store said (nbd-relay-handshake.ts StoreExport). That connection
// waits, idle, for the relay's first client, which then crosses no round trip of the path to open
// its node. Any later client (or the first, if the idle connection dropped) gets a new connection,
// negotiated when it asks for the export, with the NBD client's handshake (nbd-handshake.ts).
import type { Socket } from 'node:net';
import type { Clock } from '../../../src/common/clock.ts';
import type { Logger } from '../../../src/common/log.ts';
import { encodeDisc } from './nbd-relay-frames.ts';
import type { StoreExport } from './nbd-relay-handshake.ts';
import type { RelayCounters } from './nbd-relay-plumbing.ts';
import { negotiate } from './nbd-handshake.ts';
import { ByteReader, nbdFailure } from './nbd-wire.ts';

/** Replies to one option the relay reads at most (the store sends one or two NBD_REP_INFO). */
const MAX_OPTION_REPLIES = 64;

/** The relay's handshake with the store: the NBD client's (nbd-handshake.ts), without metadata
 *  contexts; a coded error (VMTC_HOST_DISK_TOOL_FAILED, `details.nbd` says what) when the store
 *  is no fixed newstyle NBD server or refuses the export (an unknown export too: for the relay
 *  that is a store it cannot use, not a disk not found). */
export async function negotiateStore(reader: ByteReader, write: (b: Buffer) => void, name: string, server: string): Promise<StoreExport> {
  const n = await negotiate(reader, write, name, [], server, MAX_OPTION_REPLIES).catch((e: unknown) => {
    const d = (e as { details?: { reply?: string; option?: number; message?: string } }).details;
    if (d?.reply) throw nbdFailure(`the store refused option ${d.option} for export ${JSON.stringify(name)}: ${d.reply}`, { server, export: name, option: d.option, reply: d.reply, message: d.message });
    throw e;
  });
  return { name, size: n.size, flags: n.flags, structured: n.structured, ...(n.blockSize ? { blockSize: n.blockSize } : {}) };
}

/** Two handshakes with the store found the same export (a client told one is served by the other). */
export function sameExport(a: StoreExport, b: StoreExport): boolean {
  return a.name === b.name && a.size === b.size && a.flags === b.flags && a.structured === b.structured;
}

export interface StoreConn { socket: Socket; export: StoreExport }
/** A connection being negotiated; abort() fails it (its socket destroyed). */
export interface StoreDial { done: Promise<StoreConn>; abort(why: string): void }

export interface StoreLinkOptions {
  /** Opens a new connection to the store. */
  open: () => Socket;
  exportName: string;
  /** The store's address, for logs and errors. */
  server: string;
  clock: Clock;
  log: Logger;
  counters: RelayCounters;
  /** The bound on one handshake with the store. */
  handshakeTimeoutMs: number;
  /** How long a discarded connection may take to close. */
  closeWaitMs: number;
}

export class StoreLink {
  private idle: Socket | undefined;
  private readonly idleListeners: [event: 'data' | 'end' | 'close' | 'error', fn: () => void][] = [];

  constructor(private readonly o: StoreLinkOptions) {}

  /** Negotiate a new connection (bounded by handshakeTimeoutMs). */
  dial(): StoreDial {
    const { o } = this;
    let s: Socket;
    try {
      s = o.open();
    } catch (e) {
      return { done: Promise.reject(nbdFailure(`cannot connect to the store: ${(e as Error).message}`, { server: o.server }, e)), abort: () => undefined };
    }
    const reader = new ByteReader(1024 * 1024);
    const onData = (b: Buffer) => reader.push(b);
    const onError = (e: Error) => reader.fail(nbdFailure(`the store cannot be reached: ${e.message}`, { server: o.server }, e));
    const onClose = () => reader.fail(nbdFailure('the store closed the connection during the handshake', { server: o.server }));
    s.on('data', onData);
    s.on('error', onError);
    s.on('end', onClose); // (half-open sockets: an end is not a close)
    s.on('close', onClose);
    s.setNoDelay?.(true);
    const timer = o.clock.setTimeout(() => reader.fail(nbdFailure(`the store's handshake did not finish within ${o.handshakeTimeoutMs} ms`, { server: o.server })), o.handshakeTimeoutMs);
    const done = negotiateStore(reader, (b) => void (s.destroyed || s.write(b)), o.exportName, o.server).then(
      (exp) => {
        timer.cancel();
        s.off('data', onData);
        s.off('error', onError);
        s.off('end', onClose);
        s.off('close', onClose);
        // (A store sends nothing after NBD_OPT_GO's ACK until a request comes.) Whoever takes the
        // socket adds its own listeners in this same turn; an error before that is theirs to see.
        s.on('error', () => undefined);
        if (s.destroyed) throw nbdFailure('the store closed the connection after the handshake', { server: o.server });
        o.counters.storeConnections++;
        return { socket: s, export: exp };
      },
      (e: unknown) => {
        timer.cancel();
        s.destroy();
        throw e;
      },
    );
    return { done, abort: (why) => reader.fail(nbdFailure(why, { server: o.server })) };
  }

  /** The relay's start: negotiate the connection its first client will use, and keep it idle. */
  async start(): Promise<StoreExport> {
    const c = await this.dial().done;
    this.keep(c.socket);
    return c.export;
  }

  /** A connection negotiated at the start waits for its client. */
  get idleReady(): boolean {
    return this.idle !== undefined;
  }

  /** The idle connection, if it is still there (the link keeps none after this). */
  take(): Socket | undefined {
    const s = this.idle;
    if (!s) return undefined;
    this.idle = undefined;
    for (const [ev, fn] of this.idleListeners.splice(0)) s.off(ev, fn);
    return s.destroyed ? undefined : s;
  }

  /** The relay closes: the idle connection is discarded, and this waits until it closed. */
  async close(waitMs: number): Promise<void> {
    const s = this.take();
    if (s) await this.discard(s, waitMs);
  }

  /** A negotiated connection no client will use: NBD_CMD_DISC, a half-close, and the store's
   *  close awaited (cut after `waitMs`), as a client's connection ends (nbd-relay-conn.ts). */
  discard(s: Socket, waitMs = this.o.closeWaitMs): Promise<void> {
    s.on('data', () => undefined);
    s.on('error', () => undefined);
    const closed = new Promise<void>((r) => (s.closed ? r() : s.once('close', () => r())));
    s.end(encodeDisc());
    if (waitMs <= 0) s.destroy();
    const timer = waitMs > 0 ? this.o.clock.setTimeout(() => s.destroy(), waitMs) : undefined;
    return closed.then(() => timer?.cancel());
  }

  private keep(s: Socket): void {
    this.idle = s;
    const drop = (why: string, level: 'info' | 'warn') => () => {
      if (this.idle !== s) return;
      this.take();
      s.on('error', () => undefined);
      s.destroy();
      this.o.log[level]({ server: this.o.server }, `nbd relay: the idle store connection dropped (${why}); the next client negotiates a new one`);
    };
    this.idleListeners.push(
      ['data', drop('the store sent bytes before any request', 'warn')],
      ['end', drop('the store closed it', 'info')],
      ['close', drop('closed', 'info')],
      ['error', drop('a socket error', 'info')],
    );
    for (const [ev, fn] of this.idleListeners) s.on(ev, fn);
  }
}
