// The follow relay's handshake with its client, answered by the relay itself (NBD protocol,
// proto.md: "Fixed newstyle negotiation", "Option types", "Option reply types"). The relay
// negotiated with the store when it started (nbd-relay-store.ts), so the VM's QEMU, whose main
// loop waits for its NBD node's handshake, negotiates over a local socket and never across the
// path (docs/disks.md#following). What it is told is what the store said, less
// NBD_FLAG_SEND_FLUSH and _FUA; compact headers only (the relay parses them). Pure: one table of
// options and a function from (the store's export, what the client agreed, an option) to the
// replies and what the connection does next (nbd-relay-session.ts performs it).
import { encodeExportNameReply, encodeInfoBlockSize, encodeInfoExport, encodeOptionReply } from './nbd-server-wire.ts';
import {
  OPT_ABORT, OPT_EXPORT_NAME, OPT_EXTENDED_HEADERS, OPT_GO, OPT_INFO, OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT, OPT_STARTTLS,
  OPT_STRUCTURED_REPLY, REP_ERR_INVALID, REP_ERR_POLICY, withoutFlush,
} from './nbd-relay-frames.ts';
import { FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, MAX_STRING, REP, REP_ERR_UNKNOWN, REP_ERR_UNSUP } from './nbd-wire.ts';

/** The store's export as the relay's own handshake with it found it. */
export interface StoreExport {
  name: string;
  size: number;
  /** Transmission flags (NBD_FLAG_*), as the store sent them. */
  flags: number;
  /** The store agreed to structured replies: its replies on that connection are structured. */
  structured: boolean;
  /** NBD_INFO_BLOCK_SIZE, when the store sent it. */
  blockSize?: { min: number; preferred: number; max: number };
}

/** What the client has agreed so far. */
export interface ClientSession {
  /** NBD_FLAG_C_NO_ZEROES: NBD_OPT_EXPORT_NAME's reply without its 124 zero bytes. */
  noZeroes: boolean;
  structured: boolean;
}

/** After an option:
 *  options       the replies are sent and the client goes on negotiating
 *  transmission  the replies (NBD_OPT_GO's, or NBD_OPT_EXPORT_NAME's) are sent once the store's
 *                connection is there, and the transmission phase begins on it
 *  close         the replies are sent, then the connection closes (`why`)
 *  `count`: the relay's counter this answer adds to. */
export type Answer =
  | { next: 'options'; out: Buffer[]; session: ClientSession; count?: 'refusedOptions' | 'refusedExports' }
  | { next: 'transmission'; out: Buffer[] }
  | { next: 'close'; out: Buffer[]; why: string; count?: 'refusedExports' };

interface Ctx { store: StoreExport; session: ClientSession; option: number; data: Buffer }

/** The client's flags (the 4 bytes after the greeting); a string says why they are refused. */
export function clientFlags(v: number): ClientSession | string {
  if (!(v & FLAG_FIXED_NEWSTYLE)) return 'a client without fixed newstyle negotiation';
  if (v & ~(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)) return `unknown client flags 0x${v.toString(16)}`;
  return { noZeroes: (v & FLAG_NO_ZEROES) !== 0, structured: false };
}

const reply = (c: Ctx, type: number, message?: string) => encodeOptionReply(c.option, type, message ? Buffer.from(message) : undefined);
const goOn = (c: Ctx, out: Buffer[], extra: Partial<Extract<Answer, { next: 'options' }>> = {}): Answer => ({ next: 'options', out, session: c.session, ...extra });

/** The transmission flags the client is told: the store's, less flush and FUA. */
export const clientFlagsOf = (store: StoreExport): number => withoutFlush(store.flags);

/** NBD_OPT_INFO's and _GO's data: the export name, then information requests ("Option types"). */
export function parseInfoRequest(d: Buffer): { name: string } | string {
  if (d.length < 6) return 'too short for a name length and a request count';
  const n = d.readUInt32BE(0);
  if (n > MAX_STRING || 4 + n + 2 > d.length) return `an export name of ${n} bytes`;
  const requests = d.readUInt16BE(4 + n);
  if (d.length !== 4 + n + 2 + 2 * requests) return `${requests} information requests in ${d.length - 6 - n} bytes`;
  return { name: d.subarray(4, 4 + n).toString('utf8') };
}

