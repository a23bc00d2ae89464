// The QEMU hypervisor driver: QEMU/KVM over QMP (docs/qemu.md), behind the HypervisorDriver
// interface the agent uses (agents/host/driver.ts). This file wires the roles together:
//
//   lifecycle.ts    the VMs: launch, stop, destroy, QMP events, run state, re-attach at start
//   source.ts       migrate, its progress and end, cancel
//   control.ts      force-complete and tuning of a running migration
//   destination.ts  prepareIncoming, resume of an incoming VM, waitRunning
//   storage.ts      disks without shared storage: NBD exports and drive-mirror
//   proc.ts         the host: processes, /proc, taps (QemuSystem)
//   stats.ts        monitoring counters: /proc, taps, query-blockstats, calc-dirty-rate
//   qmp.ts, cmdline.ts, facts.ts, errors.ts, types.ts
//
// Acceleration is a host setting: `accel` only changes `-accel` (docs/design.md#lab: TCG in the
// lab, KVM in production). Every wait goes through the injected clock.
import { mkdir, statfs } from 'node:fs/promises';
import { cpus, totalmem } from 'node:os';
import type { ForceCompleteMode, MigrationLimits, MigrationParams, MigrationProgress, MigrationResult, MigrationTuning, ReachResult, VmInfo, VmSpec } from '../../../src/common/agent-protocol.ts';
import { tcpConnectCheck, type HostFacts, type HypervisorDriver, type StatsSample } from '../driver.ts';
import { readHostCounters, readText, readVmCounters, type DirtyRates, type ReadText } from './stats.ts';
import { decideReach, isAddress, probeFromBash, routeFromIp, tcpProbe } from '../reach.ts';
import type { VmPaths } from './cmdline.ts';
import { forceComplete, readLimits, tuneMigration } from './control.ts';
import { activateDisks, prepareIncoming, resume, waitRunning } from './destination.ts';
import { cpuModelFeatures, hostCpuFlags, qemuVersion } from './facts.ts';
import { QemuVms } from './lifecycle.ts';
import { cancelMigration, continueMigration, migrate } from './source.ts';
import { finishIncoming } from './storage.ts';
import { QemuReplicas } from '../disks/qemu-replica.ts';
import { QEMU_DEFAULTS, type NbdStorage, type QemuDriverOptions } from './types.ts';

export { qemuVmPaths } from './cmdline.ts';
export type { QemuDriverOptions } from './types.ts';

export class QemuDriver implements HypervisorDriver {
  readonly type = 'qemu' as const;
  private readonly vms: QemuVms;
  private readonly ready: Promise<void>;
  private factsCache?: Promise<Omit<HostFacts, 'memoryMb' | 'diskGb'>>;
  private readonly dirtyRates: DirtyRates = new Map();
  /** Disk-state operations for replicas (docs/disks.md#replicas). */
  readonly replicas: QemuReplicas;
  /** How stats() reads /proc (tests give their own). */
  statsRead: ReadText = readText;

  constructor(private readonly opts: QemuDriverOptions) {
    this.vms = new QemuVms(opts);
    this.vms.onIncomingLanded = (rec) => {
      void finishIncoming(this.vms, rec).catch((e: unknown) => rec.log.warn({ err: String(e) }, 'finishing the storage-copy destination failed'));
    };
    this.ready = this.vms.reattachAll();
    // Never an unhandled rejection: every public method awaits `ready` and sees the error.
    this.ready.catch(() => undefined);
    // Replicas (agents/host/disks/qemu-replica.ts): the backend reaches a VM's QEMU through the
    // driver's own QMP connection; a VM without a QEMU process (stopped) through a storage daemon.
    this.replicas = new QemuReplicas({
      dataDir: opts.dataDir, logger: this.vms.log, clock: this.vms.clock, ...(opts.netns ? { netns: opts.netns } : {}),
      qmpFor: async (vmId) => { await this.ready; return this.vms.qmpOf(this.vms.get(vmId)); },
      vmOf: (vmId) => { const r = this.vms.get(vmId); return { spec: r.spec, running: !!r.qmp && !r.qmp.closed }; },
    });
    this.vms.onStoppedMigrating = (rec) => this.replicas.cut(rec.spec.vmId, (job) => rec.endedJobs?.has(job) ?? false);
    this.vms.onResumed = (rec) => this.replicas.resumed(rec.spec.vmId);
  }

  // ---- inventory -------------------------------------------------------------------------

