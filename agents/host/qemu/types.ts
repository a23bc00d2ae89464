// What the QEMU driver's modules share: its options, what it keeps per VM (in memory and in
// vm.json), the shapes of the QMP replies it reads, and the two seams a test replaces: the QMP
// connection (QmpLink) and the host's processes (QemuSystem).
import type { ForceCompleteMode, MigrationProgress, MigrationResult, VmSpec, VmState } from '../../../src/common/agent-protocol.ts';
import type { Clock } from '../../../src/common/clock.ts';
import type { Logger } from '../../../src/common/log.ts';
import type { Accel, VmPaths } from './cmdline.ts';
import type { QmpEvent } from './qmp.ts';

/** Options of the driver; defaults in one place (docs/contributing.md#options). */
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
  /** Every wait, poll and deadline of the driver (default: keepAliveClock). */
  clock?: Clock;
  /** The host's processes and QMP sockets (default: systemQemu, proc.ts). Tests give a double. */
  system?: QemuSystem;
}

export const QEMU_DEFAULTS = {
  accel: 'tcg' as Accel,
  qemuBinary: 'qemu-system-x86_64',
  pollMs: 200,
  postcopyAfterPass: 2,
  sharedStorage: false,
  /** QEMU's own start (-daemonize returns once it listens) and `qemu-img create`. */
  startTimeoutMs: 60_000,
  qmpConnectTimeoutMs: 10_000,
  /** resume() of a non-live destination waits this long for the copy to land. */
  incomingLandMs: 60_000,
  /** cancelMigration() during the storage mirror waits this long for migrate() to end them. */
  mirrorCancelMs: 60_000,
  /** migrate_cancel: how long QEMU may take to leave the active states. */
  migrateCancelMs: 30_000,
  /** Stop-and-copy: how long the mirrors may take for their last delta. */
  mirrorSyncMs: 120_000,
  /** Failure or cancel: how long forced block-job-cancel may take. */
  mirrorAbortMs: 30_000,
  /** quit: how long QEMU may take to exit before SIGKILL. */
  quitMs: 10_000,
  /** After the QMP socket closed: how long to wait for the process to be gone. */
  exitAfterCloseMs: 2000,
} as const;

/** What the driver needs of a QMP connection (QmpClient, or a test's double of it). */
export interface QmpLink {
  readonly closed: boolean;
  execute<T = unknown>(command: string, args?: Record<string, unknown>, opts?: { timeoutMs?: number }): Promise<T>;
  on(name: 'event', listener: (ev: QmpEvent) => void): unknown;
  on(name: 'close', listener: () => void): unknown;
  close(): void;
}

/** The host around QEMU: processes, /proc and the QMP sockets. */
export interface QemuSystem {
  /** Run argv to its exit (QEMU with -daemonize exits once initialised; `ip`, `qemu-img`):
   *  the exit code (null if killed at the timeout, -1 if it could not start) and stderr. */
  exec(argv: string[], timeoutMs?: number): Promise<{ code: number | null; stderr: string }>;
  /** A live process with `marker` (the QMP socket path) in its command line. */
  pidAlive(pid: number, marker: string): boolean;
  /** SIGKILL, then wait until it is gone. */
  kill(pid: number): Promise<void>;
  /** TCP ports the process listens on. */
  listeningPorts(pid: number): Promise<number[]>;
  connectQmp(path: string, opts: { logger: Logger; connectTimeoutMs: number; clock: Clock }): Promise<QmpLink>;
  /** argv made ready now and run only at run() (as exec would: its exit code and stderr): the
   *  process's start is paid ahead, off the path that waits for it. cancel() ends it unrun (and
   *  so does this agent's exit). Optional: without it the caller execs when it needs to. */
  prepare?(argv: string[]): PreparedCommand;
}

/** The taps coming up (lifecycle.ts tapsUp); `links` resolves once the links are up (the
 *  bridge's fdb entries follow: proc.ts setTapsUp), or rejects as they fail. */
export type TapsGoingUp = Promise<void> & { links: Promise<void> };

export interface PreparedCommand {
  run(timeoutMs?: number): Promise<{ code: number | null; stderr: string }>;
  cancel(): void;
}

/** What the driver keeps on disk per VM (vm.json), enough to re-attach after a restart. */
export interface VmFile {
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
  /** A held destination (tuning.holdAfterLanding): paused once landed, until vm.resume. */
  held?: boolean;
}

