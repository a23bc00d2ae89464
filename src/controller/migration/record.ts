// A migration's request and what the controller learns while running it (its ctx), as stored
// with the record (store.ts). Types only, and free of the machine's, so that the machine
// (machine.ts) can read a record without the store.
import type { ForceCompleteMode, MigrationLimits, MigrationParams } from '../../common/agent-protocol.ts';
import type { ErrorBody } from '../../common/errors.ts';
import type { TunnelPassiveDowntime, TunnelProbeDowntime } from '../../common/tunnel-protocol.ts';
import type { MigrationPolicy, PolicyRecord } from './policy.ts';

export interface MigrationRequest {
  vmId: string;
  destinationHostId: string;
  mode: 'live' | 'cold' | 'auto';
  maxDowntimeMs?: number;
  bandwidthMbps?: number;
  deadline?: string;
  requestId?: string;
  autoConverge?: boolean;
  postcopy?: boolean;
  multifd?: boolean;
  /** Streams with multifd (default: chosen from the lightpath, migration/tuning-default.ts). */
  multifdChannels?: number;
  /** Non-live (suspend, copy, resume), for comparison runs. */
  suspend?: boolean;
  /** Cold path: a TCP service of the guest that must answer at the destination before commit,
   *  within timeoutMs (default: the controller's destinationRunTimeoutMs, 60 s). */
  verifyTcp?: { host: string; port: number; timeoutMs?: number };
  /** Known-bad hypervisor releases (src/common/hypervisor-advisories.ts) this live migration may
   *  go ahead with, by advisory id; each becomes a warning on the record. */
  overrideAdvisories?: string[];
  /** What to do when the copy does not converge (migration/policy.ts; docs/policy.md): over the
   *  VM group's and the controller's defaults, field by field. */
  policy?: MigrationPolicy;
  /** The request named no destination: the controller chose among hosts at these sites
   *  (src/controller/fleet/placement.ts); destinationHostId is the one it chose. */
  toSites?: string[];
}

/** What the runner learns along the way; persisted as JSON with the record. */
export interface MigrationCtx {
  /** The path actually taken (auto may become cold). */
  path: 'live' | 'cold';
  /** The VM's state at the source when the request was admitted (rollback restores it). */
  sourceState?: string;
  /** Pre-checks that passed, in order. */
  checks?: string[];
  cancelRequested?: boolean;
  /** The capability token's grant (the token itself is a memory-only secret). `accountingClosed`:
   *  the AAA has the grant's `release` record (every path closes it, docs/design.md#accounting). */
  token?: { jti: string; expiresAt: number; audience?: string[]; accountingClosed?: boolean } | { skipped: string };
  /** `key`: the idempotency key the broker knows the reservation by, saved before it is asked
   *  (the id may never come back: docs/broker.md "Idempotency key").
   *  `booked`: the evacuation booking (src/controller/fleet/bookings.ts) the migration took over. */
  lightpath?: { key?: string; reservationId?: string; provisioned?: boolean; released?: boolean; skipped?: string; booked?: string; details?: Record<string, unknown> };
  /** `replica`: the warm replica the destination booted from instead of mirrored copies
   *  (src/controller/replicas/migration.ts). */
  /** held: the destination stays paused once the copy landed, until told (a live move with a
   *  followed replica checks the store while the final state crosses: docs/disks.md#following);
   *  resumeAsked: it was told (from then on it may run). */
  incoming?: { uri: string; prepared: boolean; storage?: MigrationParams['storage']; replica?: LiveReplicaUse; held?: boolean; resumeAsked?: boolean };
  tunnel?: { bicast?: boolean; pruned?: boolean; skipped?: string };
  migrationStarted?: boolean;
  /** The controller let the source send its final state (entering 'switchover', recorded with
   *  that transition): from here the destination may have received it (docs/design.md#switchover). */
  switchover?: { grantedAt: number };
  /** Client-seen downtime: the hypervisor's figure beside what the tunnel agent measured where
   *  clients' traffic enters (docs/tunnel.md "Client-seen downtime"). */
  downtime?: MigrationDowntime;
  result?: { downtimeMs?: number; totalTimeMs?: number; transferredBytes?: number; setupTimeMs?: number; pausedAt?: number; resumedAt?: number; storageBytes?: number; postcopy?: boolean; postcopyRequests?: number };
  /** Milliseconds spent in each step, by state name. */
  timings?: Record<string, number>;
  warnings?: ErrorBody[];
  /** What a terminal state deliberately left in place for an operator, and why (everything else
   *  it held is released). */
  kept?: string[];
  fallbackCold?: boolean;
  /** How the controller chose the destination when the request named none
   *  (src/controller/fleet/placement.ts decisionRecord), and the evacuation that asked. */
  placement?: Record<string, unknown>;
  evacuationId?: string;
  /** An operator forced the copy to complete (recorded before the source is asked, so that a
   *  destination that lands paused is resumed; removed if the source refuses). */
  forced?: { mode: ForceCompleteMode; at: number; by: string };
  /** The limits an operator asked for while the copy ran, in effect over the request's (each
   *  change in `changes` has what the source reported). */
  limits?: MigrationLimits;
  /** What operators changed while the copy ran, oldest first. */
  changes?: MigrationChange[];
  /** The migration policy in effect once the copy started, and what it fired (policy-watch.ts). */
  policy?: PolicyRecord;
  /** The cold path's steps (EGI D4.4). The disk URLs are secrets and never stored. */
  cold?: {
    /** Set before the source is asked to export, so a rollback always asks it to undo. */
    exportRequested: boolean;
    /** The verify address as the destination saw it before the source was powered off
     *  (host.checkReach); `checked: false` for an agent that cannot say. */
    reach?: { checked: boolean; reason: string; route?: string; probe?: string };
    priorState?: string;
    disks?: { index: number; format: string; sizeBytes: number; sha256: string }[];
    totalBytes?: number;
    expiresAt?: number;
    /** Set before the destination is asked to import, so a rollback always cleans it. */
    importRequested?: boolean;
    imported?: { bytes: number; resumedBytes: number; ms: number; mbps: number | null };
    verified?: boolean;
    /** A warm replica at the destination (src/controller/replicas/migration.ts ColdReplicaUse). */
    replica?: ColdReplicaUse;
  };
}

