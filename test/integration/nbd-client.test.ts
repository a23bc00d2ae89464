// The host agent's in-process NBD client (agents/host/disks/nbd-client.ts) against a real
// qemu-storage-daemon exporting a qcow2 image with a dirty bitmap on a unix socket (what QEMU
// serves a live move's pause: docs/disks.md), compared with what qemu-img reads from the same
// image and export; and against scripted servers (test/helpers/nbd-scripted.ts) that pipeline,
// answer in pieces and out of order, or misbehave: junk, a reply cut short, huge lengths, silence.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connectNbd, type NbdClient } from '../../agents/host/disks/nbd-client.ts';
import { CMD, REPLY_TYPE } from '../../agents/host/disks/nbd-wire.ts';
import { ManualClock, sleep, systemClock } from '../../src/common/clock.ts';
import { run } from '../../src/common/proc.ts';
import { cleanupsAfterEach } from '../helpers/cleanups.ts';
import { scriptedServer, srv, type ClientRequest, type ScriptedConn } from '../helpers/nbd-scripted.ts';

const cleanups = cleanupsAfterEach();
const MiB = 1024 * 1024;
const SIZE = 64 * MiB;
// Written before the bitmap was added (allocated, not dirty), then after it (dirty).
const BEFORE = [{ offset: 1 * MiB, length: 64 * 1024, pattern: 0xab }];
const AFTER = [{ offset: 8 * MiB, length: 128 * 1024, pattern: 0xcd }, { offset: 20 * MiB, length: 64 * 1024, pattern: 0xef }, { offset: 40 * MiB - 64 * 1024, length: 192 * 1024, pattern: 0x5a }];
const DONE = 1;

let dir: string;
let image: string;
let raw: Buffer;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vmtc-nbd-'));
  image = join(dir, 'd.qcow2');
  const io = (w: { offset: number; length: number; pattern: number }) => ['-c', `write -P ${w.pattern} ${w.offset} ${w.length}`];
  await run(['qemu-img', 'create', '-q', '-f', 'qcow2', image, String(SIZE)]);
  await run(['qemu-io', ...BEFORE.flatMap(io), image]);
  await run(['qemu-img', 'bitmap', '--add', image, 'b0']);
  await run(['qemu-io', ...AFTER.flatMap(io), image]);
  // A read-only export refuses a bitmap that still records.
  await run(['qemu-img', 'bitmap', '--disable', image, 'b0']);
  await run(['qemu-img', 'convert', '-O', 'raw', image, join(dir, 'd.raw')]);
  raw = await readFile(join(dir, 'd.raw'));
});

afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** qemu-storage-daemon exporting the image read-only as `x` with bitmap b0; killed by pid after the test. */
async function serve(): Promise<string> {
  const sock = join(dir, `qsd-${Math.random().toString(36).slice(2, 8)}.sock`);
  const child = spawn('qemu-storage-daemon', [
    '--blockdev', `driver=file,node-name=f,filename=${image},read-only=on`,
    '--blockdev', 'driver=qcow2,node-name=disk,file=f,read-only=on',
    '--nbd-server', `addr.type=unix,addr.path=${sock}`,
    '--export', JSON.stringify({ type: 'nbd', id: 'e', 'node-name': 'disk', name: 'x', writable: false, bitmaps: ['b0'] }),
  ], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d) => { stderr += d; });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  cleanups.push(async () => {
    if (child.exitCode === null && child.signalCode === null && child.pid) {
      process.kill(child.pid, 'SIGKILL');
      await exited;
    }
  });
  for (let i = 0; i < 400 && !existsSync(sock); i++) {
    if (child.exitCode !== null) throw new Error(`qemu-storage-daemon exited: ${stderr}`);
    await sleep(25);
  }
  if (!existsSync(sock)) throw new Error(`qemu-storage-daemon did not listen: ${stderr}`);
  return sock;
}

async function connect(path: string, o: { metaContexts?: string[]; clock?: ManualClock; timeoutMs?: number; exportName?: string } = {}): Promise<NbdClient> {
  const c = await connectNbd({ path }, o.exportName ?? 'x', { clock: o.clock ?? systemClock, timeoutMs: o.timeoutMs ?? 10_000, ...(o.metaContexts ? { metaContexts: o.metaContexts } : {}) });
  cleanups.push(() => c.close());
  return c;
}

