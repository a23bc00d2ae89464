// The follow relay's view of the NBD protocol (nbd-relay.ts; section names are those of the NBD
// protocol specification, proto.md of the NBD project): the few handshake messages it reads or
// writes itself, the compact transmission headers it parses to track requests, and the table of
// what it does with each request before and after the VM stopped (release). Pure: no sockets, no
// clock. Constants the agent's NBD client already names come from nbd-wire.ts.
import {
  IHAVEOPT, INFO_EXPORT, NBDMAGIC, OPT, OPTION_REPLY_MAGIC, REP, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC,
} from './nbd-wire.ts';

/** Option types ("Option types") the relay treats specially. */
export const OPT_EXPORT_NAME = 1;
export const OPT_ABORT = 2;
export const OPT_STARTTLS = 5;
export const OPT_INFO = 6;
export const OPT_GO = OPT.GO;
export const OPT_STRUCTURED_REPLY = OPT.STRUCTURED_REPLY;
export const OPT_EXTENDED_HEADERS = 11;

/** Transmission flags the relay hides from the client ("Transmission flags"). */
export const FLAG_SEND_FLUSH = 1 << 2;
export const FLAG_SEND_FUA = 1 << 3;

/** Request types ("Request types"). */
export const CMD = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, CACHE: 5, WRITE_ZEROES: 6, BLOCK_STATUS: 7, RESIZE: 8 } as const;
export const CMD_NAMES = ['read', 'write', 'disc', 'flush', 'trim', 'cache', 'write_zeroes', 'block_status', 'resize'] as const;
export type CmdName = (typeof CMD_NAMES)[number];

/** Sizes the relay accepts; anything larger is a protocol error (both sockets cut). */
export const LIMITS = {
  /** One option's data (an export name and meta context queries: strings of at most 4096 bytes). */
  optionData: 64 * 1024,
  /** One option reply's payload (NBD_REP_SERVER, _INFO, _META_CONTEXT, error messages). */
  optionReply: 64 * 1024,
  /** One write's payload: the 32 MiB QEMU's client and server use at most. */
  write: 32 * 1024 * 1024,
} as const;

export const REQUEST_HEADER = 28;
export const SIMPLE_REPLY_HEADER = 16;
export const CHUNK_HEADER = 20;
export const OPTION_HEADER = 16;
export const OPTION_REPLY_HEADER = 20;
export const GREETING = 18;

export { IHAVEOPT, NBDMAGIC, OPTION_REPLY_MAGIC, REP, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC };

// ---- handshake ------------------------------------------------------------------------------

/** The server's greeting: NBDMAGIC, IHAVEOPT (newstyle), handshake flags; why not, if not. */
export function checkGreeting(b: Buffer): string | undefined {
  if (b.readBigUInt64BE(0) !== NBDMAGIC) return 'not an NBD server (no NBDMAGIC)';
  if (b.readBigUInt64BE(8) !== IHAVEOPT) return 'not a newstyle NBD server';
  return undefined;
}

export interface OptionHeader { option: number; length: number }

export function parseOptionHeader(b: Buffer): OptionHeader | string {
  if (b.readBigUInt64BE(0) !== IHAVEOPT) return 'an option without IHAVEOPT';
  const h = { option: b.readUInt32BE(8), length: b.readUInt32BE(12) };
  if (h.length > LIMITS.optionData) return `option ${h.option} with ${h.length} bytes of data`;
  return h;
}

export interface OptionReplyHeader { option: number; type: number; length: number }

export function parseOptionReplyHeader(b: Buffer): OptionReplyHeader | string {
  if (b.readBigUInt64BE(0) !== OPTION_REPLY_MAGIC) return 'an option reply with a wrong magic';
  const h = { option: b.readUInt32BE(8), type: b.readUInt32BE(12), length: b.readUInt32BE(16) };
  if (h.length > LIMITS.optionReply) return `an option reply of ${h.length} bytes`;
  return h;
}

/** An option reply the relay sends itself (NBD_REP_ERR_UNSUP to NBD_OPT_EXTENDED_HEADERS). */
export function encodeOptionReply(option: number, type: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(OPTION_REPLY_HEADER + data.length);
  b.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(type, 12);
  b.writeUInt32BE(data.length, 16);
  data.copy(b, OPTION_REPLY_HEADER);
  return b;
}

/** Options the relay answers itself and never forwards: extended headers (so compact headers,
 *  which it parses, are used) and TLS (it could not read the stream any more). */
export function answeredLocally(option: number): boolean {
  return option === OPT_EXTENDED_HEADERS || option === OPT_STARTTLS;
}

/** Whether an option reply of `type` is the last one to its option (NBD_REP_ACK or an error). */
export function isFinalReply(type: number): boolean {
  return type === REP.ACK || type >= 0x80000000;
}

/** `flags` without NBD_FLAG_SEND_FLUSH and NBD_FLAG_SEND_FUA: QEMU's client then never sends a
 *  flush and emulates FUA by a flush, which is then a no-op; the store's daemon flushes as it
 *  closes (docs/disks.md#following). */
export function withoutFlush(flags: number): number {
  return flags & ~(FLAG_SEND_FLUSH | FLAG_SEND_FUA);
}

/** NBD_REP_INFO's payload with NBD_INFO_EXPORT's flags cleared (a copy), or the payload itself
 *  for other information types; a string when an NBD_INFO_EXPORT has the wrong length. */
export function rewriteInfo(p: Buffer): Buffer | string {
  if (p.length < 2 || p.readUInt16BE(0) !== INFO_EXPORT) return p;
  if (p.length !== 12) return `an NBD_INFO_EXPORT of ${p.length} bytes`;
  const out = Buffer.from(p);
  out.writeUInt16BE(withoutFlush(p.readUInt16BE(10)), 10);
  return out;
}

/** NBD_OPT_EXPORT_NAME's reply (size, transmission flags, zeroes) with the flags cleared (a copy). */
export function rewriteExportNameReply(b: Buffer): Buffer {
  const out = Buffer.from(b);
  out.writeUInt16BE(withoutFlush(b.readUInt16BE(8)), 8);
  return out;
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

/** A simple reply ("Simple reply message"): what the relay answers for a request it released. */
export function encodeSimpleReply(cookie: bigint, error = 0): Buffer {
  const b = Buffer.alloc(SIMPLE_REPLY_HEADER);
  b.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
  b.writeUInt32BE(error, 4);
  b.writeBigUInt64BE(cookie, 8);
  return b;
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
