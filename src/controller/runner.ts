// The runner performs the effects the pure state machine (machine.ts) asks for, and feeds the
// outcomes back as events. Events for one migration are applied one at a time; each effect
// remembers the state it was started in and its outcome is dropped if the migration has moved
// on meanwhile (for example a cancel arrived), so a late reply can never drive a transition.
import { EventEmitter } from 'node:events';
import type { Logger } from '../common/log.ts';
import type { Clock, Ids } from '../common/clock.ts';
import { VmtcError, toVmtcError, type ErrorBody } from '../common/errors.ts';
import type { ColdExport, ColdProgress, MigrationProgress, MigrationResult, VmInfo } from '../common/agent-protocol.ts';
import { CANCELLABLE, TERMINAL, transition, type Effect, type MigrationEvent, type MigrationState } from './machine.ts';
import type { ControllerStore, MigrationCtx, MigrationRow } from './store.ts';
import type { AuthorizationPort, HubPort, LightpathPort, LightpathRequest, TunnelPort } from './ports.ts';
import { err } from './errors.ts';

export interface RunnerOptions {
  /** How long the destination may take to report the VM running after the last page. */
  destinationRunTimeoutMs: number;
  /** Default deadline when a request gives none. */
  defaultDeadlineMs: number;
  /** Safety-net poll of the source agent while waiting for a migration to end. */
  statusPollMs: number;
  /** Address the destination listens on when its inventory names no migration address. */
  defaultListenHost: string;
  /** A destination agent gone this long while its migration can still be undone fails the
   *  migration with VMTC_AGENT_LOST (and rolls it back), instead of waiting for the deadline: a
   *  dead host's migration socket can hang for many minutes. A lost *source* is waited for: it
   *  holds the primary copy, and the controller asks it rather than guess (default 60 s). */
  agentLostMs?: number;
}

export interface RunnerDeps {
  store: ControllerStore;
  hub: HubPort;
  logger: Logger;
  clock: Clock;
  ids: Ids;
  options: RunnerOptions;
  aaa?: AuthorizationPort;
  lightpath?: LightpathPort;
  tunnel?: TunnelPort;
}

interface Live {
  abort: AbortController;
  deadline?: { cancel(): void };
}

const NOT_FOUND = /NOT_FOUND$/;

export class MigrationRunner extends EventEmitter {
  private readonly live = new Map<string, Live>();
  private readonly queues = new Map<string, Promise<unknown>>();
  private closed = false;

  /** Watchdogs of lost destination agents, by migration id. */
  private readonly lost = new Map<string, { cancel(): void }>();

  constructor(private readonly d: RunnerDeps) {
    super();
    d.hub.on('disconnected', this.onDisconnected);
    d.hub.on('connected', this.onConnected);
  }

  private readonly onDisconnected = (hostId: string): void => {
    if (this.closed) return;
    const ms = this.d.options.agentLostMs ?? 60_000;
    for (const id of this.live.keys()) {
      const row = this.d.store.migration(id);
      if (!row || row.destinationHostId !== hostId || !CANCELLABLE.has(row.state) || this.lost.has(id)) continue;
      this.log(row).warn({ lostHostId: hostId, afterMs: ms }, 'destination agent disconnected; waiting for it to come back');
      this.lost.set(id, this.d.clock.setTimeout(() => {
        this.lost.delete(id);
        const cur = this.d.store.migration(id);
        if (!cur || !CANCELLABLE.has(cur.state) || this.d.hub.isConnected(hostId)) return;
        void this.dispatch(id, { type: 'FAIL' }, { agentLost: hostId }, { error: err('VMTC_AGENT_LOST', { hostId, role: 'destination', afterMs: ms, state: cur.state }).toJSON(), expectState: cur.state });
      }, ms));
    }
  };

  private readonly onConnected = (hostId: string): void => {
    for (const [id, t] of this.lost) {
      if (this.d.store.migration(id)?.destinationHostId === hostId) {
        t.cancel();
        this.lost.delete(id);
      }
    }
  };

  private log(row: Pick<MigrationRow, 'id' | 'vmId' | 'sourceHostId' | 'destinationHostId'>): Logger {
    return this.d.logger.child({ migrationId: row.id, vmId: row.vmId, hostId: row.sourceHostId, destHostId: row.destinationHostId });
  }

  /** Start driving a newly created migration (state 'prechecking'). */
  start(row: MigrationRow): void {
    this.arm(row);
    void this.dispatch(row.id, { type: 'PRECHECKS_PASSED' }, { checks: row.ctx.checks }).then(() =>
      this.dispatch(row.id, { type: row.ctx.path === 'cold' ? 'START_COLD' : 'START_LIVE' }));
  }

  /** Operator cancel (REST). Throws a coded error if the state does not allow it. */
  async cancel(id: string): Promise<MigrationRow> {
    const row = this.d.store.migration(id);
    if (!row) throw err('VMTC_MIGRATION_NOT_FOUND', { migrationId: id });
    // Validate synchronously so the caller gets the coded error.
    transition(row.state, { type: 'CANCEL' });
    await this.dispatch(id, { type: 'CANCEL' }, undefined, { ctxPatch: { cancelRequested: true }, error: err('VMTC_CANCELLED', { migrationId: id }).toJSON() });
    return this.d.store.migration(id)!;
  }

