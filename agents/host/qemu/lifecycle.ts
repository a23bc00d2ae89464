// The QEMU driver's VMs and their life cycle: one QEMU process per VM, daemonized, with a pidfile
// and a QMP unix socket under `<dataDir>/vms/<vmId>/`, and a vm.json there, so a restarted agent
// finds its running VMs again and re-attaches. The VM's state follows QEMU's run state (asked
// with query-status) and QEMU's events over QMP. The source and destination sides of a migration
// (source.ts, destination.ts, storage.ts) work on the records kept here.
import { existsSync } from 'node:fs';
import { mkdir, readFile, readdir, rename, rm, rmdir, writeFile } from 'node:fs/promises';
import { join, sep } from 'node:path';
import type { VmInfo, VmSpec, VmState } from '../../../src/common/agent-protocol.ts';
import { clockSleep, keepAliveClock, type Clock } from '../../../src/common/clock.ts';
import type { Logger } from '../../../src/common/log.ts';
import { buildQemuArgs, extraOf, mapRunState, qemuVmPaths, validateSpec, type Accel } from './cmdline.ts';
import { qemuError } from './errors.ts';
import { applyEvent } from './events.ts';
import { resolveMachine } from './facts.ts';
import { createTaps, prepareTapsUp, removeTaps, setTapsUp, systemQemu, tapNames } from './proc.ts';
import type { QmpEvent } from './qmp.ts';
import { ACTIVE_MIGRATION, QEMU_DEFAULTS, type QemuDriverOptions, type QemuSystem, type QmpLink, type QueryBlock, type QueryMigrate, type TapsGoingUp, type VmFile, type VmRecord } from './types.ts';

export class QemuVms {
  readonly vms = new Map<string, VmRecord>();
  readonly accel: Accel;
  readonly binary: string;
  readonly log: Logger;
  readonly clock: Clock;
  readonly system: QemuSystem;
  closed = false;
  /** A storage-copy destination's incoming migration completed (its MIGRATION event): the
   *  driver wires this to storage.ts's finishIncoming. */
  onIncomingLanded: (rec: VmRecord) => void = () => undefined;
  /** The VM stopped while it migrates out, and it runs again: the driver wires these to the
   *  replicas' follows (agents/host/disks/qemu-follow.ts cutFollows). Called synchronously from
   *  the event, before anything else is asked of QEMU. */
  onStoppedMigrating: (rec: VmRecord) => void = () => undefined;
  onResumed: (rec: VmRecord) => void = () => undefined;
  private readonly listeners = new Set<() => void>();
  private readonly machineCache = new Map<string, Promise<string>>();

  constructor(readonly opts: QemuDriverOptions) {
    this.accel = opts.accel ?? QEMU_DEFAULTS.accel;
    this.binary = opts.qemuBinary ?? QEMU_DEFAULTS.qemuBinary;
    this.log = opts.logger.child({ component: 'qemu' });
    this.clock = opts.clock ?? keepAliveClock;
    this.system = opts.system ?? systemQemu(this.clock);
  }

  get(vmId: string): VmRecord {
    const r = this.vms.get(vmId);
    if (!r) throw qemuError('VMTC_QEMU_VM_NOT_FOUND', { vmId });
    return r;
  }

  qmpOf(rec: VmRecord): QmpLink {
    if (!rec.qmp || rec.qmp.closed) throw qemuError('VMTC_QEMU_VM_CRASHED', { vmId: rec.spec.vmId, state: rec.state });
    return rec.qmp;
  }

  info(r: VmRecord): VmInfo {
    const i: VmInfo = { vmId: r.spec.vmId, project: r.spec.project, state: r.state, vcpus: r.spec.vcpus, memoryMb: r.spec.memoryMb, diskGb: r.spec.diskGb, spec: r.spec };
    if (r.migrationId !== undefined) i.migrationId = r.migrationId;
    if (r.resumedAt !== undefined) i.resumedAt = r.resumedAt;
    if (r.pausedAt !== undefined) i.pausedAt = r.pausedAt;
    return i;
  }

