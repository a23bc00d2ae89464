// The live path's effects: capability token, lightpath, destination prepared, the source's
// migration (started, or re-attached after a controller restart) up to its pause before the
// switchover, the switchover itself (docs/design.md#switchover), and the destination running.
import { VmtcError, toVmtcError } from '../../common/errors.ts';
import { clockSleep, sleep } from '../../common/clock.ts';
import type { MigrationProgress, MigrationResult } from '../../common/agent-protocol.ts';
import type { MigrationCtx, MigrationRow } from '../store.ts';
import type { LightpathRequest } from '../ports.ts';
import { err } from '../errors.ts';
import { askAgent, saveCtx, currentCtx, site, wrap, type EffectContext, type EffectFn } from './context.ts';
import { lightpathMbps, lightpathWindow, migrationTuning, mustCopyStorage, sourceParams } from './request.ts';
import { settleSourceLost } from './source-lost.ts';
import { followLiveReplica, lendForLive, lentReplica, liveReplicaDelta, type LiveReplicaUse } from '../replicas/migration.ts';
import { endAtPause, takeStoreCheck } from '../replicas/pause-check.ts';

function lightpathRequest(cx: EffectContext, row: MigrationRow): LightpathRequest {
  return {
    migrationId: row.id, vmId: row.vmId, project: row.project, src: site(cx, row.sourceHostId), dst: site(cx, row.destinationHostId),
    bandwidthMbps: lightpathMbps(row.request),
    window: lightpathWindow(row.request, row.createdAt, cx.clock.now(), cx.options.defaultDeadlineMs),
  };
}

const requestToken: EffectFn = async (cx, row) => {
  // A move of an evacuation takes over the lightpath booked ahead for it, with the grant it was
  // booked with (docs/fleet.md "Bookings"); none to take: a grant and a reservation of its own.
  const booked = await claimBooking(cx, row);
  if (booked) {
    cx.secrets.set(row.id, booked.token);
    return { event: { type: 'TOKEN_GRANTED' }, detail: { jti: booked.jti, booked: booked.reservationId }, ctxPatch: { token: { jti: booked.jti, expiresAt: booked.expiresAt }, lightpath: { key: booked.key, reservationId: booked.reservationId, provisioned: false, booked: booked.key } } };
  }
  if (!cx.aaa) return { event: { type: 'TOKEN_GRANTED' }, ctxPatch: { token: { skipped: 'no AAA configured' } } };
  try {
    const t = await cx.aaa.authorize(lightpathRequest(cx, row));
    cx.secrets.set(row.id, t.token);
    return { event: { type: 'TOKEN_GRANTED' }, detail: { jti: t.jti }, ctxPatch: { token: { jti: t.jti, expiresAt: t.expiresAt, ...(t.audience ? { audience: t.audience } : {}) } } };
  } catch (e) {
    throw wrap(e, 'VMTC_AUTHORIZATION_FAILED');
  }
};

async function claimBooking(cx: EffectContext, row: MigrationRow) {
  const ev = row.ctx.evacuationId;
  if (!ev || !cx.lightpath?.claim) return undefined;
  const req = lightpathRequest(cx, row);
  return cx.lightpath.claim({ migrationId: row.id, vmId: row.vmId, evacuationId: ev, ...(row.request.requestId ? { requestId: row.request.requestId } : {}), src: req.src, dst: req.dst, bandwidthMbps: req.bandwidthMbps })
    .catch((e: unknown) => { cx.log.warn({ code: toVmtcError(e).code }, 'booked lightpath not taken over'); return undefined; });
}

