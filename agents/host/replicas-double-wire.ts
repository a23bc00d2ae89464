// The replica double's wire (agents/host/replicas-double.ts, a TEST DOUBLE): disks read as
// 64 KiB blocks hashed with SHA-256, and a transfer's frames over one TCP connection to the
// store's export — a header line, then [u32 disk][u32 length][f64 offset] + data frames, an end
// frame, and the destination's "OK\n" once all is written.
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { clockSleep, type Clock } from '../../src/common/clock.ts';
import { hostError } from './errors.ts';

export const BLOCK = 64 * 1024;
export const END = 0xffffffff;

/** The frames of the blocks `send` picks (disk, block, its hash, its bytes), and the end frame. */
export function blockFrames(images: Buffer[], hashes: string[][], send: (disk: number, block: number, hash: string, data: Buffer) => boolean): { frames: Buffer[]; bytes: number; end: Buffer } {
  const frames: Buffer[] = [];
  let bytes = 0;
  images.forEach((img, di) => hashes[di]!.forEach((h, bi) => {
    const data = img.subarray(bi * BLOCK, (bi + 1) * BLOCK);
    if (!send(di, bi, h, data)) return;
    const hd = Buffer.alloc(16);
    hd.writeUInt32BE(di, 0);
    hd.writeUInt32BE(data.length, 4);
    hd.writeDoubleBE(bi * BLOCK, 8);
    frames.push(hd, data);
    bytes += data.length;
  }));
  const end = Buffer.alloc(16);
  end.writeUInt32BE(END, 0);
  return { frames, bytes, end };
}

export async function readAll(path: string): Promise<Buffer> {
  try {
    return await readFile(path);
  } catch (e) {
    throw hostError('VMTC_HOST_DISK_UNREADABLE', { path, reason: (e as Error).message }, { cause: e });
  }
}

export function blockHashes(b: Buffer): string[] {
  const out: string[] = [];
  for (let o = 0; o < b.length; o += BLOCK) out.push(createHash('sha256').update(b.subarray(o, o + BLOCK)).digest('base64'));
  return out;
}
export const isZero = (b: Buffer) => b.every((x) => x === 0);

/** Send one transfer's frames to a store's export and wait for its "OK"; paced by `pace`. */
export function ship(addr: { host: string; port: number }, header: string, frames: Buffer[], end: Buffer, details: Record<string, unknown>, pace: { clock(): Clock; mbps(): number | undefined }): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const s = connect(addr.port, addr.host);
    let answer = '';
    let settled = false;
    const fail = (reason: string) => {
      if (settled) return;
      settled = true;
      s.destroy();
      reject(hostError('VMTC_HOST_DISK_COPY_FAILED', { ...details, reason }));
    };
    s.on('error', (e) => fail(e.message));
    s.on('data', (d: Buffer) => {
      answer += d.toString('utf8');
    });
    s.on('close', () => {
      if (answer === 'OK\n' && !settled) {
        settled = true;
        resolve();
      } else fail('the destination closed the connection before it had all of the transfer');
    });
    s.on('connect', () => {
      void (async () => {
        s.write(header);
        let sinceSleep = 0;
        for (const f of frames) {
          if (settled) return;
          s.write(f);
          sinceSleep += f.length;
          // A rate set by limit() (replica.limit) applies from the next frame on.
          const mbps = pace.mbps();
          if (mbps && sinceSleep >= 256 * 1024) {
            await clockSleep(pace.clock(), (sinceSleep * 8) / (mbps * 1000));
            sinceSleep = 0;
          }
        }
        if (!settled) s.write(end);
      })();
    });
  });
}
