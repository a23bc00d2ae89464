// The typed messages between the controller and its agents (host agents and tunnel agents),
// carried by RpcPeer frames over WebSocket with mutual TLS. Requests go controller -> agent;
// events go agent -> controller.

export type HypervisorType = 'qemu' | 'xen' | 'double';

/** What a VM is, independent of where it runs. The source agent's describe() returns it, and
 *  the destination's prepareIncoming() gets the same spec so the device model is identical. */
export interface VmSpec {
  vmId: string;
  project: string;
  vcpus: number;
  memoryMb: number;
  /** Disk size the destination must find room for when storage is not shared. */
  diskGb: number;
  /** Guest boot: kernel + initrd (the lab's guests) or a disk image. Paths are on the host. */
  kernel?: string;
  initrd?: string;
  append?: string;
  disks?: { path: string; format: 'qcow2' | 'raw'; readonly?: boolean }[];
  /** NICs: the guest MAC, and the bridge on the host the tap device joins. */
  nics?: { mac: string; bridge: string }[];
  /** Extra serial ports exposed on the host as unix sockets (probes use port 1). */
  serialPorts?: number;
  /** Driver-specific settings, passed through untouched. */
  extra?: Record<string, unknown>;
}

export type VmState =
  | 'running'
  | 'paused'        // paused by an operator or a failed migration awaiting resume
  | 'migrating'     // source side of a live migration in progress
  | 'postmigrate'   // source after a completed migration: paused, still primary until commit
  | 'incoming'      // destination side waiting for / receiving a migration
  | 'stopped'
  | 'crashed';

export interface VmInfo {
  vmId: string;
  project: string;
  state: VmState;
  vcpus: number;
  memoryMb: number;
  diskGb: number;
  spec: VmSpec;
  /** Id of the migration this VM is part of on this host, if any. */
  migrationId?: string;
  /** Last time the VM started running / was paused here (epoch ms, from the hypervisor's events). */
  resumedAt?: number;
  pausedAt?: number;
}

/** The hypervisor a host runs. `accelerator` is how it runs guests (QEMU's `-accel`: tcg, kvm);
 *  agents before it was added do not send it. The controller matches type, version and
 *  accelerator against its known-bad releases (src/common/hypervisor-advisories.ts). */
export interface HypervisorInfo {
  type: HypervisorType;
  version: string;
  accelerator?: string;
}

export interface HostInventory {
  hostId: string;
  /** Site (in the lab, a namespace) — informational. */
  site?: string;
  hypervisor: HypervisorInfo;
  cpu: { model: string; features: string[]; vcpus: number };
  memoryMb: number;
  diskGb: number;
  /** True when VM disks live on storage both ends of a migration can reach. */
  sharedStorage: boolean;
  /** Address this host receives migrations on (its end of the lightpath), if fixed. */
  migrationAddress?: string;
  vms: VmInfo[];
  agentVersion: string;
}

/** How one migration is to run: the request's tuning, sent with that migration only (to the
 *  destination with vm.prepareIncoming, to the source with vm.migrate) and never stored in the
 *  VM's spec, so nothing of one migration leaks into the next. */
export interface MigrationTuning {
  bandwidthMbps?: number;
  maxDowntimeMs?: number;
  autoConverge?: boolean;
  /** Several TCP streams for RAM (QEMU multifd); must be set on both ends. */
  multifd?: boolean;
  /** Streams with multifd; the hypervisor's default when absent. */
  multifdChannels?: number;
  /** Allow a switch to post-copy; must be set on both ends. */
  postcopy?: boolean;
  /** Non-live (suspend, copy, resume): pause the VM before the first page moves. The
   *  destination then stays paused after the copy until it is resumed. For comparison runs. */
  suspend?: boolean;
  /** Non-shared storage: the destination makes empty copies of the VM's writable disks and
   *  offers them for the source to copy into (see MigrationParams.storage). */
  copyStorage?: boolean;
  /** Destination only: stay paused once the copy landed, until vm.resume (a live move with a
   *  replica: the controller lets the final state go while it still checks the store's disks,
   *  docs/disks.md#following). Ignored by the source. */
  holdAfterLanding?: boolean;
}

