// The shape of `turntable.json` (documented in the README). One file per run: the options used,
// what the emulated lightpath really did, one entry per migration with every probe's downtime,
// and a summary over the live migrations. All times are milliseconds; absolute times are epoch
// milliseconds on the lab machine's single clock (host and client namespaces share it).
import type { MigrationBreakdown } from './breakdown.ts';
import type { DelayLineSched } from '../delay-line-sched.ts';

export type { MigrationBreakdown } from './breakdown.ts';

export interface TurntableConfig {
  rttMs: number;
  rateMbps: number;
  /** Which delay line relayed the lightpath: the Node.js one or the C one (absent in files of
   *  older runs: node). */
  delayLine?: 'node' | 'c';
  memoryMb: number;
  /** Guest workload: dirty rewrites memory, disk writes the data disk, both does both. */
  load: 'none' | 'dirty' | 'disk' | 'both';
  /** The guest's qcow2 data disk (`--disk-mb`; 0 or absent: none), how much of it was written
   *  before the guest started (0x5a), the disk load (lab/turntable/disk.ts diskLoadFor) and which
   *  rounds pre-seed a replica (`--replica`). Absent in older files. */
  diskMb?: number;
  diskFillMb?: number;
  diskLoad?: { kibPerS: number; windowMb: number; offsetMb: number } | null;
  replica?: 'off' | 'on' | 'both';
  /** Seconds between the replica's periodic deltas (one is waited for before each move). */
  replicaIntervalS?: number;
  /** Share of guest memory rewritten by the dirty load (MB) and its period; 0 when load is none. */
  dirtyMb: number;
  dirtyPeriodMs: number;
  rounds: number;
  /** Probe periods. */
  pingIntervalMs: number;
  udpIntervalMs: number;
  serialPeriodMs: number;
  clockPeriodUs: number;
  /** Migration parameters sent to the controller. */
  bandwidthMbps: number;
  maxDowntimeMs: number;
  /** How a live migration under load is made to converge: QEMU's auto-converge (throttles the
   *  guest's vCPUs) or post-copy (the guest moves after the first full pass and fetches the pages
   *  still missing on demand). Only applied with load dirty; absent in files of older runs. */
  converge?: 'auto-converge' | 'postcopy';
  /** Tuning in flight (`--retune-after-ms` …): every live migration is PATCHed once, `afterMs`
   *  after its copy started (state precopy), with these limits. Absent when off. */
  retune?: RetunePlan;
  out: string;
  startedAt: string;
  /** `host.accel`: what the run used and what the host offers (text). */
  host: { kernel: string; cpus: number; qemu: string; accel: string };
  /** QEMU's accelerator for the guest (`--accel`): a TCG run's figures include TCG's own costs
   *  (retranslation after a resume). Absent in older files: tcg. */
  accel?: 'tcg' | 'kvm';
  /** The delay line's queue bound (ms at the line rate) and how it was chosen: `bdp` = one
   *  bandwidth-delay product of the reserved rate (lab/turntable/instrument.ts bdpQueueMs),
   *  `given` = `--queue-ms`. Absent in older files: 20 ms. */
  queueMs?: number;
  queueSizing?: 'bdp' | 'given';
  /** How the kernel scheduled the delay line (its listening line; lab/delay-line-sched.ts). */
  delayLineSched?: DelayLineSched | null;
  /** The guest: idle, or populated with `fillMb` MiB of non-zero data written once at boot before
   *  it reported ready (`--guest populated`, `--fill-mb`). Absent in older files: idle. */
  guest?: 'idle' | 'populated';
  fillMb?: number;
  /** What the populated guest reported on its console before the first move (VMTC-FILL): MiB
   *  written and how long it took (guest clock, ms). */
  fill?: { mb: number; ms: number };
  /** One bulk TCP flow across the same lightpath and delay line before the rounds (lab/turntable/
   *  bulk.ts): the reference for summary.copyVsBulk. Absent in older files or with --bulk-seconds 0. */
  bulkTcp?: BulkTcpFigure;
}

/** One bulk TCP flow across the lab's lightpath (lab/turntable/bulk.ts measures it). */
export interface BulkTcpFigure {
  /** Delivered over the whole flow (first byte → last byte at the receiver), Mbit/s. */
  mbps: number;
  /** The second half of the flow (after slow start), Mbit/s; null when too short to say. */
  steadyMbps: number | null;
  bytes: number;
  ms: number;
  /** The namespaces' congestion control (sysctl). */
  congestionControl: string;
  /** Datagrams the delay line dropped (queue full) during the flow, both directions. */
  drops: number;
  /** The lightpath's reserved rate the flow ran at (htb). */
  bandwidthMbps: number;
  /** The least of 4 pings across the same lightpath before the flow started (idle), ms: the
   *  run's `emulator.rttMs` (null: no answer). Absent in older files. */
  idleRttMs?: number | null;
}

/** A change of a running migration's limits (PATCH /v1/migrations/:id), at least one of the two. */
export interface RetunePlan {
  afterMs: number;
  bandwidthMbps?: number;
  maxDowntimeMs?: number;
}

