// A live move's active mirror into a replica's store (docs/disks.md#following): while memory is
// pre-copied, every write the guest makes to a disk is also written to the store at the
// destination before the guest is told it is done (`blockdev-mirror sync=none
// copy-mode=write-blocking` into the store's NBD export), so when the source pauses the store
// already has the final state and nothing of the disk is left to send in the pause.
//   start   a local relay to the store's export (nbd-relay.ts), an NBD client node on it (its
//           own connection: the catch-up delta that follows writes through another) and the
//           mirror job, which copies only writes made from its start; waits until the job is
//           ready and actively synced
//   cut     at the VM's STOP event the relay is released: it answers the writes in flight
//           itself and still delivers them (cutFollows)
//   stop    block-job-cancel (force) of the ready job, begun at the cut (unfollow, in the
//           pause, waits for it): every write the guest completed is in the store or on its
//           way; then the node goes (the relay offers no flush, so closing it waits for
//           nothing), then the relay, in the background
// A job is named by the replica and the drive (vmtc-follow.REPLICA.DRIVE), so an agent that
// restarted finds and stops what its predecessor started. Nothing here proves the store equal
// to the disk: the digests at the pause do (docs/disks.md#incremental-digests).
import { createHash } from 'node:crypto';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { clockSleep, type Clock } from '../../../src/common/clock.ts';
import type { Logger } from '../../../src/common/log.ts';
import { hostError } from '../errors.ts';
import type { SourceDisk } from './backend.ts';
import type { QemuCowBackend, QmpPort } from './qemu-cow.ts';
import type { NbdDestination } from './qemu-store.ts';
import { startFollowRelay } from './nbd-relay.ts';

interface BlockJob { device: string; type: string; ready?: boolean; status?: string; offset: number; len: number; 'actively-synced'?: boolean }
interface Job { id: string; status: string; error?: string; 'current-progress': number }

export const FOLLOW_JOB_PREFIX = 'vmtc-follow.';
const jobIdOf = (key: string) => `${FOLLOW_JOB_PREFIX}${key}`;
/** QEMU node names are at most 31 characters: the target is named by a hash of the key. */
const targetOf = (key: string) => `vf${createHash('sha256').update(key).digest('hex').slice(0, 24)}`;

export interface FollowDeps {
  backend: QemuCowBackend;
  clock: Clock;
  logger: Logger;
  /** Longest to wait for a job to get ready, or to conclude once cancelled (default 60 s). */
  timeoutMs?: number;
  pollMs?: number;
}