/** Non-shared storage: where the destination offers its empty copies of the VM's disks. Its
 *  content is the hypervisor driver's business (the QEMU driver's is in agents/host/qemu/): the
 *  destination's driver makes it (vm.prepareIncoming), the source's driver of the same type reads
 *  it (vm.migrate), and the controller passes it from one to the other untouched. */
export type StorageHandoff = Record<string, unknown>;

/** What the source needs to run one migration: its tuning, plus where the destination's disk
 *  copies are when storage is copied. */
export interface MigrationParams extends Omit<MigrationTuning, 'copyStorage'> {
  migrationId: string;
  /** Non-shared storage: as returned by the destination's vm.prepareIncoming. With it the source
   *  copies every writable disk there (bulk copy, then the blocks written since) before the
   *  memory, and sends the last delta during stop-and-copy. */
  storage?: StorageHandoff;
}

/** The limits of a migration that may change while its copy runs (vm.tuneMigration): bandwidth
 *  in Mbit/s, and the longest pause the hypervisor may plan for its final stop-and-copy. */
export interface MigrationLimits {
  bandwidthMbps?: number;
  maxDowntimeMs?: number;
}

/** How vm.forceComplete ends a copy that does not converge (nova's force-complete): 'postcopy'
 *  switches to post-copy (only when the migration started with post-copy allowed), 'pause'
 *  pauses the VM so that nothing more is dirtied and the copy ends. The source still pauses
 *  before its final state and waits for vm.continueMigration (docs/design.md#switchover). */
export type ForceCompleteMode = 'postcopy' | 'pause';

export interface MigrationProgress {
  migrationId: string;
  vmId: string;
  /** 'pre-switchover': the source paused the VM before sending its final state (the last dirty
   *  pages and the device state, or the switch to post-copy) and waits for vm.continueMigration;
   *  until then a cancel leaves the destination without the final state
   *  (docs/design.md#switchover). */
  status: 'setup' | 'active' | 'pre-switchover' | 'postcopy-active' | 'device' | 'completed' | 'failed' | 'cancelled';
  totalBytes: number;
  transferredBytes: number;
  remainingBytes: number;
  dirtyPagesRate?: number;
  pass?: number;
  expectedDowntimeMs?: number;
  throughputMbps?: number;
  /** How much the hypervisor throttles the guest's CPU to make the copy converge (auto-converge;
   *  QEMU's cpu-throttle-percentage), 0..100. */
  cpuThrottlePercent?: number;
  /** With storage copy: 'storage' while the disks are mirrored (bytes are disk bytes), then 'ram'. */
  phase?: 'storage' | 'ram';
}

export interface MigrationResult {
  migrationId: string;
  vmId: string;
  status: 'completed' | 'failed' | 'cancelled';
  /** The hypervisor's own downtime figure. */
  downtimeMs?: number;
  totalTimeMs?: number;
  transferredBytes?: number;
  setupTimeMs?: number;
  /** When the source VM was paused for the switchover (epoch ms, from the hypervisor's event). */
  pausedAt?: number;
  /** Disk bytes the storage mirrors processed (bulk copy plus deltas), with storage copy. */
  storageBytes?: number;
  /** The copy switched to post-copy (QEMU accepted migrate-start-postcopy): the destination ran
   *  the VM before all its memory had arrived and fetched the rest on demand. */
  postcopy?: boolean;
  /** With post-copy: the pages the destination asked the source for (its page faults). */
  postcopyRequests?: number;
  error?: { code: string; message: string; details?: Record<string, unknown> };
}

// ---- the cold (offline) path, EGI-Engage D4.4 ---------------------------------------------

