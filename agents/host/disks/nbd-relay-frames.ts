// The follow relay's view of the NBD protocol (nbd-relay.ts; section names are those of the NBD
// protocol specification, proto.md of the NBD project): the option requests its client sends
// (answered by nbd-relay-handshake.ts), the compact transmission headers it parses to track
// requests, and the table of what it does with each request before and after the VM stopped
// (release). Pure: no sockets, no clock. Constants the agent's NBD client already names come from
// nbd-wire.ts; the replies the relay sends itself are encoded by nbd-server-wire.ts.
import { IHAVEOPT, OPT, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC } from './nbd-wire.ts';

/** Option types ("Option types") the relay answers. */
export const OPT_EXPORT_NAME = 1;
export const OPT_ABORT = 2;
export const OPT_STARTTLS = 5;
export const OPT_INFO = 6;
export const OPT_GO = OPT.GO;
export const OPT_STRUCTURED_REPLY = OPT.STRUCTURED_REPLY;
export const OPT_LIST_META_CONTEXT = 9;
export const OPT_SET_META_CONTEXT = OPT.SET_META_CONTEXT;
export const OPT_EXTENDED_HEADERS = 11;

/** Option reply errors ("Option reply types") the relay sends beside those nbd-wire.ts names. */
export const REP_ERR_POLICY = 0x80000002;
export const REP_ERR_INVALID = 0x80000003;

/** Transmission flags the relay hides from the client ("Transmission flags"). */
export const FLAG_SEND_FLUSH = 1 << 2;
export const FLAG_SEND_FUA = 1 << 3;

/** Request types ("Request types"). */
export const CMD = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, CACHE: 5, WRITE_ZEROES: 6, BLOCK_STATUS: 7, RESIZE: 8 } as const;
export const CMD_NAMES = ['read', 'write', 'disc', 'flush', 'trim', 'cache', 'write_zeroes', 'block_status', 'resize'] as const;
export type CmdName = (typeof CMD_NAMES)[number];

/** Sizes the relay accepts from its client; anything larger is a protocol error (the connection is cut). */
export const LIMITS = {
  /** One option's data (an export name and meta context queries: strings of at most 4096 bytes). */
  optionData: 64 * 1024,
  /** One write's payload: the 32 MiB QEMU's client and server use at most. */
  write: 32 * 1024 * 1024,
} as const;

export const REQUEST_HEADER = 28;
export const SIMPLE_REPLY_HEADER = 16;
export const CHUNK_HEADER = 20;
export const OPTION_HEADER = 16;

export { SIMPLE_REPLY_MAGIC };

// ---- handshake ------------------------------------------------------------------------------

export interface OptionHeader { option: number; length: number }

/** A client's option request header ("Fixed newstyle negotiation"); a string says why not. */
export function parseOptionHeader(b: Buffer): OptionHeader | string {
  if (b.readBigUInt64BE(0) !== IHAVEOPT) return 'an option without IHAVEOPT';
  const h = { option: b.readUInt32BE(8), length: b.readUInt32BE(12) };
  if (h.length > LIMITS.optionData) return `option ${h.option} with ${h.length} bytes of data`;
  return h;
}

/** `flags` without NBD_FLAG_SEND_FLUSH and NBD_FLAG_SEND_FUA: QEMU's client then never sends a
 *  flush and emulates FUA by a flush, which is then a no-op; the store's daemon flushes as it
 *  closes (docs/disks.md#following). */
export function withoutFlush(flags: number): number {
  return flags & ~(FLAG_SEND_FLUSH | FLAG_SEND_FUA);
}

// ---- transmission ---------------------------------------------------------------------------

export interface RequestHeader { flags: number; type: number; cookie: bigint; offset: bigint; length: number }

/** A compact request header ("Request message"); a string says why it is not one the relay
 *  can follow. */
