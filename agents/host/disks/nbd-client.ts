// A read-only NBD client in the agent's own process, for an export QEMU or qemu-storage-daemon
// already serves (a unix socket, or TCP): the guest-visible bytes of a disk and the extents of its
// metadata contexts (`base:allocation`, `qemu:dirty-bitmap:NAME`) over one connection, without
// spawning `qemu-img` (10-25 ms a spawn on the lab's machines, inside a live move's pause when the
// source reads its dirty chunks: docs/disks.md). The handshake is nbd-handshake.ts, the wire
// format nbd-wire.ts (which names the NBD protocol's sections). Compact requests, no extended
// headers: a read asks for at most 32 MiB, larger ones are split. Several requests are in flight
// at once (16 by default), matched to their replies by handle. A server that breaks the protocol,
// closes or goes silent fails the connection with a coded error, and every wait is bounded by
// `timeoutMs` (docs/contributing.md#requests). Unlike the agent link, a request that times out
// takes the connection with it: the server is stuck, and a late simple reply to a read could not
// even be framed (its length is not in the reply).
import { createConnection, type Socket } from 'node:net';
import type { Clock } from '../../../src/common/clock.ts';
import { VmtcError } from '../../../src/common/errors.ts';
import { hostError } from '../errors.ts';
import { negotiate } from './nbd-handshake.ts';
import {
  appendExtents, ByteReader, CMD, coverageGap, encodeRequest, errnoName, hex, MAX_READ_REQUEST, MAX_STATUS_REQUEST, MAX_STRING,
  maxChunkPayload, nbdFailure, parseBlockStatus, parseChunkHeader, parseErrorPayload, parseHole, readHandle, REPLY_FLAG_DONE,
  REPLY_TYPE, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC, type ChunkError, type Descriptor, type Extent,
} from './nbd-wire.ts';

export type NbdAddress = { path: string } | { host: string; port: number };
export type { Extent as NbdExtent } from './nbd-wire.ts';

export interface NbdClientOptions {
  clock: Clock;
  /** Metadata contexts to select (`base:allocation`, `qemu:dirty-bitmap:NAME`); those the server
   *  agrees to are in `contexts`. */
  metaContexts?: string[];
  /** The bound on the handshake and on each request's reply; default 30 s. */
  timeoutMs?: number;
  /** Requests in flight at once; default 16. */
  maxInFlight?: number;
}

export interface NbdClient {
  size: number;
  /** Transmission flags (NBD_FLAG_*). */
  flags: number;
  /** The metadata contexts the server agreed to: name → id. */
  contexts: Map<string, number>;
  read(offset: number, length: number): Promise<Buffer>;
  /** The extents of `context` covering [offset, offset+length), contiguous, adjacent ones with the
   *  same flags merged (for `qemu:dirty-bitmap:*`, flag 1 is dirty). */
  blockStatus(context: string, offset: number, length: number): Promise<Extent[]>;
  /** NBD_CMD_DISC, then the socket ends; idempotent. */
  close(): Promise<void>;
}

/** The largest read one call may ask for (its buffer is allocated whole). */
const MAX_READ = 1024 * 1024 * 1024;
/** Requests a block status call may need before it gives up on a server that answers in crumbs. */
const MAX_STATUS_ROUNDS = 1 << 16;
const MAX_META_CONTEXTS = 64;

const bad = (field: string, reason: string, extra: Record<string, unknown> = {}) => hostError('VMTC_HOST_BAD_PARAMS', { field, reason, ...extra });

