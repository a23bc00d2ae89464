// Internal clock probe of the turntable (VMTC-GAP lines from lab/guest/vmtc-probe.c on the guest
// console, in each QEMU's console.log; times as described in lab/turntable/probes/time.ts).
import { readFile } from 'node:fs/promises';

export interface InternalGap {
  /** The guest's loop counter. */
  n: number;
  monoMs: number;
  realMs: number;
  /** Guest CLOCK_REALTIME (epoch ms) at the end of the gap. */
  atReal: number;
  /** max(monoMs, realMs). */
  gapMs: number;
  file: string;
}

const GAP_LINE = /VMTC-GAP n=(\d+) mono_ms=([\d.]+) real_ms=([\d.]+) at_real=([\d.]+)/g;

/**
 * The VMTC-GAP lines of the given console logs (source's and destination's; a missing file is
 * skipped) whose gap [atReal - gapMs, atReal] overlaps [fromEpochMs, toEpochMs]. The guest's
 * realtime clock starts from the host's (RTC) at boot, so it agrees roughly — to about a second —
 * with the host clock: widen the window accordingly. `maxMs` is the largest gap, null if none
 * (which may mean the guest's clocks did not see the pause: docs/design.md#lab-facts, the
 * in-guest clock is blind to the pause).
 */
export async function readInternalGaps(consoleLogPaths: string[], fromEpochMs: number, toEpochMs: number): Promise<{ gaps: InternalGap[]; maxMs: number | null }> {
  const gaps: InternalGap[] = [];
  for (const file of consoleLogPaths) {
    let text: string;
    try { text = await readFile(file, 'latin1'); } catch { continue; }
    for (const m of text.matchAll(GAP_LINE)) {
      const monoMs = Number(m[2]);
      const realMs = Number(m[3]);
      const atReal = Number(m[4]);
      const gapMs = Math.max(monoMs, realMs);
      if (atReal - gapMs <= toEpochMs && atReal >= fromEpochMs) gaps.push({ n: Number(m[1]), monoMs, realMs, atReal, gapMs, file });
    }
  }
  gaps.sort((a, b) => a.atReal - b.atReal);
  return { gaps, maxMs: gaps.length ? Math.max(...gaps.map((g) => g.gapMs)) : null };
}
