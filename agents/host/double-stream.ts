// The double's live migration (agents/host/double-driver.ts describes the protocol): real TCP
// from the source's migrate() to the destination's listener, so timeouts, cancellation, a killed
// destination and bandwidth limits behave as with QEMU's `migrate tcp:HOST:PORT`; and, as QEMU
// with `pause-before-switchover`, the final state waits for the controller's decision
// (docs/design.md#switchover).
import net from 'node:net';
import type { MigrationParams, MigrationProgress, MigrationResult, VmInfo } from '../../src/common/agent-protocol.ts';
import { randomBytes } from 'node:crypto';
import { clockSleep, type Clock } from '../../src/common/clock.ts';
import { hostError } from './errors.ts';
import { autoConvergeStep, bytesPerMs, copyControl, dirtiedDuring, estimatedTotal, expectedDowntimeMs, firstPass, MAX_PASSES, mbpsToBytesPerMs, nextPass, runningMs, type CopyControl, type CopyModel } from './double-copy.ts';

export const CHUNK = 256 * 1024;
const PROGRESS_EVERY_MS = 100;
/** The final state the source sends only after continueMigration() (QEMU: the device state);
 *  the destination cannot run without it. Its bytes are FINAL_MARK, which the memory's never
 *  are (fillerBytes), so the destination knows it however many passes came before. */
export const FINAL_STATE_BYTES = 16 * 1024;
const FINAL_MARK = 0xff;
const FINAL_STATE = Buffer.alloc(FINAL_STATE_BYTES, FINAL_MARK);

/** Random bytes standing in for guest memory: never FINAL_MARK. */
export function fillerBytes(n: number): Buffer {
  const b = randomBytes(n);
  for (let i = 0; i < b.length; i++) if (b[i] === FINAL_MARK) b[i] = FINAL_MARK - 1;
  return b;
}

