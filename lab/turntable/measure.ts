// One migration of the turntable measured (lab/turntable/run.ts orchestrates the rounds): the
// probes started around it (serial heartbeat at both ends, ping, UDP echo, a TCP session), the
// migration asked of the controller (cancelled on abort, retuned in flight when asked), the guest
// checked after it, and the record built from what they saw — downtime per probe, losses, the
// breakdown (breakdown.ts), the delay line's verdict (instrument.ts) and the timeline — plus the
// one progress line that tells it.
import { join } from 'node:path';
import { sleep } from '../../src/common/clock.ts';
import { checkGuest, markGuestConsoles, relayStatsFile, type MigrationOutcome, type Stack } from '../stack.ts';
import { guestVerdictError } from '../guest/verify.ts';
import type { DelayLineSched } from '../delay-line-sched.ts';
import { delayLineIntervals, delayLineSched, delayLineStatsBetween } from '../delay-line-process.ts';
import { qemuVmPaths } from '../../agents/host/qemu/cmdline.ts';
import { countAnsweredTwice, countLost, longestGap, longestOutage, lostInGap, serialDowntime, serialLost, window as offsets } from './probes/analysis.ts';
import { computeBreakdown } from './breakdown.ts';
import { judgeEmulator } from './instrument.ts';
import { readInternalGaps } from './probes/clock.ts';
import { pingReplyTimes, startPing } from './probes/ping.ts';
import { SerialWatcher } from './probes/serial.ts';
import { startUdpProbe, udpReplyTimes } from './probes/udp.ts';
import { startTcpSession } from './probes/session.ts';
import { retuneAfter, retuneWord } from './retune.ts';
import type { RetunePlan, RetuneRecord, TurntableMigration } from './types.ts';
import { delayLineBytes } from './disk.ts';

const TIMELINE_FROM = -1000;
const TIMELINE_TO = 2000;

/** Delay-line stats between two instants: peak rate, worst queueing, drops. */
function emulatorBetween(statsFile: string | undefined, from: number, to: number) {
  // Reports come every second and cover the second before them: the one after `to` still counts.
  const st = delayLineStatsBetween(statsFile, from, to + 1000);
  return { peakMbps: round1(st.peakMbps), queueMaxMs: st.queueMaxMs, drops: st.drops };
}

/** The tunnel agent's figures as the migration record has them (null: not measured). */
function tunnelFigures(rec: MigrationOutcome | undefined): { tunnelPassive: number | null; tunnelProbe: number | null } {
  const d = (rec as { downtime?: { tunnelPassive?: { gapMs?: number | null }; tunnelProbe?: { gapMs?: number | null } } } | undefined)?.downtime;
  return { tunnelPassive: d?.tunnelPassive?.gapMs ?? null, tunnelProbe: d?.tunnelProbe?.gapMs ?? null };
}

export interface MeasureOpts {
  settleMs: number;
  bandwidthMbps: number;
  rateMbps: number;
  serialPeriodMs: number;
  maxDowntimeMs: number;
  dirty: boolean;
  converge: 'auto-converge' | 'postcopy';
  retune?: RetunePlan;
  pingIntervalMs: number;
  udpIntervalMs: number;
  say: (line: string) => void;
  onLightpathUp?: (() => Promise<void>) | undefined;
  signal?: AbortSignal;
}

export interface InternalNote { migration: string; raw: number | null; hostPause: number | null }

