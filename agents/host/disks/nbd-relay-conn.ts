// One connection of the follow relay (nbd-relay.ts) in the transmission phase: the VM's QEMU NBD
// client on one side, a connection the relay negotiated with the store's NBD server on the other
// (the client's handshake was the relay's own: nbd-relay-session.ts). Bytes pass through in
// order; both streams are parsed just enough to follow the protocol (NBD protocol, proto.md:
// "Request message", "Simple reply message", "Structured reply chunk message"): requests in
// flight are tracked by cookie and, after release, write-like ones are answered at once and their
// real replies dropped (the table in nbd-relay-frames.ts). Malformed input from either side cuts
// both sockets; nothing here throws into the event loop.
import type { Socket } from 'node:net';
import type { Clock } from '../../../src/common/clock.ts';
import type { Logger } from '../../../src/common/log.ts';
import {
  CHUNK_HEADER, classOf, CMD, CMD_NAMES, encodeDisc, GOODBYE, handlingOf, mayForward, parseRequestHeader, releasedInFlight,
  REQUEST_HEADER, requestPayload, SIMPLE_REPLY_HEADER, SIMPLE_REPLY_MAGIC, type Forward, type RequestClass,
} from './nbd-relay-frames.ts';
import { Bytes, Valve, type ConnState, type RelayCounters } from './nbd-relay-plumbing.ts';
import { encodeSimpleReply } from './nbd-server-wire.ts';
import { maxChunkPayload, REPLY_FLAG_DONE, STRUCTURED_REPLY_MAGIC } from './nbd-wire.ts';

interface Entry {
  cookie: bigint;
  type: number;
  cls: RequestClass;
  length: number;
  /** Answered by the relay: the real reply is dropped. */
  early: boolean;
  /** Its payload is all sent (a streamed write's may still be coming). */
  sent: boolean;
  /** Released while its payload was still coming: answered once it is sent. */
  answerWhenSent: boolean;
  /** Part of the server's reply reached the client: it keeps its real reply. */
  replying: boolean;
  error?: number;
}

interface Queued { buf: Buffer; forward: Forward; entry?: Entry }

type ClientState =
  | { k: 'request' } | { k: 'ignore' }
  | { k: 'payload'; entry: Entry; left: number; stream: boolean; parts: Buffer[]; early: boolean; forward: Forward };
type ServerState =
  | { k: 'reply' } | { k: 'payload'; entry: Entry; left: number; drop: boolean; done: boolean; error: number };

export interface RelayConnDeps {
  id: number;
  released: () => boolean;
  counters: RelayCounters;
  clock: Clock;
  log: Logger;
  closeWaitMs: number;
  /** Structured replies were agreed (the store's replies may be chunks). */
  structured: boolean;
}

/** Requests queued behind the barrier beyond this many bytes pause the client. */
const QUEUE_CAP = 64 * 1024 * 1024;

export class RelayConn {
  readonly done: Promise<void>;
  private phase: ConnState['phase'] = 'transmission';
  private cState: ClientState = { k: 'request' };
  private sState: ServerState = { k: 'reply' };
  private readonly sin = new Bytes();
  private readonly clientValve: Valve;
  private readonly serverValve: Valve;
  private readonly inflight = new Map<bigint, Entry>();
  private readonly outstanding = { all: 0, early: 0 };
  private readonly queue: Queued[] = [];
  private queuedBytes = 0;
  /** In the middle of a server reply passed to the client: the relay's own replies wait. */
  private replyOpen = false;
  private readonly injected: Buffer[] = [];
  private discSeen = false;
  private discSent = false;
  private closing = false;
  private serverEnded = false;
  private clientGone = false;
  private closed = { client: false, server: false };
  private timer: { cancel(): void } | undefined;
  private resolveDone!: () => void;
  private waitingDrain = { client: false, server: false };

