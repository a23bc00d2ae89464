// The cold (offline) migration path on a host agent (DESIGN.md "The cold path", EGI-Engage D4.4).
//
// Source (export): power the VM off, checksum each disk and publish it at
//   https://<exportHost>:<port>/cold/<secret>/<index>
// with a secret of 32 random bytes per disk. A URL answers only a client whose certificate (from
// the deployment CA: mutual TLS) names the export's destination host; it stops answering at
// expiresAt, when the export is withdrawn (rollback), or once one download has reached the last
// byte (single use: a Range request that ends early does not spend it, so a broken download can
// resume).
// Destination (import): check scratch space, fetch every disk into this agent's own store
// (<dataDir>/disks/<vmId>/) with resume and sha256, boot the VM from the copies; verify: the VM
// runs and, when asked, a service port accepts a connection. The agent deletes only files in its
// own store (vm.destroy), never disks at paths the operator gave.
//
// Exports live in memory: an agent restart withdraws them (the URLs die with the process) and
// forgets the prior state of the VMs it powered off.
import https from 'node:https';
import { createHash, type Hash } from 'node:crypto';
import { createReadStream, createWriteStream, readFileSync } from 'node:fs';
import { mkdir, readdir, rename, rm, rmdir, stat, statfs } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { IncomingMessage, ServerResponse, ClientRequest } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { PeerCertificate, TLSSocket } from 'node:tls';
import type { ColdDisk, ColdExport, ColdImportResult, ColdProgress, VmInfo, VmSpec } from '../../src/common/agent-protocol.ts';
import { randomIds, sleep, systemClock, type Clock, type Ids } from '../../src/common/clock.ts';
import { commonError, toVmtcError, VmtcError } from '../../src/common/errors.ts';
import { silentLogger, type Logger } from '../../src/common/log.ts';
import { identityFiles } from '../common/agent-link.ts';
import { normaliseSerial } from '../../src/common/pki.ts';
import { tcpConnectCheck, type HypervisorDriver } from './driver.ts';
import { hostError } from './errors.ts';

/** Options of the cold path; defaults in one place (STYLE.md §7). */
export interface ColdOptions {
  /** The agent's data dir: its credentials (agent.key, agent.crt, ca.crt) and the disk store
   *  `<dataDir>/disks/<vmId>/`. */
  dataDir: string;
  /** This host's id (its certificate's CN). */
  hostId: string;
  driver: HypervisorDriver;
  logger?: Logger;
  /** HOST:PORT (or [V6]:PORT) the disk export server listens on, started at the first export.
   *  Default '127.0.0.1:0'. */
  exportListen?: string;
  /** Host put in the URLs when exportListen is a wildcard address. Default: os.hostname(). */
  exportHost?: string;
  /** Expiry of exports (default: the system clock). */
  clock?: Clock;
  /** Secrets of the URLs (default: 32 random bytes, base64url). */
  ids?: Ids;
  /** Free bytes for the disk store (default: statfs). Injectable for tests. */
  freeSpace?: (dir: string) => Promise<number>;
  /** A download that receives nothing for this long fails (default 30 s). */
  stallMs?: number;
  /** Minimum interval between cold.progress callbacks (default 250 ms). */
  progressEveryMs?: number;
}

export type ColdProgressListener = (p: ColdProgress) => void;

interface ExportedDisk {
  disk: ColdDisk;
  path: string;
  secret: string;
  spent: boolean;
}

interface ExportRec {
  exp: ColdExport;
  disks: ExportedDisk[];
  withdrawn: boolean;
  /** Responses being streamed, cut when the export is withdrawn. */
  active: Set<ServerResponse>;
}

const SAFE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const ERROR_BODY_LIMIT = 64 * 1024;

/** What vm.coldExport asks for (agent-protocol.ts HostMethods). */
export interface ExportParams {
  vmId: string;
  migrationId: string;
  destinationHostId: string;
  ttlMs: number;
  destinationCertSerials?: string[];
  sourceCertSerials?: string[];
}

export class ColdTransfer {
  private readonly log: Logger;
  private readonly clock: Clock;
  private readonly ids: Ids;
  private readonly listen: { host: string; port: number };
  private readonly stallMs: number;
  private readonly progressEveryMs: number;
  /** Exports by migrationId (settled or being prepared). */
  private readonly exports = new Map<string, Promise<ExportRec>>();
  private readonly settled = new Map<string, ExportRec>();
  /** vmId -> migrationId of an export being prepared (power-off, checksums). */
  private readonly exportingVm = new Map<string, string>();
  private readonly bySecret = new Map<string, { rec: ExportRec; index: number }>();
  private readonly imports = new Map<string, Promise<ColdImportResult>>();
  /** VMs destroyed while an import of them was in flight: that import must never boot them. */
  private readonly withdrawnImports = new Set<string>();
  /** Imports in flight, by VM id. */
  private readonly importing = new Map<string, number>();
  private readonly requests = new Set<ClientRequest>();
  private server?: Promise<{ server: https.Server; url: string }>;
  private creds?: { key: string; cert: string; ca: string };
  private closed = false;

