// The cold path's effects (EGI-Engage D4.4). Power off at the source and publish the disks
// (single-use, time-limited, mutual-TLS URLs only the destination's certificate may fetch); the
// destination checks space, fetches with resume and checksum, boots from the copies; the VM is
// verified there; only then does the source go (cleanup, effects-commit.ts). Until verification
// the source copy is intact and a rollback restores it.
import { toVmtcError, type VmtcError } from '../../common/errors.ts';
import type { ColdExport, ColdProgress, ColdVerifyProgress, ReachResult } from '../../common/agent-protocol.ts';
import type { MigrationCtx, MigrationRow } from '../store.ts';
import { err } from '../errors.ts';
import { aborted, currentCtx, saveCtx, site, type EffectContext, type EffectFn } from './context.ts';
import { deadlineAt } from './request.ts';
import { lastDeltaAndVerify, prepareColdReplica, replicaConsumed } from '../replicas/migration.ts';

/** A cold step's failure under the controller's D4.4-style code, with the agent's error inside. */
function coldError(code: Parameters<typeof err>[0], e: unknown): VmtcError {
  const ve = toVmtcError(e);
  if (ve.code === code) return ve;
  return err(code, { cause: ve.toJSON() }, { cause: e });
}

/** How long the destination's one connection attempt to the verify address may take. */
const REACH_PROBE_MS = 2_000;

/**
 * Before anything is powered off: is the verify address reachable from the destination's VM
 * network (docs/design.md#cold-path, "Checking the verify address first")? Unreachable refuses
 * the move while the source still runs (VMTC_VERIFY_TARGET_UNREACHABLE); an agent too old to
 * know host.checkReach is not asked (the move goes ahead, as before the check existed).
 */
async function checkVerifyTarget(cx: Parameters<EffectFn>[0], row: Parameters<EffectFn>[1], tcp: { host: string; port: number }): Promise<NonNullable<MigrationCtx['cold']>['reach']> {
  let r: ReachResult;
  try {
    r = await cx.hub.request(row.destinationHostId, 'host.checkReach', { host: tcp.host, port: tcp.port, timeoutMs: REACH_PROBE_MS }, REACH_PROBE_MS + 15_000);
  } catch (e) {
    const ve = toVmtcError(e);
    if (ve.code !== 'VMTC_UNKNOWN_METHOD') throw ve;
    cx.log.warn({ host: tcp.host, port: tcp.port }, 'the destination agent cannot check the verify address (host.checkReach unknown): not checked');
    return { checked: false, reason: 'the destination agent does not know host.checkReach' };
  }
  cx.log.info({ ...r, host: tcp.host, port: tcp.port }, 'verify address checked from the destination');
  if (!r.reachable) {
    throw err('VMTC_VERIFY_TARGET_UNREACHABLE', { host: tcp.host, port: tcp.port, destinationHostId: row.destinationHostId, reason: r.reason, route: r.route, probe: r.probe, ...(r.errno ? { errno: r.errno } : {}) },
      { message: `the verify address ${tcp.host}:${tcp.port} is not reachable from ${row.destinationHostId}: ${r.reason}; the source was not powered off` });
  }
  return { checked: true, reason: r.reason, route: r.route, probe: r.probe };
}

const coldExport: EffectFn = async (cx, row) => {
  const tcp = row.request.verifyTcp;
  const reach = tcp ? await checkVerifyTarget(cx, row, tcp) : undefined;
  saveCtx(cx, row.id, { cold: { exportRequested: true, ...(reach ? { reach } : {}) } });
  // A warm replica at the destination (docs/disks.md "Cold move with a warm replica"): a delta
  // and both sides' kept digests while the VM still runs, so that after the power-off only the
  // last delta and the chunks it carried are read (coldImport). Lent to this migration until it
  // ends.
  const prep = await prepareColdReplica(cx.hub, cx.clock, cx.log, { migrationId: row.id, vmId: row.vmId, sourceHostId: row.sourceHostId, destinationHostId: row.destinationHostId });
  const replica = prep ? { replica: { ...prep, powerOffAt: cx.clock.now() } } : {};
  if (prep) saveCtx(cx, row.id, { cold: { exportRequested: true, ...(reach ? { reach } : {}), ...replica } });
  const ttlMs = Math.max(60_000, deadlineAt(row.request, row.createdAt, cx.options.defaultDeadlineMs) - cx.clock.now());
  let exp: ColdExport;
  try {
    // The source checksums every disk before answering: as long as the deadline allows.
    // Pin both ends to their current, unrevoked certificates.
    const serials = cx.hub.certSerials
      ? { destinationCertSerials: cx.hub.certSerials(row.destinationHostId), sourceCertSerials: cx.hub.certSerials(row.sourceHostId) }
      : {};
    // With a replica the destination boots from its store and fetches nothing: the checksums
    // (seconds a GiB, after the power-off) are asked for only if a fetch is needed after all.
    exp = await cx.hub.request(row.sourceHostId, 'vm.coldExport', { vmId: row.vmId, migrationId: row.id, destinationHostId: row.destinationHostId, ttlMs, ...serials, ...(prep ? { checksums: 'later' as const } : {}) }, ttlMs + 5_000);
  } catch (e) {
    throw coldError('VMTC_COLD_EXPORT_FAILED', e);
  }
  if (exp.migrationId !== row.id || exp.vmId !== row.vmId || exp.destinationHostId !== row.destinationHostId) {
    throw err('VMTC_COLD_EXPORT_FAILED', { reason: 'the source answered with another export', migrationId: exp.migrationId, vmId: exp.vmId });
  }
  cx.exports.set(row.id, exp);
  const disks = exp.disks.map((x) => ({ index: x.index, format: x.format, sizeBytes: x.sizeBytes, sha256: x.sha256 }));
  const totalBytes = disks.reduce((a, x) => a + x.sizeBytes, 0);
  cx.log.info({ disks: disks.length, totalBytes, priorState: exp.priorState }, 'cold export ready');
  return {
    event: { type: 'COLD_EXPORTED' }, detail: { disks: disks.length, totalBytes },
    ctxPatch: { cold: { exportRequested: true, ...(reach ? { reach } : {}), ...replica, priorState: exp.priorState, disks, totalBytes, expiresAt: exp.expiresAt } },
  };
};

