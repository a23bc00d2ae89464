// The destination side of a live migration: QEMU started with the source's device model and
// `-incoming defer`, the capabilities that must match the source's set from this migration's
// tuning, then `migrate-incoming` opens the listener on the lightpath address only
// (docs/design.md#live-migration, step 5). With tuning.copyStorage the disks are copied too
// (storage.ts). The destination runs once the migration lands; waitRunning() is the commit point
// the controller waits for (docs/design.md#commit).
import { rm } from 'node:fs/promises';
import type { MigrationTuning, VmInfo, VmSpec } from '../../../src/common/agent-protocol.ts';
import { validateSpec } from './cmdline.ts';
import { qemuError } from './errors.ts';
import type { QemuVms } from './lifecycle.ts';
import { createDiskCopies, exportDisks, finishIncoming } from './storage.ts';
import { QEMU_DEFAULTS, type NbdStorage, type QueryMigrate, type VmRecord } from './types.ts';

export async function prepareIncoming(vms: QemuVms, spec: VmSpec, migrationId: string, listenHost: string, opts: { port?: number; tuning?: MigrationTuning } = {}): Promise<{ uri: string; storage?: NbdStorage }> {
  const t = opts.tuning ?? {};
  const copy = t.copyStorage === true;
  let launchSpec = spec;
  let created: string[] = [];
  if (copy) {
    validateSpec(spec);
    // A leftover of this VM is cleared first (launch() would), so that clearing it cannot
    // touch the copies made below.
    const old = vms.vms.get(spec.vmId);
    if (old && old.state !== 'stopped' && old.state !== 'crashed') throw qemuError('VMTC_QEMU_VM_EXISTS', { vmId: spec.vmId, state: old.state });
    if (old) await vms.destroy(spec.vmId);
    ({ spec: launchSpec, created } = await createDiskCopies(vms, spec, migrationId));
  }
  let rec: VmRecord;
  try {
    // -S: with storage copy the guest starts only after the NBD server is closed; held, only
    // once told (vm.resume). Either way the disks are this host's own files (new copies, or a
    // replica's store: docs/disks.md#following), not storage shared with the source.
    const local = copy || t.holdAfterLanding === true;
    rec = await vms.launch(launchSpec, 'incoming', migrationId, { startPaused: local, localDisks: local });
    if (t.holdAfterLanding && !copy) rec.held = true;
  } catch (e) {
    for (const f of created) await rm(f, { force: true });
    throw e;
  }
  try {
    const qmp = vms.qmpOf(rec);
    // Capabilities that must match the source's (multifd, postcopy) are set before the
    // listener opens; `events` gives MIGRATION events on this side too.
    await qmp.execute('migrate-set-capabilities', {
      capabilities: [
        { capability: 'events', state: true },
        { capability: 'multifd', state: !!t.multifd },
        { capability: 'postcopy-ram', state: !!t.postcopy },
      ],
    });
    if (t.multifd && t.multifdChannels) await qmp.execute('migrate-set-parameters', { 'multifd-channels': t.multifdChannels });
    // The NBD exports open before the migration listener: the new listening socket found
    // after nbd-server-start is then the NBD server's.
    const storage = copy ? await exportDisks(vms, rec, listenHost, !!t.suspend) : undefined;
    // Listening on the lightpath address only; port 0 lets QEMU pick a free one.
    const hostPart = listenHost.includes(':') ? `[${listenHost}]` : listenHost;
    await qmp.execute('migrate-incoming', { uri: `tcp:${hostPart}:${opts.port ?? 0}` });
    const q = await qmp.execute<QueryMigrate>('query-migrate');
    const actual = opts.port || Number(q['socket-address']?.[0]?.port);
    if (!actual) throw qemuError('VMTC_QEMU_START_FAILED', { vmId: spec.vmId, reason: 'QEMU did not report the incoming port', reply: q });
    rec.log.info({ listenHost, port: actual }, 'incoming migration listener ready');
    return { uri: `tcp:${hostPart}:${actual}`, ...(storage ? { storage } : {}) };
  } catch (e) {
    await vms.destroy(spec.vmId).catch(() => undefined);
    throw e;
  }
}