  /** `cin`: what the client sent after its handshake and the relay has not read yet. Built in
   *  the turn the handshake ended: the client's next data events come to these listeners. */
  constructor(
    private readonly client: Socket,
    private readonly server: Socket,
    private readonly cin: Bytes,
    private readonly d: RelayConnDeps,
  ) {
    this.done = new Promise((r) => { this.resolveDone = r; });
    this.clientValve = new Valve(client);
    this.serverValve = new Valve(server);
    for (const s of [client, server]) s.setNoDelay?.(true);
    client.on('data', (b: Buffer) => this.guard('client', () => this.onClientData(b)));
    server.on('data', (b: Buffer) => this.guard('server', () => this.onServerData(b)));
    client.on('end', () => this.guard('client', () => this.onClientEnd()));
    server.on('end', () => this.guard('server', () => this.onServerEnd()));
    // A client whose connection fails is a client gone (its 'close' follows): what it sent
    // still goes on to the server. A failing server connection cuts both.
    client.on('error', (e) => this.d.log.info({ conn: this.d.id, err: e.message }, 'nbd relay: the client\'s connection failed'));
    server.on('error', (e) => this.cut(`the server's connection failed: ${e.message}`));
    client.on('close', () => this.onClose('client'));
    server.on('close', () => this.onClose('server'));
    // Either may be closed already (while the client's handshake ended): its event came before.
    if (client.closed) queueMicrotask(() => this.onClose('client'));
    if (server.closed) queueMicrotask(() => this.onClose('server'));
    this.d.log.debug({ conn: d.id, structured: d.structured }, 'nbd relay: transmission phase');
    this.guard('client', () => this.pumpClient());
  }

  state(): ConnState {
    return { id: this.d.id, phase: this.phase, structured: this.d.structured, inflight: this.inflight.size, queued: this.queue.length };
  }

  /** The VM stopped: answer every write-like request in flight at once (nbd-relay-frames.ts
   *  HANDLING); later ones are answered as they come (the table's `after`). */
  release(): void {
    for (const e of this.inflight.values()) {
      if (e.early || e.replying || !releasedInFlight(e.cls)) continue;
      e.early = true;
      this.outstanding.early++;
      if (e.sent) this.answer(e.cookie);
      else e.answerWhenSent = true;
    }
  }

  /** The relay closes: the client is treated as gone (what it sent is forwarded, then
   *  NBD_CMD_DISC once the server answered it all). */
  shutdown(): void {
    if (this.phase === 'closed' || this.closing) return;
    this.closing = true;
    if (this.cState.k === 'request') this.goodbye();
  }

  /** Cut both sockets (malformed input, a socket error, a server that does not close). */
  cut(reason: string, level: 'info' | 'warn' = 'warn'): void {
    if (this.phase === 'closed') return;
    this.phase = 'closed';
    this.timer?.cancel();
    this.d.log[level]({ conn: this.d.id, reason, inflight: this.inflight.size, queued: this.queue.length, early: this.outstanding.early }, 'nbd relay: connection cut');
    this.client.destroy();
    this.server.destroy();
  }

  private guard(side: 'client' | 'server', fn: () => void): void {
    if (this.phase === 'closed') return;
    try {
      fn();
    } catch (e) {
      this.fail(side, `the relay failed on the ${side}'s input: ${(e as Error).message}`);
    }
  }

  private fail(side: 'client' | 'server', reason: string): void {
    if (this.phase === 'closed') return;
    this.d.counters.protocolErrors++;
    this.cut(`malformed input from the ${side}: ${reason}`);
  }

  // ---- client -> server ------------------------------------------------------------------

  private onClientData(b: Buffer): void {
    if (this.cState.k === 'ignore') return;
    this.cin.push(b);
    this.pumpClient();
  }

  private pumpClient(): void {
    for (;;) {
      if (this.phase === 'closed') return;
      const st = this.cState;
      switch (st.k) {
        case 'ignore':
          this.cin.clear();
          return;
        case 'request': {
          if (this.closing && !this.discSeen) return this.goodbye();
          if (this.cin.length < REQUEST_HEADER) return;
          const header = this.cin.take(REQUEST_HEADER);
          const h = parseRequestHeader(header);
          if (typeof h === 'string') return this.fail('client', h);
          this.d.counters.requests[CMD_NAMES[h.type]!]++;
          const cls = classOf(h.type);
          const entry: Entry = { cookie: h.cookie, type: h.type, cls, length: h.length, early: false, sent: false, answerWhenSent: false, replying: false };
          const how = handlingOf(cls, this.d.released());
          const left = requestPayload(h);
          if (cls === 'disc') {
            this.discSeen = true;
            this.cState = { k: 'ignore' };
            this.enqueue({ buf: header, forward: how.forward });
            return;
          }
          // Passed through as it comes while nothing waits; otherwise whole, behind the queue.
          const stream = how.forward === 'now' && this.queue.length === 0;
          if (stream) {
            if (!this.track(entry)) return;
            this.toServer(header);
            this.d.counters.forwarded++;
          }
          this.cState = { k: 'payload', entry, left, stream, parts: [header], early: how.answerNow, forward: how.forward };
          break;
        }
        case 'payload': {
          if (st.left > 0) {
            if (this.cin.length === 0) return;
            const piece = this.cin.takeUpTo(st.left);
            st.left -= piece.length;
            if (st.stream) this.toServer(piece);
            else st.parts.push(piece);
            if (st.left > 0) return;
          }
          this.cState = { k: 'request' };
          if (st.stream) {
            st.entry.sent = true;
            if (st.entry.answerWhenSent) this.answer(st.entry.cookie);
          } else this.admit(st.entry, Buffer.concat(st.parts), st.early, st.forward);
          break;
        }
      }
    }
  }