const coldImport: EffectFn = async (cx, row, signal) => {
  const hub = cx.hub;
  const exp = cx.exports.get(row.id);
  if (!exp) throw err('VMTC_COLD_TRANSFER_FAILED', { reason: 'the export is no longer known to this controller' });
  const cold = { ...(currentCtx(cx, row.id).cold ?? { exportRequested: true }), importRequested: true };
  saveCtx(cx, row.id, { cold });
  // The clients' tunnel sends toward both sites while the VM boots at the new one.
  if (cx.tunnel) {
    await cx.tunnel.bicast(row.vmId, site(cx, row.sourceHostId), site(cx, row.destinationHostId));
    saveCtx(cx, row.id, { tunnel: { bicast: true } });
  }
  const total = cold.totalBytes ?? 0;
  let lastSave = 0;
  const onEvent = (hostId: string, name: string, data: unknown) => {
    if (hostId !== row.destinationHostId || name !== 'cold.progress') return;
    const p = data as ColdProgress;
    if (p?.migrationId !== row.id) return;
    const now = cx.clock.now();
    if (now - lastSave < 250 && p.transferredBytes < p.totalBytes) return;
    lastSave = now;
    const progress = {
      migrationId: row.id, vmId: row.vmId, status: 'active' as const, phase: p.phase,
      totalBytes: p.totalBytes, transferredBytes: p.transferredBytes, remainingBytes: Math.max(0, p.totalBytes - p.transferredBytes),
    };
    cx.store.saveProgress(row.id, { ...progress, at: now }, now);
    cx.progress(row.id, progress);
  };
  hub.on('event', onEvent);
  // A warm replica at the destination (docs/disks.md#replicas): now that the source is off only
  // its last delta crosses, and the destination boots from it once the digests agree; else the
  // disks are fetched as below (never a wrong disk).
  const prep = cold.replica;
  const plan = await lastDeltaAndVerify(hub, cx.clock, cx.log, row, prep);
  const replica = plan && 'use' in plan ? plan.use : undefined;
  // A last delta that ran and failed, or digests that differ: the source's image took a
  // checkpoint after its disks were checksummed for the export, so no full copy can be trusted
  // either: roll back (the source is still there; the replica is failed, the next move copies).
  if (plan && 'fallback' in plan && plan.fallback.touched) {
    const { touched: _t, ...why } = plan.fallback;
    throw err('VMTC_COLD_TRANSFER_FAILED', { cause: { code: why.code, message: why.message, ...(why.details ? { details: why.details } : {}) }, replica: why.replicaId }, { message: `the replica ${why.replicaId} could not be used (${why.code}) and the source's disks changed since their export: rolled back` });
  }
  const deadline = deadlineAt(row.request, row.createdAt, cx.options.defaultDeadlineMs);
  try {
    // A fetch after all (no replica used) of disks published without checksums: the source
    // computes them now (the VM is off and the replica's last delta did not touch its disks).
    const fetch = !replica && exp.disks.some((d) => !d.sha256) ? await withChecksums(cx, row, exp) : exp;
    const r = await Promise.race([
      hub.request(row.destinationHostId, 'vm.coldImport', { export: replica ? { ...exp, replica: { replicaId: replica.replicaId } } : fetch }, Math.max(60_000, deadline - cx.clock.now() + 5_000)),
      aborted(signal, row.id),
    ]);
    const mbps = r.ms > 0 ? Math.round((r.bytes * 8) / r.ms / 1000 * 10) / 10 : null;
    cx.log.info({ bytes: r.bytes, resumedBytes: r.resumedBytes, ms: r.ms, mbps, total, replica: replica?.replicaId }, 'cold import done; VM booted at the destination');
    if (replica) replicaConsumed(hub, replica.replicaId, row.id);
    const planId = plan ? ('use' in plan ? plan.use.replicaId : plan.fallback.replicaId) : undefined;
    const used = plan ? { replica: { ...(prep?.replicaId === planId ? prep : {}), ...('use' in plan ? { used: true, ...plan.use } : { used: false, replicaId: plan.fallback.replicaId, code: plan.fallback.code }) } } : {};
    return {
      event: { type: 'COLD_IMPORTED' }, detail: { bytes: r.bytes, ms: r.ms, state: r.vm.state, ...used },
      ctxPatch: { cold: { ...cold, imported: { bytes: r.bytes, resumedBytes: r.resumedBytes, ms: r.ms, mbps }, ...used }, result: { transferredBytes: r.bytes + (replica ? replica.lastDeltaBytes + (prep?.replicaId === replica.replicaId ? prep.precopyDeltaBytes ?? 0 : 0) : 0), totalTimeMs: r.ms } },
    };
  } catch (e) {
    // The destination may have taken the store's files already: the replica goes with the move.
    if (replica) replicaConsumed(hub, replica.replicaId, row.id);
    const ve = toVmtcError(e);
    if (ve.code === 'VMTC_CANCELLED') throw ve;
    // A hypervisor refusing to start the copy is a boot failure; everything else is transfer.
    throw coldError(/^VMTC_(QEMU_|HOST_VM_|HOST_FAULT)/.test(ve.code) ? 'VMTC_COLD_BOOT_FAILED' : 'VMTC_COLD_TRANSFER_FAILED', e);
  } finally {
    hub.off('event', onEvent);
  }
};