  /**
   * Apply one event: pure transition, persist (state + log in one transaction), then launch the
   * effects of the new state. Serialised per migration.
   */
  dispatch(id: string, event: MigrationEvent, detail?: unknown, opts: { ctxPatch?: Partial<MigrationCtx>; error?: ErrorBody; expectState?: MigrationState | MigrationState[] } = {}): Promise<void> {
    const prev = this.queues.get(id) ?? Promise.resolve();
    const next = prev.then(() => this.apply(id, event, detail, opts)).catch((e) => {
      this.d.logger.warn({ migrationId: id, event: event.type, code: (e as VmtcError).code, err: e }, 'event not applied');
      if (event.type === 'CANCEL') throw e;
    });
    this.queues.set(id, next.catch(() => undefined));
    return next;
  }

  private async apply(id: string, event: MigrationEvent, detail: unknown, opts: { ctxPatch?: Partial<MigrationCtx>; error?: ErrorBody; expectState?: MigrationState | MigrationState[] }): Promise<void> {
    if (this.closed) return;
    const row = this.d.store.migration(id);
    if (!row) throw err('VMTC_MIGRATION_NOT_FOUND', { migrationId: id });
    if (opts.expectState && ![opts.expectState].flat().includes(row.state)) {
      this.log(row).info({ event: event.type, state: row.state, expected: opts.expectState }, 'stale effect outcome dropped');
      return;
    }
    const t = transition(row.state, event);
    const now = this.d.clock.now();
    const ctx: MigrationCtx = { ...row.ctx, ...(opts.ctxPatch ?? {}) };
    const lastAt = this.d.store.transitions(id).at(-1)?.at ?? row.createdAt;
    ctx.timings = { ...(ctx.timings ?? {}), [row.state]: (ctx.timings?.[row.state] ?? 0) + (now - lastAt) };
    // mode=auto falling back to cold: the live attempt's error becomes a warning, so a cold move
    // that then completes does not carry an error.
    const fallback = event.type === 'FALLBACK_COLD';
    if (fallback) {
      ctx.path = 'cold';
      if (row.error) ctx.warnings = [...(ctx.warnings ?? []), { ...row.error, details: { ...(row.error.details ?? {}), step: 'live-attempt' } }];
    }
    this.d.store.recordTransition(id, t.from, t.to, t.event, now, { ctx, ...(opts.error ? { error: opts.error } : fallback ? { error: null } : {}) }, detail);
    this.log(row).info({ from: t.from, to: t.to, event: t.event, ...(opts.error ? { code: opts.error.code } : {}) }, 'migration transition');
    this.emit('change', id);
    // Leaving the happy path: stop whatever effect is still running for the old state.
    if (event.type === 'CANCEL' || event.type === 'FAIL') this.live.get(id)?.abort.abort();
    const fresh = this.d.store.migration(id)!;
    for (const effect of t.effects) this.launch(fresh, effect);
  }

  private arm(row: MigrationRow): Live {
    let l = this.live.get(row.id);
    if (!l) {
      l = { abort: new AbortController() };
      this.live.set(row.id, l);
      const deadlineAt = row.request.deadline ? Date.parse(row.request.deadline) : row.createdAt + this.d.options.defaultDeadlineMs;
      l.deadline = this.d.clock.setTimeout(() => {
        const cur = this.d.store.migration(row.id);
        if (cur && CANCELLABLE.has(cur.state)) {
          void this.dispatch(row.id, { type: 'FAIL' }, undefined, { error: err('VMTC_DEADLINE_EXCEEDED', { deadline: new Date(deadlineAt).toISOString(), state: cur.state }).toJSON() });
        }
      }, Math.max(0, deadlineAt - this.d.clock.now()));
    }
    return l;
  }

  private signal(id: string): AbortSignal {
    const l = this.live.get(id);
    if (!l || l.abort.signal.aborted) {
      const fresh = new AbortController();
      if (l) l.abort = fresh;
      else this.live.set(id, { abort: fresh });
      return fresh.signal;
    }
    return l.abort.signal;
  }

  private launch(row: MigrationRow, effect: Effect): void {
    // The outcome of an effect is only valid in the state(s) it was started for; pre-copy moves
    // to stop-and-copy while the same migration effect keeps running.
    const state: MigrationState[] = row.state === 'precopy' || row.state === 'stopcopy' ? ['precopy', 'stopcopy'] : [row.state];
    const signal = effect === 'rollback' || effect === 'finish' ? new AbortController().signal : this.signal(row.id);
    const log = this.log(row);
    const run = async () => {
      const out = await this.effect(effect, row, signal, log);
      if (out) await this.dispatch(row.id, out.event, out.detail, { ...(out.ctxPatch ? { ctxPatch: out.ctxPatch } : {}), expectState: state });
    };
    run().catch(async (e) => {
      if (this.closed) return;
      const ve = toVmtcError(e);
      const cur = this.d.store.migration(row.id);
      if (!cur || !state.includes(cur.state)) {
        log.info({ effect, code: ve.code, state: cur?.state }, 'effect ended after the migration moved on');
        return;
      }
      log.warn({ effect, code: ve.code, details: ve.details, err: ve.status >= 500 ? e : undefined }, 'effect failed');
      await this.dispatch(row.id, { type: 'FAIL' }, { effect }, { error: ve.toJSON(), expectState: state });
    });
  }