const provisionLightpath: EffectFn = async (cx, row) => {
  const token = cx.secrets.get(row.id);
  if (!cx.lightpath || token === undefined) {
    return { event: { type: 'LIGHTPATH_UP' }, ctxPatch: { lightpath: { skipped: cx.lightpath ? 'no token' : 'no broker configured' } } };
  }
  const held = currentCtx(cx, row.id).lightpath;
  if (held?.booked && held.reservationId && cx.lightpath.provision) {
    try {
      const up = await cx.lightpath.provision(held.reservationId, token);
      return { event: { type: 'LIGHTPATH_UP' }, detail: { reservationId: held.reservationId, booked: held.booked }, ctxPatch: { lightpath: { ...held, provisioned: true, ...(up.details ? { details: up.details } : {}) } } };
    } catch (e) {
      throw wrap(e, 'VMTC_LIGHTPATH_FAILED');
    }
  }
  // Record intent before asking: the broker knows the reservation by this key, so a controller
  // killed before the answer (the circuit committed and up, its id unknown here) finds it and
  // releases it (releaseLightpath, effects-rollback.ts).
  const key = row.id;
  saveCtx(cx, row.id, { lightpath: { key } });
  try {
    const lp = await cx.lightpath.setup(lightpathRequest(cx, row), token, { idempotencyKey: key });
    return { event: { type: 'LIGHTPATH_UP' }, detail: lp, ctxPatch: { lightpath: { key, reservationId: lp.reservationId, provisioned: true, ...(lp.details ? { details: lp.details } : {}) } } };
  } catch (e) {
    const ve = wrap(e, 'VMTC_LIGHTPATH_FAILED');
    const rid = (ve.details as { reservationId?: string } | undefined)?.reservationId;
    if (rid) saveCtx(cx, row.id, { lightpath: { key, reservationId: rid, provisioned: false } });
    throw ve;
  }
};

const prepareDestination: EffectFn = async (cx, row) => {
  const hub = cx.hub;
  const src = await hub.request(row.sourceHostId, 'vm.describe', { vmId: row.vmId });
  if (src.state !== 'running') throw err('VMTC_VM_NOT_RUNNING', { vmId: row.vmId, state: src.state });
  const listenHost = (row.ctx.lightpath?.details?.destinationAddress as string | undefined) ?? hub.inventory(row.destinationHostId)?.migrationAddress ?? cx.options.defaultListenHost;
  // Record intent before asking, so a rollback after a lost reply still cleans the destination.
  saveCtx(cx, row.id, { incoming: { uri: '', prepared: false } });
  // Without storage both hosts reach, the disks move too (docs/design.md#disks): the destination makes
  // empty copies and serves them over NBD on the lightpath address; the source mirrors into them
  // while the VM runs and sends the last delta at the pause. multifd and post-copy must be
  // enabled on both ends: the destination gets this migration's tuning; the spec goes unchanged.
  const copyStorage = mustCopyStorage(src.spec, hub.inventory(row.sourceHostId)?.sharedStorage, hub.inventory(row.destinationHostId)?.sharedStorage);
  // A warm replica at the destination (docs/disks.md#replicas): the destination boots from its
  // store and only deltas cross (startMigration); none: the mirror, as always. A replica lent
  // here goes back to its deltas when the migration ends without committing (finish).
  const lent = copyStorage ? await lendForLive(hub, cx.log, { migrationId: row.id, vmId: row.vmId, sourceHostId: row.sourceHostId, destinationHostId: row.destinationHostId, spec: src.spec }) : null;
  if (lent) saveCtx(cx, row.id, { incoming: { uri: '', prepared: false, replica: lent.use, held: true } });
  // With a replica the destination is held after the copy lands: the store's check may then run
  // while the final state crosses (replicas/pause-check.ts), and the VM runs there only after it.
  const tuning = { ...migrationTuning(row.request, copyStorage && !lent), ...(lent ? { holdAfterLanding: true } : {}) };
  const prepared = await hub.request(row.destinationHostId, 'vm.prepareIncoming', { spec: lent ? lent.spec : src.spec, migrationId: row.id, listenHost, tuning }, 60_000);
  const uri = prepared.uri;
  if (copyStorage && !lent && !prepared.storage) {
    // A destination that did not export its copies would boot on empty disks.
    throw err('VMTC_DESTINATION_NOT_RUNNING', { reason: 'the destination did not offer its disk copies (its driver cannot copy storage)', hostId: row.destinationHostId });
  }
  let tunnel: MigrationCtx['tunnel'] = { skipped: 'no tunnel agent' };
  if (cx.tunnel) {
    await cx.tunnel.bicast(row.vmId, site(cx, row.sourceHostId), site(cx, row.destinationHostId));
    tunnel = { bicast: true };
  }
  return {
    event: { type: 'DESTINATION_PREPARED' }, detail: { uri, listenHost, ...(prepared.storage ? { storage: prepared.storage } : {}) },
    ctxPatch: { incoming: { uri, prepared: true, ...(prepared.storage ? { storage: prepared.storage } : {}), ...(lent ? { replica: lent.use, held: true } : {}) }, tunnel },
  };
};

