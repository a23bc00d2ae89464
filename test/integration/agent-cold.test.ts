// The cold (offline) path between two real host agents (DoubleDriver) enrolled with a real hub:
// the disks cross real HTTPS with mutual TLS and the deployment CA (EGI-Engage D4.4).
import { describe, it, expect, afterEach } from 'vitest';
import https from 'node:https';
import net from 'node:net';
import { createHash, randomBytes } from 'node:crypto';
import { X509Certificate } from 'node:crypto';
import { existsSync, readFileSync, readdirSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { ColdExport, ColdProgress, VmSpec } from '../../src/common/agent-protocol.ts';
import { ManualClock } from '../../src/common/clock.ts';
import { startHostAgent, type HostAgent, type HostAgentOptions } from '../../agents/host/index.ts';
import { DoubleDriver } from '../../agents/host/double-driver.ts';
import { ColdTransfer } from '../../agents/host/cold/index.ts';
import { HOST_ERRORS } from '../../agents/host/errors.ts';
import { identityFiles } from '../../agents/common/agent-link.ts';
import { startHub, tempDir, waitFor, type HubFixture } from '../helpers/agent-fixture.ts';

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

const MB = 1024 * 1024;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

interface Host {
  agent: HostAgent;
  driver: DoubleDriver;
  dataDir: string;
  stops: number;
}

async function setup(o: { clockA?: ManualClock; freeB?: () => number } = {}) {
  const f: HubFixture = await startHub();
  cleanups.push(() => f.close());
  const work = tempDir('vmtc-cold-');
  cleanups.push(() => rmSync(work, { recursive: true, force: true }));
  const host = async (hostId: string, cold: HostAgentOptions['cold']): Promise<Host> => {
    const driver = new DoubleDriver({ sharedStorage: false });
    cleanups.push(() => driver.close());
    const h = { driver, dataDir: join(work, hostId), stops: 0 } as Host;
    // Count power-offs: a repeated export must not stop the VM twice.
    const stop = driver.stop.bind(driver);
    driver.stop = async (vmId) => { h.stops++; return stop(vmId); };
    const inv = waitFor(f.hub, 'inventory', (id) => id === hostId);
    h.agent = await startHostAgent({ controllerUrl: f.controllerUrl, enrollToken: f.hub.mintEnrollToken({ kind: 'host', hostId }).token, dataDir: h.dataDir, driver, backoff: { initialMs: 20, maxMs: 200 }, ...(cold ? { cold } : {}) });
    cleanups.push(() => h.agent.close());
    await inv;
    return h;
  };
  const A = await host('host-a', o.clockA ? { clock: o.clockA } : undefined);
  const B = await host('host-b', o.freeB ? { freeSpace: async () => o.freeB!() } : undefined);
  const events: { hostId: string; data: ColdProgress }[] = [];
  f.hub.on('event', (hostId: string, name: string, data: ColdProgress) => { if (name === 'cold.progress') events.push({ hostId, data }); });
  /** A VM on A with real disk files of random bytes. */
  const startVm = async (vmId: string, sizes: number[]) => {
    const disks = sizes.map((n, i) => {
      const path = join(work, `${vmId}-src${i}.img`);
      writeFileSync(path, randomBytes(n));
      return { path, format: (i === 1 ? 'qcow2' : 'raw') as 'raw' | 'qcow2' };
    });
    const spec: VmSpec = { vmId, project: 'demo', vcpus: 1, memoryMb: 64, diskGb: 1, ...(disks.length ? { disks } : {}) };
    expect((await f.hub.request('host-a', 'vm.start', { spec })).state).toBe('running');
    return spec;
  };
  const exportVm = (vmId: string, migrationId: string, ttlMs = 60_000) => f.hub.request('host-a', 'vm.coldExport', { vmId, migrationId, destinationHostId: 'host-b', ttlMs });
  const importVm = (exp: ColdExport) => f.hub.request('host-b', 'vm.coldImport', { export: exp }, 30_000);
  return { f, A, B, work, events, startVm, exportVm, importVm };
}

/** GET a disk URL with the credentials of the agent in `dataDir` (or none). */
function fetchUrl(url: string, dataDir: string | undefined, headers: Record<string, string> = {}): Promise<{ status: number; headers: Record<string, unknown>; body: Buffer }> {
  const id = dataDir ? identityFiles(dataDir) : undefined;
  return new Promise((resolveP, reject) => {
    const u = new URL(url);
    const req = https.request({
      host: u.hostname, port: u.port, path: u.pathname, headers, agent: false,
      ...(id ? { key: readFileSync(id.key), cert: readFileSync(id.cert), ca: readFileSync(id.ca) } : { rejectUnauthorized: false }),
      checkServerIdentity: () => undefined,
    }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolveP({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}
const code = (r: { body: Buffer }) => JSON.parse(r.body.toString('utf8')).code as string;

describe('cold path: export, fetch over mutual TLS, boot the copy', () => {
  it('powers the source off, publishes checksummed disks and boots byte-identical copies at the destination', async () => {
    const { f, A, B, events, startVm, exportVm, importVm } = await setup();
    const spec = await startVm('vm-1', [3 * MB, MB + 123]);
    const exp = await exportVm('vm-1', 'mig-1');
    expect((await f.hub.request('host-a', 'vm.describe', { vmId: 'vm-1' })).state).toBe('stopped');
    expect(A.stops).toBe(1);
    expect(exp).toMatchObject({ migrationId: 'mig-1', vmId: 'vm-1', sourceHostId: 'host-a', destinationHostId: 'host-b', priorState: 'running' });
    expect(exp.spec.disks).toEqual(spec.disks);
    expect(exp.disks.map((d) => [d.index, d.format, d.sizeBytes, d.sha256])).toEqual(spec.disks!.map((d, i) => [i, d.format, i === 0 ? 3 * MB : MB + 123, sha(readFileSync(d.path))]));
    for (const d of exp.disks) expect(d.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+\/cold\/[A-Za-z0-9_-]{43}\/\d$/);
    expect(new Set(exp.disks.map((d) => d.url.split('/')[4])).size).toBe(2);
    expect(events.some((e) => e.hostId === 'host-a' && e.data.phase === 'export' && e.data.transferredBytes === 4 * MB + 123)).toBe(true);
    // Idempotent per migration: the same export, no second power-off.
    expect(await exportVm('vm-1', 'mig-1')).toEqual(exp);
    expect(A.stops).toBe(1);
    await expect(exportVm('vm-1', 'mig-other')).rejects.toMatchObject({ code: 'VMTC_HOST_MIGRATION_IN_PROGRESS' });

    const r = await importVm(exp);
    expect(r).toMatchObject({ bytes: 4 * MB + 123, resumedBytes: 0 });
    expect(r.vm.state).toBe('running');
    const dir = join(B.dataDir, 'disks', 'vm-1');
    const copies = [join(dir, 'mig-1-disk0.raw'), join(dir, 'mig-1-disk1.qcow2')];
    expect(r.vm.spec.disks!.map((d) => d.path)).toEqual(copies);
    expect(r.vm.spec.disks!.map((d) => d.format)).toEqual(['raw', 'qcow2']);
    for (const [i, c] of copies.entries()) expect(readFileSync(c).equals(readFileSync(spec.disks![i]!.path))).toBe(true);
    expect(readdirSync(dir).sort()).toEqual(['mig-1-disk0.raw', 'mig-1-disk1.qcow2']);
    const dl = events.filter((e) => e.hostId === 'host-b').map((e) => e.data);
    expect(dl.some((p) => p.phase === 'download' && p.transferredBytes === 4 * MB + 123 && p.totalBytes === 4 * MB + 123)).toBe(true);
    expect(dl.at(-1)?.phase).toBe('boot');
    // A retried import (its reply lost) finds the VM already running from these copies.
    expect(await importVm(exp)).toMatchObject({ bytes: 0, vm: { state: 'running' } });

    // Single use: the destination's second fetch of a spent URL is refused.
    const again = await fetchUrl(exp.disks[0]!.url, B.dataDir);
    expect(again.status).toBe(410);
    expect(code(again)).toBe('VMTC_HOST_COLD_EXPORT_GONE');

    // Verify (D4.4): running, and a service port answers (here a listener on this machine).
    const svc = net.createServer((s) => s.end());
    await new Promise<void>((r) => svc.listen(0, '127.0.0.1', () => r()));
    cleanups.push(() => new Promise<void>((r) => svc.close(() => r())));
    const port = (svc.address() as net.AddressInfo).port;
    expect((await f.hub.request('host-b', 'vm.coldVerify', { vmId: 'vm-1', timeoutMs: 2000, tcp: { host: '127.0.0.1', port } })).state).toBe('running');
    const closed = net.createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', () => r()));
    const deadPort = (closed.address() as net.AddressInfo).port;
    await new Promise<void>((r) => closed.close(() => r()));
    await expect(f.hub.request('host-b', 'vm.coldVerify', { vmId: 'vm-1', timeoutMs: 500, tcp: { host: '127.0.0.1', port: deadPort } })).rejects.toMatchObject({ code: 'VMTC_HOST_COLD_TCP_CHECK_FAILED' });

    // Commit: destroying removes the agent-owned copies at the destination, never the source's disks.
    await f.hub.request('host-a', 'vm.destroy', { vmId: 'vm-1' });
    for (const d of spec.disks!) expect(existsSync(d.path)).toBe(true);
    await f.hub.request('host-b', 'vm.destroy', { vmId: 'vm-1' });
    expect(existsSync(dir)).toBe(false);
  });

  it('answers only the destination, over mutual TLS, until withdrawn; abort restarts the source', async () => {
    const { f, A, B, startVm, exportVm } = await setup();
    await startVm('vm-2', [MB]);
    const exp = await exportVm('vm-2', 'mig-2');
    const url = exp.disks[0]!.url;
    // Another agent of the same deployment (here the source itself) is not the destination.
    const other = await fetchUrl(url, A.dataDir);
    expect(other.status).toBe(403);
    expect(code(other)).toBe('VMTC_HOST_COLD_FORBIDDEN');
    // No client certificate: refused in the handshake.
    await expect(fetchUrl(url, undefined)).rejects.toThrow();
    // A range that stops short does not spend the URL; one reaching the end does (206 + resume).
    const part = await fetchUrl(url, B.dataDir, { range: 'bytes=0-99' });
    expect(part.status).toBe(206);
    expect(part.body.length).toBe(100);
    const rest = await fetchUrl(url, B.dataDir, { range: `bytes=100-` });
    expect(rest.status).toBe(206);
    expect(rest.headers['content-range']).toBe(`bytes 100-${MB - 1}/${MB}`);
    expect(sha(Buffer.concat([part.body, rest.body]))).toBe(exp.disks[0]!.sha256);
    expect((await fetchUrl(url, B.dataDir)).status).toBe(410);
    const bad = await fetchUrl(url.replace(/\/cold\/[^/]+\//, '/cold/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA/'), B.dataDir);
    expect([bad.status, code(bad)]).toEqual([404, 'VMTC_HOST_COLD_EXPORT_NOT_FOUND']);

    // Rollback at the source: the VM runs again and the export is withdrawn.
    const exp3 = await (async () => {
      const info = await f.hub.request('host-a', 'vm.coldAbort', { vmId: 'vm-2', migrationId: 'mig-2' });
      expect(info.state).toBe('running');
      return exportVm('vm-2', 'mig-3');
    })();
    expect(A.stops).toBe(2);
    const info = await f.hub.request('host-a', 'vm.coldAbort', { vmId: 'vm-2', migrationId: 'mig-3' });
    expect(info.state).toBe('running');
    const withdrawn = await fetchUrl(exp3.disks[0]!.url, B.dataDir);
    expect([withdrawn.status, code(withdrawn)]).toEqual([404, 'VMTC_HOST_COLD_EXPORT_NOT_FOUND']);
    // Idempotent, and an unknown migration leaves a running VM alone.
    expect((await f.hub.request('host-a', 'vm.coldAbort', { vmId: 'vm-2', migrationId: 'mig-3' })).state).toBe('running');
    expect((await f.hub.request('host-a', 'vm.coldAbort', { vmId: 'vm-2', migrationId: 'never' })).state).toBe('running');
    expect(A.stops).toBe(2);
  });

  it('a rollback cuts a download in flight', async () => {
    const { f, B, startVm, exportVm } = await setup();
    await startVm('vm-10', [24 * MB]);
    const exp = await exportVm('vm-10', 'mig-10');
    const id = identityFiles(B.dataDir);
    const u = new URL(exp.disks[0]!.url);
    const outcome = await new Promise<{ received: number; error: boolean }>((done, reject) => {
      const req = https.get({ host: u.hostname, port: u.port, path: u.pathname, agent: false, key: readFileSync(id.key), cert: readFileSync(id.cert), ca: readFileSync(id.ca), checkServerIdentity: () => undefined }, (res) => {
        let received = 0;
        let error = false;
        expect(res.statusCode).toBe(200);
        res.once('data', (c: Buffer) => {
          received += c.length;
          // Hold the download open while the controller rolls the migration back.
          res.pause();
          void f.hub.request('host-a', 'vm.coldAbort', { vmId: 'vm-10', migrationId: 'mig-10' }).then(() => {
            res.on('data', (c2: Buffer) => { received += c2.length; });
            res.resume();
          }, reject);
        });
        res.on('error', () => { error = true; });
        res.on('close', () => done({ received, error }));
      });
      req.on('error', () => undefined);
    });
    expect(outcome.error).toBe(true);
    expect(outcome.received).toBeLessThan(24 * MB);
  });

  it('a VM destroyed at the destination while its import is starting it is taken down again, never left running', async () => {
    const { f, B, startVm, exportVm, importVm } = await setup();
    await startVm('vm-11', [MB]);
    const exp = await exportVm('vm-11', 'mig-11');
    // Hold B's hypervisor inside start() until the rollback's destroy has arrived.
    let release!: () => void;
    const gate = new Promise<void>((r) => { release = r; });
    let starting!: () => void;
    const started = new Promise<void>((r) => { starting = r; });
    const start = B.driver.start.bind(B.driver);
    B.driver.start = async (spec) => { starting(); await gate; return start(spec); };
    const importing = importVm(exp).then(() => 'imported', (e) => e);
    await started;
    // The controller's rollback: destroy at the destination first (no VM there yet: NOT_FOUND).
    await expect(f.hub.request('host-b', 'vm.destroy', { vmId: 'vm-11' })).rejects.toMatchObject({ code: 'VMTC_HOST_VM_NOT_FOUND' });
    release();
    expect(await importing).toMatchObject({ code: 'VMTC_HOST_COLD_TRANSFER_FAILED', details: { reason: expect.stringMatching(/^withdrawn/) } });
    await expect(f.hub.request('host-b', 'vm.describe', { vmId: 'vm-11' })).rejects.toMatchObject({ code: 'VMTC_HOST_VM_NOT_FOUND' });
    expect(existsSync(join(B.dataDir, 'disks', 'vm-11'))).toBe(false);
  });

  it('pinned certificates: only the serials the controller vouches for may fetch or serve', async () => {
    const { f, A, B, startVm, importVm } = await setup();
    const serialOf = (dataDir: string) => new X509Certificate(readFileSync(identityFiles(dataDir).cert)).serialNumber;
    await startVm('vm-12', [MB]);
    // B's certificate is not among those named (as if revoked since): B may not fetch.
    const stale = await f.hub.request('host-a', 'vm.coldExport', { vmId: 'vm-12', migrationId: 'mig-12', destinationHostId: 'host-b', ttlMs: 60_000, destinationCertSerials: ['0BADC0DE'] });
    const r = await fetchUrl(stale.disks[0]!.url, B.dataDir);
    expect([r.status, code(r)]).toEqual([403, 'VMTC_HOST_COLD_FORBIDDEN']);
    await f.hub.request('host-a', 'vm.coldAbort', { vmId: 'vm-12', migrationId: 'mig-12' });
    // Named: B fetches; but a source serial that is not A's makes B refuse the server.
    const ok = await f.hub.request('host-a', 'vm.coldExport', { vmId: 'vm-12', migrationId: 'mig-13', destinationHostId: 'host-b', ttlMs: 60_000, destinationCertSerials: [serialOf(B.dataDir)], sourceCertSerials: ['0BADC0DE'] });
    await expect(importVm(ok)).rejects.toMatchObject({ code: 'VMTC_HOST_COLD_TRANSFER_FAILED' });
    await expect(f.hub.request('host-b', 'vm.describe', { vmId: 'vm-12' })).rejects.toMatchObject({ code: 'VMTC_HOST_VM_NOT_FOUND' });
    // Both right: the import goes through. Serials compare as numbers: case and leading zeros
    // (DER adds a 00 byte when the top bit is set) do not matter.
    const good = { ...ok, sourceCertSerials: [`00${serialOf(A.dataDir).toLowerCase()}`] };
    expect((await importVm(good)).vm.state).toBe('running');
  });

  it('an expired export is refused, and the destination makes nothing of it', async () => {
    const clockA = new ManualClock(Date.now());
    const { f, B, startVm, exportVm, importVm } = await setup({ clockA });
    await startVm('vm-3', [MB]);
    const exp = await exportVm('vm-3', 'mig-exp', 1000);
    clockA.advance(1001);
    const r = await fetchUrl(exp.disks[0]!.url, B.dataDir);
    expect([r.status, code(r)]).toEqual([410, 'VMTC_HOST_COLD_EXPORT_GONE']);
    await expect(importVm(exp)).rejects.toMatchObject({ code: 'VMTC_HOST_COLD_EXPORT_GONE', details: { reason: 'expired' } });
    await expect(f.hub.request('host-b', 'vm.describe', { vmId: 'vm-3' })).rejects.toMatchObject({ code: 'VMTC_HOST_VM_NOT_FOUND' });
  });

  it('resumes an interrupted download from its .part file', async () => {
    const { f, B, startVm, exportVm, importVm } = await setup();
    const spec = await startVm('vm-4', [3 * MB]);
    const exp = await exportVm('vm-4', 'mig-4');
    const src = readFileSync(spec.disks![0]!.path);
    const dir = join(B.dataDir, 'disks', 'vm-4');
    mkdirSync(dir, { recursive: true });
    const half = Math.floor(src.length / 2) + 7;
    writeFileSync(join(dir, 'mig-4-disk0.raw.part'), src.subarray(0, half));
    const r = await importVm(exp);
    expect(r).toMatchObject({ resumedBytes: half, bytes: src.length - half, vm: { state: 'running' } });
    expect(readFileSync(join(dir, 'mig-4-disk0.raw')).equals(src)).toBe(true);
    expect(readdirSync(dir)).toEqual(['mig-4-disk0.raw']);
    expect((await f.hub.request('host-b', 'vm.describe', { vmId: 'vm-4' })).spec.disks![0]!.path).toBe(join(dir, 'mig-4-disk0.raw'));
  });

  it('a source disk changed after export fails the checksum and leaves nothing at the destination', async () => {
    const { f, B, startVm, exportVm, importVm } = await setup();
    const spec = await startVm('vm-5', [MB, MB]);
    const exp = await exportVm('vm-5', 'mig-5');
    const p = spec.disks![1]!.path;
    const b = readFileSync(p);
    b[12345] ^= 0xff;
    writeFileSync(p, b);
    await expect(importVm(exp)).rejects.toMatchObject({ code: 'VMTC_HOST_COLD_CHECKSUM', details: { index: 1, expectedSha256: exp.disks[1]!.sha256 } });
    const dir = join(B.dataDir, 'disks', 'vm-5');
    expect(existsSync(dir) ? readdirSync(dir) : []).toEqual([]);
    await expect(f.hub.request('host-b', 'vm.describe', { vmId: 'vm-5' })).rejects.toMatchObject({ code: 'VMTC_HOST_VM_NOT_FOUND' });
    // The source keeps its VM (stopped) until the controller aborts: then it runs again.
    expect((await f.hub.request('host-a', 'vm.coldAbort', { vmId: 'vm-5', migrationId: 'mig-5' })).state).toBe('running');
  });

  it('refuses when the destination lacks the space; a VM without disks moves with nothing to fetch', async () => {
    let free = 2 * MB;
    const { f, B, startVm, exportVm, importVm } = await setup({ freeB: () => free });
    await startVm('vm-6', [3 * MB]);
    const exp = await exportVm('vm-6', 'mig-6');
    await expect(importVm(exp)).rejects.toMatchObject({ code: 'VMTC_HOST_INSUFFICIENT_RESOURCES', details: { needBytes: 3 * MB, freeBytes: 2 * MB } });
    expect(existsSync(join(B.dataDir, 'disks', 'vm-6'))).toBe(false);
    // Nothing was fetched: the URL is still good for the retry once space is found.
    free = 1e12;
    expect((await importVm(exp)).bytes).toBe(3 * MB);

    await startVm('vm-7', []);
    const e7 = await exportVm('vm-7', 'mig-7');
    expect(e7.disks).toEqual([]);
    expect((await f.hub.request('host-a', 'vm.describe', { vmId: 'vm-7' })).state).toBe('stopped');
    expect(await importVm(e7)).toMatchObject({ bytes: 0, resumedBytes: 0, vm: { state: 'running', vmId: 'vm-7' } });
  });

  it('validates parameters, naming the field', async () => {
    const { f, startVm, exportVm } = await setup();
    await expect(f.hub.requestRaw('host-a', 'vm.coldExport', { vmId: 'x', migrationId: 'm', ttlMs: 1000 })).rejects.toMatchObject({ code: 'VMTC_HOST_BAD_PARAMS', details: { field: 'destinationHostId' } });
    await expect(f.hub.requestRaw('host-a', 'vm.coldExport', { vmId: 'x', migrationId: 'm', destinationHostId: 'host-b', ttlMs: -1 })).rejects.toMatchObject({ details: { field: 'ttlMs' } });
    await expect(f.hub.requestRaw('host-a', 'vm.coldExport', { vmId: 'x', migrationId: 'm', destinationHostId: 'host-a', ttlMs: 1 })).rejects.toMatchObject({ details: { field: 'destinationHostId' } });
    await expect(f.hub.requestRaw('host-a', 'vm.coldAbort', { vmId: 'x' })).rejects.toMatchObject({ details: { field: 'migrationId' } });
    await expect(f.hub.requestRaw('host-b', 'vm.coldVerify', { vmId: 'x', timeoutMs: 10, tcp: { host: 'h', port: 0 } })).rejects.toMatchObject({ details: { field: 'tcp.port' } });
    await startVm('vm-8', [1000]);
    const exp = await exportVm('vm-8', 'mig-8');
    await expect(f.hub.requestRaw('host-b', 'vm.coldImport', { export: { ...exp, disks: [{ ...exp.disks[0], sha256: 'nope' }] } })).rejects.toMatchObject({ details: { field: 'export.disks[0].sha256' } });
    await expect(f.hub.requestRaw('host-b', 'vm.coldImport', { export: { ...exp, vmId: '../etc', spec: { ...exp.spec, vmId: '../etc' } } })).rejects.toMatchObject({ details: { field: 'export.vmId' } });
    // The export names host-b: host-a may not import it.
    await expect(f.hub.requestRaw('host-a', 'vm.coldImport', { export: exp })).rejects.toMatchObject({ details: { field: 'export.destinationHostId' } });
  });

  it('a stalled source fails the download with the transfer code and starts no VM', async () => {
    const { B } = await setup();
    // A TCP server that accepts and never says a word (not even the TLS handshake).
    const socks: net.Socket[] = [];
    const mute = net.createServer((s) => socks.push(s));
    await new Promise<void>((r) => mute.listen(0, '127.0.0.1', () => r()));
    cleanups.push(() => new Promise<void>((r) => { for (const s of socks) s.destroy(); mute.close(() => r()); }));
    const port = (mute.address() as net.AddressInfo).port;
    const cold = new ColdTransfer({ dataDir: B.dataDir, hostId: 'host-b', driver: B.driver, stallMs: 300 });
    cleanups.push(() => cold.close());
    const exp: ColdExport = {
      migrationId: 'mig-9', vmId: 'vm-9', sourceHostId: 'host-a', destinationHostId: 'host-b', priorState: 'running', expiresAt: Date.now() + 60_000,
      spec: { vmId: 'vm-9', project: 'demo', vcpus: 1, memoryMb: 64, diskGb: 1, disks: [{ path: '/nonexistent', format: 'raw' }] },
      disks: [{ index: 0, url: `https://127.0.0.1:${port}/cold/${'A'.repeat(43)}/0`, format: 'raw', sizeBytes: 10, sha256: '0'.repeat(64) }],
    };
    await expect(cold.import(exp)).rejects.toMatchObject({ code: 'VMTC_HOST_COLD_TRANSFER_FAILED', details: { reason: 'no data for 300 ms' } });
    await expect(B.driver.describe('vm-9')).rejects.toMatchObject({ code: 'VMTC_HOST_VM_NOT_FOUND' });
  });

  it('documents every host agent code in docs/errors.md', () => {
    const doc = readFileSync(resolve(import.meta.dirname, '../../docs/errors.md'), 'utf8');
    expect(Object.keys(HOST_ERRORS).filter((c) => !doc.includes(`\`${c}\``))).toEqual([]);
  });
});
