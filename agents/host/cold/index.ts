// The cold (offline) migration path on a host agent (docs/design.md#cold-path, EGI-Engage D4.4):
//
//   export.ts  source: power off, checksum, publish single-use, time-limited URLs; abort
//   server.ts  source: the HTTPS (mutual TLS) server behind those URLs
//   import.ts  destination: fetch with resume and sha256 into the agent's own store, boot, verify
//   relay.ts   both, in the driver's network namespace (the lab): relays that put the disk fetch's
//              TCP on the lightpath (relay-main.ts is the relay process)
//   check.ts, shared.ts
//
// ColdTransfer is what the agent holds: one per agent, serving both roles.
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { ColdExport, ColdImportResult, VmInfo } from '../../../src/common/agent-protocol.ts';
import { keepAliveClock, randomIds, type Clock } from '../../../src/common/clock.ts';
import { commonError } from '../../../src/common/errors.ts';
import { parseListen } from '../../../src/common/listen.ts';
import { silentLogger, type Logger } from '../../../src/common/log.ts';
import { hostError } from '../errors.ts';
import { ColdExporter } from './export.ts';
import { ColdImporter, type VerifyAttempt } from './import.ts';
import { startRelay } from './relay.ts';
import { ExportServer } from './server.ts';
import { COLD_DEFAULTS, loadCredentials, SAFE_NAME, type ColdOptions, type ColdProgressListener, type Credentials, type ExportParams, type ExportRoute } from './shared.ts';

export type { ColdOptions, ColdProgressListener, ExportParams } from './shared.ts';

export class ColdTransfer {
  private readonly server: ExportServer;
  private readonly exporter: ColdExporter;
  private readonly importer: ColdImporter;
  private creds?: Credentials;
  private readonly clock: Clock;

  constructor(private readonly opts: ColdOptions) {
    const log = (opts.logger ?? silentLogger()).child({ mod: 'cold', hostId: opts.hostId });
    const clock = (this.clock = opts.clock ?? keepAliveClock);
    const listen = parseListen(opts.exportListen ?? COLD_DEFAULTS.exportListen, 'exportListen');
    for (const k of ['stallMs', 'progressEveryMs'] as const) {
      const v = opts[k];
      if (v !== undefined && !(Number.isFinite(v) && v >= 0)) throw commonError('VMTC_CONFIG_INVALID', { field: k, value: v });
    }
    const progressEveryMs = opts.progressEveryMs ?? COLD_DEFAULTS.progressEveryMs;
    const credentials = () => (this.creds ??= loadCredentials(opts.dataDir));
    this.server = new ExportServer({
      listen,
      ...(opts.exportHost ? { exportHost: opts.exportHost } : {}),
      credentials, clock, log,
    });
    if (opts.relay !== undefined && !(typeof opts.relay.netns === 'string' && opts.relay.netns)) throw commonError('VMTC_CONFIG_INVALID', { field: 'relay.netns', value: opts.relay.netns ?? null });
    this.exporter = new ColdExporter({ hostId: opts.hostId, driver: opts.driver, server: this.server, route: (hasDisks, l) => this.route(hasDisks, l), clock, ids: opts.ids ?? randomIds, progressEveryMs, log });
    this.importer = new ColdImporter({
      hostId: opts.hostId, driver: opts.driver, credentials, diskDir: (vmId) => this.diskDir(vmId), clock,
      ...(opts.freeSpace ? { freeSpace: opts.freeSpace } : {}),
      ...(opts.relay ? { relay: { netns: opts.relay.netns } } : {}),
      stallMs: opts.stallMs ?? COLD_DEFAULTS.stallMs, progressEveryMs, log,
    });
  }

  /**
   * Where an export's disks are served. Without a namespace: the export server's own address
   * (exportListen). In the driver's namespace (ColdOptions.relay, the lab): a relay there listens
   * on this host's lightpath address and hands each connection to the export server's Unix
   * socket, so the destination's fetch (its own relay, import.ts) crosses the lightpath; the
   * URLs name that address, and the TLS stays end to end between the agents.
   */
  private async route(hasDisks: boolean, log: Logger): Promise<ExportRoute> {
    const none = async () => undefined;
    const relay = this.opts.relay;
    if (!relay) return { url: (await this.server.start()).url, close: none };
    if (!hasDisks) return { url: '', close: none };
    if (!relay.host) throw hostError('VMTC_HOST_COLD_RELAY_FAILED', { netns: relay.netns, reason: 'no lightpath address to serve the disks on (the agent\'s --migration-address)' });
    const path = await this.server.startUnix();
    const r = await startRelay({ netns: relay.netns, listen: { type: 'tcp', host: relay.host, port: 0 }, to: { type: 'unix', path }, clock: this.clock, log });
    return { url: `https://${relay.host.includes(':') ? `[${relay.host}]` : relay.host}:${r.port}`, close: r.stop };
  }

  /** The store of agent-owned disk copies of one VM. */
  diskDir(vmId: string): string {
    return join(this.opts.dataDir, 'disks', vmId);
  }

  /** Base URL of the export server, once started. */
  async exportUrl(): Promise<string> {
    return (await this.server.start()).url;
  }

  /** Source: power off and publish (vm.coldExport). Idempotent per migrationId. */
  export(p: ExportParams, onProgress?: ColdProgressListener): Promise<ColdExport> {
    return this.exporter.export(p, onProgress);
  }

  /** Source: the sha256 of an export's disks published without them (vm.coldChecksums). */
  checksums(p: { vmId: string; migrationId: string }, onProgress?: ColdProgressListener): Promise<{ disks: { index: number; sha256: string }[] }> {
    return this.exporter.checksums(p, onProgress);
  }

  /** Source, on rollback: withdraw the export and restore the VM (vm.coldAbort). */
  abort(p: { vmId: string; migrationId: string }): Promise<VmInfo> {
    return this.exporter.abort(p);
  }

  /** Destination: fetch and boot (vm.coldImport). */
  import(exp: ColdExport, onProgress?: ColdProgressListener): Promise<ColdImportResult> {
    return this.importer.import(exp, onProgress);
  }

  /** Destination: the VM runs and, when asked, a service port answers (vm.coldVerify). */
  verify(p: { vmId: string; timeoutMs: number; tcp?: { host: string; port: number } }, onAttempt?: (a: VerifyAttempt) => void): Promise<VmInfo> {
    return this.importer.verify(p, onAttempt);
  }

  /** After vm.destroy: withdraw the VM's exports and delete the agent-owned copies of its disks. */
  async forgetVm(vmId: string): Promise<void> {
    await this.exporter.forgetVm(vmId);
    this.importer.forgetVm(vmId);
    if (SAFE_NAME.test(vmId)) await rm(this.diskDir(vmId), { recursive: true, force: true });
  }

  async close(): Promise<void> {
    this.importer.close();
    await this.exporter.close();
    await this.server.close();
  }
}
