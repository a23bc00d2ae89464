// The turntable (README "The turntable"): the whole vmtc stack in the lab, one VM moved back and forth between
// two sites `rounds` times over the emulated lightpath, then once non-live (suspend, copy,
// resume) for comparison. Every migration is watched by independent probes — the guest's own
// clock probe, the serial heartbeat on ttyS1 read on the host side at the source and then at the
// destination, a client pinging every 50 ms (paper Table 3) and a UDP echo every 2 ms — plus
// QEMU's own figure, the controller's timings and what the delay line delivered. The result is
// `turntable.json` (types.ts) and `report.html` (report.ts). This file is the orchestration (options,
// defaults, bring-up, the rounds, the findings, the report); one migration measured is measure.ts.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { cpus, release } from 'node:os';
import { join, resolve } from 'node:path';
import { startStack, type MigrationOutcome } from '../stack.ts';
import type { DelayLineSched } from '../delay-line-sched.ts';
import { resolveDelayLineImpl, type DelayLineImpl } from '../delay-line-process.ts';
import { qemuVmPaths } from '../../agents/host/qemu/cmdline.ts';
import { bdpQueueMs, defaultFillMb, kvmWorks, resolveAccel, type Accel } from './instrument.ts';
import { buildGuestImage } from '../guest/build.ts';
import { counts, summarize } from './summary.ts';
import { copyVsBulk, measureBulkTcp } from './bulk.ts';
import { awaitGuestFill } from './fill.ts';
import { lightpathRtt } from './probes/session.ts';
import { renderReport } from './report.ts';
import { measureOne, migrationLine, type InternalNote } from './measure.ts';
import type { RetunePlan, TurntableConfig, TurntableMigration, TurntableResult } from './types.ts';
import { diskFigures, diskLoadFor, dirtiesMemory, dropReplicas, prepareReplica, replicaForRound, writesDisk, type ReplicaPlan, type ReplicaPrep } from './disk.ts';

export { clientSeen, summarize } from './summary.ts';

export interface TurntableOptions {
  rttMs: number;
  rateMbps: number;
  memoryMb: number;
  load: 'none' | 'dirty' | 'disk' | 'both';
  /** The guest's qcow2 data disk in MiB (0/absent: none), written whole with 0x5a before the
   *  guest starts (`diskFillMb`: less), and which rounds pre-seed a replica at their destination
   *  (lab/turntable/disk.ts; default off: the live move mirrors the disk). */
  diskMb?: number;
  diskFillMb?: number;
  replica?: ReplicaPlan;
  /** Seconds between the replica's periodic deltas (default 20). */
  replicaIntervalS?: number;
  dirtyMb?: number;
  dirtyPeriodMs?: number;
  rounds: number;
  out: string;
  bandwidthMbps?: number;
  maxDowntimeMs?: number;
  /** With load dirty: auto-converge (default) or post-copy. */
  converge?: 'auto-converge' | 'postcopy';
  /** Which delay line relays the lightpath (default: env VMTC_DELAY_LINE, else c). */
  delayLine?: DelayLineImpl;
  /** Skip the non-live comparison migration. */
  noNonLive?: boolean;
  /** Seconds of one bulk TCP flow across the lightpath before the rounds, the reference rate of
   *  summary.copyVsBulk (lab/turntable/bulk.ts; default 5, 0: none). */
  bulkSeconds?: number;
  /** QEMU's accelerator (default tcg; kvm only where it works: VMTC_LAB_KVM_UNAVAILABLE). */
  accel?: Accel;
  /** The delay line's queue bound in ms at the line rate (default: one bandwidth-delay product
   *  of the reserved rate, lab/turntable/instrument.ts bdpQueueMs). */
  queueMs?: number;
  /** The guest: idle (default), or populated with `fillMb` MiB written once at boot (default
   *  defaultFillMb: half of its memory less the dirty load). */
  guest?: 'idle' | 'populated';
  fillMb?: number;
  /** Tuning in flight: change every live migration's limits once, `afterMs` into its copy (retune.ts). */
  retune?: RetunePlan;
  serialPeriodMs?: number;
  /** Period of the guest's internal clock probe (µs; the paper used 200). */
  clockPeriodUs?: number;
  /** Quiet time before and after each migration, so the probes see the steady state around it. */
  settleMs?: number;
  onProgress?: (line: string) => void;
  /** Aborts between and during migrations (a running migration is cancelled if it still can be). */
  signal?: AbortSignal;
}