/** The coded error a promise rejects with. */
async function failure(p: Promise<unknown>): Promise<{ code: string; details: Record<string, unknown> }> {
  try {
    await p;
  } catch (e) {
    return e as { code: string; details: Record<string, unknown> };
  }
  throw new Error('expected a rejection');
}

describe('nbd client against qemu-storage-daemon', () => {
  it('reads the bytes qemu-img convert gives: data, holes, across extents, and ranges split into several requests', async () => {
    const c = await connect(await serve());
    expect(c.size).toBe(SIZE);
    expect(c.flags & 1).toBe(1); // NBD_FLAG_HAS_FLAGS
    expect(c.flags & 2).toBe(2); // read-only
    const ranges: [number, number][] = [
      [1 * MiB, 64 * 1024], // data
      [30 * MiB, 64 * 1024], // a hole: zeros
      [1 * MiB - 10, 64 * 1024 + 20], // across a hole, data, a hole
      [8 * MiB + 4095, 13 * MiB], // data, hole, data, not aligned
      [0, 48 * MiB], // more than one request may ask for (32 MiB): split
      [0, SIZE],
    ];
    for (const [offset, length] of ranges) {
      const got = await c.read(offset, length);
      expect(got.equals(raw.subarray(offset, offset + length)), `${offset}+${length}`).toBe(true);
    }
    expect((await c.read(30 * MiB, 64 * 1024)).every((b) => b === 0)).toBe(true);
    expect((await c.read(20 * MiB, 16)).every((b) => b === 0xef)).toBe(true);
    // Concurrent reads share the connection.
    const all = await Promise.all(AFTER.map((w) => c.read(w.offset, w.length)));
    all.forEach((b, i) => expect(b.every((x) => x === AFTER[i]!.pattern)).toBe(true));
  });

  it('blockStatus of base:allocation: the written ranges allocated, the rest holes reading as zeros', async () => {
    const c = await connect(await serve(), { metaContexts: ['base:allocation'] });
    expect([...c.contexts.keys()]).toEqual(['base:allocation']);
    const ext = await c.blockStatus('base:allocation', 0, SIZE);
    // Contiguous over the whole disk.
    expect(ext[0]!.offset).toBe(0);
    for (let i = 1; i < ext.length; i++) expect(ext[i]!.offset).toBe(ext[i - 1]!.offset + ext[i - 1]!.length);
    expect(ext.at(-1)!.offset + ext.at(-1)!.length).toBe(SIZE);
    const allocated = ext.filter((e) => (e.flags & 1) === 0).map((e) => ({ offset: e.offset, length: e.length }));
    expect(allocated).toEqual([...BEFORE, ...AFTER].map((w) => ({ offset: w.offset, length: w.length })));
    expect(ext.filter((e) => e.flags & 1).every((e) => e.flags === 3)).toBe(true); // NBD_STATE_HOLE | NBD_STATE_ZERO
    // A range starting and ending inside extents is clipped to itself.
    expect(await c.blockStatus('base:allocation', 1 * MiB + 4096, 7 * MiB)).toEqual([
      { offset: 1 * MiB + 4096, length: 60 * 1024, flags: 0 },
      { offset: 1 * MiB + 64 * 1024, length: 7 * MiB - 64 * 1024, flags: 3 },
      { offset: 8 * MiB, length: 4096, flags: 0 },
    ]);
  });

  it('blockStatus of a dirty bitmap names exactly the ranges written after it, as qemu-img map reports them for the same export', async () => {
    const sock = await serve();
    const c = await connect(sock, { metaContexts: ['base:allocation', 'qemu:dirty-bitmap:b0'] });
    expect([...c.contexts.keys()].sort()).toEqual(['base:allocation', 'qemu:dirty-bitmap:b0']);
    const dirty = (await c.blockStatus('qemu:dirty-bitmap:b0', 0, SIZE)).filter((e) => e.flags & 1).map((e) => ({ offset: e.offset, length: e.length }));
    expect(dirty).toEqual(AFTER.map((w) => ({ offset: w.offset, length: w.length })));
    // qemu-img's nbd driver with x-dirty-bitmap reports the dirty extents as holes (as qemu-cow.ts once read them).
    const opts = `driver=nbd,server.type=unix,server.path=${sock},export=x,x-dirty-bitmap=qemu:dirty-bitmap:b0`;
    const map = JSON.parse((await run(['qemu-img', 'map', '--output=json', '--image-opts', opts])).stdout) as { start: number; length: number; data: boolean }[];
    expect(dirty).toEqual(map.filter((e) => !e.data).map((e) => ({ offset: e.start, length: e.length })));
    // Reading the dirty ranges through the same connection.
    for (const d of dirty) expect((await c.read(d.offset, d.length)).equals(raw.subarray(d.offset, d.offset + d.length))).toBe(true);
  });

  it('refuses coded: an unknown export, a context the server did not agree to, a range beyond the disk, a closed client', async () => {
    const sock = await serve();
    expect(await failure(connect(sock, { exportName: 'nope' }))).toMatchObject({ code: 'VMTC_HOST_DISK_NOT_FOUND', details: { reply: 'NBD_REP_ERR_UNKNOWN', export: 'nope' } });
    expect(await failure(connectNbd({ path: join(dir, 'no-such.sock') }, 'x', { clock: systemClock }))).toMatchObject({ code: 'VMTC_HOST_DISK_TOOL_FAILED', details: { nbd: expect.stringMatching(/ENOENT/) } });
    const c = await connect(sock, { metaContexts: ['qemu:dirty-bitmap:nope', 'base:allocation'] });
    expect([...c.contexts.keys()]).toEqual(['base:allocation']);
    expect(await failure(c.blockStatus('qemu:dirty-bitmap:nope', 0, 4096))).toMatchObject({ code: 'VMTC_HOST_BAD_PARAMS', details: { field: 'context' } });
    expect(await failure(c.read(SIZE - 10, 11))).toMatchObject({ code: 'VMTC_HOST_BAD_PARAMS', details: { field: 'length' } });
    expect(await failure(c.read(-1, 1))).toMatchObject({ code: 'VMTC_HOST_BAD_PARAMS' });
    expect((await c.read(SIZE - 10, 10)).length).toBe(10);
    await c.close();
    await c.close(); // idempotent
    expect(await failure(c.read(0, 1))).toMatchObject({ code: 'VMTC_HOST_DISK_TOOL_FAILED', details: { nbd: 'the client is closed' } });
  });
});

