// The NBD protocol's wire format as the host agent's NBD client speaks it (nbd-client.ts): the
// fixed newstyle handshake's options and replies, compact (32-bit) requests, simple replies and
// structured reply chunks. Section names in the comments are those of the NBD protocol
// specification (proto.md of the NBD project). Pure: no sockets, no clock. Every length a server
// announces is checked against a cap before anything is read or allocated for it, so a broken or
// hostile server gets a coded error (VMTC_HOST_DISK_TOOL_FAILED, `details.nbd` says what) and
// never an unbounded buffer.
import { hostError } from '../errors.ts';

export const NBDMAGIC = 0x4e42444d41474943n; // 'NBDMAGIC'
export const IHAVEOPT = 0x49484156454f5054n; // 'IHAVEOPT': newstyle, and every option request
export const OLDSTYLE_MAGIC = 0x00420281861253n;
export const OPTION_REPLY_MAGIC = 0x3e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

// Handshake flags (server) and client flags ("Handshake flags", "Client flags").
export const FLAG_FIXED_NEWSTYLE = 1;
export const FLAG_NO_ZEROES = 2;

// Transmission flags ("Transmission flags").
export const FLAG_HAS_FLAGS = 1 << 0;
export const FLAG_READ_ONLY = 1 << 1;

export const OPT = { GO: 7, STRUCTURED_REPLY: 8, SET_META_CONTEXT: 10 } as const;
export const REP = { ACK: 1, INFO: 3, META_CONTEXT: 4 } as const;
const REP_ERR_NAMES: Record<number, string> = {
  1: 'NBD_REP_ERR_UNSUP', 2: 'NBD_REP_ERR_POLICY', 3: 'NBD_REP_ERR_INVALID', 4: 'NBD_REP_ERR_PLATFORM',
  5: 'NBD_REP_ERR_TLS_REQD', 6: 'NBD_REP_ERR_UNKNOWN', 7: 'NBD_REP_ERR_SHUTDOWN', 8: 'NBD_REP_ERR_BLOCK_SIZE_REQD',
  9: 'NBD_REP_ERR_TOO_BIG', 10: 'NBD_REP_ERR_EXT_HEADER_REQD',
};
export const REP_ERR_UNSUP = 0x80000001;
export const REP_ERR_UNKNOWN = 0x80000006;
export const INFO_EXPORT = 0;
export const INFO_BLOCK_SIZE = 3;

export const CMD = { READ: 0, DISC: 2, BLOCK_STATUS: 7 } as const;
export const REPLY_FLAG_DONE = 1;
export const REPLY_TYPE = { NONE: 0, OFFSET_DATA: 1, OFFSET_HOLE: 2, BLOCK_STATUS: 5, ERROR: 0x8001, ERROR_OFFSET: 0x8002 } as const;

/** The largest read one request asks for: the 32 MiB a compact request may carry everywhere
 *  (QEMU's NBD server refuses more). Larger reads are split. */
export const MAX_READ_REQUEST = 32 * 1024 * 1024;
/** The largest block status request: a 32-bit length, kept 512-aligned. */
export const MAX_STATUS_REQUEST = 0x80000000;
/** Strings (names, messages) are at most 4096 bytes ("Conventions"). */
export const MAX_STRING = 4096;
/** Option replies the client uses are small (INFO, META_CONTEXT, error strings). */
export const MAX_OPTION_REPLY = 4 + MAX_STRING + 64;
/** One BLOCK_STATUS chunk: a context id and at most 2^20 descriptors (QEMU sends up to 2^17). */
export const MAX_STATUS_PAYLOAD = 4 + 8 * (1 << 20);
/** An ERROR_OFFSET chunk: errno, message length, message, offset. */
export const MAX_ERROR_PAYLOAD = 6 + MAX_STRING + 8;

/** A protocol violation or refusal of the server, as the agent's coded error. */
export function nbdFailure(nbd: string, details: Record<string, unknown> = {}, cause?: unknown): Error {
  return hostError('VMTC_HOST_DISK_TOOL_FAILED', { tool: 'nbd', nbd, ...details }, cause === undefined ? undefined : { cause });
}

export function hex(n: number | bigint): string {
  return `0x${n.toString(16)}`;
}

