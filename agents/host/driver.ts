// The hypervisor driver interface: the host agent only ever talks to a hypervisor through this
// (QEMU/KVM over QMP in agents/host/qemu/; libvirt or Xen would be further folders beside it, and
// DoubleDriver is the test double). Nothing here is specific to one hypervisor: what a driver
// needs of its own rides in VmSpec.extra (its settings) and MigrationParams.storage (its storage
// handoff), which the controller passes on untouched. How to add a driver:
// docs/contributing.md#a-hypervisor-driver.
import { keepAliveClock, type Clock } from '../../src/common/clock.ts';
import { tcpProbe } from './reach.ts';
import type { ReplicaOps } from './replicas.ts';
import type { ForceCompleteMode, HypervisorInfo, HypervisorType, MigrationLimits, MigrationParams, MigrationProgress, MigrationResult, MigrationTuning, ReachResult, StorageHandoff, VmInfo, VmSpec } from '../../src/common/agent-protocol.ts';

export interface HostFacts {
  /** With `accelerator` where the driver has one (the controller's known-bad checks use it). */
  hypervisor: HypervisorInfo;
  cpu: { model: string; features: string[]; vcpus: number };
  memoryMb: number;
  diskGb: number;
  sharedStorage: boolean;
}

/** One reading of a driver's counters (agents/host/stats.ts turns two readings into the rates
 *  of a StatsReport). Counters only grow while a VM lives; gauges are as of `at`. */
export interface StatsSample {
  /** Epoch ms of the reading (the driver's clock). */
  at: number;
  host: {
    vcpus: number;
    memoryMb: number;
    memoryUsedMb: number;
    swapUsedMb?: number;
    /** CPU time busy and in all since boot (ms, /proc/stat), when the driver reads the host's. */
    cpuBusyMs?: number;
    cpuTotalMs?: number;
  };
  vms: {
    vmId: string;
    vcpus: number;
    memoryMb: number;
    /** CPU time the VM used (ms, counter). */
    cpuMs: number;
    memoryUsedMb?: number;
    swapMb?: number;
    balloonMb?: number;
    /** Bytes, counters, as the guest sees them (rx: received by the guest). */
    netRxBytes: number;
    netTxBytes: number;
    diskReadBytes: number;
    diskWriteBytes: number;
    /** The last dirty-page rate measured (MB/s), when there is one. */
    dirtyRateMBps?: number;
  }[];
}

export interface HypervisorDriver {
  readonly type: HypervisorType;
  facts(): Promise<HostFacts>;
  list(): Promise<VmInfo[]>;
  describe(vmId: string): Promise<VmInfo>;
  start(spec: VmSpec): Promise<VmInfo>;
  /** Power the VM off. */
  stop(vmId: string): Promise<void>;
  /** Remove the VM and its host-side resources (after a committed migration, or a failed incoming). */
  destroy(vmId: string): Promise<void>;
  resume(vmId: string): Promise<VmInfo>;
  /** A held destination (tuning.holdAfterLanding) takes its disks before it is told to run:
   *  the store that wrote them closed. Optional: a driver without it takes them as it resumes. */
  activateDisks?(vmId: string): Promise<{ ms: number }>;
  /** Destination side: an identical VM waiting for the incoming state on `listenHost` only (on
   *  `port`, or one the driver picks), set up for this migration's `tuning` (what must match the
   *  source's: multifd, postcopy). The tuning is this migration's alone and never goes into the
   *  VM's spec. With tuning.copyStorage the driver also creates empty copies of the writable
   *  disks (same format and virtual size) in a directory it owns and offers them to the source;
   *  `storage` says where, for the source's MigrationParams. With tuning.suspend the VM stays
   *  paused after it lands, until resume(). */
  prepareIncoming(spec: VmSpec, migrationId: string, listenHost: string, opts: { port?: number; tuning?: MigrationTuning }): Promise<{ uri: string; storage?: StorageHandoff }>;
  /** Run a live migration to `uri`; onProgress is called as it goes; resolves when it ends.
   *  The point of no return is the controller's (docs/design.md#switchover): before the final
   *  state leaves (the last dirty pages and device state, or the switch to post-copy) the
   *  source pauses, reports status 'pre-switchover' and waits for continueMigration(); a cancel
   *  while it waits leaves the destination without the final state and the source running. */
  migrate(vmId: string, uri: string, params: MigrationParams, onProgress: (p: MigrationProgress) => void): Promise<MigrationResult>;
  /** Let a migration paused at 'pre-switchover' send its final state. Idempotent for a
   *  migration already continued; refused (coded) for one that is not at that point. */
  continueMigration(vmId: string, migrationId: string): Promise<void>;
  cancelMigration(vmId: string): Promise<void>;
  /** Change the limits of the running migration `migrationId` (bandwidth, planned downtime);
   *  resolves with the limits now in effect as the hypervisor reports them (read back, not
   *  echoed). Refused (coded) when no such migration runs here or its switchover was continued. */
  tuneMigration(vmId: string, migrationId: string, limits: MigrationLimits): Promise<MigrationLimits>;
  /** Make the running migration `migrationId` end although it does not converge: 'postcopy'
   *  switches to post-copy (refused, coded, unless migrate() got params.postcopy), 'pause' pauses
   *  the VM so that its copy converges. Either way the source still pauses at 'pre-switchover' and
   *  waits for continueMigration(); a paused VM runs again if the migration then fails or is
   *  cancelled, as on any failure. Idempotent for the same mode; refused (coded) once the
   *  switchover was continued or for the other mode once one is in effect. */
  forceComplete(vmId: string, migrationId: string, mode: ForceCompleteMode): Promise<void>;
  waitRunning(vmId: string, timeoutMs: number): Promise<VmInfo>;
  /** One attempt to open a TCP connection to host:port from where the VM's network is (its
   *  namespace, for a driver that runs guests in one): true if it was accepted within timeoutMs.
   *  Used by the cold path's verification (D4.4: "a service port answers"); without it the agent
   *  connects from its own namespace. */
  checkTcp?(vmId: string, host: string, port: number, timeoutMs: number): Promise<boolean>;
  /** Before a cold move: is host reachable from where this driver's VMs' network is (a route to
   *  it; one TCP attempt of at most timeoutMs)? The rule is agents/host/reach.ts; without it the
   *  agent decides from its own namespace. */
  checkReach?(host: string, port: number, timeoutMs: number): Promise<ReachResult>;
  /** Counters of the host and its running VMs (docs/monitoring.md). With `dirtyRate` the driver
   *  may also start a measurement of each VM's dirty-page rate whose result a later reading
   *  reports (it must not wait for it). Without it the agent sends no stats. */
  stats?(opts: { dirtyRate: boolean }): Promise<StatsSample>;
  /** Disk-state operations for replicas (docs/disks.md#replicas): pre-seeded copies of a VM's
   *  disks at another host, kept warm with deltas. Without them the agent refuses replica.*
   *  requests (VMTC_HOST_DISK_UNSUPPORTED). */
  readonly replicas?: ReplicaOps;
  /** Called whenever a VM's state changes, so the agent can re-send its inventory. */
  onChange(listener: () => void): void;
  close(): Promise<void>;
}

/** One TCP connection attempt from this process: true if accepted within timeoutMs. */
export async function tcpConnectCheck(host: string, port: number, timeoutMs: number, clock: Clock = keepAliveClock): Promise<boolean> {
  return (await tcpProbe(host, port, timeoutMs, clock)).probe === 'open';
}
