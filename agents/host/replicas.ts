// The host agent's side of replicas (docs/disks.md#replicas): the replica.* requests, checked
// against their schemas (src/common/agent-schemas.ts AGENT_PARAMS) and handed to the driver's
// disk-state operations (ReplicaOps). The controller decides when a seed, a delta or a removal
// happens (src/controller/replicas/); an agent only does one step when asked, so a restarted
// agent has nothing of its own to resume. A driver without disk-state operations refuses every
// step with VMTC_HOST_DISK_UNSUPPORTED.
import type { ErrorBody } from '../../src/common/errors.ts';
import { toVmtcError } from '../../src/common/errors.ts';
import type { HostMethods, ReplicaCheckpoint, ReplicaDigest, ReplicaDigestAsk, ReplicaStoreHandoff, ReplicaTransfer, VmSpec } from '../../src/common/agent-protocol.ts';
import { AGENT_PARAMS, type ReplicaMethod } from '../../src/common/agent-schemas.ts';
import type { Logger } from '../../src/common/log.ts';
import { hostError } from './errors.ts';

/** The optional disk-state operations of a hypervisor driver (HypervisorDriver.replicas). Every
 *  method fails with a VMTC_HOST_DISK_* code. The destination's: openStore, closeStore,
 *  removeStore, digestStore; the source's: send, lag, dropCheckpoints, digestSource. */
export interface ReplicaOps {
  /** Create (expect null: a seed; a store that holds nothing is replaced) and export the store of
   *  replica `replicaId` for the VM `spec` on listenHost, for one transfer. Refused with
   *  VMTC_HOST_DISK_DELTA_REJECTED when the store does not hold `expect`. */
  openStore(replicaId: string, spec: VmSpec, listenHost: string, expect: ReplicaCheckpoint | null): Promise<ReplicaStoreHandoff>;
  /** End the export; with `transfer`, first record the checkpoint the store holds now. */
  /** A store digest asked while the store closes waits for the close (and its record). */
  closeStore(replicaId: string, transfer?: ReplicaTransfer, opts?: { waitClients?: boolean }): Promise<ReplicaCheckpoint | null>;
  /** Delete the store (idempotent). With keepImages only its records and exports go: its images
   *  became a VM's disks (a committed live move with the replica). */
  removeStore(replicaId: string, opts?: { keepImages?: boolean }): Promise<void>;
  /** The path of each disk of the store, in disk order (a cold move with a replica boots them). */
  storePaths(replicaId: string): Promise<string[]>;
  /** Source: a full copy (from null) or the delta since `from`, under checkpoint `checkpointId`. A
   *  failed transfer leaves `from` as it was and no new checkpoint. */
  send(vmId: string, replicaId: string, store: ReplicaStoreHandoff, from: ReplicaCheckpoint | null, checkpointId: string): Promise<ReplicaTransfer>;
  /** Source: the copy rate of the seeds and deltas from now on, bytes/s (0: none), for every
   *  replica of the host (replica.limit, or a send's rateBytesPerS). */
  limit?(bytesPerSecond: number): void;
  /** Source, a live move with the replica (docs/disks.md#following): from now on mirror every
   *  write of the running VM's disks into `store` (opened for the delta from `from`), then send
   *  that delta under `checkpointId`. Optional: a driver without it moves the last delta in the
   *  pause instead. */
  follow?(vmId: string, replicaId: string, store: ReplicaStoreHandoff, from: ReplicaCheckpoint, checkpointId: string): Promise<ReplicaTransfer>;
  /** Source, before a cold move's power-off: connect to `store`'s exports now (local relays), so
   *  the last delta after the power-off does not pay the connection's round trips. Optional. */
  preconnect?(vmId: string, replicaId: string, store: ReplicaStoreHandoff): Promise<{ relays: number }>;
  /** Source: stop following (idempotent); the bytes the mirrors wrote, whether any ran, and the
   *  error of one that failed (the store then misses writes). */
  unfollow?(vmId: string, replicaId: string): Promise<{ bytes: number; following: boolean; error?: string; cut?: boolean; stoppedAtCut?: boolean }>;
  /** Source: the VM stopped for its migration's end: cut its follows now, without waiting for
   *  the mirrored writes in flight (qemu-follow.ts cutFollows). Optional. */
  cut?(vmId: string, ended: (jobId: string) => boolean): void;
  /** Source: bytes written to the VM's disks since `from`. */
  lag(vmId: string, replicaId: string, from: ReplicaCheckpoint): Promise<number>;
  /** Source: remove every checkpoint of the replica except `keep` (idempotent). */
  dropCheckpoints(vmId: string, replicaId: string, keep?: ReplicaCheckpoint): Promise<void>;
  /** Source, once VM `spec` left this host for good (a committed move; it was destroyed here, so
   *  dropCheckpoints no longer finds it): every replica checkpoint its disks still carry, of any
   *  replica (the backend's removeAllCheckpoints). Returns what went. */
  dropDiskCheckpoints?(spec: VmSpec): Promise<string[]>;
  /** Once VM `spec` left this host for good (a committed move destroyed it here): the images of
   *  replica stores it ran from (a live move with the replica had booted it there; the replica
   *  was consumed, so no store record is left beside them) are deleted. Images with a store
   *  record (a replica still kept here) and disks anywhere else are never touched. Returns the
   *  paths deleted. */
  removeConsumedStores?(spec: VmSpec): Promise<string[]>;
  /** Digests of the VM's disks (source) or the store's (destination). `ask`: the incremental
   *  form (ReplicaDigestAsk); an implementation may ignore it and always read every chunk. */
  digestSource(vmId: string, ask?: ReplicaDigestAsk & { replicaId: string }): Promise<ReplicaDigest>;
  digestStore(replicaId: string, ask?: ReplicaDigestAsk): Promise<ReplicaDigest>;
  close?(): Promise<void>;
}