/** One disk of a powered-off VM, published by the source agent at a single-use, time-limited
 *  HTTPS URL (mutual TLS with deployment certificates; only the named destination may fetch). */
export interface ColdDisk {
  index: number;
  url: string;
  format: 'qcow2' | 'raw';
  sizeBytes: number;
  sha256: string;
}

/** What the source agent hands over for a cold migration: the metadata D4.4 sends to the
 *  destination (spec = hypervisor, format, size, instance type) and where the disks are. */
export interface ColdExport {
  migrationId: string;
  vmId: string;
  sourceHostId: string;
  /** The destination host allowed to fetch the disks (its certificate's CN). */
  destinationHostId: string;
  /** The serials of the destination's and the source's certificates that the controller has
   *  not revoked (hex). When present, each side accepts only a peer certificate among them, so a
   *  revoked certificate cannot fetch or serve disks even though the CA signed it. */
  destinationCertSerials?: string[];
  sourceCertSerials?: string[];
  spec: VmSpec;
  /** The VM's state before the export powered it off (a rollback restores it). */
  priorState: VmState;
  disks: ColdDisk[];
  /** Epoch ms after which the URLs no longer answer. */
  expiresAt: number;
  /** Set by the controller, not the source: the destination boots from this replica's store
   *  (its last delta sent after the power-off and its digests equal to the source's) instead of
   *  fetching the disks (docs/disks.md#replicas). */
  replica?: { replicaId: string };
}

export interface ColdImportResult {
  vm: VmInfo;
  /** Bytes fetched over the network in this call (a resumed download counts only the rest). */
  bytes: number;
  /** Bytes already present from an earlier, interrupted attempt. */
  resumedBytes: number;
  ms: number;
}

export interface ColdProgress {
  migrationId: string;
  vmId: string;
  phase: 'export' | 'download' | 'boot';
  transferredBytes: number;
  totalBytes: number;
}

/** The cold path's verification as it goes (vm.coldVerify with tcp): one event per attempt. */
export interface ColdVerifyProgress {
  migrationId: string;
  vmId: string;
  attempts: number;
  /** Why the last attempt did not connect. */
  lastError?: string;
  elapsedMs: number;
  timeoutMs: number;
}

/** One TCP attempt's outcome: accepted, refused (the address answers), unreachable (errno), none. */
export type ReachProbe = 'open' | 'refused' | 'unreachable' | 'no-answer';

/** host.checkReach: whether an address is reachable from where the VMs' network is, and why
 *  (agents/host/reach.ts has the rule). */
export interface ReachResult {
  reachable: boolean;
  reason: string;
  /** The kernel's route lookup: 'not-checked' for a name. */
  route: 'found' | 'none' | 'not-checked';
  probe: ReachProbe;
  errno?: string;
}

// ---- monitoring (docs/monitoring.md) ---------------------------------------------------------

/** One VM's use over the last stats interval, as the host agent measured it
 *  (agents/host/stats.ts turns the driver's counters into these rates). */
export interface VmStats {
  vmId: string;
  /** Share of its own vCPUs it used (0..1). */
  cpu: number;
  /** Memory it was given. */
  memoryMb: number;
  /** What the hypervisor sees it use (QEMU: the process's resident set), when known. */
  memoryUsedMb?: number;
  swapMb?: number;
  balloonMb?: number;
  /** Network (as the guest sees it: rx received by the guest) and disk rates. */
  netRxMbps: number;
  netTxMbps: number;
  diskReadMBps: number;
  diskWriteMBps: number;
  /** Guest memory dirtied per second (QEMU calc-dirty-rate), when it was measured lately. */
  dirtyRateMBps?: number;
}

/** The host's own use over the same interval. */
export interface HostStats {
  /** Share of the host's CPUs busy (0..1). */
  cpu: number;
  vcpus: number;
  memoryMb: number;
  memoryUsedMb: number;
  swapUsedMb?: number;
  netRxMbps: number;
  netTxMbps: number;
  diskReadMBps: number;
  diskWriteMBps: number;
}