const coldVerify: EffectFn = async (cx, row) => {
  const verify = row.request.verifyTcp;
  // The request's own bound, else the controller's (60 s by default).
  const timeoutMs = verify?.timeoutMs ?? cx.options.destinationRunTimeoutMs;
  const tcp = verify ? { host: verify.host, port: verify.port } : undefined;
  // Each attempt that did not connect becomes the migration's progress (`vmtc status`, events).
  const onEvent = (hostId: string, name: string, data: unknown) => {
    if (hostId !== row.destinationHostId || name !== 'cold.verify') return;
    const v = data as ColdVerifyProgress;
    if (v?.migrationId !== row.id) return;
    const now = cx.clock.now();
    const progress = {
      migrationId: row.id, vmId: row.vmId, status: 'active' as const, phase: 'verify',
      verify: { attempts: v.attempts, elapsedMs: v.elapsedMs, timeoutMs: v.timeoutMs, ...(v.lastError !== undefined ? { lastError: v.lastError } : {}) },
    };
    cx.store.saveProgress(row.id, { ...progress, at: now }, now);
    cx.progress(row.id, progress);
  };
  if (tcp) cx.hub.on('event', onEvent);
  try {
    const vm = await cx.hub.request(row.destinationHostId, 'vm.coldVerify', { vmId: row.vmId, timeoutMs, ...(tcp ? { tcp, migrationId: row.id } : {}) }, timeoutMs + 5_000);
    const ctx = currentCtx(cx, row.id);
    const cold: MigrationCtx['cold'] = { ...(ctx.cold ?? { exportRequested: true }), verified: true };
    return {
      event: { type: 'COLD_VERIFIED' }, detail: { state: vm.state, ...(tcp ? { tcp } : {}) },
      ctxPatch: { cold, ...(vm.resumedAt !== undefined ? { result: { ...(ctx.result ?? {}), resumedAt: vm.resumedAt } } : {}) },
    };
  } catch (e) {
    throw coldError('VMTC_COLD_VERIFICATION_FAILED', e);
  } finally {
    if (tcp) cx.hub.off('event', onEvent);
  }
};

/** The export with the sha256 of its disks, asked of the source (vm.coldChecksums) for an export
 *  published without them; kept for a retry of the import. */
async function withChecksums(cx: EffectContext, row: MigrationRow, exp: ColdExport): Promise<ColdExport> {
  let got: { disks: { index: number; sha256: string }[] };
  try {
    got = await cx.hub.request(row.sourceHostId, 'vm.coldChecksums', { vmId: row.vmId, migrationId: row.id }, Math.max(60_000, deadlineAt(row.request, row.createdAt, cx.options.defaultDeadlineMs) - cx.clock.now()));
  } catch (e) {
    throw coldError('VMTC_COLD_TRANSFER_FAILED', e);
  }
  const out: ColdExport = { ...exp, disks: exp.disks.map((d) => ({ ...d, sha256: got.disks.find((x) => x.index === d.index)?.sha256 ?? d.sha256 })) };
  if (out.disks.some((d) => !d.sha256)) throw err('VMTC_COLD_TRANSFER_FAILED', { reason: 'the source did not give the checksum of every disk' });
  cx.exports.set(row.id, out);
  cx.log.info({ disks: out.disks.length }, 'disk checksums computed at the source for a full fetch');
  return out;
}

export const COLD_EFFECTS = { coldExport, coldImport, coldVerify };
