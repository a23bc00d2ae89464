// The NBD client's wire format and handshake (agents/host/disks/nbd-wire.ts, nbd-handshake.ts),
// pure: server bytes built by hand (test/helpers/nbd-scripted.ts) fed to a ByteReader, what the
// client writes captured. The client against real QEMU and against servers that misbehave on a
// socket: test/integration/nbd-client.test.ts.
import { describe, expect, it } from 'vitest';
import { negotiate } from '../../agents/host/disks/nbd-handshake.ts';
import {
  appendExtents, ByteReader, coverageGap, encodeRequest, encodeSetMetaContext, maxChunkPayload, OPT, parseBlockStatus, parseErrorPayload,
  parseInfo, parseOptionReplyHeader, REP, REPLY_TYPE, type Extent,
} from '../../agents/host/disks/nbd-wire.ts';
import { srv } from '../helpers/nbd-scripted.ts';

const ERR = (n: number) => 0x80000000 + n;

/** `fn` throws the client's coded protocol error, with `details.nbd` matching `nbd`. */
function expectNbd(fn: () => unknown, nbd: RegExp): void {
  let thrown: unknown;
  try {
    fn();
  } catch (e) {
    thrown = e;
  }
  expect(thrown).toMatchObject({ code: 'VMTC_HOST_DISK_TOOL_FAILED', details: { nbd: expect.stringMatching(nbd) } });
}

/** Run the client's handshake against server bytes given up front; `writes` is what it sent. */
async function handshakeWith(server: Buffer[], queries: string[] = []) {
  const reader = new ByteReader();
  const writes: Buffer[] = [];
  for (const b of server) reader.push(b);
  const result = negotiate(reader, (b) => writes.push(b), 'exp', queries, 'test');
  return { result, writes };
}

const goodGo = [srv.optReply(OPT.GO, REP.INFO, srv.infoExport(1 << 30, 0b11)), srv.optReply(OPT.GO, REP.ACK)];

