// The follow relay (agents/host/disks/nbd-relay.ts): an NBD proxy between a VM's QEMU and a
// replica's store that can release the VM from waiting on the path (docs/disks.md#following).
// The store is a real qemu-storage-daemon exporting a qcow2 image; the client is qemu-io (QEMU's
// own NBD client, as the VM's mirror uses it); between the relay and the store a gate
// (test/helpers/nbd-gate.ts) stands for the path, held or delayed. Whether a write completed is
// read from qemu-io's prompt; what reached the store from the image once its daemon stopped.
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { startNbdProxy, startFollowRelay, type NbdProxy, type ProxyTarget } from '../../agents/host/disks/nbd-relay.ts';
import { FLAG_SEND_FLUSH, FLAG_SEND_FUA } from '../../agents/host/disks/nbd-relay-frames.ts';
import { startStorageDaemon, type StorageDaemon } from '../../agents/host/disks/qemu-images.ts';
import { QmpClient } from '../../agents/host/qemu/qmp.ts';
import { ManualClock, sleep, systemClock } from '../../src/common/clock.ts';
import { createLogger, silentLogger } from '../../src/common/log.ts';
import { pidAlive, run } from '../../src/common/proc.ts';
import { cleanupsAfterEach } from '../helpers/cleanups.ts';
import { startGate } from '../helpers/nbd-gate.ts';

const cleanups = cleanupsAfterEach();
const MiB = 1024 * 1024;
const SIZE = 16 * MiB;
const log = process.env.RELAY_LOG ? createLogger({ svc: 'test', level: 'debug', destination: process.stderr }) : silentLogger();

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'vmtc-nbdr-'));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** A store: qemu-storage-daemon exporting a fresh qcow2 image as `x` on a unix socket. */
async function startStore(dir: string): Promise<StorageDaemon & { image: string; nbdSocket: string }> {
  const image = join(dir, 'store.qcow2');
  await run(['qemu-img', 'create', '-q', '-f', 'qcow2', image, String(SIZE)]);
  const d = await startStorageDaemon({ image, format: 'qcow2', dir, clock: systemClock, exportName: 'x', nbd: { type: 'unix' } });
  cleanups.push(() => d.stop({ now: true }));
  return { ...d, image, nbdSocket: d.nbdSocket! };
}

async function startProxy(dir: string, connect: ProxyTarget, closeWaitMs?: number): Promise<NbdProxy & { path: string }> {
  const path = join(dir, 'relay.sock');
  const p = await startNbdProxy({ listen: { path }, connect, exportName: 'x', clock: systemClock, logger: log, ...(closeWaitMs ? { closeWaitMs } : {}) });
  cleanups.push(() => p.close({ timeoutMs: 2000 }));
  return { ...p, path };
}

const imageOpts = (path: string) => `driver=nbd,server.type=unix,server.path=${path},export=x`;

/** qemu-io, interactive on a pipe: each command's completion prints the next prompt. */
function qemuIo(path: string) {
  const child = spawn('qemu-io', ['--image-opts', imageOpts(path)], { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d) => { out += d; });
  child.stderr!.on('data', (d) => { out += d; });
  const exited = new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
  cleanups.push(async () => {
    if (child.exitCode === null && child.signalCode === null && child.pid) {
      process.kill(child.pid, 'SIGKILL');
      await exited;
    }
  });
  const prompts = () => out.split('qemu-io> ').length - 1;
  return {
    pid: child.pid!,
    exited,
    output: () => out,
    prompts,
    send: (line: string) => child.stdin!.write(`${line}\n`),
    quit: () => child.stdin!.end('quit\n'),
    /** Wait until `n` prompts were printed (the opening one counts). */
    prompt: (n: number) => until(() => prompts() >= n, () => `qemu-io prompt ${n}; output: ${out}`),
  };
}

/** Poll `ok` (bounded: 15 s). */
async function until(ok: () => boolean, what: () => string): Promise<void> {
  for (let i = 0; i < 1500; i++) {
    if (ok()) return;
    await sleep(10);
  }
  throw new Error(`timed out waiting for ${what()}`);
}

