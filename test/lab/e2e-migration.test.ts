// The whole sequence (docs/design.md#live-migration, steps 1–7): a real QEMU guest moves between
// two lab sites across the emulated lightpath through the whole VMTC sequence (AAA token, broker
// lightpath, prepare, tunnel bicast, live migration, commit, tunnel prune, cleanup, release), every
// service a real process. The guest runs the dirty load, which verifies its memory: after every
// move it must be intact (lab/stack.ts assertGuestIntact: no memory mismatch, panic, BUG or
// oops, and a whole verifying pass ran where it runs now).
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { assertGuestIntact, markGuestConsoles, startStack, type Stack } from '../../lab/stack.ts';
import { netnsExec, tunnelSites } from '../../lab/net.ts';

let s: Stack | undefined;
let tcp: ChildProcess | undefined;
let tcpOut = '';

beforeAll(async () => {
  // A short RTT keeps CI quick; the 198 ms figures come from the turntable benchmark.
  s = await startStack({ rttMs: 20, rateMbps: 1000, memoryMb: 128, guest: { dirtyMb: 16, dirtyPeriodMs: 500 } });
  tcp = spawn('ip', ['netns', 'exec', s.lab.client.ns, process.execPath, join(import.meta.dirname, '../../lab/probes/tcp-session.mjs'), `--host=${s.lab.vm.ip}`, '--interval=100', '--max-seconds=400'], { stdio: ['ignore', 'pipe', 'inherit'] });
  tcp.stdout!.on('data', (d) => { tcpOut += d; });
  for (let i = 0; i < 100 && !tcpOut.includes('"ready"'); i++) await new Promise((r) => setTimeout(r, 100));
  expect(tcpOut).toContain('"ready"');
}, 300_000);

afterAll(async () => {
  if (tcp && tcp.exitCode === null) tcp.kill('SIGKILL');
  await s?.close();
}, 120_000);

const siteA = () => s!.lab.sites[0]!.name;
const siteB = () => s!.lab.sites[1]!.name;

