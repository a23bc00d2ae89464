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

export interface HostInventory {
  hostId: string;
  /** Site (in the lab, a namespace) — informational. */
  site?: string;
  hypervisor: { type: HypervisorType; version: string };
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

export interface MigrationParams {
  migrationId: string;
  bandwidthMbps?: number;
  maxDowntimeMs?: number;
  autoConverge?: boolean;
  multifd?: boolean;
  postcopy?: boolean;
  /** Non-live (suspend, copy, resume): pause the VM before the first page moves. The
   * destination then stays paused after the copy until it is resumed. For comparison runs. */
  suspend?: boolean;
}

export interface MigrationProgress {
  migrationId: string;
  vmId: string;
  status: 'setup' | 'active' | 'postcopy-active' | 'device' | 'completed' | 'failed' | 'cancelled';
  totalBytes: number;
  transferredBytes: number;
  remainingBytes: number;
  dirtyPagesRate?: number;
  pass?: number;
  expectedDowntimeMs?: number;
  throughputMbps?: number;
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
  error?: { code: string; message: string; details?: Record<string, unknown> };
}

/** Requests the controller may send to a host agent: method -> [params, result]. */
export interface HostMethods {
  'host.inventory': [Record<string, never>, HostInventory];
  'vm.start': [{ spec: VmSpec }, VmInfo];
  'vm.describe': [{ vmId: string }, VmInfo];
  'vm.stop': [{ vmId: string }, { ok: true }];
  'vm.destroy': [{ vmId: string }, { ok: true }];
  'vm.resume': [{ vmId: string }, VmInfo];
  /** Destination: start an identical VM waiting for the incoming state on `listenHost`. */
  'vm.prepareIncoming': [{ spec: VmSpec; migrationId: string; listenHost: string; port?: number }, { uri: string }];
  /** Source: start migrating to `uri`. Resolves once started; completion arrives as a
   *  'migration.done' event (and can be polled with vm.migrationStatus). */
  'vm.migrate': [{ vmId: string; uri: string; params: MigrationParams }, { started: true }];
  'vm.migrationStatus': [{ vmId: string }, MigrationProgress | MigrationResult | null];
  'vm.cancelMigration': [{ vmId: string }, { ok: true }];
  /** Destination: wait until the incoming VM runs (commit point of the paper's switchover). */
  'vm.waitRunning': [{ vmId: string; timeoutMs: number }, VmInfo];
}

/** Events an agent sends to the controller: name -> payload. */
export interface AgentEvents {
  inventory: HostInventory;
  'migration.progress': MigrationProgress;
  'migration.done': MigrationResult;
  'tunnel.state': unknown;
}

/** First frame an agent sends after the TLS handshake. */
export interface Hello {
  kind: 'host' | 'tunnel';
  agentVersion: string;
}
