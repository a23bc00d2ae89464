// The NBD client's handshake (nbd-client.ts): fixed newstyle negotiation, then the options it
// needs: NBD_OPT_STRUCTURED_REPLY, NBD_OPT_SET_META_CONTEXT for the contexts asked for, NBD_OPT_GO
// for the export (NBD protocol: "Fixed newstyle negotiation", "Option types", "Option reply
// types"). Extended headers are not negotiated: compact requests are enough for the client's
// reads (at most 32 MiB each). Works on a ByteReader and a write function, so it holds no socket.
import { hostError } from '../errors.ts';
import {
  ByteReader, encodeGo, encodeOption, encodeSetMetaContext, FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, hex, IHAVEOPT, isRepError,
  MAX_READ_REQUEST, NBDMAGIC, nbdFailure, OLDSTYLE_MAGIC, OPT, parseInfo, parseMetaContext, parseOptionReplyHeader, REP,
  REP_ERR_UNKNOWN, REP_ERR_UNSUP, repErrorName,
} from './nbd-wire.ts';

/** What the handshake agreed. */
export interface Negotiated {
  size: number;
  flags: number;
  /** Whether the server sends structured replies (without them, no block status). */
  structured: boolean;
  contexts: Map<string, number>;
  /** The largest read one request may ask for: 32 MiB, or less if the server says so. */
  readMax: number;
  /** NBD_INFO_BLOCK_SIZE, when the server sent it. */
  blockSize?: { min: number; preferred: number; max: number };
}

const MAX_OPTION_REPLIES = 1024;

/** `maxReplies`: the most replies one option may get (a bound on a hostile server). */
export async function negotiate(reader: ByteReader, write: (b: Buffer) => void, exportName: string, queries: readonly string[], server: string, maxReplies = MAX_OPTION_REPLIES): Promise<Negotiated> {
  const hello = await reader.read(18);
  const magic = hello.readBigUInt64BE(0);
  if (magic !== NBDMAGIC) throw nbdFailure('not an NBD server (no NBDMAGIC)', { server, magic: hex(magic) });
  const style = hello.readBigUInt64BE(8);
  if (style === OLDSTYLE_MAGIC) throw nbdFailure('an oldstyle NBD server: only fixed newstyle is spoken', { server });
  if (style !== IHAVEOPT) throw nbdFailure('an unknown NBD handshake', { server, magic: hex(style) });
  const serverFlags = hello.readUInt16BE(16);
  if (!(serverFlags & FLAG_FIXED_NEWSTYLE)) throw nbdFailure('the server does not offer fixed newstyle negotiation', { server, flags: serverFlags });
  const clientFlags = Buffer.alloc(4);
  clientFlags.writeUInt32BE(FLAG_FIXED_NEWSTYLE | (serverFlags & FLAG_NO_ZEROES), 0);
  write(clientFlags);

  /** Send one option and read its replies up to NBD_REP_ACK; each other reply goes to `onReply`.
   *  With `unsupOk`, NBD_REP_ERR_UNSUP resolves false instead of failing. */
  const option = async (opt: number, request: Buffer, onReply: (type: number, payload: Buffer) => void, unsupOk = false): Promise<boolean> => {
    write(request);
    for (let n = 0; n < maxReplies; n++) {
      const h = parseOptionReplyHeader(await reader.read(20), opt);
      const payload = await reader.read(h.length);
      if (h.type === REP.ACK) return true;
      if (isRepError(h.type)) {
        if (unsupOk && h.type === REP_ERR_UNSUP) return false;
        const details = { server, export: exportName, option: opt, reply: repErrorName(h.type), message: payload.toString('utf8').slice(0, 300) };
        if (h.type === REP_ERR_UNKNOWN) throw hostError('VMTC_HOST_DISK_NOT_FOUND', { nbd: 'the server has no export of this name', ...details });
        throw nbdFailure(`the server refused option ${opt}: ${details.reply}`, details);
      }
      onReply(h.type, payload);
    }
    throw nbdFailure('too many replies to one option', { server, option: opt });
  };

  const contexts = new Map<string, number>();
  const structured = await option(OPT.STRUCTURED_REPLY, encodeOption(OPT.STRUCTURED_REPLY), () => undefined, true);
  if (structured && queries.length) {
    const ids = new Set<number>();
    // A server that selects none of them (or knows no metadata contexts) leaves `contexts` empty.
    await option(OPT.SET_META_CONTEXT, encodeSetMetaContext(exportName, queries), (type, p) => {
      if (type !== REP.META_CONTEXT) return;
      const m = parseMetaContext(p);
      if (ids.has(m.id) || contexts.has(m.name)) throw nbdFailure('a metadata context id or name given twice', { server, id: m.id, name: m.name });
      ids.add(m.id);
      contexts.set(m.name, m.id);
    }, true);
  }
  let info: { size: number; flags: number } | undefined;
  let blockSize: Negotiated['blockSize'];
  await option(OPT.GO, encodeGo(exportName), (type, p) => {
    if (type !== REP.INFO) return;
    const i = parseInfo(p);
    if (i.type === 'export') info = { size: i.size, flags: i.flags };
    else if (i.type === 'block-size') blockSize = { min: i.min, preferred: i.preferred, max: i.max };
  });
  if (!info) throw nbdFailure('NBD_OPT_GO ended without NBD_INFO_EXPORT', { server });
  return { ...info, structured, contexts, readMax: blockSize ? Math.min(MAX_READ_REQUEST, blockSize.max) : MAX_READ_REQUEST, ...(blockSize ? { blockSize } : {}) };
}