  private ctxPatch(row: MigrationRow, patch: Partial<MigrationCtx>): MigrationCtx {
    const ctx = { ...this.d.store.migration(row.id)!.ctx, ...patch };
    this.d.store.saveCtx(row.id, ctx, this.d.clock.now());
    return ctx;
  }

  private lightpathRequest(row: MigrationRow): LightpathRequest {
    const src = this.d.hub.inventory(row.sourceHostId)?.site ?? row.sourceHostId;
    const dst = this.d.hub.inventory(row.destinationHostId)?.site ?? row.destinationHostId;
    const start = Math.floor(this.d.clock.now() / 1000);
    const deadline = row.request.deadline ? Date.parse(row.request.deadline) : row.createdAt + this.d.options.defaultDeadlineMs;
    return {
      migrationId: row.id, vmId: row.vmId, project: row.project, src, dst,
      bandwidthMbps: row.request.bandwidthMbps ?? 1000,
      window: { start, end: Math.max(start + 60, Math.ceil(deadline / 1000)) },
    };
  }

  private site(hostId: string): string {
    return this.d.hub.inventory(hostId)?.site ?? hostId;
  }

  // ---- effects ---------------------------------------------------------------------------
  private async effect(effect: Effect, row: MigrationRow, signal: AbortSignal, log: Logger): Promise<{ event: MigrationEvent; detail?: unknown; ctxPatch?: Partial<MigrationCtx> } | void> {
    const hub = this.d.hub;
    switch (effect) {
      case 'startLive':
      case 'startCold':
        return;
      case 'requestToken': {
        if (!this.d.aaa) return { event: { type: 'TOKEN_GRANTED' }, ctxPatch: { token: { skipped: 'no AAA configured' } } };
        try {
          const t = await this.d.aaa.authorize(this.lightpathRequest(row));
          this.secrets.set(row.id, t.token);
          return { event: { type: 'TOKEN_GRANTED' }, detail: { jti: t.jti }, ctxPatch: { token: { jti: t.jti, expiresAt: t.expiresAt, ...(t.audience ? { audience: t.audience } : {}) } } };
        } catch (e) {
          throw wrap(e, 'VMTC_AUTHORIZATION_FAILED');
        }
      }
      case 'provisionLightpath': {
        const token = this.secrets.get(row.id);
        if (!this.d.lightpath || token === undefined) {
          return { event: { type: 'LIGHTPATH_UP' }, ctxPatch: { lightpath: { skipped: this.d.lightpath ? 'no token' : 'no broker configured' } } };
        }
        try {
          const lp = await this.d.lightpath.setup(this.lightpathRequest(row), token);
          return { event: { type: 'LIGHTPATH_UP' }, detail: lp, ctxPatch: { lightpath: { reservationId: lp.reservationId, provisioned: true, ...(lp.details ? { details: lp.details } : {}) } } };
        } catch (e) {
          const ve = wrap(e, 'VMTC_LIGHTPATH_FAILED');
          const rid = (ve.details as { reservationId?: string } | undefined)?.reservationId;
          if (rid) this.ctxPatch(row, { lightpath: { reservationId: rid, provisioned: false } });
          throw ve;
        }
      }
      case 'prepareDestination': {
        const src = await hub.request(row.sourceHostId, 'vm.describe', { vmId: row.vmId });
        if (src.state !== 'running') throw err('VMTC_VM_NOT_RUNNING', { vmId: row.vmId, state: src.state });
        const listenHost = (row.ctx.lightpath?.details?.destinationAddress as string | undefined) ?? hub.inventory(row.destinationHostId)?.migrationAddress ?? this.d.options.defaultListenHost;
        // Record intent before asking, so a rollback after a lost reply still cleans the destination.
        this.ctxPatch(row, { incoming: { uri: '', prepared: false } });
        // multifd and post-copy must be enabled on both ends (QEMU); the destination learns
        // them from the spec, since prepare-incoming has no migration parameters of its own.
        // Without storage both hosts reach, the disks move too (DESIGN.md "Disks"): the
        // destination makes empty copies and serves them over NBD on the lightpath address; the
        // source mirrors into them while the VM runs and sends the last delta at the pause.
        const r = row.request;
        const copyStorage = this.copiesStorage(row, src.spec);
        // This migration's flags replace any a previous incoming migration left in the spec;
        // other settings there (e.g. multifdChannels) are kept.
        const { multifd: _m, postcopy: _p, copyStorage: _c, suspend: _s, ...kept } = (src.spec.extra?.migration as Record<string, unknown> | undefined) ?? {};
        const migration = {
          ...kept,
          ...(r.multifd ? { multifd: true } : {}), ...(r.postcopy ? { postcopy: true } : {}),
          ...(copyStorage ? { copyStorage: true } : {}), ...(copyStorage && r.suspend ? { suspend: true } : {}),
        };
        const spec = Object.keys(migration).length > 0 ? { ...src.spec, extra: { ...(src.spec.extra ?? {}), migration } } : src.spec;
        const prepared = await hub.request(row.destinationHostId, 'vm.prepareIncoming', { spec, migrationId: row.id, listenHost }, 60_000);
        const uri = prepared.uri;
        if (copyStorage && !prepared.storage) {
          // A destination that did not export its copies would boot on empty disks.
          throw err('VMTC_DESTINATION_NOT_RUNNING', { reason: 'the destination did not offer its disk copies (its driver cannot copy storage)', hostId: row.destinationHostId });
        }
        let tunnel: MigrationCtx['tunnel'] = { skipped: 'no tunnel agent' };
        if (this.d.tunnel) {
          await this.d.tunnel.bicast(row.vmId, this.site(row.sourceHostId), this.site(row.destinationHostId));
          tunnel = { bicast: true };
        }
        return {
          event: { type: 'DESTINATION_PREPARED' }, detail: { uri, listenHost, ...(prepared.storage ? { storage: prepared.storage } : {}) },
          ctxPatch: { incoming: { uri, prepared: true, ...(prepared.storage ? { storage: prepared.storage } : {}) }, tunnel },
        };
      }
      case 'startMigration': {
        const result = await this.runMigration(row, signal, log);
        return { event: { type: 'MIGRATION_COMPLETED' }, detail: result, ctxPatch: { result: pickResult(result) } };
      }
      case 'watchStopAndCopy':
        return; // the startMigration effect is still running and reports completion
      case 'awaitDestinationRunning': {
        try {
          // Non-live: the copy was made of a paused VM, so the destination stays paused until told.
          if (row.request.suspend) await hub.request(row.destinationHostId, 'vm.resume', { vmId: row.vmId });
          const vm = await hub.request(row.destinationHostId, 'vm.waitRunning', { vmId: row.vmId, timeoutMs: this.d.options.destinationRunTimeoutMs }, this.d.options.destinationRunTimeoutMs + 5_000);
          const resumedAt = vm.resumedAt;
          return {
            event: { type: 'DESTINATION_RUNNING' }, detail: { state: vm.state, ...(resumedAt !== undefined ? { resumedAt } : {}) },
            ...(resumedAt !== undefined ? { ctxPatch: { result: { ...(this.d.store.migration(row.id)?.ctx.result ?? {}), resumedAt } } } : {}),
          };
        } catch (e) {
          throw wrap(e, 'VMTC_DESTINATION_NOT_RUNNING');
        }
      }
      case 'activate': {
        // Commit point passed: from here on failures are warnings, never a rollback.
        if (row.ctx.path === 'cold' && row.ctx.cold?.priorState && row.ctx.cold.priorState !== 'running') {
          // A cold move keeps the VM's power state: booted only to be verified, then off again.
          try {
            await hub.request(row.destinationHostId, 'vm.stop', { vmId: row.vmId });
          } catch (e) {
            row = { ...row, ctx: this.ctxPatch(row, { warnings: [...(row.ctx.warnings ?? []), toVmtcError(e).toJSON()] }) };
          }
        }
        if (this.d.tunnel && row.ctx.tunnel?.bicast) {
          try {
            await this.d.tunnel.prune(row.vmId, this.site(row.destinationHostId), this.site(row.sourceHostId));
            return { event: { type: 'ACTIVATED' }, ctxPatch: { tunnel: { bicast: true, pruned: true } } };
          } catch (e) {
            return { event: { type: 'ACTIVATED' }, ctxPatch: { warnings: [...(row.ctx.warnings ?? []), toVmtcError(e).toJSON()] } };
          }
        }
        return { event: { type: 'ACTIVATED' } };
      }
      case 'cleanupSource': {
        const warnings = [...(row.ctx.warnings ?? [])];
        try {
          await hub.request(row.sourceHostId, 'vm.destroy', { vmId: row.vmId });
        } catch (e) {
          if (!NOT_FOUND.test(toVmtcError(e).code)) warnings.push(toVmtcError(e).toJSON());
        }
        const lightpath = await this.releaseLightpath(row, warnings);
        this.d.store.releaseHold(row.id);
        return { event: { type: 'CLEANED_UP' }, ctxPatch: { warnings, ...(lightpath ? { lightpath } : {}) } };
      }
      case 'coldExport':
        return this.coldExport(row, log);
      case 'coldImport':
        return this.coldImport(row, signal, log);
      case 'coldVerify':
        return this.coldVerify(row);
      case 'rollback':
        return this.rollback(row, log);
      case 'finish': {
        this.d.store.releaseHold(row.id);
        this.secrets.delete(row.id);
        this.exports.delete(row.id);
        this.lost.get(row.id)?.cancel();
        this.lost.delete(row.id);
        const l = this.live.get(row.id);
        l?.deadline?.cancel();
        this.live.delete(row.id);
        this.emit('finished', row.id, row.state);
        return;
      }
    }
  }

