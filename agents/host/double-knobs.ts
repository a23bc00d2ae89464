// TEST-ONLY knobs of the DoubleDriver hypervisor test double (agents/host/double-driver.ts), for
// tests that kill its agent process with -9 at a chosen moment of a migration
// (test/integration/fault-matrix.test.ts). Nothing in the product sets them; a real driver has
// no such thing.
//
// - stateFile: the double's hypervisor lives in its agent's process, so a killed agent would
//   take its VMs with it. With a state file the VM table is written on every change and read
//   back by the next process (instead of the configured `vms`), as a real host keeps its VMs
//   across an agent's restart. What was in flight did die with the process: an incoming VM is
//   gone (as QEMU's -incoming process exits when its stream breaks), an outgoing migration
//   failed, so its source runs again, unless its final state had left (then it stays paused: the
//   destination may run the VM).
// - holdFile: a JSON file {"hold": ["prepareIncoming", ...]}. An operation at a listed hold point
//   waits while the point is listed (the file is read every HOLD_POLL_MS on the driver's clock,
//   for at most HOLD_MAX_MS), so a test can keep a migration in one phase, kill a process there,
//   and let the operation go on by rewriting the file. No file: nothing is held. While an
//   operation waits, `<holdFile>.held` names its point.
import { existsSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import type { VmInfo } from '../../src/common/agent-protocol.ts';
import { clockSleep, type Clock } from '../../src/common/clock.ts';
import { commonError } from '../../src/common/errors.ts';
import type { DoubleVm } from './double-stream.ts';

/** Where an operation of the double can be held: the destination's prepareIncoming once it
 *  listens (the incoming VM exists, the answer is not sent yet); the source between the
 *  controller's continue and its final state; the destination's waitRunning; destroy. */
export const HOLD_POINTS = ['prepareIncoming', 'finalState', 'waitRunning', 'destroy'] as const;
export type HoldPoint = (typeof HOLD_POINTS)[number];

export const HOLD_POLL_MS = 50;
/** A hold ends by itself after this long, so a test that died cannot hang an agent forever. */
export const HOLD_MAX_MS = 120_000;

export interface DoubleTestKnobs {
  /** TEST ONLY: keep the VM table in this file across agent processes (see above). */
  stateFile?: string;
  /** TEST ONLY: hold points, read from this file (see above). */
  holdFile?: string;
  /** TEST ONLY: the VMs' scripted load, read at every stats reading (agents/host/stats-double.ts). */
  loadFile?: string;
}

interface SavedVm {
  info: VmInfo;
  /** An outgoing migration's final state had left when this was written. */
  finalStateLeft?: boolean;
}

/** The VMs a previous process of the double left in `file`, as they are after its death; undefined
 *  when there is no file yet. */
export function loadVmTable(file: string): VmInfo[] | undefined {
  if (!existsSync(file)) return undefined;
  let saved: { vms?: SavedVm[] };
  try {
    saved = JSON.parse(readFileSync(file, 'utf8')) as { vms?: SavedVm[] };
  } catch (e) {
    throw commonError('VMTC_CONFIG_INVALID', { field: 'double.stateFile', reason: (e as Error).message }, { message: 'double driver: the state file cannot be read' });
  }
  const out: VmInfo[] = [];
  for (const v of saved.vms ?? []) {
    const info = v.info;
    if (info.state === 'incoming') continue;
    if (info.state === 'migrating') {
      if (v.finalStateLeft) info.state = 'paused';
      else {
        info.state = 'running';
        delete info.migrationId;
      }
    }
    out.push(info);
  }
  return out;
}

/** Write the VM table (temporary file, then rename). */
export function saveVmTable(file: string, vms: Iterable<DoubleVm>): void {
  const body = { vms: [...vms].map((v): SavedVm => ({ info: v.info, ...(v.outgoing?.finalStateLeft ? { finalStateLeft: true } : {}) })) };
  writeFileSync(`${file}.tmp`, JSON.stringify(body) + '\n');
  renameSync(`${file}.tmp`, file);
}

function listed(file: string, point: HoldPoint): boolean {
  try {
    const j = JSON.parse(readFileSync(file, 'utf8')) as { hold?: unknown };
    return Array.isArray(j.hold) && j.hold.includes(point);
  } catch {
    return false;
  }
}

/** Wait while `point` is listed in the hold file (bounded by HOLD_MAX_MS). While it waits, the
 *  file `<holdFile>.held` names the point, so the test knows the operation got there. */
export async function holdAt(file: string | undefined, point: HoldPoint, clock: Clock): Promise<void> {
  if (!file || !listed(file, point)) return;
  writeFileSync(`${file}.held`, JSON.stringify({ point }) + '\n');
  try {
    const until = clock.now() + HOLD_MAX_MS;
    while (listed(file, point) && clock.now() < until) await clockSleep(clock, HOLD_POLL_MS);
  } finally {
    rmSync(`${file}.held`, { force: true });
  }
}