/** A held destination (tuning.holdAfterLanding) takes its disks now, landed or not: the
 *  controller says the store that wrote them has closed, so nothing else holds the files
 *  (`blockdev-set-active`: QEMU's activation takes their locks and re-reads their metadata, a
 *  cost that otherwise falls between the landing and the run). The guest still runs only once
 *  told (resume). A paused VM's disks are active already: nothing to do; anything else is refused. */
export async function activateDisks(vms: QemuVms, vmId: string): Promise<{ ms: number }> {
  const rec = vms.get(vmId);
  const t0 = vms.clock.now();
  if (rec.state === 'running') return { ms: 0 };
  if (!(rec.state === 'incoming' && rec.held) && rec.state !== 'paused') throw qemuError('VMTC_QEMU_BAD_STATE', { vmId, state: rec.state, operation: 'activateDisks', reason: 'only a held destination, or a paused VM' });
  await vms.qmpOf(rec).execute('blockdev-set-active', { active: true });
  rec.disksActive = true;
  const ms = vms.clock.now() - t0;
  rec.log.info({ ms }, 'held destination took its disks');
  return { ms };
}

export async function resume(vms: QemuVms, vmId: string): Promise<VmInfo> {
  const rec = vms.get(vmId);
  const t0 = vms.clock.now();
  // Its taps' links first: what the guest sends as it starts (QEMU's announcement of its
  // address after a migration) must find them up. They go up now, also while the copy still
  // lands: the guest is to run here (its source is paused, so a frame queued meanwhile is no
  // duplicate of one it answered). The bridge's entries for its MACs (setTapsUp) go in while it
  // starts: its first frames come later still.
  const taps = vms.tapsUp(rec);
  taps.catch(() => undefined); // its fdb part only warns (setTapsUp); a link's failure is below
  // A destination of a non-live migration: the copy may still be arriving (the source finishes
  // sending before the last bytes cross the path); wait for it to land, then start it.
  const deadline = vms.clock.now() + QEMU_DEFAULTS.incomingLandMs;
  while (rec.state === 'incoming' && rec.qmp && !rec.qmp.closed && vms.clock.now() < deadline) {
    await vms.refresh(rec).catch(() => undefined);
    if (rec.state !== 'incoming') break;
    await vms.waitStateChange(rec, 100);
  }
  if (!['paused', 'postmigrate', 'running'].includes(rec.state)) throw qemuError('VMTC_QEMU_BAD_STATE', { vmId, state: rec.state, operation: 'resume' });
  // A storage-copy destination closes its NBD exports before its guest may run.
  if (rec.incomingStorage) await finishIncoming(vms, rec);
  // A held destination that landed is paused by its own events: no query first.
  if (rec.state !== 'paused') await vms.refresh(rec);
  if (rec.state !== 'running') {
    const t1 = vms.clock.now();
    await taps.links;
    const t2 = vms.clock.now();
    await vms.qmpOf(rec).execute('cont');
    rec.log.info({ landMs: t1 - t0, linksMs: t2 - t1, contMs: vms.clock.now() - t2 }, 'resumed here');
    await taps;
  }
  await vms.refresh(rec);
  return vms.info(rec);
}

export async function waitRunning(vms: QemuVms, vmId: string, timeoutMs: number): Promise<VmInfo> {
  const rec = vms.get(vmId);
  const deadline = vms.clock.now() + timeoutMs;
  for (;;) {
    if (rec.incomingStorage && rec.qmp && !rec.qmp.closed) await finishIncoming(vms, rec).catch((e: unknown) => rec.log.warn({ err: String(e) }, 'finishing the storage-copy destination failed'));
    if (rec.qmp && !rec.qmp.closed) await vms.refresh(rec).catch(() => undefined);
    if (rec.state === 'running') {
      // Running here means reachable here: the taps are up before the controller hears of it.
      await vms.tapsUp(rec);
      if (rec.role === 'incoming') {
        rec.role = 'normal';
        await vms.persist(rec);
      }
      return vms.info(rec);
    }
    if (rec.state === 'crashed' || rec.state === 'stopped') throw qemuError('VMTC_QEMU_VM_CRASHED', { vmId, state: rec.state, operation: 'waitRunning' });
    const left = deadline - vms.clock.now();
    if (left <= 0) throw qemuError('VMTC_QEMU_WAIT_TIMEOUT', { vmId, state: rec.state, timeoutMs });
    await vms.waitStateChange(rec, Math.min(200, left));
  }
}