  /** Whether a live migration must copy the VM's writable disks: they are not on storage both
   *  hosts reach. A VM without writable disks (the lab's kernel + initramfs guests) copies none. */
  private copiesStorage(row: MigrationRow, spec: VmInfo['spec']): boolean {
    const writable = (spec.disks ?? []).some((d) => !d.readonly);
    if (!writable) return false;
    const shared = this.d.hub.inventory(row.sourceHostId)?.sharedStorage && this.d.hub.inventory(row.destinationHostId)?.sharedStorage;
    return !shared;
  }

  /** Tokens are secrets: kept in memory only, never in the store. */
  private readonly secrets = new Map<string, string>();
  /** The cold export (its disk URLs are single-use secrets): memory only, like the tokens. A
   *  restarted controller rolls a cold migration back rather than resume it (reconcile). */
  private readonly exports = new Map<string, ColdExport>();

  // ---- the cold path (EGI-Engage D4.4) ---------------------------------------------------
  // Power off at the source and publish the disks (single-use, time-limited, mutual-TLS URLs
  // only the destination's certificate may fetch); the destination checks space, fetches with
  // resume and checksum, boots from the copies; the VM is verified there; only then does the
  // source go (cleanup). Until verification the source copy is intact and a rollback restores it.

  private async coldExport(row: MigrationRow, log: Logger): Promise<{ event: MigrationEvent; detail?: unknown; ctxPatch?: Partial<MigrationCtx> }> {
    this.ctxPatch(row, { cold: { exportRequested: true } });
    const deadline = row.request.deadline ? Date.parse(row.request.deadline) : row.createdAt + this.d.options.defaultDeadlineMs;
    const ttlMs = Math.max(60_000, deadline - this.d.clock.now());
    let exp: ColdExport;
    try {
      // The source checksums every disk before answering: as long as the deadline allows.
      // Pin both ends to their current, unrevoked certificates.
      const serials = this.d.hub.certSerials
        ? { destinationCertSerials: this.d.hub.certSerials(row.destinationHostId), sourceCertSerials: this.d.hub.certSerials(row.sourceHostId) }
        : {};
      exp = await this.d.hub.request(row.sourceHostId, 'vm.coldExport', { vmId: row.vmId, migrationId: row.id, destinationHostId: row.destinationHostId, ttlMs, ...serials }, ttlMs + 5_000);
    } catch (e) {
      throw coldError('VMTC_COLD_EXPORT_FAILED', e);
    }
    if (exp.migrationId !== row.id || exp.vmId !== row.vmId || exp.destinationHostId !== row.destinationHostId) {
      throw err('VMTC_COLD_EXPORT_FAILED', { reason: 'the source answered with another export', migrationId: exp.migrationId, vmId: exp.vmId });
    }
    this.exports.set(row.id, exp);
    const disks = exp.disks.map((x) => ({ index: x.index, format: x.format, sizeBytes: x.sizeBytes, sha256: x.sha256 }));
    const totalBytes = disks.reduce((a, x) => a + x.sizeBytes, 0);
    log.info({ disks: disks.length, totalBytes, priorState: exp.priorState }, 'cold export ready');
    return {
      event: { type: 'COLD_EXPORTED' }, detail: { disks: disks.length, totalBytes },
      ctxPatch: { cold: { exportRequested: true, priorState: exp.priorState, disks, totalBytes, expiresAt: exp.expiresAt } },
    };
  }