export async function connectNbd(address: NbdAddress, exportName: string, o: NbdClientOptions): Promise<NbdClient> {
  if (typeof o?.clock?.setTimeout !== 'function') throw bad('clock', 'a Clock is required');
  const contexts = o.metaContexts ?? [];
  if (typeof exportName !== 'string' || Buffer.byteLength(exportName) > MAX_STRING) throw bad('exportName', `a string of at most ${MAX_STRING} bytes`);
  if (!Array.isArray(contexts) || contexts.length > MAX_META_CONTEXTS || contexts.some((c) => typeof c !== 'string' || !c || Buffer.byteLength(c) > MAX_STRING)) throw bad('metaContexts', `at most ${MAX_META_CONTEXTS} names of 1..${MAX_STRING} bytes`);
  const a = address as Partial<{ path: unknown; host: unknown; port: unknown }> | null;
  const unix = typeof a?.path === 'string' && a.path !== '';
  if (!unix && !(typeof a?.host === 'string' && a.host && Number.isInteger(a.port) && (a.port as number) >= 1 && (a.port as number) <= 65535)) throw bad('address', 'a unix socket path, or a host and a port 1..65535');
  const timeoutMs = o.timeoutMs ?? 30_000;
  const maxInFlight = o.maxInFlight ?? 16;
  if (!(timeoutMs > 0 && timeoutMs <= 0x7fffffff)) throw bad('timeoutMs', 'a positive number of milliseconds, under 2^31', { timeoutMs });
  if (!Number.isInteger(maxInFlight) || maxInFlight < 1 || maxInFlight > 1024) throw bad('maxInFlight', '1..1024', { maxInFlight });
  const to: NbdAddress = unix ? { path: a!.path as string } : { host: a!.host as string, port: a!.port as number };
  const server = 'path' in to ? to.path : `${to.host}:${to.port}`;
  const c = new Connection(o.clock, timeoutMs, maxInFlight, server);
  const deadline = o.clock.setTimeout(() => c.fail(nbdFailure('the handshake did not finish in time', { server, timeoutMs })), timeoutMs);
  try {
    await c.open(to);
    await c.handshake(exportName, contexts);
  } catch (e) {
    const err = e instanceof VmtcError ? e : nbdFailure(`the connection failed: ${(e as Error).message}`, { server }, e);
    c.fail(err);
    throw err;
  } finally {
    deadline.cancel();
  }
  c.startReplies();
  return c;
}

interface Pending {
  handle: number;
  cmd: number;
  offset: number;
  length: number;
  /** READ: where the bytes go; `pieces` are the chunks received, to check they cover it. */
  dst?: Buffer;
  pos?: number;
  pieces: { offset: number; length: number }[];
  /** BLOCK_STATUS: the context asked for and its descriptors once received. */
  contextId?: number;
  descriptors?: Descriptor[];
  error?: Error;
  timer?: { cancel(): void };
  resolve: () => void;
  reject: (e: Error) => void;
}

class Connection implements NbdClient {
  size = 0;
  flags = 0;
  contexts = new Map<string, number>();
  private socket: Socket | undefined;
  private readonly reader = new ByteReader();
  private readonly pending = new Map<number, Pending>();
  private readonly slotWaiters: { go: () => void; stop: (e: Error) => void }[] = [];
  private inFlight = 0;
  private nextHandle = 1;
  private readMax = MAX_READ_REQUEST;
  private broken: Error | undefined;
  private closing: Promise<void> | undefined;
  private closed: Promise<void> | undefined;

  constructor(private readonly clock: Clock, private readonly timeoutMs: number, private readonly maxInFlight: number, private readonly server: string) {}

  open(address: NbdAddress): Promise<void> {
    const s = createConnection('path' in address ? { path: address.path } : { host: address.host, port: address.port });
    this.socket = s;
    this.closed = new Promise((r) => s.once('close', () => r()));
    s.on('data', (b: Buffer) => this.reader.push(b));
    s.on('error', (e) => this.fail(nbdFailure(`the connection failed: ${e.message}`, { server: this.server }, e)));
    s.on('close', () => this.fail(nbdFailure('the server closed the connection', { server: this.server })));
    if (!('path' in address)) s.setNoDelay(true);
    return new Promise((resolve, reject) => {
      s.once('connect', () => resolve());
      s.once('close', () => reject(this.broken));
    });
  }

  async handshake(exportName: string, queries: readonly string[]): Promise<void> {
    const n = await negotiate(this.reader, (b) => this.write(b), exportName, queries, this.server);
    this.size = n.size;
    this.flags = n.flags;
    this.contexts = n.contexts;
    this.readMax = n.readMax;
  }

  startReplies(): void {
    this.replies().catch((e: Error) => this.fail(e));
  }

  /** The transmission phase's reply stream: simple replies and structured chunks by handle. */
  private async replies(): Promise<never> {
    for (;;) {
      const magic = (await this.reader.read(4)).readUInt32BE(0);
      if (magic === SIMPLE_REPLY_MAGIC) await this.simpleReply();
      else if (magic === STRUCTURED_REPLY_MAGIC) await this.chunk();
      else throw nbdFailure('a reply with a wrong magic', { server: this.server, magic: hex(magic) });
    }
  }

  private request(handle: number): Pending {
    const p = this.pending.get(handle);
    if (!p) throw nbdFailure('a reply to a request the client did not send (or that already ended)', { server: this.server, handle });
    return p;
  }