  /** A whole request that did not stream: answered now and/or queued, per the table. */
  private admit(entry: Entry, buf: Buffer, early: boolean, forward: Forward): void {
    if (early) this.answer(entry.cookie);
    if (forward === 'never') {
      this.d.counters.absorbedFlushes++;
      return;
    }
    entry.early = early;
    this.enqueue({ buf, forward, entry });
  }

  private track(e: Entry): boolean {
    if (this.inflight.has(e.cookie)) {
      this.fail('client', `cookie ${e.cookie} reused while in flight`);
      return false;
    }
    this.inflight.set(e.cookie, e);
    this.outstanding.all++;
    if (e.early) this.outstanding.early++;
    return true;
  }

  private enqueue(q: Queued): void {
    this.queue.push(q);
    this.queuedBytes += q.buf.length;
    this.pumpQueue();
  }

  /** Send what the barrier lets through, in order. */
  private pumpQueue(): void {
    while (this.queue.length && this.phase !== 'closed') {
      const q = this.queue[0]!;
      if (!mayForward(q.forward, this.outstanding)) break;
      this.queue.shift();
      this.queuedBytes -= q.buf.length;
      if (!q.entry) {
        this.sendDisc(q.buf);
        break;
      }
      q.entry.sent = true;
      if (!this.track(q.entry)) return;
      this.toServer(q.buf);
      this.d.counters.forwarded++;
    }
    this.clientValve.set('queue', this.queuedBytes > QUEUE_CAP);
  }

  private sendDisc(buf: Buffer): void {
    this.toServer(buf);
    this.d.counters.forwarded++;
    this.discSent = true;
    this.phase = 'closing';
    // Half-closed, never reset: the server reads every request before it sees the end.
    this.server.end();
    this.arm(() => this.cut(`the server did not close within ${this.d.closeWaitMs} ms of NBD_CMD_DISC`));
    this.d.log.debug({ conn: this.d.id }, 'nbd relay: NBD_CMD_DISC sent');
  }

  /** The client is gone (or the relay closes) without NBD_CMD_DISC: send one after the rest. */
  private goodbye(): void {
    if (this.discSeen) return;
    this.discSeen = true;
    this.cState = { k: 'ignore' };
    this.cin.clear();
    this.enqueue({ buf: encodeDisc(), forward: GOODBYE.forward });
  }

  private onClientEnd(): void {
    if (this.clientGone) return;
    this.clientGone = true;
    const st = this.cState;
    // A write whose header went on but whose data never came cannot be completed.
    if (st.k === 'payload' && st.stream && st.left > 0) return this.cut('the client left in the middle of a write');
    this.goodbye();
  }

  private toServer(b: Buffer): void {
    if (this.server.destroyed || this.server.writableEnded) return;
    if (!this.server.write(b) && !this.waitingDrain.server) {
      this.waitingDrain.server = true;
      this.clientValve.set('server-full', true);
      this.server.once('drain', () => {
        this.waitingDrain.server = false;
        this.clientValve.set('server-full', false);
      });
    }
  }

  // ---- server -> client ------------------------------------------------------------------

  private onServerData(b: Buffer): void {
    this.sin.push(b);
    this.pumpServer();
  }

  private pumpServer(): void {
    for (;;) {
      if (this.phase === 'closed') return;
      const st = this.sState;
      switch (st.k) {
        case 'reply':
          if (!this.readReplyHeader()) return;
          break;
        case 'payload': {
          if (st.left > 0) {
            if (this.sin.length === 0) return;
            const piece = this.sin.takeUpTo(st.left);
            st.left -= piece.length;
            if (!st.drop) this.toClient(piece);
            if (st.left > 0) return;
          }
          this.sState = { k: 'reply' };
          this.replyEnded(st.entry, st.done, st.error);
          break;
        }
      }
    }
  }