// ---- handshake ------------------------------------------------------------------------------

/** One option request ("Fixed newstyle negotiation"). */
export function encodeOption(option: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(16 + data.length);
  b.writeBigUInt64BE(IHAVEOPT, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(data.length, 12);
  data.copy(b, 16);
  return b;
}

function str32(s: string): Buffer {
  const v = Buffer.from(s, 'utf8');
  const b = Buffer.alloc(4 + v.length);
  b.writeUInt32BE(v.length, 0);
  v.copy(b, 4);
  return b;
}

/** NBD_OPT_SET_META_CONTEXT's data: the export name, then the queries ("Option types"). */
export function encodeSetMetaContext(exportName: string, queries: readonly string[]): Buffer {
  const n = Buffer.alloc(4);
  n.writeUInt32BE(queries.length, 0);
  return encodeOption(OPT.SET_META_CONTEXT, Buffer.concat([str32(exportName), n, ...queries.map(str32)]));
}

/** NBD_OPT_GO's data: the export name and the information requests (none: NBD_INFO_EXPORT is
 *  always sent; asking for NBD_INFO_BLOCK_SIZE would promise aligned requests). */
export function encodeGo(exportName: string): Buffer {
  return encodeOption(OPT.GO, Buffer.concat([str32(exportName), Buffer.alloc(2)]));
}

export interface OptionReplyHeader {
  option: number;
  type: number;
  length: number;
}

/** An option reply's 20-byte header, checked: its magic, that it answers `option`, and its
 *  length under the cap. */
export function parseOptionReplyHeader(b: Buffer, option: number): OptionReplyHeader {
  const magic = b.readBigUInt64BE(0);
  if (magic !== OPTION_REPLY_MAGIC) throw nbdFailure('an option reply with a wrong magic', { magic: hex(magic) });
  const h = { option: b.readUInt32BE(8), type: b.readUInt32BE(12), length: b.readUInt32BE(16) };
  if (h.option !== option) throw nbdFailure('an option reply to an option the client did not send', { sent: option, answered: h.option });
  if (h.length > MAX_OPTION_REPLY) throw nbdFailure('an option reply longer than the client accepts', { length: h.length, max: MAX_OPTION_REPLY });
  return h;
}

export function isRepError(type: number): boolean {
  return type >= 0x80000000;
}

export function repErrorName(type: number): string {
  return REP_ERR_NAMES[type - 0x80000000] ?? `NBD_REP_ERR(${type - 0x80000000})`;
}

export type Info =
  | { type: 'export'; size: number; flags: number }
  | { type: 'block-size'; min: number; preferred: number; max: number }
  | { type: 'other'; info: number };

/** NBD_REP_INFO's payload: NBD_INFO_EXPORT (size, transmission flags) and NBD_INFO_BLOCK_SIZE
 *  are read; other information types are ignored. */
export function parseInfo(p: Buffer): Info {
  if (p.length < 2) throw nbdFailure('an NBD_REP_INFO without an information type', { length: p.length });
  const info = p.readUInt16BE(0);
  if (info === INFO_EXPORT) {
    if (p.length !== 12) throw nbdFailure('an NBD_INFO_EXPORT of the wrong length', { length: p.length });
    const size = p.readBigUInt64BE(2);
    if (size > BigInt(Number.MAX_SAFE_INTEGER)) throw nbdFailure('an export size beyond 2^53 bytes', { size: size.toString() });
    const flags = p.readUInt16BE(10);
    if (!(flags & FLAG_HAS_FLAGS)) throw nbdFailure('transmission flags without NBD_FLAG_HAS_FLAGS', { flags });
    return { type: 'export', size: Number(size), flags };
  }
  if (info === INFO_BLOCK_SIZE) {
    if (p.length !== 14) throw nbdFailure('an NBD_INFO_BLOCK_SIZE of the wrong length', { length: p.length });
    const b = { type: 'block-size' as const, min: p.readUInt32BE(2), preferred: p.readUInt32BE(6), max: p.readUInt32BE(10) };
    if (b.max < 512 || b.min < 1 || b.min > b.max) throw nbdFailure('block size constraints the client cannot follow', { min: b.min, preferred: b.preferred, max: b.max });
    return b;
  }
  return { type: 'other', info };
}

/** NBD_REP_META_CONTEXT's payload: the context id and its name. */
export function parseMetaContext(p: Buffer): { id: number; name: string } {
  if (p.length < 5) throw nbdFailure('an NBD_REP_META_CONTEXT too short for an id and a name', { length: p.length });
  return { id: p.readUInt32BE(0), name: p.subarray(4).toString('utf8') };
}

// ---- transmission ---------------------------------------------------------------------------

/** A compact request ("Request message"); the 64-bit handle is the 32-bit `handle`. */
export function encodeRequest(type: number, handle: number, offset: number, length: number): Buffer {
  const b = Buffer.alloc(28);
  b.writeUInt32BE(REQUEST_MAGIC, 0);
  b.writeUInt16BE(0, 4);
  b.writeUInt16BE(type, 6);
  b.writeUInt32BE(0, 8);
  b.writeUInt32BE(handle >>> 0, 12);
  b.writeBigUInt64BE(BigInt(offset), 16);
  b.writeUInt32BE(length, 24);
  return b;
}

/** A reply's handle (bytes 0..8 of `b`): the client's 32-bit handle, or -1 for one it never sent. */
export function readHandle(b: Buffer, at: number): number {
  return b.readUInt32BE(at) === 0 ? b.readUInt32BE(at + 4) : -1;
}

export interface ChunkHeader {
  flags: number;
  type: number;
  handle: number;
  length: number;
}

/** The 16 bytes after a structured reply chunk's magic ("Structured reply chunk message"). */
export function parseChunkHeader(b: Buffer): ChunkHeader {
  return { flags: b.readUInt16BE(0), type: b.readUInt16BE(2), handle: readHandle(b, 4), length: b.readUInt32BE(12) };
}

/** The payload length a chunk of `type` may have in answer to a request of `requestLength`
 *  bytes; a chunk announcing more is refused before anything is read. */
export function maxChunkPayload(type: number, requestLength: number): number {
  if (type === REPLY_TYPE.NONE) return 0;
  if (type === REPLY_TYPE.OFFSET_DATA) return 8 + requestLength;
  if (type === REPLY_TYPE.OFFSET_HOLE) return 12;
  if (type === REPLY_TYPE.BLOCK_STATUS) return MAX_STATUS_PAYLOAD;
  if (type & 0x8000) return MAX_ERROR_PAYLOAD;
  return 0;
}

export interface ChunkError {
  errno: number;
  message: string;
  offset?: number;
}

const ERRNO_NAMES: Record<number, string> = { 1: 'EPERM', 5: 'EIO', 12: 'ENOMEM', 22: 'EINVAL', 28: 'ENOSPC', 75: 'EOVERFLOW', 95: 'ENOTSUP', 108: 'ESHUTDOWN' };

export function errnoName(n: number): string {
  return ERRNO_NAMES[n] ?? `errno ${n}`;
}

/** An error chunk's payload ("Structured reply types": NBD_REPLY_TYPE_ERROR, _ERROR_OFFSET; an
 *  unknown error type is read as NBD_REPLY_TYPE_ERROR). */
export function parseErrorPayload(type: number, p: Buffer): ChunkError {
  if (p.length < 6) throw nbdFailure('an error chunk too short', { type: hex(type), length: p.length });
  const errno = p.readUInt32BE(0);
  const msgLen = p.readUInt16BE(4);
  const tail = type === REPLY_TYPE.ERROR_OFFSET ? 8 : 0;
  if (type === REPLY_TYPE.ERROR_OFFSET ? 6 + msgLen + 8 !== p.length : 6 + msgLen > p.length) throw nbdFailure('an error chunk whose message length does not fit it', { type: hex(type), length: p.length, messageLength: msgLen });
  const e: ChunkError = { errno, message: p.subarray(6, 6 + msgLen).toString('utf8').slice(0, 300) };
  if (tail) e.offset = Number(p.readBigUInt64BE(6 + msgLen));
  return e;
}

/** NBD_REPLY_TYPE_OFFSET_HOLE's payload. */
export function parseHole(p: Buffer): { offset: number; length: number } {
  return { offset: Number(p.readBigUInt64BE(0)), length: p.readUInt32BE(8) };
}

export interface Descriptor {
  length: number;
  flags: number;
}

/** NBD_REPLY_TYPE_BLOCK_STATUS's payload: the context id, then at least one descriptor, none of
 *  length zero ("Structured reply types"). */
export function parseBlockStatus(p: Buffer): { contextId: number; descriptors: Descriptor[] } {
  if (p.length < 12 || (p.length - 4) % 8 !== 0) throw nbdFailure('a block status chunk that is not a context id and whole descriptors', { length: p.length });
  const descriptors: Descriptor[] = [];
  for (let at = 4; at < p.length; at += 8) {
    const d = { length: p.readUInt32BE(at), flags: p.readUInt32BE(at + 4) };
    if (d.length === 0) throw nbdFailure('a block status descriptor of length zero', { index: descriptors.length });
    descriptors.push(d);
  }
  return { contextId: p.readUInt32BE(0), descriptors };
}

/** Why the pieces (data and hole chunks, each within the request) do not cover
 *  [start, start+length) exactly once; undefined when they do. */
export function coverageGap(pieces: { offset: number; length: number }[], start: number, length: number): string | undefined {
  const sorted = [...pieces].sort((a, b) => a.offset - b.offset);
  let at = start;
  for (const p of sorted) {
    if (p.offset < at) return `chunks overlap at ${p.offset}`;
    if (p.offset > at) return `no chunk for ${at}..${p.offset}`;
    at += p.length;
  }
  return at === start + length ? undefined : `no chunk for ${at}..${start + length}`;
}

export interface Extent {
  offset: number;
  length: number;
  flags: number;
}

/** Append the descriptors of one block status reply, which start at `at`, to `out`: clipped to
 *  `end`, merged with the previous extent when the flags are the same. Returns where they end. */
export function appendExtents(out: Extent[], at: number, end: number, descriptors: readonly Descriptor[]): number {
  for (const d of descriptors) {
    if (at >= end) break;
    const length = Math.min(d.length, end - at);
    const last = out[out.length - 1];
    if (last && last.flags === d.flags && last.offset + last.length === at) last.length += length;
    else out.push({ offset: at, length, flags: d.flags });
    at += length;
  }
  return at;
}

// ---- reading the stream ---------------------------------------------------------------------

/** Bytes from the socket, handed out in exact amounts to one reader at a time: `read(n)` or
 *  `readInto` (copied straight to its destination as they arrive). `fail` rejects the waiting
 *  read and every later one. More than `maxBuffered` bytes waiting unread fails it too. */
export class ByteReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private failed: Error | undefined;
  private waiter: { dst: Buffer; pos: number; left: number; resolve: () => void; reject: (e: Error) => void } | undefined;

  constructor(private readonly maxBuffered = 64 * 1024 * 1024) {}

  push(b: Buffer): void {
    if (this.failed) return;
    this.chunks.push(b);
    this.buffered += b.length;
    this.serve();
    if (this.buffered > this.maxBuffered) this.fail(nbdFailure('the server sent more than the client has asked for', { buffered: this.buffered }));
  }

  fail(e: Error): void {
    if (this.failed) return;
    this.failed = e;
    this.chunks = [];
    this.buffered = 0;
    const w = this.waiter;
    this.waiter = undefined;
    w?.reject(e);
  }

  read(n: number): Promise<Buffer> {
    const b = Buffer.allocUnsafe(n);
    return this.readInto(b, 0, n).then(() => b);
  }

  readInto(dst: Buffer, pos: number, n: number): Promise<void> {
    if (this.failed) return Promise.reject(this.failed);
    if (this.waiter) return Promise.reject(new Error('ByteReader: one read at a time'));
    return new Promise((resolve, reject) => {
      this.waiter = { dst, pos, left: n, resolve, reject };
      this.serve();
    });
  }

  private serve(): void {
    const w = this.waiter;
    if (!w) return;
    while (w.left > 0 && this.chunks.length) {
      const c = this.chunks[0]!;
      const take = Math.min(c.length, w.left);
      c.copy(w.dst, w.pos, 0, take);
      w.pos += take;
      w.left -= take;
      this.buffered -= take;
      if (take === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(take);
    }
    if (w.left === 0) {
      this.waiter = undefined;
      w.resolve();
    }
  }
}