  private async coldImport(row: MigrationRow, signal: AbortSignal, log: Logger): Promise<{ event: MigrationEvent; detail?: unknown; ctxPatch?: Partial<MigrationCtx> }> {
    const hub = this.d.hub;
    const exp = this.exports.get(row.id);
    if (!exp) throw err('VMTC_COLD_TRANSFER_FAILED', { reason: 'the export is no longer known to this controller' });
    const cold = { ...(this.d.store.migration(row.id)!.ctx.cold ?? { exportRequested: true }), importRequested: true };
    this.ctxPatch(row, { cold });
    // The clients' tunnel sends toward both sites while the VM boots at the new one.
    let tunnel: MigrationCtx['tunnel'] = { skipped: 'no tunnel agent' };
    if (this.d.tunnel) {
      await this.d.tunnel.bicast(row.vmId, this.site(row.sourceHostId), this.site(row.destinationHostId));
      tunnel = { bicast: true };
      this.ctxPatch(row, { tunnel });
    }
    const total = cold.totalBytes ?? 0;
    let lastSave = 0;
    const onEvent = (hostId: string, name: string, data: unknown) => {
      if (hostId !== row.destinationHostId || name !== 'cold.progress') return;
      const p = data as ColdProgress;
      if (p?.migrationId !== row.id) return;
      const now = this.d.clock.now();
      if (now - lastSave < 250 && p.transferredBytes < p.totalBytes) return;
      lastSave = now;
      const progress = {
        migrationId: row.id, vmId: row.vmId, status: 'active' as const, phase: p.phase,
        totalBytes: p.totalBytes, transferredBytes: p.transferredBytes, remainingBytes: Math.max(0, p.totalBytes - p.transferredBytes),
      };
      this.d.store.saveProgress(row.id, { ...progress, at: now }, now);
      this.emit('progress', row.id, progress);
    };
    hub.on('event', onEvent);
    const deadline = row.request.deadline ? Date.parse(row.request.deadline) : row.createdAt + this.d.options.defaultDeadlineMs;
    try {
      const r = await Promise.race([
        hub.request(row.destinationHostId, 'vm.coldImport', { export: exp }, Math.max(60_000, deadline - this.d.clock.now() + 5_000)),
        new Promise<never>((_, reject) => {
          if (signal.aborted) reject(err('VMTC_CANCELLED', { migrationId: row.id }));
          signal.addEventListener('abort', () => reject(err('VMTC_CANCELLED', { migrationId: row.id })), { once: true });
        }),
      ]);
      const mbps = r.ms > 0 ? Math.round((r.bytes * 8) / r.ms / 1000 * 10) / 10 : null;
      log.info({ bytes: r.bytes, resumedBytes: r.resumedBytes, ms: r.ms, mbps, total }, 'cold import done; VM booted at the destination');
      return {
        event: { type: 'COLD_IMPORTED' }, detail: { bytes: r.bytes, ms: r.ms, state: r.vm.state },
        ctxPatch: { cold: { ...cold, imported: { bytes: r.bytes, resumedBytes: r.resumedBytes, ms: r.ms, mbps } }, result: { transferredBytes: r.bytes, totalTimeMs: r.ms } },
      };
    } catch (e) {
      const ve = toVmtcError(e);
      if (ve.code === 'VMTC_CANCELLED') throw ve;
      // A hypervisor refusing to start the copy is a boot failure; everything else is transfer.
      throw coldError(/^VMTC_(QEMU_|HOST_VM_|HOST_FAULT)/.test(ve.code) ? 'VMTC_COLD_BOOT_FAILED' : 'VMTC_COLD_TRANSFER_FAILED', e);
    } finally {
      hub.off('event', onEvent);
    }
  }