/** What came of a migration's retune: when it was sent (ms after the copy started), what it
 *  asked, and the answer. Not ok with the error's `code` (VMTC_MIGRATION_NOT_TUNABLE when the copy
 *  had already ended: recorded, not a failure of the migration); `reported` is what the source
 *  read back from QEMU (the record's last `changes` entry). */
export interface RetuneRecord {
  atMs: number;
  bandwidthMbps?: number;
  maxDowntimeMs?: number;
  ok: boolean;
  /** HTTP status of the PATCH (0: it could not be sent). */
  status: number;
  code?: string;
  /** The migration's state in the answer (200) or the error's `details.state` (409). */
  state?: string;
  reported?: { bandwidthMbps?: number; maxDowntimeMs?: number };
}

export interface TurntableEmulator {
  nominalMbps: number;
  /** Highest per-second rate the delay line delivered during the run (both directions). */
  deliveredMbps: number;
  /** Round-trip time measured through the lightpath (ping between the sites' overlay addresses). */
  rttMs: number;
  queueMaxMs: number;
  drops: number;
}

export interface DowntimeFigures {
  /** QEMU's own figure (query-migrate `downtime`); for non-live: null (QEMU reports none). */
  hypervisor: number | null;
  /** In-guest clock probe: null when the guest's clocks did not see the pause (see findings). */
  internal: number | null;
  /** Silence between the last heartbeat at the source and the first at the destination. */
  serial: number | null;
  /** Longest gap between replies of the 50 ms ping (paper Table 3). */
  ping: number | null;
  /** Longest gap between replies of the 2 ms UDP echo probe. */
  udp: number | null;
  /** The tunnel agent's own figures from the migration record (docs/tunnel.md "Client-seen
   *  downtime"): longest gap between the VM's frames coming back through the tunnel, and between
   *  replies of its 20 ms ICMP echo, from bicast to prune. Absent in older results. */
  tunnelPassive?: number | null;
  tunnelProbe?: number | null;
}

/** Probe samples around the switchover, as offsets in ms from `t0`. */
export interface MigrationTimeline {
  /** Reference instant (epoch ms): the last heartbeat seen at the source, else the start of the UDP gap. */
  t0: number;
  /** The window kept, relative to t0. */
  fromMs: number;
  toMs: number;
  /** Reply arrival offsets (ms from t0). */
  ping: number[];
  udp: number[];
  /** Heartbeat arrival offsets at the source's and the destination's host side. */
  serialSource: number[];
  serialDestination: number[];
  /** Marks from the controller/QEMU (offsets): e.g. "stopcopy", "committing", "activating". */
  marks: { label: string; at: number }[];
}

export interface TurntableMigration {
  round: number;
  from: string;
  to: string;
  mode: 'live' | 'nonlive';
  ok: boolean;
  migrationId: string;
  state: string;
  error?: { code: string; message: string };
  downtimeMs: DowntimeFigures;
  /** Probes lost during the migration (no reply). */
  lost: { ping: number; udp: number; serial: number };
  /** UDP probes answered twice during the migration (countAnsweredTwice): traffic that waited for
   *  the destination while the source still answered it, then replayed into the resumed guest. */
  answeredTwice: { udp: number };
  /** From the migration request to the controller's `completed`. */
  totalMs: number;
  /** Controller time before the first page moved: token, lightpath, destination prepare. */
  controlPlaneMs: number;
  /** QEMU's total migration time (first page to completion). */
  hypervisorTotalMs: number | null;
  bytes: number;
  throughputMbps: number | null;
  tcpSessionSurvived: boolean;
  /** The guest's memory check after the move (lab/guest/verify.ts): with the dirty load, whether
   *  a whole pass over its pages ran afterwards and found each as written; `evidence` is the first
   *  line of damage it printed (mismatch, panic, BUG, oops, corruption, a new boot). Absent in
   *  files of older runs. */
  memory?: { verified: boolean; passesAfter: number; evidence?: string };
  /** With `config.retune`: the PATCH made during this (live) migration. */
  retuned?: RetuneRecord;
  /** The data disk's figures (with --disk-mb; lab/turntable/disk.ts diskFigures). */
  disk?: TurntableDisk;
  /** What the delay line delivered during this migration; `reliable` false (with `reasons`) when
   *  it dropped datagrams or fell short of the reserved rate while the copy wanted it
   *  (lab/turntable/instrument.ts judgeEmulator); `intervalsJudged`: its per-second reports
   *  wholly inside the copy. The three are absent in older files. */
  emulator: { peakMbps: number; queueMaxMs: number; drops: number; reliable?: boolean; reasons?: string[]; intervalsJudged?: number };
  /** False when the delay line may have moved this migration's figures (emulator.reasons): it is
   *  left out of the summary's percentiles and ratio and listed in the findings. Absent in older
   *  files: true. */
  reliable?: boolean;
  /** Where the client-seen downtime went, step by step (lab/turntable/breakdown.ts). Absent in
   *  older files. */
  breakdown?: MigrationBreakdown;
  /** The controller's per-state durations (ms). */
  timings: Record<string, number>;
  /** Where the VM ran afterwards, by the agents' account (must be exactly one place). */
  placesAfter: string[];
  timeline: MigrationTimeline;
}

