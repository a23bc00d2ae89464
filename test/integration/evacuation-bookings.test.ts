// An evacuation's plan booked in the broker's calendar (docs/fleet.md "Bookings"), with a real AAA
// and a real broker (memory data plane) and DoubleDriver host agents: every planned live move is
// booked ahead for its window, starts when its booking does, and its migration takes the booking
// over instead of reserving anew; bookings not used are released (cancel), and a controller
// killed with -9 leaves none behind: the restarted one releases those whose tokens it lost and
// books the moves again.
import { describe, it, expect, afterEach } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startHarness, vmSpec, type Harness } from '../helpers/controller-harness.ts';
import { cleanupsAfterEach } from '../helpers/cleanups.ts';
import { startControllerProcess } from '../helpers/controller-process.ts';
import { until } from '../helpers/agent-fixture.ts';
import { startLightpathServices, type LightpathServices } from '../helpers/lightpath-services.ts';

let h: Harness | undefined;
afterEach(async () => { await h?.close(); h = undefined; });
const cleanups = cleanupsAfterEach();
const ENDED = ['completed', 'completed_with_errors', 'cancelled'];
// One slot on the 1 Gbit/s lightpath (the broker's link is 1 Gbit/s too): each move gets all of
// it, so the calendar takes the bookings only if their windows do not overlap.
const LIMITS = { perSourceHost: 3, perDestinationHost: 3, perLightpath: 1 };

async function withServices(booking: { stretch?: number; slackS: number }): Promise<LightpathServices> {
  let services: LightpathServices | undefined;
  h = await startHarness({ fleet: { booking } }, async (controllerDir) => {
    services = await startLightpathServices(controllerDir);
    return { options: { aaaUrl: services.aaaUrl, brokerUrl: services.broker.url }, cleanup: () => services!.close() };
  });
  await h.addHost('A', { vms: ['v0', 'v1', 'v2'].map((n) => vmSpec(n)), bytesPerMb: 64 * 1024 }, 'site-A');
  await h.addHost('B', { bytesPerMb: 64 * 1024 }, 'site-B');
  return services!;
}

const reservationsById = async (s: LightpathServices) => new Map((await s.reservations()).map((r: any) => [r.id, r]));

describe('an evacuation books its plan in the broker', () => {
  it('books every move ahead for its window; each move starts then and its migration uses the booking; nothing stays held', async () => {
    const services = await withServices({ slackS: 1 });
    const res = await h!.api('POST', '/v1/evacuations', { host: 'A', limits: LIMITS });
    expect(res.status, JSON.stringify(res.body)).toBe(202);
    const t0 = Date.parse(res.body.createdAt) / 1000;
    const done = await h!.waitFor(async () => {
      const ev = (await h!.api('GET', `/v1/evacuations/${res.body.id}`)).body;
      return ENDED.includes(ev.state) ? ev : undefined;
    }, 'the evacuation to end', 90_000);
    expect(done.state, JSON.stringify(done.items.map((i: any) => [i.vmId, i.state, i.error, i.bookings]))).toBe('completed');
    expect(new Set(done.items.map((i: any) => i.batch)).size).toBe(3);
    const broker = await reservationsById(services);
    const windows: { batch: number; start: number; end: number }[] = [];
    for (const it of done.items) {
      // One booking per move, taken over by the move's migration.
      expect(it.bookings, it.vmId).toHaveLength(1);
      const b = it.bookings[0];
      expect(b.state, it.vmId).toBe('claimed');
      expect(b.migrationId).toBe(it.migrationId);
      expect({ src: b.src, dst: b.dst, mbps: b.mbps }).toEqual({ src: 'site-A', dst: 'site-B', mbps: it.rateMbps });
      // The window is the plan's, stretched, never earlier than planned.
      expect(b.window.start).toBeGreaterThanOrEqual(Math.round(t0 + it.plannedStartS) - 1);
      expect(b.window.end).toBeGreaterThanOrEqual(t0 + it.plannedEndS);
      windows.push({ batch: it.batch, ...b.window });
      // The broker's reservation is that booking, released after the move.
      const r: any = broker.get(b.reservationId);
      expect(r, it.vmId).toBeDefined();
      expect({ bw: r.bandwidthMbps, window: r.window, name: r.migrationId }).toEqual({ bw: it.rateMbps, window: b.window, name: `${done.id}.${it.seq}.b1` });
      expect(r.lifecycleState).toBe('Terminated');
      // The migration provisioned the booked reservation (no reservation of its own), with the
      // grant it was booked with, and started no earlier than the booking's window.
      const m = (await h!.api('GET', `/v1/migrations/${it.migrationId}`)).body;
      expect(m.steps.lightpath).toMatchObject({ reservationId: b.reservationId, booked: `${done.id}.${it.seq}.b1`, provisioned: true, released: true });
      expect(m.steps.token.jti).toMatch(/.+/);
      expect(Date.parse(m.transitions[0].at) / 1000).toBeGreaterThanOrEqual(b.window.start - 1);
    }
    // The plan's batches as booked: the bookings per batch and lightpath add up to the plan's.
    for (const batch of done.plan.batches) {
      const mine = done.items.filter((i: any) => i.batch === batch.index);
      for (const bk of batch.bookings) expect(mine.filter((i: any) => i.link === bk.link).reduce((a: number, i: any) => a + i.bookings[0].mbps, 0)).toBe(bk.mbps);
    }
    // One slot: the windows follow each other in batch order and never overlap.
    windows.sort((a, b) => a.batch - b.batch);
    for (let i = 1; i < windows.length; i++) expect(windows[i]!.start).toBeGreaterThanOrEqual(windows[i - 1]!.end);
    // The broker holds nothing more than these three, all ended.
    expect([...broker.values()].filter((r: any) => r.lifecycleState !== 'Terminated')).toEqual([]);
    expect(broker.size).toBe(3);
  }, 120_000);

  it('cancel releases the bookings of moves that will not start', async () => {
    const services = await withServices({ slackS: 600 });
    const res = await h!.api('POST', '/v1/evacuations', { host: 'A', limits: LIMITS });
    expect(res.status).toBe(202);
    // Booked: the first move starts at once, the others wait for their windows (10 minutes on).
    const booked = await h!.waitFor(async () => {
      const ev = (await h!.api('GET', `/v1/evacuations/${res.body.id}`)).body;
      return ev.items.every((i: any) => i.bookings?.[0]?.reservationId) && ev.counts.planned === 2 ? ev : undefined;
    }, "three bookings, two moves waiting", 30_000).catch(async (e) => { console.log(JSON.stringify((await h!.api("GET", `/v1/evacuations/${res.body.id}`)).body.items.map((i: any) => [i.state, i.bookings]))); throw e; });
    const waiting = booked.items.filter((i: any) => i.state === 'planned');
    expect((await reservationsById(services)).get(waiting[0].bookings[0].reservationId).lifecycleState).toBe('Created');
    await h!.api('POST', `/v1/evacuations/${res.body.id}/cancel`, { running: 'finish' });
    const done = await h!.waitFor(async () => {
      const ev = (await h!.api('GET', `/v1/evacuations/${res.body.id}`)).body;
      return ENDED.includes(ev.state) ? ev : undefined;
    }, 'the evacuation to end', 60_000);
    expect(done.state).toBe('cancelled');
    const broker = await reservationsById(services);
    for (const it of done.items.filter((i: any) => i.state === 'cancelled')) {
      expect(it.bookings.map((b: any) => b.state), it.vmId).toEqual(['released']);
      expect(broker.get(it.bookings[0].reservationId).lifecycleState, it.vmId).toBe('Terminated');
    }
    expect([...broker.values()].filter((r: any) => r.lifecycleState !== 'Terminated')).toEqual([]);
  }, 120_000);
});

