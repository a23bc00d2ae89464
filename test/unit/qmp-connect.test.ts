// QmpClient.connect against a QMP server of our own on a unix socket (no QEMU): a server that drops
// a connection before its greeting (a QEMU or storage daemon still starting) is tried again within
// the connect deadline; one that keeps dropping gives a coded error by the deadline, no hang.
import { createServer, type Server, type Socket } from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { QmpClient } from '../../agents/host/qemu/qmp.ts';

const logger = pino({ level: 'silent' });
const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** A QMP server that closes the first `drop` connections at once and serves the rest. */
async function server(drop: number): Promise<{ path: string; connections: () => number }> {
  const dir = await mkdtemp(join(tmpdir(), 'vmtc-qmpc-'));
  const path = join(dir, 'qmp.sock');
  let n = 0;
  const socks: Socket[] = [];
  const srv: Server = createServer((sock) => {
    socks.push(sock);
    if (++n <= drop) return void sock.destroy();
    sock.write(JSON.stringify({ QMP: { version: { qemu: { major: 10, minor: 0, micro: 2 } }, capabilities: [] } }) + '\n');
    let buf = '';
    sock.on('data', (d) => {
      buf += String(d);
      for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
        const msg = JSON.parse(buf.slice(0, i)) as { id: number };
        buf = buf.slice(i + 1);
        sock.write(JSON.stringify({ return: {}, id: msg.id }) + '\n');
      }
    });
  });
  await new Promise<void>((r) => srv.listen(path, r));
  cleanups.push(async () => {
    for (const s of socks) s.destroy();
    await new Promise<void>((r) => srv.close(() => r()));
    await rm(dir, { recursive: true, force: true });
  });
  return { path, connections: () => n };
}

describe('QmpClient.connect', () => {
  it('tries again when the server drops the connection before its greeting', async () => {
    const s = await server(2);
    const q = await QmpClient.connect(s.path, { logger, connectTimeoutMs: 5000 });
    cleanups.push(async () => q.close());
    expect(q.version).toBe('10.0.2');
    expect(s.connections()).toBe(3);
    await expect(q.execute('query-status')).resolves.toEqual({});
  });

  it('gives up with a coded error by the deadline when every connection is dropped', async () => {
    const s = await server(Number.MAX_SAFE_INTEGER);
    const e = await QmpClient.connect(s.path, { logger, connectTimeoutMs: 300 }).then(() => null, (x: unknown) => x);
    expect(e).toMatchObject({ code: 'VMTC_QMP_CLOSED' });
    expect(s.connections()).toBeGreaterThan(1);
  });
});