  private async coldVerify(row: MigrationRow): Promise<{ event: MigrationEvent; detail?: unknown; ctxPatch?: Partial<MigrationCtx> }> {
    const timeoutMs = this.d.options.destinationRunTimeoutMs;
    const tcp = row.request.verifyTcp;
    try {
      const vm = await this.d.hub.request(row.destinationHostId, 'vm.coldVerify', { vmId: row.vmId, timeoutMs, ...(tcp ? { tcp } : {}) }, timeoutMs + 5_000);
      const cold = { ...(this.d.store.migration(row.id)!.ctx.cold ?? { exportRequested: true }), verified: true };
      return {
        event: { type: 'COLD_VERIFIED' }, detail: { state: vm.state, ...(tcp ? { tcp } : {}) },
        ctxPatch: { cold, ...(vm.resumedAt !== undefined ? { result: { ...(this.d.store.migration(row.id)!.ctx.result ?? {}), resumedAt: vm.resumedAt } } : {}) },
      };
    } catch (e) {
      throw coldError('VMTC_COLD_VERIFICATION_FAILED', e);
    }
  }

  private async releaseLightpath(row: MigrationRow, warnings: ErrorBody[]): Promise<MigrationCtx['lightpath'] | undefined> {
    const lp = this.d.store.migration(row.id)!.ctx.lightpath;
    if (!lp?.reservationId || lp.released || !this.d.lightpath) return undefined;
    try {
      await this.d.lightpath.teardown(lp.reservationId, this.secrets.get(row.id) ?? '');
      return { ...lp, released: true };
    } catch (e) {
      warnings.push(toVmtcError(e).toJSON());
      return lp;
    }
  }