/** The store's image after its daemon stopped (flushed) equals a raw image holding `writes`. */
async function expectStore(dir: string, store: { image: string; stop: StorageDaemon['stop'] }, writes: string[]): Promise<void> {
  await store.stop();
  const expected = join(dir, 'expected.raw');
  await run(['qemu-img', 'create', '-q', '-f', 'raw', expected, String(SIZE)]);
  if (writes.length) await run(['qemu-io', '-f', 'raw', ...writes.flatMap((w) => ['-c', w]), expected]);
  const r = await run(['qemu-img', 'compare', '-f', 'raw', '-F', 'qcow2', expected, store.image]).catch((e: { details?: { stderr?: string } }) => ({ stdout: '', stderr: e.details?.stderr ?? String(e) }));
  expect(r.stdout.trim() + r.stderr.trim()).toBe('Images are identical.');
}

// ---- an in-test NBD handshake, to read what a client is told ------------------------------

interface Told {
  structured: boolean;
  extendedHeaders?: 'ack' | 'unsup' | 'other';
  flags: number;
  /** NBD_OPT_GO's final reply when it was an error (its type). */
  refused?: number;
  /** The connection closed instead of an answer (a refused NBD_OPT_EXPORT_NAME). */
  closed?: boolean;
}

/** Negotiate with `path` as far as the transmission flags, as QEMU's client does: structured
 *  replies, NBD_OPT_EXTENDED_HEADERS (before GO only), then NBD_OPT_GO (or NBD_OPT_EXPORT_NAME)
 *  for export `name` (default `x`). The socket is left open. */
async function handshake(path: string, via: 'go' | 'export-name', name = 'x'): Promise<Told & { socket: net.Socket }> {
  const s = net.connect({ path });
  cleanups.push(() => void s.destroy());
  let buf = Buffer.alloc(0);
  let want: { n: number; resolve: (b: Buffer) => void } | undefined;
  const serve = () => {
    if (want && buf.length >= want.n) {
      const w = want;
      want = undefined;
      const b = buf.subarray(0, w.n);
      buf = buf.subarray(w.n);
      w.resolve(b);
    }
  };
  s.on('data', (d) => { buf = Buffer.concat([buf, d]); serve(); });
  s.on('error', () => undefined);
  const read = (n: number) => new Promise<Buffer>((resolve, reject) => {
    want = { n, resolve };
    s.once('close', () => reject(new Error('closed')));
    serve();
  });
  const option = (opt: number, data: Buffer) => {
    const h = Buffer.alloc(16);
    h.write('IHAVEOPT', 0, 'latin1');
    h.writeUInt32BE(opt, 8);
    h.writeUInt32BE(data.length, 12);
    s.write(Buffer.concat([h, data]));
  };
  const reply = async () => {
    const h = await read(20);
    const len = h.readUInt32BE(16);
    return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data: len ? await read(len) : Buffer.alloc(0) };
  };
  const hello = await read(18);
  expect(hello.subarray(0, 8).toString('latin1')).toBe('NBDMAGIC');
  s.write(Buffer.from([0, 0, 0, 3])); // fixed newstyle, no zeroes
  option(8, Buffer.alloc(0)); // NBD_OPT_STRUCTURED_REPLY
  const told: Told & { socket: net.Socket } = { structured: (await reply()).type === 1, flags: -1, socket: s };
  if (via === 'go') {
    // (Not before NBD_OPT_EXPORT_NAME: with extended headers agreed it would not be allowed.)
    option(11, Buffer.alloc(0)); // NBD_OPT_EXTENDED_HEADERS
    const eh = await reply();
    told.extendedHeaders = eh.type === 1 ? 'ack' : eh.type === 0x80000001 ? 'unsup' : 'other';
  }
  const n = Buffer.from(name);
  if (via === 'export-name') {
    option(1, n);
    const r = await read(10).catch(() => undefined);
    if (r) told.flags = r.readUInt16BE(8);
    else told.closed = true;
  } else {
    const data = Buffer.alloc(4 + n.length + 2);
    data.writeUInt32BE(n.length, 0);
    n.copy(data, 4);
    option(7, data);
    for (let i = 0; i < 20; i++) {
      const r = await reply();
      if (r.type === 3 && r.data.readUInt16BE(0) === 0) told.flags = r.data.readUInt16BE(10); // NBD_REP_INFO, NBD_INFO_EXPORT
      if (r.type >= 0x80000000) told.refused = r.type;
      if (r.type === 1 || r.type >= 0x80000000) break;
    }
  }
  return told;
}

