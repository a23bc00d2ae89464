// Disks without shared storage (docs/design.md#disks: bulk copy while the VM runs, then only the
// blocks written since, the last delta during stop-and-copy), with QEMU's own machinery the way
// libvirt does it (its NBD storage migration; docs/qemu.md):
//
//   destination  empty images of the same format and size in a directory this driver owns,
//                exported writable over NBD on the lightpath address (createDiskCopies,
//                exportDisks); once the migration has landed, the NBD server is closed before the
//                guest starts (finishIncoming).
//   source       one `drive-mirror` (sync full) per disk into the exports, whose dirty bitmaps
//                hold the deltas, until every job is READY (mirrorDisks); at the pause before the
//                switchover, `block-job-cancel` on each READY mirror copies its last delta and
//                completes without pivot (syncMirrors); on failure or cancel the jobs are forced
//                off (abortMirrors).
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { MigrationParams, MigrationProgress, MigrationResult, VmSpec } from '../../../src/common/agent-protocol.ts';
import { clockSleep } from '../../../src/common/clock.ts';
import { VmtcError } from '../../../src/common/errors.ts';
import type { Logger } from '../../../src/common/log.ts';
import { extraOf } from './cmdline.ts';
import { qemuError } from './errors.ts';
import type { QemuVms } from './lifecycle.ts';
import { QEMU_DEFAULTS, type MirrorState, type NbdStorage, type QueryBlock, type QueryBlockJob, type QueryMigrate, type VmRecord } from './types.ts';

// ---- source --------------------------------------------------------------------------------

/** The source's storage params must name every disk the destination cannot reach (all but the
 *  read-only ones), each once: a disk left out would be empty at the destination. */
export function checkStorage(spec: VmSpec, storage: unknown): NbdStorage {
  const bad = (reason: string) => qemuError('VMTC_QEMU_BAD_SPEC', { field: 'params.storage', reason });
  const s = storage as NbdStorage;
  if (!s || typeof s !== 'object' || !s.nbd || typeof s.nbd !== 'object' || !Array.isArray(s.exports)) throw bad('{ nbd: { host, port }, exports: [{ device, name }] }');
  if (typeof s.nbd.host !== 'string' || !/^[0-9A-Za-z.:_-]{1,253}$/.test(s.nbd.host)) throw bad('nbd.host: an address or host name');
  if (!(Number.isInteger(s.nbd.port) && s.nbd.port > 0 && s.nbd.port <= 65535)) throw bad('nbd.port: 1..65535');
  const want = (spec.disks ?? []).flatMap((d, n) => (d.readonly ? [] : [`disk${n}`])).sort();
  const got = s.exports.map((e) => e?.device).sort();
  if (JSON.stringify(want) !== JSON.stringify(got)) throw bad(`exports must name each writable disk once: ${want.join(',') || '(none)'}`);
  for (const e of s.exports) if (typeof e.name !== 'string' || !/^[A-Za-z0-9_.-]{1,64}$/.test(e.name)) throw bad('exports[].name: letters, digits, _ . -');
  return s;
}

/** Bulk copy and deltas: one `drive-mirror` (sync full) per disk into the destination's NBD
 *  export; each job's dirty bitmap records the blocks the guest writes after they were copied,
 *  and the job copies them again until it is in sync (BLOCK_JOB_READY). Resolves undefined when
 *  every job is READY (they keep mirroring new writes), or the result of a failure or cancel. */