  /** One reply's header (simple, or a structured chunk's); false when more bytes are needed. */
  private readReplyHeader(): boolean {
    if (this.sin.length < 4) return false;
    const magic = this.sin.peekUInt32();
    const simple = magic === SIMPLE_REPLY_MAGIC;
    if (!simple && !(magic === STRUCTURED_REPLY_MAGIC && this.d.structured)) {
      this.fail('server', `a reply with magic 0x${magic.toString(16)}`);
      return false;
    }
    const size = simple ? SIMPLE_REPLY_HEADER : CHUNK_HEADER;
    if (this.sin.length < size) return false;
    const header = this.sin.take(size);
    const cookie = header.readBigUInt64BE(8); // both kinds: after the magic and 4 more bytes
    const entry = this.inflight.get(cookie);
    if (!entry) {
      this.fail('server', `a reply to cookie ${cookie}, not in flight`);
      return false;
    }
    let payload: number;
    let done: boolean;
    let error: number;
    if (simple) {
      error = header.readUInt32BE(4);
      payload = entry.type === CMD.READ && error === 0 ? entry.length : 0;
      done = true;
    } else {
      const flags = header.readUInt16BE(4);
      const type = header.readUInt16BE(6);
      payload = header.readUInt32BE(16);
      if (payload > maxChunkPayload(type, entry.length)) {
        this.fail('server', `a chunk of type ${type} with ${payload} bytes for a request of ${entry.length}`);
        return false;
      }
      done = (flags & REPLY_FLAG_DONE) !== 0;
      error = type & 0x8000 ? 1 : 0;
    }
    // A request answered early has its real reply dropped whole.
    const drop = entry.early;
    if (!drop) {
      this.toClient(header);
      entry.replying = true;
      this.replyOpen = payload > 0;
    }
    this.sState = { k: 'payload', entry, left: payload, drop, done, error };
    return true;
  }

  private replyEnded(e: Entry, done: boolean, error: number): void {
    if (!e.early) {
      this.replyOpen = false;
      while (this.injected.length && !this.replyOpen) this.toClient(this.injected.shift()!);
    }
    if (error) e.error = error;
    if (!done) return;
    this.inflight.delete(e.cookie);
    this.outstanding.all--;
    if (e.early) {
      this.outstanding.early--;
      this.d.counters.droppedReplies++;
      if (e.error !== undefined) {
        this.d.counters.earlyErrors++;
        this.d.log.error({ conn: this.d.id, cookie: String(e.cookie), cmd: CMD_NAMES[e.type], error: e.error }, 'nbd relay: a request answered early failed at the store');
      }
    }
    this.pumpQueue();
  }

  /** The relay's own simple reply, between two of the server's (never inside one). */
  private answer(cookie: bigint): void {
    this.d.counters.answeredEarly++;
    const b = encodeSimpleReply(cookie);
    if (this.replyOpen) this.injected.push(b);
    else this.toClient(b);
  }

  private toClient(b: Buffer): void {
    if (this.client.destroyed || this.client.writableEnded) return;
    if (!this.client.write(b) && !this.waitingDrain.client) {
      this.waitingDrain.client = true;
      this.serverValve.set('client-full', true);
      this.client.once('drain', () => {
        this.waitingDrain.client = false;
        this.serverValve.set('client-full', false);
      });
    }
  }

  private onServerEnd(): void {
    this.serverEnded = true;
    if (!this.discSent && this.phase !== 'closing') {
      const lost = this.queue.filter((q) => q.entry?.early).length + this.outstanding.early;
      const log = lost ? this.d.log.error.bind(this.d.log) : this.d.log.info.bind(this.d.log);
      log({ conn: this.d.id, inflight: this.inflight.size, queued: this.queue.length, answeredEarlyNotStored: lost }, 'nbd relay: the server closed the connection');
    }
    this.queue.length = 0;
    this.queuedBytes = 0;
    this.server.end();
    // What the client is owed has been passed on: once it is written out, the client's
    // connection closes (a client such as QEMU may hold its end open, waiting to reconnect).
    this.client.end(() => this.client.destroy());
    this.arm(() => this.cut('the client did not take its last replies after the server closed', 'info'));
  }

  private onClose(side: 'client' | 'server'): void {
    this.closed[side] = true;
    if (side === 'client' && !this.closed.server && this.phase !== 'closed') {
      // A client that vanished without its end (reset): what it sent before still goes on.
      this.onClientEnd();
    }
    if (side === 'server' && !this.serverEnded && !this.closed.client && this.phase !== 'closed') this.cut('the server\'s connection closed');
    if (this.closed.client && this.closed.server) {
      this.phase = 'closed';
      this.timer?.cancel();
      this.resolveDone();
    }
  }

  /** One bound at a time: on the server's close after DISC, or the client's after the server's. */
  private arm(fn: () => void): void {
    this.timer?.cancel();
    this.timer = this.d.clock.setTimeout(fn, this.d.closeWaitMs);
  }
}