describe('nbd handshake', () => {
  it('negotiates structured replies, the meta contexts the server grants, and the export size, flags and block size', async () => {
    const { result, writes } = await handshakeWith([
      srv.hello(),
      srv.optReply(OPT.STRUCTURED_REPLY, REP.ACK),
      srv.optReply(OPT.SET_META_CONTEXT, REP.META_CONTEXT, srv.metaContext(7, 'base:allocation')),
      srv.optReply(OPT.SET_META_CONTEXT, REP.ACK),
      srv.optReply(OPT.GO, REP.INFO, srv.infoBlockSize(512, 4096, 1 << 20)),
      srv.optReply(OPT.GO, REP.INFO, Buffer.from([0, 9, 1, 2])), // an information type it does not know: skipped
      ...goodGo,
    ], ['base:allocation', 'qemu:dirty-bitmap:b']);
    const n = await result;
    expect(n).toMatchObject({ size: 1 << 30, flags: 0b11, structured: true, readMax: 1 << 20 });
    expect([...n.contexts]).toEqual([['base:allocation', 7]]);
    // Client flags: fixed newstyle and no zeroes (the server offered both); then the three options.
    expect(writes[0]).toEqual(Buffer.from([0, 0, 0, 3]));
    expect(writes.slice(1).map((w) => w.readUInt32BE(8))).toEqual([OPT.STRUCTURED_REPLY, OPT.SET_META_CONTEXT, OPT.GO]);
    expect(writes[2]).toEqual(encodeSetMetaContext('exp', ['base:allocation', 'qemu:dirty-bitmap:b']));
    const go = writes[3]!.subarray(16);
    expect(go.readUInt32BE(0)).toBe(3);
    expect(go.subarray(4, 7).toString()).toBe('exp');
    expect(go.readUInt16BE(7)).toBe(0); // no information requests: no promise of aligned requests
  });

  it('a server without structured replies: no meta contexts asked, none agreed', async () => {
    const { result, writes } = await handshakeWith([srv.hello(), srv.optReply(OPT.STRUCTURED_REPLY, ERR(1)), ...goodGo], ['base:allocation']);
    const n = await result;
    expect(n.structured).toBe(false);
    expect(n.contexts.size).toBe(0);
    expect(writes.slice(1).map((w) => w.readUInt32BE(8))).toEqual([OPT.STRUCTURED_REPLY, OPT.GO]);
  });

  it('an unknown export is VMTC_HOST_DISK_NOT_FOUND; another refusal is VMTC_HOST_DISK_TOOL_FAILED naming it', async () => {
    const unknown = await handshakeWith([srv.hello(), srv.optReply(OPT.STRUCTURED_REPLY, REP.ACK), srv.optReply(OPT.GO, ERR(6), Buffer.from("export 'exp' not present"))]);
    await expect(unknown.result).rejects.toMatchObject({ code: 'VMTC_HOST_DISK_NOT_FOUND', details: { reply: 'NBD_REP_ERR_UNKNOWN', export: 'exp', message: "export 'exp' not present" } });
    const tls = await handshakeWith([srv.hello(), srv.optReply(OPT.STRUCTURED_REPLY, ERR(5))]);
    await expect(tls.result).rejects.toMatchObject({ code: 'VMTC_HOST_DISK_TOOL_FAILED', details: { reply: 'NBD_REP_ERR_TLS_REQD' } });
  });

  it('refuses what is not a fixed newstyle NBD server, and what breaks the option exchange', async () => {
    const cases: [Buffer[], RegExp][] = [
      [[Buffer.from('SSH-2.0-OpenSSH_9.2\r\n')], /not an NBD server/],
      [[Buffer.concat([srv.hello().subarray(0, 8), Buffer.from('0000420281861253', 'hex'), Buffer.alloc(2)])], /oldstyle/],
      [[Buffer.concat([srv.hello().subarray(0, 8), Buffer.from('JUNKJUNK'), Buffer.alloc(2)])], /unknown NBD handshake/],
      [[srv.hello(0)], /fixed newstyle/],
      [[srv.hello(), srv.optReply(OPT.GO, REP.ACK)], /option the client did not send/],
      // A huge announced length is refused from the header, before waiting for (or allocating) it.
      [[srv.hello(), srv.optReply(OPT.STRUCTURED_REPLY, REP.ACK, Buffer.alloc(0), 0xfffffff0)], /longer than the client accepts/],
      [[srv.hello(), srv.optReply(OPT.STRUCTURED_REPLY, REP.ACK), srv.optReply(OPT.SET_META_CONTEXT, REP.ACK), srv.optReply(OPT.GO, REP.ACK)], /without NBD_INFO_EXPORT/],
      [[srv.hello(), srv.optReply(OPT.STRUCTURED_REPLY, REP.ACK), srv.optReply(OPT.SET_META_CONTEXT, REP.META_CONTEXT, srv.metaContext(1, 'a')), srv.optReply(OPT.SET_META_CONTEXT, REP.META_CONTEXT, srv.metaContext(1, 'b'))], /given twice/],
    ];
    for (const [bytes, nbd] of cases) {
      const { result } = await handshakeWith(bytes, ['a', 'b']);
      const e = await result.catch((x: unknown) => x as { code: string; details: { nbd: string } });
      expect(e, String(nbd)).toMatchObject({ code: 'VMTC_HOST_DISK_TOOL_FAILED' });
      expect((e as { details: { nbd: string } }).details.nbd).toMatch(nbd);
    }
  });
});