/** The record's `downtime`: each figure with how it was measured. */
export interface MigrationDowntime {
  hypervisor?: number;
  tunnelPassive?: TunnelPassiveDowntime;
  tunnelProbe?: TunnelProbeDowntime;
  /** The tunnel agent that measured, and its window (epoch ms). */
  tunnel?: { agent: string; from: number; to: number; error?: { code: string; message: string } };
}

/** One change an operator made to a running migration: when, who (the credential's name), what. */
export type MigrationChange =
  | { at: number; by: string; what: 'tune'; limits: MigrationLimits; previous: MigrationLimits; reported: MigrationLimits }
  | { at: number; by: string; what: 'force-complete'; mode: ForceCompleteMode };

/** A cold migration's use of a warm replica at its destination (src/controller/replicas/migration.ts):
 *  before the power-off a delta and the kept digests (`precopyDeltaBytes`, `precopyDeltaMs`,
 *  `keptDigestMs`, `keptAt`), after it the last delta and the digests, each side's `digest`
 *  incremental (re-read `readChunks` chunks) or full; `used: false` with `code` when the store
 *  could not be used. */
export interface ColdReplicaUse {
  replicaId: string;
  used?: boolean;
  code?: string;
  precopyDeltaBytes?: number;
  precopyDeltaMs?: number;
  keptDigestMs?: number;
  /** Opening the last delta's store export and connecting the source to it, before the power-off. */
  connectAheadMs?: number;
  keptAt?: { id: string; seq: number };
  /** When the source was asked to power off (clock ms), after the kept digests. */
  powerOffAt?: number;
  /** The store followed the disks (docs/disks.md#following): the catch-up delta sent once the
   *  mirrors ran, and what the mirrors wrote until the pause (then the last delta is 0 bytes). */
  catchUpBytes?: number;
  catchUpMs?: number;
  mirroredBytes?: number;
  /** The mirrors were cut at the source's stop (their writes in flight not waited for): the
   *  store's export closed once the last of them was in (docs/disks.md#following). */
  followCut?: boolean;
  /** Their jobs were stopped at the source's stop too: the pause only waited for that. */
  mirrorsStoppedAtCut?: boolean;
  lastDeltaBytes?: number;
  lastDeltaMs?: number;
  preSeededBytes?: number;
  digestMs?: number;
  digest?: { source: 'incremental' | 'full'; store: 'incremental' | 'full' };
  readChunks?: number;
  disks?: number;
}

/** A live migration's use of a warm replica at its destination (src/controller/replicas/migration.ts). */
export interface LiveReplicaUse {
  replicaId: string;
  preSeededBytes: number;
  /** Bytes of the delta sent while memory was pre-copied, and of the last one (source paused). */
  precopyDeltaBytes?: number;
  /** The store followed the disks (docs/disks.md#following): the catch-up delta sent once the
   *  mirrors ran, and what the mirrors wrote until the pause (then the last delta is 0 bytes). */
  catchUpBytes?: number;
  catchUpMs?: number;
  mirroredBytes?: number;
  lastDeltaBytes?: number;
  lastDeltaMs?: number;
  digestMs?: number;
  /** The disks were checked while the final state crossed (the destination held until then):
   *  the pause took pauseCheckMs, the check digestMs from then on. */
  storeCheckedAfterSwitchover?: boolean;
  /** What the pause spent on the disks then (the mirrors stopped, the changed chunks named). */
  pauseCheckMs?: number;
  disks: number;
}
