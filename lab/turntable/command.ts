// `vmtc turntable` (also `npm run turntable -- …`): the lab's main job. Brings the lab up, starts
// every service as a real process, moves one VM back and forth `--rounds` times, once more
// non-live, tears everything down and writes DIR/turntable.json and DIR/report.html.
import { join } from 'node:path';
import type { Command } from '../../src/common/command.ts';
import { commonError } from '../../src/common/errors.ts';
import { defaultBandwidthMbps, runTurntable, TURNTABLE_DEFAULTS, type TurntableOptions } from './run.ts';
import { retuneWord } from './retune.ts';
import type { RetunePlan, TurntableResult } from './types.ts';

function num(v: unknown, field: string, min: number, max: number, integer = false): number {
  const n = Number(v);
  if (!Number.isFinite(n) || n < min || n > max || (integer && !Number.isInteger(n))) {
    throw commonError('VMTC_CONFIG_INVALID', { field, value: v, min, max }, { message: `--${field} must be ${integer ? 'an integer' : 'a number'} from ${min} to ${max}` });
  }
  return n;
}

function invalid(field: string, value: unknown, message: string): never {
  throw commonError('VMTC_CONFIG_INVALID', { field, value }, { message });
}

/** Tuning in flight from the options (lab/turntable/retune.ts), or undefined when
 *  `--retune-after-ms` is not given. The new limits are integers as PATCH /v1/migrations/:id takes
 *  them; a bandwidth above the migration's own is refused here, as the controller would refuse it
 *  (more than its lightpath was reserved with). */
export function retuneOptions(o: Record<string, unknown>, bandwidthMbps: number): RetunePlan | undefined {
  const after = o['retune-after-ms'];
  const bw = o['retune-bandwidth-mbps'];
  const dt = o['retune-max-downtime-ms'];
  if (after === undefined) {
    if (bw !== undefined) invalid('retune-bandwidth-mbps', bw, '--retune-bandwidth-mbps needs --retune-after-ms (when to change it)');
    if (dt !== undefined) invalid('retune-max-downtime-ms', dt, '--retune-max-downtime-ms needs --retune-after-ms (when to change it)');
    return undefined;
  }
  const afterMs = num(after, 'retune-after-ms', 0, 600_000, true);
  if (bw === undefined && dt === undefined) invalid('retune-after-ms', after, '--retune-after-ms needs --retune-bandwidth-mbps and/or --retune-max-downtime-ms (what to change)');
  const plan: RetunePlan = { afterMs };
  if (bw !== undefined) {
    plan.bandwidthMbps = num(bw, 'retune-bandwidth-mbps', 1, 100_000, true);
    if (plan.bandwidthMbps > bandwidthMbps) invalid('retune-bandwidth-mbps', bw, `--retune-bandwidth-mbps must not exceed the migration's bandwidth (${bandwidthMbps} Mbit/s, its lightpath's reservation)`);
  }
  if (dt !== undefined) plan.maxDowntimeMs = num(dt, 'retune-max-downtime-ms', 1, 600_000, true);
  return plan;
}

/** The run's options from the command line (pure: nothing starts; every bad value is a coded
 *  VMTC_CONFIG_INVALID naming its option). `out`, the signal and progress are run()'s. */
