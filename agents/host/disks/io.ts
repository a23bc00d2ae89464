// What the disk backends do to the host, injected (docs/contributing.md#real-things-in-tests):
// the programs they run (lvm, thin_delta, dmsetup, qemu-img) and the block devices and files
// they read and write. The real ones are the defaults; the LVM backend's unit tests give it a
// named double of LVM instead (test/helpers/lvm-double.ts), since these machines have no
// device-mapper.
import { open } from 'node:fs/promises';
import { VmtcError } from '../../../src/common/errors.ts';
import { run } from '../../../src/common/proc.ts';
import { hostError } from '../errors.ts';

export interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs an argv (never a shell string); resolves with the exit status, whatever it is. */
export type CommandRunner = (argv: readonly string[], opts?: { timeoutMs?: number }) => Promise<CommandResult>;

/** Byte-addressed reads and writes of block devices and files. */
export interface BlockIo {
  read(path: string, offset: number, length: number): Promise<Buffer>;
  write(path: string, offset: number, data: Buffer): Promise<void>;
}

export const systemRunner: CommandRunner = async (argv, opts = {}) => {
  try {
    const r = await run(argv, { timeoutMs: opts.timeoutMs ?? 120_000 });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (e) {
    const d = e instanceof VmtcError ? e.details ?? {} : {};
    if (typeof d.code === 'number') return { code: d.code, stdout: '', stderr: String(d.stderr ?? '') };
    throw hostError('VMTC_HOST_DISK_TOOL_FAILED', { argv: [...argv], reason: e instanceof Error ? e.message : String(e) }, { cause: e });
  }
};

export const systemBlockIo: BlockIo = {
  async read(path, offset, length) {
    const fh = await open(path, 'r');
    try {
      const buf = Buffer.alloc(length);
      let got = 0;
      while (got < length) {
        const { bytesRead } = await fh.read(buf, got, length - got, offset + got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
      return buf.subarray(0, got);
    } finally {
      await fh.close();
    }
  },
  async write(path, offset, data) {
    const fh = await open(path, 'r+');
    try {
      let done = 0;
      while (done < data.length) done += (await fh.write(data, done, data.length - done, offset + done)).bytesWritten;
    } finally {
      await fh.close();
    }
  },
};

/** Run and require exit 0, else VMTC_HOST_DISK_TOOL_FAILED with the tool's stderr. */
export async function runOk(runner: CommandRunner, argv: readonly string[], details: Record<string, unknown> = {}, timeoutMs?: number): Promise<CommandResult> {
  const r = await runner(argv, timeoutMs === undefined ? {} : { timeoutMs });
  if (r.code !== 0) throw hostError('VMTC_HOST_DISK_TOOL_FAILED', { ...details, argv: [...argv], exitCode: r.code, stderr: r.stderr.trim().slice(0, 1000) });
  return r;
}
