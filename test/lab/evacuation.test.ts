// Evacuation of a lab site (docs/fleet.md) holding three real QEMU guests (128 MB, TCG), in one
// request, over the emulated lightpath: the AAA, the broker (lab lightpath driver), the controller,
// a QEMU host agent per site and the client's tunnel agent are real processes (lab/stack.ts).
// Every guest keeps its address and its client's TCP session (lab/probes/tcp-session.mjs), and
// the broker's reservations are the plan's bookings: one per move, booked ahead at the plan's
// rate and window, provisioned by the move's migration and released after it.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { startStack, type Stack } from '../../lab/stack.ts';
import { buildGuestImage, guestAppend } from '../../lab/guest/build.ts';
import { netnsExec } from '../../lab/net.ts';

let s: Stack | undefined;
const probes: { vmId: string; ip: string; child: ChildProcess; out: string }[] = [];
const GUESTS = [{ vmId: 'vm1', ip: '10.1.1.2' }, { vmId: 'vm2', ip: '10.1.1.3', mac: '52:54:00:0a:01:03' }, { vmId: 'vm3', ip: '10.1.1.4', mac: '52:54:00:0a:01:04' }];

async function ping(ip: string, tries: number): Promise<void> {
  for (let i = 0; ; i++) {
    try {
      await netnsExec(s!.lab.client.ns, ['ping', '-c', '1', '-W', '1', ip]);
      return;
    } catch (e) {
      if (i >= tries) throw e;
    }
  }
}

beforeAll(async () => {
  // Three sites: the plan spreads the guests over the other two. A slack of 240 s on the booked
  // windows: three TCG guests share the machine's two cores.
  s = await startStack({ rttMs: 20, rateMbps: 1000, memoryMb: 128, lab: { sites: 3 }, fleet: { booking: { slackS: 240 } } });
  const site0 = s.lab.sites[0]!;
  const guest = await buildGuestImage();
  for (const g of GUESTS.slice(1)) {
    const r = await s.api('POST', '/v1/vms', {
      hostId: s.hostOf(site0.name),
      spec: {
        vmId: g.vmId, project: 'lab', vcpus: 1, memoryMb: 128, diskGb: 0, kernel: guest.kernel, initrd: guest.initrd,
        append: guestAppend({ ip: `${g.ip}/${s.lab.vm.prefixLen}`, gateway: s.lab.vm.gateway }), nics: [{ mac: g.mac, bridge: site0.bridge }], serialPorts: 1,
      },
    });
    expect(r.status, JSON.stringify(r.body)).toBe(201);
  }
  for (const g of GUESTS) {
    await ping(g.ip, 60);
    const child = spawn('ip', ['netns', 'exec', s.lab.client.ns, process.execPath, join(import.meta.dirname, '../../lab/probes/tcp-session.mjs'), `--host=${g.ip}`, '--interval=200', '--max-seconds=500'], { stdio: ['ignore', 'pipe', 'inherit'] });
    const p = { vmId: g.vmId, ip: g.ip, child, out: '' };
    child.stdout!.on('data', (d) => { p.out += d; });
    probes.push(p);
    for (let i = 0; i < 100 && !p.out.includes('"ready"'); i++) await new Promise((r) => setTimeout(r, 100));
    expect(p.out, g.vmId).toContain('"ready"');
  }
}, 600_000);

afterAll(async () => {
  for (const p of probes) if (p.child.exitCode === null) p.child.kill('SIGKILL');
  await s?.close();
}, 120_000);

describe('evacuation of a lab site', () => {
  it('moves its three guests live in one request; each keeps its address and TCP session; the broker holds the plan\'s bookings', async () => {
    const site0 = s!.lab.sites[0]!.name;
    const res = await s!.api('POST', '/v1/evacuations', { site: site0, limits: { perSourceHost: 3, perDestinationHost: 3, perLightpath: 4 } });
    expect(res.status, JSON.stringify(res.body)).toBe(202);
    expect(res.body.items.map((i: any) => i.state).sort()).toEqual(['planned', 'planned', 'planned']);
    let done: any;
    for (let i = 0; i < 600; i++) {
      done = (await s!.api('GET', `/v1/evacuations/${res.body.id}`)).body;
      if (['completed', 'completed_with_errors', 'cancelled'].includes(done.state)) break;
      await new Promise((r) => setTimeout(r, 1000));
    }
    expect(done.state, JSON.stringify(done.items.map((i: any) => [i.vmId, i.state, i.error, i.migration]))).toBe('completed');

    // Every guest once, off the evacuated site, answering at its address.
    const vms = ((await s!.api('GET', '/v1/vms')).body.vms as any[]).filter((v) => v.state !== 'incoming');
    for (const g of GUESTS) {
      const at = vms.filter((v) => v.vmId === g.vmId);
      expect(at, g.vmId).toHaveLength(1);
      expect(s!.siteOf(at[0].hostId), g.vmId).not.toBe(site0);
      await ping(g.ip, 5);
    }

    // The broker's reservations are the plan's bookings, one per move, provisioned by its migration.
    const listed = (await (await fetch(`${s!.brokerUrl}/v1/reservations`, { headers: { authorization: `Bearer ${s!.brokerToken}` } })).json()) as { reservations: any[] };
    const broker = new Map(listed.reservations.map((r) => [r.id as string, r]));
    const t0 = Date.parse(done.createdAt) / 1000;
    for (const it of done.items) {
      const b = it.bookings.at(-1);
      expect(b, it.vmId).toMatchObject({ state: 'claimed', migrationId: it.migrationId, src: site0, dst: s!.siteOf(it.destinationHostId), mbps: it.rateMbps });
      expect(b.window.start).toBeGreaterThanOrEqual(Math.round(t0 + it.plannedStartS) - 1);
      expect(b.window.end).toBeGreaterThanOrEqual(t0 + it.plannedEndS);
      const r: any = broker.get(b.reservationId);
      expect(r, it.vmId).toBeDefined();
      expect({ src: r.src, dst: r.dst, mbps: r.bandwidthMbps, window: r.window }).toEqual({ src: site0, dst: b.dst, mbps: it.rateMbps, window: b.window });
      expect(r.provisionState, it.vmId).toBe('Released');
      const m = (await s!.api('GET', `/v1/migrations/${it.migrationId}`)).body;
      expect(m.steps.lightpath, it.vmId).toMatchObject({ reservationId: b.reservationId, booked: expect.any(String), provisioned: true, released: true });
    }
    for (const batch of done.plan.batches) {
      for (const bk of batch.bookings) {
        const mine = done.items.filter((i: any) => i.batch === batch.index && i.link === bk.link);
        expect(mine.reduce((a: number, i: any) => a + i.bookings.at(-1).mbps, 0), bk.link).toBeCloseTo(bk.mbps, 6);
      }
    }
    // Nothing else was reserved: the moves used their bookings, none reserved anew.
    expect(broker.size).toBe(done.items.reduce((a: number, i: any) => a + i.bookings.length, 0));

    // Each client's TCP session survived its guest's move.
    for (const p of probes) {
      p.child.kill('SIGTERM');
      for (let i = 0; i < 50 && !p.out.includes('"echoed"'); i++) await new Promise((r) => setTimeout(r, 100));
      const summary = JSON.parse(p.out.split('\n').find((l) => l.includes('"echoed"'))!);
      expect(summary, p.vmId).toMatchObject({ open: true, mismatches: 0 });
      expect(summary.echoed, p.vmId).toBeGreaterThan(10);
    }
  }, 900_000);
});