  constructor(private readonly opts: ColdOptions) {
    this.log = (opts.logger ?? silentLogger()).child({ mod: 'cold', hostId: opts.hostId });
    this.clock = opts.clock ?? systemClock;
    this.ids = opts.ids ?? randomIds;
    this.listen = parseListen(opts.exportListen ?? '127.0.0.1:0');
    this.stallMs = opts.stallMs ?? 30_000;
    this.progressEveryMs = opts.progressEveryMs ?? 250;
    for (const k of ['stallMs', 'progressEveryMs'] as const) {
      const v = opts[k];
      if (v !== undefined && !(Number.isFinite(v) && v >= 0)) throw commonError('VMTC_CONFIG_INVALID', { field: k, value: v });
    }
  }

  /** The store of agent-owned disk copies of one VM. */
  diskDir(vmId: string): string {
    return join(this.opts.dataDir, 'disks', vmId);
  }

  /** Base URL of the export server, once started. */
  async exportUrl(): Promise<string> {
    return (await this.startServer()).url;
  }

  // ---- source ------------------------------------------------------------------------------

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
    const log = this.log.child({ vmId: p.vmId, migrationId: p.migrationId });
    const info = await this.opts.driver.describe(p.vmId);
    const priorState = info.state;
    // Only a VM that is running or already off: any other state belongs to an operation in flight
    // (a live migration, an operator's pause) that a power-off would break.
    if (!['running', 'stopped', 'crashed'].includes(priorState)) throw hostError('VMTC_HOST_VM_STATE', { vmId: p.vmId, state: priorState, op: 'coldExport' });
    const { url: base } = await this.startServer();
    if (priorState === 'running') {
      log.info('powering the VM off for a cold migration');
      await this.opts.driver.stop(p.vmId);
    }
    try {
      const specDisks = info.spec.disks ?? [];
      const sizes: number[] = [];
      for (const [index, d] of specDisks.entries()) {
        const st = await stat(d.path).catch((e: unknown) => {
          throw hostError('VMTC_HOST_COLD_DISK_UNREADABLE', { vmId: p.vmId, index, path: d.path, reason: (e as Error).message }, { cause: e });
        });
        if (!st.isFile()) throw hostError('VMTC_HOST_COLD_DISK_UNREADABLE', { vmId: p.vmId, index, path: d.path, reason: 'not a regular file' });
        sizes.push(st.size);
      }
      const totalBytes = sizes.reduce((a, b) => a + b, 0);
      const progress = this.progressReporter(onProgress, { migrationId: p.migrationId, vmId: p.vmId, phase: 'export', totalBytes });
      let hashed = 0;
      const disks: ExportedDisk[] = [];
      for (const [index, d] of specDisks.entries()) {
        const sha256 = await sha256File(d.path, (n) => progress((hashed += n)));
        const secret = this.ids.secret(32);
        disks.push({ disk: { index, url: `${base}/cold/${secret}/${index}`, format: d.format, sizeBytes: sizes[index]!, sha256 }, path: d.path, secret, spent: false });
      }
      progress(hashed, true);
      const exp: ColdExport = {
        migrationId: p.migrationId, vmId: p.vmId, sourceHostId: this.opts.hostId, destinationHostId: p.destinationHostId,
        spec: structuredClone(info.spec), priorState, disks: disks.map((x) => x.disk), expiresAt: this.clock.now() + p.ttlMs,
        ...(p.destinationCertSerials ? { destinationCertSerials: p.destinationCertSerials.map(normaliseSerial) } : {}),
        ...(p.sourceCertSerials ? { sourceCertSerials: p.sourceCertSerials.map(normaliseSerial) } : {}),
      };
      const rec: ExportRec = { exp, disks, withdrawn: false, active: new Set() };
      for (const [index, x] of disks.entries()) this.bySecret.set(x.secret, { rec, index });
      this.settled.set(p.migrationId, rec);
      log.info({ disks: disks.length, totalBytes, destinationHostId: p.destinationHostId, expiresAt: exp.expiresAt }, 'disks published for a cold migration');
      return rec;
    } catch (e) {
      // Transactional (D4.4): a failed export leaves the VM as it found it.
      if (priorState === 'running') await this.opts.driver.start(info.spec).catch((err: unknown) => log.error({ err }, 'restarting the VM after a failed export failed'));
      throw e;
    }
  }

  /** Rollback at the source: withdraw the export, bring a VM that was running back up. Idempotent. */
  async abort(p: { vmId: string; migrationId: string }): Promise<VmInfo> {
    const pending = this.exports.get(p.migrationId);
    const rec = pending ? await pending.catch(() => undefined) : undefined;
    if (rec && rec.exp.vmId !== p.vmId) throw hostError('VMTC_HOST_BAD_PARAMS', { field: 'vmId', migrationId: p.migrationId, reason: 'this migration exports another VM' });
    if (rec) this.withdraw(rec);
    const info = await this.opts.driver.describe(p.vmId);
    if (rec && rec.exp.priorState === 'running' && info.state === 'stopped') {
      this.log.info({ vmId: p.vmId, migrationId: p.migrationId }, 'cold migration rolled back: restarting the source VM');
      return this.opts.driver.start(rec.exp.spec);
    }
    return info;
  }

  private withdraw(rec: ExportRec): void {
    rec.withdrawn = true;
    for (const d of rec.disks) this.bySecret.delete(d.secret);
    for (const res of rec.active) res.destroy();
    rec.active.clear();
    this.settled.delete(rec.exp.migrationId);
    this.exports.delete(rec.exp.migrationId);
  }

  /** After vm.destroy: withdraw the VM's exports and delete the agent-owned copies of its disks. */
  async forgetVm(vmId: string): Promise<void> {
    for (const rec of [...this.settled.values()]) if (rec.exp.vmId === vmId) this.withdraw(rec);
    // A rollback destroys the destination's VM before it restarts the source: an import still
    // fetching (or starting) this VM must not boot it afterwards, or the VM would run twice.
    if (this.importing.has(vmId)) this.withdrawnImports.add(vmId);
    if (SAFE_NAME.test(vmId)) await rm(this.diskDir(vmId), { recursive: true, force: true });
  }

  // ---- the export server ---------------------------------------------------------------------

  private credentials(): { key: string; cert: string; ca: string } {
    if (!this.creds) {
      const f = identityFiles(this.opts.dataDir);
      try {
        this.creds = { key: readFileSync(f.key, 'utf8'), cert: readFileSync(f.cert, 'utf8'), ca: readFileSync(f.ca, 'utf8') };
      } catch (e) {
        throw commonError('VMTC_CONFIG_INVALID', { field: 'data', dir: this.opts.dataDir, reason: (e as Error).message }, { message: 'the agent credentials are unreadable', cause: e });
      }
    }
    return this.creds;
  }

  private startServer(): Promise<{ server: https.Server; url: string }> {
    if (this.closed) return Promise.reject(commonError('VMTC_SHUTTING_DOWN'));
    this.server ??= (async () => {
      const c = this.credentials();
      // Mutual TLS with the deployment CA only: a client without a certificate from it never gets
      // past the handshake; which host it is is checked per request (the export's destination).
      const server = https.createServer({ key: c.key, cert: c.cert, ca: c.ca, requestCert: true, rejectUnauthorized: true }, (req, res) => void this.serve(req, res));
      server.on('tlsClientError', (err) => this.log.info({ reason: err.message }, 'export server: TLS handshake refused'));
      await new Promise<void>((resolve, reject) => {
        server.once('error', (e) => reject(commonError('VMTC_CONFIG_INVALID', { field: 'exportListen', value: `${this.listen.host}:${this.listen.port}`, reason: e.message }, { message: 'the disk export server cannot listen', cause: e })));
        server.listen(this.listen.port, this.listen.host, () => resolve());
      });
      const port = (server.address() as AddressInfo).port;
      const wildcard = ['0.0.0.0', '::', ''].includes(this.listen.host);
      const host = wildcard ? (this.opts.exportHost ?? hostname()) : this.listen.host;
      const url = `https://${host.includes(':') ? `[${host}]` : host}:${port}`;
      this.log.info({ url }, 'disk export server listening');
      return { server, url };
    })();
    this.server.catch(() => { this.server = undefined; });
    return this.server;
  }

  private async serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const fail = (e: VmtcError, extra: Record<string, string> = {}) => {
      if (res.headersSent) return void res.destroy();
      const body = JSON.stringify(e.toJSON());
      res.writeHead(e.status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), 'cache-control': 'no-store', ...extra });
      res.end(body);
    };
    let cn: string | undefined;
    try {
      const peer = (req.socket as TLSSocket).getPeerCertificate();
      cn = peerCn(peer);
      const m = /^\/cold\/([A-Za-z0-9_-]{16,128})\/(\d{1,6})$/.exec((req.url ?? '').split('?')[0]!);
      const hit = m ? this.bySecret.get(m[1]!) : undefined;
      if (!m || !hit || hit.index !== Number(m[2]) || hit.rec.withdrawn) throw hostError('VMTC_HOST_COLD_EXPORT_NOT_FOUND');
      const { rec, index } = hit;
      const d = rec.disks[index]!;
      const log = this.log.child({ vmId: rec.exp.vmId, migrationId: rec.exp.migrationId });
      if (cn !== rec.exp.destinationHostId) {
        log.warn({ cn, index }, 'disk export refused: the client is not the destination');
        throw hostError('VMTC_HOST_COLD_FORBIDDEN', { clientHostId: cn ?? null });
      }
      // Pinned by the controller to the destination's unrevoked certificates.
      const allowed = rec.exp.destinationCertSerials;
      if (allowed && !allowed.map(normaliseSerial).includes(normaliseSerial(peer.serialNumber ?? ''))) {
        log.warn({ cn, index, serial: peer.serialNumber }, 'disk export refused: the client certificate is not one the controller vouches for (revoked?)');
        throw hostError('VMTC_HOST_COLD_FORBIDDEN', { clientHostId: cn, reason: 'certificate not among the destination\'s current ones (revoked?)' });
      }
      if (req.method !== 'GET') return fail(commonError('VMTC_METHOD_NOT_ALLOWED', { method: req.method }), { allow: 'GET' });
      if (this.clock.now() > rec.exp.expiresAt) throw hostError('VMTC_HOST_COLD_EXPORT_GONE', { reason: 'expired', expiresAt: rec.exp.expiresAt });
      if (d.spent) throw hostError('VMTC_HOST_COLD_EXPORT_GONE', { reason: 'spent' });
      const size = d.disk.sizeBytes;
      const st = await stat(d.path).catch(() => undefined);
      if (!st || st.size !== size) throw hostError('VMTC_HOST_COLD_DISK_UNREADABLE', { index, reason: st ? 'the disk changed size since it was exported' : 'the disk is gone' });
      let start = 0;
      let end = size - 1;
      const range = req.headers.range;
      if (range !== undefined) {
        const r = /^bytes=(\d+)-(\d*)$/.exec(range.trim());
        const s = r ? Number(r[1]) : NaN;
        const e = r && r[2] ? Number(r[2]) : size - 1;
        if (!r || !(s < size) || e < s) return fail(hostError('VMTC_HOST_COLD_RANGE', { range, sizeBytes: size }), { 'content-range': `bytes */${size}` });
        start = s;
        end = Math.min(e, size - 1);
      }
      const headers: Record<string, string | number> = { 'content-type': 'application/octet-stream', 'content-length': end - start + 1 < 0 ? 0 : end - start + 1, 'accept-ranges': 'bytes', 'cache-control': 'no-store' };
      if (range !== undefined) headers['content-range'] = `bytes ${start}-${end}/${size}`;
      res.writeHead(range !== undefined ? 206 : 200, headers);
      rec.active.add(res);
      try {
        if (size > 0) await pipeline(createReadStream(d.path, { start, end }), res);
        else res.end();
      } finally {
        rec.active.delete(res);
      }
      // Single use: spent once a response has carried the disk's last byte (D4.4); a response
      // cut short (or a range ending early) leaves it for a resumed download.
      if (end === size - 1 && !rec.withdrawn) {
        d.spent = true;
        log.info({ index, from: start, bytes: end - start + 1 }, 'disk fetched; its URL is spent');
      }
    } catch (e) {
      const ve = toVmtcError(e);
      if (ve.code === 'VMTC_INTERNAL') this.log.warn({ err: e, cn }, 'disk export request failed');
      fail(ve);
    }
  }

  // ---- destination ---------------------------------------------------------------------------

  /**
   * D4.4 destination steps: check requirements and scratch space, download with resume and
   * checksum, boot from the copies. A retry of the same migration resumes the partial files; a
   * retry after success returns the VM already running.
   */
  async import(exp: ColdExport, onProgress?: ColdProgressListener): Promise<ColdImportResult> {
    checkExport(exp);
    const known = this.imports.get(exp.migrationId);
    if (known) return known;
    this.withdrawnImports.delete(exp.vmId);
    this.importing.set(exp.vmId, (this.importing.get(exp.vmId) ?? 0) + 1);
    const p = this.doImport(exp, onProgress);
    this.imports.set(exp.migrationId, p);
    try {
      return await p;
    } finally {
      this.imports.delete(exp.migrationId);
      const n = (this.importing.get(exp.vmId) ?? 1) - 1;
      if (n > 0) this.importing.set(exp.vmId, n);
      else {
        this.importing.delete(exp.vmId);
        this.withdrawnImports.delete(exp.vmId);
      }
    }
  }

  private async doImport(exp: ColdExport, onProgress?: ColdProgressListener): Promise<ColdImportResult> {
    const t0 = Date.now();
    const log = this.log.child({ vmId: exp.vmId, migrationId: exp.migrationId });
    if (exp.destinationHostId !== this.opts.hostId) throw hostError('VMTC_HOST_BAD_PARAMS', { field: 'export.destinationHostId', value: exp.destinationHostId, hostId: this.opts.hostId });
    const dir = this.diskDir(exp.vmId);
    const finals = exp.disks.map((d) => join(dir, `${exp.migrationId}-disk${d.index}.${d.format}`));
    const localSpec: VmSpec = {
      ...structuredClone(exp.spec),
      ...(exp.spec.disks ? { disks: exp.spec.disks.map((d, i) => ({ ...d, path: finals[i]! })) } : {}),
    };
    const existing = await this.opts.driver.describe(exp.vmId).catch((e: unknown) => {
      if (isNotFound(e)) return undefined;
      throw e;
    });
    if (existing) {
      // A retried request whose first reply was lost: the VM already runs from these copies.
      const same = JSON.stringify((existing.spec.disks ?? []).map((d) => d.path)) === JSON.stringify(finals);
      if (same && existing.state === 'running') return { vm: existing, bytes: 0, resumedBytes: 0, ms: Date.now() - t0 };
      throw hostError('VMTC_HOST_VM_EXISTS', { vmId: exp.vmId, state: existing.state });
    }

    await mkdir(dir, { recursive: true });
    // What is already here: whole copies (checked again below) and parts of interrupted fetches.
    const have: { final: number; part: number }[] = [];
    for (const [i, d] of exp.disks.entries()) {
      const f = await stat(finals[i]!).catch(() => undefined);
      const pt = await stat(`${finals[i]!}.part`).catch(() => undefined);
      have.push({ final: f?.isFile() && f.size === d.sizeBytes ? d.sizeBytes : 0, part: pt?.isFile() && pt.size <= d.sizeBytes ? pt.size : 0 });
    }
    const totalBytes = exp.disks.reduce((a, d) => a + d.sizeBytes, 0);
    const needBytes = exp.disks.reduce((a, d, i) => a + (have[i]!.final ? 0 : d.sizeBytes - have[i]!.part), 0);
    const freeBytes = await (this.opts.freeSpace ?? statfsFree)(dir);
    if (freeBytes < needBytes) {
      await removeIfEmpty(dir);
      throw hostError('VMTC_HOST_INSUFFICIENT_RESOURCES', { vmId: exp.vmId, needBytes, freeBytes, dir });
    }

    log.info({ disks: exp.disks.length, totalBytes, sourceHostId: exp.sourceHostId }, 'cold import: fetching disks');
    const progress = this.progressReporter(onProgress, { migrationId: exp.migrationId, vmId: exp.vmId, phase: 'download', totalBytes });
    let bytes = 0;
    let resumedBytes = 0;
    let done = 0;
    try {
      for (const [i, d] of exp.disks.entries()) {
        const final = finals[i]!;
        if (have[i]!.final) {
          if ((await sha256File(final)) === d.sha256) {
            progress((done += d.sizeBytes));
            continue;
          }
          await rm(final, { force: true });
        }
        const r = await this.fetchDisk(exp, d, `${final}.part`, (n) => progress(done + n));
        bytes += r.fetched;
        resumedBytes += r.resumed;
        done += d.sizeBytes;
        await rename(`${final}.part`, final);
      }
      progress(done, true);
    } catch (e) {
      // A checksum failure means the source's data is not what it published: nothing fetched for
      // this migration can be trusted. A transfer failure keeps the parts for a resumed retry.
      if (e instanceof VmtcError && e.code === 'VMTC_HOST_COLD_CHECKSUM') await this.removeCopies(dir, exp.migrationId);
      log.warn({ err: toVmtcError(e).toJSON() }, 'cold import: fetching the disks failed');
      throw e;
    }

    const withdrawn = async () => {
      await this.removeCopies(dir, exp.migrationId);
      log.warn('cold import: the VM was destroyed here while it was being fetched; not booting it');
      return hostError('VMTC_HOST_COLD_TRANSFER_FAILED', { vmId: exp.vmId, migrationId: exp.migrationId, reason: 'withdrawn: the VM was destroyed on this host during the import' });
    };
    if (this.withdrawnImports.has(exp.vmId)) throw await withdrawn();
    onProgress?.({ migrationId: exp.migrationId, vmId: exp.vmId, phase: 'boot', transferredBytes: totalBytes, totalBytes });
    let vm: VmInfo;
    try {
      vm = await this.opts.driver.start(localSpec);
    } catch (e) {
      // Transactional: the destination cleans up after itself; the source still has the VM.
      await this.removeCopies(dir, exp.migrationId);
      throw e;
    }
    if (this.withdrawnImports.has(exp.vmId)) {
      // Destroyed while the hypervisor was starting it: take it down again.
      await this.opts.driver.destroy(exp.vmId).catch(() => undefined);
      throw await withdrawn();
    }
    const ms = Date.now() - t0;
    log.info({ bytes, resumedBytes, ms }, 'cold import: VM started from the fetched disks');
    return { vm, bytes, resumedBytes, ms };
  }

  /** Fetch one disk into `part`, resuming what is there; verify size and sha256. */
  private async fetchDisk(exp: ColdExport, d: ColdDisk, part: string, onBytes: (n: number) => void): Promise<{ fetched: number; resumed: number }> {
    const st = await stat(part).catch(() => undefined);
    let from = st?.isFile() && st.size <= d.sizeBytes ? st.size : 0;
    if (st && from === d.sizeBytes) {
      // An earlier attempt fetched everything but stopped before the rename: check it only.
      if ((await sha256File(part)) === d.sha256) return { fetched: 0, resumed: from };
      from = 0;
    }
    let hash = createHash('sha256');
    if (from > 0) await hashFile(part, hash, from);
    const { res, stalled } = await this.request(exp, d, from);
    if (res.statusCode === 200 && from > 0) {
      // The server sent the whole disk despite the Range: start over.
      hash = createHash('sha256');
      from = 0;
    } else if (res.statusCode === 206) {
      const cr = /^bytes (\d+)-(\d+)\/(\d+)$/.exec(String(res.headers['content-range'] ?? ''));
      if (!cr || Number(cr[1]) !== from || Number(cr[3]) !== d.sizeBytes) {
        res.destroy();
        throw hostError('VMTC_HOST_COLD_TRANSFER_FAILED', { index: d.index, reason: 'the source answered another byte range', contentRange: res.headers['content-range'] ?? null });
      }
    }
    const resumed = from;
    let n = 0;
    const tap = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        hash.update(chunk);
        n += chunk.length;
        onBytes(resumed + n);
        cb(null, chunk);
      },
    });
    try {
      await pipeline(res, tap, createWriteStream(part, { flags: resumed > 0 ? 'a' : 'w' }));
    } catch (e) {
      throw hostError('VMTC_HOST_COLD_TRANSFER_FAILED', { index: d.index, receivedBytes: resumed + n, sizeBytes: d.sizeBytes, reason: stalled() ? `no data for ${this.stallMs} ms` : (e as Error).message }, { cause: e });
    }
    const total = resumed + n;
    // Short: the connection ended early (kept, for a resumed retry). Long or different: the
    // source's data is not what it published (dropped).
    if (total < d.sizeBytes) throw hostError('VMTC_HOST_COLD_TRANSFER_FAILED', { index: d.index, receivedBytes: total, sizeBytes: d.sizeBytes, reason: 'the download ended early' });
    const digest = hash.digest('hex');
    if (total !== d.sizeBytes || digest !== d.sha256) {
      await rm(part, { force: true });
      throw hostError('VMTC_HOST_COLD_CHECKSUM', { index: d.index, sizeBytes: total, expectedSizeBytes: d.sizeBytes, sha256: digest, expectedSha256: d.sha256 });
    }
    return { fetched: n, resumed };
  }

  /** GET one disk URL with this agent's certificate, trusting only the deployment CA and only a
   *  server whose certificate names the export's source host. */
  private request(exp: ColdExport, d: ColdDisk, from: number): Promise<{ res: IncomingMessage; stalled: () => boolean }> {
    const c = this.credentials();
    let u: URL;
    try {
      u = new URL(d.url);
      if (u.protocol !== 'https:') throw new Error('not https');
    } catch {
      throw hostError('VMTC_HOST_BAD_PARAMS', { field: `export.disks[${d.index}].url` });
    }
    let stalled = false;
    return new Promise((resolve, reject) => {
      let identityError: string | undefined;
      const req = https.request({
        host: u.hostname.replace(/^\[|\]$/g, ''), port: u.port || 443, path: u.pathname, method: 'GET',
        key: c.key, cert: c.cert, ca: c.ca, agent: false,
        // The URL names an address, not a DNS name in the certificate: the peer is identified by
        // its CN, which the deployment CA sets to the host id at enrolment.
        checkServerIdentity: (_host: string, cert: PeerCertificate) => {
          const cn = peerCn(cert);
          if (cn !== exp.sourceHostId) identityError = `the server's certificate names ${cn ?? 'nobody'}, not ${exp.sourceHostId}`;
          else if (exp.sourceCertSerials && !exp.sourceCertSerials.map(normaliseSerial).includes(normaliseSerial(cert.serialNumber ?? ''))) {
            identityError = `the server's certificate (serial ${cert.serialNumber}) is not one of ${exp.sourceHostId}'s current ones (revoked?)`;
          } else return undefined;
          return new Error(identityError);
        },
        headers: from > 0 ? { range: `bytes=${from}-` } : {},
      });
      this.requests.add(req);
      req.on('close', () => this.requests.delete(req));
      // Socket inactivity (connect, handshake, headers or body): a stalled transfer fails.
      req.setTimeout(this.stallMs, () => {
        stalled = true;
        req.destroy(new Error(`no data for ${this.stallMs} ms`));
      });
      req.on('error', (e) => reject(hostError('VMTC_HOST_COLD_TRANSFER_FAILED', { index: d.index, reason: identityError ?? e.message }, { cause: e })));
      req.on('response', (res) => {
        if (res.statusCode === 200 || res.statusCode === 206) return resolve({ res, stalled: () => stalled });
        // The source's own coded error (gone, forbidden, …) is passed on as it is.
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (s: string) => { if (body.length < ERROR_BODY_LIMIT) body += s; });
        res.on('error', () => undefined);
        res.on('end', () => {
          let parsed: unknown;
          try {
            parsed = JSON.parse(body);
          } catch {
            parsed = undefined;
          }
          const remote = VmtcError.fromBody(parsed, res.statusCode);
          if (remote.code === 'VMTC_PEER_BAD_REPLY') return reject(hostError('VMTC_HOST_COLD_TRANSFER_FAILED', { index: d.index, httpStatus: res.statusCode, reason: 'the source answered with an error that is not coded' }));
          reject(new VmtcError(remote.code, res.statusCode ?? 502, remote.message, { ...(remote.details ?? {}), index: d.index, httpStatus: res.statusCode, from: 'source' }));
        });
      });
      req.end();
    });
  }

  private async removeCopies(dir: string, migrationId: string): Promise<void> {
    const names = await readdir(dir).catch(() => [] as string[]);
    for (const n of names) if (n.startsWith(`${migrationId}-disk`)) await rm(join(dir, n), { force: true });
    await removeIfEmpty(dir);
  }

  /** D4.4 "verify": the VM runs and, when asked, a service in it accepts a TCP connection. */
  async verify(p: { vmId: string; timeoutMs: number; tcp?: { host: string; port: number } }): Promise<VmInfo> {
    const deadline = Date.now() + p.timeoutMs;
    const vm = await this.opts.driver.waitRunning(p.vmId, p.timeoutMs);
    if (!p.tcp) return vm;
    const { host, port } = p.tcp;
    const driver = this.opts.driver;
    let attempts = 0;
    for (;;) {
      const left = deadline - Date.now();
      const slot = Math.max(100, Math.min(2000, left));
      attempts++;
      const ok = driver.checkTcp ? await driver.checkTcp(p.vmId, host, port, slot) : await tcpConnectCheck(host, port, slot);
      if (ok) return driver.describe(p.vmId);
      if (Date.now() + 200 >= deadline) throw hostError('VMTC_HOST_COLD_TCP_CHECK_FAILED', { vmId: p.vmId, host, port, attempts, timeoutMs: p.timeoutMs });
      await sleep(200);
    }
  }

  // ---- shared -------------------------------------------------------------------------------

  private progressReporter(onProgress: ColdProgressListener | undefined, base: Omit<ColdProgress, 'transferredBytes'>): (n: number, force?: boolean) => void {
    let last = 0;
    return (n, force = false) => {
      if (!onProgress) return;
      const now = Date.now();
      if (!force && now - last < this.progressEveryMs) return;
      last = now;
      try {
        onProgress({ ...base, transferredBytes: n });
      } catch {
        /* a listener's failure must not break the transfer */
      }
    };
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const req of this.requests) req.destroy();
    for (const rec of [...this.settled.values()]) this.withdraw(rec);
    const s = await this.server?.catch(() => undefined);
    if (s) {
      s.server.closeAllConnections();
      await new Promise<void>((r) => s.server.close(() => r()));
    }
  }
}

