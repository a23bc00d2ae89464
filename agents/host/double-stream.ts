// The double's live migration (agents/host/double-driver.ts describes the protocol): real TCP
// from the source's migrate() to the destination's listener, so timeouts, cancellation, a killed
// destination and bandwidth limits behave as with QEMU's `migrate tcp:HOST:PORT`; and, as QEMU
// with `pause-before-switchover`, the final state waits for the controller's decision
// (docs/design.md#switchover).
import net from 'node:net';
import type { MigrationParams, MigrationProgress, MigrationResult, VmInfo } from '../../src/common/agent-protocol.ts';
import { clockSleep, type Clock } from '../../src/common/clock.ts';
import { hostError } from './errors.ts';

export const CHUNK = 256 * 1024;
const PROGRESS_EVERY_MS = 100;
/** The final state the source sends only after continueMigration() (QEMU: the device state);
 *  the destination cannot run without it. */
export const FINAL_STATE_BYTES = 16 * 1024;

/** One VM of the double, with its migration stream in either direction. */
export interface DoubleVm {
  info: VmInfo;
  incoming?: { server: net.Server; socket?: net.Socket; port: number };
  outgoing?: {
    socket?: net.Socket;
    cancelled: boolean;
    migrationId: string;
    /** 'waiting': paused before the final state (status 'pre-switchover'); 'continued': the
     *  controller decided and the final state is on its way (no cancel from here on). */
    switchover?: 'waiting' | 'continued';
    /** Lets the final state go (set while waiting). */
    proceed?: () => void;
  };
}

/** What the stream needs of the driver: its VMs, clock, filler bytes and settings. */
export interface StreamHost {
  readonly vms: Map<string, DoubleVm>;
  readonly clock: Clock;
  readonly filler: Buffer;
  readonly passes: number;
  readonly bytesPerMb: number;
  readonly defaultBandwidthMbps: number;
  readonly failures: { failMigrateAfterBytes?: number; dropIncomingAfterBytes?: number };
  /** A VM changed state: tell the driver's listeners. */
  changed(): void;
  /** Destination: an incoming migration received its final state (the VM runs here). */
  landed(migrationId: string): void;
}

/** Source: stream the VM to `uri` in pre-copy passes, paced, the last as stop-and-copy. */
export async function sendMigration(h: StreamHost, vm: DoubleVm, uri: string, params: MigrationParams, onProgress: (p: MigrationProgress) => void): Promise<MigrationResult> {
  const vmId = vm.info.vmId;
  const target = parseTcpUri(uri);
  const migrationId = params.migrationId;
  const out: NonNullable<DoubleVm['outgoing']> = { cancelled: false, migrationId };
  vm.outgoing = out;
  vm.info.state = 'migrating';
  vm.info.migrationId = migrationId;
  h.changed();

  const t0 = h.clock.now();
  const mem = vm.info.memoryMb * h.bytesPerMb;
  const passes: number[] = [];
  for (let i = 0, n = mem; i < h.passes; i++, n = Math.ceil(n / 4)) passes.push(n);
  const totalBytes = passes.reduce((a, b) => a + b, 0) + FINAL_STATE_BYTES;
  const mbps = params.bandwidthMbps && params.bandwidthMbps > 0 ? params.bandwidthMbps : h.defaultBandwidthMbps;
  const bytesPerMs = (mbps * 1e6) / 8 / 1000;
  let sent = 0;
  let setupTimeMs = 0;
  let stopStart = 0;
  let lastReport = 0;
  const base = { migrationId, vmId, totalBytes };
  const report = (status: MigrationProgress['status'], pass?: number, force = false) => {
    const now = h.clock.now();
    if (!force && now - lastReport < PROGRESS_EVERY_MS) return;
    lastReport = now;
    const elapsed = Math.max(1, now - t0 - setupTimeMs);
    try {
      onProgress({ ...base, status, transferredBytes: sent, remainingBytes: totalBytes - sent, ...(pass !== undefined ? { pass } : {}), throughputMbps: Math.round((sent * 8) / elapsed / 1000), expectedDowntimeMs: Math.ceil(passes[passes.length - 1]! / bytesPerMs) });
    } catch {
      /* a listener's failure must not break the stream */
    }
  };
  const finish = (status: MigrationResult['status'], error?: MigrationResult['error']): MigrationResult => {
    out.socket?.destroy();
    if (vm.outgoing === out) delete vm.outgoing;
    if (h.vms.get(vmId) === vm) {
      if (status === 'completed') vm.info.state = 'postmigrate';
      else if (vm.info.state === 'migrating' && out.switchover === 'continued') {
        // The final state left: the destination may run the VM, so the source must not run
        // too; it stays paused for an operator (docs/design.md#switchover).
        vm.info.state = 'paused';
      } else if (vm.info.state === 'migrating') {
        // The source stays primary on any failure (docs/design.md#commit): back to running.
        vm.info.state = 'running';
        delete vm.info.migrationId;
      }
      h.changed();
    }
    report(status, undefined, true);
    const r: MigrationResult = { migrationId, vmId, status, totalTimeMs: h.clock.now() - t0, transferredBytes: sent, setupTimeMs };
    if (status === 'completed') r.downtimeMs = h.clock.now() - stopStart;
    if (error) r.error = error;
    return r;
  };
  const broken = () => (out.cancelled ? finish('cancelled') : finish('failed', { code: 'VMTC_HOST_MIGRATION_FAILED', message: 'the migration stream broke', details: { transferredBytes: sent } }));

  report('setup', undefined, true);
  const socket = net.connect({ host: target.host, port: target.port });
  out.socket = socket;
  socket.setNoDelay(true);
  socket.on('error', () => { /* surfaced as 'close' below */ });
  const closed = new Promise<void>((r) => socket.once('close', () => r()));
  // The destination's "OK" may arrive (and its end close the socket) while this side is still
  // in its last pacing sleep, so it is remembered rather than inferred from the socket state.
  let okReceived = false;
  const gotOk = new Promise<boolean>((resolve) => {
    let buf = '';
    socket.on('data', (d) => {
      buf += d.toString('utf8');
      if (buf.includes('OK\n')) {
        okReceived = true;
        resolve(true);
      }
    });
    socket.once('close', () => resolve(false));
  });
  const connected = await Promise.race([new Promise<boolean>((r) => socket.once('connect', () => r(true))), closed.then(() => false)]);
  if (!connected || out.cancelled) {
    if (out.cancelled) return finish('cancelled');
    return finish('failed', { code: 'VMTC_HOST_MIGRATION_FAILED', message: 'cannot connect to the destination', details: { uri } });
  }
  setupTimeMs = h.clock.now() - t0;
  socket.write(JSON.stringify({ migrationId, vmId, spec: vm.info.spec, totalBytes }) + '\n');

  for (let p = 0; p < passes.length; p++) {
    const last = p === passes.length - 1;
    // The last pass is stop-and-copy: the guest is paused from here until the destination runs.
    if (last) stopStart = h.clock.now();
    const status = last ? 'device' : 'active';
    report(status, p + 1, true);
    const passStart = h.clock.now();
    let passSent = 0;
    while (passSent < passes[p]!) {
      if (out.cancelled || socket.destroyed) return broken();
      const n = Math.min(CHUNK, passes[p]! - passSent);
      const fail = h.failures.failMigrateAfterBytes;
      if (fail !== undefined && sent + n > fail) {
        return finish('failed', { code: 'VMTC_HOST_FAULT_INJECTED', message: 'injected fault: stream dropped by the source', details: { afterBytes: fail } });
      }
      const ok = socket.write(n === CHUNK ? h.filler : h.filler.subarray(0, n));
      passSent += n;
      sent += n;
      if (!ok) await Promise.race([new Promise((r) => socket.once('drain', r)), closed]);
      const ahead = passStart + passSent / bytesPerMs - h.clock.now();
      if (ahead > 2) await Promise.race([clockSleep(h.clock, ahead), closed]);
      report(status, p + 1);
    }
  }
  if (!okReceived && (out.cancelled || socket.destroyed)) return broken();
  // The point of no return is the controller's (docs/design.md#switchover): paused, the source
  // says so and waits. Only after continueMigration() does the final state leave; a cancel
  // meanwhile breaks the stream, so the destination never has every byte and never runs.
  out.switchover = 'waiting';
  const proceed = new Promise<boolean>((resolve) => { out.proceed = () => resolve(true); });
  report('pre-switchover', passes.length, true);
  if (!(await Promise.race([proceed, closed.then(() => false)])) || out.cancelled || socket.destroyed) return broken();
  socket.write(h.filler.subarray(0, FINAL_STATE_BYTES));
  sent += FINAL_STATE_BYTES;
  if (!(await gotOk)) return broken();
  socket.end();
  return finish('completed');
}