/** A compact request header (NBD protocol "Request message"). */
function request(type: number, cookie: number, offset: number, length: number): Buffer {
  const b = Buffer.alloc(28);
  b.writeUInt32BE(0x25609513, 0);
  b.writeUInt16BE(type, 6);
  b.writeBigUInt64BE(BigInt(cookie), 8);
  b.writeBigUInt64BE(BigInt(offset), 16);
  b.writeUInt32BE(length, 24);
  return b;
}

const closed = (s: net.Socket) => new Promise<void>((r) => {
  s.on('error', () => undefined);
  if (s.destroyed) r();
  else s.once('close', () => r());
});

describe('the follow relay (NBD proxy)', () => {
  it('passes writes and reads through to the store; the client is offered neither flush nor FUA, nor extended headers', async () => {
    const dir = await tempDir();
    const store = await startStore(dir);
    const proxy = await startProxy(dir, { path: store.nbdSocket });

    // The store offers flush, FUA and extended headers; through the relay none of them.
    for (const via of ['go', 'export-name'] as const) {
      const direct = await handshake(store.nbdSocket, via);
      expect(direct.flags & FLAG_SEND_FLUSH).toBe(FLAG_SEND_FLUSH);
      expect(direct.flags & FLAG_SEND_FUA).toBe(FLAG_SEND_FUA);
      if (via === 'go') expect(direct.extendedHeaders).toBe('ack');
      direct.socket.destroy();
      const relayed = await handshake(proxy.path, via);
      relayed.socket.destroy();
      expect(relayed.flags & (FLAG_SEND_FLUSH | FLAG_SEND_FUA)).toBe(0);
      expect(relayed.flags & 1).toBe(1); // NBD_FLAG_HAS_FLAGS: the rest of the flags untouched
      if (via === 'go') expect(relayed.extendedHeaders).toBe('unsup');
    }

    await run(['qemu-io', '--image-opts', imageOpts(proxy.path), '-c', 'write -P 0x5a 1M 64k', '-c', 'flush', '-c', 'write -z 4M 128k', '-c', 'read -P 0x5a 1M 64k', '-c', 'read -P 0 4M 128k']);
    const s = proxy.stats();
    expect(s.requests.write).toBe(1);
    expect(s.requests.read).toBe(2);
    expect(s.requests.flush).toBe(0); // QEMU's client was told there is no flush
    expect(s.refusedOptions).toBe(2); // the handshake above, and qemu-io's
    expect(s.answeredEarly).toBe(0);
    await proxy.close();
    expect(proxy.stats().open).toEqual([]);
    await expectStore(dir, store, ['write -P 0x5a 1M 64k', 'write -z 4M 128k']);
  });

  it('release answers the writes in flight at once, without the store; close() then delivers every byte', async () => {
    const dir = await tempDir();
    const store = await startStore(dir);
    const gate = await startGate({ to: { path: store.nbdSocket } }, cleanups);
    const proxy = await startProxy(dir, { host: '127.0.0.1', port: gate.port });
    const io = qemuIo(proxy.path);
    await io.prompt(1); // connected: the handshake is done
    gate.hold('both'); // the path stops delivering anything

    io.send('write -P 0x5a 1M 64k');
    await until(() => gate.waiting().up >= 64 * 1024, () => 'the write at the gate');
    expect(proxy.stats().open[0]!.inflight).toBe(1);
    expect(io.prompts()).toBe(1); // not completed: the store has not answered

    proxy.release();
    await io.prompt(2);
    expect(io.output()).toContain('wrote 65536/65536 bytes at offset 1048576');
    const reached = gate.delivered.up;
    // Later writes are answered at once too, and queued behind the first (not yet answered).
    io.send('write -P 0x11 2M 64k');
    await io.prompt(3);
    io.send('write -z 3M 64k');
    await io.prompt(4);
    expect(gate.delivered.up).toBe(reached); // nothing of them reached the store yet
    expect(proxy.stats().open[0]!.queued).toBe(2);
    io.quit();
    expect(await io.exited).toBe(0);

    gate.open();
    await proxy.close();
    const s = proxy.stats();
    expect(s.answeredEarly).toBe(3);
    expect(s.droppedReplies).toBe(3);
    expect(s.earlyErrors).toBe(0);
    expect(gate.relayEnds).toEqual(['fin']); // half-closed after NBD_CMD_DISC, never reset
    await expectStore(dir, store, ['write -P 0x5a 1M 64k', 'write -P 0x11 2M 64k', 'write -z 3M 64k']);
  });

  it('after release, a write overlapping one the store has not answered waits for that answer (the barrier)', async () => {
    const dir = await tempDir();
    const store = await startStore(dir);
    const gate = await startGate({ to: { path: store.nbdSocket } }, cleanups);
    const proxy = await startProxy(dir, { host: '127.0.0.1', port: gate.port });
    const io = qemuIo(proxy.path);
    await io.prompt(1);
    proxy.release();
    gate.hold('down'); // the store's answers wait

    io.send('write -P 0x11 0 64k');
    await io.prompt(2); // answered by the relay
    // The write reached the store and was answered there; the answer waits at the gate.
    await until(() => gate.waiting().down >= 16, () => 'the store\'s answer at the gate');
    const sent = gate.delivered.up;
    io.send('write -P 0x22 32k 64k');
    await io.prompt(3); // answered by the relay too...
    await sleep(50);
    expect(gate.delivered.up).toBe(sent); // ...but not sent: the first is not answered yet
    expect(proxy.stats().open[0]!.queued).toBe(1);

    gate.open();
    await until(() => gate.delivered.up >= sent + 28 + 64 * 1024, () => 'the second write at the store');
    io.quit();
    await io.exited;
    await proxy.close();
    await expectStore(dir, store, ['write -P 0x11 0 64k', 'write -P 0x22 32k 64k']);
  });

  it('a client that leaves after release: its queued writes and NBD_CMD_DISC reach the store, which sees it leave', async () => {
    const dir = await tempDir();
    const store = await startStore(dir);
    const gate = await startGate({ to: { path: store.nbdSocket } }, cleanups);
    const proxy = await startProxy(dir, { host: '127.0.0.1', port: gate.port });
    const qmp = await QmpClient.connect(store.qmpSocket, { logger: log });
    cleanups.push(() => qmp.close());
    const io = qemuIo(proxy.path);
    await io.prompt(1);
    gate.hold('both');
    io.send('write -P 0x33 5M 64k');
    await until(() => gate.waiting().up >= 64 * 1024, () => 'the write at the gate');
    proxy.release();
    await io.prompt(2);
    io.send('write -P 0x44 6M 128k');
    await io.prompt(3);
    io.quit(); // qemu-io says NBD_CMD_DISC and closes
    await io.exited;
    expect(proxy.stats().requests.disc).toBe(1);
    // The relay still holds the store's connection: the export is in use.
    await expect(qmp.execute('block-export-del', { id: 'exp0', mode: 'safe' })).rejects.toThrow(/in use/);

    gate.open();
    await until(() => proxy.stats().open.length === 0, () => 'the relay\'s connection to end');
    expect(gate.relayEnds).toEqual(['fin']);
    await qmp.execute('block-export-del', { id: 'exp0', mode: 'safe' });
    await expectStore(dir, store, ['write -P 0x33 5M 64k', 'write -P 0x44 6M 128k']);
  });

  it('junk: a store that is no NBD server fails the start; a client\'s junk in its handshake cuts it alone, junk from either side later cuts both; the relay goes on', async () => {
    const dir = await tempDir();
    const store = await startStore(dir);
    // The server's side: a first connection is answered with junk, later ones reach the store
    // through a gate (which can put junk into the store's answers).
    let n = 0;
    const gate = await startGate({ to: { path: store.nbdSocket } }, cleanups);
    const junkServer = net.createServer((s) => {
      s.on('error', () => undefined);
      if (n++ === 0) return void s.end(Buffer.from('HTTP/1.1 400 Bad Request\r\n\r\n'));
      const to = net.connect({ host: '127.0.0.1', port: gate.port });
      to.on('error', () => s.destroy());
      s.on('close', () => to.destroy());
      to.on('close', () => s.destroy());
      s.pipe(to).pipe(s);
    });
    await new Promise<void>((r) => junkServer.listen(0, '127.0.0.1', () => r()));
    cleanups.push(() => new Promise<void>((r) => junkServer.close(() => r())));
    const junkAt = { host: '127.0.0.1', port: (junkServer.address() as net.AddressInfo).port };

    // The server is no NBD server: the relay does not start, and says why.
    const err = await startProxy(dir, junkAt).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'VMTC_HOST_DISK_TOOL_FAILED', details: { tool: 'nbd-relay' } });
    expect(String((err as { details: { reason: string } }).details.reason)).toMatch(/not an NBD server/);

    const proxy = await startProxy(dir, junkAt);
    const cuts = () => proxy.stats().protocolErrors;
    expect(gate.connections).toBe(1);

    // The client sends junk instead of its options: it is cut; the store's connection, which it
    // had not taken yet, stays for the next client.
    const b = net.connect({ path: proxy.path });
    b.once('data', () => b.write(Buffer.concat([Buffer.from([0, 0, 0, 3]), Buffer.alloc(64, 0xee)])));
    await closed(b);
    expect(cuts()).toBe(1);
    await until(() => proxy.stats().open.length === 0, () => 'the client\'s connection closed');
    expect(proxy.stats().storeIdle).toBe(true);

    // In the transmission phase: a request of an unknown type (on the idle connection)...
    const c = await handshake(proxy.path, 'go');
    c.socket.write(request(99, 1, 0, 512));
    await closed(c.socket);
    expect(cuts()).toBe(2);
    expect(gate.connections).toBe(1);
    await until(() => gate.relayEnds.length === 1, () => 'the store\'s connection cut');
    // ...and an answer to a request nobody sent (a connection negotiated for this client).
    const io = qemuIo(proxy.path);
    await io.prompt(1);
    expect(gate.connections).toBe(2);
    const bogus = Buffer.alloc(16);
    bogus.writeUInt32BE(0x67446698, 0); // a simple reply
    bogus.writeBigUInt64BE(0xdeadbeefn, 8);
    gate.inject('down', bogus);
    await until(() => cuts() === 3, () => 'the third cut');
    await until(() => proxy.stats().open.length === 0, () => 'both connections closed');
    io.send('write -P 0x5a 0 4k'); // the client lost its connection: the write fails
    await io.prompt(2);
    expect(io.output()).not.toContain('wrote 4096/4096');
    io.quit();
    await io.exited;

    // The relay goes on: a well-behaved client still gets through.
    await run(['qemu-io', '--image-opts', imageOpts(proxy.path), '-c', 'write -P 0x5a 0 4k']);
    await proxy.close();
    expect(cuts()).toBe(3);
    await expectStore(dir, store, ['write -P 0x5a 0 4k']);
  });
  it('the relay process: SIGUSR1 releases, SIGTERM forwards what it holds and exits; a socket it cannot listen on is a coded error', async () => {
    const dir = await tempDir();
    const store = await startStore(dir);
    const gate = await startGate({ to: { path: store.nbdSocket } }, cleanups);
    const relay = await startFollowRelay({ remote: { host: '127.0.0.1', port: gate.port, exportName: 'x' }, dir, clock: systemClock, logger: log });
    cleanups.push(() => {
      if (pidAlive(relay.pid)) process.kill(relay.pid, 'SIGKILL');
    });
    expect(relay.server).toEqual({ type: 'unix', path: join(dir, 'nbd-relay.sock') });
    expect(relay.exportName).toBe('x');

    const io = qemuIo(relay.server.path);
    await io.prompt(1);
    gate.hold('both');
    io.send('write -P 0x66 7M 64k');
    await until(() => gate.waiting().up >= 64 * 1024, () => 'the write at the gate');
    expect(io.prompts()).toBe(1);
    relay.release();
    await io.prompt(2);
    expect(io.output()).toContain('wrote 65536/65536 bytes at offset 7340032');
    io.send('write -P 0x77 8M 64k');
    await io.prompt(3);
    io.quit();
    await io.exited;

    const closing = relay.close();
    await sleep(100);
    expect(pidAlive(relay.pid)).toBe(true); // waiting for the store, which has not seen the writes yet
    gate.open();
    await closing;
    expect(pidAlive(relay.pid)).toBe(false);
    expect(gate.relayEnds).toEqual(['fin']);

    const err = await startFollowRelay({ remote: { host: '127.0.0.1', port: gate.port, exportName: 'x' }, dir: join(dir, 'no', 'such'), clock: systemClock, logger: log }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'VMTC_HOST_DISK_TOOL_FAILED', details: { tool: 'nbd-relay' } });
    expect(String((err as { details: { reason: string } }).details.reason)).toMatch(/listen E[A-Z]+/);
    await expectStore(dir, store, ['write -P 0x66 7M 64k', 'write -P 0x77 8M 64k']);
  });
  it('a client killed after release, and close() with a client still connected: what they sent reaches the store, then NBD_CMD_DISC', async () => {
    const dir = await tempDir();
    const store = await startStore(dir);
    const gate = await startGate({ to: { path: store.nbdSocket } }, cleanups);
    const proxy = await startProxy(dir, { host: '127.0.0.1', port: gate.port });
    const io = qemuIo(proxy.path);
    const killed = qemuIo(proxy.path);
    await io.prompt(1);
    await killed.prompt(1);
    gate.hold('both');
    proxy.release();

    killed.send('write -P 0x34 10M 64k');
    await killed.prompt(2);
    process.kill(killed.pid, 'SIGKILL'); // gone without NBD_CMD_DISC
    await killed.exited;
    gate.open();
    // Its connection ends by itself: the write, then the relay's own NBD_CMD_DISC, then the end.
    await until(() => proxy.stats().open.length === 1, () => 'the killed client\'s connection to end');
    expect(proxy.stats().requests.disc).toBe(0);
    expect(proxy.stats().forwarded).toBe(2);
    expect(gate.relayEnds).toEqual(['fin']);

    gate.hold('both');
    io.send('write -P 0x12 9M 64k');
    await io.prompt(2);
    const closing = proxy.close(); // the client stays connected
    let closed = false;
    void closing.then(() => { closed = true; });
    await sleep(100);
    expect(closed).toBe(false); // the store has not answered the write yet
    gate.open();
    await closing;
    expect(proxy.stats().forwarded).toBe(4);
    expect(gate.relayEnds).toEqual(['fin', 'fin']);
    io.quit();
    await io.exited;
    await expectStore(dir, store, ['write -P 0x12 9M 64k', 'write -P 0x34 10M 64k']);
  });

  it('a store that does not close after NBD_CMD_DISC is cut after closeWaitMs (time from the injected clock)', async () => {
    const dir = await tempDir();
    const store = await startStore(dir);
    const gate = await startGate({ to: { path: store.nbdSocket } }, cleanups);
    const clock = new ManualClock();
    const path = join(dir, 'relay.sock');
    const proxy = await startNbdProxy({ listen: { path }, connect: { host: '127.0.0.1', port: gate.port }, exportName: 'x', clock, logger: log, closeWaitMs: 60_000 });
    cleanups.push(() => proxy.close({ timeoutMs: 0 }));
    const io = qemuIo(path);
    await io.prompt(1);
    gate.hold('down'); // the store's end of the connection never reaches the relay
    let closed = false;
    const closing = proxy.close({ timeoutMs: 600_000 }).then(() => { closed = true; });
    await until(() => gate.delivered.up > 0 && gate.relayEnds.length === 1, () => 'NBD_CMD_DISC and the half-close at the gate');
    expect(proxy.stats().forwarded).toBe(1);
    clock.advance(59_999);
    await sleep(50);
    expect(closed).toBe(false);
    expect(proxy.stats().open.length).toBe(1);
    clock.advance(1);
    await closing;
    expect(proxy.stats().open).toEqual([]);
    io.quit();
    await io.exited;
  });

  // ---- the relay's own handshake: negotiated with the store at the start, served locally ----

  it('over a delayed path the relay is ready only once it negotiated with the store; a client\'s handshake then crosses nothing of the path; writes, reads, release, the barrier and close work', async () => {
    const dir = await tempDir();
    const store = await startStore(dir);
    const gate = await startGate({ to: { path: store.nbdSocket }, delayMs: 150 }, cleanups);
    const proxy = await startProxy(dir, { host: '127.0.0.1', port: gate.port });
    // Ready: the store's greeting and its answers (NBD_OPT_STRUCTURED_REPLY's ACK, NBD_OPT_GO's
    // NBD_INFO_EXPORT and ACK at least) have crossed the path, and nothing is on its way.
    const ready = { ...gate.delivered };
    expect(ready.up).toBeGreaterThan(0);
    expect(ready.down).toBeGreaterThanOrEqual(18 + 20 + (20 + 12) + 20);
    expect(gate.waiting()).toEqual({ up: 0, down: 0 });
    expect(proxy.stats()).toMatchObject({ storeIdle: true, storeConnections: 1 });

    const io = qemuIo(proxy.path);
    await io.prompt(1); // qemu-io opened its NBD node: its handshake is done
    expect({ ...gate.delivered }).toEqual(ready); // no byte crossed the path for it...
    expect(gate.waiting()).toEqual({ up: 0, down: 0 }); // ...nor is on its way
    expect(gate.connections).toBe(1);
    expect(proxy.stats()).toMatchObject({ storeIdle: false, storeConnections: 1, refusedOptions: 1 });
    expect(proxy.stats().open).toMatchObject([{ phase: 'transmission', structured: true }]);

    io.send('write -P 0x5a 1M 64k');
    await io.prompt(2);
    io.send('read -P 0x5a 1M 64k');
    await io.prompt(3);
    expect(io.output()).toContain('wrote 65536/65536 bytes at offset 1048576');
    expect(io.output()).toContain('read 65536/65536 bytes at offset 1048576');
    expect(io.output()).not.toContain('verification failed');
    expect(gate.delivered.up).toBeGreaterThan(ready.up + 64 * 1024);

    gate.hold('both');
    io.send('write -P 0x11 2M 64k');
    await until(() => gate.waiting().up >= 64 * 1024, () => 'the write on the path');
    expect(io.prompts()).toBe(3);
    proxy.release();
    await io.prompt(4); // answered by the relay
    io.send('write -P 0x22 2M 32k'); // overlaps it: answered, and sent only once the first was answered
    await io.prompt(5);
    expect(proxy.stats().open[0]!.queued).toBe(1);
    io.quit();
    expect(await io.exited).toBe(0);
    gate.open();
    await proxy.close();
    expect(proxy.stats()).toMatchObject({ answeredEarly: 2, droppedReplies: 2, earlyErrors: 0 });
    expect(gate.relayEnds).toEqual(['fin']);
    await expectStore(dir, store, ['write -P 0x5a 1M 64k', 'write -P 0x11 2M 64k', 'write -P 0x22 2M 32k']);
  });

  it('a client that asks for another export is refused (NBD_OPT_GO: NBD_REP_ERR_UNKNOWN; NBD_OPT_EXPORT_NAME: closed) without using the store\'s connection; the relay keeps serving', async () => {
    const dir = await tempDir();
    const store = await startStore(dir);
    const gate = await startGate({ to: { path: store.nbdSocket } }, cleanups);
    const proxy = await startProxy(dir, { host: '127.0.0.1', port: gate.port });
    const ready = { ...gate.delivered };

    const go = await handshake(proxy.path, 'go', 'y');
    expect(go.structured).toBe(true);
    expect(go.refused).toBe(0x80000006); // NBD_REP_ERR_UNKNOWN
    expect(go.flags).toBe(-1);
    go.socket.destroy();
    const old = await handshake(proxy.path, 'export-name', 'y');
    expect(old.closed).toBe(true);
    expect({ ...gate.delivered }).toEqual(ready); // answered by the relay, not the store
    expect(proxy.stats()).toMatchObject({ refusedExports: 2, storeIdle: true, protocolErrors: 0 });

    // The right name gets the export, on the connection negotiated at the start.
    await run(['qemu-io', '--image-opts', imageOpts(proxy.path), '-c', 'write -P 0x5b 3M 64k']);
    expect(gate.connections).toBe(1);
    await proxy.close();
    await expectStore(dir, store, ['write -P 0x5b 3M 64k']);
  });

  it('a store that refuses the export, or cannot be reached: the relay process does not start, and the starter\'s coded error says why', async () => {
    const dir = await tempDir();
    const store = await startStore(dir);
    const gate = await startGate({ to: { path: store.nbdSocket } }, cleanups);
    const refused = await startFollowRelay({ remote: { host: '127.0.0.1', port: gate.port, exportName: 'nope' }, dir, clock: systemClock, logger: log }).catch((e: unknown) => e);
    expect(refused).toMatchObject({ code: 'VMTC_HOST_DISK_TOOL_FAILED', details: { tool: 'nbd-relay' } });
    expect(String((refused as { details: { reason: string } }).details.reason)).toMatch(/NBD_REP_ERR_UNKNOWN/);

    // A port nothing listens on (one just freed).
    const free = net.createServer();
    await new Promise<void>((r) => free.listen(0, '127.0.0.1', () => r()));
    const port = (free.address() as net.AddressInfo).port;
    await new Promise<void>((r) => free.close(() => r()));
    const unreachable = await startFollowRelay({ remote: { host: '127.0.0.1', port, exportName: 'x' }, dir, clock: systemClock, logger: log }).catch((e: unknown) => e);
    expect(unreachable).toMatchObject({ code: 'VMTC_HOST_DISK_TOOL_FAILED', details: { tool: 'nbd-relay' } });
    expect(String((unreachable as { details: { reason: string } }).details.reason)).toMatch(/cannot be reached.*ECONNREFUSED/);
  });

  it('a client after the idle connection dropped, and clients beside or after the first, get a connection negotiated then', async () => {
    const dir = await tempDir();
    const store = await startStore(dir);
    const gate = await startGate({ to: { path: store.nbdSocket } }, cleanups);
    const proxy = await startProxy(dir, { host: '127.0.0.1', port: gate.port });
    gate.cut(); // the path drops the idle connection
    await until(() => !proxy.stats().storeIdle, () => 'the relay to see its idle connection gone');

    await run(['qemu-io', '--image-opts', imageOpts(proxy.path), '-c', 'write -P 0x61 0 64k']);
    expect(gate.connections).toBe(2);
    const a = qemuIo(proxy.path);
    await a.prompt(1);
    const b = qemuIo(proxy.path);
    await b.prompt(1);
    expect(gate.connections).toBe(4);
    a.send('write -P 0x62 1M 64k');
    await a.prompt(2);
    b.send('read -P 0x61 0 64k');
    await b.prompt(2);
    expect(a.output()).toContain('wrote 65536/65536 bytes at offset 1048576');
    expect(b.output()).toContain('read 65536/65536 bytes at offset 0');
    expect(b.output()).not.toContain('verification failed');
    a.quit();
    b.quit();
    await Promise.all([a.exited, b.exited]);
    expect(proxy.stats().storeConnections).toBe(4);
    await proxy.close();
    await expectStore(dir, store, ['write -P 0x61 0 64k', 'write -P 0x62 1M 64k']);
  });

  it('close() with no client ever: the idle connection says NBD_CMD_DISC and half-closes; the store sees its last client leave', async () => {
    const dir = await tempDir();
    const store = await startStore(dir);
    const gate = await startGate({ to: { path: store.nbdSocket } }, cleanups);
    const qmp = await QmpClient.connect(store.qmpSocket, { logger: log });
    cleanups.push(() => qmp.close());
    const proxy = await startProxy(dir, { host: '127.0.0.1', port: gate.port });
    // The relay's idle connection is a client of the export.
    await expect(qmp.execute('block-export-del', { id: 'exp0', mode: 'safe' })).rejects.toThrow(/in use/);
    const before = gate.delivered.up;
    await proxy.close();
    expect(gate.delivered.up).toBe(before + 28); // NBD_CMD_DISC
    expect(gate.relayEnds).toEqual(['fin']);
    await until(() => gate.connections === 1 && gate.waiting().up === 0, () => 'the path to deliver the end');
    for (let i = 0; ; i++) {
      // The store's daemon handles the disconnect on its own turn: asked again (bounded).
      const r = await qmp.execute('block-export-del', { id: 'exp0', mode: 'safe' }).then(() => 'deleted', (e: Error) => e.message);
      if (r === 'deleted') break;
      expect(r).toMatch(/in use/);
      if (i >= 100) throw new Error('the export is still in use');
      await sleep(20);
    }
  });
});