/** Pre-copy (and stop-and-copy): run the source's migration until it pauses before its final
 *  state and says so. The decision to let it go is the machine's (SWITCHOVER_READY). */
const startMigration: EffectFn = async (cx, row, signal) => {
  const replicaId = lentReplica(cx.hub, row.vmId, row.id);
  if (!replicaId) {
    const ready = await runMigration(cx, row, signal, 'switchover');
    return { event: { type: 'SWITCHOVER_READY' }, detail: { transferredBytes: ready.transferredBytes, totalBytes: ready.totalBytes } };
  }
  // With a replica: a delta and the digests' kept leaves (each side reads its whole disk: seconds
  // for a large one) while the VM runs, and only then the memory copy, whose source pauses as
  // soon as memory converges: the pause must not wait for them. Then the last delta once the
  // source paused before the switchover, and the digests; a failure or a mismatch fails the
  // migration here, before the point of no return (the rollback cancels it; the source runs on).
  // Between them the store follows the disks (an active mirror), so the pause has nothing of
  // the disks left to send (docs/disks.md#following); without it the last delta runs there.
  const preDelta = await liveReplicaDelta(cx.hub, cx.clock, cx.log, replicaId, 'precopy');
  const follow = await followLiveReplica(cx.hub, cx.clock, cx.log, replicaId);
  const ready = await runMigration(cx, row, signal, 'switchover');
  const t1 = cx.clock.now();
  // A held destination (prepareDestination): the store's check may run while the final state
  // crosses; the switchover waits for it before the destination runs.
  const held = currentCtx(cx, row.id).incoming?.held === true;
  const end = await endAtPause(cx.hub, cx.clock, cx.log, { migrationId: row.id, vmId: row.vmId, sourceHostId: row.sourceHostId, destinationHostId: row.destinationHostId, replicaId, overlap: held });
  const last = end.last;
  const cur = currentCtx(cx, row.id).incoming;
  const use: LiveReplicaUse = { ...(cur?.replica ?? { replicaId, preSeededBytes: 0, disks: 0 }), precopyDeltaBytes: preDelta.bytes, ...(follow ? { catchUpBytes: follow.bytes, catchUpMs: follow.ms } : {}), ...(last.mirroredBytes !== undefined ? { mirroredBytes: last.mirroredBytes } : {}), ...(last.cut ? { followCut: true } : {}), ...(last.stoppedAtCut ? { mirrorsStoppedAtCut: true } : {}), lastDeltaBytes: last.bytes, lastDeltaMs: last.ms, ...(end.deferred ? { pauseCheckMs: end.sourceMs ?? 0, storeCheckedAfterSwitchover: true } : { digestMs: cx.clock.now() - t1 }) };
  cx.log.info({ ...use }, end.deferred ? 'the changed chunks named at the pause: the disks are checked while the final state crosses' : 'replica verified at the pause: the destination holds the source\'s disks');
  return {
    event: { type: 'SWITCHOVER_READY' }, detail: { transferredBytes: ready.transferredBytes, totalBytes: ready.totalBytes, replica: use },
    ...(cur ? { ctxPatch: { incoming: { ...cur, replica: use } } } : {}),
  };
};

/** The point of no return, decided and recorded by entering this state: only now is the source
 *  told to send its final state; then the copy is followed to its end. Idempotent after a
 *  controller restart (the source answers ok for a migration already continued or completed). */
