// The populated guest (docs/lab.md "The instrument"): the guest writes its fill once at boot and
// says so on its console (lab/guest/vmtc-probe.c `fill`: `VMTC-FILL mb=N ms=T`, or
// `VMTC-FILL-FAILED …`) before its ready line. The stack calls the guest up when it answers ping,
// which its kernel does before the fill is done, so the turntable waits for the line before the
// first move: moving a half-filled guest would measure neither guest.
import { readFileSync } from 'node:fs';
import { sleep } from '../../src/common/clock.ts';
import { labError } from '../errors.ts';

export type FillReport = { ok: true; mb: number; ms: number } | { ok: false; line: string };

/** The fill's outcome from a console's text, or null while it has not said. */
export function parseFill(text: string): FillReport | null {
  const failed = /^.*(VMTC-FILL-FAILED[^\r\n]*|VMTC-WARN fill of [^\r\n]*)$/m.exec(text);
  if (failed) return { ok: false, line: failed[1]!.trim() };
  const m = /VMTC-FILL mb=(\d+) ms=(\d+)/.exec(text);
  return m ? { ok: true, mb: Number(m[1]), ms: Number(m[2]) } : null;
}

/** Wait (polling every 200 ms, at most `timeoutMs`) until the guest's console reports its fill of
 *  `mb` MiB; VMTC_LAB_COMMAND_FAILED when it failed, reported another size or said nothing. */
export async function awaitGuestFill(consolePath: string, mb: number, o: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<{ mb: number; ms: number }> {
  const deadline = Date.now() + (o.timeoutMs ?? 600_000);
  let last: FillReport | null = null;
  while (Date.now() < deadline && !o.signal?.aborted) {
    let text = '';
    try { text = readFileSync(consolePath, 'utf8'); } catch { /* not there yet */ }
    last = parseFill(text);
    if (last) break;
    await sleep(200);
  }
  if (last?.ok && last.mb === mb) return { mb: last.mb, ms: last.ms };
  const why = !last ? 'said nothing of it in time' : last.ok ? `reported ${last.mb} MiB` : last.line;
  throw labError('VMTC_LAB_COMMAND_FAILED', { step: 'guest fill', mb, console: consolePath, why }, { message: `the populated guest did not write its ${mb} MiB: ${why}` });
}
