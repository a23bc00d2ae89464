// The turntable's disk (docs/lab.md "The turntable's disk"): the guest's qcow2 data disk, the
// guest's disk-writing load, and the replica a round may pre-seed at its destination before it
// moves (docs/disks.md#replicas). Decisions are pure functions (tested in
// test/unit/turntable-command.test.ts); the effects are prepareReplica and dropReplicas.
//
// Disk traffic crosses the delay line, as memory does. The replica's stores listen on the
// destination's migration address (src/controller/replicas/service.ts: the host's
// migrationAddress), which in the lab is the site's lightpath address and exists only while a
// lightpath joins the two sites. A migration provisions its own (through the broker); seeding and
// the deltas before it need one too, so the turntable provisions a lightpath between the two sites
// itself, as `vmtc lab up --lightpath` does (lab/net.ts provisionLightpath), for the seed and one
// periodic delta, and releases it before the migration asks the broker for the migration's own
// (two lightpaths joining the same two sites conflict: src/broker/drivers/linux.ts). The
// migration's deltas then cross the migration's lightpath. Production would ask the broker for
// the seeding lightpath as a background reservation (issue 14, "Pre-seeding").
import { sleep } from '../../src/common/clock.ts';
import { delayLineStatsBetween } from '../delay-line-process.ts';
import { LabLightpathDriver } from '../lightpath-driver.ts';
import { provisionLightpath } from '../net.ts';
import type { MigrationOutcome, Stack } from '../stack.ts';
import type { TurntableDisk } from './types.ts';
import type { LiveReplicaUse } from '../../src/controller/migration/record.ts';

export type ReplicaPlan = 'off' | 'on' | 'both';
export type TurntableLoad = 'none' | 'dirty' | 'disk' | 'both';

/** The guest's disk-writing load: 1 MiB/s over a window of at most 16 MiB (a quarter of the
 *  disk on small ones), after the first 8 MiB. The window bounds the blocks dirtied between two
 *  syncs, whatever the time between them. */
export function diskLoadFor(diskMb: number): { kibPerS: number; windowMb: number; offsetMb: number } {
  const windowMb = Math.max(1, Math.min(16, Math.floor(diskMb / 4)));
  const offsetMb = Math.max(0, Math.min(8, diskMb - windowMb));
  return { kibPerS: 1024, windowMb, offsetMb };
}

/** Whether the load dirties memory / writes the disk. */
export const dirtiesMemory = (load: TurntableLoad): boolean => load === 'dirty' || load === 'both';
export const writesDisk = (load: TurntableLoad): boolean => load === 'disk' || load === 'both';

/** Does this migration pre-seed a replica at its destination? Only live rounds do; with `both`,
 *  odd rounds do and even ones mirror the whole disk, so one run compares the two on the same
 *  guest, path and load, alternately in both directions. */
export function replicaForRound(plan: ReplicaPlan, mode: 'live' | 'nonlive', round: number): boolean {
  if (mode !== 'live') return false;
  return plan === 'on' || (plan === 'both' && round % 2 === 1);
}

/** What the replica held before the migration, and what seeding it cost on the delay line. */
export interface ReplicaPrep {
  replicaId: string;
  seedBytes: number;
  /** Bytes of the periodic deltas after the seed (bytesSent − seedBytes) and of the last one. */
  deltaBytes: number;
  lastDeltaBytes: number;
  deltas: number;
  /** UDP payload the seeding lightpath's delay line delivered, both directions (its stats file). */
  delayLineBytes: number;
  seedMs: number;
}

/** A migration's disk figures from its record and the replica prepared for it (pure). With a
 *  replica the disk bytes moved at migration time are the deltas the migration sent (while
 *  memory was pre-copied, the catch-up and the writes mirrored into the store while it followed
 *  the disks, and at the pause); without, what the drive-mirror copied. */
export function diskFigures(rec: MigrationOutcome | undefined, prep: ReplicaPrep | null, diskMb: number, delayLineBytes: number, writtenBoundBytes: number): TurntableDisk {
  const used = (rec?.steps?.incoming as { replica?: LiveReplicaUse } | undefined)?.replica;
  const mirrored = rec?.result?.storageBytes ?? 0;
  const precopyDelta = used?.precopyDeltaBytes ?? 0;
  const lastDelta = used?.lastDeltaBytes ?? 0;
  // A followed replica (docs/disks.md#following): the catch-up delta and the mirrors' writes.
  const followed = (used?.catchUpBytes ?? 0) + (used?.mirroredBytes ?? 0);
  return {
    diskMb,
    replica: prep !== null,
    replicaUsed: used !== undefined,
    ...(prep ? { replicaId: prep.replicaId } : {}),
    bytesAtMigration: precopyDelta + followed + lastDelta + mirrored,
    mirrorBytes: mirrored,
    precopyDeltaBytes: used ? precopyDelta : null,
    followBytes: used?.mirroredBytes !== undefined ? followed : null,
    lastDeltaAtPauseBytes: used ? lastDelta : null,
    lastDeltaAtPauseMs: used?.lastDeltaMs ?? null,
    digestMs: used?.digestMs ?? null,
    seedBytes: prep?.seedBytes ?? null,
    replicaDeltaBytes: prep?.deltaBytes ?? null,
    replicaLastDeltaBytes: prep?.lastDeltaBytes ?? null,
    seedDelayLineBytes: prep?.delayLineBytes ?? null,
    seedMs: prep?.seedMs ?? null,
    delayLineBytes,
    writtenBoundBytes,
  };
}