  onChange(listener: () => void): void {
    this.listeners.add(listener);
  }

  clearListeners(): void {
    this.listeners.clear();
  }

  notify(): void {
    for (const l of this.listeners) {
      try {
        l();
      } catch (e) {
        this.log.warn({ err: String(e) }, 'onChange listener threw');
      }
    }
  }

  setState(rec: VmRecord, s: VmState): void {
    if (rec.state === s) return;
    rec.log.info({ from: rec.state, to: s }, 'vm state');
    rec.state = s;
    if (s === 'running' && rec.tapsDown) void this.tapsUp(rec).catch(() => undefined);
    for (const w of rec.stateWaiters) w();
    this.notify();
  }

  /** Bring an incoming VM's taps up: at its RESUME event, before a `cont`, and whenever it is
   *  found running. Idempotent; a failure is logged and left for the next caller to retry.
   *  `links` resolves once the links are up (the bridge's fdb entries follow: setTapsUp), or
   *  as the whole fails. */
  tapsUp(rec: VmRecord): TapsGoingUp {
    if (!rec.tapsDown) return Object.assign(Promise.resolve(), { links: Promise.resolve() });
    if (!rec.tapsGoingUp) {
      let linksUp!: () => void;
      let linksFailed!: (e: unknown) => void;
      const links = new Promise<void>((res, rej) => { linksUp = res; linksFailed = rej; });
      links.catch(() => undefined);
      const all = setTapsUp(this.system, this.opts.netns, rec.spec.vmId, rec.taps, (rec.spec.nics ?? []).map((n) => n.mac), linksUp, rec.tapsReady).then(
        (refused) => {
          rec.tapsDown = false;
          rec.log.info({ taps: rec.taps }, 'taps up: the guest runs here');
          if (refused.length) rec.log.warn({ refused }, "the bridge did not take the VM's MAC behind its tap; it learns it from the VM's next frame");
        },
        (e: unknown) => {
          rec.log.error({ err: String(e) }, 'bringing the taps up failed');
          linksFailed(e); // (no effect once the links were up)
          throw e;
        },
      ).finally(() => {
        rec.tapsGoingUp = undefined;
      });
      rec.tapsGoingUp = Object.assign(all, { links });
    }
    return rec.tapsGoingUp;
  }

