// The source side of the cold path (EGI-Engage D4.4): power the VM off, checksum each disk,
// publish it on the export server (server.ts) for the destination only, and hand over the
// metadata. Transactional: a failed export leaves the VM as it was; a rollback (abort) withdraws
// the URLs and brings a VM that was running back up.
//
// Exports live in memory: an agent restart withdraws them (the URLs die with the process) and
// forgets the prior state of the VMs it powered off.
import { stat } from 'node:fs/promises';
import type { ColdExport, VmInfo } from '../../../src/common/agent-protocol.ts';
import type { Clock, Ids } from '../../../src/common/clock.ts';
import type { Logger } from '../../../src/common/log.ts';
import { normaliseSerial } from '../../../src/common/pki.ts';
import type { HypervisorDriver } from '../driver.ts';
import { hostError } from '../errors.ts';
import type { ExportServer } from './server.ts';
import { progressReporter, sha256File, type ColdProgressListener, type ExportedDisk, type ExportParams, type ExportRec, type ExportRoute } from './shared.ts';

export interface ColdExporterDeps {
  hostId: string;
  driver: HypervisorDriver;
  server: ExportServer;
  /** Start serving an export (before the power-off): the server's URL, or a relay's on the
   *  lightpath address (index.ts). `hasDisks` false: nothing will be fetched. */
  route: (hasDisks: boolean, log: Logger) => Promise<ExportRoute>;
  clock: Clock;
  ids: Ids;
  progressEveryMs: number;
  log: Logger;
}

export class ColdExporter {
  /** Exports by migrationId (settled or being prepared). */
  private readonly exports = new Map<string, Promise<ExportRec>>();
  private readonly settled = new Map<string, ExportRec>();
  /** vmId -> migrationId of an export being prepared (power-off, checksums). */
  private readonly exportingVm = new Map<string, string>();

  constructor(private readonly d: ColdExporterDeps) {}

  /**
   * D4.4 source steps: power off, publish the disks (single-use, time-limited URLs), hand over the
   * metadata. Idempotent per migrationId: a repeated call returns the same export.
   */
  async export(p: ExportParams, onProgress?: ColdProgressListener): Promise<ColdExport> {
    const known = this.exports.get(p.migrationId);
    if (known) {
      const rec = await known;
      if (rec.exp.vmId !== p.vmId || rec.exp.destinationHostId !== p.destinationHostId) {
        throw hostError('VMTC_HOST_BAD_PARAMS', { field: 'migrationId', migrationId: p.migrationId, reason: 'this migration exports another VM or to another destination' });
      }
      return structuredClone(rec.exp);
    }
    const other = [...this.settled.values()].find((r) => r.exp.vmId === p.vmId && !r.withdrawn)?.exp.migrationId ?? this.exportingVm.get(p.vmId);
    if (other !== undefined) throw hostError('VMTC_HOST_MIGRATION_IN_PROGRESS', { vmId: p.vmId, migrationId: other, reason: 'the VM is already exported for another migration' });
    const pending = this.doExport(p, onProgress);
    this.exports.set(p.migrationId, pending);
    this.exportingVm.set(p.vmId, p.migrationId);
    try {
      const rec = await pending;
      return structuredClone(rec.exp);
    } catch (e) {
      this.exports.delete(p.migrationId);
      throw e;
    } finally {
      this.exportingVm.delete(p.vmId);
    }
  }

