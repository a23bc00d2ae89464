// The QEMU hypervisor driver (DESIGN.md: "QEMU/KVM over QMP"). One QEMU process per VM,
// daemonized, with a pidfile and a QMP unix socket under `<dataDir>/vms/<vmId>/`, so a restarted
// agent finds its running VMs again and re-attaches (list() reports them).
//
// Live migration follows QEMU's own protocol (docs/devel/migration.rst): the destination is
// started with the same device model and `-incoming defer`, then `migrate-incoming` opens the
// listener; the source sets capabilities/parameters, runs `migrate`, and is polled with
// `query-migrate`. After completion the source is `postmigrate`: paused and still primary until
// the controller destroys it (issue 4's commit protocol: the VM runs in exactly one place).
//
// Acceleration is a host setting: `accel` only changes `-accel` (LAB-NOTES: TCG in the lab).
//
// Disks without shared storage (DESIGN.md "Disks": bulk copy while the VM runs, then only the
// blocks written since, the last delta during stop-and-copy) use QEMU's own machinery the way
// libvirt does (its NBD storage migration): the destination creates empty images of the same
// format and size in a directory this driver owns and exports them writable over NBD; the source
// runs a `drive-mirror` (sync full) into each export, whose dirty bitmap holds the deltas, waits
// for BLOCK_JOB_READY, migrates RAM with `pause-before-switchover`, and at the pause ends every
// mirror with `block-job-cancel` (a READY mirror then copies its last delta and completes without
// pivot), then lets the switchover go on (`migrate-continue`). The destination (started with -S)
// closes its NBD server before it starts the guest.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, readFile, readdir, readlink, rm, rmdir, statfs, writeFile, rename } from 'node:fs/promises';
import { cpus, totalmem, tmpdir } from 'node:os';
import { join, sep } from 'node:path';
import type { MigrationParams, MigrationProgress, MigrationResult, VmInfo, VmSpec, VmState } from '../../src/common/agent-protocol.ts';
import { sleep } from '../../src/common/clock.ts';
import { VmtcError } from '../../src/common/errors.ts';
import type { Logger } from '../../src/common/log.ts';
import { tcpConnectCheck, type HostFacts, type HypervisorDriver } from './driver.ts';
import { buildQemuArgs, extraOf, mapRunState, validateSpec, type Accel, type VmPaths } from './qemu-cmdline.ts';
import { qemuError } from './qemu-errors.ts';
import { cpuModelFeatures, qemuVersion, resolveMachine } from './qemu-facts.ts';
import { QmpClient, type QmpEvent } from './qmp.ts';

/** Options of the driver; defaults in one place (STYLE.md §7). */
export interface QemuDriverOptions {
  /** Where VM directories live (`<dataDir>/vms/<vmId>/`). */
  dataDir: string;
  logger: Logger;
  /** Default 'tcg' (the lab); 'kvm' on production hosts. Changes `-accel` and nothing else. */
  accel?: Accel;
  /** Run QEMU (and create its taps) inside this network namespace. */
  netns?: string;
  /** Default 'qemu-system-x86_64'. */
  qemuBinary?: string;
  /** How often migrate() polls query-migrate. Default 200 ms. */
  pollMs?: number;
  /** With MigrationParams.postcopy: switch to post-copy once QEMU's dirty-sync-count reaches
   *  this. Default 2 (after the first full pass); 1 switches as soon as pre-copy starts. */
  postcopyAfterPass?: number;
  /** Reported in facts(); the lab has none. Default false. */
  sharedStorage?: boolean;
}

/** What the driver keeps on disk per VM (vm.json), enough to re-attach after a restart. */
interface VmFile {
  spec: VmSpec;
  taps: string[];
  paths: VmPaths;
  role: 'normal' | 'incoming';
  migrationId?: string;
  /** Set when stop() powered the VM off, so a restart says "stopped", not "crashed". */
  stopped?: boolean;
  netns?: string;
  /** A storage-copy destination whose NBD exports are open: when the incoming migration lands,
   *  the driver stops the NBD server, then starts the guest (unless `suspend`). */
  incomingStorage?: { suspend: boolean };
}

/** The source's mirror jobs of one storage-copy migration. */
interface MirrorState {
  /** job id -> drive id */
  jobs: Map<string, string>;
  /** How each job ended (BLOCK_JOB_COMPLETED / BLOCK_JOB_CANCELLED events). */
  ends: Map<string, { event: string; error?: string; offset?: number }>;
  /** Last `offset` seen per job (bytes processed: bulk copy plus deltas). */
  offsets: Map<string, number>;
  cancel: boolean;
  /** Set just before `migrate` is sent: from then on a cancel goes through migrate_cancel. */
  ramStarted: boolean;
  /** Why the final sync failed, if it did. */
  syncError?: Record<string, unknown>;
}

interface QueryBlockJob {
  device: string;
  type: string;
  len: number;
  offset: number;
  ready?: boolean;
  status?: string;
  speed?: number;
}

interface QueryBlock {
  device: string;
  inserted?: { 'node-name'?: string; image?: { 'virtual-size'?: number } };
}

interface VmRecord extends VmFile {
  state: VmState;
  pid?: number;
  qmp?: QmpClient;
  /** True while migrate() runs for this VM (source side). */
  migrating: boolean;
  quitting: boolean;
  lastMigration?: MigrationProgress | MigrationResult;
  mirror?: MirrorState;
  /** A running finishIncoming() (storage-copy destination). */
  finishing?: Promise<void>;
  /** Wakes migrate()'s poll loop early when a MIGRATION event arrives. */
  wake?: () => void;
  stateWaiters: Set<() => void>;
  log: Logger;
  /** Epoch ms of the last STOP / RESUME event (QEMU's own timestamps, the host clock). */
  pausedAt?: number;
  resumedAt?: number;
}

const ACTIVE_MIGRATION = new Set(['setup', 'active', 'postcopy-active', 'postcopy-paused', 'postcopy-recover', 'device', 'pre-switchover', 'wait-unplug', 'cancelling', 'colo']);

interface QueryMigrate {
  status?: string;
  'total-time'?: number;
  'setup-time'?: number;
  downtime?: number;
  'expected-downtime'?: number;
  'error-desc'?: string;
  ram?: { total: number; transferred: number; remaining: number; 'dirty-pages-rate'?: number; 'dirty-sync-count'?: number; mbps?: number };
  'socket-address'?: { host: string; port: string }[];
}

export class QemuDriver implements HypervisorDriver {
  readonly type = 'qemu' as const;
  private readonly vms = new Map<string, VmRecord>();
  private readonly listeners = new Set<() => void>();
  private readonly accel: Accel;
  private readonly binary: string;
  private readonly log: Logger;
  private readonly ready: Promise<void>;
  private closed = false;
  private machineCache = new Map<string, Promise<string>>();
  private factsCache?: Promise<Omit<HostFacts, 'memoryMb' | 'diskGb'>>;

