// The follow relay's handshake phase (nbd-relay-conn.ts; NBD protocol, proto.md: "Fixed newstyle
// negotiation", "Option types", "Option reply types"). Bytes pass through in order; the relay
//   - answers NBD_OPT_EXTENDED_HEADERS (and NBD_OPT_STARTTLS) itself with NBD_REP_ERR_UNSUP,
//     after the replies to the options sent before it, so compact headers are used;
//   - clears NBD_FLAG_SEND_FLUSH and NBD_FLAG_SEND_FUA in NBD_INFO_EXPORT (NBD_OPT_GO, _INFO) and
//     in NBD_OPT_EXPORT_NAME's reply;
//   - notes whether structured replies were agreed, and when the transmission phase begins.
// Each step reads what it can from its side's bytes and says what the connection does next.
import {
  answeredLocally, checkGreeting, encodeOptionReply, GREETING, isFinalReply, OPT_ABORT, OPT_EXPORT_NAME, OPT_GO, OPT_INFO,
  OPT_STRUCTURED_REPLY, OPTION_HEADER, OPTION_REPLY_HEADER, parseOptionHeader, parseOptionReplyHeader, REP, rewriteExportNameReply, rewriteInfo,
} from './nbd-relay-frames.ts';
import type { Bytes, RelayCounters } from './nbd-relay-plumbing.ts';
import { FLAG_NO_ZEROES, REP_ERR_UNSUP } from './nbd-wire.ts';

/** What the connection does after a step:
 *  wait          more bytes are needed
 *  next          step again
 *  hold          the client waits for NBD_OPT_GO's or _EXPORT_NAME's answer: read nothing more
 *  resume        that answer was a refusal: the client goes on negotiating
 *  ignore        the client aborted: discard what it sends
 *  transmission  the transmission phase begins (both sides)
 *  string        malformed input: why (the connection cuts both sockets) */
export type Step = 'wait' | 'next' | 'hold' | 'resume' | 'ignore' | 'transmission' | string;

type ClientState = { k: 'flags' } | { k: 'option' } | { k: 'option-data'; header: Buffer; option: number; length: number };
type ServerState = { k: 'greeting' } | { k: 'option-reply' } | { k: 'option-data'; header: Buffer; option: number; type: number; length: number } | { k: 'export-name' };

export class Negotiation {
  /** Structured replies were agreed (NBD_OPT_STRUCTURED_REPLY answered NBD_REP_ACK). */
  structured = false;
  private clientNoZeroes = false;
  private cState: ClientState = { k: 'flags' };
  private sState: ServerState = { k: 'greeting' };
  /** Options sent and not finally answered, in order; `local`: the relay's own answer. */
  private readonly options: { option: number; local?: Buffer }[] = [];

  constructor(private readonly io: { toClient(b: Buffer): void; toServer(b: Buffer): void; counters: RelayCounters }) {}

  clientStep(cin: Bytes): Step {
    const st = this.cState;
    switch (st.k) {
      case 'flags': {
        if (cin.length < 4) return 'wait';
        const b = cin.take(4);
        this.clientNoZeroes = (b.readUInt32BE(0) & FLAG_NO_ZEROES) !== 0;
        this.io.toServer(b);
        this.cState = { k: 'option' };
        return 'next';
      }
      case 'option': {
        if (cin.length < OPTION_HEADER) return 'wait';
        const header = cin.take(OPTION_HEADER);
        const h = parseOptionHeader(header);
        if (typeof h === 'string') return h;
        this.cState = { k: 'option-data', header, option: h.option, length: h.length };
        return 'next';
      }
      case 'option-data': {
        if (cin.length < st.length) return 'wait';
        const data = cin.take(st.length);
        this.cState = { k: 'option' };
        if (answeredLocally(st.option)) {
          // Not forwarded: the server would agree to extended headers (or TLS), which the relay
          // does not parse; the client falls back to compact headers.
          this.io.counters.refusedOptions++;
          this.options.push({ option: st.option, local: encodeOptionReply(st.option, REP_ERR_UNSUP) });
          this.flushLocalReplies();
          return 'next';
        }
        this.io.toServer(Buffer.concat([st.header, data]));
        this.options.push({ option: st.option });
        // After these, what follows depends on the answer: more options, or transmission.
        if (st.option === OPT_GO || st.option === OPT_EXPORT_NAME) return 'hold';
        return st.option === OPT_ABORT ? 'ignore' : 'next';
      }
    }
  }

  serverStep(sin: Bytes): Step {
    const st = this.sState;
    switch (st.k) {
      case 'greeting': {
        if (sin.length < GREETING) return 'wait';
        const b = sin.take(GREETING);
        const why = checkGreeting(b);
        if (why) return why;
        this.io.toClient(b);
        this.sState = { k: 'option-reply' };
        return 'next';
      }
      case 'option-reply': {
        if (sin.length === 0) return 'wait';
        const head = this.options[0];
        if (!head) return 'an option reply to no option';
        if (head.option === OPT_EXPORT_NAME) {
          this.sState = { k: 'export-name' };
          return 'next';
        }
        if (sin.length < OPTION_REPLY_HEADER) return 'wait';
        const header = sin.take(OPTION_REPLY_HEADER);
        const h = parseOptionReplyHeader(header);
        if (typeof h === 'string') return h;
        if (h.option !== head.option) return `a reply to option ${h.option} while ${head.option} is pending`;
        this.sState = { k: 'option-data', header, option: h.option, type: h.type, length: h.length };
        return 'next';
      }
      case 'option-data': {
        if (sin.length < st.length) return 'wait';
        let data = sin.take(st.length);
        if (st.type === REP.INFO && (st.option === OPT_GO || st.option === OPT_INFO)) {
          const out = rewriteInfo(data);
          if (typeof out === 'string') return out;
          if (out !== data) this.io.counters.flagsCleared++;
          data = out;
        }
        this.io.toClient(Buffer.concat([st.header, data]));
        this.sState = { k: 'option-reply' };
        if (!isFinalReply(st.type)) return 'next';
        this.options.shift();
        const ack = st.type === REP.ACK;
        if (st.option === OPT_STRUCTURED_REPLY && ack) this.structured = true;
        if (st.option === OPT_GO && ack) return 'transmission';
        this.flushLocalReplies();
        return st.option === OPT_GO ? 'resume' : 'next';
      }
      case 'export-name': {
        const n = 10 + (this.clientNoZeroes ? 0 : 124);
        if (sin.length < n) return 'wait';
        this.io.toClient(rewriteExportNameReply(sin.take(n)));
        this.io.counters.flagsCleared++;
        this.options.shift();
        return 'transmission';
      }
    }
  }

  /** The relay's own option replies go out once the options before them were answered. */
  private flushLocalReplies(): void {
    while (this.options[0]?.local) this.io.toClient(this.options.shift()!.local!);
  }
}