type ReplicaHandlers = { [M in ReplicaMethod]: (p: HostMethods[M][0]) => Promise<HostMethods[M][1]> };

/** The replica.* handlers of a host agent over its driver's operations. */
/** `activateDisks`: the driver's (a held destination takes its disks: closeStore activateVmId). */
export function replicaHandlers(ops: ReplicaOps | undefined, log: Logger, activateDisks?: (vmId: string) => Promise<{ ms: number }>): ReplicaHandlers {
  const checked = <M extends ReplicaMethod>(method: M, p: unknown): HostMethods[M][0] => {
    const problems = AGENT_PARAMS[method]!.problems(p);
    if (problems.length) throw hostError('VMTC_HOST_BAD_PARAMS', { field: problems[0]!.path.replace(/^\//, '') || 'params', problems });
    return p as HostMethods[M][0];
  };
  const need = (): ReplicaOps => {
    if (!ops) throw hostError('VMTC_HOST_DISK_UNSUPPORTED', { reason: "this host's hypervisor driver has no disk-state operations" });
    return ops;
  };
  return {
    'replica.openStore': async (p) => {
      const q = checked('replica.openStore', p);
      return { store: await need().openStore(q.replicaId, q.spec, q.listenHost, q.expect) };
    },
    'replica.closeStore': async (p) => {
      const q = checked('replica.closeStore', p);
      const holds = await need().closeStore(q.replicaId, q.transfer, q.waitClients ? { waitClients: true } : {});
      if (!q.activateVmId) return { holds };
      // The store's files are the held destination's disks: nothing else holds them now. A
      // refusal costs only time (the landing, or the resume, activates them).
      const activated = activateDisks
        ? await activateDisks(q.activateVmId).then((r) => ({ ms: r.ms }), (e: unknown) => ({ error: String((e as Error).message ?? e).slice(0, 2000) }))
        : { error: 'this host\'s driver takes a VM\'s disks only as it runs' };
      return { holds, activated };
    },
    'replica.removeStore': async (p) => {
      const q = checked('replica.removeStore', p);
      await need().removeStore(q.replicaId, q.keepImages ? { keepImages: true } : {});
      log.info({ replicaId: q.replicaId, keepImages: !!q.keepImages }, 'replica store removed');
      return { ok: true };
    },
    'replica.storePaths': async (p) => {
      const q = checked('replica.storePaths', p);
      return { paths: await need().storePaths(q.replicaId) };
    },
    'replica.send': async (p) => {
      const q = checked('replica.send', p);
      if (q.rateBytesPerS !== undefined) need().limit?.(q.rateBytesPerS);
      const t = await need().send(q.vmId, q.replicaId, q.store, q.from, q.checkpointId);
      log.info({ replicaId: q.replicaId, vmId: q.vmId, kind: t.kind, checkpoint: t.checkpoint.id, bytes: t.bytes, ms: t.ms }, 'replica transfer sent');
      return t;
    },
    'replica.follow': async (p) => {
      const q = checked('replica.follow', p);
      const o = need();
      if (!o.follow) throw hostError('VMTC_HOST_DISK_UNSUPPORTED', { reason: "this host's driver cannot mirror writes into a store" });
      const t = await o.follow(q.vmId, q.replicaId, q.store, q.from, q.checkpointId);
      log.info({ replicaId: q.replicaId, vmId: q.vmId, checkpoint: t.checkpoint.id, bytes: t.bytes, ms: t.ms }, 'replica followed: writes mirrored into the store, catch-up delta sent');
      return t;
    },
    'replica.unfollow': async (p) => {
      const q = checked('replica.unfollow', p);
      const o = need();
      if (!o.unfollow) return { bytes: 0, following: false };
      const r = await o.unfollow(q.vmId, q.replicaId);
      if (r.following) log.info({ replicaId: q.replicaId, vmId: q.vmId, bytes: r.bytes, ...(r.error ? { error: r.error } : {}), ...(r.cut ? { cut: true } : {}) }, 'replica no longer followed');
      return r;
    },
    'replica.limit': async (p) => {
      const q = checked('replica.limit', p);
      need().limit?.(q.rateBytesPerS);
      log.info({ replicaId: q.replicaId, rateBytesPerS: q.rateBytesPerS }, 'replica copy rate set');
      return { ok: true };
    },
    'replica.preconnect': async (p) => {
      const q = checked('replica.preconnect', p);
      const o = need();
      if (!o.preconnect) return { relays: 0 };
      return o.preconnect(q.vmId, q.replicaId, q.store);
    },
    'replica.lag': async (p) => {
      const q = checked('replica.lag', p);
      return { bytes: await need().lag(q.vmId, q.replicaId, q.from) };
    },
    'replica.dropCheckpoints': async (p) => {
      const q = checked('replica.dropCheckpoints', p);
      await need().dropCheckpoints(q.vmId, q.replicaId, q.keep);
      return { ok: true };
    },
    'replica.digest': async (p) => {
      const q = checked('replica.digest', p);
      const ask: ReplicaDigestAsk = { ...(q.keepAs ? { keepAs: q.keepAs } : {}), ...(q.since ? { since: q.since } : {}), ...(q.changed ? { changed: q.changed } : {}) };
      if (q.side === 'store') return need().digestStore(q.replicaId, ask);
      if (!q.vmId) throw hostError('VMTC_HOST_BAD_PARAMS', { field: 'vmId' });
      return need().digestSource(q.vmId, { replicaId: q.replicaId, ...ask });
    },
  };
}

/** A step after a committed move destroyed VM `spec` here, on the disks it left (logged and
 *  returned, never thrown: the move is committed, the controller records an error as a warning).
 *  Undefined when the driver has no such step. */
async function afterLeaving<K extends string>(run: ((spec: VmSpec) => Promise<string[]>) | undefined, key: K, spec: VmSpec, log: Logger, what: string): Promise<Record<K, string[]> | { error: ErrorBody } | undefined> {
  if (!run) return undefined;
  try {
    const done = await run(spec);
    if (done.length) log.info({ vmId: spec.vmId, [key]: done }, `${what}: done on the disks the VM left`);
    return { [key]: done } as Record<K, string[]>;
  } catch (e) {
    const error = toVmtcError(e).toJSON();
    log.warn({ vmId: spec.vmId, code: error.code }, `${what}: failed on the disks the VM left`);
    return { error };
  }
}

/** vm.destroy with dropCheckpoints: the replica checkpoints left on the VM's disks go
 *  (docs/disks.md#replicas). */
export const dropLeftCheckpoints = (ops: ReplicaOps | undefined, spec: VmSpec, log: Logger) =>
  afterLeaving(ops?.dropDiskCheckpoints?.bind(ops), 'dropped', spec, log, 'dropping the replica checkpoints');

/** vm.destroy with leftForGood: the consumed replica stores the VM ran from go
 *  (ReplicaOps.removeConsumedStores). */
export const removeLeftStores = (ops: ReplicaOps | undefined, spec: VmSpec, log: Logger) =>
  afterLeaving(ops?.removeConsumedStores?.bind(ops), 'removed', spec, log, 'deleting the consumed replica store images');

/** Checkpoint ids of a replica: `<replicaId>-<seq>` (agents/host/disks/backend.ts CHECKPOINT_ID). */
export const checkpointIdOf = (replicaId: string, seq: number): string => `${replicaId}-${seq}`;
/** Whether a checkpoint id belongs to the replica. */
export const isReplicaCheckpoint = (replicaId: string, id: string): boolean => id.startsWith(`${replicaId}-`) && /^\d+$/.test(id.slice(replicaId.length + 1));