  constructor(private readonly opts: QemuDriverOptions) {
    this.accel = opts.accel ?? 'tcg';
    this.binary = opts.qemuBinary ?? 'qemu-system-x86_64';
    this.log = opts.logger.child({ component: 'qemu' });
    this.ready = this.reattachAll();
    // Never an unhandled rejection: every public method awaits `ready` and sees the error.
    this.ready.catch(() => undefined);
  }

  // ---- inventory -------------------------------------------------------------------------

  /** The cold path's service check (D4.4 "verify"): the guests' network is inside the driver's
   *  namespace, so the connection is made from there (bash's /dev/tcp, bounded by `timeout`). */
  async checkTcp(vmId: string, host: string, port: number, timeoutMs: number): Promise<boolean> {
    await this.ready;
    this.get(vmId);
    if (!this.opts.netns) return tcpConnectCheck(host, port, timeoutMs);
    // host and port go to bash as positional parameters, never into the script text.
    if (!/^[0-9A-Za-z.:_-]{1,253}$/.test(host) || !(Number.isInteger(port) && port > 0 && port <= 65535)) return false;
    const secs = (Math.max(100, timeoutMs) / 1000).toFixed(3);
    const r = await runProc(['ip', 'netns', 'exec', this.opts.netns, 'timeout', secs, 'bash', '-c', 'exec 3<>"/dev/tcp/$0/$1"', host, String(port)], timeoutMs + 5000);
    return r.code === 0;
  }

  onChange(listener: () => void): void {
    this.listeners.add(listener);
  }

  async list(): Promise<VmInfo[]> {
    await this.ready;
    return [...this.vms.values()].map((r) => this.info(r));
  }

  async describe(vmId: string): Promise<VmInfo> {
    await this.ready;
    return this.info(this.get(vmId));
  }

  /** Host-side paths of a VM: console log, QMP socket, serial port sockets (probes read port 1). */
  async paths(vmId: string): Promise<VmPaths> {
    await this.ready;
    return { ...this.get(vmId).paths };
  }

  /** The QEMU process id (tests and the lab use it to kill a QEMU on purpose). */
  async pid(vmId: string): Promise<number | undefined> {
    await this.ready;
    return this.get(vmId).pid;
  }

  /** One HMP command through QMP `human-monitor-command` (diagnostics; the lab tests write to a
   *  disk through the block layer with `qemu-io <drive> "..."`, as a guest write would). */
  async humanMonitor(vmId: string, command: string): Promise<string> {
    await this.ready;
    return this.qmpOf(this.get(vmId)).execute<string>('human-monitor-command', { 'command-line': command }, { timeoutMs: 30_000 });
  }

  /** The latest progress of the VM's migration, or its result once finished (vm.migrationStatus). */
  async migrationStatus(vmId: string): Promise<MigrationProgress | MigrationResult | null> {
    await this.ready;
    return this.get(vmId).lastMigration ?? null;
  }

  async facts(): Promise<HostFacts> {
    await this.ready;
    this.factsCache ??= (async () => {
      const model = 'qemu64';
      const [version, features] = await Promise.all([
        qemuVersion(this.binary),
        cpuModelFeatures(this.binary, this.accel, model).catch(async () => hostCpuFlags()),
      ]);
      return {
        hypervisor: { type: 'qemu' as const, version },
        cpu: { model, features, vcpus: cpus().length },
        sharedStorage: this.opts.sharedStorage ?? false,
      };
    })();
    const f = await this.factsCache;
    await mkdir(this.opts.dataDir, { recursive: true });
    const st = await statfs(this.opts.dataDir);
    return { ...f, memoryMb: Math.floor(totalmem() / 1048576), diskGb: Math.floor((st.bavail * st.bsize) / 1e9) };
  }

  // ---- lifecycle -------------------------------------------------------------------------

  async start(spec: VmSpec): Promise<VmInfo> {
    await this.ready;
    const rec = await this.launch(spec, 'normal');
    return this.info(rec);
  }

  async prepareIncoming(spec: VmSpec, migrationId: string, listenHost: string, port?: number): Promise<{ uri: string; storage?: MigrationParams['storage'] }> {
    await this.ready;
    const m = extraOf(spec).migration ?? {};
    const copy = m.copyStorage === true;
    let launchSpec = spec;
    let created: string[] = [];
    if (copy) {
      validateSpec(spec);
      // A leftover of this VM is cleared first (launch() would), so that clearing it cannot
      // touch the copies made below.
      const old = this.vms.get(spec.vmId);
      if (old && old.state !== 'stopped' && old.state !== 'crashed') throw qemuError('VMTC_QEMU_VM_EXISTS', { vmId: spec.vmId, state: old.state });
      if (old) await this.destroy(spec.vmId);
      ({ spec: launchSpec, created } = await this.createDiskCopies(spec, migrationId));
    }
    let rec: VmRecord;
    try {
      // -S: with storage copy the guest starts only after the NBD server is closed.
      rec = await this.launch(launchSpec, 'incoming', migrationId, { startPaused: copy });
    } catch (e) {
      for (const f of created) await rm(f, { force: true });
      throw e;
    }
    try {
      const qmp = this.qmpOf(rec);
      // Capabilities that must match the source's (multifd, postcopy) are set before the
      // listener opens; `events` gives MIGRATION events on this side too.
      await qmp.execute('migrate-set-capabilities', {
        capabilities: [
          { capability: 'events', state: true },
          { capability: 'multifd', state: !!m.multifd },
          { capability: 'postcopy-ram', state: !!m.postcopy },
        ],
      });
      if (m.multifd && m.multifdChannels) await qmp.execute('migrate-set-parameters', { 'multifd-channels': m.multifdChannels });
      // The NBD exports open before the migration listener: the new listening socket found
      // after nbd-server-start is then the NBD server's.
      const storage = copy ? await this.exportDisks(rec, listenHost, !!m.suspend) : undefined;
      // Listening on the lightpath address only (issue 4); port 0 lets QEMU pick a free one.
      const hostPart = listenHost.includes(':') ? `[${listenHost}]` : listenHost;
      await qmp.execute('migrate-incoming', { uri: `tcp:${hostPart}:${port ?? 0}` });
      const q = await qmp.execute<QueryMigrate>('query-migrate');
      const actual = port ?? Number(q['socket-address']?.[0]?.port);
      if (!actual) throw qemuError('VMTC_QEMU_START_FAILED', { vmId: spec.vmId, reason: 'QEMU did not report the incoming port', reply: q });
      rec.log.info({ listenHost, port: actual }, 'incoming migration listener ready');
      return { uri: `tcp:${hostPart}:${actual}`, ...(storage ? { storage } : {}) };
    } catch (e) {
      await this.destroy(spec.vmId).catch(() => undefined);
      throw e;
    }
  }

