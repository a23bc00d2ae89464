// The cold path's relay process (agents/host/cold/relay-main.ts), run directly (no namespace):
// a server that sends its whole answer and closes at once must have every byte delivered through
// the relay to a client that is not reading yet — when the server's side closes, the relay's
// socket toward the client still holds the tail of the answer. (A lab run lost the last 32 KiB
// of a disk fetch so: the relay cut the client's side when the server's closed.)
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';

const MAIN = new URL('../../agents/host/cold/relay-main.ts', import.meta.url).pathname;
const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanups.splice(0)) c();
});

function startRelay(listen: string, to: string): Promise<ChildProcess> {
  const child = spawn(process.execPath, ['--import', 'tsx', MAIN, '--listen', listen, '--to', to], { stdio: ['pipe', 'pipe', 'inherit'] });
  cleanups.push(() => child.kill('SIGKILL'));
  return new Promise((resolve, reject) => {
    let buf = '';
    child.stdout!.on('data', (d) => {
      buf += String(d);
      if (buf.includes('"ready"')) resolve(child);
    });
    child.once('exit', (code) => reject(new Error(`relay exited ${code}: ${buf}`)));
  });
}

describe('the cold path relay', () => {
  it('delivers every byte of an answer whose sender closed at once, to a client that reads only later', async () => {
    // Answers of several sizes: those that fit the sockets' buffers plus one read are wholly
    // read from the server, which has closed, while the client does not read yet.
    // Four rounds of them: whether the tail is still queued when the server's side closes depends
    // on the kernel's socket buffers, so each size is tried more than once.
    const sizes = [0, 1, 2, 3].flatMap(() => [64, 128, 192, 256, 320, 384, 512, 1024].map((k) => k * 1024));
    let next = 0;
    const server = net.createServer((s) => {
      s.on('error', () => undefined);
      s.end(randomBytes(sizes[next++]!)); // the whole answer, then FIN
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    cleanups.push(() => server.close());
    const dir = mkdtempSync(join(tmpdir(), 'vmtc-relay-test-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const sock = join(dir, 'r.sock');
    await startRelay(`unix:${sock}`, `tcp:127.0.0.1:${(server.address() as net.AddressInfo).port}`);

    const got: number[] = [];
    for (const _ of sizes) {
      got.push(await new Promise<number>((resolve, reject) => {
        const c = net.connect({ path: sock });
        let n = 0;
        c.pause();
        c.on('connect', () => void setTimeout(() => c.resume(), 100));
        c.on('data', (d) => { n += d.length; });
        c.on('end', () => resolve(n));
        c.on('error', reject);
      }));
    }
    expect(got).toEqual(sizes);
  }, 30_000);
});