/** Wait until the replica passes `ok` (a failed replica throws), bounded by `ms`. */
export async function waitReplica(s: Stack, rid: string, ok: (r: any) => boolean, what: string, ms: number, signal?: AbortSignal): Promise<any> {
  const until = Date.now() + ms;
  for (;;) {
    const r = await s.api('GET', `/v1/vms/${s.vmId}/replicas/${rid}`);
    if (r.status !== 200) throw new Error(`replica ${rid}: GET answered ${r.status} ${JSON.stringify(r.body)}`);
    if (r.body.state === 'failed') throw new Error(`replica ${rid} failed while waiting for ${what}: ${r.body.error?.code ?? ''} ${r.body.error?.message ?? ''} ${JSON.stringify(r.body.error?.details ?? {}).slice(0, 600)}`);
    if (ok(r.body)) return r.body;
    if (Date.now() > until) throw new Error(`replica ${rid}: no ${what} within ${Math.round(ms / 1000)} s (state ${r.body.state})`);
    await sleep(200, signal);
  }
}

/** Seed a replica of the VM's disks at `to` across a lightpath the turntable provisions, wait for
 *  it warm and for one periodic delta (the guest keeps writing), then release the lightpath. The
 *  replica's next periodic delta is `intervalS` away: the migration that follows lends it before. */
export async function prepareReplica(s: Stack, from: string, to: string, o: { bandwidthMbps: number; intervalS: number; seedTimeoutMs: number; say: (l: string) => void; signal?: AbortSignal }): Promise<ReplicaPrep> {
  const connectionId = `lab-${s.lab.prefix}-seed`;
  const driver = new LabLightpathDriver({ stateDir: s.lab.stateDir });
  const t0 = Date.now();
  const seg = await provisionLightpath(s.lab, from, to, o.bandwidthMbps, connectionId);
  const statsFile = (seg.details as { relay?: { statsFile?: string } | null }).relay?.statsFile;
  let rid: string | undefined;
  let prep: ReplicaPrep;
  try {
    const res = await s.api('POST', `/v1/vms/${s.vmId}/replicas`, { destinationHostId: s.hostOf(to), intervalS: o.intervalS });
    if (res.status !== 202 && res.status !== 200) throw new Error(`replica at ${to} refused: ${res.status} ${JSON.stringify(res.body)}`);
    rid = res.body.id as string;
    o.say(`  seeding replica ${rid} at ${to} over a lightpath of its own`);
    const warm = await waitReplica(s, rid, (r) => r.state === 'warm', 'warm', o.seedTimeoutMs, o.signal);
    const seedMs = Date.now() - t0;
    o.say(`  replica warm: seed ${(warm.seedBytes / 1e6).toFixed(1)} MB in ${Math.round(seedMs / 1000)} s; waiting for a delta`);
    const after = await waitReplica(s, rid, (r) => r.deltas > warm.deltas, 'periodic delta', o.intervalS * 3000 + 60_000, o.signal);
    prep = { replicaId: rid, seedBytes: after.seedBytes, deltaBytes: after.bytesSent - after.seedBytes, lastDeltaBytes: after.lastDeltaBytes, deltas: after.deltas, delayLineBytes: 0, seedMs };
  } catch (e) {
    if (rid) await s.api('DELETE', `/v1/vms/${s.vmId}/replicas/${rid}`).catch(() => undefined);
    throw e;
  } finally {
    await driver.release(connectionId).catch(() => undefined);
  }
  // Released: the delay line's final report is in its stats file.
  return { ...prep, delayLineBytes: delayLineBytes(statsFile) };
}

/** Remove every replica of the VM left (after a move that did not consume it): the next round
 *  starts from none. Bounded: waits at most `ms` for them to go. */
export async function dropReplicas(s: Stack, ms = 60_000): Promise<void> {
  const list = (await s.api('GET', `/v1/vms/${s.vmId}/replicas`)).body?.replicas ?? [];
  for (const r of list) await s.api('DELETE', `/v1/vms/${s.vmId}/replicas/${r.id}`).catch(() => undefined);
  const until = Date.now() + ms;
  while (Date.now() < until) {
    const left = (await s.api('GET', `/v1/vms/${s.vmId}/replicas`)).body?.replicas ?? [];
    if (!left.length) return;
    await sleep(200);
  }
}

/** Bytes a delay line's stats file says it delivered, both directions, over its whole life. */
export function delayLineBytes(statsFile: string | undefined): number {
  return delayLineStatsBetween(statsFile).bytes;
}