  /** Resolves at the VM's next state change, or after `ms`. */
  waitStateChange(rec: VmRecord, ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        timer.cancel();
        rec.stateWaiters.delete(done);
        resolve();
      };
      const timer = this.clock.setTimeout(done, ms);
      rec.stateWaiters.add(done);
    });
  }

  /** A poll loop's pause: `ms`, or less when a QMP event calls rec.wake. An event that came
   *  while the loop was not pausing (it was querying QEMU) is not lost: the next pause ends at
   *  once (a completed migration was otherwise seen a whole poll late). */
  pollWait(rec: VmRecord, ms: number = this.opts.pollMs ?? QEMU_DEFAULTS.pollMs): Promise<void> {
    if (rec.wakePending) {
      rec.wakePending = false;
      return Promise.resolve();
    }
    const wake = new AbortController();
    rec.wake = () => wake.abort();
    return clockSleep(this.clock, ms, wake.signal).finally(() => {
      rec.wakePending = false;
      rec.wake = () => { rec.wakePending = true; };
    });
  }

  /** Disk copies of a storage-copy destination live here (deleted by destroy()). */
  diskDir(vmId: string): string {
    return join(this.opts.dataDir, 'disks', vmId);
  }

  async persist(rec: VmRecord): Promise<void> {
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

  // ---- start, stop, destroy -----------------------------------------------------------------

  async launch(specIn: VmSpec, role: 'normal' | 'incoming', migrationId?: string, lo: { startPaused?: boolean; localDisks?: boolean } = {}): Promise<VmRecord> {
    if (this.closed) throw qemuError('VMTC_QEMU_BAD_STATE', { reason: 'driver closed' });
    validateSpec(specIn);
    const vmId = specIn.vmId;
    const old = this.vms.get(vmId);
    if (old) {
      if (old.state !== 'stopped' && old.state !== 'crashed') throw qemuError('VMTC_QEMU_VM_EXISTS', { vmId, state: old.state });
      await this.destroy(vmId);
    }
    // Record the concrete machine type in the spec, so the destination builds the same one.
    const machine = await this.machine(extraOf(specIn).machine ?? 'pc');
    const spec: VmSpec = { ...specIn, extra: { ...(specIn.extra ?? {}), machine } };
    const paths = qemuVmPaths(this.opts.dataDir, vmId, spec.serialPorts ?? 0);
    const rec: VmRecord = {
      spec, paths, role, taps: tapNames(this.opts.dataDir, vmId, spec.nics?.length ?? 0),
      state: role === 'incoming' ? 'incoming' : 'paused',
      migrating: false, quitting: false, stateWaiters: new Set(),
      log: this.log.child({ vmId, ...(migrationId ? { migrationId } : {}) }),
    };
    if (migrationId !== undefined) rec.migrationId = migrationId;
    await rm(paths.dir, { recursive: true, force: true });
    await mkdir(paths.dir, { recursive: true });
    await mkdir(join(paths.qmp, '..'), { recursive: true });
    for (const s of [paths.qmp, ...paths.serial]) await rm(s, { force: true });
    await createTaps(this.system, this.opts.netns, vmId, rec.taps, (spec.nics ?? []).map((n) => n.bridge), { up: role !== 'incoming' });
    if (role === 'incoming' && rec.taps.length) rec.tapsDown = true;
    this.vms.set(vmId, rec);
    try {
      await this.persist(rec);
      const args = buildQemuArgs({ spec, paths, taps: rec.taps, accel: this.accel, machine, incoming: role === 'incoming', startPaused: !!lo.startPaused, ...(lo.localDisks ? { localDisks: true } : {}) });
      const argv = this.opts.netns ? ['ip', 'netns', 'exec', this.opts.netns, this.binary, ...args] : [this.binary, ...args];
      rec.log.info({ argv: argv.join(' ') }, role === 'incoming' ? 'starting QEMU for an incoming migration' : 'starting QEMU');
      // With -daemonize the first process exits once QEMU is initialised (sockets listening);
      // a non-zero exit carries the reason on stderr.
      const r = await this.system.exec(argv, QEMU_DEFAULTS.startTimeoutMs);
      if (r.code !== 0) throw qemuError('VMTC_QEMU_START_FAILED', { vmId, exitCode: r.code, stderr: r.stderr.trim().slice(0, 1000) });
      rec.pid = Number((await readFile(paths.pidfile, 'utf8')).trim());
      await this.connect(rec);
      await this.recordDiskSizes(rec);
      await this.refresh(rec);
      this.notify();
      return rec;
    } catch (e) {
      if (rec.pid) await this.system.kill(rec.pid);
      rec.qmp?.close();
      this.vms.delete(vmId);
      await removeTaps(this.system, this.opts.netns, rec.taps);
      await rm(paths.dir, { recursive: true, force: true });
      for (const s of [paths.qmp, ...paths.serial]) await rm(s, { force: true });
      throw e;
    }
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

  async stop(vmId: string): Promise<void> {
    const rec = this.get(vmId);
    await this.quit(rec);
    rec.stopped = true;
    await this.persist(rec);
    this.setState(rec, 'stopped');
  }

  async destroy(vmId: string): Promise<void> {
    const rec = this.vms.get(vmId);
    if (!rec) throw qemuError('VMTC_QEMU_VM_NOT_FOUND', { vmId });
    await this.quit(rec);
    for (const c of rec.tapsReady?.values() ?? []) c.cancel();
    rec.tapsReady = undefined;
    await removeTaps(this.system, this.opts.netns, rec.taps);
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

  /** Power off through QMP `quit`, then make sure the process is gone (SIGKILL as last resort). */
  private async quit(rec: VmRecord): Promise<void> {
    rec.quitting = true;
    if (rec.qmp && !rec.qmp.closed) await rec.qmp.execute('quit', undefined, { timeoutMs: 5000 }).catch(() => undefined);
    if (rec.pid) {
      const deadline = this.clock.now() + QEMU_DEFAULTS.quitMs;
      while (this.system.pidAlive(rec.pid, rec.paths.qmp) && this.clock.now() < deadline) await clockSleep(this.clock, 25);
      if (this.system.pidAlive(rec.pid, rec.paths.qmp)) await this.system.kill(rec.pid);
    }
    rec.qmp?.close();
  }

  // ---- QMP: connection, events, run state ------------------------------------------------------

  private async connect(rec: VmRecord): Promise<void> {
    const qmp = await this.system.connectQmp(rec.paths.qmp, { logger: rec.log, connectTimeoutMs: QEMU_DEFAULTS.qmpConnectTimeoutMs, clock: this.clock });
    rec.qmp = qmp;
    qmp.on('event', (ev) => this.onEvent(rec, ev));
    qmp.on('close', () => void this.onQmpClose(rec, qmp));
  }

  private onEvent(rec: VmRecord, ev: QmpEvent): void {
    rec.log.debug({ event: ev.event, data: ev.data }, 'qmp event');
    const then = applyEvent(rec, ev, this.clock.now());
    if (then.stoppedMigrating) this.onStoppedMigrating(rec);
    if (then.resumed) this.onResumed(rec);
    // The guest runs: its taps come up now, not a query-status later.
    if (ev.event === 'RESUME' && rec.tapsDown) void this.tapsUp(rec).catch(() => undefined);
    if (then.landed) this.onIncomingLanded(rec);
    // A held destination runs once told, and then its taps' links come up first: the commands
    // are made ready now (QemuSystem.prepare), so the resume pays no process start for them.
    if (then.heldLanded && rec.tapsDown && !rec.tapsReady) rec.tapsReady = prepareTapsUp(this.system, this.opts.netns, rec.taps);
    if (then.heldLanded && !rec.disksActive) {
      const t0 = this.clock.now();
      void this.qmpOf(rec).execute('blockdev-set-active', { active: true })
        .then(() => rec.log.info({ ms: this.clock.now() - t0 }, 'held destination landed: its disks are active, it starts when told'))
        .catch((e: unknown) => rec.log.warn({ err: String(e) }, 'held destination: activating its disks failed (cont will)'));
    }
    if (then.wake) rec.wake?.();
    if (then.refresh) void this.refresh(rec).catch(() => undefined);
  }

  private async onQmpClose(rec: VmRecord, qmp: QmpLink): Promise<void> {
    if (rec.qmp !== qmp || this.closed) return;
    rec.wake?.();
    // The socket closes when QEMU exits; make sure it is really gone before saying so.
    const deadline = this.clock.now() + QEMU_DEFAULTS.exitAfterCloseMs;
    while (rec.pid && this.system.pidAlive(rec.pid, rec.paths.qmp) && this.clock.now() < deadline) await clockSleep(this.clock, 20);
    if (rec.pid && this.system.pidAlive(rec.pid, rec.paths.qmp)) {
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

  async refresh(rec: VmRecord): Promise<void> {
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

  /** The VM runs here again (after a failed or cancelled migration). */
  async ensureRunning(rec: VmRecord): Promise<void> {
    const qmp = this.qmpOf(rec);
    const st = await qmp.execute<{ status: string }>('query-status');
    if (st.status !== 'running') {
      rec.log.info({ status: st.status }, 'resuming the source');
      await this.tapsUp(rec);
      await qmp.execute('cont');
    }
    await this.refresh(rec);
  }

  /** Find the VMs a previous agent process left (vm.json + pidfile) and re-attach to them. */
  async reattachAll(): Promise<void> {
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
      if (rec.pid && this.system.pidAlive(rec.pid, f.paths.qmp)) {
        try {
          await this.connect(rec);
          // An incoming VM's taps stay down until it runs; a previous process may have died
          // between the guest's start and bringing them up.
          rec.tapsDown = rec.taps.length > 0;
          await this.refresh(rec);
          if (rec.state === 'incoming') rec.tapsDown = rec.taps.length > 0;
          else await this.tapsUp(rec).catch(() => undefined);
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