  private async doExport(p: ExportParams, onProgress?: ColdProgressListener): Promise<ExportRec> {
    const { driver } = this.d;
    const log = this.d.log.child({ vmId: p.vmId, migrationId: p.migrationId });
    const info = await driver.describe(p.vmId);
    const priorState = info.state;
    // Only a VM that is running or already off: any other state belongs to an operation in flight
    // (a live migration, an operator's pause) that a power-off would break.
    if (!['running', 'stopped', 'crashed'].includes(priorState)) throw hostError('VMTC_HOST_VM_STATE', { vmId: p.vmId, state: priorState, op: 'coldExport' });
    const specDisks = info.spec.disks ?? [];
    const route = await this.d.route(specDisks.length > 0, log);
    const base = route.url;
    if (priorState === 'running') {
      log.info('powering the VM off for a cold migration');
      await driver.stop(p.vmId).catch(async (e: unknown) => {
        await route.close();
        throw e;
      });
    }
    try {
      const sizes: number[] = [];
      for (const [index, d] of specDisks.entries()) {
        const st = await stat(d.path).catch((e: unknown) => {
          throw hostError('VMTC_HOST_COLD_DISK_UNREADABLE', { vmId: p.vmId, index, path: d.path, reason: (e as Error).message }, { cause: e });
        });
        if (!st.isFile()) throw hostError('VMTC_HOST_COLD_DISK_UNREADABLE', { vmId: p.vmId, index, path: d.path, reason: 'not a regular file' });
        sizes.push(st.size);
      }
      const totalBytes = sizes.reduce((a, b) => a + b, 0);
      const progress = progressReporter(this.d.clock, this.d.progressEveryMs, onProgress, { migrationId: p.migrationId, vmId: p.vmId, phase: 'export', totalBytes });
      let hashed = 0;
      const disks: ExportedDisk[] = [];
      for (const [index, d] of specDisks.entries()) {
        const sha256 = p.checksums === 'later' ? '' : await sha256File(d.path, (n) => progress((hashed += n)));
        const secret = this.d.ids.secret(32);
        disks.push({ disk: { index, url: `${base}/cold/${secret}/${index}`, format: d.format, sizeBytes: sizes[index]!, sha256 }, path: d.path, secret, spent: false });
      }
      progress(hashed, true);
      const exp: ColdExport = {
        migrationId: p.migrationId, vmId: p.vmId, sourceHostId: this.d.hostId, destinationHostId: p.destinationHostId,
        spec: structuredClone(info.spec), priorState, disks: disks.map((x) => x.disk), expiresAt: this.d.clock.now() + p.ttlMs,
        ...(p.destinationCertSerials ? { destinationCertSerials: p.destinationCertSerials.map(normaliseSerial) } : {}),
        ...(p.sourceCertSerials ? { sourceCertSerials: p.sourceCertSerials.map(normaliseSerial) } : {}),
      };
      const rec: ExportRec = { exp, route, disks, withdrawn: false, active: new Set() };
      this.d.server.publish(rec);
      this.settled.set(p.migrationId, rec);
      log.info({ disks: disks.length, totalBytes, destinationHostId: p.destinationHostId, expiresAt: exp.expiresAt }, 'disks published for a cold migration');
      return rec;
    } catch (e) {
      await route.close();
      // Transactional (D4.4): a failed export leaves the VM as it found it.
      if (priorState === 'running') await driver.start(info.spec).catch((err: unknown) => log.error({ err }, 'restarting the VM after a failed export failed'));
      throw e;
    }
  }

  /** Rollback at the source: withdraw the export, bring a VM that was running back up. Idempotent. */
  /** The sha256 of each disk of export `migrationId`, computed now when it was published without
   *  them (checksums 'later'; the VM is off, so they are the bytes a fetch gets), and kept in
   *  the export. */
  async checksums(p: { vmId: string; migrationId: string }, onProgress?: ColdProgressListener): Promise<{ disks: { index: number; sha256: string }[] }> {
    const rec = this.settled.get(p.migrationId);
    if (!rec || rec.exp.vmId !== p.vmId || rec.withdrawn) throw hostError('VMTC_HOST_COLD_EXPORT_NOT_FOUND', { vmId: p.vmId, migrationId: p.migrationId });
    const totalBytes = rec.exp.disks.reduce((a, d) => a + d.sizeBytes, 0);
    const progress = progressReporter(this.d.clock, this.d.progressEveryMs, onProgress, { migrationId: p.migrationId, vmId: p.vmId, phase: 'export', totalBytes });
    let hashed = 0;
    for (const [i, x] of rec.disks.entries()) {
      if (x.disk.sha256) {
        hashed += x.disk.sizeBytes;
        continue;
      }
      x.disk.sha256 = await sha256File(x.path, (n) => progress((hashed += n)));
      rec.exp.disks[i]!.sha256 = x.disk.sha256;
    }
    progress(hashed, true);
    return { disks: rec.exp.disks.map((d) => ({ index: d.index, sha256: d.sha256 })) };
  }

  async abort(p: { vmId: string; migrationId: string }): Promise<VmInfo> {
    const pending = this.exports.get(p.migrationId);
    const rec = pending ? await pending.catch(() => undefined) : undefined;
    if (rec && rec.exp.vmId !== p.vmId) throw hostError('VMTC_HOST_BAD_PARAMS', { field: 'vmId', migrationId: p.migrationId, reason: 'this migration exports another VM' });
    if (rec) await this.withdraw(rec);
    const info = await this.d.driver.describe(p.vmId);
    if (rec && rec.exp.priorState === 'running' && info.state === 'stopped') {
      this.d.log.info({ vmId: p.vmId, migrationId: p.migrationId }, 'cold migration rolled back: restarting the source VM');
      return this.d.driver.start(rec.exp.spec);
    }
    return info;
  }

  /** After vm.destroy of the VM: withdraw its exports. */
  async forgetVm(vmId: string): Promise<void> {
    await Promise.all([...this.settled.values()].filter((rec) => rec.exp.vmId === vmId).map((rec) => this.withdraw(rec)));
  }

  /** Withdraw every export (the agent stops); resolves once their relays have stopped. */
  async close(): Promise<void> {
    await Promise.all([...this.settled.values()].map((rec) => this.withdraw(rec)));
  }

  /** Its URLs stop answering at once; the promise is its relay stopping. */
  private withdraw(rec: ExportRec): Promise<void> {
    rec.withdrawn = true;
    this.d.server.unpublish(rec);
    this.settled.delete(rec.exp.migrationId);
    this.exports.delete(rec.exp.migrationId);
    return rec.route.close().catch((err: unknown) => this.d.log.warn({ err, migrationId: rec.exp.migrationId }, 'stopping the export\'s relay failed'));
  }
}