/** The source's mirror jobs of one storage-copy migration. */
export interface MirrorState {
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

export interface VmRecord extends VmFile {
  state: VmState;
  pid?: number;
  qmp?: QmpLink;
  /** True while migrate() runs for this VM (source side). */
  migrating: boolean;
  quitting: boolean;
  lastMigration?: MigrationProgress | MigrationResult;
  mirror?: MirrorState;
  /** A running finishIncoming() (storage-copy destination). */
  finishing?: Promise<void>;
  /** Wakes migrate()'s poll loop early when a MIGRATION or block job event arrives. */
  wake?: () => void;
  /** An event came while the poll loop was not pausing: its next pause ends at once. */
  wakePending?: boolean;
  /** The source's point of no return (docs/design.md#switchover): 'waiting' while QEMU is paused
   *  in `pre-switchover` and the controller has been told, 'continued' once `migrate-continue`
   *  went (the final state is on its way: no cancel from here). */
  switchover?: 'waiting' | 'continued';
  /** The driver asked QEMU to switch to post-copy: once continued, the destination runs the VM. */
  postcopyRequested?: boolean;
  /** QEMU accepted migrate-start-postcopy (postcopyRequested is set before it is asked). */
  postcopyStarted?: boolean;
  /** The running migration may switch to post-copy (params.postcopy: the capability is on). */
  postcopyAllowed?: boolean;
  /** How an operator forced the running migration to complete (control.ts). */
  forced?: ForceCompleteMode;
  stateWaiters: Set<() => void>;
  log: Logger;
  /** An incoming VM's taps are down until its guest runs here (lifecycle.ts tapsUp): traffic
   *  for it (a tunnel bicasting during the copy) is dropped at the bridge, not queued in the tap
   *  and replayed into the guest when it resumes. */
  tapsDown?: boolean;
  /** A held destination took its disks already (destination.ts activateDisks): its landing
   *  need not ask again (one QMP command less queued before the resume's). */
  disksActive?: boolean;
  /** A running tapsUp(). */
  tapsGoingUp?: TapsGoingUp;
  /** A held destination's `ip link set TAP up`, made ready as it landed (proc.ts prepareTapsUp). */
  tapsReady?: Map<string, PreparedCommand>;
  /** Block jobs that ended (BLOCK_JOB_COMPLETED/CANCELLED), until one of the name is ready
   *  again; the 64 latest. */
  endedJobs?: Set<string>;
  /** Epoch ms of the last MIGRATION event with status completed (QEMU's own timestamp). */
  migrationCompletedAt?: number;
  /** Epoch ms of the last STOP / RESUME event (QEMU's own timestamps, the host clock). */
  pausedAt?: number;
  resumedAt?: number;
}

/** This driver's MigrationParams.storage: the NBD server where a storage-copy destination
 *  exports its disk copies, and one export per writable disk (`device` is the source's drive
 *  id, `name` the NBD export name). A type alias, so it is a StorageHandoff as it stands. */
export type NbdStorage = { nbd: { host: string; port: number }; exports: { device: string; name: string }[] };

export interface QueryBlockJob {
  device: string;
  type: string;
  len: number;
  offset: number;
  ready?: boolean;
  status?: string;
  speed?: number;
}

export interface QueryBlock {
  device: string;
  inserted?: { 'node-name'?: string; image?: { 'virtual-size'?: number } };
}

export interface QueryMigrate {
  status?: string;
  'total-time'?: number;
  'setup-time'?: number;
  downtime?: number;
  'expected-downtime'?: number;
  /** Auto-converge's throttle of the guest CPU (present while it throttles). */
  'cpu-throttle-percentage'?: number;
  'error-desc'?: string;
  ram?: { total: number; transferred: number; remaining: number; 'dirty-pages-rate'?: number; 'dirty-sync-count'?: number; mbps?: number; 'postcopy-requests'?: number };
  'socket-address'?: { host: string; port: string }[];
}

/** QEMU's MigrationStatus values during which a migration is still in flight. */
export const ACTIVE_MIGRATION = new Set(['setup', 'active', 'postcopy-active', 'postcopy-paused', 'postcopy-recover', 'device', 'pre-switchover', 'wait-unplug', 'cancelling', 'colo']);
