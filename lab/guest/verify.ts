// Did the guest survive a migration intact? A pure judgement (docs/lab.md, "The guest's memory
// check") over what the guest printed after it: its console (ttyS0, the console.log its QEMU
// writes) and the memory lines its dirty load also sends on the heartbeat's serial port (ttyS1,
// lab/turntable/probes/serial.ts). The guest side is lab/guest/vmtc-probe.c (`dirty`): each pass
// compares every page it wrote with what it wrote there, prints VMTC-MEM-BAD for a page that
// changed and a `VMTC-MEM ok pass=P pages=N` line at the end of each pass.
//
// A guest is
//   corrupted  when anything it printed afterwards is evidence of damage: a memory mismatch, a
//              kernel panic, BUG, oops, list corruption, general protection fault, a corrupted
//              kernel stack, its dirty load ending, or (after a live move) a new boot;
//   unverified when a dirty load runs but fewer than `minPasses` verifying passes were reported
//              afterwards (the first pass after a resume may have begun before the pause: two
//              mean one whole pass ran after it);
//   ok         otherwise (`memory.verified` says whether a dirty load's passes back it).
import { labError } from '../errors.ts';
import type { VmtcError } from '../../src/common/errors.ts';

/** One line the dirty load prints (lab/guest/vmtc-probe.c). */
export type GuestMemoryLine =
  | { kind: 'start'; mb: number; periodMs: number; pages: number }
  | { kind: 'map'; page: number; phys: number }
  | { kind: 'pass'; ok: boolean; pass: number; pages: number; bad: number }
  | { kind: 'bad'; page: number | null; text: string };

const START = /^VMTC-DIRTY mb=(\d+) period_ms=(\d+)(?: pages=(\d+))?$/;
const MAP = /^VMTC-MEM-MAP page=(\d+) phys=0x([0-9a-f]+)$/;
const PASS = /^VMTC-MEM (ok|bad) pass=(\d+) pages=(\d+)(?: bad=(\d+))?(?: ms=\d+)?$/;
const BAD = /^VMTC-MEM-BAD\b/;

/** Parse one line (a trailing CR and surrounding blanks are ignored); null when it is not one. */
export function parseMemoryLine(raw: string): GuestMemoryLine | null {
  const line = raw.trim();
  if (!line.startsWith('VMTC-')) return null;
  let m: RegExpExecArray | null;
  if ((m = PASS.exec(line))) return { kind: 'pass', ok: m[1] === 'ok', pass: Number(m[2]), pages: Number(m[3]), bad: Number(m[4] ?? 0) };
  if (BAD.test(line)) {
    const page = /\bpage=(\d+)/.exec(line);
    return { kind: 'bad', page: page ? Number(page[1]) : null, text: line };
  }
  if ((m = MAP.exec(line))) return { kind: 'map', page: Number(m[1]), phys: parseInt(m[2]!, 16) };
  if ((m = START.exec(line))) return { kind: 'start', mb: Number(m[1]), periodMs: Number(m[2]), pages: Number(m[3] ?? 0) };
  return null;
}

/** What on the console is evidence that the guest is damaged (kernel messages as Linux prints
 *  them at the console log level the lab guest keeps, `quiet`: errors and worse). */
export const DAMAGE_PATTERNS: readonly { re: RegExp; what: string }[] = [
  { re: /VMTC-MEM-BAD\b/, what: 'memory mismatch' },
  { re: /\bVMTC-MEM bad pass=/, what: 'memory mismatch' },
  { re: /Kernel panic/, what: 'kernel panic' },
  { re: /\bBUG:/, what: 'kernel BUG' },
  { re: /kernel BUG at/, what: 'kernel BUG' },
  { re: /\bOops\b/, what: 'kernel oops' },
  { re: /list_del corruption/, what: 'list corruption' },
  { re: /list_add corruption/, what: 'list corruption' },
  { re: /general protection fault/, what: 'general protection fault' },
  { re: /Kernel stack is corrupted/, what: 'corrupted kernel stack' },
];