  /** Start (or, after a controller restart, re-attach to) the source's live migration and wait
   *  for its end, streaming progress into the record. */
  private runMigration(row: MigrationRow, signal: AbortSignal, log: Logger): Promise<MigrationResult> {
    const hub = this.d.hub;
    return new Promise<MigrationResult>((resolve, reject) => {
      let settled = false;
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
        if (r.status === 'completed') finish(() => resolve(r));
        else finish(() => reject(r.error ? new VmtcError(r.error.code, 502, r.error.message, r.error.details) : err('VMTC_MIGRATION_FAILED', { status: r.status })));
      };
      const onProgress = (p: MigrationProgress) => {
        const now = this.d.clock.now();
        if (now - lastProgressSave >= 250 || p.status !== 'active') {
          lastProgressSave = now;
          this.d.store.saveProgress(row.id, { ...p, at: now }, now);
          this.emit('progress', row.id, p);
        }
        if (p.status === 'device') {
          void this.dispatch(row.id, { type: 'STOP_AND_COPY' }, undefined, { expectState: 'precopy' });
        }
      };
      const onEvent = (hostId: string, name: string, data: unknown) => {
        if (hostId !== row.sourceHostId || !data || typeof data !== 'object') return;
        const d = data as { migrationId?: string };
        if (d.migrationId !== row.id) return;
        if (name === 'migration.progress') onProgress(data as MigrationProgress);
        else if (name === 'migration.done') onResult(data as MigrationResult);
      };
      const check = async () => {
        try {
          const s = await hub.request(row.sourceHostId, 'vm.migrationStatus', { vmId: row.vmId });
          if (s && (s as { migrationId?: string }).migrationId === row.id) {
            if (s.status === 'completed' || s.status === 'failed' || s.status === 'cancelled') {
              if ('totalBytes' in s) {
                // Only a progress snapshot: the final result follows as an event.
              } else onResult(s as MigrationResult);
            }
          }
        } catch (e) {
          log.debug({ code: toVmtcError(e).code }, 'status poll failed');
        }
      };
      const schedulePoll = () => {
        poll = this.d.clock.setTimeout(() => {
          if (settled) return;
          void check().finally(() => { if (!settled) schedulePoll(); });
        }, this.d.options.statusPollMs);
      };
      const onConnected = (hostId: string) => { if (hostId === row.sourceHostId) void check(); };
      const onAbort = () => finish(() => reject(err('VMTC_CANCELLED', { migrationId: row.id })));
      hub.on('event', onEvent);
      hub.on('connected', onConnected);
      signal.addEventListener('abort', onAbort);
      if (signal.aborted) return onAbort();

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
            await new Promise((r) => setTimeout(r, 300 * attempt));
          }
        }
        if (s && (s as { migrationId?: string }).migrationId === row.id) {
          log.info({ status: s.status }, 'attached to a migration already under way');
          if (!('totalBytes' in s)) return onResult(s as MigrationResult);
          if (s.status !== 'failed' && s.status !== 'cancelled') return schedulePoll();
        }
        const cur = this.d.store.migration(row.id)!;
        if (!cur.ctx.incoming?.uri) throw err('VMTC_DESTINATION_NOT_RUNNING', { reason: 'destination was never prepared' });
        this.ctxPatch(row, { migrationStarted: true });
        const r = row.request;
        await hub.request(row.sourceHostId, 'vm.migrate', {
          vmId: row.vmId,
          uri: cur.ctx.incoming.uri,
          params: {
            migrationId: row.id,
            ...(r.bandwidthMbps !== undefined ? { bandwidthMbps: r.bandwidthMbps } : {}),
            ...(r.maxDowntimeMs !== undefined ? { maxDowntimeMs: r.maxDowntimeMs } : {}),
            ...(r.autoConverge !== undefined ? { autoConverge: r.autoConverge } : {}),
            ...(r.postcopy !== undefined ? { postcopy: r.postcopy } : {}),
            ...(r.multifd !== undefined ? { multifd: r.multifd } : {}),
            ...(r.suspend ? { suspend: true } : {}),
            ...(cur.ctx.incoming.storage ? { storage: cur.ctx.incoming.storage } : {}),
          },
        });
        schedulePoll();
      };
      begin().catch((e) => finish(() => reject(wrap(e, 'VMTC_MIGRATION_FAILED'))));
    });
  }

  /** Undo everything (DESIGN.md: circuits released, source resumed, destination cleaned,
   *  capacity freed). Each step is idempotent so a restarted controller can run it again. */
  private async rollback(row: MigrationRow, log: Logger): Promise<{ event: MigrationEvent; detail?: unknown; ctxPatch?: Partial<MigrationCtx> }> {
    const hub = this.d.hub;
    const ctx = this.d.store.migration(row.id)!.ctx;
    const problems: ErrorBody[] = [];
    const soft = async (what: string, fn: () => Promise<unknown>) => {
      try {
        await fn();
      } catch (e) {
        const ve = toVmtcError(e);
        if (!NOT_FOUND.test(ve.code)) {
          log.warn({ step: what, code: ve.code }, 'rollback step failed');
          problems.push({ ...ve.toJSON(), details: { ...(ve.details ?? {}), step: what } });
        }
      }
    };
    if (ctx.migrationStarted) await soft('cancel-migration', () => hub.request(row.sourceHostId, 'vm.cancelMigration', { vmId: row.vmId }));
    // The destination copy goes first, so that the VM never runs in two places (a cold copy may
    // already have booted there).
    let destinationGone = true;
    if (ctx.incoming || ctx.cold?.importRequested) {
      destinationGone = false;
      await soft('destroy-destination', async () => {
        try {
          await hub.request(row.destinationHostId, 'vm.destroy', { vmId: row.vmId });
        } catch (e) {
          if (!NOT_FOUND.test(toVmtcError(e).code)) throw e;
        }
        destinationGone = true;
      });
    }
    if (!destinationGone && (await this.destinationMayRun(row, ctx))) {
      // The destination could not be cleaned and its copy may be running (a cold copy booted, or
      // the source finished sending its last page): bringing the source back could run the VM
      // twice. Leave both as they are and say so; an operator decides.
      this.d.store.releaseHold(row.id);
      const patch: Partial<MigrationCtx> = { warnings: [...(ctx.warnings ?? []), ...problems] };
      return { event: { type: 'ROLLBACK_FAILED' }, detail: { reason: 'the destination could not be cleaned and its copy may be running; the source was left as it is' }, ctxPatch: patch };
    }
    // The source copy is the primary until commit: make sure it is as it was.
    let source: VmInfo | undefined;
    if (ctx.cold?.exportRequested) {
      // Withdraws the disk URLs and powers the VM back on if the export powered it off.
      await soft('cold-abort-source', async () => { source = await hub.request(row.sourceHostId, 'vm.coldAbort', { vmId: row.vmId, migrationId: row.id }, 120_000); });
      // An agent restarted since the export has forgotten it powered the VM off: power it on.
      const s0 = source as VmInfo | undefined;
      if (s0 && s0.state === 'stopped' && (ctx.sourceState ?? 'running') === 'running') {
        await soft('cold-restart-source', async () => { source = await hub.request(row.sourceHostId, 'vm.start', { spec: s0.spec }, 120_000); });
      }
    }
    if (!source) {
      await soft('resume-source', async () => {
        source = await hub.request(row.sourceHostId, 'vm.describe', { vmId: row.vmId });
        if (source.state === 'paused' || source.state === 'postmigrate') source = await hub.request(row.sourceHostId, 'vm.resume', { vmId: row.vmId });
      });
    }
    if (this.d.tunnel && ctx.tunnel?.bicast && !ctx.tunnel.pruned) {
      await soft('tunnel-prune', () => this.d.tunnel!.prune(row.vmId, this.site(row.sourceHostId), this.site(row.destinationHostId)));
    }
    const warnings: ErrorBody[] = [];
    const lightpath = await this.releaseLightpath(row, warnings);
    problems.push(...warnings);
    const patch: Partial<MigrationCtx> = { warnings: [...(ctx.warnings ?? []), ...problems], ...(lightpath ? { lightpath } : {}) };
    // The VM must end in exactly one place, in the state it had before: otherwise say so.
    const expected = ctx.sourceState ?? 'running';
    if (!source || source.state !== expected) {
      this.d.store.releaseHold(row.id);
      return { event: { type: 'ROLLBACK_FAILED' }, detail: { sourceState: source?.state ?? 'unknown', expected }, ctxPatch: patch };
    }
    if (row.mode === 'auto' && ctx.path === 'live' && !ctx.cancelRequested && !ctx.fallbackCold) {
      // The cold attempt keeps the destination's capacity hold, and starts from a clean slate.
      this.exports.delete(row.id);
      return {
        event: { type: 'FALLBACK_COLD' },
        ctxPatch: { ...patch, fallbackCold: true, migrationStarted: false, tunnel: { ...(ctx.tunnel ?? {}), ...(ctx.tunnel?.bicast ? { pruned: true } : {}) } },
      };
    }
    this.d.store.releaseHold(row.id);
    return { event: { type: 'ROLLED_BACK', cancelled: Boolean(ctx.cancelRequested) }, ctxPatch: patch };
  }

  /** Whether a destination that could not be cleaned may be running the VM: a cold import was
   *  asked for (it boots the copy), or the source's live migration completed (or cannot be
   *  asked). A pre-copy that did not complete leaves the destination waiting, never running. */
  private async destinationMayRun(row: MigrationRow, ctx: MigrationCtx): Promise<boolean> {
    if (ctx.cold?.importRequested) return true;
    if (!ctx.migrationStarted) return false;
    try {
      const s = await this.d.hub.request(row.sourceHostId, 'vm.migrationStatus', { vmId: row.vmId });
      return !!s && (s as { migrationId?: string }).migrationId === row.id && s.status === 'completed';
    } catch {
      return true;
    }
  }

  /**
   * After a restart: bring every unfinished migration to a safe place. States before any VM
   * state moved roll back; later ones resume their effect, which asks the agents what is really
   * happening (a live migration that is still running is re-attached, not restarted).
   */
  reconcile(row: MigrationRow): void {
    if (TERMINAL.has(row.state)) return;
    this.arm(row);
    const log = this.log(row);
    const go = () => {
      const cur = this.d.store.migration(row.id)!;
      log.info({ state: cur.state }, 'reconciling after restart');
      if (['prechecking', 'reserved', 'authorizing', 'provisioning', 'preparing', 'cold_exporting', 'cold_importing', 'cold_verifying'].includes(cur.state)) {
        void this.dispatch(row.id, { type: 'FAIL' }, { reconcile: true }, { error: err('VMTC_CONTROLLER_RESTARTED', { state: cur.state }).toJSON(), expectState: cur.state });
      } else {
        const effects: Partial<Record<MigrationState, Effect>> = {
          precopy: 'startMigration', stopcopy: 'startMigration', committing: 'awaitDestinationRunning',
          activating: 'activate', cleanup: 'cleanupSource', rolling_back: 'rollback',
        };
        const eff = effects[cur.state];
        // stop-and-copy re-attaches through the same effect as pre-copy.
        if (eff) this.launch(cur.state === 'stopcopy' ? { ...cur, state: 'stopcopy' } : cur, eff);
      }
    };
    // Ask the host that knows: the source knows how a pre-copy ended; after the last page the
    // destination knows whether the VM runs. A host that never comes back is not waited for
    // unless it is the one that knows.
    const need = row.state === 'committing' || row.state === 'activating' ? [row.destinationHostId] : [row.sourceHostId];
    if (need.every((h) => this.d.hub.isConnected(h))) return go();
    // Wait for both agents: the controller asks them, it does not guess.
    const onConnected = () => {
      if (need.every((h) => this.d.hub.isConnected(h))) {
        this.d.hub.off('connected', onConnected);
        go();
      }
    };
    this.d.hub.on('connected', onConnected);
  }

  close(): void {
    this.closed = true;
    this.d.hub.off('disconnected', this.onDisconnected);
    this.d.hub.off('connected', this.onConnected);
    for (const t of this.lost.values()) t.cancel();
    this.lost.clear();
    for (const l of this.live.values()) {
      l.abort.abort();
      l.deadline?.cancel();
    }
    this.live.clear();
  }
}