  /** "Simple reply message": an error, or for a read, its data (a server may send one even though
   *  structured replies were negotiated). */
  private async simpleReply(): Promise<void> {
    const h = await this.reader.read(12);
    const p = this.request(readHandle(h, 4));
    const errno = h.readUInt32BE(0);
    if (errno) p.error = this.serverError(p, { errno, message: '' });
    else if (p.cmd === CMD.READ) {
      await this.reader.readInto(p.dst!, p.pos!, p.length);
      p.pieces.push({ offset: p.offset, length: p.length });
    } else p.error = nbdFailure('a simple reply without the extents asked for', { server: this.server });
    this.finish(p);
  }

  /** One structured reply chunk ("Structured reply types"). */
  private async chunk(): Promise<void> {
    const h = parseChunkHeader(await this.reader.read(16));
    const p = this.request(h.handle);
    const { type, length } = h;
    const isError = (type & 0x8000) !== 0;
    const fits = type === REPLY_TYPE.NONE || isError || (p.cmd === CMD.READ ? type === REPLY_TYPE.OFFSET_DATA || type === REPLY_TYPE.OFFSET_HOLE : type === REPLY_TYPE.BLOCK_STATUS);
    if (!fits) throw nbdFailure('a chunk type that does not answer the request', { server: this.server, type: hex(type), cmd: p.cmd });
    if (length > maxChunkPayload(type, p.length)) throw nbdFailure('a chunk longer than its type and request allow', { server: this.server, type: hex(type), length });
    if (type === REPLY_TYPE.NONE && !(h.flags & REPLY_FLAG_DONE)) throw nbdFailure('NBD_REPLY_TYPE_NONE not as the last chunk', { server: this.server });
    if (type === REPLY_TYPE.OFFSET_DATA) {
      if (length <= 8) throw nbdFailure('a data chunk without data', { server: this.server, length });
      const at = Number((await this.reader.read(8)).readBigUInt64BE(0));
      this.piece(p, at, length - 8);
      await this.reader.readInto(p.dst!, p.pos! + (at - p.offset), length - 8);
    } else if (type === REPLY_TYPE.OFFSET_HOLE) {
      if (length !== 12) throw nbdFailure('a hole chunk of the wrong length', { server: this.server, length });
      const hole = parseHole(await this.reader.read(12));
      this.piece(p, hole.offset, hole.length);
      p.dst!.fill(0, p.pos! + (hole.offset - p.offset), p.pos! + (hole.offset - p.offset) + hole.length);
    } else if (type === REPLY_TYPE.BLOCK_STATUS) {
      const s = parseBlockStatus(await this.reader.read(length));
      if (![...this.contexts.values()].includes(s.contextId)) throw nbdFailure('block status of a context the client did not select', { server: this.server, contextId: s.contextId });
      if (s.contextId === p.contextId) {
        if (p.descriptors) throw nbdFailure('two block status chunks for one context', { server: this.server, contextId: s.contextId });
        p.descriptors = s.descriptors;
      }
    } else if (isError) {
      const e = parseErrorPayload(type, await this.reader.read(length));
      p.error ??= this.serverError(p, e);
    }
    if (h.flags & REPLY_FLAG_DONE) this.finish(p);
  }

  /** A data or hole chunk must lie within its request and not be empty. */
  private piece(p: Pending, offset: number, length: number): void {
    if (length <= 0 || offset < p.offset || offset + length > p.offset + p.length) throw nbdFailure('a chunk outside its request', { server: this.server, offset, length, request: { offset: p.offset, length: p.length } });
    if (p.pieces.length >= 1 << 17) throw nbdFailure('too many chunks for one read', { server: this.server });
    p.pieces.push({ offset, length });
  }

  private serverError(p: Pending, e: ChunkError): Error {
    const details = { server: this.server, errno: errnoName(e.errno), message: e.message, offset: e.offset ?? p.offset, length: p.length };
    return p.cmd === CMD.READ
      ? hostError('VMTC_HOST_DISK_UNREADABLE', { nbd: `the server could not read: ${details.errno}`, ...details })
      : nbdFailure(`the server refused block status: ${details.errno}`, details);
  }

  /** The request's last chunk arrived: settle it, checked. */
  private finish(p: Pending): void {
    this.pending.delete(p.handle);
    p.timer?.cancel();
    this.release();
    if (p.error) return p.reject(p.error);
    if (p.cmd === CMD.READ) {
      const gap = coverageGap(p.pieces, p.offset, p.length);
      return gap ? p.reject(nbdFailure(`a read's chunks do not cover it: ${gap}`, { server: this.server, offset: p.offset, length: p.length })) : p.resolve();
    }
    if (!p.descriptors) return p.reject(nbdFailure('block status ended without the context asked for', { server: this.server, contextId: p.contextId }));
    p.resolve();
  }

