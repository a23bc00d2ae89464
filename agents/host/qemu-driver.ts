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
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, readFile, readdir, rm, statfs, writeFile, rename } from 'node:fs/promises';
import { cpus, totalmem, tmpdir } from 'node:os';
import { join } from 'node:path';
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
}

interface VmRecord extends VmFile {
  state: VmState;
  pid?: number;
  qmp?: QmpClient;
  /** True while migrate() runs for this VM (source side). */
  migrating: boolean;
  quitting: boolean;
  lastMigration?: MigrationProgress | MigrationResult;
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

  async prepareIncoming(spec: VmSpec, migrationId: string, listenHost: string, port?: number): Promise<{ uri: string }> {
    await this.ready;
    const rec = await this.launch(spec, 'incoming', migrationId);
    try {
      const qmp = this.qmpOf(rec);
      const m = extraOf(spec).migration ?? {};
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
      // Listening on the lightpath address only (issue 4); port 0 lets QEMU pick a free one.
      const hostPart = listenHost.includes(':') ? `[${listenHost}]` : listenHost;
      await qmp.execute('migrate-incoming', { uri: `tcp:${hostPart}:${port ?? 0}` });
      const q = await qmp.execute<QueryMigrate>('query-migrate');
      const actual = port ?? Number(q['socket-address']?.[0]?.port);
      if (!actual) throw qemuError('VMTC_QEMU_START_FAILED', { vmId: spec.vmId, reason: 'QEMU did not report the incoming port', reply: q });
      rec.log.info({ listenHost, port: actual }, 'incoming migration listener ready');
      return { uri: `tcp:${hostPart}:${actual}` };
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
        log.info({ uri, params }, 'migration starting');
        await qmp.execute('migrate', { uri });
      } catch (e) {
        result = await fail(e, { step: 'setup' });
        return result;
      }
      result = await this.followMigration(rec, params, onProgress, log).catch((e: unknown) => fail(e, { step: 'follow' }));
      return result;
    } finally {
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
      if (status === 'cancelled') {
        log.info('migration cancelled');
        return { ...base, status: 'cancelled', transferredBytes: ram?.transferred ?? 0 };
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

  async cancelMigration(vmId: string): Promise<void> {
    await this.ready;
    const rec = this.get(vmId);
    const qmp = this.qmpOf(rec);
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

  private async launch(specIn: VmSpec, role: 'normal' | 'incoming', migrationId?: string): Promise<VmRecord> {
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
      const args = buildQemuArgs({ spec, paths, taps: rec.taps, accel: this.accel, machine, incoming: role === 'incoming' });
      const argv = this.opts.netns ? ['ip', 'netns', 'exec', this.opts.netns, this.binary, ...args] : [this.binary, ...args];
      rec.log.info({ argv: argv.join(' ') }, role === 'incoming' ? 'starting QEMU for an incoming migration' : 'starting QEMU');
      // With -daemonize the first process exits once QEMU is initialised (sockets listening);
      // a non-zero exit carries the reason on stderr.
      const r = await runProc(argv, 60_000);
      if (r.code !== 0) throw qemuError('VMTC_QEMU_START_FAILED', { vmId, exitCode: r.code, stderr: r.stderr.trim().slice(0, 1000) });
      rec.pid = Number((await readFile(paths.pidfile, 'utf8')).trim());
      await this.connect(rec);
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
      case 'MIGRATION_PASS':
        rec.wake?.();
        break;
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
