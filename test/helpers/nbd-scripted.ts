// The server's side of the NBD protocol, built by hand, for the NBD client's tests
// (agents/host/disks/nbd-client.ts): the bytes a server sends (so a test can send what no real
// server would: junk, a reply cut short, lengths out of bounds) and a scripted server on a unix
// socket whose every connection runs the test's script. The well-formed messages are the
// relay's own encoders (agents/host/disks/nbd-server-wire.ts). Not a test file itself.
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import {
  encodeGreeting, encodeInfoBlockSize, encodeInfoExport, encodeOptionReply, encodeSimpleReply,
} from '../../agents/host/disks/nbd-server-wire.ts';
import { ByteReader, IHAVEOPT, OPT, REP, STRUCTURED_REPLY_MAGIC } from '../../agents/host/disks/nbd-wire.ts';
import type { Cleanup } from './cleanups.ts';

export const srv = {
  /** NBDMAGIC, IHAVEOPT, handshake flags (fixed newstyle, no zeroes). */
  hello: (flags = 3): Buffer => encodeGreeting(flags),
  /** `length` other than the payload's: a header that lies. */
  optReply(option: number, type: number, payload: Buffer = Buffer.alloc(0), length = payload.length): Buffer {
    const b = encodeOptionReply(option, type, payload);
    b.writeUInt32BE(length, 16);
    return b;
  },
  infoExport: (size: number, flags = 1 | 2): Buffer => encodeInfoExport(size, flags),
  infoBlockSize: (min: number, preferred: number, max: number): Buffer => encodeInfoBlockSize(min, preferred, max),
  metaContext(id: number, name: string): Buffer {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(id, 0);
    return Buffer.concat([b, Buffer.from(name)]);
  },
  chunk(flags: number, type: number, handle: number, payload: Buffer = Buffer.alloc(0), length = payload.length): Buffer {
    const b = Buffer.alloc(20);
    b.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0);
    b.writeUInt16BE(flags, 4);
    b.writeUInt16BE(type, 6);
    b.writeUInt32BE(0, 8);
    b.writeUInt32BE(handle, 12);
    b.writeUInt32BE(length, 16);
    return Buffer.concat([b, payload]);
  },
  simple: (errno: number, handle: number, data: Buffer = Buffer.alloc(0)): Buffer => Buffer.concat([encodeSimpleReply(BigInt(handle >>> 0), errno), data]),
  /** OFFSET_DATA / OFFSET_HOLE payloads; BLOCK_STATUS payload; ERROR payload. */
  offsetData(offset: number, data: Buffer): Buffer {
    const b = Buffer.alloc(8);
    b.writeBigUInt64BE(BigInt(offset), 0);
    return Buffer.concat([b, data]);
  },
  hole(offset: number, length: number): Buffer {
    const b = Buffer.alloc(12);
    b.writeBigUInt64BE(BigInt(offset), 0);
    b.writeUInt32BE(length, 8);
    return b;
  },
  status(contextId: number, descriptors: [length: number, flags: number][]): Buffer {
    const b = Buffer.alloc(4 + 8 * descriptors.length);
    b.writeUInt32BE(contextId, 0);
    descriptors.forEach(([l, f], i) => {
      b.writeUInt32BE(l, 4 + 8 * i);
      b.writeUInt32BE(f, 8 + 8 * i);
    });
    return b;
  },
  error(errno: number, message: string): Buffer {
    const m = Buffer.from(message);
    const b = Buffer.alloc(6);
    b.writeUInt32BE(errno, 0);
    b.writeUInt16BE(m.length, 4);
    return Buffer.concat([b, m]);
  },
};

export interface ClientRequest {
  type: number;
  handle: number;
  offset: number;
  length: number;
}

/** One client connection as the script sees it. */
export class ScriptedConn {
  readonly reader = new ByteReader();
  constructor(readonly socket: Socket) {
    socket.on('data', (b: Buffer) => this.reader.push(b));
    socket.on('error', () => undefined);
    socket.on('close', () => this.reader.fail(new Error('client gone')));
  }
  send(b: Buffer): void {
    if (!this.socket.destroyed) this.socket.write(b);
  }
  async option(): Promise<{ option: number; data: Buffer }> {
    const h = await this.reader.read(16);
    if (h.readBigUInt64BE(0) !== IHAVEOPT) throw new Error('not an option request');
    return { option: h.readUInt32BE(8), data: await this.reader.read(h.readUInt32BE(12)) };
  }
  async request(): Promise<ClientRequest> {
    const b = await this.reader.read(28);
    return { type: b.readUInt16BE(6), handle: b.readUInt32BE(12), offset: Number(b.readBigUInt64BE(16)), length: b.readUInt32BE(24) };
  }
  /** A well-behaved handshake: structured replies, the given contexts (whatever was asked),
   *  the export's size and optionally block size constraints. */
  async handshake(o: { size: number; contexts?: [name: string, id: number][]; maxBlock?: number }): Promise<void> {
    this.send(srv.hello());
    await this.reader.read(4);
    for (;;) {
      const { option } = await this.option();
      if (option === OPT.SET_META_CONTEXT) for (const [name, id] of o.contexts ?? []) this.send(srv.optReply(option, REP.META_CONTEXT, srv.metaContext(id, name)));
      if (option === OPT.GO) {
        this.send(srv.optReply(option, REP.INFO, srv.infoExport(o.size)));
        if (o.maxBlock) this.send(srv.optReply(option, REP.INFO, srv.infoBlockSize(1, 4096, o.maxBlock)));
      }
      this.send(srv.optReply(option, REP.ACK));
      if (option === OPT.GO) return;
    }
  }
}

/** A server on a unix socket in `dir` running `script` for each connection (its failures, once
 *  the client is gone, are the client's doing and ignored); closed by a cleanup. */
export async function scriptedServer(dir: string, cleanups: Cleanup[], script: (c: ScriptedConn) => Promise<void>): Promise<{ path: string; server: Server; connections: ScriptedConn[] }> {
  const path = join(dir, `scripted-${Math.random().toString(36).slice(2, 8)}.sock`);
  const connections: ScriptedConn[] = [];
  const server = createServer((s) => {
    const c = new ScriptedConn(s);
    connections.push(c);
    script(c).catch(() => s.destroy());
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, () => resolve());
  });
  cleanups.push(async () => {
    for (const c of connections) c.socket.destroy();
    await new Promise<void>((r) => server.close(() => r()));
  });
  return { path, server, connections };
}