export function turntableOptions(o: Record<string, unknown>): Omit<TurntableOptions, 'out' | 'signal' | 'onProgress'> {
  const load = o.load as string;
  if (load !== 'none' && load !== 'dirty' && load !== 'disk' && load !== 'both') throw commonError('VMTC_CONFIG_INVALID', { field: 'load', value: load }, { message: '--load must be none, dirty, disk or both' });
  const diskMb = num(o['disk-mb'] ?? TURNTABLE_DISK_MB, 'disk-mb', 0, 65_536, true);
  if (diskMb > 0 && diskMb < 16) invalid('disk-mb', o['disk-mb'], '--disk-mb must be 0 (no disk) or at least 16');
  if ((load === 'disk' || load === 'both') && diskMb === 0) invalid('load', load, `--load ${load} writes the guest's data disk: not with --disk-mb 0`);
  const replica = (o.replica as string | undefined) ?? 'off';
  if (replica !== 'off' && replica !== 'on' && replica !== 'both') invalid('replica', replica, '--replica must be off, on or both');
  if (replica !== 'off' && diskMb === 0) invalid('replica', replica, '--replica pre-seeds the guest\'s data disk: not with --disk-mb 0');
  const replicaIntervalS = o['replica-interval-s'] !== undefined ? num(o['replica-interval-s'], 'replica-interval-s', 5, 3600, true) : undefined;
  if (replicaIntervalS !== undefined && replica === 'off') invalid('replica-interval-s', o['replica-interval-s'], '--replica-interval-s needs --replica on or both');
  const converge = o.converge as string;
  if (converge !== 'auto-converge' && converge !== 'postcopy') throw commonError('VMTC_CONFIG_INVALID', { field: 'converge', value: converge }, { message: '--converge must be auto-converge or postcopy' });
  const delayLine = o['delay-line'] as string | undefined;
  if (delayLine !== undefined && delayLine !== 'node' && delayLine !== 'c') throw commonError('VMTC_CONFIG_INVALID', { field: 'delay-line', value: delayLine }, { message: '--delay-line must be node or c' });
  const accel = (o.accel as string | undefined) ?? 'tcg';
  if (accel !== 'tcg' && accel !== 'kvm') invalid('accel', accel, '--accel must be tcg or kvm');
  const guest = o.guest as string | undefined;
  if (guest !== undefined && guest !== 'idle' && guest !== 'populated') invalid('guest', guest, '--guest must be idle or populated');
  const fillMb = o['fill-mb'] !== undefined ? num(o['fill-mb'], 'fill-mb', 1, 16_384, true) : undefined;
  if (fillMb !== undefined && guest === 'idle') invalid('fill-mb', o['fill-mb'], '--fill-mb populates the guest: not with --guest idle');
  const rateMbps = num(o['rate-mbps'], 'rate-mbps', 1, 100_000);
  const bandwidthMbps = o['bandwidth-mbps'] !== undefined ? num(o['bandwidth-mbps'], 'bandwidth-mbps', 1, 100_000) : undefined;
  const retune = retuneOptions(o, bandwidthMbps ?? defaultBandwidthMbps(rateMbps));
  const memoryMb = num(o['memory-mb'], 'memory-mb', 64, 16_384, true);
  if (fillMb !== undefined && fillMb > memoryMb * 0.9) invalid('fill-mb', o['fill-mb'], `--fill-mb must leave the guest's kernel room: at most 90 % of --memory-mb (${Math.floor(memoryMb * 0.9)})`);
  return {
    rttMs: num(o['rtt-ms'], 'rtt-ms', 0, 2000), rateMbps,
    memoryMb, load, converge, accel,
    diskMb, ...(diskMb ? { replica } : {}), ...(replicaIntervalS !== undefined ? { replicaIntervalS } : {}),
    ...(guest === 'populated' || fillMb !== undefined ? { guest: 'populated' as const } : {}),
    ...(fillMb !== undefined ? { fillMb } : {}),
    ...(o['queue-ms'] !== undefined ? { queueMs: num(o['queue-ms'], 'queue-ms', 0, 10_000) } : {}),
    ...(delayLine !== undefined ? { delayLine } : {}),
    ...(o['dirty-mb'] !== undefined ? { dirtyMb: num(o['dirty-mb'], 'dirty-mb', 1, 16_384, true) } : {}),
    ...(o['dirty-period-ms'] !== undefined ? { dirtyPeriodMs: num(o['dirty-period-ms'], 'dirty-period-ms', 1, 60_000, true) } : {}),
    rounds: num(o.rounds, 'rounds', 1, 1000, true),
    ...(bandwidthMbps !== undefined ? { bandwidthMbps } : {}),
    ...(retune ? { retune } : {}),
    maxDowntimeMs: num(o['max-downtime-ms'], 'max-downtime-ms', 1, 600_000, true),
    serialPeriodMs: num(o['serial-period-ms'], 'serial-period-ms', 1, 1000, true),
    clockPeriodUs: num(o['clock-period-us'], 'clock-period-us', 50, 1_000_000, true),
    noNonLive: o['no-nonlive'] === true,
    ...(o['bulk-seconds'] !== undefined ? { bulkSeconds: num(o['bulk-seconds'], 'bulk-seconds', 0, 60) } : {}),
  };
}

