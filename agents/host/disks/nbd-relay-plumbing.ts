// The follow relay's plumbing (nbd-relay-session.ts, nbd-relay-conn.ts): bytes received and not
// yet parsed, a socket paused while any reason holds (backpressure, a client waiting for the
// store's connection, a full queue), and the counters the relay reports (NbdProxy.stats()).
import type { Socket } from 'node:net';
import { CMD_NAMES, type CmdName } from './nbd-relay-frames.ts';

/** Counters of a relay, shared by its connections (NbdProxy.stats()). */
export interface RelayCounters {
  /** Requests the client sent, by type. */
  requests: Record<CmdName, number>;
  /** Requests sent on to the server (NBD_CMD_DISC included). */
  forwarded: number;
  /** Requests the relay answered itself after release. */
  answeredEarly: number;
  /** Flushes answered after release and not forwarded. */
  absorbedFlushes: number;
  /** Real replies dropped (to requests answered early). */
  droppedReplies: number;
  /** Requests answered early whose real reply was an error: writes the store may not have. */
  earlyErrors: number;
  /** Options the relay answered NBD_REP_ERR_UNSUP itself (extended headers, TLS). */
  refusedOptions: number;
  /** Clients refused for the export name they asked for. */
  refusedExports: number;
  /** Connections negotiated with the store (the one made at the start included). */
  storeConnections: number;
  /** Connections cut for malformed input. */
  protocolErrors: number;
}

export const newCounters = (): RelayCounters => ({
  requests: Object.fromEntries(CMD_NAMES.map((n) => [n, 0])) as Record<CmdName, number>,
  forwarded: 0, answeredEarly: 0, absorbedFlushes: 0, droppedReplies: 0, earlyErrors: 0, refusedOptions: 0, refusedExports: 0, storeConnections: 0, protocolErrors: 0,
});

export interface ConnState {
  id: number;
  phase: 'handshake' | 'transmission' | 'closing' | 'closed';
  structured: boolean;
  /** Forwarded requests the server has not answered yet. */
  inflight: number;
  /** Requests waiting for their turn (after release: the barrier). */
  queued: number;
}

/** Bytes received and not yet parsed; taken in exact amounts. */
export class Bytes {
  private chunks: Buffer[] = [];
  length = 0;
  push(b: Buffer): void {
    if (b.length === 0) return;
    this.chunks.push(b);
    this.length += b.length;
  }
  peekUInt32(): number {
    return this.chunks[0]!.length >= 4 ? this.chunks[0]!.readUInt32BE(0) : this.take(4, true).readUInt32BE(0);
  }
  take(n: number, peek = false): Buffer {
    const out = Buffer.allocUnsafe(n);
    let at = 0;
    for (let i = 0; at < n; i++) {
      const c = this.chunks[i]!;
      const k = Math.min(c.length, n - at);
      c.copy(out, at, 0, k);
      at += k;
    }
    if (!peek) this.skip(n);
    return out;
  }
  /** Up to `n` bytes without copying: for payloads passed through as they come. */
  takeUpTo(n: number): Buffer {
    const c = this.chunks[0]!;
    const k = Math.min(c.length, n);
    this.skip(k);
    return c.subarray(0, k);
  }
  private skip(n: number): void {
    this.length -= n;
    while (n > 0) {
      const c = this.chunks[0]!;
      if (c.length <= n) {
        n -= c.length;
        this.chunks.shift();
      } else {
        this.chunks[0] = c.subarray(n);
        n = 0;
      }
    }
  }
  clear(): void {
    this.chunks = [];
    this.length = 0;
  }
}

/** Pauses a socket while any reason holds. */
export class Valve {
  private readonly reasons = new Set<string>();
  constructor(private readonly s: Socket) {}
  set(reason: string, on: boolean): void {
    if (on) this.reasons.add(reason);
    else this.reasons.delete(reason);
    if (this.reasons.size) this.s.pause();
    else if (!this.s.destroyed) this.s.resume();
  }
}