/** Start mirroring `disk`'s writes into `dest` under `key` (replica and drive). */
export async function startFollow(d: FollowDeps, disk: SourceDisk, dest: NbdDestination, key: string): Promise<void> {
  if (disk.kind !== 'qcow2' || disk.vmId === undefined) throw hostError('VMTC_HOST_BAD_PARAMS', { field: 'disk', reason: 'a running VM\'s drive' });
  await d.backend.withNode(disk, async (qmp, _node, _size, top) => {
    // (qmp: the VM's connection now; the cut's stop uses it as is, and unfollow looks again if
    // that failed.)
    // The mirror runs on the drive's top node, above the qcow2 node whose backup jobs send the
    // catch-up delta (one job a node): a drive without one cannot be followed.
    if (!top) throw hostError('VMTC_HOST_DISK_UNSUPPORTED', { vmId: disk.vmId, device: disk.device, reason: 'the drive has no pass-through node above its qcow2 node (a VM started before followed moves existed)' });
    const jobId = jobIdOf(key);
    const target = targetOf(key);
    // A job left by an earlier attempt (an agent restarted mid-move) goes first.
    await stopJob(d, qmp, jobId, target);
    await stopRelay(d, key);
    // Through a local relay (its connection's round trips do not hold the guest; it can be
    // released at the VM's stop: nbd-relay.ts), kept until stopFollow; its pid is written down
    // for an agent that restarts meanwhile.
    const dir = relayDirOf(d, key);
    await rm(dir, { recursive: true, force: true });
    await mkdir(dir, { recursive: true });
    if (dest.nbd.type !== 'inet') throw hostError('VMTC_HOST_BAD_PARAMS', { field: 'store', reason: 'an export on the lightpath address' });
    const conn = await startFollowRelay({ remote: { host: dest.nbd.host, port: dest.nbd.port, exportName: dest.exportName }, dir, clock: d.clock, logger: d.logger, ...(d.backend.netns ? { netns: d.backend.netns } : {}) }).catch(async (e: unknown) => {
      await rm(dir, { recursive: true, force: true });
      throw hostError('VMTC_HOST_DISK_COPY_FAILED', { step: 'start the follow relay', nbd: dest.nbd, reason: String((e as Error).message ?? e) }, { cause: e });
    });
    FOLLOWS.set(key, { vmId: disk.vmId!, relay: conn, stopJob: () => stopJob(d, qmp, jobId, target) });
    if (conn.pid) await writeFile(join(dir, 'relay.pid'), String(conn.pid));
    try {
      // No flushes over the path: the relay offers none (QEMU's NBD driver flushes even a node
      // opened with cache.no-flush); the store's daemon writes everything out when it closes,
      // before the store records anything.
      await qmp.execute('blockdev-add', { driver: 'nbd', 'node-name': target, server: conn.server, export: conn.exportName, cache: { 'no-flush': true } }, { timeoutMs: 30_000 });
    } catch (e) {
      await stopRelay(d, key);
      throw hostError('VMTC_HOST_DISK_COPY_FAILED', { step: 'connect the mirror to the store', nbd: dest.nbd, reason: String((e as Error).message ?? e) }, { cause: e });
    }
    try {
      await qmp.execute('blockdev-mirror', { 'job-id': jobId, device: top, target, sync: 'none', 'copy-mode': 'write-blocking', 'auto-finalize': true, 'auto-dismiss': false });
    } catch (e) {
      await qmp.execute('blockdev-del', { 'node-name': target }).catch(() => undefined);
      await stopRelay(d, key);
      throw hostError('VMTC_HOST_DISK_COPY_FAILED', { step: 'start the mirror into the store', reason: String((e as Error).message ?? e) }, { cause: e });
    }
    try {
      await waitFor(d, async () => {
        const j = (await qmp.execute<BlockJob[]>('query-block-jobs')).find((x) => x.device === jobId);
        if (!j) {
          const gone = (await qmp.execute<Job[]>('query-jobs')).find((x) => x.id === jobId);
          throw hostError('VMTC_HOST_DISK_COPY_FAILED', { job: jobId, reason: gone?.error ?? 'the mirror ended before it was ready' });
        }
        return j.ready === true && j['actively-synced'] !== false;
      }, 'the mirror into the store did not get ready');
    } catch (e) {
      await stopJob(d, qmp, jobId, target);
      await stopRelay(d, key);
      throw e;
    }
  });
}

type JobEnd = { bytes: number; error?: string; found: boolean };
/** The follows this agent started, by key: the VM mirrored, its relay (until stopRelay), the
 *  cut at the VM's stop (cutFollows: `clean` while the cut found the mirror intact and the VM
 *  has not run since), how to stop its job, and that stop once the cut began it. */
const FOLLOWS = new Map<string, { vmId: string; relay?: { close(): Promise<void>; release(): void }; cut?: { clean: boolean; reason?: string }; stopJob?: () => Promise<JobEnd>; stopping?: Promise<JobEnd> }>();

/** The VM stopped for its migration's end (QEMU's STOP event: its vCPUs are paused, no new guest
 *  write can start): release every follow of `vmId` from the path at once. QEMU completes a stop
 *  only once every request in flight is done and every node flushed: a mirrored write in flight
 *  waits for the store's answer, a round trip of the path (~200 ms at 198 ms) inside the pause.
 *  The relay (nbd-relay.ts) answers those writes itself from now on and still delivers them to
 *  the store, in order, before it closes; the store's export is closed only once the relay's
 *  connection ended (closeStore `waitClients`), and whether the store holds every write is for
 *  the digests to say. `ended(jobId)`: the job had already ended (failed) before the stop; the
 *  cut then proves nothing and unfollow reports the failure. Synchronous (a signal). */