/** The 'stats' event: sent every stats interval (vmtc agent --stats-interval). */
export interface StatsReport {
  /** Epoch ms of the sample (the agent's clock). */
  at: number;
  /** Length of the interval the rates are over. */
  intervalMs: number;
  host: HostStats;
  vms: VmStats[];
}

// ---- replicas: disks pre-seeded at a destination and kept warm (docs/disks.md#replicas) -----

/** A point-in-time view of a VM's disks that the source keeps (agents/host/disks/backend.ts
 *  Checkpoint): the last one the destination's store holds is the base of the next delta. */
export interface ReplicaCheckpoint {
  id: string;
  seq: number;
  /** Agent clock ms when the view was taken. */
  takenAt: number;
  ref: string;
}

/** What one seed (full copy) or delta of every writable disk of a VM moved. */
export interface ReplicaTransfer {
  kind: 'full' | 'delta';
  /** What the store holds once this transfer is recorded there. */
  checkpoint: ReplicaCheckpoint;
  from?: ReplicaCheckpoint;
  /** Guest-visible size of the disks, and the bytes of disk data sent. */
  diskBytes: number;
  bytes: number;
  ms: number;
  disks: number;
}

/** Where a destination exports its replica store for one transfer: the driver's business (the
 *  QEMU driver's: NBD exports on the migration address), passed from the destination's
 *  replica.openStore to the source's replica.send untouched by the controller. */
export type ReplicaStoreHandoff = Record<string, unknown>;

/** A digest of each of a VM's writable disks (agents/host/disks/digest.ts), in disk order. */
export interface ReplicaDigest {
  /** `changed`: an incremental digest (docs/disks.md#incremental-digests) re-read only these
   *  chunks, the rest came from the leaves kept at `since`; absent: every chunk was read. */
  disks: { index: number; size: number; chunkBytes: number; root: string; leaves: string[]; changed?: number[] }[];
}

/** replica.digest's incremental form (docs/disks.md#incremental-digests): `keepAs` keeps this
 *  (full) digest's leaves as of that checkpoint; `since` re-reads only the chunks written since
 *  that checkpoint's leaves were kept (the source finds them in its change tracking; the store is
 *  told them: `changed`, per disk, from the source's answer). Without leaves kept at `since`, or
 *  with the store at another checkpoint than the one after `since`, a full digest is taken. */
export interface ReplicaDigestAsk {
  keepAs?: ReplicaCheckpoint;
  since?: ReplicaCheckpoint;
  changed?: number[][];
}

