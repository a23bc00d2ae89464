// The follow relay's own handshake with its client (agents/host/disks/nbd-relay-handshake.ts):
// pure, each option's answer read back with the NBD client's parsers (nbd-wire.ts).
import { describe, expect, it } from 'vitest';
import { answerOption, clientFlags, parseInfoRequest, type ClientSession, type StoreExport } from '../../agents/host/disks/nbd-relay-handshake.ts';
import { FLAG_SEND_FLUSH, FLAG_SEND_FUA } from '../../agents/host/disks/nbd-relay-frames.ts';
import { encodeGo, parseInfo, REP, REP_ERR_UNKNOWN, REP_ERR_UNSUP } from '../../agents/host/disks/nbd-wire.ts';

const STORE: StoreExport = { name: 'x', size: 16 << 20, flags: 1 | FLAG_SEND_FLUSH | FLAG_SEND_FUA | (1 << 5), structured: true, blockSize: { min: 1, preferred: 4096, max: 32 << 20 } };
const AGREED: ClientSession = { noZeroes: true, structured: true };
const ERR_POLICY = 0x80000002;
const ERR_INVALID = 0x80000003;

/** Each reply of an answer: option, type and payload. */
function replies(out: Buffer[]): { option: number; type: number; data: Buffer }[] {
  return out.map((b) => {
    expect(b.readUInt32BE(16)).toBe(b.length - 20);
    return { option: b.readUInt32BE(8), type: b.readUInt32BE(12), data: b.subarray(20) };
  });
}
/** NBD_OPT_GO's / _INFO's data for `name` (the option header stripped). */
const goData = (name: string) => encodeGo(name).subarray(16);

describe("the follow relay's own handshake", () => {
  it('NBD_OPT_GO for the export: its size and flags less flush and FUA, the store\'s block sizes, then ACK; the transmission phase follows', () => {
    const a = answerOption(STORE, AGREED, 7, goData('x'));
    expect(a.next).toBe('transmission');
    const r = replies(a.out);
    expect(r.map((x) => [x.option, x.type])).toEqual([[7, REP.INFO], [7, REP.INFO], [7, REP.ACK]]);
    expect(parseInfo(r[0]!.data)).toEqual({ type: 'export', size: 16 << 20, flags: 1 | (1 << 5) });
    expect(parseInfo(r[1]!.data)).toEqual({ type: 'block-size', min: 1, preferred: 4096, max: 32 << 20 });
    // Without block sizes from the store, none to the client.
    const { blockSize: _b, ...noSizes } = STORE;
    expect(replies(answerOption(noSizes, AGREED, 7, goData('x')).out).map((x) => x.type)).toEqual([REP.INFO, REP.ACK]);
  });

  it('NBD_OPT_INFO answers the same without a transmission phase; another name is NBD_REP_ERR_UNKNOWN; malformed data NBD_REP_ERR_INVALID', () => {
    const info = answerOption(STORE, AGREED, 6, goData('x'));
    expect(info).toMatchObject({ next: 'options' });
    expect(replies(info.out).map((x) => x.type)).toEqual([REP.INFO, REP.INFO, REP.ACK]);
    for (const opt of [6, 7]) {
      const wrong = answerOption(STORE, AGREED, opt, goData('y'));
      expect(wrong).toMatchObject({ next: 'options', count: 'refusedExports' });
      expect(replies(wrong.out).map((x) => x.type)).toEqual([REP_ERR_UNKNOWN]);
      const bad = answerOption(STORE, AGREED, opt, Buffer.from([0, 0, 0, 9, 0x78]));
      expect(replies(bad.out).map((x) => x.type)).toEqual([ERR_INVALID]);
    }
    expect(parseInfoRequest(Buffer.concat([goData('x'), Buffer.from([0])]))).toMatch(/information requests/);
  });

  it('structured replies: agreed only if the store agreed; NBD_OPT_GO without them, on a store connection that has them, is refused', () => {
    const fresh: ClientSession = { noZeroes: false, structured: false };
    const yes = answerOption(STORE, fresh, 8, Buffer.alloc(0));
    expect(yes).toMatchObject({ next: 'options', session: { structured: true } });
    expect(replies(yes.out)[0]!.type).toBe(REP.ACK);
    const no = answerOption({ ...STORE, structured: false }, fresh, 8, Buffer.alloc(0));
    expect(no).toMatchObject({ next: 'options', session: { structured: false } });
    expect(replies(no.out)[0]!.type).toBe(REP_ERR_UNSUP);
    expect(replies(answerOption(STORE, fresh, 8, Buffer.from([1])).out)[0]!.type).toBe(ERR_INVALID);

    expect(replies(answerOption(STORE, fresh, 7, goData('x')).out).map((x) => x.type)).toEqual([ERR_POLICY]);
    expect(answerOption(STORE, fresh, 1, Buffer.from('x'))).toMatchObject({ next: 'close' });
    // A store without structured replies: a client without them goes on.
    expect(answerOption({ ...STORE, structured: false }, fresh, 7, goData('x')).next).toBe('transmission');
  });

  it('extended headers and TLS: NBD_REP_ERR_UNSUP (counted); metadata contexts: none (ACK); ABORT: ACK, then close; anything else: NBD_REP_ERR_UNSUP', () => {
    for (const opt of [11, 5]) {
      const a = answerOption(STORE, AGREED, opt, Buffer.alloc(0));
      expect(a).toMatchObject({ next: 'options', count: 'refusedOptions' });
      expect(replies(a.out)[0]!.type).toBe(REP_ERR_UNSUP);
    }
    for (const opt of [9, 10]) expect(replies(answerOption(STORE, AGREED, opt, Buffer.alloc(12)).out).map((x) => x.type)).toEqual([REP.ACK]);
    const abort = answerOption(STORE, AGREED, 2, Buffer.alloc(0));
    expect(abort).toMatchObject({ next: 'close' });
    expect(replies(abort.out).map((x) => x.type)).toEqual([REP.ACK]);
    for (const opt of [3, 4, 12, 0xffff]) expect(replies(answerOption(STORE, AGREED, opt, Buffer.alloc(0)).out).map((x) => [x.option, x.type])).toEqual([[opt, REP_ERR_UNSUP]]);
  });

  it('NBD_OPT_EXPORT_NAME: size and flags (with the 124 zero bytes unless no-zeroes), or, for another name, a close', () => {
    for (const noZeroes of [true, false]) {
      const a = answerOption(STORE, { ...AGREED, noZeroes }, 1, Buffer.from('x'));
      expect(a.next).toBe('transmission');
      const b = a.out[0]!;
      expect(b.length).toBe(noZeroes ? 10 : 134);
      expect(Number(b.readBigUInt64BE(0))).toBe(16 << 20);
      expect(b.readUInt16BE(8)).toBe(1 | (1 << 5));
    }
    expect(answerOption(STORE, AGREED, 1, Buffer.from('y'))).toMatchObject({ next: 'close', out: [], count: 'refusedExports' });
  });

  it("the client's flags: fixed newstyle required, no unknown bits", () => {
    expect(clientFlags(3)).toEqual({ noZeroes: true, structured: false });
    expect(clientFlags(1)).toEqual({ noZeroes: false, structured: false });
    expect(clientFlags(2)).toMatch(/fixed newstyle/);
    expect(clientFlags(1 | 8)).toMatch(/unknown client flags 0x9/);
  });
});