// ---- helpers -------------------------------------------------------------------------------

function parseListen(v: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(v);
  const port = m ? Number(m[3]) : NaN;
  if (!m || !(port >= 0 && port <= 65535)) throw commonError('VMTC_CONFIG_INVALID', { field: 'exportListen', value: v }, { message: 'exportListen must be HOST:PORT' });
  return { host: (m[1] ?? m[2])!, port };
}

function peerCn(cert: PeerCertificate | undefined): string | undefined {
  const raw = cert?.subject?.CN as string | string[] | undefined;
  return Array.isArray(raw) ? raw[0] : raw;
}

function isNotFound(e: unknown): boolean {
  return e instanceof VmtcError && /_VM_NOT_FOUND$/.test(e.code);
}

async function statfsFree(dir: string): Promise<number> {
  const st = await statfs(dir);
  return st.bavail * st.bsize;
}

async function removeIfEmpty(dir: string): Promise<void> {
  await rmdir(dir).catch(() => undefined);
}

async function hashFile(path: string, hash: Hash, bytes: number, onBytes?: (n: number) => void): Promise<void> {
  if (bytes <= 0) return;
  for await (const chunk of createReadStream(path, { start: 0, end: bytes - 1 })) {
    hash.update(chunk as Buffer);
    onBytes?.((chunk as Buffer).length);
  }
}