describe('bookings across a controller kill -9', () => {
  it('the restarted controller releases the bookings whose tokens died with it, books the moves again, leaks none', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vmtc-evac-bk-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const ctlDir = join(dir, 'controller');
    const services = await startLightpathServices(ctlDir);
    cleanups.push(() => services.close());
    writeFileSync(join(dir, 'fleet.json'), JSON.stringify({ booking: { slackS: 3 } }));
    const ctl = await startControllerProcess(ctlDir, ['--aaa', services.aaaUrl, '--broker', services.broker.url, '--fleet', join(dir, 'fleet.json')], cleanups);
    const names = ['v0', 'v1', 'v2'];
    await ctl.addDoubleAgents(join(dir, 'agents'), [['A', { vms: names.map((n) => vmSpec(n)), bytesPerMb: 64 * 1024 }], ['B', { bytesPerMb: 64 * 1024 }]]);
    const res = await ctl.api('POST', '/v1/evacuations', { host: 'A', limits: LIMITS });
    expect(res.status, JSON.stringify(res.body)).toBe(202);
    await until(async () => {
      const ev = (await ctl.api('GET', `/v1/evacuations/${res.body.id}`)).body;
      return ev.items.every((i: any) => i.bookings?.[0]?.state === 'booked' || i.bookings?.[0]?.state === 'claimed') && ev.counts.planned >= 1;
    }, 30_000, 'every move booked, one at least waiting');
    await ctl.proc().stop('SIGKILL');
    await ctl.start();
    const done = await until(async () => {
      const ev = (await ctl.api('GET', `/v1/evacuations/${res.body.id}`).catch(() => ({ body: {} as any }))).body;
      return ENDED.includes(ev.state) ? ev : undefined;
    }, 120_000, 'the evacuation to end after the restart');
    expect(done.state, JSON.stringify(done.items.map((i: any) => [i.vmId, i.state, i.error, i.bookings]))).toBe('completed');
    const broker = await reservationsById(services);
    let rebooked = 0;
    for (const it of done.items) {
      // Every booking ends used or released: none is left booked, and the broker agrees.
      for (const b of it.bookings) {
        expect(['claimed', 'released'], `${it.vmId} ${JSON.stringify(b)}`).toContain(b.state);
        expect(broker.get(b.reservationId)?.lifecycleState, `${it.vmId} ${b.reservationId}`).toBe('Terminated');
      }
      if (it.bookings.length > 1) {
        rebooked++;
        // Released (the restart; the time line booked again around a move that rolled back) or
        // used by an earlier attempt of the move; the last one used by its last migration.
        for (const b of it.bookings.slice(0, -1)) expect(b.state === 'released' || (b.state === 'claimed' && it.migrationIds.includes(b.migrationId)), JSON.stringify(b)).toBe(true);
        expect(it.bookings.at(-1)).toMatchObject({ state: 'claimed', migrationId: it.migrationId });
      }
    }
    // The moves that waited at the kill were booked again with new grants.
    expect(rebooked).toBeGreaterThanOrEqual(1);
    expect([...broker.values()].filter((r: any) => r.lifecycleState !== 'Terminated')).toEqual([]);
    const where = await until(async () => {
      const vms = (await ctl.api('GET', '/v1/vms')).body.vms.filter((v: any) => v.state !== 'incoming');
      return names.every((n) => vms.filter((v: any) => v.vmId === n).length === 1 && vms.find((v: any) => v.vmId === n).hostId === 'B') ? vms : undefined;
    }, 15_000, 'every VM once, at B');
    expect(where.length).toBe(3);
  }, 240_000);
});
