// The kill -9 fault matrix (docs/design.md#restart, #rollback, #switchover): the controller, the
// source agent, the destination agent and the broker, each a real `vmtc` process, are killed
// with SIGKILL while a live migration is in each phase from provisioning to cleanup, then
// started again on the same data directory; the migration must reach a terminal state, and
// then: the VM runs in exactly one place (the agents' inventories: running at one host, no copy
// at the other), the end matches the phase (completed means the VM is at the destination, rolled
// back at the source; past the switchover only completed), the broker holds no reservation for
// it, the controller no capacity hold, and the AAA has the grant's accounting closed.
//
// One stack serves every case (test/helpers/fault-matrix.ts), each case moves a VM of its own
// from A to B. A phase is held where it would otherwise be too short to hit: at the broker gate
// (provision, release requests) or at a hold point of the DoubleDriver hypervisor test double
// (agents/host/double-knobs.ts); the kill comes once the migration record IS in the phase and
// the hold is reached, the hold is let go right after the kill. Pre-copy is simply slow (8
// Mbit/s). With the double, an agent's process is also its hypervisor: a killed agent's
// in-flight migration stream dies with it, its VM table survives (the double's state file).
// Each case prints one line: "[matrix] controller@precopy -> ...".
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { startMatrixStack, until, TERMINAL, type MatrixStack, type Role } from '../helpers/fault-matrix.ts';

const PHASES = ['provisioning', 'preparing', 'precopy', 'switchover', 'committing', 'cleanup'] as const;
type Phase = (typeof PHASES)[number];
const ROLES: Role[] = ['controller', 'source', 'destination', 'broker'];
/** Past these the final state has certainly reached the destination: only completed will do. */
const PAST_SWITCHOVER: Phase[] = ['committing', 'cleanup'];

const CASES = ROLES.flatMap((role) => PHASES.map((phase) => ({ role, phase, name: `${role}@${phase}` })));
const vmOf = (name: string) => `fm-${name.replace('@', '-')}`;

let s: MatrixStack | undefined;
beforeAll(async () => {
  s = await startMatrixStack(CASES.map((c) => ({ vmId: vmOf(c.name), memoryMb: 128 })));
}, 120_000);
afterAll(async () => { await s?.close(); }, 60_000);

/** Hold the phase, and say when it is reached (the record is in the phase and, for a held
 *  operation, the operation waits at its hold). */
function arrange(st: MatrixStack, role: Role, phase: Phase): (rec: any) => boolean {
  const at = (rec: any) => rec.state === phase;
  switch (phase) {
    case 'provisioning':
      st.gate.hold('POST', /\/provision$/);
      return (rec) => at(rec) && st.gate.held() > 0;
    case 'preparing':
      st.holdAgent('B', ['prepareIncoming']);
      return (rec) => at(rec) && st.agentHeld('B');
    case 'precopy':
      return (rec) => at(rec) && rec.progress?.transferredBytes > 0;
    case 'switchover':
      st.holdAgent('A', ['finalState']);
      return (rec) => at(rec) && st.agentHeld('A');
    case 'committing':
      st.holdAgent('B', ['waitRunning']);
      return (rec) => at(rec) && st.agentHeld('B');
    case 'cleanup':
      if (role === 'broker') {
        st.gate.hold('POST', /\/release$/);
        return (rec) => at(rec) && st.gate.held() > 0;
      }
      st.holdAgent('A', ['destroy']);
      return (rec) => at(rec) && st.agentHeld('A');
  }
}