  async resume(vmId: string): Promise<VmInfo> {
    await this.ready;
    const rec = this.get(vmId);
    // A destination of a non-live migration: the copy may still be arriving (the source finishes
    // sending before the last bytes cross the path); wait for it to land, then start it.
    const deadline = Date.now() + 60_000;
    while (rec.state === 'incoming' && rec.qmp && !rec.qmp.closed && Date.now() < deadline) {
      await this.refresh(rec).catch(() => undefined);
      if (rec.state !== 'incoming') break;
      await this.waitStateChange(rec, 100);
    }
    if (!['paused', 'postmigrate', 'running'].includes(rec.state)) throw qemuError('VMTC_QEMU_BAD_STATE', { vmId, state: rec.state, operation: 'resume' });
    // A storage-copy destination closes its NBD exports before its guest may run.
    if (rec.incomingStorage) await this.finishIncoming(rec);
    await this.refresh(rec);
    if (rec.state !== 'running') await this.qmpOf(rec).execute('cont');
    await this.refresh(rec);
    return this.info(rec);
  }

  async stop(vmId: string): Promise<void> {
    await this.ready;
    const rec = this.get(vmId);
    await this.quit(rec);
    rec.stopped = true;
    await this.persist(rec);
    this.setState(rec, 'stopped');
  }

  async destroy(vmId: string): Promise<void> {
    await this.ready;
    const rec = this.vms.get(vmId);
    if (!rec) throw qemuError('VMTC_QEMU_VM_NOT_FOUND', { vmId });
    await this.quit(rec);
    await this.removeTaps(rec);
    // Disk copies this driver made (storage-copy destination) go with the VM; disks anywhere
    // else (the operator's, a cold import's) are never deleted here.
    const own = this.diskDir(vmId);
    for (const d of rec.spec.disks ?? []) if (d.path.startsWith(own + sep)) await rm(d.path, { force: true });
    await rmdir(own).catch(() => undefined); // only when empty
    await rm(rec.paths.dir, { recursive: true, force: true });
    for (const s of [rec.paths.qmp, ...rec.paths.serial]) await rm(s, { force: true });
    this.vms.delete(vmId);
    rec.log.info('destroyed');
    this.notify();
  }