describe('live migration end to end in the lab', () => {
  it('moves the VM A → B and back over the REST API; it answers at the same IP; the TCP session survives', async () => {
    for (const [to, from] of [[siteB(), siteA()], [siteA(), siteB()]] as const) {
      const marks = markGuestConsoles(s!);
      const rec = await s!.migrate(to, { bandwidthMbps: 900, maxDowntimeMs: 300 });
      expect({ state: rec.state, error: rec.error }).toEqual({ state: 'completed', error: null });
      expect(rec.steps!.token!.jti).toBeTruthy();
      expect(rec.steps!.lightpath).toMatchObject({ provisioned: true, released: true });
      expect(rec.steps!.tunnel).toMatchObject({ bicast: true, pruned: true });
      expect(rec.result!.downtimeMs).toBeGreaterThanOrEqual(0);
      const places = await s!.vmPlaces();
      expect(places).toEqual([{ hostId: s!.hostOf(to), state: 'running' }]);
      expect(await tunnelSites(s!.lab)).toEqual([to]);
      await netnsExec(s!.lab.client.ns, ['ping', '-c', '3', '-i', '0.2', '-W', '2', s!.lab.vm.ip]);
      expect(from).not.toBe(to);
      expect((await assertGuestIntact(s!, { marks })).memory).toMatchObject({ verified: true });
    }
    tcp!.kill('SIGTERM');
    for (let i = 0; i < 50 && !tcpOut.includes('"echoed"'); i++) await new Promise((r) => setTimeout(r, 100));
    const summary = JSON.parse(tcpOut.split('\n').find((l) => l.includes('"echoed"'))!);
    expect(summary).toMatchObject({ open: true, mismatches: 0 });
    expect(summary.echoed).toBeGreaterThan(10);
    expect(summary.sent - summary.echoed).toBeLessThanOrEqual(1);
  });

  it('a refused token means no VM state moved at all', async () => {
    // The policy grants at most the line rate; asking for more is refused by the AAA.
    const marks = markGuestConsoles(s!);
    // Refused at admission by the AAA's policy check, with the AAA's code: nothing is created.
    const rec = await s!.migrate(siteB(), { bandwidthMbps: 5000 });
    expect(rec).toMatchObject({ refused: true, code: 'VMTC_AAA_POLICY_DENIED', details: { step: 'policy-check', field: 'bandwidthMbps' } });
    expect(await s!.vmPlaces()).toEqual([{ hostId: s!.hostOf(siteA()), state: 'running' }]);
    await assertGuestIntact(s!, { marks });
  });

  it('cancel during pre-copy leaves the VM running at the source and the lightpath released', async () => {
    const marks = markGuestConsoles(s!);
    const m = await s!.api('POST', '/v1/migrations', { vmId: s!.vmId, destinationHostId: s!.hostOf(siteB()), bandwidthMbps: 4 });
    expect(m.status).toBe(202);
    await s!.waitState(m.body.id, ['precopy'], 120_000);
    await new Promise((r) => setTimeout(r, 500));
    expect((await s!.api('POST', `/v1/migrations/${m.body.id}/cancel`)).status).toBe(202);
    const rec = await s!.waitState(m.body.id, ['cancelled', 'rolled_back', 'failed']);
    expect(rec.state).toBe('cancelled');
    expect(rec.steps.lightpath).toMatchObject({ released: true });
    const rsv = await (await fetch(`${s!.brokerUrl}/v1/reservations/${rec.steps.lightpath!.reservationId}`, { headers: { authorization: `Bearer ${s!.brokerToken}` } })).json() as any;
    expect(rsv.provisionState).toBe('Released');
    expect(rsv.dataPlane.active).toBe(false);
    await waitPlaces([{ hostId: s!.hostOf(siteA()), state: 'running' }]);
    expect(await tunnelSites(s!.lab)).toEqual([siteA()]);
    await netnsExec(s!.lab.client.ns, ['ping', '-c', '2', '-W', '2', s!.lab.vm.ip]);
    await assertGuestIntact(s!, { marks });
  });

  it('killing the destination QEMU during pre-copy rolls back with the VM running at the source', async () => {
    const marks = markGuestConsoles(s!);
    const m = await s!.api('POST', '/v1/migrations', { vmId: s!.vmId, destinationHostId: s!.hostOf(siteB()), bandwidthMbps: 4 });
    expect(m.status).toBe(202);
    await s!.waitState(m.body.id, ['precopy'], 120_000);
    const pidFile = join(s!.agentDataDir(s!.hostOf(siteB())), 'qemu', 'vms', s!.vmId, 'qemu.pid');
    const pid = Number(readFileSync(pidFile, 'utf8').trim());
    expect(readFileSync(`/proc/${pid}/cmdline`, 'utf8')).toContain('qemu');
    process.kill(pid, 'SIGKILL');
    const rec = await s!.waitState(m.body.id, ['completed', 'rolled_back', 'failed', 'cancelled']);
    expect(rec.state).toBe('rolled_back');
    await waitPlaces([{ hostId: s!.hostOf(siteA()), state: 'running' }]);
    await netnsExec(s!.lab.client.ns, ['ping', '-c', '2', '-W', '2', s!.lab.vm.ip]);
    await assertGuestIntact(s!, { marks });
  });

  it('moves the VM cold (power off, boot at B, verified by its TCP echo service) and back; clients reach it at the same IP', async () => {
    for (const to of [siteB(), siteA()]) {
      const marks = markGuestConsoles(s!);
      const rec = await s!.migrate(to, { mode: 'cold', verifyTcp: { host: s!.lab.vm.ip, port: 7 } });
      expect({ state: rec.state, error: rec.error }).toEqual({ state: 'completed', error: null });
      expect(rec.transitions!.map((t: any) => t.to)).toEqual(['prechecking', 'reserved', 'cold_exporting', 'cold_importing', 'cold_verifying', 'activating', 'cleanup', 'completed']);
      expect(rec.steps!.cold).toMatchObject({ priorState: 'running', verified: true, disks: [] });
      expect(rec.steps!.tunnel).toMatchObject({ bicast: true, pruned: true });
      await waitPlaces([{ hostId: s!.hostOf(to), state: 'running' }]);
      expect(await tunnelSites(s!.lab)).toEqual([to]);
      await netnsExec(s!.lab.client.ns, ['ping', '-c', '3', '-i', '0.2', '-W', '2', s!.lab.vm.ip]);
      // A cold move boots the guest anew: its ready line is expected, damage is not.
      expect((await assertGuestIntact(s!, { marks, booted: true })).memory).toMatchObject({ verified: true });
    }
  });
});

async function waitPlaces(want: { hostId: string; state: string }[]) {
  let last: unknown;
  for (let i = 0; i < 100; i++) {
    last = await s!.vmPlaces();
    if (JSON.stringify(last) === JSON.stringify(want)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  expect(last).toEqual(want);
}