export const TURNTABLE_DEFAULTS = {
  rttMs: 198,
  rateMbps: 1000,
  memoryMb: 256,
  load: 'none' as const,
  rounds: 5,
  maxDowntimeMs: 30,
  serialPeriodMs: 5,
  settleMs: 1000,
  pingIntervalMs: 50,
  udpIntervalMs: 2,
  clockPeriodUs: 200,
  clockGapMs: 50,
};

/** The bandwidth asked of the broker and QEMU when none is given: half the line rate (below). */
export function defaultBandwidthMbps(rateMbps: number): number {
  return Math.round(rateMbps / 2);
}

function qemuVersion(): string {
  try {
    return execFileSync('qemu-system-x86_64', ['--version'], { encoding: 'utf8' }).split('\n')[0]!.trim();
  } catch {
    return 'unknown';
  }
}

export async function runTurntable(opts: TurntableOptions): Promise<TurntableResult> {
  const o = { ...TURNTABLE_DEFAULTS, ...opts };
  const say = o.onProgress ?? (() => undefined);
  const startedAt = new Date();
  const out = resolve(o.out);
  mkdirSync(out, { recursive: true });
  const dirty = dirtiesMemory(o.load);
  const dirtyMb = dirty ? (o.dirtyMb ?? Math.max(8, Math.round(o.memoryMb / 4))) : 0;
  const dirtyPeriodMs = dirty ? (o.dirtyPeriodMs ?? 1000) : 0;
  const diskMb = o.diskMb ?? 0;
  const diskFillMb = diskMb ? Math.min(diskMb, o.diskFillMb ?? diskMb) : 0;
  const diskLoad = diskMb && writesDisk(o.load) ? diskLoadFor(diskMb) : null;
  const replicaPlan: ReplicaPlan = diskMb ? (o.replica ?? 'off') : 'off';
  const replicaIntervalS = o.replicaIntervalS ?? 20;
  // Half the line rate by default: on this machine the user-space delay line delivers 450–630
  // Mbit/s, and asking for the full line rate lets TCP overrun its queue (drops cost a round trip
  // at the switchover: measured pause→resume 121–135 ms without drops, ~290 ms with).
  const bandwidthMbps = o.bandwidthMbps ?? defaultBandwidthMbps(o.rateMbps);
  const delayLine = resolveDelayLineImpl(o.delayLine);
  // KVM must boot the lab's guest kernel, not only open (instrument.ts kvmWorks).
  const accel = await resolveAccel(o.accel ?? 'tcg', async () => kvmWorks((await buildGuestImage()).kernel));
  const queueMs = o.queueMs ?? bdpQueueMs(o.rttMs, bandwidthMbps, o.rateMbps);
  const fillMb = o.guest === 'populated' || o.fillMb !== undefined ? (o.fillMb ?? defaultFillMb(o.memoryMb, dirtyMb)) : 0;
  const guestKind = fillMb > 0 ? 'populated' as const : 'idle' as const;
  const config: TurntableConfig = {
    rttMs: o.rttMs, rateMbps: o.rateMbps, delayLine, memoryMb: o.memoryMb, load: o.load, dirtyMb, dirtyPeriodMs, rounds: o.rounds,
    pingIntervalMs: o.pingIntervalMs, udpIntervalMs: o.udpIntervalMs, serialPeriodMs: o.serialPeriodMs, clockPeriodUs: o.clockPeriodUs,
    bandwidthMbps, maxDowntimeMs: o.maxDowntimeMs, ...(dirty ? { converge: o.converge ?? 'auto-converge' } : {}),
    ...(diskMb ? { diskMb, diskFillMb, diskLoad, replica: replicaPlan, replicaIntervalS } : {}),
    ...(o.retune ? { retune: o.retune } : {}), out, startedAt: startedAt.toISOString(),
    host: { kernel: release(), cpus: cpus().length, qemu: qemuVersion(), accel: accel === 'kvm' ? 'kvm' : existsSync('/dev/kvm') ? 'tcg (/dev/kvm present; --accel kvm to use it)' : 'tcg (no /dev/kvm)' },
    accel, queueMs, queueSizing: o.queueMs !== undefined ? 'given' : 'bdp', guest: guestKind, fillMb,
  };
  const findings: string[] = [];
  const migrations: TurntableMigration[] = [];
  /** Per migration, in the same order: the internal probe's raw figure and the host-side pause. */
  const notes: InternalNote[] = [];
  /** How each migration's delay line ran (its listening line). */
  const scheds: DelayLineSched[] = [];
  let measuredRtt: number | null = null;

  const stackDir = join(out, 'stack');
  const s = await startStack({
    rttMs: o.rttMs, rateMbps: o.rateMbps, memoryMb: o.memoryMb, dir: stackDir, keepDir: true, queueMs, accel,
    ...(diskMb ? { diskMb, diskFillMb } : {}),
    // Seeds ask for the migrations' bandwidth; the broker gives them what migrations leave.
    ...(replicaPlan !== 'off' ? { replicaMbps: bandwidthMbps } : {}),
    lab: { delayLineImpl: delayLine },
    guest: {
      clockGapMs: o.clockGapMs, clockPeriodUs: o.clockPeriodUs, heartbeatMs: o.serialPeriodMs,
      ...(dirtyMb ? { dirtyMb, dirtyPeriodMs } : {}),
      ...(fillMb ? { fillMb } : {}),
      ...(diskLoad ? { diskLoad } : {}),
    },
    onProgress: (m) => say(m),
  });
  try {
    for (const a of s.knownBadHypervisor) findings.push(`${a.hostId}'s hypervisor has a known live-migration bug (${a.id}, fixed in ${a.fixedIn}); the migrations accepted it and their figures may come from a corrupted guest: ${a.summary}`);
    const sites = s.lab.sites.map((x) => x.name).slice(0, 2);
    let here = sites[0]!;
    if (fillMb) {
      const consolePath = qemuVmPaths(join(s.agentDataDir(s.hostOf(here)), 'qemu'), s.vmId, 1).console;
      config.fill = await awaitGuestFill(consolePath, fillMb, { ...(o.signal ? { signal: o.signal } : {}) });
      say(`guest populated: ${config.fill.mb} MiB written in ${config.fill.ms} ms`);
    }
    if ((o.bulkSeconds ?? 5) > 0) {
      try {
        const { buckets: _, ...bulk } = await measureBulkTcp(s.lab, sites[0]!, sites[1]!, { bandwidthMbps, seconds: o.bulkSeconds ?? 5 });
        config.bulkTcp = bulk;
        // The RTT on the idle lightpath (a migration's own is measured behind its copy).
        if (typeof bulk.idleRttMs === 'number') measuredRtt = bulk.idleRttMs;
        say(`bulk TCP ${sites[0]} → ${sites[1]}: ${bulk.mbps} Mbit/s (second half ${bulk.steadyMbps ?? '–'}), ${bulk.drops} drops; idle RTT ${bulk.idleRttMs ?? '–'} ms`);
      } catch (e) {
        findings.push(`the bulk-TCP reference flow could not be measured: ${(e as Error).message}`);
      }
    }
    const plan: { mode: 'live' | 'nonlive'; round: number }[] = [];
    for (let r = 1; r <= o.rounds; r++) plan.push({ mode: 'live', round: r });
    if (!o.noNonLive) plan.push({ mode: 'nonlive', round: o.rounds + 1 });
    for (const step of plan) {
      if (o.signal?.aborted) break;
      const to = sites.find((x) => x !== here)!;
      say(`${step.mode === 'live' ? `round ${step.round}/${o.rounds}` : 'non-live comparison'}: ${here} → ${to}`);
      let m: TurntableMigration;
      let prep: ReplicaPrep | null = null;
      if (diskMb && replicaForRound(replicaPlan, step.mode, step.round)) {
        try {
          prep = await prepareReplica(s, here, to, { bandwidthMbps, intervalS: replicaIntervalS, seedTimeoutMs: 900_000, say, ...(o.signal ? { signal: o.signal } : {}) });
          say(`  replica ${prep.replicaId}: seed ${(prep.seedBytes / 1e6).toFixed(1)} MB, ${prep.deltas} delta(s) after it (last ${(prep.lastDeltaBytes / 1e6).toFixed(2)} MB); the seeding lightpath's delay line carried ${(prep.delayLineBytes / 1e6).toFixed(1)} MB`);
        } catch (e) {
          findings.push(`${step.mode} ${step.round} (${here} → ${to}): no replica could be pre-seeded, the move mirrors the disk: ${(e as Error).message}`);
          say(`  no replica: ${(e as Error).message}`);
        }
      }
      try {
        let note: InternalNote;
        let sched: DelayLineSched | null;
        let rec: MigrationOutcome | undefined;
        let lineBytes: number;
        ({ migration: m, internal: note, sched, rec, lineBytes } = await measureOne(s, { ...step, from: here, to }, {
          settleMs: o.settleMs, bandwidthMbps, rateMbps: o.rateMbps, serialPeriodMs: o.serialPeriodMs, maxDowntimeMs: o.maxDowntimeMs, dirty, converge: o.converge ?? 'auto-converge',
          ...(o.retune ? { retune: o.retune } : {}),
          pingIntervalMs: o.pingIntervalMs, udpIntervalMs: o.udpIntervalMs, say,
          onLightpathUp: measuredRtt === null ? async () => { measuredRtt = await lightpathRtt(s, here, to); } : undefined,
          ...(o.signal ? { signal: o.signal } : {}),
        }));
        notes.push(note);
        if (sched) scheds.push(sched);
        if (diskMb) {
          m.disk = diskFigures(rec, prep, diskMb, lineBytes, (diskLoad?.windowMb ?? 0) * 1024 * 1024);
          if (prep && !m.disk.replicaUsed) findings.push(`${step.mode} ${step.round} (${m.migrationId}) had a warm replica at ${to} but did not use it`);
          say(`  disk: ${(m.disk.bytesAtMigration / 1e6).toFixed(2)} MB at migration time (${m.disk.replicaUsed ? `deltas: pre-copy ${((m.disk.precopyDeltaBytes ?? 0) / 1e6).toFixed(2)} MB${m.disk.followBytes !== null ? `, followed ${(m.disk.followBytes / 1e6).toFixed(2)} MB` : ''}, at the pause ${((m.disk.lastDeltaAtPauseBytes ?? 0) / 1e6).toFixed(2)} MB in ${m.disk.lastDeltaAtPauseMs ?? '–'} ms` : 'mirror'}); the migration's delay line carried ${(lineBytes / 1e6).toFixed(1)} MB`);
        }
        if (prep) await dropReplicas(s).catch(() => undefined);
      } catch (e) {
        if (prep) await dropReplicas(s).catch(() => undefined);
        // A probe that cannot even start means the VM is not reachable: record it and stop here,
        // keeping what was measured so far.
        findings.push(`${step.mode} ${step.round} (${here} → ${to}) could not be measured: ${(e as Error).message}`);
        say(`  could not be measured: ${(e as Error).message}; stopping the run`);
        break;
      }
      migrations.push(m);
      const places = m.placesAfter;
      if (places.length !== 1) findings.push(`after ${step.mode} migration ${m.migrationId} the VM was reported in ${places.length} places (${places.join(', ') || 'none'})`);
      if (places.length === 1) here = s.siteOf(places[0]!);
      if (m.reliable === false) say(`  UNRELIABLE: ${m.emulator.reasons!.join('; ')}`);
      say(`  ${migrationLine(m)}`);
    }
  } finally {
    say('tearing the lab down');
    await s.close();
  }

  // The internal probe: under TCG the guest's clocks stop with the VM (docs/lab.md), so a pause
  // the other probes see may leave no trace inside. Report what was found, not a wrong number.
  // Calibration: the non-live migration pauses the VM for seconds. If the guest's clocks did not
  // see even that, they see no pause at all, and any internal figure of a live migration is the
  // guest's own stall after resuming, not the downtime: none of them is given.
  const nl = notes.findIndex((n, i) => migrations[i]?.mode === 'nonlive' && migrations[i]!.ok);
  const blind = nl >= 0 && notes[nl]!.hostPause !== null && (notes[nl]!.raw ?? 0) < 0.5 * notes[nl]!.hostPause!;
  if (blind) {
    for (const m of migrations) m.downtimeMs.internal = null;
    findings.push(`the guest's clocks do not see a pause: during the non-live migration the VM was paused for ${Math.round(notes[nl]!.hostPause!)} ms (QEMU's STOP and RESUME events, host clock) and the in-guest probe saw ${notes[nl]!.raw === null ? 'no gap' : `only ${Math.round(notes[nl]!.raw!)} ms`}`);
  }
  const unavailable = notes.filter((n, i) => migrations[i] && migrations[i]!.downtimeMs.internal === null);
  if (unavailable.length) {
    const f = (v: number | null) => (v === null ? 'none' : `${Math.round(v)} ms`);
    findings.push(`internal probe unavailable in ${unavailable.length} of ${notes.length} migrations: the guest's clock probe (CLOCK_MONOTONIC vs CLOCK_REALTIME every ${o.clockPeriodUs} µs, gaps over ${TURNTABLE_DEFAULTS.clockGapMs} ms) saw ` +
      unavailable.map((n) => `${f(n.raw)} where QEMU's events bracket a ${f(n.hostPause)} pause (${n.migration})`).join('; ') +
      `. Under TCG the guest's clocks stop while the VM is paused; what the guest sees is only the stall after resuming while the new QEMU retranslates its code. So the figure is null rather than a wrong number.`);
  }
  // The instrument (docs/lab.md "The instrument"): how the delay line ran, and which migrations
  // it may have moved. Said loudly: these are left out of the summary.
  config.delayLineSched = scheds.find((x) => x.policy === 'other' || x.warning) ?? scheds[0] ?? null;
  const sched = config.delayLineSched;
  if (!sched) findings.push('the delay line did not say how it was scheduled (no listening line with "sched")');
  else if (sched.policy === 'other' || sched.warning) findings.push(`the delay line ran ${sched.policy === 'other' ? 'at normal priority' : `under SCHED_${sched.policy.toUpperCase()} ${sched.priority}`} on CPUs ${sched.cpus}${sched.warning ? ` (${sched.warning})` : ''}: on a busy machine its figures may be late or dropped`);
  for (const m of migrations.filter((x) => x.reliable === false)) {
    findings.push(`UNRELIABLE ${m.mode} ${m.round} (${m.migrationId}): ${m.emulator.reasons!.join('; ')}; left out of the percentiles and the ratio`);
  }
  for (const m of migrations.filter((x) => x.breakdown && !x.breakdown.consistent && x.ok)) {
    findings.push(`the breakdown of ${m.mode} ${m.round} (${m.migrationId}) does not add up: ${m.breakdown!.problems.join('; ')}`);
  }
  if (accel === 'tcg') findings.push('TCG: the guest runs under QEMU\'s TCG (no KVM): its figures include TCG\'s own costs, e.g. retranslating the guest\'s code after a resume');
  const result: TurntableResult = {
    version: 1, config,
    emulator: {
      nominalMbps: o.rateMbps,
      deliveredMbps: Math.max(0, ...migrations.map((m) => m.emulator.peakMbps)),
      rttMs: measuredRtt ?? o.rttMs,
      queueMaxMs: Math.max(0, ...migrations.map((m) => m.emulator.queueMaxMs)),
      drops: migrations.reduce((a, m) => a + m.emulator.drops, 0),
    },
    migrations, summary: { ...summarize(migrations, guestKind), ...(config.bulkTcp ? { copyVsBulk: copyVsBulk(migrations.filter((m) => m.mode === 'live' && counts(m)), config.bulkTcp) } : {}) }, findings,
    finishedAt: new Date().toISOString(), durationMs: Date.now() - startedAt.getTime(),
  };
  if (measuredRtt === null) findings.push(`the lightpath RTT could not be measured; emulator.rttMs is the configured ${o.rttMs} ms`);
  writeFileSync(join(out, 'turntable.json'), JSON.stringify(result, null, 2) + '\n');
  writeFileSync(join(out, 'report.html'), renderReport(result));
  return result;
}