export interface Percentiles { p50: number | null; p95: number | null; max: number | null; n: number }

/** One migration's disk: what crossed at migration time and, with a replica, before it. Bytes
 *  of disk data as the agents count them, except the delay-line figures (UDP payload, VXLAN
 *  framing included, both directions: memory too for the migration's own lightpath). */
export interface TurntableDisk {
  diskMb: number;
  /** A replica was pre-seeded at the destination for this move, and the move used it. */
  replica: boolean;
  replicaUsed: boolean;
  replicaId?: string;
  /** Disk bytes moved by the migration: deltas (pre-copy + at the pause) with a replica, the
   *  mirror's copy without. */
  bytesAtMigration: number;
  mirrorBytes: number;
  precopyDeltaBytes: number | null;
  /** The store followed the disks (docs/disks.md#following): catch-up delta + mirrored writes. */
  followBytes: number | null;
  lastDeltaAtPauseBytes: number | null;
  lastDeltaAtPauseMs: number | null;
  digestMs: number | null;
  /** Before the migration: the seed, the periodic deltas after it and the last of them. */
  seedBytes: number | null;
  replicaDeltaBytes: number | null;
  replicaLastDeltaBytes: number | null;
  /** What the seeding lightpath's delay line delivered (seed + deltas crossed it), and how long
   *  seeding took (lightpath up to warm). */
  seedDelayLineBytes: number | null;
  seedMs: number | null;
  /** What the migration's lightpath's delay line delivered (memory and disk). */
  delayLineBytes: number;
  /** The most the disk load can dirty between two syncs: its window (lab/turntable/disk.ts). */
  writtenBoundBytes: number;
}

/** With vs without a replica over the counted live migrations that had a disk (absent without). */
export interface DiskComparison {
  with: { n: number; bytesAtMigration: Percentiles; udp: Percentiles; seedBytes: Percentiles };
  without: { n: number; bytesAtMigration: Percentiles; udp: Percentiles };
}

export interface TurntableSummary {
  ping: Percentiles;
  udp: Percentiles;
  serial: Percentiles;
  hypervisor: Percentiles;
  /** The tunnel agent's figures over the live migrations, and their agreement with the UDP probe:
   *  |tunnel figure - udp| per migration (absent in older results). */
  tunnelPassive?: Percentiles;
  tunnelProbe?: Percentiles;
  agreement?: { passiveVsUdp: Percentiles; probeVsUdp: Percentiles };
  /** The non-live migration's client-seen downtime (its UDP gap, else its ping gap). */
  nonLiveElapsedMs: number | null;
  /** Median over live migrations of the client-seen downtime (UDP gap, else ping gap). */
  liveClientMedianMs: number | null;
  /** nonLiveElapsedMs / liveClientMedianMs (paper §6.4). */
  liveNonLiveRatio: number | null;
  liveOk: number;
  liveTotal: number;
  /** Live migrations the percentiles and the ratio are over: ok and reliable. Absent in older files. */
  liveCounted?: number;
  /** Migrations (any mode) marked unreliable, as "mode round (id)". Absent in older files. */
  unreliable?: string[];
  /** The breakdown's steps over the counted live migrations (absent in older files). */
  breakdown?: Record<'pauseToLastPage' | 'lastPageToResume' | 'resumeToHeartbeat' | 'heartbeatToReply' | 'total', Percentiles>;
  /** Which guest the ratio is for (config.guest). */
  guest?: 'idle' | 'populated';
  /** Hypervisor total ÷ (bytes ÷ bulk-TCP rate of config.bulkTcp) over the counted live migrations
   *  (README's goal: ≤ 1.2, plus one RTT). */
  copyVsBulk?: Percentiles;
  disk?: DiskComparison;
}

export interface TurntableResult {
  version: 1;
  config: TurntableConfig;
  emulator: TurntableEmulator;
  migrations: TurntableMigration[];
  summary: TurntableSummary;
  /** Observations made during the run (e.g. the internal probe's availability). */
  findings: string[];
  finishedAt: string;
  durationMs: number;
}

/** The paper's figures (Travostino et al., iGRID 2005, §6), shown beside a run's. */
export const PAPER = {
  /** Table 1: downtime at iGRID 2005 (Amsterdam–San Diego, 198 ms RTT), application-level. */
  table1: { rttMs: 198, downtimeMsRange: [800, 1600] as [number, number] },
  /** Table 2: lab (175 ms RTT): internal and external (serial, oscilloscope) measurement. */
  table2: { rttMs: 175, internalMs: 315, externalMs: 230 },
  /** Table 3: the same as seen by a client pinging every 50 ms. */
  table3: { rttMs: 175, pingMs: 3810, pingIntervalMs: 50 },
  /** §6.4: non-live vs live. */
  ratio: { text: 'non-live migration took one to two orders of magnitude longer than the live downtime' },
};