export async function mirrorDisks(vms: QemuVms, rec: VmRecord, params: MigrationParams, storage: NbdStorage, onProgress: (p: MigrationProgress) => void, log: Logger): Promise<MigrationResult | undefined> {
  const base = { migrationId: params.migrationId, vmId: rec.spec.vmId };
  const m: MirrorState = { jobs: new Map(), ends: new Map(), offsets: new Map(), cancel: false, ramStarted: false };
  rec.mirror = m;
  const failed = (details: Record<string, unknown>, cause?: unknown): MigrationResult => {
    const err = qemuError('VMTC_QEMU_MIGRATION_FAILED', { vmId: rec.spec.vmId, phase: 'storage', ...details }, cause ? { cause } : {});
    log.warn({ err: err.toJSON() }, 'storage mirror failed');
    return { ...base, status: 'failed', error: err.toJSON() };
  };
  const h = storage.nbd.host.includes(':') ? `[${storage.nbd.host}]` : storage.nbd.host;
  const t0 = vms.clock.now();
  try {
    const qmp = vms.qmpOf(rec);
    for (const e of storage.exports) {
      const job = `vmtc-mirror-${e.device}`;
      const args: Record<string, unknown> = {
        'job-id': job, device: e.device, target: `nbd://${h}:${storage.nbd.port}/${encodeURIComponent(e.name)}`,
        // The export carries the guest-visible bytes; the destination's own format is its business.
        format: 'raw', mode: 'existing', sync: 'full',
      };
      if (params.bandwidthMbps !== undefined) {
        const speed = Math.max(1, Math.round((params.bandwidthMbps * 1e6) / 8));
        args.speed = speed;
        // QEMU issues up to buf-size (default 16 MiB) at once and then sleeps to pay for it at
        // `speed`; a failure in that burst (destination gone) surfaces only after the sleep.
        // About one second's worth keeps that bounded on slow paths.
        args['buf-size'] = Math.min(16 * 1048576, Math.max(1048576, 2 ** Math.ceil(Math.log2(speed))));
      }
      await qmp.execute('drive-mirror', args);
      m.jobs.set(job, e.device);
    }
    log.info({ jobs: [...m.jobs.keys()], nbd: storage.nbd }, 'storage mirrors started');
    for (;;) {
      if (m.cancel) {
        log.info('migration cancelled during the storage mirror');
        return { ...base, status: 'cancelled' };
      }
      const jobs = (await qmp.execute<QueryBlockJob[]>('query-block-jobs')).filter((j) => m.jobs.has(j.device));
      for (const job of m.jobs.keys()) {
        if (jobs.some((j) => j.device === job)) continue;
        const end = m.ends.get(job);
        return failed({ job, device: m.jobs.get(job), desc: end?.error ?? `the mirror job ended (${end?.event ?? 'without an event'}) before it was in sync` });
      }
      let total = 0;
      let done = 0;
      for (const j of jobs) {
        m.offsets.set(j.device, j.offset);
        total += j.len;
        done += j.offset;
      }
      const p: MigrationProgress = { ...base, status: 'active', phase: 'storage', totalBytes: total, transferredBytes: done, remainingBytes: Math.max(0, total - done) };
      const secs = (vms.clock.now() - t0) / 1000;
      if (secs > 0) p.throughputMbps = (done * 8) / 1e6 / secs;
      rec.lastMigration = p;
      try {
        onProgress(p);
      } catch (e) {
        log.warn({ err: String(e) }, 'progress listener threw');
      }
      if (jobs.every((j) => j.ready)) {
        log.info({ bytes: done, ms: vms.clock.now() - t0 }, 'storage mirrors READY: disks in sync, deltas keep flowing');
        return undefined;
      }
      await vms.pollWait(rec);
    }
  } catch (e) {
    return failed({ desc: e instanceof VmtcError ? e.message : String(e) }, e);
  }
}

/** Stop-and-copy (source paused): `block-job-cancel` on a READY mirror copies what is still
 *  dirty and completes without pivot (BLOCK_JOB_COMPLETED): the destination then holds a
 *  point-in-time copy. Returns why it failed, or undefined. */