export function parseRequestHeader(b: Buffer): RequestHeader | string {
  if (b.readUInt32BE(0) !== REQUEST_MAGIC) return 'a request without the request magic';
  const h = { flags: b.readUInt16BE(4), type: b.readUInt16BE(6), cookie: b.readBigUInt64BE(8), offset: b.readBigUInt64BE(16), length: b.readUInt32BE(24) };
  if (h.type >= CMD_NAMES.length) return `an unknown request type ${h.type}`;
  if (h.type === CMD.WRITE && h.length > LIMITS.write) return `a write of ${h.length} bytes`;
  return h;
}

/** The payload that follows a request header: a write's data. */
export function requestPayload(h: RequestHeader): number {
  return h.type === CMD.WRITE ? h.length : 0;
}

/** NBD_CMD_DISC, sent for a client that went away without one. */
export function encodeDisc(): Buffer {
  const b = Buffer.alloc(REQUEST_HEADER);
  b.writeUInt32BE(REQUEST_MAGIC, 0);
  b.writeUInt16BE(CMD.DISC, 6);
  return b;
}

// ---- what the relay does with each request --------------------------------------------------

/** How requests are handled: write-like ones change the disk and are what the VM's stop waits
 *  for; reads answer with data and must stay real. */
export type RequestClass = 'write' | 'flush' | 'read' | 'other' | 'disc';

export function classOf(type: number): RequestClass {
  switch (type) {
    case CMD.WRITE: case CMD.WRITE_ZEROES: case CMD.TRIM: case CMD.CACHE: return 'write';
    case CMD.FLUSH: return 'flush';
    case CMD.READ: case CMD.BLOCK_STATUS: return 'read';
    case CMD.DISC: return 'disc';
    default: return 'other';
  }
}

/** When a request may go to the server:
 *  now          at once (in order with what is queued before it)
 *  after-all    once every request forwarded earlier was answered by the server (a barrier: two
 *               overlapping writes the client saw completed cannot be reordered at the store)
 *  after-early  once every request answered early was answered by the server (a read sees the
 *               writes the client was told are done)
 *  never        answered by the relay and not forwarded */
export type Forward = 'now' | 'after-all' | 'after-early' | 'never';

export interface Handling {
  /** Answered to the client at once (a simple reply, error 0); its real reply is dropped. */
  answerNow: boolean;
  forward: Forward;
}

/** The relay's table: each request class before and after release (docs/disks.md#following).
 *  Before, the relay only passes requests through; after (the VM stopped and must not wait for
 *  the path), a write-like request is answered at once and sent behind a barrier, a flush is
 *  answered and dropped (the store's daemon flushes as it closes), reads stay real. */
export const HANDLING: Record<RequestClass, { before: Handling; after: Handling }> = {
  write: { before: { answerNow: false, forward: 'now' }, after: { answerNow: true, forward: 'after-all' } },
  flush: { before: { answerNow: false, forward: 'now' }, after: { answerNow: true, forward: 'never' } },
  read: { before: { answerNow: false, forward: 'now' }, after: { answerNow: false, forward: 'after-early' } },
  other: { before: { answerNow: false, forward: 'now' }, after: { answerNow: false, forward: 'after-all' } },
  disc: { before: { answerNow: false, forward: 'now' }, after: { answerNow: false, forward: 'after-all' } },
};

/** A client that went away (or a relay that closes) without NBD_CMD_DISC: the relay sends one
 *  once the server has answered everything, so it processed every request the relay sent. */
export const GOODBYE: Handling = { answerNow: false, forward: 'after-all' };

export function handlingOf(cls: RequestClass, released: boolean): Handling {
  return released ? HANDLING[cls].after : HANDLING[cls].before;
}

/** Whether a request may go now, given the server's outstanding requests. */
export function mayForward(f: Forward, outstanding: { all: number; early: number }): boolean {
  if (f === 'now') return true;
  if (f === 'after-all') return outstanding.all === 0;
  if (f === 'after-early') return outstanding.early === 0;
  return false;
}

/** A request in flight at the moment of release: write-like ones (and a flush sent before) are
 *  answered at once, unless the server's reply to them has started reaching the client. */
export function releasedInFlight(cls: RequestClass): boolean {
  return cls === 'write' || cls === 'flush';
}