export async function measureOne(s: Stack, step: { mode: 'live' | 'nonlive'; round: number; from: string; to: string }, o: MeasureOpts): Promise<{ migration: TurntableMigration; internal: InternalNote; sched: DelayLineSched | null; rec: MigrationOutcome | undefined; lineBytes: number }> {
  const srcHost = s.hostOf(step.from);
  const dstHost = s.hostOf(step.to);
  const srcPaths = qemuVmPaths(join(s.agentDataDir(srcHost), 'qemu'), s.vmId, 1);
  const dstPaths = qemuVmPaths(join(s.agentDataDir(dstHost), 'qemu'), s.vmId, 1);
  // The guest's consoles as they are before the move: its check reads what comes after.
  const consoles = markGuestConsoles(s);
  const serial = new SerialWatcher();
  serial.watch(srcPaths.serial[0]!, 'source');
  serial.watch(dstPaths.serial[0]!, 'destination');
  const ping = startPing(s.lab.client.ns, s.lab.vm.ip, { intervalMs: o.pingIntervalMs, maxSeconds: 900 });
  const udp = startUdpProbe(s.lab.client.ns, s.lab.vm.ip, { intervalMs: o.udpIntervalMs, maxSeconds: 900 });
  const tcp = startTcpSession(s);
  const marks: { label: string; at: number }[] = [];
  let rec: MigrationOutcome | undefined;
  let retuning: Promise<RetuneRecord> | undefined;
  let retuned: RetuneRecord | undefined;
  let tcpResult = { survived: false, summary: null as any };
  let started = Date.now();
  let pingRes: Awaited<ReturnType<typeof ping.stop>>;
  let udpRes: Awaited<ReturnType<typeof udp.stop>>;
  let serialSamples: Awaited<ReturnType<typeof serial.stop>>;
  try {
    await Promise.all([udp.ready, tcp.ready]);
    await sleep(o.settleMs, o.signal);
    started = Date.now();
    let measuring: Promise<void> | undefined;
    // Tuning in flight: timed from the first copy state seen (states are polled every 50 ms).
    const copying = new Set(['precopy', 'stopcopy']);
    const body: Record<string, unknown> = {
      bandwidthMbps: o.bandwidthMbps, maxDowntimeMs: o.maxDowntimeMs,
      // Under load, live moves need help to converge; a non-live move does not (the VM is paused).
      ...(o.dirty && step.mode === 'live' ? (o.converge === 'postcopy' ? { postcopy: true } : { autoConverge: true }) : {}),
      ...(step.mode === 'nonlive' ? { suspend: true } : {}),
    };
    let cancelSent = false;
    let currentId: string | undefined;
    const cancel = () => {
      if (cancelSent || !currentId) return;
      cancelSent = true;
      void s.api('POST', `/v1/migrations/${currentId}/cancel`, {}).catch(() => undefined);
    };
    o.signal?.addEventListener('abort', cancel, { once: true });
    rec = await s.migrate(step.to, body, (r) => {
      currentId = r.id;
      marks.push({ label: r.state, at: Date.now() });
      o.say(`  … ${r.state}`);
      if (r.state === 'precopy' && o.onLightpathUp && !measuring) measuring = o.onLightpathUp();
      if (copying.has(r.state) && o.retune && step.mode === 'live' && !retuning) retuning = retuneAfter(s.api, r.id, o.retune, Date.now(), o.signal);
      if (o.signal?.aborted) cancel();
    }).finally(() => o.signal?.removeEventListener('abort', cancel));
    await measuring;
    await sleep(o.settleMs);
    retuned = await retuning;
  } finally {
    tcpResult = await tcp.stop().catch(() => tcpResult);
    pingRes = await ping.stop();
    udpRes = await udp.stop();
    serialSamples = await serial.stop();
  }
  const ended = Date.now();
  // Committed is not enough: the guest must go on running at the destination. Its heartbeat
  // there must still be coming when the probes stop (a guest that crashed after the move
  // leaves QEMU "running" but falls silent).
  const lastDstBeat = Math.max(-Infinity, ...serialSamples.filter((x) => x.label === 'destination').map((x) => x.at));
  const guestAlive = Number.isFinite(lastDstBeat) && ended - lastDstBeat < 1000;
  // …and intact (docs/lab.md, "The guest's memory check"): nothing on its console or serial line
  // since the move shows damage and, under the dirty load, a whole verifying pass ran after it.
  const landed = rec?.state === 'completed';
  const guest = await checkGuest(s, {
    hostId: landed ? dstHost : srcHost, marks: consoles,
    serialLines: serial.memoryLines(landed ? 'destination' : 'source').map((l) => l.text),
    ...(o.signal ? { signal: o.signal } : {}),
  });
  const guestError = guestVerdictError(guest, landed ? step.to : step.from);
  const ok = landed && guestAlive && !guestError;
  if (landed && guest.status === 'corrupted') {
    rec!.error = { code: guestError!.code, message: `${guestError!.message}; see the destination console log` };
  } else if (landed && !guestAlive) {
    rec!.error = { code: 'VMTC_LAB_GUEST_SILENT', message: `the migration committed but the guest's heartbeat at ${step.to} ${Number.isFinite(lastDstBeat) ? `stopped ${Math.round(ended - lastDstBeat)} ms before the end` : 'never came'}; see the destination console log` };
  } else if (landed && guestError) {
    rec!.error = { code: guestError.code, message: guestError.message };
  }
  const result = rec?.result ?? {};
  const timings: Record<string, number> = rec?.timings ?? {};

  // Gaps are looked for between the request and a little after completion.
  const from = started;
  const to = ended;
  const pingTimes = pingReplyTimes(pingRes);
  const udpTimes = udpReplyTimes(udpRes);
  const pingGap = longestGap(pingTimes, from, to);
  // UDP: one reply in the middle of a silence is not service restored (longestOutage).
  const udpGap = longestOutage(udpTimes, from, to, 10 * o.udpIntervalMs);
  const serialMs = serialDowntime(serialSamples, 'source', 'destination');
  const srcSerial = serialSamples.filter((x) => x.label === 'source').map((x) => x.at);
  const dstSerial = serialSamples.filter((x) => x.label === 'destination').map((x) => x.at);
  const lastSrc = srcSerial.length ? Math.max(...srcSerial) : undefined;
  const t0 = lastSrc ?? result.pausedAt ?? udpGap?.start ?? pingGap?.start ?? started;
  if (result.pausedAt) marks.push({ label: 'source paused (QEMU STOP)', at: result.pausedAt });
  if (result.resumedAt) marks.push({ label: 'destination running (QEMU RESUME)', at: result.resumedAt });
  // The guest's clock probe reports the longest stall its own clocks saw. Under TCG the guest's
  // clocks stop while the VM is paused, so what it sees after a migration is only the time the
  // guest could not run after resuming (a new QEMU retranslates the guest's code), not the pause.
  // A figure shorter than the pause QEMU's own events bracket (host clock) therefore cannot be
  // the downtime: it is reported as unavailable and the raw figure goes into the findings.
  const internalRaw = (await readInternalGaps([dstPaths.console, srcPaths.console], from, to)).maxMs;
  const hostPause = result.pausedAt && result.resumedAt ? result.resumedAt - result.pausedAt : null;
  const internal = internalRaw !== null && hostPause !== null && internalRaw >= 0.8 * hostPause ? round1(internalRaw) : null;
  const internalNote: InternalNote = { migration: `${step.mode} ${step.round}`, raw: internalRaw === null ? null : round1(internalRaw), hostPause: hostPause === null ? null : round1(hostPause) };
  const lostPing = lostInGap(pingRes.replies, from, to);
  // The last datagrams in flight when the probe stopped are not losses: end the window early.
  const lostUdp = countLost(udpRes.sends, udpRes.replies.map((r) => r[0]), from, to - 500);
  const lostSerial = serialLost(serialSamples, 'source', 'destination') ?? 0;
  const places = (await s.vmPlaces().catch(() => [])).filter((p) => p.state !== 'stopped').map((p) => p.hostId);
  const hvTotal = result.totalTimeMs ?? null;
  const copyMs = hvTotal ?? ((timings.precopy ?? 0) + (timings.stopcopy ?? 0) + (timings.switchover ?? 0));
  const bytes = result.transferredBytes ?? 0;
  const statsFile = relayStatsFile(rec);
  // The instrument: did the delay line keep up while this migration's copy ran (from the first
  // copy state the controller showed to the source's pause; non-live: to the resume)?
  const copyFrom = marks.find((k) => k.label === 'precopy' || k.label === 'stopcopy')?.at;
  const copyTo = step.mode === 'live' ? result.pausedAt : result.resumedAt;
  const reservedMbps = Math.min(o.bandwidthMbps, o.rateMbps, retuned?.ok && retuned.bandwidthMbps ? retuned.bandwidthMbps : Infinity);
  const verdict = judgeEmulator(delayLineIntervals(statsFile, started, ended + 1000), { from: started, to: ended },
    copyFrom !== undefined && copyTo ? { from: copyFrom, to: copyTo } : null, reservedMbps);
  const breakdown = computeBreakdown({
    mode: step.mode, pausedAt: result.pausedAt ?? null, hypervisorDowntimeMs: typeof result.downtimeMs === 'number' ? result.downtimeMs : null,
    resumedAt: result.resumedAt ?? null, destinationHeartbeats: dstSerial, sourceHeartbeats: srcSerial, udpReplies: udpTimes,
    // The figure as recorded (downtimeMs.udp), so the two read the same.
    udpOutage: udpGap ? { ...udpGap, gapMs: round1(udpGap.gapMs) } : null,
    udpIntervalMs: o.udpIntervalMs, serialPeriodMs: o.serialPeriodMs,
  });
  const emulator = emulatorBetween(statsFile, started, ended);
  const migration: TurntableMigration = {
    round: step.round, from: step.from, to: step.to, mode: step.mode, ok,
    migrationId: rec?.id ?? '', state: rec?.state ?? 'not started',
    ...(rec?.error ? { error: { code: rec.error.code, message: rec.error.message } } : rec?.refused ? { error: { code: rec.code, message: rec.message } } : {}),
    downtimeMs: {
      hypervisor: step.mode === 'live' && typeof result.downtimeMs === 'number' ? result.downtimeMs : null,
      internal,
      serial: serialMs,
      ping: pingGap ? round1(pingGap.gapMs) : null,
      udp: udpGap ? round1(udpGap.gapMs) : null,
      ...tunnelFigures(rec),
    },
    lost: { ping: lostPing, udp: lostUdp, serial: lostSerial },
    answeredTwice: { udp: countAnsweredTwice(udpRes.replies.map((r) => [r[0], r[2]] as const), from, to) },
    totalMs: Object.values(timings).reduce((a, b) => a + b, 0),
    controlPlaneMs: (timings.prechecking ?? 0) + (timings.reserved ?? 0) + (timings.authorizing ?? 0) + (timings.provisioning ?? 0) + (timings.preparing ?? 0),
    hypervisorTotalMs: hvTotal,
    bytes,
    throughputMbps: bytes && copyMs ? Math.round((bytes * 8) / copyMs / 100) / 10 : null,
    tcpSessionSurvived: tcpResult.survived,
    memory: guest.memory,
    ...(retuned ? { retuned } : {}),
    emulator: { ...emulator, drops: Math.max(emulator.drops, verdict.drops), reliable: verdict.reliable, reasons: verdict.reasons, intervalsJudged: verdict.intervalsJudged },
    reliable: verdict.reliable,
    breakdown,
    timings,
    placesAfter: places,
    timeline: {
      t0, fromMs: TIMELINE_FROM, toMs: TIMELINE_TO,
      ping: offsets(pingTimes, t0, TIMELINE_FROM, TIMELINE_TO),
      udp: offsets(udpTimes, t0, TIMELINE_FROM, TIMELINE_TO),
      serialSource: offsets(srcSerial, t0, TIMELINE_FROM, TIMELINE_TO),
      serialDestination: offsets(dstSerial, t0, TIMELINE_FROM, TIMELINE_TO),
      marks: marks.map((k) => ({ label: k.label, at: Math.round(k.at - t0) })).filter((k) => k.at >= TIMELINE_FROM && k.at <= TIMELINE_TO),
    },
  };
  // Read now: the stats file goes with the lab when it is torn down.
  return { migration, internal: internalNote, sched: delayLineSched(statsFile), rec, lineBytes: delayLineBytes(statsFile) };
}