/** A deferred the script resolves when it reached a point the test waits for. */
function signal<T = void>() {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => { resolve = r; });
  return { promise, resolve };
}

describe('nbd client against scripted servers', () => {
  it('pipelines a split read (at most 16 in flight) and takes replies out of order: data in pieces, holes, simple replies', async () => {
    const clock = new ManualClock();
    const PIECE = 4096;
    const N = 20;
    const sixteen = signal();
    const proceed = signal();
    const { path } = await scriptedServer(dir, cleanups, async (s) => {
      await s.handshake({ size: 1 * MiB, maxBlock: PIECE });
      const held: ClientRequest[] = [];
      while (held.length < 16) held.push(await s.request());
      sixteen.resolve();
      await proceed.promise;
      for (let answered = 0; answered < N; answered++) {
        const r = held.pop()!; // newest first
        const i = r.offset / PIECE;
        const data = Buffer.alloc(PIECE, i + 1);
        if (i % 5 === 3) s.send(srv.chunk(DONE, REPLY_TYPE.OFFSET_HOLE, r.handle, srv.hole(r.offset, PIECE)));
        else if (i % 5 === 4) s.send(srv.simple(0, r.handle, data));
        else if (i % 5 === 2) {
          s.send(srv.chunk(0, REPLY_TYPE.OFFSET_DATA, r.handle, srv.offsetData(r.offset + 1000, data.subarray(1000))));
          s.send(srv.chunk(0, REPLY_TYPE.OFFSET_DATA, r.handle, srv.offsetData(r.offset, data.subarray(0, 1000))));
          s.send(srv.chunk(DONE, REPLY_TYPE.NONE, r.handle));
        } else s.send(srv.chunk(DONE, REPLY_TYPE.OFFSET_DATA, r.handle, srv.offsetData(r.offset, data)));
        if (answered + held.length + 1 < N) held.push(await s.request());
      }
    });
    const c = await connect(path, { clock });
    const reading = c.read(0, N * PIECE);
    await sixteen.promise;
    // One reply timer per request in flight: 16 sent, 4 waiting for a slot.
    expect(clock.pending()).toBe(16);
    proceed.resolve();
    const got = await reading;
    const want = Buffer.concat(Array.from({ length: N }, (_, i) => Buffer.alloc(PIECE, i % 5 === 3 ? 0 : i + 1)));
    expect(got.equals(want)).toBe(true);
    expect(clock.pending()).toBe(0);
  });

  it('blockStatus follows up a server that answers part of the range, and picks its context among several', async () => {
    const asked: { offset: number; length: number }[] = [];
    const { path } = await scriptedServer(dir, cleanups, async (s) => {
      await s.handshake({ size: 8 * MiB, contexts: [['base:allocation', 4], ['qemu:dirty-bitmap:b', 9]] });
      for (;;) {
        const r = await s.request();
        if (r.type !== CMD.BLOCK_STATUS) return;
        asked.push({ offset: r.offset, length: r.length });
        // At most 1 MiB each time; the bitmap's flag alternates by MiB.
        const len = Math.min(1 * MiB, r.length);
        s.send(srv.chunk(0, REPLY_TYPE.BLOCK_STATUS, r.handle, srv.status(4, [[len, 0]])));
        s.send(srv.chunk(DONE, REPLY_TYPE.BLOCK_STATUS, r.handle, srv.status(9, [[len, Math.floor(r.offset / MiB) % 2]])));
      }
    });
    const c = await connect(path, { metaContexts: ['base:allocation', 'qemu:dirty-bitmap:b'] });
    expect(await c.blockStatus('qemu:dirty-bitmap:b', 0, 4 * MiB)).toEqual([
      { offset: 0, length: MiB, flags: 0 }, { offset: MiB, length: MiB, flags: 1 }, { offset: 2 * MiB, length: MiB, flags: 0 }, { offset: 3 * MiB, length: MiB, flags: 1 },
    ]);
    expect(asked).toEqual([0, 1, 2, 3].map((m) => ({ offset: m * MiB, length: (4 - m) * MiB })));
    // base:allocation's descriptors (all 0) merge; the range ends inside a descriptor: clipped.
    expect(await c.blockStatus('base:allocation', MiB / 2, 3 * MiB)).toEqual([{ offset: MiB / 2, length: 3 * MiB, flags: 0 }]);
  });

  it("a server's error for one read is VMTC_HOST_DISK_UNREADABLE and the connection goes on", async () => {
    const { path } = await scriptedServer(dir, cleanups, async (s) => {
      await s.handshake({ size: 1 * MiB });
      const bad = await s.request();
      s.send(srv.chunk(DONE, REPLY_TYPE.ERROR, bad.handle, srv.error(5, 'Input/output error')));
      const good = await s.request();
      s.send(srv.chunk(DONE, REPLY_TYPE.OFFSET_DATA, good.handle, srv.offsetData(good.offset, Buffer.alloc(good.length, 7))));
    });
    const c = await connect(path);
    expect(await failure(c.read(4096, 512))).toMatchObject({ code: 'VMTC_HOST_DISK_UNREADABLE', details: { errno: 'EIO', message: 'Input/output error', offset: 4096 } });
    expect((await c.read(0, 16)).equals(Buffer.alloc(16, 7))).toBe(true);
  });

  /** A client of a scripted server that answers the first request with `answer`. */
  async function firstRequestAnswered(answer: (s: ScriptedConn, r: ClientRequest) => void): Promise<NbdClient> {
    const { path } = await scriptedServer(dir, cleanups, async (s) => {
      await s.handshake({ size: 1 * MiB, contexts: [['base:allocation', 1]] });
      answer(s, await s.request());
      await s.request(); // until the client goes
    });
    return connect(path, { metaContexts: ['base:allocation'], timeoutMs: 5_000 });
  }

  it('a misbehaving server fails the connection with a coded error, never a hang or a crash', async () => {
    const cases: [string, (s: ScriptedConn, r: ClientRequest) => void, RegExp, 'read' | 'status'][] = [
      ['closes mid-reply', (s, r) => {
        s.send(srv.chunk(DONE, REPLY_TYPE.OFFSET_DATA, r.handle, srv.offsetData(r.offset, Buffer.alloc(100)), 8 + 4096));
        s.socket.end();
      }, /closed the connection/, 'read'],
      ['announces a huge data chunk', (s, r) => s.send(srv.chunk(DONE, REPLY_TYPE.OFFSET_DATA, r.handle, Buffer.alloc(0), 0xffffffff)), /longer than its type and request allow/, 'read'],
      ['announces a huge block status chunk', (s, r) => s.send(srv.chunk(DONE, REPLY_TYPE.BLOCK_STATUS, r.handle, Buffer.alloc(0), 0xfffffff4)), /longer than its type and request allow/, 'status'],
      ['answers a request it was not sent', (s, r) => s.send(srv.chunk(DONE, REPLY_TYPE.OFFSET_DATA, r.handle + 1000, srv.offsetData(r.offset, Buffer.alloc(4096)))), /did not send/, 'read'],
      ['sends data outside the request', (s, r) => s.send(srv.chunk(DONE, REPLY_TYPE.OFFSET_DATA, r.handle, srv.offsetData(r.offset + 4096, Buffer.alloc(16)))), /outside its request/, 'read'],
      ['leaves part of a read uncovered', (s, r) => s.send(srv.chunk(DONE, REPLY_TYPE.OFFSET_DATA, r.handle, srv.offsetData(r.offset, Buffer.alloc(100)))), /do not cover it/, 'read'],
      ['answers block status with a zero-length extent', (s, r) => s.send(srv.chunk(DONE, REPLY_TYPE.BLOCK_STATUS, r.handle, srv.status(1, [[0, 0]]))), /length zero/, 'status'],
      ['answers with junk', (s) => s.send(Buffer.from('HTTP/1.1 400 Bad Request\r\n\r\n')), /wrong magic/, 'read'],
    ];
    for (const [name, answer, nbd, op] of cases) {
      const c = await firstRequestAnswered(answer);
      const e = await failure(op === 'read' ? c.read(0, 4096) : c.blockStatus('base:allocation', 0, 1 * MiB));
      expect(e, name).toMatchObject({ code: 'VMTC_HOST_DISK_TOOL_FAILED' });
      expect(e.details.nbd, name).toMatch(nbd);
      await c.close();
    }
  });

  it('junk instead of a handshake, and a server that closes during it: coded errors', async () => {
    const junk = await scriptedServer(dir, cleanups, async (s) => s.send(Buffer.from('SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n')));
    expect(await failure(connect(junk.path))).toMatchObject({ code: 'VMTC_HOST_DISK_TOOL_FAILED', details: { nbd: expect.stringMatching(/not an NBD server/) } });
    const gone = await scriptedServer(dir, cleanups, async (s) => {
      s.send(srv.hello());
      await s.reader.read(4);
      s.socket.destroy();
    });
    expect(await failure(connect(gone.path))).toMatchObject({ code: 'VMTC_HOST_DISK_TOOL_FAILED', details: { nbd: expect.stringMatching(/closed the connection/) } });
  });

  it('a silent server: the handshake and a request end after timeoutMs on the injected clock', async () => {
    const clock = new ManualClock();
    const accepted = signal();
    const silent = await scriptedServer(dir, cleanups, async (s) => {
      accepted.resolve();
      await s.reader.read(1); // never sent before the client gives up
    });
    const connecting = connect(silent.path, { clock, timeoutMs: 2_000 });
    await accepted.promise;
    expect(clock.pending()).toBe(1);
    clock.advance(2_000);
    expect(await failure(connecting)).toMatchObject({ code: 'VMTC_HOST_DISK_TOOL_FAILED', details: { nbd: 'the handshake did not finish in time' } });

    const got = signal();
    const mute = await scriptedServer(dir, cleanups, async (s) => {
      await s.handshake({ size: 1 * MiB });
      await s.request();
      got.resolve();
      await s.request();
    });
    const c = await connect(mute.path, { clock, timeoutMs: 2_000 });
    const reading = c.read(0, 4096);
    await got.promise;
    clock.advance(1_999);
    clock.advance(1);
    expect(await failure(reading)).toMatchObject({ code: 'VMTC_HOST_DISK_TOOL_FAILED', details: { nbd: 'a request got no reply in time', cmd: CMD.READ } });
    expect(await failure(c.read(0, 1))).toMatchObject({ code: 'VMTC_HOST_DISK_TOOL_FAILED' });
    await c.close();
  });
});