export function closeIncoming(vm: DoubleVm): void {
  if (!vm.incoming) return;
  vm.incoming.socket?.destroy();
  vm.incoming.server.close();
  delete vm.incoming;
}

export function removeFailedIncoming(h: StreamHost, vm: DoubleVm): void {
  if (h.vms.get(vm.info.vmId) === vm && vm.info.state === 'incoming') {
    h.vms.delete(vm.info.vmId);
    h.changed();
  }
}

/** Destination: one connection of an incoming VM's listener. */
export function receiveMigration(h: StreamHost, vm: DoubleVm, sock: net.Socket): void {
  const inc = vm.incoming;
  if (!inc || inc.socket) {
    sock.destroy(); // one stream per incoming VM, as with QEMU
    return;
  }
  inc.socket = sock;
  sock.on('error', () => { /* handled on close */ });
  let header: { migrationId?: string; vmId?: string; totalBytes?: number } | undefined;
  let head = Buffer.alloc(0);
  let received = 0;
  let complete = false;
  const drop = h.failures.dropIncomingAfterBytes;
  sock.on('data', (d: Buffer) => {
    if (!header) {
      head = Buffer.concat([head, d]);
      const nl = head.indexOf(10);
      if (nl < 0) {
        if (head.length > 1024 * 1024) sock.destroy();
        return;
      }
      try {
        header = JSON.parse(head.subarray(0, nl).toString('utf8'));
      } catch {
        sock.destroy();
        return;
      }
      if (header?.vmId !== vm.info.vmId || header?.migrationId !== vm.info.migrationId || typeof header?.totalBytes !== 'number') {
        sock.destroy();
        return;
      }
      d = head.subarray(nl + 1);
    }
    received += d.length;
    if (drop !== undefined && received >= drop) {
      sock.destroy();
      return;
    }
    if (!complete && received >= header.totalBytes!) {
      complete = true;
      vm.info.state = 'running';
      delete vm.info.migrationId;
      inc.server.close();
      delete vm.incoming;
      h.landed(header.migrationId!);
      h.changed();
      sock.end('OK\n');
    }
  });
  sock.once('close', () => {
    if (complete) return;
    // The stream broke before the last byte: like QEMU's -incoming process, the VM goes away.
    closeIncoming(vm);
    removeFailedIncoming(h, vm);
  });
}

export function parseTcpUri(uri: string): { host: string; port: number } {
  const m = /^tcp:(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(String(uri));
  const port = m ? Number(m[3]) : NaN;
  if (!m || !(port > 0 && port <= 65535)) throw hostError('VMTC_HOST_MIGRATION_URI', { uri });
  return { host: (m[1] ?? m[2])!, port };
}
