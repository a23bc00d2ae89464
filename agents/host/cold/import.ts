// The destination side of the cold path (EGI-Engage D4.4): check the export and the scratch
// space, fetch every disk into this agent's own store (<dataDir>/disks/<vmId>/) over HTTPS with
// mutual TLS, resuming a partial file and checking sha256, boot the VM from the copies; verify:
// the VM runs and, when asked, a service port accepts a connection. The agent deletes only files
// in its own store (vm.destroy), never disks at paths the operator gave.
import https from 'node:https';
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { copyFile, mkdir, readdir, rename, rm, rmdir, stat, statfs } from 'node:fs/promises';
import { join } from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ClientRequest, IncomingMessage } from 'node:http';
import type { PeerCertificate } from 'node:tls';
import type { ColdDisk, ColdExport, ColdImportResult, VmInfo, VmSpec } from '../../../src/common/agent-protocol.ts';
import { clockSleep, type Clock } from '../../../src/common/clock.ts';
import { toVmtcError, VmtcError } from '../../../src/common/errors.ts';
import type { Logger } from '../../../src/common/log.ts';
import { normaliseSerial } from '../../../src/common/pki.ts';
import { tcpConnectCheck, type HypervisorDriver } from '../driver.ts';
import { hostError } from '../errors.ts';
import { checkExport } from './check.ts';
import { FetchRelays } from './relay.ts';
import { hashFile, peerCn, progressReporter, sha256File, type ColdProgressListener, type Credentials } from './shared.ts';

const ERROR_BODY_LIMIT = 64 * 1024;

export interface ColdImporterDeps {
  hostId: string;
  driver: HypervisorDriver;
  credentials: () => Credentials;
  diskDir: (vmId: string) => string;
  clock: Clock;
  freeSpace?: (dir: string) => Promise<number>;
  stallMs: number;
  progressEveryMs: number;
  log: Logger;
  /** Fetch from inside this network namespace, through relays (relay.ts; ColdOptions.relay). */
  relay?: { netns: string };
}

export class ColdImporter {
  private readonly imports = new Map<string, Promise<ColdImportResult>>();
  /** VMs destroyed while an import of them was in flight: that import must never boot them. */
  private readonly withdrawnImports = new Set<string>();
  /** Imports in flight, by VM id. */
  private readonly importing = new Map<string, number>();
  private readonly requests = new Set<ClientRequest>();

  constructor(private readonly d: ColdImporterDeps) {}

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

  /** The VM was destroyed here: an import still fetching (or starting) it must not boot it. */
  forgetVm(vmId: string): void {
    // A rollback destroys the destination's VM before it restarts the source: booting it
    // afterwards would make the VM run twice.
    if (this.importing.has(vmId)) this.withdrawnImports.add(vmId);
  }

  close(): void {
    for (const req of this.requests) req.destroy();
  }

