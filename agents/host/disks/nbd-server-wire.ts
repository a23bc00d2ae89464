// The server's side of the NBD protocol, encoded (section names are those of the NBD protocol
// specification, proto.md of the NBD project: "Fixed newstyle negotiation", "Option reply types",
// "Simple reply message"): what the follow relay answers its client itself (nbd-relay-handshake.ts,
// nbd-relay-conn.ts) and what the tests' hand-built servers send (test/helpers/nbd-scripted.ts).
// The client's side is nbd-wire.ts. Pure: no sockets, no clock.
import {
  FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, IHAVEOPT, INFO_BLOCK_SIZE, INFO_EXPORT, NBDMAGIC, OPTION_REPLY_MAGIC, SIMPLE_REPLY_MAGIC,
} from './nbd-wire.ts';

/** The greeting: NBDMAGIC, IHAVEOPT (newstyle), the handshake flags (fixed newstyle, no zeroes). */
export function encodeGreeting(flags = FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES): Buffer {
  const b = Buffer.alloc(18);
  b.writeBigUInt64BE(NBDMAGIC, 0);
  b.writeBigUInt64BE(IHAVEOPT, 8);
  b.writeUInt16BE(flags, 16);
  return b;
}

/** One option reply: its header, then `data`. */
export function encodeOptionReply(option: number, type: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(20 + data.length);
  b.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(type, 12);
  b.writeUInt32BE(data.length, 16);
  data.copy(b, 20);
  return b;
}

/** NBD_REP_INFO's payload for NBD_INFO_EXPORT: the export's size and transmission flags. */
export function encodeInfoExport(size: number, flags: number): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt16BE(INFO_EXPORT, 0);
  b.writeBigUInt64BE(BigInt(size), 2);
  b.writeUInt16BE(flags, 10);
  return b;
}

/** NBD_REP_INFO's payload for NBD_INFO_BLOCK_SIZE: minimum, preferred and maximum block sizes. */
export function encodeInfoBlockSize(min: number, preferred: number, max: number): Buffer {
  const b = Buffer.alloc(14);
  b.writeUInt16BE(INFO_BLOCK_SIZE, 0);
  b.writeUInt32BE(min, 2);
  b.writeUInt32BE(preferred, 6);
  b.writeUInt32BE(max, 10);
  return b;
}

/** NBD_OPT_EXPORT_NAME's reply: size, transmission flags, and 124 zero bytes unless the client
 *  set NBD_FLAG_C_NO_ZEROES. */
export function encodeExportNameReply(size: number, flags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(10 + (noZeroes ? 0 : 124));
  b.writeBigUInt64BE(BigInt(size), 0);
  b.writeUInt16BE(flags, 8);
  return b;
}

/** A simple reply's header (a read's data, if any, follows it). */
export function encodeSimpleReply(cookie: bigint, error = 0): Buffer {
  const b = Buffer.alloc(16);
  b.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
  b.writeUInt32BE(error, 4);
  b.writeBigUInt64BE(cookie, 8);
  return b;
}