export function cutFollows(vmId: string, ended: (jobId: string) => boolean, logger: Logger): string[] {
  const out: string[] = [];
  for (const [key, f] of FOLLOWS) {
    if (f.vmId !== vmId || !f.relay || f.cut) continue;
    f.cut = ended(jobIdOf(key)) ? { clean: false, reason: 'the mirror had failed before the VM stopped' } : { clean: true };
    try {
      f.relay.release();
    } catch (e) {
      logger.warn({ key, err: String(e) }, 'releasing a follow\'s relay failed');
      f.cut = { clean: false, reason: 'its relay could not be released' };
    }
    // The job is stopped now too, not when the controller asks (unfollow, in the pause before
    // the switchover, which waits for it): QEMU runs the commands once its stop has drained
    // (the relay answers at once from here on), and the pause waits only for what is left.
    if (f.cut.clean && f.stopJob) {
      f.stopping = f.stopJob();
      f.stopping.catch((e: unknown) => logger.warn({ key, err: String(e) }, 'stopping a cut follow\'s mirror failed'));
    }
    out.push(key);
  }
  if (out.length) logger.info({ vmId, keys: out }, 'follow cut at the stop: mirrored writes in flight are not waited for, the mirrors stop');
  return out;
}

/** The VM ran again after a cut (a migration that went on, or was given up): its writes since
 *  are in no store, so the cut no longer stands for a complete mirror. */
export function followsResumed(vmId: string): void {
  for (const f of FOLLOWS.values()) {
    if (f.vmId === vmId && f.cut?.clean) f.cut = { clean: false, reason: 'the VM ran after its mirror was cut' };
  }
}
const relayDirOf = (d: FollowDeps, key: string) => join(d.backend.scratchDir, `follow-${targetOf(key)}`);

/** Stop the relay of follow `key` (the follow is forgotten): this agent's, or one a previous
 *  agent process left (its pid file, and only a relay whose command line names that directory). */
async function stopRelay(d: FollowDeps, key: string, relay = FOLLOWS.get(key)?.relay): Promise<void> {
  FOLLOWS.delete(key);
  const dir = relayDirOf(d, key);
  if (relay) return relay.close().catch((e: unknown) => d.logger.warn({ key, err: String(e) }, 'stopping a relay failed'));
  const pid = Number(await readFile(join(dir, 'relay.pid'), 'utf8').catch(() => ''));
  if (Number.isInteger(pid) && pid > 1) {
    const cmd = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
    if ((cmd.includes('qemu-storage-daemon') || cmd.includes('nbd-relay-main')) && cmd.includes(dir)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone meanwhile */
      }
    }
  }
  await rm(dir, { recursive: true, force: true });
}

/** Stop following `key` (idempotent): the bytes the mirror wrote into the store, and whether it
 *  ended well (a job that failed left writes out of the store: `error`). */