/** The guest's data disk when the live move leaves it where it is: the default `--disk-mb`. A
 *  GiB makes the disk matter (a mirror of it takes ~20 s at 500 Mbit/s) and fits this machine's
 *  free space and a run's time (docs/lab.md "The turntable's disk"). */
export const TURNTABLE_DISK_MB = 1024;

/** The disk's lines of the summary: per migration what crossed, and with vs without a replica. */
export function diskLines(r: TurntableResult): string[] {
  const ms = r.migrations.filter((m) => m.disk);
  if (!ms.length) return [];
  const mb = (v: number | null | undefined) => (v === null || v === undefined ? '–' : (v / 1e6).toFixed(2));
  const f = (v: number | null | undefined) => (v === null || v === undefined ? '–' : String(Math.round(v)));
  const load = r.config.diskLoad;
  const out = [`disk ${r.config.diskMb} MiB (${r.config.diskFillMb} MiB written before the start${load ? `; the guest writes ${load.kibPerS} KiB/s over ${load.windowMb} MiB` : '; no disk load'}), replica ${r.config.replica ?? 'off'} (MB = 10^6 bytes):`];
  const head = ['#', 'mode', 'replica', 'at migration', 'pre-copy delta', 'pause delta', 'seed', 'deltas before', 'last delta', 'seed line', 'migration line', 'udp ms'];
  const rows = ms.map((m) => { const d = m.disk!; return [String(m.round), m.mode, d.replicaUsed ? 'used' : d.replica ? 'UNUSED' : 'no', mb(d.bytesAtMigration), mb(d.precopyDeltaBytes), mb(d.lastDeltaAtPauseBytes), mb(d.seedBytes), mb(d.replicaDeltaBytes), mb(d.replicaLastDeltaBytes), mb(d.seedDelayLineBytes), mb(d.delayLineBytes), f(m.downtimeMs.udp)]; });
  const all = [head, ...rows];
  const w = head.map((_, i) => Math.max(...all.map((row) => row[i]!.length)));
  out.push(...all.map((row) => row.map((c, i) => (i < 3 ? c.padEnd(w[i]!) : c.padStart(w[i]!))).join('  ')));
  const c = r.summary.disk;
  if (c) {
    const p = (x: { p50: number | null; max: number | null }, k: (v: number | null) => string) => `median ${k(x.p50)} max ${k(x.max)}`;
    out.push(`  with a replica (${c.with.n}): disk at migration ${p(c.with.bytesAtMigration, mb)} MB, udp downtime ${p(c.with.udp, f)} ms, seed ${p(c.with.seedBytes, mb)} MB before`,
      `  without (${c.without.n}): disk at migration ${p(c.without.bytesAtMigration, mb)} MB, udp downtime ${p(c.without.udp, f)} ms`);
  }
  return out;
}

/** The guest in words: idle, or populated with how much. */
export function guestWord(r: TurntableResult): string {
  return r.config.guest === 'populated' ? `populated guest, ${r.config.fillMb ?? '?'} MiB filled` : 'idle guest';
}

/** The per-migration breakdown (lab/turntable/breakdown.ts) as a small table, and its medians. */
export function breakdownLines(r: TurntableResult): string[] {
  const f = (v: number | null | undefined) => (v === null || v === undefined ? '–' : String(Math.round(v)));
  const head = ['#', 'mode', 'pause→last page', 'last page→RESUME', 'RESUME→heartbeat', 'heartbeat→reply', 'sum', 'udp', 'lead', 'adds up'];
  const rows = r.migrations.filter((m) => m.breakdown).map((m) => {
    const b = m.breakdown!;
    return [String(m.round), m.mode, f(b.stepsMs.pauseToLastPage), f(b.stepsMs.lastPageToResume), f(b.stepsMs.resumeToHeartbeat), f(b.stepsMs.heartbeatToReply), f(b.totalMs), f(b.clientSeenMs), f(b.leadMs), b.consistent ? 'yes' : 'NO'];
  });
  if (!rows.length) return [];
  const all = [head, ...rows];
  const w = head.map((_, i) => Math.max(...all.map((row) => row[i]!.length)));
  const out = [`breakdown (ms, ${r.migrations.find((m) => m.breakdown)!.breakdown!.clock}): source pause (QEMU STOP) → last page (+ QEMU downtime) → RESUME (destination) → first heartbeat (ttyS1, host side) → first client reply (UDP)`,
    ...all.map((row) => row.map((c, i) => (i < 2 ? c.padEnd(w[i]!) : c.padStart(w[i]!))).join('  '))];
  for (const m of r.migrations.filter((x) => x.breakdown && !x.breakdown.consistent)) out.push(`  ${m.mode} ${m.round} does not add up: ${m.breakdown!.problems.join('; ')}`);
  return out;
}