function round1(v: number): number {
  return Math.round(v * 10) / 10;
}

/** The progress line of one measured migration: verdict, each probe's downtime, the copy, the
 *  TCP session, the guest's memory check and any retune. */
export function migrationLine(m: TurntableMigration): string {
  return `${m.ok ? 'ok' : `FAILED (${m.state}${m.error ? `: ${m.error.code}` : ''})`}: ping ${fmt(m.downtimeMs.ping)}, udp ${fmt(m.downtimeMs.udp)}, serial ${fmt(m.downtimeMs.serial)}, QEMU ${fmt(m.downtimeMs.hypervisor)}, tunnel agent passive ${fmt(m.downtimeMs.tunnelPassive ?? null)} / probe ${fmt(m.downtimeMs.tunnelProbe ?? null)}; total ${m.totalMs} ms, ${(m.bytes / 1e6).toFixed(1)} MB at ${m.throughputMbps ?? '–'} Mbit/s; TCP session ${m.tcpSessionSurvived ? 'survived' : 'LOST'}; memory ${memoryWord(m)}${m.retuned ? `; retuned ${retuneWord(m.retuned)}` : ''}`;
}

/** The guest's memory check of one migration in a word or three (the progress line). */
function memoryWord(m: TurntableMigration): string {
  const mem = m.memory;
  if (!mem) return 'not recorded';
  if (mem.evidence) return `DAMAGED (${mem.evidence})`;
  return mem.verified ? `verified (${mem.passesAfter} passes)` : 'not verified';
}

function fmt(v: number | null): string {
  return v === null ? '–' : `${Math.round(v)} ms`;
}