export async function stopFollow(d: FollowDeps, disk: SourceDisk, key: string): Promise<{ bytes: number; error?: string; found: boolean; cut?: boolean; stoppedAtCut?: boolean }> {
  if (disk.kind !== 'qcow2' || disk.vmId === undefined) return { bytes: 0, found: false };
  const t0 = d.clock.now();
  const f = FOLLOWS.get(key);
  FOLLOWS.delete(key);
  const cut = f?.cut;
  // The job, then the node (its relay supports no flush: closing it sends only a disconnect),
  // then the relay, not waited for: it delivers what it still holds to the store and ends its
  // connection, which the store's close waits for (closeStore waitClients).
  // The stop the cut began, if it went well; otherwise (none, or it failed) once more here.
  const early = await f?.stopping?.catch(() => undefined);
  let out: { bytes: number; error?: string; found: boolean; cut?: boolean; stoppedAtCut?: boolean } = early ? { ...early, stoppedAtCut: true } : await d.backend.withNode(disk, (qmp) => stopJob(d, qmp, jobIdOf(key), targetOf(key)));
  void stopRelay(d, key, f?.relay);
  // A mirror released at the stop is no failure when the release found it intact and the VM
  // stayed paused; otherwise the reason is the error.
  if (cut && out.found) {
    const { error: _cutError, ...rest } = out;
    out = cut.clean ? { ...rest, cut: true } : { ...rest, error: cut.reason ?? out.error ?? 'cut' };
  }
  if (out.found) d.logger.info({ key, ms: d.clock.now() - t0, ...(cut ? { cut: cut.clean ? 'clean' : cut.reason } : {}), ...(early ? { stoppedAtCut: true } : {}) }, 'follow stopped');
  return out;
}

async function stopJob(d: FollowDeps, qmp: QmpPort, jobId: string, target: string): Promise<JobEnd> {
  // The queries and the cancel at once: QMP runs them in order (the queries see the job as it
  // was), one round trip rather than three; a cancel of a job that is gone or ended is refused,
  // which is no failure.
  const q = Promise.all([qmp.execute<Job[]>('query-jobs'), qmp.execute<BlockJob[]>('query-block-jobs')]);
  const cancel = qmp.execute('block-job-cancel', { device: jobId, force: true }).then(() => undefined, (e: unknown) => e);
  const [jobs, blockJobs] = await q;
  const refused = await cancel;
  const first = jobs.find((x) => x.id === jobId);
  let out: JobEnd = { bytes: 0, found: !!first };
  if (first) {
    // A ready, actively synced write-blocking mirror has every completed guest write in the
    // store already (the write completed only once the store, or the relay released at the
    // stop, acknowledged it) and, the VM paused (its I/O drained), nothing in flight: it is
    // abandoned at once (force), without
    // the soft cancel's final flush of the store over the path (a round trip: the store's
    // daemon flushes when it closes). Any other live job is cancelled hard too, and counts as
    // failed: the store may miss writes.
    const bj = blockJobs.find((x) => x.device === jobId);
    const synced = first.status === 'ready' && !first.error && bj?.['actively-synced'] === true;
    if (refused && first.status !== 'concluded' && first.status !== 'null') d.logger.warn({ jobId, err: String(refused) }, 'block-job-cancel refused');
    let last = first;
    await waitFor(d, async () => {
      const j = (await qmp.execute<Job[]>('query-jobs')).find((x) => x.id === jobId);
      if (j) last = j;
      return !j || j.status === 'concluded' || j.status === 'null';
    }, 'the mirror into the store did not stop');
    // The forced cancel's own error ("canceled") is not a failure of a job that was in sync.
    const error = synced ? undefined : last.error ?? (first.status === 'concluded' ? undefined : 'the mirror was not in sync when stopped');
    out = { bytes: last['current-progress'], found: true, ...(error ? { error } : {}) };
  }
  // The job dismissed and the node deleted at once (the node outlives a job that never started
  // or was dismissed by an earlier attempt).
  await Promise.all([
    first ? qmp.execute('job-dismiss', { id: jobId }).catch(() => undefined) : undefined,
    qmp.execute('blockdev-del', { 'node-name': target }).catch(() => undefined),
  ]);
  return out;
}

async function waitFor(d: FollowDeps, done: () => Promise<boolean>, what: string): Promise<void> {
  const deadline = d.clock.now() + (d.timeoutMs ?? 60_000);
  let wait = 2;
  for (;;) {
    if (await done()) return;
    if (d.clock.now() > deadline) throw hostError('VMTC_HOST_DISK_COPY_FAILED', { reason: what });
    await clockSleep(d.clock, wait);
    wait = Math.min(d.pollMs ?? 50, wait * 2);
  }
}