  async waitRunning(vmId: string, timeoutMs: number): Promise<VmInfo> {
    await this.ready;
    const rec = this.get(vmId);
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (rec.incomingStorage && rec.qmp && !rec.qmp.closed) await this.finishIncoming(rec).catch((e: unknown) => rec.log.warn({ err: String(e) }, 'finishing the storage-copy destination failed'));
      if (rec.qmp && !rec.qmp.closed) await this.refresh(rec).catch(() => undefined);
      if (rec.state === 'running') {
        if (rec.role === 'incoming') {
          rec.role = 'normal';
          await this.persist(rec);
        }
        return this.info(rec);
      }
      if (rec.state === 'crashed' || rec.state === 'stopped') throw qemuError('VMTC_QEMU_VM_CRASHED', { vmId, state: rec.state, operation: 'waitRunning' });
      const left = deadline - Date.now();
      if (left <= 0) throw qemuError('VMTC_QEMU_WAIT_TIMEOUT', { vmId, state: rec.state, timeoutMs });
      await this.waitStateChange(rec, Math.min(200, left));
    }
  }

  /** Disconnect from every QEMU; the VMs keep running (a new driver re-attaches to them). */
  async close(): Promise<void> {
    await this.ready.catch(() => undefined);
    this.closed = true;
    for (const r of this.vms.values()) r.qmp?.close();
    this.listeners.clear();
  }

  // ---- migration (source side) ------------------------------------------------------------

  async migrate(vmId: string, uri: string, params: MigrationParams, onProgress: (p: MigrationProgress) => void): Promise<MigrationResult> {
    await this.ready;
    const rec = this.get(vmId);
    if (rec.state !== 'running' || rec.migrating) throw qemuError('VMTC_QEMU_BAD_STATE', { vmId, state: rec.state, operation: 'migrate' });
    if (params.storage) checkStorage(rec.spec, params.storage);
    const { migrationId } = params;
    const log = rec.log.child({ migrationId });
    const qmp = this.qmpOf(rec);
    rec.migrating = true;
    rec.migrationId = migrationId;
    rec.lastMigration = undefined;
    await this.persist(rec);
    this.setState(rec, 'migrating');
    const base = { migrationId, vmId };
    const fail = async (e: unknown, extra: Record<string, unknown> = {}): Promise<MigrationResult> => {
      const err = e instanceof VmtcError ? e : qemuError('VMTC_QEMU_MIGRATION_FAILED', { reason: String(e) }, { cause: e });
      log.warn({ err: err.toJSON(), ...extra }, 'migration failed');
      return { ...base, status: 'failed', error: err.toJSON() };
    };
    let result: MigrationResult;
    try {
      try {
        await qmp.execute('migrate-set-capabilities', {
          capabilities: [
            { capability: 'events', state: true },
            { capability: 'auto-converge', state: !!params.autoConverge },
            { capability: 'multifd', state: !!params.multifd },
            { capability: 'postcopy-ram', state: !!params.postcopy },
            // Storage copy: QEMU pauses before the switchover so the mirrors can take their
            // last delta while nothing writes (then migrate-continue).
            { capability: 'pause-before-switchover', state: !!params.storage },
          ],
        });
        const p: Record<string, unknown> = {};
        // QEMU takes bytes per second; the controller speaks Mbit/s.
        if (params.bandwidthMbps !== undefined) p['max-bandwidth'] = Math.max(1, Math.round((params.bandwidthMbps * 1e6) / 8));
        if (params.maxDowntimeMs !== undefined) p['downtime-limit'] = Math.max(1, Math.round(params.maxDowntimeMs));
        const mc = extraOf(rec.spec).migration?.multifdChannels;
        if (params.multifd && mc) p['multifd-channels'] = mc;
        if (Object.keys(p).length) await qmp.execute('migrate-set-parameters', p);
        if (params.suspend) {
          // Non-live: the VM is paused for the whole copy (suspend, copy, resume).
          await qmp.execute('stop');
        }
        if (params.storage) {
          const r = await this.mirrorDisks(rec, params, params.storage, onProgress, log);
          if (r) {
            result = r;
            return result;
          }
          // No await between this check and sending `migrate`: a cancel from here on finds
          // ramStarted set and goes through migrate_cancel.
          if (rec.mirror!.cancel) {
            result = { ...base, status: 'cancelled' };
            return result;
          }
          rec.mirror!.ramStarted = true;
        }
        log.info({ uri, params }, 'migration starting');
        await qmp.execute('migrate', { uri });
      } catch (e) {
        result = await fail(e, { step: 'setup' });
        return result;
      }
      result = await this.followMigration(rec, params, onProgress, log).catch((e: unknown) => fail(e, { step: 'follow' }));
      return result;
    } finally {
      const m = rec.mirror;
      if (m) {
        // On failure or cancel the mirrors are aborted (the source keeps its disks; the
        // destination's copies go with its VM). After completion they have already ended.
        await this.abortMirrors(rec, log).catch((e: unknown) => log.error({ err: String(e) }, 'could not cancel the storage mirrors'));
        const bytes = mirrorBytes(m);
        // (mutated, not replaced: the value `return` already took is this object)
        if (result! && bytes > 0) result!.storageBytes = bytes;
        rec.mirror = undefined;
      }
      rec.migrating = false;
      rec.wake = undefined;
      // On anything but completion the VM must run here (issue 4: exactly one place).
      if (result!.status !== 'completed' && rec.qmp && !rec.qmp.closed) {
        await this.ensureRunning(rec).catch((e: unknown) => log.error({ err: String(e) }, 'could not resume the source after a failed migration'));
      }
      rec.lastMigration = result!;
      await this.refresh(rec).catch(() => undefined);
    }
  }

  private async followMigration(rec: VmRecord, params: MigrationParams, onProgress: (p: MigrationProgress) => void, log: Logger): Promise<MigrationResult> {
    const { migrationId } = params;
    const base = { migrationId, vmId: rec.spec.vmId };
    const qmp = this.qmpOf(rec);
    let postcopyStarted = false;
    let switchedOver = false;
    for (;;) {
      let q: QueryMigrate;
      try {
        q = await qmp.execute<QueryMigrate>('query-migrate');
      } catch (e) {
        // The source QEMU went away: nothing ran at the destination yet (pre-copy), and the
        // VM is lost here; report it as crashed rather than pretending it runs.
        const err = qemuError('VMTC_QEMU_VM_CRASHED', { vmId: rec.spec.vmId, operation: 'migrate' }, { cause: e });
        return { ...base, status: 'failed', error: err.toJSON() };
      }
      const status = q.status ?? 'none';
      const ram = q.ram;
      const progress: MigrationProgress = {
        ...base,
        status: (['setup', 'active', 'postcopy-active', 'device', 'completed', 'failed', 'cancelled'].includes(status) ? status : 'active') as MigrationProgress['status'],
        totalBytes: ram?.total ?? 0,
        transferredBytes: ram?.transferred ?? 0,
        remainingBytes: ram?.remaining ?? 0,
        phase: 'ram',
      };
      if (ram?.['dirty-pages-rate'] !== undefined) progress.dirtyPagesRate = ram['dirty-pages-rate'];
      if (ram?.['dirty-sync-count'] !== undefined) progress.pass = ram['dirty-sync-count'];
      if (q['expected-downtime'] !== undefined) progress.expectedDowntimeMs = q['expected-downtime'];
      if (ram?.mbps !== undefined) progress.throughputMbps = ram.mbps;
      if (ACTIVE_MIGRATION.has(status) || status === 'completed') {
        rec.lastMigration = progress;
        try {
          onProgress(progress);
        } catch (e) {
          log.warn({ err: String(e) }, 'progress listener threw');
        }
      }
      if (status === 'completed') {
        // QEMU announces `completed` (event and status) a moment before it fills in the
        // timings; ask again briefly so the downtime figure is not a premature zero.
        for (let i = 0; i < 20 && !q['total-time']; i++) {
          await sleep(10);
          q = await qmp.execute<QueryMigrate>('query-migrate').catch(() => q);
        }
        const r: MigrationResult = { ...base, status: 'completed', transferredBytes: ram?.transferred ?? 0 };
        if (q.downtime !== undefined) r.downtimeMs = q.downtime;
        if (q['total-time'] !== undefined) r.totalTimeMs = q['total-time'];
        if (q['setup-time'] !== undefined) r.setupTimeMs = q['setup-time'];
        if (rec.pausedAt !== undefined) r.pausedAt = rec.pausedAt;
        log.info({ downtimeMs: r.downtimeMs, totalTimeMs: r.totalTimeMs, bytes: r.transferredBytes }, 'migration completed; source stays paused and primary until commit');
        return r;
      }
      if (status === 'failed' || status === 'none') {
        const err = qemuError('VMTC_QEMU_MIGRATION_FAILED', { vmId: rec.spec.vmId, status, desc: q['error-desc'] ?? '' });
        log.warn({ err: err.toJSON() }, 'migration failed');
        return { ...base, status: 'failed', error: err.toJSON(), transferredBytes: ram?.transferred ?? 0 };
      }
      if (status === 'cancelled' && rec.mirror?.syncError) {
        const err = qemuError('VMTC_QEMU_MIGRATION_FAILED', { vmId: rec.spec.vmId, phase: 'storage', ...rec.mirror.syncError });
        log.warn({ err: err.toJSON() }, 'migration failed: the storage mirrors could not take their last delta');
        return { ...base, status: 'failed', error: err.toJSON(), transferredBytes: ram?.transferred ?? 0 };
      }
      if (status === 'cancelled') {
        log.info('migration cancelled');
        return { ...base, status: 'cancelled', transferredBytes: ram?.transferred ?? 0 };
      }
      // Storage copy, stop-and-copy: QEMU paused the source before the switchover (the
      // pause-before-switchover capability); the mirrors take their last delta now, then the
      // switchover goes on. If they cannot, the migration is cancelled and the source resumes.
      if (status === 'pre-switchover' && !switchedOver) {
        switchedOver = true;
        const m = rec.mirror;
        if (m) {
          const err = await this.syncMirrors(rec, log);
          if (err) {
            m.syncError = err;
            await qmp.execute('migrate_cancel').catch((e: unknown) => log.warn({ err: String(e) }, 'migrate_cancel refused'));
            continue;
          }
        }
        // A cancel that came during the sync has already moved QEMU on: then this is refused
        // and the next poll reports 'cancelled'.
        await qmp.execute('migrate-continue', { state: 'pre-switchover' }).catch((e: unknown) => log.warn({ err: String(e) }, 'migrate-continue refused'));
        continue;
      }
      // Post-copy as an option: switch once the first full pass has gone (the remaining
      // pages are then fetched on demand by the destination). From here a failure loses the VM
      // at both ends, which is why it is off unless asked for.
      if (params.postcopy && !postcopyStarted && status === 'active' && (ram?.['dirty-sync-count'] ?? 0) >= (this.opts.postcopyAfterPass ?? 2)) {
        postcopyStarted = true;
        log.info('switching to post-copy');
        await qmp.execute('migrate-start-postcopy').catch((e: unknown) => log.warn({ err: String(e) }, 'migrate-start-postcopy refused'));
      }
      await new Promise<void>((resolve) => {
        const t = setTimeout(done, this.opts.pollMs ?? 200);
        function done() {
          clearTimeout(t);
          resolve();
        }
        rec.wake = done;
      });
    }
  }

  // ---- storage copy (source side) ----------------------------------------------------------

  /** Bulk copy and deltas: one `drive-mirror` (sync full) per disk into the destination's NBD
   *  export; each job's dirty bitmap records the blocks the guest writes after they were copied,
   *  and the job copies them again until it is in sync (BLOCK_JOB_READY). Resolves undefined when
   *  every job is READY (they keep mirroring new writes), or the result of a failure or cancel. */
  private async mirrorDisks(rec: VmRecord, params: MigrationParams, storage: NonNullable<MigrationParams['storage']>, onProgress: (p: MigrationProgress) => void, log: Logger): Promise<MigrationResult | undefined> {
    const base = { migrationId: params.migrationId, vmId: rec.spec.vmId };
    const m: MirrorState = { jobs: new Map(), ends: new Map(), offsets: new Map(), cancel: false, ramStarted: false };
    rec.mirror = m;
    const failed = (details: Record<string, unknown>, cause?: unknown): MigrationResult => {
      const err = qemuError('VMTC_QEMU_MIGRATION_FAILED', { vmId: rec.spec.vmId, phase: 'storage', ...details }, cause ? { cause } : {});
      log.warn({ err: err.toJSON() }, 'storage mirror failed');
      return { ...base, status: 'failed', error: err.toJSON() };
    };
    const h = storage.nbd.host.includes(':') ? `[${storage.nbd.host}]` : storage.nbd.host;
    const t0 = Date.now();
    try {
      const qmp = this.qmpOf(rec);
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
        const secs = (Date.now() - t0) / 1000;
        if (secs > 0) p.throughputMbps = (done * 8) / 1e6 / secs;
        rec.lastMigration = p;
        try {
          onProgress(p);
        } catch (e) {
          log.warn({ err: String(e) }, 'progress listener threw');
        }
        if (jobs.every((j) => j.ready)) {
          log.info({ bytes: done, ms: Date.now() - t0 }, 'storage mirrors READY: disks in sync, deltas keep flowing');
          return undefined;
        }
        await new Promise<void>((resolve) => {
          const t = setTimeout(done2, this.opts.pollMs ?? 200);
          function done2() {
            clearTimeout(t);
            resolve();
          }
          rec.wake = done2;
        });
      }
    } catch (e) {
      return failed({ desc: e instanceof VmtcError ? e.message : String(e) }, e);
    }
  }

  /** Stop-and-copy (source paused): `block-job-cancel` on a READY mirror copies what is still
   *  dirty and completes without pivot (BLOCK_JOB_COMPLETED): the destination then holds a
   *  point-in-time copy. Returns why it failed, or undefined. */
  private async syncMirrors(rec: VmRecord, log: Logger): Promise<Record<string, unknown> | undefined> {
    const m = rec.mirror!;
    const qmp = this.qmpOf(rec);
    const t0 = Date.now();
    try {
      for (const job of m.jobs.keys()) {
        if (m.ends.has(job)) return { job, desc: m.ends.get(job)!.error ?? 'the mirror job ended early' };
        await qmp.execute('block-job-cancel', { device: job });
      }
      const deadline = Date.now() + 120_000;
      for (;;) {
        const live = new Set((await qmp.execute<QueryBlockJob[]>('query-block-jobs')).map((j) => j.device));
        const pending = [...m.jobs.keys()].filter((j) => !m.ends.has(j) && live.has(j));
        if (!pending.length) break;
        if (Date.now() > deadline) return { desc: 'the mirrors did not finish their last delta in time', jobs: pending };
        await sleep(10);
      }
      for (const job of m.jobs.keys()) {
        const end = m.ends.get(job);
        if (!end || end.event !== 'BLOCK_JOB_COMPLETED' || end.error) return { job, desc: end?.error ?? `the mirror ended with ${end?.event ?? 'no event'}, not in sync` };
      }
      log.info({ ms: Date.now() - t0, bytes: mirrorBytes(m) }, 'storage mirrors took their last delta and ended (no pivot)');
      return undefined;
    } catch (e) {
      return { desc: e instanceof VmtcError ? e.message : String(e) };
    }
  }

  /** Failure or cancel: end every mirror still running without waiting for sync (force). */
  private async abortMirrors(rec: VmRecord, log: Logger): Promise<void> {
    const m = rec.mirror;
    if (!m || !rec.qmp || rec.qmp.closed) return;
    const qmp = rec.qmp;
    const deadline = Date.now() + 30_000;
    for (;;) {
      const live = (await qmp.execute<QueryBlockJob[]>('query-block-jobs')).filter((j) => m.jobs.has(j.device));
      if (!live.length) return;
      if (Date.now() > deadline) throw qemuError('VMTC_QMP_TIMEOUT', { vmId: rec.spec.vmId, command: 'block-job-cancel', jobs: live.map((j) => j.device) });
      for (const j of live) await qmp.execute('block-job-cancel', { device: j.device, force: true }).catch((e: unknown) => log.debug({ err: String(e), job: j.device }, 'block-job-cancel refused'));
      await sleep(50);
    }
  }

  async cancelMigration(vmId: string): Promise<void> {
    await this.ready;
    const rec = this.get(vmId);
    const qmp = this.qmpOf(rec);
    const m = rec.mirror;
    if (m && !m.ramStarted) {
      // Still mirroring disks (no RAM migration yet): migrate() ends the jobs and keeps the
      // source running; wait until it has.
      m.cancel = true;
      rec.wake?.();
      const deadline = Date.now() + 60_000;
      while (rec.migrating && Date.now() < deadline) await this.waitStateChange(rec, 50);
      if (rec.migrating) throw qemuError('VMTC_QMP_TIMEOUT', { vmId, command: 'block-job-cancel' });
      rec.log.info('migration cancelled during the storage mirror; source running');
      return;
    }
    let q = await qmp.execute<QueryMigrate>('query-migrate');
    if (q.status === 'completed') throw qemuError('VMTC_QEMU_CANCEL_TOO_LATE', { vmId });
    if (q.status && ACTIVE_MIGRATION.has(q.status)) {
      await qmp.execute('migrate_cancel');
      const deadline = Date.now() + 30_000;
      for (;;) {
        q = await qmp.execute<QueryMigrate>('query-migrate');
        if (!q.status || !ACTIVE_MIGRATION.has(q.status)) break;
        if (Date.now() > deadline) throw qemuError('VMTC_QMP_TIMEOUT', { vmId, command: 'migrate_cancel', status: q.status });
        await sleep(50);
      }
      if (q.status === 'completed') throw qemuError('VMTC_QEMU_CANCEL_TOO_LATE', { vmId });
    }
    await this.ensureRunning(rec);
    rec.log.info({ status: q.status }, 'migration cancelled; source running');
  }

  // ---- internals ---------------------------------------------------------------------------

  private get(vmId: string): VmRecord {
    const r = this.vms.get(vmId);
    if (!r) throw qemuError('VMTC_QEMU_VM_NOT_FOUND', { vmId });
    return r;
  }

  private qmpOf(rec: VmRecord): QmpClient {
    if (!rec.qmp || rec.qmp.closed) throw qemuError('VMTC_QEMU_VM_CRASHED', { vmId: rec.spec.vmId, state: rec.state });
    return rec.qmp;
  }

  private info(r: VmRecord): VmInfo {
    const i: VmInfo = { vmId: r.spec.vmId, project: r.spec.project, state: r.state, vcpus: r.spec.vcpus, memoryMb: r.spec.memoryMb, diskGb: r.spec.diskGb, spec: r.spec };
    if (r.migrationId !== undefined) i.migrationId = r.migrationId;
    if (r.resumedAt !== undefined) i.resumedAt = r.resumedAt;
    if (r.pausedAt !== undefined) i.pausedAt = r.pausedAt;
    return i;
  }

  private notify(): void {
    for (const l of this.listeners) {
      try {
        l();
      } catch (e) {
        this.log.warn({ err: String(e) }, 'onChange listener threw');
      }
    }
  }

  private setState(rec: VmRecord, s: VmState): void {
    if (rec.state === s) return;
    rec.log.info({ from: rec.state, to: s }, 'vm state');
    rec.state = s;
    for (const w of rec.stateWaiters) w();
    this.notify();
  }

  private waitStateChange(rec: VmRecord, ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(t);
        rec.stateWaiters.delete(done);
        resolve();
      };
      const t = setTimeout(done, ms);
      rec.stateWaiters.add(done);
    });
  }

  private pathsFor(vmId: string, serialPorts: number): VmPaths {
    return qemuVmPaths(this.opts.dataDir, vmId, serialPorts);
  }

  /** Tap names must be unique on the host (≤ 15 chars): derived from dataDir + vmId. */
  private tapNames(vmId: string, n: number): string[] {
    const h = createHash('sha256').update(`${this.opts.dataDir}\0${vmId}`).digest('hex').slice(0, 10);
    return Array.from({ length: n }, (_, i) => `vt${h}${i.toString(36)}`);
  }

  private ip(args: string[]): Promise<{ code: number | null; stderr: string }> {
    const argv = this.opts.netns ? ['ip', '-n', this.opts.netns, ...args] : ['ip', ...args];
    return runProc(argv);
  }

  private async createTaps(rec: VmRecord): Promise<void> {
    for (const [i, tap] of rec.taps.entries()) {
      const bridge = rec.spec.nics![i]!.bridge;
      await this.ip(['link', 'del', tap]); // a leftover from a crash would make `add` fail
      for (const args of [['tuntap', 'add', 'dev', tap, 'mode', 'tap'], ['link', 'set', tap, 'master', bridge, 'up']]) {
        const r = await this.ip(args);
        if (r.code !== 0) {
          await this.removeTaps(rec);
          throw qemuError('VMTC_QEMU_TAP_FAILED', { vmId: rec.spec.vmId, tap, bridge, netns: this.opts.netns ?? null, argv: args.join(' '), stderr: r.stderr.trim().slice(0, 500) });
        }
      }
    }
  }

  private async removeTaps(rec: VmRecord): Promise<void> {
    for (const tap of rec.taps) await this.ip(['link', 'del', tap]);
  }

  private async persist(rec: VmRecord): Promise<void> {
    const f: VmFile = { spec: rec.spec, taps: rec.taps, paths: rec.paths, role: rec.role };
    if (rec.migrationId !== undefined) f.migrationId = rec.migrationId;
    if (rec.stopped) f.stopped = true;
    if (rec.incomingStorage) f.incomingStorage = rec.incomingStorage;
    if (this.opts.netns) f.netns = this.opts.netns;
    const tmp = join(rec.paths.dir, 'vm.json.tmp');
    await writeFile(tmp, JSON.stringify(f, null, 2) + '\n');
    await rename(tmp, join(rec.paths.dir, 'vm.json'));
  }

  private machine(alias: string): Promise<string> {
    let p = this.machineCache.get(alias);
    if (!p) {
      p = resolveMachine(this.binary, alias).catch(() => alias);
      this.machineCache.set(alias, p);
    }
    return p;
  }

  private async launch(specIn: VmSpec, role: 'normal' | 'incoming', migrationId?: string, lo: { startPaused?: boolean } = {}): Promise<VmRecord> {
    if (this.closed) throw qemuError('VMTC_QEMU_BAD_STATE', { reason: 'driver closed' });
    validateSpec(specIn);
    const vmId = specIn.vmId;
    const old = this.vms.get(vmId);
    if (old) {
      if (old.state !== 'stopped' && old.state !== 'crashed') throw qemuError('VMTC_QEMU_VM_EXISTS', { vmId, state: old.state });
      await this.destroy(vmId);
    }
    // Record the concrete machine type in the spec, so the destination builds the same one.
    const x = extraOf(specIn);
    const machine = await this.machine(x.machine ?? 'pc');
    const spec: VmSpec = { ...specIn, extra: { ...(specIn.extra ?? {}), machine } };
    const paths = this.pathsFor(vmId, spec.serialPorts ?? 0);
    const rec: VmRecord = {
      spec, paths, role, taps: this.tapNames(vmId, spec.nics?.length ?? 0),
      state: role === 'incoming' ? 'incoming' : 'paused',
      migrating: false, quitting: false, stateWaiters: new Set(),
      log: this.log.child({ vmId, ...(migrationId ? { migrationId } : {}) }),
    };
    if (migrationId !== undefined) rec.migrationId = migrationId;
    await rm(paths.dir, { recursive: true, force: true });
    await mkdir(paths.dir, { recursive: true });
    await mkdir(join(paths.qmp, '..'), { recursive: true });
    for (const s of [paths.qmp, ...paths.serial]) await rm(s, { force: true });
    await this.createTaps(rec);
    this.vms.set(vmId, rec);
    try {
      await this.persist(rec);
      const args = buildQemuArgs({ spec, paths, taps: rec.taps, accel: this.accel, machine, incoming: role === 'incoming', startPaused: !!lo.startPaused });
      const argv = this.opts.netns ? ['ip', 'netns', 'exec', this.opts.netns, this.binary, ...args] : [this.binary, ...args];
      rec.log.info({ argv: argv.join(' ') }, role === 'incoming' ? 'starting QEMU for an incoming migration' : 'starting QEMU');
      // With -daemonize the first process exits once QEMU is initialised (sockets listening);
      // a non-zero exit carries the reason on stderr.
      const r = await runProc(argv, 60_000);
      if (r.code !== 0) throw qemuError('VMTC_QEMU_START_FAILED', { vmId, exitCode: r.code, stderr: r.stderr.trim().slice(0, 1000) });
      rec.pid = Number((await readFile(paths.pidfile, 'utf8')).trim());
      await this.connect(rec);
      await this.recordDiskSizes(rec);
      await this.refresh(rec);
      this.notify();
      return rec;
    } catch (e) {
      if (rec.pid) await killPid(rec.pid);
      rec.qmp?.close();
      this.vms.delete(vmId);
      await this.removeTaps(rec);
      await rm(paths.dir, { recursive: true, force: true });
      for (const s of [paths.qmp, ...paths.serial]) await rm(s, { force: true });
      throw e;
    }
  }

  /** Disk copies of a storage-copy destination live here (deleted by destroy()). */
  private diskDir(vmId: string): string {
    return join(this.opts.dataDir, 'disks', vmId);
  }

  /** Record each disk's virtual size in spec.extra.diskBytes (as QEMU opened it), so the spec a
   *  destination gets says how big its copies must be. */
  private async recordDiskSizes(rec: VmRecord): Promise<void> {
    const disks = rec.spec.disks ?? [];
    if (!disks.length) return;
    const blocks = await this.qmpOf(rec).execute<QueryBlock[]>('query-block');
    const diskBytes = disks.map((_, n) => blocks.find((b) => b.device === `disk${n}`)?.inserted?.image?.['virtual-size'] ?? 0);
    rec.spec = { ...rec.spec, extra: { ...(rec.spec.extra ?? {}), diskBytes } };
    await this.persist(rec);
  }

  /** Storage-copy destination, step 1: empty images of the source's format and virtual size
   *  (`qemu-img create`), in this driver's own directory; the returned spec names them.
   *  Read-only disks are not copied: like libvirt, they are assumed present at the same path. */
  private async createDiskCopies(spec: VmSpec, migrationId: string): Promise<{ spec: VmSpec; created: string[] }> {
    const sizes = extraOf(spec).diskBytes ?? [];
    const dir = this.diskDir(spec.vmId);
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
        const r = await runProc(['qemu-img', 'create', '-q', '-f', d.format, path, String(size)], 60_000);
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

  /** Storage-copy destination, step 2: NBD server on the listen host (the lightpath address),
   *  port picked by the kernel and read back from /proc, one writable export per copied disk
   *  (`block-export-add`; QEMU activates the incoming image for it). */
  private async exportDisks(rec: VmRecord, listenHost: string, suspend: boolean): Promise<NonNullable<MigrationParams['storage']>> {
    const qmp = this.qmpOf(rec);
    const before = new Set(await listeningPorts(rec.pid!));
    await qmp.execute('nbd-server-start', { addr: { type: 'inet', data: { host: listenHost, port: '0' } } });
    const fresh = (await listeningPorts(rec.pid!)).filter((p) => !before.has(p));
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
    await this.persist(rec);
    rec.log.info({ listenHost, port: fresh[0], exports: exports.map((e) => e.name) }, 'disk copies exported over NBD for the storage mirror');
    return { nbd: { host: listenHost, port: fresh[0]! }, exports };
  }

  /** Storage-copy destination, last step (libvirt's Finish phase): once the incoming migration
   *  has landed (the source ended its mirrors before the switchover), close the NBD server so
   *  nothing else can write to the disks, then start the guest. Idempotent. */
  private finishIncoming(rec: VmRecord): Promise<void> {
    rec.finishing ??= (async () => {
      if (!rec.incomingStorage) return;
      const qmp = this.qmpOf(rec);
      const q = await qmp.execute<QueryMigrate>('query-migrate');
      if (q.status !== 'completed') return;
      await qmp.execute('nbd-server-stop').catch((e: unknown) => rec.log.warn({ err: String(e) }, 'nbd-server-stop refused'));
      const { suspend } = rec.incomingStorage;
      rec.incomingStorage = undefined;
      await this.persist(rec);
      if (!suspend) await qmp.execute('cont');
      rec.log.info({ started: !suspend }, 'storage copy landed; NBD server stopped');
      await this.refresh(rec);
    })().finally(() => {
      rec.finishing = undefined;
    });
    return rec.finishing;
  }

  private async connect(rec: VmRecord): Promise<void> {
    const qmp = await QmpClient.connect(rec.paths.qmp, { logger: rec.log, connectTimeoutMs: 10_000 });
    rec.qmp = qmp;
    qmp.on('event', (ev) => this.onEvent(rec, ev));
    qmp.on('close', () => void this.onQmpClose(rec, qmp));
  }

  private onEvent(rec: VmRecord, ev: QmpEvent): void {
    rec.log.debug({ event: ev.event, data: ev.data }, 'qmp event');
    switch (ev.event) {
      case 'MIGRATION':
        if (rec.incomingStorage && ev.data?.status === 'completed') {
          void this.finishIncoming(rec).catch((e: unknown) => rec.log.warn({ err: String(e) }, 'finishing the storage-copy destination failed'));
        }
        rec.wake?.();
        break;
      case 'MIGRATION_PASS':
        rec.wake?.();
        break;
      case 'BLOCK_JOB_COMPLETED':
      case 'BLOCK_JOB_CANCELLED': {
        const job = String(ev.data?.device ?? '');
        const m = rec.mirror;
        if (m?.jobs.has(job)) {
          const end: { event: string; error?: string; offset?: number } = { event: ev.event };
          if (typeof ev.data?.error === 'string') end.error = ev.data.error;
          if (typeof ev.data?.offset === 'number') end.offset = ev.data.offset;
          m.ends.set(job, end);
        }
        rec.wake?.();
        return;
      }
      case 'BLOCK_JOB_READY':
      case 'BLOCK_JOB_ERROR':
        rec.wake?.();
        return;
      case 'STOP':
      case 'RESUME': {
        const at = ev.timestamp ? ev.timestamp.seconds * 1000 + ev.timestamp.microseconds / 1000 : Date.now();
        if (ev.event === 'STOP') rec.pausedAt = at;
        else rec.resumedAt = at;
        break;
      }
      case 'SHUTDOWN':
        // QEMU exits after this (no -no-shutdown); the socket close finishes the job.
        rec.quitting = true;
        return;
      default:
        return;
    }
    void this.refresh(rec).catch(() => undefined);
  }

  private async onQmpClose(rec: VmRecord, qmp: QmpClient): Promise<void> {
    if (rec.qmp !== qmp || this.closed) return;
    rec.wake?.();
    // The socket closes when QEMU exits; make sure it is really gone before saying so.
    const deadline = Date.now() + 2000;
    while (rec.pid && pidAlive(rec.pid, rec.paths.qmp) && Date.now() < deadline) await sleep(20);
    if (rec.pid && pidAlive(rec.pid, rec.paths.qmp)) {
      rec.log.warn('QMP closed but QEMU still runs; reconnecting');
      await this.connect(rec).then(() => this.refresh(rec)).catch((e: unknown) => rec.log.error({ err: String(e) }, 'QMP reconnect failed'));
      return;
    }
    if (rec.quitting) {
      this.setState(rec, 'stopped');
    } else {
      rec.log.error({ pid: rec.pid }, 'QEMU exited unexpectedly');
      this.setState(rec, 'crashed');
    }
  }

  private async refresh(rec: VmRecord): Promise<void> {
    const qmp = rec.qmp;
    if (!qmp || qmp.closed) return;
    const st = await qmp.execute<{ status: string }>('query-status');
    let migrating = rec.migrating;
    if (!migrating && st.status === 'running' && rec.role === 'normal') {
      // A migration started by a previous agent process may still be running.
      const q = await qmp.execute<QueryMigrate>('query-migrate');
      migrating = !!q.status && ACTIVE_MIGRATION.has(q.status);
    }
    if (qmp.closed) return;
    this.setState(rec, mapRunState(st.status, { migrating, incoming: rec.role === 'incoming' }));
  }

  private async ensureRunning(rec: VmRecord): Promise<void> {
    const qmp = this.qmpOf(rec);
    const st = await qmp.execute<{ status: string }>('query-status');
    if (st.status !== 'running') {
      rec.log.info({ status: st.status }, 'resuming the source');
      await qmp.execute('cont');
    }
    await this.refresh(rec);
  }

  /** Power off through QMP `quit`, then make sure the process is gone (SIGKILL as last resort). */
  private async quit(rec: VmRecord): Promise<void> {
    rec.quitting = true;
    if (rec.qmp && !rec.qmp.closed) await rec.qmp.execute('quit', undefined, { timeoutMs: 5000 }).catch(() => undefined);
    if (rec.pid) {
      const deadline = Date.now() + 10_000;
      while (pidAlive(rec.pid, rec.paths.qmp) && Date.now() < deadline) await sleep(25);
      if (pidAlive(rec.pid, rec.paths.qmp)) await killPid(rec.pid);
    }
    rec.qmp?.close();
  }

  /** Find the VMs a previous agent process left (vm.json + pidfile) and re-attach to them. */
  private async reattachAll(): Promise<void> {
    const root = join(this.opts.dataDir, 'vms');
    if (!existsSync(root)) return;
    for (const vmId of await readdir(root)) {
      let f: VmFile;
      try {
        f = JSON.parse(await readFile(join(root, vmId, 'vm.json'), 'utf8')) as VmFile;
      } catch {
        continue; // a half-created directory: nothing was started from it
      }
      const rec: VmRecord = { ...f, state: 'crashed', migrating: false, quitting: false, stateWaiters: new Set(), log: this.log.child({ vmId }) };
      const pid = Number(await readFile(f.paths.pidfile, 'utf8').catch(() => ''));
      if (pid > 0) rec.pid = pid;
      this.vms.set(vmId, rec);
      if (rec.pid && pidAlive(rec.pid, f.paths.qmp)) {
        try {
          await this.connect(rec);
          await this.refresh(rec);
          rec.log.info({ pid, state: rec.state }, 're-attached to a running QEMU');
        } catch (e) {
          rec.log.error({ err: String(e), pid }, 'QEMU runs but its QMP socket does not answer');
        }
      } else {
        rec.state = f.stopped ? 'stopped' : 'crashed';
        rec.log.warn({ state: rec.state }, 'VM found on disk without a running QEMU');
      }
    }
  }
}

