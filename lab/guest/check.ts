// Reading what the guest printed after a migration and waiting for its memory check's verdict
// (lab/guest/verify.ts judges; this file only reads files and waits). A guest's console is the
// console.log its QEMU writes (agents/host/qemu/cmdline.ts): a destination's is new with its
// QEMU, a source's keeps what came before, so a check reads from a mark taken before the move.
import { statSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { sleep } from '../../src/common/clock.ts';
import { judgeGuest, MIN_PASSES, type GuestVerdict } from './verify.ts';

export interface ConsoleMark {
  path: string;
  /** Size of the file when marked (0 if absent). */
  offset: number;
  /** Its inode then: a file made anew since (a new QEMU) is read from its start. */
  ino: number | null;
}

export function markConsole(path: string): ConsoleMark {
  try {
    const st = statSync(path);
    return { path, offset: st.size, ino: st.ino };
  } catch {
    return { path, offset: 0, ino: null };
  }
}

/** What the console got since the mark ('' if the file is absent). At most the last 4 MiB. */
export async function readConsoleSince(mark: ConsoleMark): Promise<string> {
  let fh;
  try {
    fh = await open(mark.path, 'r');
  } catch {
    return '';
  }
  try {
    const st = await fh.stat();
    const from = st.ino === mark.ino && st.size >= mark.offset ? mark.offset : 0;
    const start = Math.max(from, st.size - 4 * 1024 * 1024);
    const buf = Buffer.alloc(st.size - start);
    if (buf.length) await fh.read(buf, 0, buf.length, start);
    return buf.toString('latin1');
  } finally {
    await fh.close();
  }
}

export interface AwaitGuestOptions {
  console: ConsoleMark;
  dirty: boolean;
  /** The move booted the guest (cold migration). */
  booted?: boolean;
  minPasses?: number;
  /** Memory lines read from the guest's serial port after the switchover. */
  serialLines?: readonly string[];
  /** How long to wait for the passes a dirty load owes (default 20 s). */
  timeoutMs?: number;
  pollMs?: number;
  signal?: AbortSignal;
}

/** Judge the guest now; while a dirty load still owes passes, read again until they come, the
 *  guest shows damage, or `timeoutMs` passes (then it is unverified). */
export async function awaitGuestVerdict(o: AwaitGuestOptions): Promise<GuestVerdict> {
  const deadline = Date.now() + (o.timeoutMs ?? 20_000);
  const pollMs = o.pollMs ?? 200;
  for (;;) {
    const v = judgeGuest({
      console: await readConsoleSince(o.console), dirty: o.dirty, minPasses: o.minPasses ?? MIN_PASSES,
      ...(o.serialLines ? { serialLines: o.serialLines } : {}), ...(o.booted ? { booted: true } : {}),
    });
    if (v.status !== 'unverified' || Date.now() >= deadline || o.signal?.aborted) return v;
    await sleep(Math.min(pollMs, Math.max(1, deadline - Date.now())), o.signal).catch(() => undefined);
  }
}
