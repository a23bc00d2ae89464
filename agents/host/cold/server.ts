// The source's disk export server (EGI-Engage D4.4, "publish"): HTTPS with mutual TLS, started at
// the first export. Each disk is at https://<exportHost>:<port>/cold/<secret>/<index>, with a
// secret of 32 random bytes per disk. A URL answers only a client whose certificate (from the
// deployment CA) names the export's destination host, and, when the controller pinned them, is
// one of that host's unrevoked serials; it stops answering at expiresAt, when the export is
// withdrawn, or once one download has carried the last byte (single use: a Range request that
// ends early does not spend it, so a broken download can resume).
import https from 'node:https';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { TLSSocket } from 'node:tls';
import type { Clock } from '../../../src/common/clock.ts';
import { commonError, toVmtcError, type VmtcError } from '../../../src/common/errors.ts';
import type { Logger } from '../../../src/common/log.ts';
import { normaliseSerial } from '../../../src/common/pki.ts';
import { hostError } from '../errors.ts';
import { socketDir } from './relay.ts';
import { peerCn, type Credentials, type ExportRec } from './shared.ts';

export interface ExportServerOptions {
  listen: { host: string; port: number };
  /** Host put in the URLs when `listen` is a wildcard address. Default: os.hostname(). */
  exportHost?: string;
  credentials: () => Credentials;
  clock: Clock;
  log: Logger;
}

export class ExportServer {
  private readonly bySecret = new Map<string, { rec: ExportRec; index: number }>();
  private server?: Promise<{ server: https.Server; url: string }>;
  private unix?: Promise<{ server: https.Server; path: string; remove: () => Promise<void> }>;
  private closed = false;

  constructor(private readonly opts: ExportServerOptions) {}

  /** Listen (once), and resolve with the base URL of the disks. */
  start(): Promise<{ server: https.Server; url: string }> {
    if (this.closed) return Promise.reject(commonError('VMTC_SHUTTING_DOWN'));
    const { listen, log } = this.opts;
    this.server ??= (async () => {
      const server = this.makeServer();
      await new Promise<void>((resolve, reject) => {
        server.once('error', (e) => reject(commonError('VMTC_CONFIG_INVALID', { field: 'exportListen', value: `${listen.host}:${listen.port}`, reason: e.message }, { message: 'the disk export server cannot listen', cause: e })));
        server.listen(listen.port, listen.host, () => resolve());
      });
      const port = (server.address() as AddressInfo).port;
      const wildcard = ['0.0.0.0', '::'].includes(listen.host);
      const host = wildcard ? (this.opts.exportHost ?? hostname()) : listen.host;
      const url = `https://${host.includes(':') ? `[${host}]` : host}:${port}`;
      log.info({ url }, 'disk export server listening');
      return { server, url };
    })();
    this.server.catch(() => { this.server = undefined; });
    return this.server;
  }

  /** The same server on a Unix socket too (once), for the relay that brings connections from the
   *  lightpath in the driver's network namespace (relay.ts): resolves with the socket's path. */
  startUnix(): Promise<string> {
    if (this.closed) return Promise.reject(commonError('VMTC_SHUTTING_DOWN'));
    this.unix ??= (async () => {
      const dir = await socketDir();
      const path = join(dir.dir, 'export.sock');
      const server = this.makeServer();
      try {
        await new Promise<void>((resolve, reject) => {
          server.once('error', (e) => reject(hostError('VMTC_HOST_COLD_RELAY_FAILED', { listen: `unix:${path}`, reason: e.message }, { cause: e })));
          server.listen(path, () => resolve());
        });
      } catch (e) {
        await dir.remove();
        throw e;
      }
      this.opts.log.info({ path }, 'disk export server listening on a Unix socket for the relay');
      return { server, path, remove: dir.remove };
    })();
    this.unix.catch(() => { this.unix = undefined; });
    return this.unix.then((u) => u.path);
  }

  private makeServer(): https.Server {
    const c = this.opts.credentials();
    // Mutual TLS with the deployment CA only: a client without a certificate from it never gets
    // past the handshake; which host it is is checked per request (the export's destination).
    const server = https.createServer({ key: c.key, cert: c.cert, ca: c.ca, requestCert: true, rejectUnauthorized: true }, (req, res) => void this.serve(req, res));
    server.on('tlsClientError', (err) => this.opts.log.info({ reason: err.message }, 'export server: TLS handshake refused'));
    return server;
  }

  /** Make an export's URLs answer. */
  publish(rec: ExportRec): void {
    for (const [index, d] of rec.disks.entries()) this.bySecret.set(d.secret, { rec, index });
  }

  /** Its URLs stop answering, and downloads in progress are cut. */
  unpublish(rec: ExportRec): void {
    for (const d of rec.disks) this.bySecret.delete(d.secret);
    for (const res of rec.active) res.destroy();
    rec.active.clear();
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const s of [await this.server?.catch(() => undefined), await this.unix?.catch(() => undefined)]) {
      if (!s) continue;
      s.server.closeAllConnections();
      await new Promise<void>((r) => s.server.close(() => r()));
    }
    await (await this.unix?.catch(() => undefined))?.remove();
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
      const log = this.opts.log.child({ vmId: rec.exp.vmId, migrationId: rec.exp.migrationId });
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
      if (this.opts.clock.now() > rec.exp.expiresAt) throw hostError('VMTC_HOST_COLD_EXPORT_GONE', { reason: 'expired', expiresAt: rec.exp.expiresAt });
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
      if (ve.code === 'VMTC_INTERNAL') this.opts.log.warn({ err: e, cn }, 'disk export request failed');
      fail(ve);
    }
  }
}