/** Requests the controller may send to a host agent: method -> [params, result]. */
export interface HostMethods {
  'host.inventory': [Record<string, never>, HostInventory];
  /** Before a cold move powers the source off: is the verify address reachable from this host's
   *  VM network (a route to it; one TCP attempt of at most timeoutMs, for information)? */
  'host.checkReach': [{ host: string; port: number; timeoutMs: number }, ReachResult];
  'vm.start': [{ spec: VmSpec }, VmInfo];
  'vm.describe': [{ vmId: string }, VmInfo];
  'vm.stop': [{ vmId: string }, { ok: true }];
  /** `dropCheckpoints` (after a committed move): the replica checkpoints left on the disks the VM
   *  leaves go too (agents/host/replicas.ts dropLeftCheckpoints); `checkpoints` says how that went. */
  /** dropCheckpoints: the replicas' checkpoints go from the disks the VM leaves; leftForGood (a
   *  committed move's source): the consumed replica stores it ran from are deleted too. */
  'vm.destroy': [{ vmId: string; dropCheckpoints?: boolean; leftForGood?: boolean }, { ok: true; checkpoints?: { dropped: string[] } | { error: { code: string; message: string; details?: unknown } }; stores?: { removed: string[] } | { error: { code: string; message: string; details?: unknown } } }];
  'vm.resume': [{ vmId: string }, VmInfo];
  /** Destination: start an identical VM waiting for the incoming state on `listenHost`, with the
   *  capabilities that must match the source's (tuning.multifd, tuning.postcopy). With
   *  tuning.copyStorage (no shared storage) it also creates empty local copies of the disks and
   *  offers them, writable, to the source on `listenHost`: `storage` goes to the source's
   *  MigrationParams. */
  'vm.prepareIncoming': [{ spec: VmSpec; migrationId: string; listenHost: string; port?: number; tuning?: MigrationTuning }, { uri: string; storage?: MigrationParams['storage'] }];
  /** Source: start migrating to `uri`. Resolves once started; the source pauses before its
   *  final state and reports 'pre-switchover' (see vm.continueMigration); completion arrives as
   *  a 'migration.done' event (and can be polled with vm.migrationStatus). */
  'vm.migrate': [{ vmId: string; uri: string; params: MigrationParams }, { started: true }];
  'vm.migrationStatus': [{ vmId: string }, MigrationProgress | MigrationResult | null];
  /** Source: the controller decided (the point of no return, docs/design.md#switchover): send
   *  the final state. Allowed once the migration reported 'pre-switchover'; idempotent (a
   *  migration already continued or completed answers ok). */
  'vm.continueMigration': [{ vmId: string; migrationId: string }, { ok: true }];
  'vm.cancelMigration': [{ vmId: string }, { ok: true }];
  /** Source: change the limits of the running migration `migrationId`; answers with the limits
   *  now in effect, as the hypervisor reports them. Refused once its switchover was continued. */
  'vm.tuneMigration': [{ vmId: string; migrationId: string } & MigrationLimits, MigrationLimits];
  /** Source: make the running migration `migrationId` end (see ForceCompleteMode). Idempotent for
   *  the same mode; refused once its switchover was continued, or for post-copy when the
   *  migration did not start with it allowed. A pause is undone if the migration then fails or is
   *  cancelled: the source runs again. */
  'vm.forceComplete': [{ vmId: string; migrationId: string; mode: ForceCompleteMode }, { mode: ForceCompleteMode }];
  /** Destination: wait until the incoming VM runs (commit point of the paper's switchover). */
  'vm.waitRunning': [{ vmId: string; timeoutMs: number }, VmInfo];
  /** Cold source: power the VM off (if running), checksum its disks and publish them for
   *  `destinationHostId` until now + ttlMs. Idempotent for the same migrationId. */
  /** checksums 'later': the disks are published without their sha256 (empty), for a move that
   *  expects to boot from a replica; vm.coldChecksums computes them if a fetch is needed after all. */
  'vm.coldExport': [{ vmId: string; migrationId: string; destinationHostId: string; ttlMs: number; destinationCertSerials?: string[]; sourceCertSerials?: string[]; checksums?: 'now' | 'later' }, ColdExport];
  'vm.coldChecksums': [{ vmId: string; migrationId: string }, { disks: { index: number; sha256: string }[] }];
  /** Cold source, on rollback: withdraw the export and bring the VM back to its prior state. */
  'vm.coldAbort': [{ vmId: string; migrationId: string }, VmInfo];
  /** Cold destination: check space, fetch every disk (resuming, checksummed) into this agent's
   *  own disk store, and boot the VM from the copies. */
  'vm.coldImport': [{ export: ColdExport }, ColdImportResult];
  /** Cold destination: the VM runs and, when asked, a TCP service in it answers. */
  'vm.coldVerify': [{ vmId: string; timeoutMs: number; tcp?: { host: string; port: number }; migrationId?: string }, VmInfo];
  // Replicas (docs/disks.md#replicas). Destination: create the VM's store on a seed (expect
  // null; a half-seeded one is replaced) and export it writable on listenHost for one transfer,
  // refused unless it holds `expect`; closeStore ends the export and, with `transfer`, records
  // what it now holds; removeStore deletes it. Source: send a seed (from null) or the delta since
  // `from` under checkpoint `checkpointId`; lag: bytes written since `from`; dropCheckpoints:
  // every checkpoint of the replica but `keep`.
  'replica.openStore': [{ replicaId: string; spec: VmSpec; listenHost: string; expect: ReplicaCheckpoint | null }, { store: ReplicaStoreHandoff }];
  /** waitClients: end the export only once its clients left (a follow cut at the VM's stop has
   *  writes on their way: docs/disks.md#following). */
  /** `activateVmId`: the held destination booting from this store (a live move's) takes its
   *  disks as soon as the store closed (the driver's activateDisks), not as it lands; `activated`
   *  says how that went. A store digest asked meanwhile waits for the close. */
  'replica.closeStore': [{ replicaId: string; transfer?: ReplicaTransfer; waitClients?: boolean; activateVmId?: string }, { holds: ReplicaCheckpoint | null; activated?: { ms: number } | { error: string } }];
  'replica.removeStore': [{ replicaId: string; keepImages?: boolean }, { ok: true }];
  /** Destination: the paths of the store's images, in disk order (a live move with the replica
   *  boots its incoming VM from them; keepImages on removal then leaves them to that VM). */
  'replica.storePaths': [{ replicaId: string }, { paths: string[] }];
  'replica.send': [{ replicaId: string; vmId: string; store: ReplicaStoreHandoff; from: ReplicaCheckpoint | null; checkpointId: string; rateBytesPerS?: number }, ReplicaTransfer];
  /** Source: the copy rate of its seeds and deltas from now on, bytes/s (0: none); also given to
   *  a send as rateBytesPerS. The controller sets it to a background reservation's grant
   *  (docs/broker.md "Classes"); a driver without a rate limit ignores it. */
  'replica.limit': [{ replicaId: string; rateBytesPerS: number }, { ok: true }];
  /** Source, a live move (docs/disks.md#following): mirror the running VM's writes into `store`
   *  from now on, then send the delta since `from`; unfollow stops the mirrors. */
  'replica.follow': [{ replicaId: string; vmId: string; store: ReplicaStoreHandoff; from: ReplicaCheckpoint; checkpointId: string }, ReplicaTransfer];
  /** cut: the mirrors were cut at the VM's stop (their writes in flight were not waited for):
   *  the store's export must be closed with waitClients. */
  /** `cut`: the mirrors were released at the VM's stop; `stoppedAtCut`: their jobs were stopped
   *  then too, so this only waited for that (agents/host/disks/qemu-follow.ts cutFollows). */
  'replica.unfollow': [{ replicaId: string; vmId: string }, { bytes: number; following: boolean; error?: string; cut?: boolean; stoppedAtCut?: boolean }];
  /** Source, before a cold move's power-off: connect ahead to `store`'s exports (relays). */
  'replica.preconnect': [{ replicaId: string; vmId: string; store: ReplicaStoreHandoff }, { relays: number }];
  'replica.lag': [{ replicaId: string; vmId: string; from: ReplicaCheckpoint }, { bytes: number }];
  'replica.dropCheckpoints': [{ replicaId: string; vmId: string; keep?: ReplicaCheckpoint }, { ok: true }];
  /** A digest of the source VM's disks (side source, take it with the VM paused or off) or of the
   *  replica's store (side store). */
  'replica.digest': [{ replicaId: string; side: 'source' | 'store'; vmId?: string } & ReplicaDigestAsk, ReplicaDigest];
}

/** Events an agent sends to the controller: name -> payload. */
export interface AgentEvents {
  inventory: HostInventory;
  'migration.progress': MigrationProgress;
  'migration.done': MigrationResult;
  'cold.progress': ColdProgress;
  'cold.verify': ColdVerifyProgress;
  'tunnel.state': unknown;
  stats: StatsReport;
}

/** First frame an agent sends after the TLS handshake. */
export interface Hello {
  kind: 'host' | 'tunnel';
  agentVersion: string;
}
