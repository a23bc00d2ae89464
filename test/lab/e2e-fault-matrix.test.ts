// The fault matrix's lab part (test/integration/fault-matrix.test.ts has the processes of the
// control plane): the destination's QEMU process, a real guest's, is killed with SIGKILL at the
// phases a test can hold deterministically with real QEMU, in the whole system of
// test/lab/e2e-migration.test.ts (lab/stack.ts, every service a real process):
// - preparing: the destination QEMU listens (-incoming) and the tunnel agent is held (SIGSTOP)
//   in its bicast, so the phase lasts until the test lets it go;
// - precopy: a slow line (4 Mbit/s) keeps the copy going;
// - after the commit: the destination runs the VM (the record in activating, cleanup or
//   completed, whichever the test sees first: with real QEMU they last milliseconds, and the
//   tunnel agent cannot be held in its prune for longer than its link's heartbeat); the guest
//   dies there, which nothing can undo: the VM must not come back at the source (its copy is
//   stale), and everything else is released.
// The switchover itself is not held: it lasts from the controller's decision to QEMU's end, and
// the QEMU driver has no hold point (a test double's knob has no place in it).
// After each: the VM runs in exactly one place (or, after the commit, nowhere: never twice), the
// end matches the phase, the broker's reservation is released, no capacity is held and the
// grant's accounting is closed.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { startStack, type Stack } from '../../lab/stack.ts';
import { queryAccounting } from '../../src/aaa/client.ts';
import { loadControllerKey } from '../../src/controller/integrations.ts';

let s: Stack | undefined;
/** The tunnel agent this test's stack started (by its data directory), held with SIGSTOP. */
let tunnelPid = 0;
let tunnelStopped = false;

beforeAll(async () => {
  s = await startStack({ rttMs: 20, rateMbps: 1000, memoryMb: 128 });
  const dataDir = join(s.dir, 'tunnel');
  for (const p of readdirSync('/proc').filter((x) => /^\d+$/.test(x))) {
    try {
      const argv = readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0');
      if (argv.includes('tunnel') && argv.includes(dataDir)) tunnelPid = Number(p);
    } catch { /* gone */ }
  }
  expect(tunnelPid).toBeGreaterThan(0);
}, 300_000);

afterAll(async () => {
  if (tunnelStopped) process.kill(tunnelPid, 'SIGCONT');
  await s?.close();
}, 120_000);

const TERMINAL = ['completed', 'rolled_back', 'failed', 'cancelled'];
const hostA = () => s!.hostOf(s!.lab.sites[0]!.name);
const hostB = () => s!.hostOf(s!.lab.sites[1]!.name);

function holdTunnel(on: boolean) {
  process.kill(tunnelPid, on ? 'SIGSTOP' : 'SIGCONT');
  tunnelStopped = on;
}

/** The destination's QEMU pid, once its pidfile names a live QEMU. */
function destinationQemu(): number | undefined {
  const pidFile = join(s!.agentDataDir(hostB()), 'qemu', 'vms', s!.vmId, 'qemu.pid');
  if (!existsSync(pidFile)) return undefined;
  const pid = Number(readFileSync(pidFile, 'utf8').trim());
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('qemu') ? pid : undefined;
  } catch {
    return undefined;
  }
}

