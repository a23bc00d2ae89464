// Cold moves across the emulated lightpath (docs/design.md#cold-path, "Across the lightpath"), for
// test/lab/cold-lightpath.test.ts and bench/cold-replica.ts. A cold move asks the broker for no
// lightpath, yet in the lab its disk bytes (the fetch through the agents' relays, a replica's
// deltas) go between the sites' lightpath addresses, which exist only while a lightpath joins the
// sites. So, as the turntable does for a replica's seed (lab/turntable/disk.ts), the caller
// provisions one itself around each phase and reads what its delay line carried.
import { delayLineStatsBetween } from './delay-line-process.ts';
import { LabLightpathDriver } from './lightpath-driver.ts';
import { provisionLightpath } from './net.ts';
import type { MigrationOutcome, Stack } from './stack.ts';

/** What one phase's lightpath carried: its delay line's UDP payload, both directions (VXLAN
 *  framing and TCP acknowledgements included), over the lightpath's whole life; and the stats
 *  file, for windows (delayLineStatsBetween). */
export interface PhaseLine { bytes: number; statsFile: string | undefined }

/** Run `fn` with a lightpath of its own between `from` and `to` (connection `lab-P-<tag>`), released
 *  afterwards, also when `fn` fails; the delay line's final report is then in its stats file. */
export async function withLightpath<T>(s: Stack, from: string, to: string, tag: string, bandwidthMbps: number, fn: () => Promise<T>): Promise<{ value: T; line: PhaseLine }> {
  const connectionId = `lab-${s.lab.prefix}-${tag}`;
  const seg = await provisionLightpath(s.lab, from, to, bandwidthMbps, connectionId);
  const statsFile = (seg.details as { relay?: { statsFile?: string } | null }).relay?.statsFile;
  let value: T;
  try {
    value = await fn();
  } finally {
    await new LabLightpathDriver({ stateDir: s.lab.stateDir }).release(connectionId).catch(() => undefined);
  }
  return { value, line: { bytes: delayLineStatsBetween(statsFile).bytes, statsFile } };
}

/** A cold move of the stack's VM to `toSite`, to its end. */
export async function migrateCold(s: Stack, toSite: string): Promise<MigrationOutcome> {
  return s.migrate(toSite, { mode: 'cold' });
}

/** The cold move's downtime as the controller saw it: the source's power-off to the VM started
 *  at the destination (the import returned; the transition into cold_verifying). The power-off is
 *  asked for on entering cold_exporting, or, with a replica, after the delta and the kept digests
 *  that run first with the VM still running (steps.cold.replica.powerOffAt). */
export function coldDowntime(rec: MigrationOutcome): { powerOffAt: number; runningAt: number; ms: number } {
  const at = (to: string) => {
    const t = rec.transitions?.find((x) => x.to === to);
    if (!t) throw new Error(`the move never entered ${to} (state ${rec.state})`);
    return Date.parse(t.at);
  };
  const replica = (rec.steps?.cold as { replica?: { powerOffAt?: number } } | undefined)?.replica;
  const powerOffAt = replica?.powerOffAt ?? at('cold_exporting');
  const runningAt = at('cold_verifying');
  return { powerOffAt, runningAt, ms: runningAt - powerOffAt };
}