// ---- process helpers ---------------------------------------------------------------------

function runProc(argv: string[], timeoutMs = 30_000): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve) => {
    const c = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    const t = setTimeout(() => c.kill('SIGKILL'), timeoutMs);
    c.stderr!.on('data', (d: Buffer) => {
      if (stderr.length < 8192) stderr += d.toString();
    });
    c.on('error', (e) => {
      clearTimeout(t);
      resolve({ code: -1, stderr: e.message });
    });
    // 'exit', not 'close': a daemonized QEMU may hold the stderr pipe a little longer.
    c.on('exit', (code) => {
      clearTimeout(t);
      resolve({ code, stderr });
    });
  });
}

/** True if `pid` is a live (non-zombie) process whose command line mentions `marker`: a pid
 *  from an old pidfile may have been reused by something else. */
export function pidAlive(pid: number, marker: string): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    if (state === 'Z' || state === 'X') return false;
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(marker);
  } catch {
    return false;
  }
}

async function killPid(pid: number): Promise<void> {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    return;
  }
  for (let i = 0; i < 100; i++) {
    try {
        const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      if (/\) [ZX] /.test(stat)) return;
    } catch {
      return;
    }
    await sleep(20);
  }
}

async function hostCpuFlags(): Promise<string[]> {
  const info = await readFile('/proc/cpuinfo', 'utf8').catch(() => '');
  return (/^flags\s*:\s*(.*)$/m.exec(info)?.[1] ?? '').split(/\s+/).filter(Boolean).sort();
}