/** sha256 of a whole file, streamed; onBytes gets each chunk's length. */
export async function sha256File(path: string, onBytes?: (n: number) => void): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) {
    hash.update(chunk as Buffer);
    onBytes?.((chunk as Buffer).length);
  }
  return hash.digest('hex');
}

/** The shape of an export, checked before anything is fetched (it crosses the controller). */
export function checkExport(exp: unknown): asserts exp is ColdExport {
  const bad = (field: string, reason?: string): never => {
    throw hostError('VMTC_HOST_BAD_PARAMS', { field: `export.${field}`, ...(reason ? { reason } : {}) });
  };
  if (!exp || typeof exp !== 'object' || Array.isArray(exp)) bad('', 'an object is required');
  const e = exp as Record<string, unknown>;
  for (const k of ['migrationId', 'vmId', 'sourceHostId', 'destinationHostId'] as const) if (typeof e[k] !== 'string' || !e[k]) bad(k);
  // Both name files in the disk store: no separators, no dot-names.
  if (!SAFE_NAME.test(e.migrationId as string)) bad('migrationId', 'letters, digits, dot, dash, underscore; 1-128');
  if (!SAFE_NAME.test(e.vmId as string)) bad('vmId', 'letters, digits, dot, dash, underscore; 1-128');
  const spec = e.spec as VmSpec | undefined;
  if (!spec || typeof spec !== 'object' || spec.vmId !== e.vmId) bad('spec', 'a VmSpec of the same vmId is required');
  if (typeof e.expiresAt !== 'number') bad('expiresAt');
  for (const k of ['sourceCertSerials', 'destinationCertSerials'] as const) {
    const v = e[k];
    if (v !== undefined && !(Array.isArray(v) && v.every((x) => typeof x === 'string'))) bad(k, 'an array of hex serials');
  }
  if (!Array.isArray(e.disks)) bad('disks');
  const disks = e.disks as ColdDisk[];
  const specDisks = spec!.disks ?? [];
  if (disks.length !== specDisks.length) bad('disks', 'one entry per disk of the spec');
  for (const [i, d] of disks.entries()) {
    if (!d || typeof d !== 'object') bad(`disks[${i}]`);
    if (d.index !== i) bad(`disks[${i}].index`);
    if (typeof d.url !== 'string') bad(`disks[${i}].url`);
    if (d.format !== 'raw' && d.format !== 'qcow2') bad(`disks[${i}].format`);
    if (!(Number.isSafeInteger(d.sizeBytes) && d.sizeBytes >= 0)) bad(`disks[${i}].sizeBytes`);
    if (typeof d.sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(d.sha256)) bad(`disks[${i}].sha256`);
  }
}