function info(c: Ctx, go: boolean): Answer {
  const req = parseInfoRequest(c.data);
  if (typeof req === 'string') return goOn(c, [reply(c, REP_ERR_INVALID, req)]);
  if (req.name !== c.store.name) return goOn(c, [reply(c, REP_ERR_UNKNOWN, `no export named ${JSON.stringify(req.name.slice(0, 200))}`)], { count: 'refusedExports' });
  const { size, blockSize: bs } = c.store;
  const out = [
    encodeOptionReply(c.option, REP.INFO, encodeInfoExport(size, clientFlagsOf(c.store))),
    ...(bs ? [encodeOptionReply(c.option, REP.INFO, encodeInfoBlockSize(bs.min, bs.preferred, bs.max))] : []),
    reply(c, REP.ACK),
  ];
  if (!go) return goOn(c, out);
  // The store's connection sends structured replies to every request: a client that cannot read
  // them cannot use it.
  if (c.store.structured && !c.session.structured) return goOn(c, [reply(c, REP_ERR_POLICY, 'structured replies are required (NBD_OPT_STRUCTURED_REPLY first)')]);
  return { next: 'transmission', out };
}

/** The relay's table: each option it knows and its answer; any other gets NBD_REP_ERR_UNSUP. */
const OPTIONS: Record<number, (c: Ctx) => Answer> = {
  [OPT_STRUCTURED_REPLY]: (c) => {
    if (c.data.length) return goOn(c, [reply(c, REP_ERR_INVALID, 'NBD_OPT_STRUCTURED_REPLY has no data')]);
    if (!c.store.structured) return goOn(c, [reply(c, REP_ERR_UNSUP)]);
    return goOn(c, [reply(c, REP.ACK)], { session: { ...c.session, structured: true } });
  },
  // Compact headers only (the relay parses them), and no TLS (it could not read the stream).
  [OPT_EXTENDED_HEADERS]: (c) => goOn(c, [reply(c, REP_ERR_UNSUP)], { count: 'refusedOptions' }),
  [OPT_STARTTLS]: (c) => goOn(c, [reply(c, REP_ERR_UNSUP)], { count: 'refusedOptions' }),
  // No metadata contexts: the mirror writes, it does not ask for block status.
  [OPT_SET_META_CONTEXT]: (c) => goOn(c, [reply(c, REP.ACK)]),
  [OPT_LIST_META_CONTEXT]: (c) => goOn(c, [reply(c, REP.ACK)]),
  [OPT_INFO]: (c) => info(c, false),
  [OPT_GO]: (c) => info(c, true),
  // The old way: no error reply exists, so a refusal closes ("Fixed newstyle negotiation").
  [OPT_EXPORT_NAME]: (c) => {
    const name = c.data.toString('utf8');
    if (name !== c.store.name) return { next: 'close', out: [], why: `no export named ${JSON.stringify(name.slice(0, 200))}`, count: 'refusedExports' };
    if (c.store.structured && !c.session.structured) return { next: 'close', out: [], why: 'structured replies are required (NBD_OPT_STRUCTURED_REPLY first)' };
    return { next: 'transmission', out: [encodeExportNameReply(c.store.size, clientFlagsOf(c.store), c.session.noZeroes)] };
  },
  [OPT_ABORT]: (c) => ({ next: 'close', out: [reply(c, REP.ACK)], why: 'the client aborted the handshake' }),
};

/** The relay's answer to one option of its client. */
export function answerOption(store: StoreExport, session: ClientSession, option: number, data: Buffer): Answer {
  const c: Ctx = { store, session, option, data };
  return (OPTIONS[option] ?? ((x: Ctx) => goOn(x, [reply(x, REP_ERR_UNSUP)])))(c);
}