/** Host-side paths of a VM under a QEMU driver's data dir (also for the lab's probes, which read
 * the serial heartbeat and console of a VM run by an agent in another process). */
export function qemuVmPaths(dataDir: string, vmId: string, serialPorts: number): VmPaths {
  const dir = join(dataDir, 'vms', vmId);
  // Unix socket paths are limited to 108 bytes; a long dataDir gets its sockets in a short,
  // deterministic directory (so a restarted agent computes the same one).
  const longest = join(dir, 'serial3.sock');
  const sockDir = longest.length <= 100 ? dir : join(tmpdir(), `vmtc-q-${createHash('sha256').update(dir).digest('hex').slice(0, 12)}`);
  const serial: string[] = [];
  for (let n = 1; n <= serialPorts; n++) serial.push(join(sockDir, `serial${n}.sock`));
  return { dir, pidfile: join(dir, 'qemu.pid'), console: join(dir, 'console.log'), qmp: join(sockDir, 'qmp.sock'), serial };
}

/** TCP ports `pid` listens on, from /proc (its own network namespace's view): how the driver
 *  learns the port the kernel gave QEMU's NBD server (QEMU 7.2 has no query for it). */
export async function listeningPorts(pid: number): Promise<number[]> {
  const inodes = new Set<string>();
  for (const fd of await readdir(`/proc/${pid}/fd`).catch(() => [] as string[])) {
    const l = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '');
    const m = /^socket:\[(\d+)\]$/.exec(l);
    if (m) inodes.add(m[1]!);
  }
  const ports: number[] = [];
  for (const f of ['tcp', 'tcp6']) {
    const text = await readFile(`/proc/${pid}/net/${f}`, 'utf8').catch(() => '');
    for (const line of text.split('\n').slice(1)) {
      const c = line.trim().split(/\s+/);
      // sl local_address rem_address st ... inode (field 9); st 0A = LISTEN
      if (c.length > 9 && c[3] === '0A' && inodes.has(c[9]!)) ports.push(parseInt(c[1]!.split(':').pop()!, 16));
    }
  }
  return [...new Set(ports)];
}