export async function syncMirrors(vms: QemuVms, rec: VmRecord, log: Logger): Promise<Record<string, unknown> | undefined> {
  const m = rec.mirror!;
  const qmp = vms.qmpOf(rec);
  const t0 = vms.clock.now();
  try {
    for (const job of m.jobs.keys()) {
      if (m.ends.has(job)) return { job, desc: m.ends.get(job)!.error ?? 'the mirror job ended early' };
      await qmp.execute('block-job-cancel', { device: job });
    }
    const deadline = vms.clock.now() + QEMU_DEFAULTS.mirrorSyncMs;
    for (;;) {
      const live = new Set((await qmp.execute<QueryBlockJob[]>('query-block-jobs')).map((j) => j.device));
      const pending = [...m.jobs.keys()].filter((j) => !m.ends.has(j) && live.has(j));
      if (!pending.length) break;
      if (vms.clock.now() > deadline) return { desc: 'the mirrors did not finish their last delta in time', jobs: pending };
      await clockSleep(vms.clock, 10);
    }
    for (const job of m.jobs.keys()) {
      const end = m.ends.get(job);
      if (!end || end.event !== 'BLOCK_JOB_COMPLETED' || end.error) return { job, desc: end?.error ?? `the mirror ended with ${end?.event ?? 'no event'}, not in sync` };
    }
    log.info({ ms: vms.clock.now() - t0, bytes: mirrorBytes(m) }, 'storage mirrors took their last delta and ended (no pivot)');
    return undefined;
  } catch (e) {
    return { desc: e instanceof VmtcError ? e.message : String(e) };
  }
}

/** Failure or cancel: end every mirror still running without waiting for sync (force). */
export async function abortMirrors(vms: QemuVms, rec: VmRecord, log: Logger): Promise<void> {
  const m = rec.mirror;
  if (!m || !rec.qmp || rec.qmp.closed) return;
  const qmp = rec.qmp;
  const deadline = vms.clock.now() + QEMU_DEFAULTS.mirrorAbortMs;
  for (;;) {
    const live = (await qmp.execute<QueryBlockJob[]>('query-block-jobs')).filter((j) => m.jobs.has(j.device));
    if (!live.length) return;
    if (vms.clock.now() > deadline) throw qemuError('VMTC_QMP_TIMEOUT', { vmId: rec.spec.vmId, command: 'block-job-cancel', jobs: live.map((j) => j.device) });
    for (const j of live) await qmp.execute('block-job-cancel', { device: j.device, force: true }).catch((e: unknown) => log.debug({ err: String(e), job: j.device }, 'block-job-cancel refused'));
    await clockSleep(vms.clock, 50);
  }
}

/** Disk bytes the mirrors processed (their final offsets, or the last seen ones). */
export function mirrorBytes(m: MirrorState): number {
  let n = 0;
  for (const job of m.jobs.keys()) n += m.ends.get(job)?.offset ?? m.offsets.get(job) ?? 0;
  return n;
}

// ---- destination -----------------------------------------------------------------------------

/** Step 1: empty images of the source's format and virtual size (`qemu-img create`), in this
 *  driver's own directory; the returned spec names them. Read-only disks are not copied: like
 *  libvirt, they are assumed present at the same path. */
export async function createDiskCopies(vms: QemuVms, spec: VmSpec, migrationId: string): Promise<{ spec: VmSpec; created: string[] }> {
  const sizes = extraOf(spec).diskBytes ?? [];
  const dir = vms.diskDir(spec.vmId);
  const tag = migrationId.replace(/[^A-Za-z0-9_.-]/g, '_').slice(0, 64);
  const created: string[] = [];
  const disks: NonNullable<VmSpec['disks']> = [];
  try {
    for (const [n, d] of (spec.disks ?? []).entries()) {
      if (d.readonly) {
        disks.push(d);
        continue;
      }
      const size = sizes[n];
      if (!(Number.isSafeInteger(size) && size! > 0)) throw qemuError('VMTC_QEMU_BAD_SPEC', { field: `extra.diskBytes[${n}]`, reason: 'the virtual size of every disk to copy (the source driver records it at start)' });
      if (d.format !== 'qcow2' && d.format !== 'raw') throw qemuError('VMTC_QEMU_BAD_SPEC', { field: `disks[${n}].format`, reason: 'qcow2 or raw' });
      await mkdir(dir, { recursive: true });
      const path = join(dir, `${tag}-disk${n}.${d.format}`);
      const r = await vms.system.exec(['qemu-img', 'create', '-q', '-f', d.format, path, String(size)], QEMU_DEFAULTS.startTimeoutMs);
      if (r.code !== 0) throw qemuError('VMTC_QEMU_START_FAILED', { vmId: spec.vmId, step: 'qemu-img create', path, stderr: r.stderr.trim().slice(0, 500) });
      created.push(path);
      disks.push({ ...d, path });
    }
  } catch (e) {
    for (const f of created) await rm(f, { force: true });
    throw e;
  }
  return { spec: { ...spec, disks }, created };
}

