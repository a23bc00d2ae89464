// The turntable's instrument (docs/lab.md "The instrument"): the decisions that keep the
// lab's own machinery from moving the figures, pure so they are tested directly — the delay
// line's queue sized from the bandwidth-delay product, the rule that marks a migration's figures
// unreliable from the delay line's per-second reports, the populated guest's default fill, and
// which accelerator a run may use.
import { accessSync, constants } from 'node:fs';
import { spawn } from 'node:child_process';
import { labError } from '../errors.ts';

// The queue's default sizing lives with the delay line (lab/delay-line.ts), shared with `vmtc lab up`.
export { bdpQueueMs, QUEUE_MS_MAX, QUEUE_MS_MIN } from '../delay-line.ts';

/** One direction of one delay-line report interval (lab/delay-line.ts DirectionStats). */
export interface IntervalDirection { bytes: number; mbps: number; drops: number; queueP50Ms: number; queueMaxMs: number }
/** One per-second report: `at` ends the interval of `intervalMs`. */
export interface EmulatorInterval { at: number; intervalMs: number; ab: IntervalDirection; ba: IntervalDirection }

/** The delay line had a backlog over an interval when its median datagram waited this long. */
export const BACKLOG_P50_MS = 1;
/** …and it fell short when it delivered less than this share of the reserved rate. */
export const DELIVERED_SHARE = 0.95;

export interface EmulatorVerdict {
  reliable: boolean;
  /** Why not, one line each (empty when reliable). */
  reasons: string[];
  /** Queue-full drops over the migration's window (random loss is configured, not counted). */
  drops: number;
  /** Report intervals wholly inside the copy, which the rate rule judged. */
  intervalsJudged: number;
  /** Those that fell short with a backlog (the data direction). */
  shortIntervals: { at: number; mbps: number; queueP50Ms: number }[];
}

/**
 * Were this migration's figures made on a line that kept up? Unreliable when either
 *  - the delay line dropped datagrams (queue full) in a report covering [window.from, window.to],
 *  - or, in a report interval lying wholly inside the copy [copy.from, copy.to], the direction
 *    carrying the data (more bytes) had a backlog — its median datagram waited ≥ BACKLOG_P50_MS
 *    before serialisation, so more was offered than went out — and it delivered less than
 *    DELIVERED_SHARE of the reserved rate min(bandwidth, line rate): the sender wanted the full
 *    rate and the line, not QEMU, held it back.
 * Intervals straddling the copy's start or end are not judged by rate (a part-second of copy
 * reads as a low rate).
 */
export function judgeEmulator(reports: readonly EmulatorInterval[], window: { from: number; to: number }, copy: { from: number; to: number } | null, reservedMbps: number): EmulatorVerdict {
  let drops = 0;
  let intervalsJudged = 0;
  const shortIntervals: EmulatorVerdict['shortIntervals'] = [];
  for (const r of reports) {
    if (r.at < window.from || r.at - r.intervalMs > window.to) continue;
    drops += r.ab.drops + r.ba.drops;
    if (!copy || r.at - r.intervalMs < copy.from || r.at > copy.to) continue;
    intervalsJudged++;
    const d = r.ab.bytes >= r.ba.bytes ? r.ab : r.ba;
    if (d.queueP50Ms >= BACKLOG_P50_MS && d.mbps < DELIVERED_SHARE * reservedMbps) shortIntervals.push({ at: r.at, mbps: d.mbps, queueP50Ms: d.queueP50Ms });
  }
  const reasons: string[] = [];
  if (drops > 0) reasons.push(`the delay line dropped ${drops} datagram${drops === 1 ? '' : 's'} (queue full)`);
  if (shortIntervals.length) {
    reasons.push(`the delay line delivered below ${Math.round(DELIVERED_SHARE * 100)} % of the reserved ${reservedMbps} Mbit/s with a backlog in ${shortIntervals.length} second${shortIntervals.length === 1 ? '' : 's'} of the copy (${shortIntervals.map((s) => `${Math.round(s.mbps)} Mbit/s, median wait ${s.queueP50Ms} ms`).join('; ')})`);
  }
  return { reliable: reasons.length === 0, reasons, drops, intervalsJudged, shortIntervals };
}

/** The populated guest's default fill: half of its memory, less the dirty load's share (the
 *  kernel, the initramfs, which lives in RAM, and the probes need the rest: three quarters of a
 *  256 MB guest made its kernel kill the fill for lack of memory). */
export function defaultFillMb(memoryMb: number, dirtyMb: number): number {
  return Math.max(0, Math.floor(memoryMb * 0.5) - dirtyMb);
}

export type Accel = 'tcg' | 'kvm';

/**
 * Whether this host can run a guest under `-accel kvm`. /dev/kvm must open read-write, and a
 * kernel must print under KVM: QEMU starting with `-accel kvm` is not enough (on a nested host
 * here /dev/kvm opened and QEMU started, but the guest never printed a line in 30 s while TCG
 * booted it in about a second). So the guest's kernel is booted without a root file system,
 * console on stdout, and must print "Linux version" within `timeoutMs`; QEMU is then killed (our
 * child, by pid).
 */
export async function kvmWorks(kernel: string, o: { qemu?: string; timeoutMs?: number } = {}): Promise<{ ok: boolean; why: string }> {
  try {
    accessSync('/dev/kvm', constants.R_OK | constants.W_OK);
  } catch (e) {
    return { ok: false, why: `/dev/kvm is not usable (${(e as NodeJS.ErrnoException).code ?? String(e)})` };
  }
  const qemu = o.qemu ?? 'qemu-system-x86_64';
  const timeoutMs = o.timeoutMs ?? 15_000;
  return new Promise((resolve) => {
    const child = spawn(qemu, ['-accel', 'kvm', '-m', '64M', '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot',
      '-kernel', kernel, '-append', 'console=ttyS0 earlyprintk=serial,ttyS0,115200 panic=1', '-serial', 'stdio'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    let done = false;
    const finish = (r: { ok: boolean; why: string }): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      resolve(r);
    };
    const timer = setTimeout(() => finish({ ok: false, why: `a guest kernel under ${qemu} -accel kvm printed nothing in ${timeoutMs} ms (KVM opens but does not run guests)` }), timeoutMs);
    child.stdout!.on('data', (d) => {
      out = (out + String(d)).slice(-8192);
      if (out.includes('Linux version')) finish({ ok: true, why: '' });
    });
    child.stderr!.on('data', (d) => { err = (err + String(d)).slice(-2000); });
    child.on('error', (e) => finish({ ok: false, why: `${qemu} could not start: ${e.message}` }));
    child.on('exit', (code) => finish(out.includes('Linux version') ? { ok: true, why: '' } : { ok: false, why: `${qemu} -accel kvm exited (${code}) before the guest kernel printed: ${err.trim().slice(0, 300)}` }));
  });
}

/** The accelerator a run uses: tcg always; kvm only where it works (else VMTC_LAB_KVM_UNAVAILABLE). */
export async function resolveAccel(asked: Accel, probe: () => Promise<{ ok: boolean; why: string }>): Promise<Accel> {
  if (asked === 'tcg') return 'tcg';
  const k = await probe();
  if (!k.ok) throw labError('VMTC_LAB_KVM_UNAVAILABLE', { why: k.why }, { message: `--accel kvm asked but KVM does not work here: ${k.why}` });
  return 'kvm';
}