/** The source's storage params must name every disk the destination cannot reach (all but the
 *  read-only ones), each once: a disk left out would be empty at the destination. */
function checkStorage(spec: VmSpec, storage: NonNullable<MigrationParams['storage']>): void {
  const bad = (reason: string) => qemuError('VMTC_QEMU_BAD_SPEC', { field: 'params.storage', reason });
  if (!storage || typeof storage !== 'object' || !storage.nbd || !Array.isArray(storage.exports)) throw bad('{ nbd: { host, port }, exports: [{ device, name }] }');
  if (typeof storage.nbd.host !== 'string' || !/^[0-9A-Za-z.:_-]{1,253}$/.test(storage.nbd.host)) throw bad('nbd.host: an address or host name');
  if (!(Number.isInteger(storage.nbd.port) && storage.nbd.port > 0 && storage.nbd.port <= 65535)) throw bad('nbd.port: 1..65535');
  const want = (spec.disks ?? []).flatMap((d, n) => (d.readonly ? [] : [`disk${n}`])).sort();
  const got = storage.exports.map((e) => e?.device).sort();
  if (JSON.stringify(want) !== JSON.stringify(got)) throw bad(`exports must name each writable disk once: ${want.join(',') || '(none)'}`);
  for (const e of storage.exports) if (typeof e.name !== 'string' || !/^[A-Za-z0-9_.-]{1,64}$/.test(e.name)) throw bad('exports[].name: letters, digits, _ . -');
}

/** Disk bytes the mirrors processed (their final offsets, or the last seen ones). */
function mirrorBytes(m: MirrorState): number {
  let n = 0;
  for (const job of m.jobs.keys()) n += m.ends.get(job)?.offset ?? m.offsets.get(job) ?? 0;
  return n;
}