function stamp(d = new Date()): string {
  return d.toISOString().replace(/[:.]/g, '-').replace(/Z$/, '');
}

/** The summary table printed at the end (also used by the README's figures). */
export function summaryTable(r: TurntableResult): string {
  const f = (v: number | null | undefined) => (v === null || v === undefined ? '–' : String(Math.round(v)));
  const rows = [
    ['#', 'move', 'mode', 'ok', 'line', 'ping', 'udp', 'serial', 'internal', 'QEMU', 'tun-pas', 'tun-prb', 'total', 'control', 'MB', 'Mbit/s', 'TCP', 'memory', ...(r.config.retune ? ['retuned'] : [])],
    ...r.migrations.map((m) => [String(m.round), `${m.from}→${m.to}`, m.mode, m.ok ? 'yes' : 'NO', m.reliable === false ? 'UNRELIABLE' : 'ok', f(m.downtimeMs.ping), f(m.downtimeMs.udp), f(m.downtimeMs.serial), f(m.downtimeMs.internal), f(m.downtimeMs.hypervisor), f(m.downtimeMs.tunnelPassive), f(m.downtimeMs.tunnelProbe), f(m.totalMs), f(m.controlPlaneMs), (m.bytes / 1e6).toFixed(1), f(m.throughputMbps), m.tcpSessionSurvived ? 'kept' : 'LOST',
      !m.memory ? '–' : m.memory.evidence ? 'DAMAGED' : m.memory.verified ? 'verified' : '–',
      ...(r.config.retune ? [!m.retuned ? '–' : m.retuned.ok ? `at ${m.retuned.atMs}` : m.retuned.code ?? 'NO'] : [])]),
  ];
  const w = rows[0]!.map((_, i) => Math.max(...rows.map((row) => row[i]!.length)));
  const lines = rows.map((row) => row.map((c, i) => (i < 3 ? c.padEnd(w[i]!) : c.padStart(w[i]!))).join('  '));
  lines.splice(1, 0, w.map((n) => '-'.repeat(n)).join('  '));
  const s = r.summary;
  const p = (x: { p50: number | null; p95: number | null; max: number | null }) => `p50 ${f(x.p50)}  p95 ${f(x.p95)}  max ${f(x.max)}`;
  lines.push('', ...breakdownLines(r));
  const accel = r.config.accel ?? 'tcg';
  const counted = s.liveCounted ?? s.liveOk;
  if (s.unreliable?.length) lines.push('', `UNRELIABLE (the delay line dropped or fell short; left out below): ${s.unreliable.join(', ')}`);
  lines.push('', `downtime over ${counted}/${s.liveTotal} live migrations (ms; ${accel.toUpperCase()}${accel === 'tcg' ? ': includes TCG retranslation after resume' : ''}${s.liveOk > counted ? `; ${s.liveOk - counted} unreliable left out` : ''}):`,
    `  ping (50 ms)  ${p(s.ping)}`, `  udp (2 ms)    ${p(s.udp)}`, `  serial        ${p(s.serial)}`, `  QEMU's own    ${p(s.hypervisor)}`,
    ...(s.tunnelPassive && s.agreement ? [
      `  tunnel agent  passive ${p(s.tunnelPassive)}; probe (20 ms) ${p(s.tunnelProbe ?? s.tunnelPassive)}`,
      `  agreement |tunnel − udp|: passive median ${f(s.agreement.passiveVsUdp.p50)} worst ${f(s.agreement.passiveVsUdp.max)}; probe median ${f(s.agreement.probeVsUdp.p50)} worst ${f(s.agreement.probeVsUdp.max)}`,
    ] : []),
    `non-live ${f(s.nonLiveElapsedMs)} ms ÷ live median ${f(s.liveClientMedianMs)} ms = ${s.liveNonLiveRatio ?? '–'} (paper §6.4; ${guestWord(r)}, ${accel.toUpperCase()})`,
    `emulator: nominal ${r.emulator.nominalMbps} Mbit/s, delivered up to ${Math.round(r.emulator.deliveredMbps)} Mbit/s, RTT ${r.emulator.rttMs} ms, queue max ${r.emulator.queueMaxMs} ms${r.config.queueMs !== undefined ? ` of ${r.config.queueMs} (${r.config.queueSizing === 'given' ? '--queue-ms' : 'bandwidth-delay product'})` : ''}, ${r.emulator.drops} drops${r.config.delayLineSched ? `; relay ${r.config.delayLineSched.policy === 'other' ? 'normal priority' : `SCHED_${r.config.delayLineSched.policy.toUpperCase()} ${r.config.delayLineSched.priority}`} on CPU ${r.config.delayLineSched.cpus}` : ''}`);
  lines.push(...diskLines(r));
  if (r.config.load === 'dirty' || r.config.load === 'both') {
    const verified = r.migrations.filter((m) => m.memory?.verified).length;
    lines.push(`guest memory verified after ${verified}/${r.migrations.length} migrations (a whole pass over ${r.config.dirtyMb} MB after each)`);
  }
  for (const m of r.migrations.filter((x) => x.memory?.evidence)) lines.push(`guest damaged after ${m.mode} ${m.round} (${m.migrationId}): ${m.memory!.evidence}`);
  for (const m of r.migrations.filter((x) => x.retuned)) lines.push(`retuned ${m.mode} ${m.round} (${m.migrationId}): ${retuneWord(m.retuned)}`);
  for (const x of r.findings) lines.push(`finding: ${x}`);
  return lines.join('\n');
}