/** Step 2: NBD server on the listen host (the lightpath address), port picked by the kernel and
 *  read back from /proc, one writable export per copied disk (`block-export-add`; QEMU
 *  activates the incoming image for it). */
export async function exportDisks(vms: QemuVms, rec: VmRecord, listenHost: string, suspend: boolean): Promise<NbdStorage> {
  const qmp = vms.qmpOf(rec);
  const before = new Set(await vms.system.listeningPorts(rec.pid!));
  await qmp.execute('nbd-server-start', { addr: { type: 'inet', data: { host: listenHost, port: '0' } } });
  const fresh = (await vms.system.listeningPorts(rec.pid!)).filter((p) => !before.has(p));
  if (fresh.length !== 1) throw qemuError('VMTC_QEMU_START_FAILED', { vmId: rec.spec.vmId, reason: 'could not tell the NBD server port', ports: fresh });
  const blocks = await qmp.execute<QueryBlock[]>('query-block');
  const exports: { device: string; name: string }[] = [];
  for (const [n, d] of (rec.spec.disks ?? []).entries()) {
    if (d.readonly) continue;
    const device = `disk${n}`;
    const node = blocks.find((b) => b.device === device)?.inserted?.['node-name'];
    if (!node) throw qemuError('VMTC_QEMU_START_FAILED', { vmId: rec.spec.vmId, reason: `no block node for ${device}` });
    await qmp.execute('block-export-add', { type: 'nbd', id: `vmtc-nbd-${device}`, 'node-name': node, name: device, writable: true });
    exports.push({ device, name: device });
  }
  rec.incomingStorage = { suspend };
  await vms.persist(rec);
  rec.log.info({ listenHost, port: fresh[0], exports: exports.map((e) => e.name) }, 'disk copies exported over NBD for the storage mirror');
  return { nbd: { host: listenHost, port: fresh[0]! }, exports };
}

/** Last step (libvirt's Finish phase): once the incoming migration has landed (the source ended
 *  its mirrors before the switchover), close the NBD server so nothing else can write to the
 *  disks, then start the guest (unless the migration was non-live). Idempotent. */
export function finishIncoming(vms: QemuVms, rec: VmRecord): Promise<void> {
  rec.finishing ??= (async () => {
    if (!rec.incomingStorage) return;
    const qmp = vms.qmpOf(rec);
    const q = await qmp.execute<QueryMigrate>('query-migrate');
    if (q.status !== 'completed') return;
    await qmp.execute('nbd-server-stop').catch((e: unknown) => rec.log.warn({ err: String(e) }, 'nbd-server-stop refused'));
    const { suspend } = rec.incomingStorage;
    rec.incomingStorage = undefined;
    await vms.persist(rec);
    if (!suspend) {
      await vms.tapsUp(rec);
      await qmp.execute('cont');
    }
    rec.log.info({ started: !suspend }, 'storage copy landed; NBD server stopped');
    await vms.refresh(rec);
  })().finally(() => {
    rec.finishing = undefined;
  });
  return rec.finishing;
}