const switchover: EffectFn = async (cx, row, signal) => {
  const inc = currentCtx(cx, row.id).incoming;
  // resumeAsked: the check passed before the destination was told to run (a restarted controller).
  if (!inc?.replica?.storeCheckedAfterSwitchover || inc.resumeAsked) {
    const result = await runMigration(cx, row, signal, 'end');
    return { event: { type: 'MIGRATION_COMPLETED' }, detail: result, ctxPatch: { result: pickResult(result) } };
  }
  // The store's check runs while the final state crosses (replicas/pause-check.ts); the held
  // destination runs only once both are done. A check lost with a controller restart is not
  // taken on trust: the move rolls back (the held copy never ran).
  const check = takeStoreCheck(row.id);
  if (!check) throw err('VMTC_MIGRATION_FAILED', { phase: 'switchover', replica: inc.replica.replicaId, reason: "the disks' check was lost with a controller restart" });
  // The digests once the source's copy completed (its image written out, its bitmaps in it),
  // the store's once it closed too.
  const copyP = runMigration(cx, row, signal, 'end');
  const [copy, checkedP] = await Promise.allSettled([copyP, copyP.then(() => check.verify())]);
  if (copy.status === 'rejected') throw copy.reason;
  if (checkedP.status === 'rejected') throw checkedP.reason;
  const result = copy.value;
  const checked = checkedP.value;
  const replica: LiveReplicaUse = { ...inc.replica, digestMs: checked.ms };
  cx.log.info({ ...replica }, 'replica verified while the final state crossed: the destination holds the source\'s disks');
  // Checked and sent: the held destination is told to run now (it starts once its copy landed),
  // as an unheld one would have started by itself; recorded first (effects-rollback.ts).
  // awaitDestinationRunning asks again (idempotent) and waits for it.
  const told = { ...inc, replica, resumeAsked: true };
  saveCtx(cx, row.id, { incoming: told });
  void cx.hub.request(row.destinationHostId, 'vm.resume', { vmId: row.vmId }).catch((e: unknown) => cx.log.info({ code: toVmtcError(e).code }, 'the held destination did not start yet: asked again'));
  return { event: { type: 'MIGRATION_COMPLETED' }, detail: { ...result, replica }, ctxPatch: { result: pickResult(result), incoming: told } };
};

const awaitDestinationRunning: EffectFn = async (cx, row) => {
  const hub = cx.hub;
  const timeoutMs = cx.options.destinationRunTimeoutMs;
  try {
    // Past the switchover the destination may hold the only up-to-date copy: an agent
    // restarting there is waited for (bounded) and asked again, never taken for a failure.
    const dest = <T>(ask: () => Promise<T>) => askAgent(cx, row.destinationHostId, ask);
    // Non-live, or an operator's forced pause (migration/control.ts): the copy was made of a
    // paused VM, so the destination stays paused until told.
    // A held destination (a move with a replica: replicas/pause-check.ts) likewise, its disks
    // checked; told once, recorded first (from then on it may run: effects-rollback.ts).
    const inc = currentCtx(cx, row.id).incoming;
    if (inc?.held && !inc.resumeAsked) saveCtx(cx, row.id, { incoming: { ...inc, resumeAsked: true } });
    if (row.request.suspend || row.ctx.forced?.mode === 'pause' || inc?.held) await dest(() => hub.request(row.destinationHostId, 'vm.resume', { vmId: row.vmId }));
    const vm = await dest(() => hub.request(row.destinationHostId, 'vm.waitRunning', { vmId: row.vmId, timeoutMs }, timeoutMs + 5_000));
    const resumedAt = vm.resumedAt;
    return {
      event: { type: 'DESTINATION_RUNNING' }, detail: { state: vm.state, ...(resumedAt !== undefined ? { resumedAt } : {}) },
      ...(resumedAt !== undefined ? { ctxPatch: { result: { ...(currentCtx(cx, row.id).result ?? {}), resumedAt } } } : {}),
    };
  } catch (e) {
    throw wrap(e, 'VMTC_DESTINATION_NOT_RUNNING');
  }
};

/** Request failures that say the agent could not be asked, not that it refused. */
const UNREACHABLE = new Set(['VMTC_AGENT_NOT_CONNECTED', 'VMTC_PEER_UNREACHABLE', 'VMTC_TIMEOUT']);

export const LIVE_EFFECTS = { requestToken, provisionLightpath, prepareDestination, startMigration, switchover, awaitDestinationRunning };

/** Follow the source's live migration, streaming progress into the record. Up to 'switchover':
 *  start it (or, after a controller restart, re-attach to it) and resolve with the progress that
 *  says it paused before its final state. To the 'end': tell the paused source to continue, and
 *  resolve with its result once it completed. */