  private async doImport(exp: ColdExport, onProgress?: ColdProgressListener): Promise<ColdImportResult> {
    const { clock, driver } = this.d;
    const t0 = clock.now();
    const log = this.d.log.child({ vmId: exp.vmId, migrationId: exp.migrationId });
    if (exp.destinationHostId !== this.d.hostId) throw hostError('VMTC_HOST_BAD_PARAMS', { field: 'export.destinationHostId', value: exp.destinationHostId, hostId: this.d.hostId });
    const dir = this.d.diskDir(exp.vmId);
    const finals = exp.disks.map((d) => join(dir, `${exp.migrationId}-disk${d.index}.${d.format}`));
    const localSpec: VmSpec = {
      ...structuredClone(exp.spec),
      ...(exp.spec.disks ? { disks: exp.spec.disks.map((d, i) => ({ ...d, path: finals[i]! })) } : {}),
    };
    const existing = await driver.describe(exp.vmId).catch((e: unknown) => {
      if (e instanceof VmtcError && /_VM_NOT_FOUND$/.test(e.code)) return undefined;
      throw e;
    });
    if (existing) {
      // A retried request whose first reply was lost: the VM already runs from these copies.
      const same = JSON.stringify((existing.spec.disks ?? []).map((d) => d.path)) === JSON.stringify(finals);
      if (same && existing.state === 'running') return { vm: existing, bytes: 0, resumedBytes: 0, ms: clock.now() - t0 };
      throw hostError('VMTC_HOST_VM_EXISTS', { vmId: exp.vmId, state: existing.state });
    }

    await mkdir(dir, { recursive: true });
    const totalBytes = exp.disks.reduce((a, d) => a + d.sizeBytes, 0);
    let bytes = 0;
    let resumedBytes = 0;
    // With a replica (docs/disks.md#replicas) the disks are already here, in its store, checked
    // by the controller against the source's digests: they become the VM's copies, nothing is
    // fetched.
    if (exp.replica) await this.adoptReplica(exp, finals, log);
    else {
    // What is already here: whole copies (checked again below) and parts of interrupted fetches.
    const have: { final: number; part: number }[] = [];
    for (const [i, d] of exp.disks.entries()) {
      const f = await stat(finals[i]!).catch(() => undefined);
      const pt = await stat(`${finals[i]!}.part`).catch(() => undefined);
      have.push({ final: f?.isFile() && f.size === d.sizeBytes ? d.sizeBytes : 0, part: pt?.isFile() && pt.size <= d.sizeBytes ? pt.size : 0 });
    }
    const needBytes = exp.disks.reduce((a, d, i) => a + (have[i]!.final ? 0 : d.sizeBytes - have[i]!.part), 0);
    const freeBytes = await (this.d.freeSpace ?? statfsFree)(dir);
    if (freeBytes < needBytes) {
      await removeIfEmpty(dir);
      throw hostError('VMTC_HOST_INSUFFICIENT_RESOURCES', { vmId: exp.vmId, needBytes, freeBytes, dir });
    }

    log.info({ disks: exp.disks.length, totalBytes, sourceHostId: exp.sourceHostId }, 'cold import: fetching disks');
    const progress = progressReporter(clock, this.d.progressEveryMs, onProgress, { migrationId: exp.migrationId, vmId: exp.vmId, phase: 'download', totalBytes });
    let done = 0;
    // In the driver's namespace (the lab), the fetch's TCP leaves from there, across the lightpath.
    const relays = this.d.relay ? new FetchRelays({ netns: this.d.relay.netns, clock, log }) : undefined;
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
        const r = await this.fetchDisk(exp, d, `${final}.part`, (n) => progress(done + n), relays);
        bytes += r.fetched;
        resumedBytes += r.resumed;
        done += d.sizeBytes;
        await rename(`${final}.part`, final);
      }
      progress(done, true);
    } catch (e) {
      // A checksum failure means the source's data is not what it published: nothing fetched for
      // this migration can be trusted. A transfer failure keeps the parts for a resumed retry.
      if (e instanceof VmtcError && e.code === 'VMTC_HOST_COLD_CHECKSUM') await removeCopies(dir, exp.migrationId);
      log.warn({ err: toVmtcError(e).toJSON() }, 'cold import: fetching the disks failed');
      throw e;
    } finally {
      await relays?.close();
    }
    }

    const withdrawn = async () => {
      await removeCopies(dir, exp.migrationId);
      log.warn('cold import: the VM was destroyed here while it was being fetched; not booting it');
      return hostError('VMTC_HOST_COLD_TRANSFER_FAILED', { vmId: exp.vmId, migrationId: exp.migrationId, reason: 'withdrawn: the VM was destroyed on this host during the import' });
    };
    if (this.withdrawnImports.has(exp.vmId)) throw await withdrawn();
    onProgress?.({ migrationId: exp.migrationId, vmId: exp.vmId, phase: 'boot', transferredBytes: totalBytes, totalBytes });
    let vm: VmInfo;
    try {
      vm = await driver.start(localSpec);
    } catch (e) {
      // Transactional: the destination cleans up after itself; the source still has the VM.
      await removeCopies(dir, exp.migrationId);
      throw e;
    }
    if (this.withdrawnImports.has(exp.vmId)) {
      // Destroyed while the hypervisor was starting it: take it down again.
      await driver.destroy(exp.vmId).catch(() => undefined);
      throw await withdrawn();
    }
    const ms = clock.now() - t0;
    log.info({ bytes, resumedBytes, ms }, 'cold import: VM started from the fetched disks');
    return { vm, bytes, resumedBytes, ms };
  }

  /** The replica's store becomes the VM's disk copies: each writable disk's store image is moved
   *  to the disk's place in this VM's store (the replica is consumed). */
  private async adoptReplica(exp: ColdExport, finals: string[], log: Logger): Promise<void> {
    const ops = this.d.driver.replicas;
    if (!ops) throw hostError('VMTC_HOST_DISK_UNSUPPORTED', { vmId: exp.vmId, reason: "this host's driver keeps no replicas" });
    const specDisks = exp.spec.disks ?? [];
    if (specDisks.some((d) => d.readonly)) throw hostError('VMTC_HOST_DISK_UNSUPPORTED', { vmId: exp.vmId, reason: 'a VM with read-only disks moves with a full copy' });
    const paths = await ops.storePaths(exp.replica!.replicaId);
    if (paths.length !== specDisks.length) throw hostError('VMTC_HOST_DISK_DELTA_REJECTED', { vmId: exp.vmId, replicaId: exp.replica!.replicaId, disks: specDisks.length, stored: paths.length });
    for (const [i, from] of paths.entries()) {
      await rename(from, finals[i]!).catch(async (e: NodeJS.ErrnoException) => {
        if (e.code !== 'EXDEV') throw e;
        await copyFile(from, finals[i]!);
        await rm(from, { force: true });
      });
    }
    log.info({ replicaId: exp.replica!.replicaId, disks: paths.length }, 'cold import: booting from the replica');
  }

  /** Fetch one disk into `part`, resuming what is there; verify size and sha256. */
  private async fetchDisk(exp: ColdExport, d: ColdDisk, part: string, onBytes: (n: number) => void, relays?: FetchRelays): Promise<{ fetched: number; resumed: number }> {
    const st = await stat(part).catch(() => undefined);
    let from = st?.isFile() && st.size <= d.sizeBytes ? st.size : 0;
    if (st && from === d.sizeBytes) {
      // An earlier attempt fetched everything but stopped before the rename: check it only.
      if ((await sha256File(part)) === d.sha256) return { fetched: 0, resumed: from };
      from = 0;
    }
    let hash = createHash('sha256');
    if (from > 0) await hashFile(part, hash, from);
    const { res, stalled } = await this.request(exp, d, from, relays);
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
      throw hostError('VMTC_HOST_COLD_TRANSFER_FAILED', { index: d.index, receivedBytes: resumed + n, sizeBytes: d.sizeBytes, reason: stalled() ? `no data for ${this.d.stallMs} ms` : (e as Error).message }, { cause: e });
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
  private async request(exp: ColdExport, d: ColdDisk, from: number, relays?: FetchRelays): Promise<{ res: IncomingMessage; stalled: () => boolean }> {
    const c = this.d.credentials();
    const stallMs = this.d.stallMs;
    let u: URL;
    try {
      u = new URL(d.url);
      if (u.protocol !== 'https:') throw new Error('not https');
    } catch {
      throw hostError('VMTC_HOST_BAD_PARAMS', { field: `export.disks[${d.index}].url` });
    }
    const host = u.hostname.replace(/^\[|\]$/g, '');
    const port = Number(u.port || 443);
    // Through the namespace's relay: TLS runs over its Unix socket, end to end with the source.
    const socketPath = relays ? await relays.socketFor(host, port) : undefined;
    let stalled = false;
    return new Promise((resolve, reject) => {
      let identityError: string | undefined;
      const req = https.request({
        host, port, ...(socketPath ? { socketPath } : {}), path: u.pathname, method: 'GET',
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
      req.setTimeout(stallMs, () => {
        stalled = true;
        req.destroy(new Error(`no data for ${stallMs} ms`));
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

  /** D4.4 "verify": the VM runs and, when asked, a service in it accepts a TCP connection.
   *  `onAttempt` hears of every attempt that did not connect (the controller shows them). */
  async verify(p: { vmId: string; timeoutMs: number; tcp?: { host: string; port: number } }, onAttempt?: (a: VerifyAttempt) => void): Promise<VmInfo> {
    const { clock, driver } = this.d;
    const start = clock.now();
    const deadline = start + p.timeoutMs;
    const vm = await driver.waitRunning(p.vmId, p.timeoutMs);
    if (!p.tcp) return vm;
    const { host, port } = p.tcp;
    let attempts = 0;
    for (;;) {
      const left = deadline - clock.now();
      const slot = Math.max(100, Math.min(2000, left));
      attempts++;
      const ok = driver.checkTcp ? await driver.checkTcp(p.vmId, host, port, slot) : await tcpConnectCheck(host, port, slot, clock);
      if (ok) return driver.describe(p.vmId);
      const lastError = `no connection accepted within ${slot} ms (refused, unreachable or no answer)`;
      onAttempt?.({ attempts, lastError, elapsedMs: clock.now() - start, timeoutMs: p.timeoutMs });
      if (clock.now() + 200 >= deadline) throw hostError('VMTC_HOST_COLD_TCP_CHECK_FAILED', { vmId: p.vmId, host, port, attempts, timeoutMs: p.timeoutMs, lastError });
      await clockSleep(clock, 200);
    }
  }
}

/** One verification attempt that did not connect, as vm.coldVerify reports it. */
export interface VerifyAttempt { attempts: number; lastError: string; elapsedMs: number; timeoutMs: number }

async function removeCopies(dir: string, migrationId: string): Promise<void> {
  const names = await readdir(dir).catch(() => [] as string[]);
  for (const n of names) if (n.startsWith(`${migrationId}-disk`)) await rm(join(dir, n), { force: true });
  await removeIfEmpty(dir);
}

async function statfsFree(dir: string): Promise<number> {
  const st = await statfs(dir);
  return st.bavail * st.bsize;
}

async function removeIfEmpty(dir: string): Promise<void> {
  await rmdir(dir).catch(() => undefined);
}
