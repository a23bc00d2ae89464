// A delta as a file (docs/disks.md#delta-files): what the LVM backend's source side writes and
// its destination side applies; the replica layer carries it between the two. One JSON header
// line, then the data of the `data` extents in order, then one JSON trailer line with the
// SHA-256 of header and data, so a truncated or altered file is refused before anything is
// written to the destination.
import { createHash } from 'node:crypto';
import { open, type FileHandle } from 'node:fs/promises';
import type { Checkpoint } from './backend.ts';
import { hostError } from '../errors.ts';

export interface DeltaHeader {
  format: 'vmtc-delta/1';
  kind: 'full' | 'delta';
  diskBytes: number;
  from?: Checkpoint;
  checkpoint: Checkpoint;
  /** `data`: bytes follow in the file; `zero`: the range reads as zeros (nothing follows). */
  extents: { offset: number; length: number; type: 'data' | 'zero' }[];
}

export class DeltaWriter {
  private hash = createHash('sha256');
  private pos = 0;
  private constructor(private readonly fh: FileHandle) {}
  static async create(path: string, header: DeltaHeader): Promise<DeltaWriter> {
    const w = new DeltaWriter(await open(path, 'w', 0o600));
    await w.put(Buffer.from(JSON.stringify(header) + '\n'));
    return w;
  }
  async put(data: Buffer): Promise<void> {
    this.hash.update(data);
    let done = 0;
    while (done < data.length) done += (await this.fh.write(data, done, data.length - done, this.pos + done)).bytesWritten;
    this.pos += data.length;
  }
  /** Writes the trailer and closes; returns the file's size. */
  async finish(): Promise<number> {
    const trailer = Buffer.from(JSON.stringify({ sha256: this.hash.digest('hex') }) + '\n');
    await this.fh.write(trailer, 0, trailer.length, this.pos);
    await this.fh.sync();
    await this.fh.close();
    return this.pos + trailer.length;
  }
  async abort(): Promise<void> {
    await this.fh.close().catch(() => undefined);
  }
}

const rejected = (path: string, reason: string) => hostError('VMTC_HOST_DISK_DELTA_REJECTED', { file: path, reason });

/** Check a delta file whole (its trailer's hash) and return its header and where data starts.
 *  The data is then read with `readData` by extent. */
export async function openDelta(path: string): Promise<{ header: DeltaHeader; dataStart: number; fh: FileHandle }> {
  const fh = await open(path, 'r').catch((e: unknown) => {
    throw hostError('VMTC_HOST_DISK_NOT_FOUND', { file: path, reason: String(e) });
  });
  try {
    const { size } = await fh.stat();
    const head = Buffer.alloc(Math.min(size, 4 * 1024 * 1024));
    await fh.read(head, 0, head.length, 0);
    const nl = head.indexOf(10);
    if (nl < 0) throw rejected(path, 'no header line');
    let header: DeltaHeader;
    try {
      header = JSON.parse(head.subarray(0, nl).toString('utf8')) as DeltaHeader;
    } catch {
      throw rejected(path, 'the header is not JSON');
    }
    if (header.format !== 'vmtc-delta/1' || !Array.isArray(header.extents)) throw rejected(path, 'not a vmtc-delta/1 file');
    const dataBytes = header.extents.reduce((n, e) => n + (e.type === 'data' ? e.length : 0), 0);
    const dataStart = nl + 1;
    const trailerAt = dataStart + dataBytes;
    if (size <= trailerAt) throw rejected(path, 'truncated');
    const trailer = Buffer.alloc(size - trailerAt);
    await fh.read(trailer, 0, trailer.length, trailerAt);
    let want: string;
    try {
      want = (JSON.parse(trailer.toString('utf8')) as { sha256: string }).sha256;
    } catch {
      throw rejected(path, 'no trailer');
    }
    const h = createHash('sha256');
    const buf = Buffer.alloc(4 * 1024 * 1024);
    for (let at = 0; at < trailerAt;) {
      const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, trailerAt - at), at);
      if (!bytesRead) throw rejected(path, 'truncated');
      h.update(buf.subarray(0, bytesRead));
      at += bytesRead;
    }
    if (h.digest('hex') !== want) throw rejected(path, 'checksum mismatch');
    return { header, dataStart, fh };
  } catch (e) {
    await fh.close();
    throw e;
  }
}