  async facts(): Promise<HostFacts> {
    await this.ready;
    const binary = this.vms.binary;
    this.factsCache ??= (async () => {
      const model = 'qemu64';
      const [version, features] = await Promise.all([
        qemuVersion(binary),
        cpuModelFeatures(binary, this.vms.accel, model).catch(async () => hostCpuFlags()),
      ]);
      return {
        hypervisor: { type: 'qemu' as const, version, accelerator: this.vms.accel },
        cpu: { model, features, vcpus: cpus().length },
        sharedStorage: this.opts.sharedStorage ?? QEMU_DEFAULTS.sharedStorage,
      };
    })();
    const f = await this.factsCache;
    await mkdir(this.opts.dataDir, { recursive: true });
    const st = await statfs(this.opts.dataDir);
    return { ...f, memoryMb: Math.floor(totalmem() / 1048576), diskGb: Math.floor((st.bavail * st.bsize) / 1e9) };
  }

  async list(): Promise<VmInfo[]> {
    await this.ready;
    return [...this.vms.vms.values()].map((r) => this.vms.info(r));
  }

  async describe(vmId: string): Promise<VmInfo> {
    await this.ready;
    return this.vms.info(this.vms.get(vmId));
  }

  /** Counters of the host and of every VM that runs here (agents/host/qemu/stats.ts). */
  async stats(opts: { dirtyRate: boolean }): Promise<StatsSample> {
    await this.ready;
    const at = this.vms.clock.now();
    const vms: StatsSample['vms'] = [];
    for (const r of this.vms.vms.values()) {
      if ((r.state !== 'running' && r.state !== 'migrating') || r.pid === undefined || !r.qmp || r.qmp.closed) continue;
      vms.push(await readVmCounters({ vmId: r.spec.vmId, vcpus: r.spec.vcpus, memoryMb: r.spec.memoryMb, pid: r.pid, taps: r.taps, qmp: r.qmp }, { read: this.statsRead, dirtyRate: opts.dirtyRate, dirtyRates: this.dirtyRates }));
    }
    for (const id of [...this.dirtyRates.keys()]) if (!this.vms.vms.has(id)) this.dirtyRates.delete(id);
    return { at, host: await readHostCounters(this.statsRead, cpus().length), vms };
  }

  onChange(listener: () => void): void {
    this.vms.onChange(listener);
  }

  /** The cold path's service check (D4.4 "verify"): the guests' network is inside the driver's
   *  namespace, so the connection is made from there (bash's /dev/tcp, bounded by `timeout`). */
  async checkTcp(vmId: string, host: string, port: number, timeoutMs: number): Promise<boolean> {
    await this.ready;
    this.vms.get(vmId);
    if (!this.opts.netns) return tcpConnectCheck(host, port, timeoutMs, this.vms.clock);
    // host and port go to bash as positional parameters, never into the script text.
    if (!/^[0-9A-Za-z.:_-]{1,253}$/.test(host) || !(Number.isInteger(port) && port > 0 && port <= 65535)) return false;
    const secs = (Math.max(100, timeoutMs) / 1000).toFixed(3);
    const r = await this.vms.system.exec(['ip', 'netns', 'exec', this.opts.netns, 'timeout', secs, 'bash', '-c', 'exec 3<>"/dev/tcp/$0/$1"', host, String(port)], timeoutMs + 5000);
    return r.code === 0;
  }

  /** Before a cold move (host.checkReach; the rule is agents/host/reach.ts): the route to host
   *  from the guests' namespace as the kernel sees it (`ip route get`), and one connection
   *  attempt from there (bash's /dev/tcp, bounded by `timeout`), for information. */
  async checkReach(host: string, port: number, timeoutMs: number): Promise<ReachResult> {
    await this.ready;
    const ns = this.opts.netns;
    const system = this.vms.system;
    if (!/^[0-9A-Za-z.:_-]{1,253}$/.test(host) || !(Number.isInteger(port) && port > 0 && port <= 65535)) {
      return decideReach({ route: 'none', reason: 'not an address or host name' }, { probe: 'unreachable' });
    }
    const route = isAddress(host)
      ? await system.exec([...(ns ? ['ip', '-n', ns] : ['ip']), 'route', 'get', host], 10_000).then((r) => routeFromIp(r.code, r.stderr))
      : { route: 'not-checked' as const, reason: 'a name, not an address: no route to look up' };
    if (!ns) return decideReach(route, await tcpProbe(host, port, timeoutMs, this.vms.clock));
    const secs = (Math.max(100, timeoutMs) / 1000).toFixed(3);
    const r = await system.exec(['ip', 'netns', 'exec', ns, 'timeout', secs, 'bash', '-c', 'exec 3<>"/dev/tcp/$0/$1"', host, String(port)], timeoutMs + 5000);
    return decideReach(route, probeFromBash(r.code, r.stderr));
  }