/** /init's ready line (lab/guest/build.ts GUEST_READY_LINE): after a live move, a sign the guest
 *  booted again (a reset leaves no panic message). */
const BOOT = /VMTC-GUEST-READY/;

export interface GuestJudgeInput {
  /** Console text printed after the migration (at the place the VM runs now). */
  console: string;
  /** Lines read from the heartbeat's serial port after the switchover (any kind; others are ignored). */
  serialLines?: readonly string[];
  /** A dirty load runs in the guest: its passes are required. */
  dirty: boolean;
  /** Verifying passes required after the migration (default 2: one whole pass after the resume). */
  minPasses?: number;
  /** The guest was booted by the move (a cold migration): a ready line is expected, not evidence. */
  booted?: boolean;
}

export interface GuestMemoryRecord {
  /** A dirty load's passes after the migration found every page as written. */
  verified: boolean;
  /** Verifying passes reported after the migration. */
  passesAfter: number;
  /** The first line that showed damage. */
  evidence?: string;
}

export interface GuestVerdict {
  status: 'ok' | 'corrupted' | 'unverified';
  memory: GuestMemoryRecord;
  /** What the evidence is (DAMAGE_PATTERNS' `what`, or 'guest booted again'). */
  what?: string;
  /** Pages the guest reported changed, in order of report (deduplicated). */
  badPages: number[];
}

export const MIN_PASSES = 2;

const EVIDENCE_CHARS = 240;

export function judgeGuest(input: GuestJudgeInput): GuestVerdict {
  const minPasses = input.minPasses ?? MIN_PASSES;
  let evidence: { line: string; what: string } | undefined;
  const badPages: number[] = [];
  const count = (lines: readonly string[]): number => {
    let passes = 0;
    for (const raw of lines) {
      const line = raw.replace(/\r$/, '');
      const mem = parseMemoryLine(line);
      if (mem?.kind === 'pass') passes++;
      if (mem?.kind === 'bad' && mem.page !== null && !badPages.includes(mem.page)) badPages.push(mem.page);
      if (evidence) continue;
      const hit = DAMAGE_PATTERNS.find((p) => p.re.test(line));
      if (hit) evidence = { line: line.trim().slice(0, EVIDENCE_CHARS), what: hit.what };
      else if (!input.booted && BOOT.test(line)) evidence = { line: line.trim().slice(0, EVIDENCE_CHARS), what: 'guest booted again' };
    }
    return passes;
  };
  const passesAfter = Math.max(count(input.console.split('\n')), count(input.serialLines ?? []));
  if (evidence) {
    return { status: 'corrupted', memory: { verified: false, passesAfter, evidence: evidence.line }, what: evidence.what, badPages };
  }
  if (input.dirty && passesAfter < minPasses) return { status: 'unverified', memory: { verified: false, passesAfter }, badPages };
  return { status: 'ok', memory: { verified: input.dirty, passesAfter }, badPages };
}

/** The coded error for a verdict that is not ok (`where` names the place, e.g. the site). */
export function guestVerdictError(v: GuestVerdict, where: string): VmtcError | null {
  if (v.status === 'corrupted') {
    return labError('VMTC_LAB_GUEST_CORRUPTED', { where, what: v.what, evidence: v.memory.evidence, badPages: v.badPages, passesAfter: v.memory.passesAfter },
      { message: `the guest at ${where} is damaged (${v.what}${v.badPages.length ? `, page ${v.badPages.join(', ')}` : ''}): ${v.memory.evidence}` });
  }
  if (v.status === 'unverified') {
    return labError('VMTC_LAB_GUEST_UNVERIFIED', { where, passesAfter: v.memory.passesAfter },
      { message: `the guest's memory check at ${where} reported ${v.memory.passesAfter} verifying pass${v.memory.passesAfter === 1 ? '' : 'es'} after the migration; its dirty load may have stopped (see the console log)` });
  }
  return null;
}