function runMigration(cx: EffectContext, row: MigrationRow, signal: AbortSignal, until: 'switchover'): Promise<MigrationProgress>;
function runMigration(cx: EffectContext, row: MigrationRow, signal: AbortSignal, until: 'end'): Promise<MigrationResult>;
function runMigration(cx: EffectContext, row: MigrationRow, signal: AbortSignal, until: 'switchover' | 'end'): Promise<MigrationProgress | MigrationResult> {
  const { hub, log } = cx;
  return new Promise<MigrationProgress | MigrationResult>((resolve, reject) => {
    let settled = false;
    /** The source runs (or ran) this migration: from here, not knowing it means it was lost. */
    let attached = false;
    let resolvingLost = false;
    let lastProgressSave = 0;
    let poll: { cancel(): void } | undefined;
    const finish = (fn: () => void) => {
      if (settled) return;
      settled = true;
      hub.off('event', onEvent);
      hub.off('connected', onConnected);
      poll?.cancel();
      signal.removeEventListener('abort', onAbort);
      fn();
    };
    const onResult = (r: MigrationResult) => {
      // A copy completes only through the switchover: one that completed before the source was
      // told to continue broke the protocol, and the rollback then finds it completed and leaves
      // the destination alone (docs/design.md#switchover).
      if (r.status === 'completed' && until === 'switchover') finish(() => reject(err('VMTC_MIGRATION_FAILED', { status: r.status, reason: 'the copy completed before the switchover was decided' })));
      else if (r.status === 'completed') finish(() => resolve(r));
      else finish(() => reject(r.error ? new VmtcError(r.error.code, 502, r.error.message, r.error.details) : err('VMTC_MIGRATION_FAILED', { status: r.status })));
    };
    const onReady = (p: MigrationProgress) => { if (until === 'switchover') finish(() => resolve(p)); };
    const onProgress = (p: MigrationProgress) => {
      const now = cx.clock.now();
      if (now - lastProgressSave >= 250 || p.status !== 'active') {
        lastProgressSave = now;
        cx.store.saveProgress(row.id, { ...p, at: now }, now);
        cx.progress(row.id, p);
      }
      if (p.status === 'device') void cx.dispatch(row.id, { event: { type: 'STOP_AND_COPY' }, expectState: 'precopy' });
      if (p.status === 'pre-switchover') onReady(p);
    };
    const onEvent = (hostId: string, name: string, data: unknown) => {
      if (hostId !== row.sourceHostId || !data || typeof data !== 'object') return;
      if ((data as { migrationId?: string }).migrationId !== row.id) return;
      if (name === 'migration.progress') onProgress(data as MigrationProgress);
      else if (name === 'migration.done') onResult(data as MigrationResult);
    };
    /** The source does not know this migration (source-lost.ts): decide from the destination,
     *  or ask again at the next poll if it cannot be asked now. */
    const onSourceLost = async (s: { migrationId?: string } | null) => {
      if (settled || resolvingLost) return;
      resolvingLost = true;
      try {
        const out = await settleSourceLost(cx, row, s);
        if (out instanceof VmtcError) finish(() => reject(out));
        else if (out) onResult(out);
      } finally {
        resolvingLost = false;
      }
    };
    const check = async () => {
      try {
        const s = await hub.request(row.sourceHostId, 'vm.migrationStatus', { vmId: row.vmId });
        const ours = !!s && (s as { migrationId?: string }).migrationId === row.id;
        // A progress snapshot (totalBytes) of an ended migration: the final result follows as an event.
        if (ours && (s.status === 'completed' || s.status === 'failed' || s.status === 'cancelled') && !('totalBytes' in s)) {
          onResult(s as MigrationResult);
        } else if (ours && s.status === 'pre-switchover') {
          onReady(s as MigrationProgress);
        } else if (!ours && attached) {
          await onSourceLost(s);
        }
      } catch (e) {
        log.debug({ code: toVmtcError(e).code }, 'status poll failed');
      }
    };
    const schedulePoll = () => {
      poll = cx.clock.setTimeout(() => {
        if (settled) return;
        void check().finally(() => { if (!settled) schedulePoll(); });
      }, cx.options.statusPollMs);
    };
    const onConnected = (hostId: string) => { if (hostId === row.sourceHostId) void check(); };
    const onAbort = () => finish(() => reject(err('VMTC_CANCELLED', { migrationId: row.id })));
    hub.on('event', onEvent);
    hub.on('connected', onConnected);
    signal.addEventListener('abort', onAbort);
    if (signal.aborted) return onAbort();

    // The switchover: the decision is recorded (this state), so the source may now send its
    // final state. The listeners are on already: its end cannot be missed.
    const proceed = async () => {
      // A source that cannot be reached now is asked again (it waits too, and holds the primary
      // copy; the request is idempotent): only its own refusal fails the migration.
      for (;;) {
        try {
          await hub.request(row.sourceHostId, 'vm.continueMigration', { vmId: row.vmId, migrationId: row.id });
          break;
        } catch (e) {
          const code = toVmtcError(e).code;
          if (settled || !UNREACHABLE.has(code)) throw e;
          log.warn({ code }, 'the source did not get the decision to continue; asking again');
          await clockSleep(cx.clock, cx.options.statusPollMs, signal);
          if (settled) return;
        }
      }
      attached = true;
      await check();
      if (!settled) schedulePoll();
    };
    const begin = async () => {
      // Re-attach if the source already runs this migration (controller restarted mid-copy).
      // Never start a second stream because a status question went unanswered: retry, then fail.
      let s: Awaited<ReturnType<typeof hub.request<'vm.migrationStatus'>>> = null;
      for (let attempt = 1; ; attempt++) {
        try {
          s = await hub.request(row.sourceHostId, 'vm.migrationStatus', { vmId: row.vmId });
          break;
        } catch (e) {
          if (attempt >= 5 || signal.aborted) throw e;
          await sleep(300 * attempt);
        }
      }
      const ours = !!s && (s as { migrationId?: string }).migrationId === row.id;
      if (s && ours) {
        log.info({ status: s.status }, 'attached to a migration already under way');
        if (!('totalBytes' in s)) return onResult(s as MigrationResult);
        if (s.status === 'pre-switchover') return onReady(s);
        if (s.status !== 'failed' && s.status !== 'cancelled') {
          attached = true;
          return schedulePoll();
        }
      }
      const cur = currentCtx(cx, row.id);
      if (cur.migrationStarted && !ours) {
        // The source was asked to start it (by a controller that then restarted) and does not
        // know it: never a second stream; decide from the destination, asking again at each poll.
        attached = true;
        schedulePoll();
        return onSourceLost(s);
      }
      if (!cur.incoming?.uri) throw err('VMTC_DESTINATION_NOT_RUNNING', { reason: 'destination was never prepared' });
      saveCtx(cx, row.id, { migrationStarted: true });
      // The same tuning the destination was prepared with (both from the request).
      await hub.request(row.sourceHostId, 'vm.migrate', { vmId: row.vmId, uri: cur.incoming.uri, params: sourceParams(row.id, migrationTuning(row.request), cur.incoming.storage) });
      attached = true;
      schedulePoll();
    };
    (until === 'end' ? proceed() : begin()).catch((e) => finish(() => reject(wrap(e, 'VMTC_MIGRATION_FAILED'))));
  });
}

function pickResult(r: MigrationResult): NonNullable<MigrationCtx['result']> {
  const out: NonNullable<MigrationCtx['result']> = {};
  if (r.downtimeMs !== undefined) out.downtimeMs = r.downtimeMs;
  if (r.totalTimeMs !== undefined) out.totalTimeMs = r.totalTimeMs;
  if (r.transferredBytes !== undefined) out.transferredBytes = r.transferredBytes;
  if (r.setupTimeMs !== undefined) out.setupTimeMs = r.setupTimeMs;
  if (r.pausedAt !== undefined) out.pausedAt = r.pausedAt;
  if (r.storageBytes !== undefined) out.storageBytes = r.storageBytes;
  if (r.postcopy) out.postcopy = true;
  if (r.postcopyRequests !== undefined) out.postcopyRequests = r.postcopyRequests;
  return out;
}