export const command: Command = {
  name: 'turntable',
  summary: "the lab's main job: move a VM back and forth over the emulated lightpath and measure downtime every way",
  usage: [
    'Run as root on a machine with QEMU (bash lab/install-deps.sh installs what is needed).',
    'Writes DIR/turntable.json (schema in the README) and DIR/report.html; prints a summary table.',
    'Ctrl-C cancels the migration in flight if it still can be, then tears the lab down.',
  ].join('\n'),
  options: {
    'rtt-ms': { type: 'string', arg: 'MS', default: String(TURNTABLE_DEFAULTS.rttMs), help: 'round-trip time of the emulated lightpath' },
    'rate-mbps': { type: 'string', arg: 'MBPS', default: String(TURNTABLE_DEFAULTS.rateMbps), help: 'line rate of the emulated lightpath' },
    'delay-line': { type: 'string', arg: 'node|c', help: 'which delay line relays the lightpath: the Node.js one or the faster C one (default: env VMTC_DELAY_LINE, else c)' },
    'memory-mb': { type: 'string', arg: 'MB', default: String(TURNTABLE_DEFAULTS.memoryMb), help: 'guest memory' },
    'queue-ms': { type: 'string', arg: 'MS', help: "the delay line's queue bound in ms at the line rate (default: one bandwidth-delay product of the reserved rate, RTT × bandwidth ÷ line rate, 20–1000 ms)" },
    accel: { type: 'string', arg: 'tcg|kvm', default: 'tcg', help: "QEMU's accelerator: kvm only where /dev/kvm works (else VMTC_LAB_KVM_UNAVAILABLE); TCG figures are labelled as such" },
    guest: { type: 'string', arg: 'idle|populated', help: 'idle guest (default), or one whose memory is populated once at boot (see --fill-mb)' },
    'fill-mb': { type: 'string', arg: 'MB', help: 'populated guest: MiB of non-zero data written once at boot before it is ready (default with --guest populated: half of --memory-mb less the dirty load)' },
    load: { type: 'string', arg: 'none|dirty|disk|both', default: 'none', help: 'guest workload: dirty keeps rewriting memory, disk writes the data disk (1 MiB/s over a 16 MiB window), both does both' },
    'disk-mb': { type: 'string', arg: 'MB', default: String(TURNTABLE_DISK_MB), help: "the guest's qcow2 data disk, written whole before the start; live moves copy it (0: no disk)" },
    replica: { type: 'string', arg: 'off|on|both', default: 'off', help: 'on: pre-seed a replica of the disk at the destination before each live move (the move sends deltas); off: the move mirrors the whole disk; both: odd rounds on, even off' },
    'replica-interval-s': { type: 'string', arg: 'S', help: "with --replica: seconds between the replica's deltas (default 20; one is waited for before the move)" },
    'dirty-mb': { type: 'string', arg: 'MB', help: 'with --load dirty: memory rewritten per period (default: a quarter of the guest memory)' },
    converge: { type: 'string', arg: 'auto-converge|postcopy', default: 'auto-converge', help: 'with --load dirty: throttle the guest until pre-copy converges, or switch to post-copy after the first full pass' },
    'dirty-period-ms': { type: 'string', arg: 'MS', help: 'with --load dirty: one pass over the dirty memory per period (default 1000)' },
    rounds: { type: 'string', arg: 'N', default: String(TURNTABLE_DEFAULTS.rounds), help: 'live migrations (alternating between the two sites)' },
    out: { type: 'string', arg: 'DIR', help: 'where turntable.json, report.html and the logs go (default lab/results/<timestamp>)' },
    'bandwidth-mbps': { type: 'string', arg: 'MBPS', help: 'bandwidth asked of the broker and given to QEMU (default: half the line rate)' },
    'max-downtime-ms': { type: 'string', arg: 'MS', default: String(TURNTABLE_DEFAULTS.maxDowntimeMs), help: "QEMU's downtime limit for the switchover" },
    'serial-period-ms': { type: 'string', arg: 'MS', default: String(TURNTABLE_DEFAULTS.serialPeriodMs), help: 'period of the guest heartbeat on its second serial port' },
    'clock-period-us': { type: 'string', arg: 'US', default: String(TURNTABLE_DEFAULTS.clockPeriodUs), help: "period of the guest's internal clock probe (the paper used 200 µs)" },
    'no-nonlive': { type: 'boolean', help: 'skip the non-live (suspend, copy, resume) comparison migration' },
    'bulk-seconds': { type: 'string', arg: 'S', help: 'seconds of the bulk TCP flow across the lightpath before the rounds, the reference rate of copyVsBulk (0: none) (default: 5)' },
    'retune-after-ms': { type: 'string', arg: 'MS', help: "tune in flight: this long after each live migration's copy starts, change its limits once (PATCH /v1/migrations/:id)" },
    'retune-bandwidth-mbps': { type: 'string', arg: 'MBPS', help: 'with --retune-after-ms: the new bandwidth (not above --bandwidth-mbps)' },
    'retune-max-downtime-ms': { type: 'string', arg: 'MS', help: 'with --retune-after-ms: the new downtime limit' },
  },
  async run(o) {
    const opts = turntableOptions(o);
    const out = (o.out as string | undefined) ?? join(new URL('../results', import.meta.url).pathname, stamp());
    const ctl = new AbortController();
    let signals = 0;
    const onSignal = () => {
      signals++;
      process.stderr.write(signals === 1 ? '\ninterrupted: cancelling and tearing down (again to quit at once)\n' : '\nquitting\n');
      if (signals > 1) process.exit(130);
      ctl.abort();
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    const t0 = Date.now();
    try {
      const r = await runTurntable({
        ...opts, out,
        signal: ctl.signal,
        onProgress: (line) => process.stderr.write(`[${((Date.now() - t0) / 1000).toFixed(1).padStart(6)} s] ${line}\n`),
      });
      process.stdout.write(summaryTable(r) + '\n');
      process.stdout.write(`\nwrote ${join(out, 'turntable.json')} and ${join(out, 'report.html')}\n`);
      const allOk = r.migrations.length > 0 && r.migrations.every((m) => m.ok && m.placesAfter.length === 1);
      return ctl.signal.aborted ? 130 : allOk ? 0 : 1;
    } finally {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    }
  },
};