/** One VM of the double, with its migration stream in either direction. */
export interface DoubleVm {
  info: VmInfo;
  incoming?: { server: net.Server; socket?: net.Socket; port: number; hold?: boolean };
  outgoing?: {
    socket?: net.Socket;
    cancelled: boolean;
    migrationId: string;
    /** 'waiting': paused before the final state (status 'pre-switchover'); 'continued': the
     *  controller decided and the final state is on its way (no cancel from here on). */
    switchover?: 'waiting' | 'continued';
    /** Lets the final state go (set while waiting). */
    proceed?: () => void;
    /** The final state was written to the stream (or the copy switched to post-copy): from
     *  here the destination may run the VM. */
    finalStateLeft?: boolean;
    /** Its limits and what an operator forced (double-copy.ts). */
    control: CopyControl;
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
  /** Mbit/s of memory the running guest dirties during a migration (0: the fixed pass model). */
  readonly dirtyMbps: number;
  readonly failures: { failMigrateAfterBytes?: number; dropIncomingAfterBytes?: number };
  /** A VM changed state: tell the driver's listeners. */
  changed(): void;
  /** Destination: an incoming migration received its final state (the VM runs here). */
  landed(migrationId: string): void;
  /** TEST ONLY (agents/host/double-knobs.ts): wait while the hold file lists the point. */
  hold(point: 'finalState'): Promise<void>;
  /** TEST ONLY (agents/host/double-knobs.ts): write the VM table to the state file, if any. */
  persist(): void;
}

/** Source: stream the VM to `uri` in pre-copy passes, paced, the last as stop-and-copy (the
 *  passes' sizes and the convergence are double-copy.ts's model). */
export async function sendMigration(h: StreamHost, vm: DoubleVm, uri: string, params: MigrationParams, onProgress: (p: MigrationProgress) => void): Promise<MigrationResult> {
  const vmId = vm.info.vmId;
  const target = parseTcpUri(uri);
  const migrationId = params.migrationId;
  const c = copyControl(params, h.defaultBandwidthMbps);
  const out: NonNullable<DoubleVm['outgoing']> = { cancelled: false, migrationId, control: c };
  vm.outgoing = out;
  vm.info.state = 'migrating';
  vm.info.migrationId = migrationId;
  h.changed();

  const t0 = h.clock.now();
  const model: CopyModel = { mem: vm.info.memoryMb * h.bytesPerMb, passes: h.passes, dirtyBytesPerMs: mbpsToBytesPerMs(h.dirtyMbps) };
  let plan = firstPass(model);
  /** Bytes known to be left before the final state (of this pass, or after a switch to
   *  post-copy), and whether the final state went. */
  let left = plan.size;
  let finalSent = false;
  let sent = 0;
  let setupTimeMs = 0;
  let stopStart = 0;
  let lastReport = 0;
  const totalBytes = () => estimatedTotal(model, sent, left, FINAL_STATE_BYTES, finalSent);
  const report = (status: MigrationProgress['status'], pass?: number, force = false) => {
    const now = h.clock.now();
    if (!force && now - lastReport < PROGRESS_EVERY_MS) return;
    lastReport = now;
    const elapsed = Math.max(1, now - t0 - setupTimeMs);
    const total = totalBytes();
    try {
      onProgress({
        migrationId, vmId, totalBytes: total, status, transferredBytes: sent, remainingBytes: Math.max(0, total - sent), ...(pass !== undefined ? { pass } : {}),
        throughputMbps: Math.round((sent * 8) / elapsed / 1000), expectedDowntimeMs: expectedDowntimeMs(model, c, plan),
        ...(c.throttlePercent !== undefined ? { cpuThrottlePercent: c.throttlePercent } : {}),
      });
    } catch {
      /* a listener's failure must not break the stream */
    }
  };
  const finish = (status: MigrationResult['status'], error?: MigrationResult['error']): MigrationResult => {
    out.socket?.destroy();
    if (vm.outgoing === out) delete vm.outgoing;
    if (h.vms.get(vmId) === vm) {
      if (status === 'completed') vm.info.state = 'postmigrate';
      else if (vm.info.state === 'migrating' && out.finalStateLeft) {
        // The final state left: the destination may run the VM, so the source must not run
        // too; it stays paused for an operator (docs/design.md#switchover).
        vm.info.state = 'paused';
      } else if (vm.info.state === 'migrating') {
        // The source stays primary on any failure (docs/design.md#commit): back to running,
        // a forced pause included.
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
  socket.write(JSON.stringify({ migrationId, vmId, spec: vm.info.spec, totalBytes: totalBytes() }) + '\n');

  /** Pacing: sleep until `ms` from now, or until a tune or a force wakes the copy. */
  const pace = async (ms: number) => {
    const wake = new AbortController();
    c.wake = () => wake.abort();
    await Promise.race([clockSleep(h.clock, ms, wake.signal), closed]);
    c.wake = undefined;
  };
  /** Bytes left for after a switch to post-copy (the rest of the cut pass and what the guest
   *  dirtied meanwhile); undefined while pre-copy runs to its stop-and-copy. */
  let postcopyRest: number | undefined;
  let pass = 1;
  for (;; pass++) {
    if (pass > MAX_PASSES) return finish('failed', { code: 'VMTC_HOST_MIGRATION_FAILED', message: 'the copy did not converge', details: { passes: MAX_PASSES } });
    // The last pass is stop-and-copy: the guest is paused from here (or from a forced pause
    // before it) until the destination runs.
    if (plan.last) stopStart = c.pausedAt ?? h.clock.now();
    const status = plan.last ? 'device' : 'active';
    report(status, pass, true);
    const passStart = h.clock.now();
    let due = passStart;
    let passSent = 0;
    left = plan.size;
    while (passSent < plan.size) {
      if (out.cancelled || socket.destroyed) return broken();
      if (c.forced === 'postcopy' && !plan.last) break;
      const n = Math.min(CHUNK, plan.size - passSent);
      const fail = h.failures.failMigrateAfterBytes;
      if (fail !== undefined && sent + n > fail) {
        return finish('failed', { code: 'VMTC_HOST_FAULT_INJECTED', message: 'injected fault: stream dropped by the source', details: { afterBytes: fail } });
      }
      if (c.repace) {
        c.repace = false;
        due = h.clock.now();
      }
      const ok = socket.write(n === CHUNK ? h.filler : h.filler.subarray(0, n));
      passSent += n;
      sent += n;
      left -= n;
      due += n / bytesPerMs(c);
      if (!ok) await Promise.race([new Promise((r) => socket.once('drain', r)), closed]);
      const ahead = due - h.clock.now();
      if (ahead > 2) await pace(ahead);
      report(status, pass);
    }
    if (plan.last) break;
    const ran = runningMs(c, passStart, h.clock.now());
    if (c.forced === 'postcopy') {
      postcopyRest = plan.size - passSent + dirtiedDuring(model, ran);
      left = postcopyRest;
      break;
    }
    plan = nextPass(model, c, plan, pass, ran);
    if (!plan.last && model.dirtyBytesPerMs > 0) autoConvergeStep(c);
    left = plan.size;
  }
  if (!okReceived && (out.cancelled || socket.destroyed)) return broken();
  // The point of no return is the controller's (docs/design.md#switchover): paused, the source
  // says so and waits (before the switch to post-copy too). Only after continueMigration() does
  // the final state leave; a cancel meanwhile breaks the stream, so the destination never has
  // every byte and never runs.
  if (postcopyRest !== undefined) stopStart = h.clock.now();
  out.switchover = 'waiting';
  const proceed = new Promise<boolean>((resolve) => { out.proceed = () => resolve(true); });
  report('pre-switchover', pass, true);
  if (!(await Promise.race([proceed, closed.then(() => false)])) || out.cancelled || socket.destroyed) return broken();
  await h.hold('finalState');
  // Continued, but the final state has not left: a break here is a failure before it (the
  // source runs again), as a cancel before the continue.
  if (socket.destroyed) return broken();
  if (postcopyRest !== undefined) {
    // Post-copy: from the switch the destination runs the VM (QEMU's post-copy-active), so a
    // break from here leaves the source paused; the rest goes unpaced, then the final state.
    out.finalStateLeft = true;
    h.persist();
    report('postcopy-active', pass, true);
    while (left > 0) {
      if (socket.destroyed) return broken();
      const n = Math.min(CHUNK, left);
      const ok = socket.write(n === CHUNK ? h.filler : h.filler.subarray(0, n));
      left -= n;
      sent += n;
      if (!ok) await Promise.race([new Promise((r) => socket.once('drain', r)), closed]);
    }
  }
  socket.write(FINAL_STATE);
  out.finalStateLeft = true;
  h.persist();
  sent += FINAL_STATE_BYTES;
  finalSent = true;
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
  /** Bytes of the final state received (it is the last thing the source sends). */
  let finalReceived = 0;
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
    if (!complete) {
      if (finalReceived > 0) finalReceived += d.length;
      else {
        const at = d.indexOf(FINAL_MARK);
        if (at >= 0) finalReceived = d.length - at;
      }
    }
    if (!complete && finalReceived >= FINAL_STATE_BYTES) {
      complete = true;
      // Held (tuning.holdAfterLanding): paused until vm.resume, as QEMU started with -S.
      vm.info.state = inc.hold ? 'paused' : 'running';
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