  /** Host-side paths of a VM: console log, QMP socket, serial port sockets (probes read port 1). */
  async paths(vmId: string): Promise<VmPaths> {
    await this.ready;
    return { ...this.vms.get(vmId).paths };
  }

  /** The QEMU process id (tests and the lab use it to kill a QEMU on purpose). */
  async pid(vmId: string): Promise<number | undefined> {
    await this.ready;
    return this.vms.get(vmId).pid;
  }

  /** One HMP command through QMP `human-monitor-command` (diagnostics; the lab tests write to a
   *  disk through the block layer with `qemu-io <drive> "..."`, as a guest write would). */
  async humanMonitor(vmId: string, command: string): Promise<string> {
    await this.ready;
    return this.vms.qmpOf(this.vms.get(vmId)).execute<string>('human-monitor-command', { 'command-line': command }, { timeoutMs: 30_000 });
  }

  /** The latest progress of the VM's migration, or its result once finished (vm.migrationStatus). */
  async migrationStatus(vmId: string): Promise<MigrationProgress | MigrationResult | null> {
    await this.ready;
    return this.vms.get(vmId).lastMigration ?? null;
  }

  // ---- lifecycle -------------------------------------------------------------------------

  async start(spec: VmSpec): Promise<VmInfo> {
    await this.ready;
    return this.vms.info(await this.vms.launch(spec, 'normal'));
  }

  async stop(vmId: string): Promise<void> {
    await this.ready;
    await this.vms.stop(vmId);
  }

  async destroy(vmId: string): Promise<void> {
    await this.ready;
    await this.vms.destroy(vmId);
  }

  /** Disconnect from every QEMU; the VMs keep running (a new driver re-attaches to them). */
  async close(): Promise<void> {
    await this.ready.catch(() => undefined);
    await this.replicas.close();
    this.vms.closed = true;
    for (const r of this.vms.vms.values()) r.qmp?.close();
    this.vms.clearListeners();
  }

  // ---- migration ---------------------------------------------------------------------------

  async prepareIncoming(spec: VmSpec, migrationId: string, listenHost: string, opts: { port?: number; tuning?: MigrationTuning } = {}): Promise<{ uri: string; storage?: NbdStorage }> {
    await this.ready;
    return prepareIncoming(this.vms, spec, migrationId, listenHost, opts);
  }

  async resume(vmId: string): Promise<VmInfo> {
    await this.ready;
    return resume(this.vms, vmId);
  }

  async activateDisks(vmId: string): Promise<{ ms: number }> {
    await this.ready;
    return activateDisks(this.vms, vmId);
  }

  async waitRunning(vmId: string, timeoutMs: number): Promise<VmInfo> {
    await this.ready;
    return waitRunning(this.vms, vmId, timeoutMs);
  }

  async migrate(vmId: string, uri: string, params: MigrationParams, onProgress: (p: MigrationProgress) => void): Promise<MigrationResult> {
    await this.ready;
    return migrate(this.vms, vmId, uri, params, onProgress);
  }

  async continueMigration(vmId: string, migrationId: string): Promise<void> {
    await this.ready;
    return continueMigration(this.vms, vmId, migrationId);
  }

  async cancelMigration(vmId: string): Promise<void> {
    await this.ready;
    return cancelMigration(this.vms, vmId);
  }

  async tuneMigration(vmId: string, migrationId: string, limits: MigrationLimits): Promise<MigrationLimits> {
    await this.ready;
    return tuneMigration(this.vms, vmId, migrationId, limits);
  }

  async forceComplete(vmId: string, migrationId: string, mode: ForceCompleteMode): Promise<void> {
    await this.ready;
    return forceComplete(this.vms, vmId, migrationId, mode);
  }

  /** The VM's migration limits as QEMU holds them now (`query-migrate-parameters`:
   *  max-bandwidth, downtime-limit), for diagnostics and the lab tests. */
  async migrationLimits(vmId: string): Promise<MigrationLimits> {
    await this.ready;
    return readLimits(this.vms.qmpOf(this.vms.get(vmId)));
  }
}