/** Where the agents report the VM (both connected), once that is settled. */
async function placesOf(st: MatrixStack, vmId: string): Promise<{ hostId: string; state: string }[]> {
  let last: { hostId: string; state: string }[] = [];
  let same = 0;
  // Inventories arrive asynchronously: the same answer three polls in a row, both hosts connected.
  await until(async () => {
    const hosts = (await st.api('GET', '/v1/hosts')).body.hosts as any[];
    if (hosts.filter((h) => h.connected).length !== 2) return false;
    const now = hosts.flatMap((h) => (h.vms ?? []).filter((v: any) => v.vmId === vmId).map((v: any) => ({ hostId: h.hostId, state: v.state })));
    same = JSON.stringify(now) === JSON.stringify(last) ? same + 1 : 0;
    last = now;
    return same >= 3;
  }, () => `settled places of ${vmId} (last ${JSON.stringify(last)})`, 20_000, 100);
  return last;
}

describe('kill -9 fault matrix', () => {
  it.each(CASES)('$name', async ({ role, phase, name }) => {
    const st = s!;
    await st.healthy();
    const vmId = vmOf(name);
    const reached = arrange(st, role, phase);
    let rec: any;
    let id = '';
    try {
      const m = await st.api('POST', '/v1/migrations', { vmId, destinationHostId: 'B', bandwidthMbps: phase === 'precopy' ? 8 : 400 });
      expect({ status: m.status, body: m.status === 202 ? undefined : m.body }).toEqual({ status: 202, body: undefined });
      id = m.body.id;
      await until(async () => { rec = (await st.api('GET', `/v1/migrations/${id}`)).body; return reached(rec); }, () => `${name}: the phase held (last ${rec?.state})`, 20_000, 20);
      await st.kill(role);
    } finally {
      st.releaseAll();
    }
    await st.restart(role);

    // Bounded: every agent comes back within seconds; the controller's slowest wait is its
    // 2 s status poll and the agents' reconnect backoff.
    rec = await until(async () => {
      const r = (await st.api('GET', `/v1/migrations/${id}`)).body;
      rec = r;
      return TERMINAL.includes(r.state) && r;
    }, () => `${name}: a terminal state (last ${rec?.state} ${JSON.stringify(rec?.error)})\n${st.logs()}`, 90_000, 100);

    const places = await placesOf(st, vmId);
    const running = places.filter((p) => p.state === 'running').map((p) => p.hostId);
    const reservations = await until(async () => {
      const r = await st.reservations(id);
      return r.every((x) => !x.dataPlane.active && x.lifecycleState !== 'Created') && r;
    }, () => `${name}: the reservation released`, 20_000).catch(() => undefined);
    const hosts = (await st.api('GET', '/v1/hosts')).body.hosts as any[];
    const held = hosts.reduce((a, h) => a + h.held.memoryMb + h.held.vcpus, 0);
    const jti = rec.steps?.token?.jti as string | undefined;
    const releases = jti ? (await st.accounting(id)).filter((e) => e.kind === 'release' && e.jti === jti).length : 0;
    const where = running.length === 1 && places.length === 1 ? `VM at ${running[0]}` : `VM ${JSON.stringify(places)}`;
    if (!reservations) console.log(JSON.stringify({ warnings: rec.warnings, lightpath: rec.steps.lightpath, rsv: await st.reservations(id) }));
    console.log(`[matrix] ${name} -> ${rec.state}${rec.error ? ` (${rec.error.code})` : ''}, ${where}, reservation ${reservations ? 'released' : 'HELD'}, holds ${held}, accounting ${releases === 1 && rec.steps.token.accountingClosed ? 'closed' : 'OPEN'}`);

    // The VM runs in exactly one place, and the end says which.
    const want = rec.state === 'completed' ? 'B' : 'A';
    expect({ state: rec.state, places }).toEqual({ state: PAST_SWITCHOVER.includes(phase) ? 'completed' : expect.stringMatching(/^(completed|rolled_back)$/), places: [{ hostId: want, state: 'running' }] });
    // Nothing held: the lightpath, the capacity, the grant's accounting.
    expect(reservations).toBeTruthy();
    expect(held).toBe(0);
    expect(jti).toBeTruthy();
    expect({ releases, closed: rec.steps.token.accountingClosed }).toEqual({ releases: 1, closed: true });
  }, 180_000);
});