function wrap(e: unknown, code: Parameters<typeof err>[0]): VmtcError {
  const ve = toVmtcError(e);
  if (ve.code !== 'VMTC_INTERNAL' && ve.code !== 'VMTC_PEER_UNREACHABLE' && ve.code !== 'VMTC_TIMEOUT') return ve;
  return err(code, { cause: ve.toJSON() }, { cause: e });
}

/** A cold step's failure under the controller's D4.4-style code, with the agent's error inside. */
function coldError(code: Parameters<typeof err>[0], e: unknown): VmtcError {
  const ve = toVmtcError(e);
  if (ve.code === code) return ve;
  return err(code, { cause: ve.toJSON() }, { cause: e });
}

function pickResult(r: MigrationResult): NonNullable<MigrationCtx['result']> {
  const out: NonNullable<MigrationCtx['result']> = {};
  if (r.downtimeMs !== undefined) out.downtimeMs = r.downtimeMs;
  if (r.totalTimeMs !== undefined) out.totalTimeMs = r.totalTimeMs;
  if (r.transferredBytes !== undefined) out.transferredBytes = r.transferredBytes;
  if (r.setupTimeMs !== undefined) out.setupTimeMs = r.setupTimeMs;
  if (r.pausedAt !== undefined) out.pausedAt = r.pausedAt;
  if (r.storageBytes !== undefined) out.storageBytes = r.storageBytes;
  return out;
}