async function poll<T>(fn: () => Promise<T | undefined | false> | T | undefined | false, what: string | (() => string), ms = 120_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out: ${typeof what === 'function' ? what() : what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function released(rec: any) {
  const st = s!;
  const rsv = await poll(async () => {
    const r = await fetch(`${st.brokerUrl}/v1/reservations`, { headers: { authorization: `Bearer ${st.brokerToken}` } });
    const mine = ((await r.json()) as { reservations: any[] }).reservations.filter((x) => x.migrationId === rec.id);
    return mine.every((x) => !x.dataPlane.active && x.lifecycleState !== 'Created') && mine;
  }, 'the reservation released', 20_000);
  const hosts = (await st.api('GET', '/v1/hosts')).body.hosts as any[];
  const held = hosts.reduce((a, h) => a + h.held.memoryMb + h.held.vcpus, 0);
  const { key } = loadControllerKey(join(st.dir, 'controller'));
  const events = (await queryAccounting(st.aaaUrl, key, { migrationId: rec.id })).events as { kind: string; jti: string }[];
  const closed = events.filter((e) => e.kind === 'release' && e.jti === rec.steps.token.jti).length === 1 && rec.steps.token.accountingClosed === true;
  return { reservations: rsv.length, held, closed };
}

/** Where the agents report the VM, once three polls in a row agree. */
async function settledPlaces(): Promise<{ hostId: string; state: string }[]> {
  let last = '';
  let same = 0;
  let out: { hostId: string; state: string }[] = [];
  await poll(async () => {
    out = await s!.vmPlaces();
    same = JSON.stringify(out) === last ? same + 1 : 0;
    last = JSON.stringify(out);
    return same >= 3;
  }, 'settled places', 30_000);
  return out;
}

/**
 * One migration to B; the destination QEMU is killed once `at` says the phase is reached (with
 * `holdTunnel`, the tunnel agent is held from the start: preparing waits in its bicast), then
 * let go. Resolves with what the case checks and the state the kill came in.
 */
async function killDestinationQemu(label: string, o: { bandwidthMbps: number; holdTunnel?: boolean; at: (rec: any) => boolean }) {
  if (o.holdTunnel) holdTunnel(true);
  let killedIn = '';
  let id = '';
  try {
    const m = await s!.api('POST', '/v1/migrations', { vmId: s!.vmId, destinationHostId: hostB(), bandwidthMbps: o.bandwidthMbps });
    expect(m.status).toBe(202);
    id = m.body.id;
    let last: any;
    const pid = await poll(async () => {
      const rec = (await s!.api('GET', `/v1/migrations/${id}`)).body;
      last = rec;
      return o.at(rec) && destinationQemu();
    }, () => `${label}: the phase reached with the destination QEMU up (last ${last?.state} ${JSON.stringify(last?.error)}, QEMU ${destinationQemu()})`, 60_000);
    process.kill(pid, 'SIGKILL');
    killedIn = last.state;
  } finally {
    if (tunnelStopped) holdTunnel(false);
  }
  const rec = await s!.waitState(id, TERMINAL, 120_000);
  const places = await settledPlaces();
  const rel = await released(rec);
  console.log(`[matrix] destination-qemu@${label} (killed in ${killedIn}) -> ${rec.state}${rec.error ? ` (${rec.error.code})` : ''}, VM ${JSON.stringify(places)}, ${JSON.stringify(rel)}`);
  return { rec, places, rel };
}

describe('lab fault matrix: the destination QEMU killed with -9', () => {
  it('in preparing: rolled back, the VM runs at the source only, nothing held', async () => {
    const { rec, places, rel } = await killDestinationQemu('preparing', { bandwidthMbps: 400, holdTunnel: true, at: (r) => r.state === 'preparing' });
    expect({ state: rec.state, places }).toEqual({ state: 'rolled_back', places: [{ hostId: hostA(), state: 'running' }] });
    expect(rel).toMatchObject({ held: 0, closed: true });
  });

  it('in pre-copy: rolled back, the VM runs at the source only, nothing held', async () => {
    // 4 Mbit/s: the copy lasts long after the first bytes.
    const { rec, places, rel } = await killDestinationQemu('precopy', { bandwidthMbps: 4, at: (r) => r.state === 'precopy' && r.progress?.transferredBytes > 0 });
    expect({ state: rec.state, places }).toEqual({ state: 'rolled_back', places: [{ hostId: hostA(), state: 'running' }] });
    expect(rel).toMatchObject({ held: 0, closed: true });
  });

  it('after the commit: completed, the guest died at the destination and is not brought back at the source, nothing held', async () => {
    const { rec, places, rel } = await killDestinationQemu('after-commit', { bandwidthMbps: 400, at: (r) => ['activating', 'cleanup', 'completed'].includes(r.state) });
    // Past the commit there is no way back: the source's copy is removed, never resumed.
    expect(rec.state).toBe('completed');
    expect(places.filter((p) => p.hostId === hostA())).toEqual([]);
    expect(places.filter((p) => p.state === 'running')).toEqual([]);
    expect(rel).toMatchObject({ held: 0, closed: true });
  });
});