  private async send(p: Omit<Pending, 'handle' | 'resolve' | 'reject' | 'pieces'>): Promise<Pending> {
    await this.slot();
    return new Promise<Pending>((resolve, reject) => {
      if (this.broken) {
        this.release();
        return reject(this.broken);
      }
      const handle = this.nextHandle;
      this.nextHandle = (this.nextHandle % 0xffffffff) + 1;
      const entry: Pending = { ...p, handle, pieces: [], resolve: () => resolve(entry), reject };
      this.pending.set(handle, entry);
      entry.timer = this.clock.setTimeout(() => this.fail(nbdFailure('a request got no reply in time', { server: this.server, cmd: p.cmd, offset: p.offset, length: p.length, timeoutMs: this.timeoutMs })), this.timeoutMs);
      this.write(encodeRequest(p.cmd, handle, p.offset, p.length));
    });
  }

  /** At most maxInFlight requests are sent and unanswered; the rest wait here. The wait is bounded:
   *  each request in flight is answered, or its timer fails the connection and every waiter. */
  private slot(): Promise<void> {
    if (this.closing) return Promise.reject(nbdFailure('the client is closed', { server: this.server }));
    if (this.broken) return Promise.reject(this.broken);
    if (this.inFlight < this.maxInFlight) {
      this.inFlight++;
      return Promise.resolve();
    }
    return new Promise((go, stop) => this.slotWaiters.push({ go, stop }));
  }

  private release(): void {
    const next = this.slotWaiters.shift();
    if (next) next.go();
    else this.inFlight--;
  }

  private checkRange(offset: number, length: number, max: number): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) throw bad('offset', 'offset and length are non-negative integers', { offset, length });
    if (offset + length > this.size) throw bad('length', 'the range ends beyond the export', { offset, length, size: this.size });
    if (length > max) throw bad('length', `at most ${max} bytes at once`, { length });
  }

  async read(offset: number, length: number): Promise<Buffer> {
    this.checkRange(offset, length, MAX_READ);
    const out = Buffer.allocUnsafe(length);
    const parts: Promise<Pending>[] = [];
    for (let at = offset; at < offset + length; at += this.readMax) {
      parts.push(this.send({ cmd: CMD.READ, offset: at, length: Math.min(this.readMax, offset + length - at), dst: out, pos: at - offset }));
    }
    await Promise.all(parts);
    return out;
  }

  async blockStatus(context: string, offset: number, length: number): Promise<Extent[]> {
    const contextId = this.contexts.get(context);
    if (contextId === undefined) throw bad('context', 'the server did not agree to this metadata context', { context, agreed: [...this.contexts.keys()] });
    this.checkRange(offset, length, Number.MAX_SAFE_INTEGER);
    const out: Extent[] = [];
    const end = offset + length;
    // A server may describe less than was asked ("Metadata querying"): ask again from where it stopped.
    for (let at = offset, n = 0; at < end; n++) {
      if (n >= MAX_STATUS_ROUNDS) throw nbdFailure('block status made too little progress', { server: this.server, at, end });
      const p = await this.send({ cmd: CMD.BLOCK_STATUS, offset: at, length: Math.min(MAX_STATUS_REQUEST, end - at), contextId });
      at = appendExtents(out, at, end, p.descriptors!);
    }
    return out;
  }

  close(): Promise<void> {
    this.closing ??= (async () => {
      if (!this.broken && this.socket) {
        // "Terminating the transmission phase": NBD_CMD_DISC has no reply; the server closes.
        this.write(encodeRequest(CMD.DISC, 0, 0, 0));
        this.socket.end();
        let timer: { cancel(): void } | undefined;
        await Promise.race([this.closed, new Promise<void>((r) => { timer = this.clock.setTimeout(r, this.timeoutMs); })]);
        timer?.cancel();
      }
      this.fail(nbdFailure('the client is closed', { server: this.server }));
    })();
    return this.closing;
  }

  private write(b: Buffer): void {
    if (!this.broken) this.socket?.write(b);
  }

  /** The connection is over: every request waiting or in flight fails with `e`. */
  fail(e: Error): void {
    if (this.broken) return;
    this.broken = e;
    this.reader.fail(e);
    for (const p of this.pending.values()) {
      p.timer?.cancel();
      p.reject(e);
    }
    this.pending.clear();
    for (const w of this.slotWaiters.splice(0)) w.stop(e);
    this.socket?.destroy();
  }
}