describe('nbd wire', () => {
  it('a compact request: magic, flags, type, handle, offset, length', () => {
    expect(encodeRequest(0, 0x01020304, 2 ** 40 + 5, 65536).toString('hex')).toBe('25609513' + '0000' + '0000' + '0000000001020304' + '0000010000000005' + '00010000');
  });

  it('option reply headers, information and block status payloads are checked', () => {
    const h = srv.optReply(OPT.GO, REP.INFO, Buffer.alloc(12)).subarray(0, 20);
    expect(parseOptionReplyHeader(h, OPT.GO)).toEqual({ option: OPT.GO, type: REP.INFO, length: 12 });
    const bad = Buffer.from(h);
    bad[0] = 0xff;
    expectNbd(() => parseOptionReplyHeader(bad, OPT.GO), /wrong magic/);
    expect(parseInfo(srv.infoExport(2 ** 53 - 1, 1))).toEqual({ type: 'export', size: 2 ** 53 - 1, flags: 1 });
    const huge = srv.infoExport(0, 1);
    huge.writeBigUInt64BE(2n ** 60n, 2);
    expectNbd(() => parseInfo(huge), /beyond 2\^53/);
    expectNbd(() => parseInfo(srv.infoExport(10, 2)), /HAS_FLAGS/);
    expectNbd(() => parseInfo(srv.infoBlockSize(1, 1, 100)), /block size/);
    expect(parseBlockStatus(srv.status(3, [[4096, 1], [512, 0]]))).toEqual({ contextId: 3, descriptors: [{ length: 4096, flags: 1 }, { length: 512, flags: 0 }] });
    expectNbd(() => parseBlockStatus(srv.status(3, [[4096, 1]]).subarray(0, 10)), /whole descriptors/);
    expectNbd(() => parseBlockStatus(srv.status(3, [])), /whole descriptors/);
    expectNbd(() => parseBlockStatus(srv.status(3, [[4096, 1], [0, 0]])), /length zero/);
  });

  it('caps what each chunk type may announce for a request', () => {
    expect(maxChunkPayload(REPLY_TYPE.NONE, 4096)).toBe(0);
    expect(maxChunkPayload(REPLY_TYPE.OFFSET_DATA, 4096)).toBe(8 + 4096);
    expect(maxChunkPayload(REPLY_TYPE.OFFSET_HOLE, 4096)).toBe(12);
    expect(maxChunkPayload(REPLY_TYPE.ERROR, 4096)).toBe(6 + 4096 + 8);
    expect(maxChunkPayload(REPLY_TYPE.BLOCK_STATUS, 4096)).toBe(4 + 8 * 2 ** 20);
    expect(maxChunkPayload(7, 4096)).toBe(0);
  });

  it('error chunks: errno, message, offset; a message length that does not fit is refused', () => {
    expect(parseErrorPayload(REPLY_TYPE.ERROR, srv.error(5, 'I/O error'))).toEqual({ errno: 5, message: 'I/O error' });
    const withOffset = Buffer.concat([srv.error(5, 'bad'), Buffer.from('0000000000100000', 'hex')]);
    expect(parseErrorPayload(REPLY_TYPE.ERROR_OFFSET, withOffset)).toEqual({ errno: 5, message: 'bad', offset: 0x100000 });
    const lying = srv.error(5, 'bad');
    lying.writeUInt16BE(4000, 4);
    expectNbd(() => parseErrorPayload(REPLY_TYPE.ERROR, lying), /does not fit/);
    expectNbd(() => parseErrorPayload(REPLY_TYPE.ERROR_OFFSET, srv.error(5, 'bad')), /does not fit/);
  });

  it('coverage of a read by its chunks: exact, a gap, an overlap', () => {
    expect(coverageGap([{ offset: 150, length: 50 }, { offset: 100, length: 50 }], 100, 100)).toBeUndefined();
    expect(coverageGap([{ offset: 100, length: 50 }], 100, 100)).toBe('no chunk for 150..200');
    expect(coverageGap([{ offset: 100, length: 50 }, { offset: 160, length: 40 }], 100, 100)).toBe('no chunk for 150..160');
    expect(coverageGap([{ offset: 100, length: 60 }, { offset: 150, length: 50 }], 100, 110)).toBe('chunks overlap at 150');
  });

  it('extents from several replies: clipped to the range asked for, equal neighbours merged', () => {
    const out: Extent[] = [];
    let at = appendExtents(out, 0, 10_000, [{ length: 1000, flags: 0 }, { length: 1000, flags: 1 }]);
    expect(at).toBe(2000);
    at = appendExtents(out, at, 10_000, [{ length: 500, flags: 1 }, { length: 1 << 20, flags: 0 }]);
    expect(at).toBe(10_000);
    expect(out).toEqual([{ offset: 0, length: 1000, flags: 0 }, { offset: 1000, length: 1500, flags: 1 }, { offset: 2500, length: 7500, flags: 0 }]);
  });

  it('ByteReader: exact reads across pushes, straight into a destination, and a failure for the waiting and later reads', async () => {
    const r = new ByteReader(64);
    const first = r.read(5);
    r.push(Buffer.from('ab'));
    r.push(Buffer.from('cdefg'));
    expect((await first).toString()).toBe('abcde');
    const dst = Buffer.alloc(6, '.');
    const into = r.readInto(dst, 1, 4);
    r.push(Buffer.from('hijk'));
    await into;
    expect(dst.toString()).toBe('.fghi.');
    const waiting = r.read(10);
    r.fail(new Error('gone'));
    await expect(waiting).rejects.toThrow('gone');
    await expect(r.read(1)).rejects.toThrow('gone');
  });

  it('ByteReader: more unread bytes than its cap fail it (a server flooding the client)', async () => {
    const r = new ByteReader(64);
    r.push(Buffer.alloc(60));
    r.push(Buffer.alloc(10));
    await expect(r.read(1)).rejects.toMatchObject({ code: 'VMTC_HOST_DISK_TOOL_FAILED', details: { nbd: expect.stringMatching(/more than the client has asked for/) } });
  });
});
