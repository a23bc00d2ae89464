// Evacuation (docs/fleet.md) with the real controller and in-process host agents on the
// DoubleDriver: a host with 10 VMs drained under concurrency limits, checked at every instant
// from the migrations' recorded transitions; cancel; and a `vmtc controller` process killed with
// -9 mid-evacuation, started again, finishing with every VM moved exactly once.
import { describe, it, expect, afterEach } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startHarness, vmSpec, type Harness } from '../helpers/controller-harness.ts';
import { cleanupsAfterEach } from '../helpers/cleanups.ts';
import { startControllerProcess } from '../helpers/controller-process.ts';
import { until } from '../helpers/agent-fixture.ts';

let h: Harness | undefined;
afterEach(async () => { await h?.close(); h = undefined; });
const cleanups = cleanupsAfterEach();

const ENDED = ['completed', 'completed_with_errors', 'cancelled'];
type Api = (method: string, path: string, body?: unknown) => Promise<{ status: number; body: any }>;

/** Each migration of the evacuation as [start, end] from its transitions (created, terminal). */
async function intervals(api: Api, ev: any): Promise<{ id: string; vmId: string; src: string; dst: string; start: number; end: number; state: string }[]> {
  const out = [];
  for (const it of ev.items) {
    for (const id of it.migrationIds) {
      const m = (await api('GET', `/v1/migrations/${id}`)).body;
      const ts = m.transitions.map((t: any) => Date.parse(t.at));
      out.push({ id, vmId: m.vmId, src: m.sourceHostId, dst: m.destinationHostId, start: ts[0], end: m.terminal ? ts.at(-1) : Infinity, state: m.state });
    }
  }
  return out;
}

/** The most migrations running at one instant, per key (checked at every start). */
function peak(iv: { start: number; end: number }[], key: (x: any) => string): Map<string, number> {
  const out = new Map<string, number>();
  for (const a of iv) {
    const n = iv.filter((b) => key(b) === key(a) && b.start <= a.start && a.start < b.end).length;
    out.set(key(a), Math.max(out.get(key(a)) ?? 0, n));
  }
  return out;
}

const siteOf = (h: string) => `site-${h}`;
const link = (x: { src: string; dst: string }) => [siteOf(x.src), siteOf(x.dst)].sort().join('~');

async function vmsWhere(api: Api): Promise<Map<string, string[]>> {
  const m = new Map<string, string[]>();
  for (const v of (await api('GET', '/v1/vms')).body.vms) if (v.state !== 'incoming') m.set(v.vmId, [...(m.get(v.vmId) ?? []), v.hostId]);
  return m;
}

describe('evacuation of a host', () => {
  it('drains 10 VMs within every limit at every instant; each VM ends elsewhere exactly once', async () => {
    h = await startHarness();
    const names = Array.from({ length: 10 }, (_, i) => `vm${i}`);
    await h.addHost('A', { vms: names.map((n, i) => vmSpec(n, { memoryMb: 256 + 64 * i })), bytesPerMb: 48 * 1024 });
    await h.addHost('B', { bytesPerMb: 48 * 1024 });
    await h.addHost('C', { bytesPerMb: 48 * 1024 });
    await h.addHost('D', { bytesPerMb: 48 * 1024, memoryMb: 1024 });
    const limits = { perSourceHost: 3, perDestinationHost: 1, perLightpath: 1 };
    const res = await h.api('POST', '/v1/evacuations', { host: 'A', limits });
    expect(res.status, JSON.stringify(res.body)).toBe(202);
    expect(res.body.items).toHaveLength(10);
    expect(res.body.plan.batches.length).toBeGreaterThan(1);
    expect((await h.api('GET', '/v1/maintenance')).body.hosts.map((x: any) => x.hostId)).toEqual(['A']);
    // A does not take VMs while it is drained.
    expect((await h.api('POST', '/v1/migrations', { vmId: 'vm0', destinationHostId: 'A' })).body.code).toMatch(/^VMTC_(HOST_IN_MAINTENANCE|SAME_HOST)$/);
    const done = await h.waitFor(async () => {
      const ev = (await h!.api('GET', `/v1/evacuations/${res.body.id}`)).body;
      return ENDED.includes(ev.state) ? ev : undefined;
    }, 'the evacuation to end', 120_000);
    expect(done.state, JSON.stringify(done.items.map((i: any) => [i.vmId, i.state, i.error]))).toBe('completed');
    expect(done.counts).toEqual({ completed: 10 });
    const iv = await intervals(h.api, done);
    expect(iv.every((x) => x.state === 'completed')).toBe(true);
    expect(new Set(iv.map((x) => x.vmId)).size).toBe(10);
    for (const [k, n] of peak(iv, (x) => x.src)) expect(n, `source ${k}`).toBeLessThanOrEqual(limits.perSourceHost);
    for (const [k, n] of peak(iv, (x) => x.dst)) expect(n, `destination ${k}`).toBeLessThanOrEqual(limits.perDestinationHost);
    for (const [k, n] of peak(iv, link)) expect(n, `lightpath ${k}`).toBeLessThanOrEqual(limits.perLightpath);
    // Three destinations, one at a time each: some moves overlapped (the limits were used).
    expect(Math.max(...peak(iv, () => 'all').values())).toBeGreaterThan(1);
    // D (1 GiB) took no more than fits.
    const where = await h.waitFor(async () => {
      const w = await vmsWhere(h!.api);
      return names.every((n) => w.get(n)?.length === 1 && w.get(n)![0] !== 'A') ? w : undefined;
    }, 'every VM once, not at A');
    const onD = names.filter((n) => where.get(n)![0] === 'D');
    expect(onD.reduce((s, n) => s + 256 + 64 * names.indexOf(n), 0)).toBeLessThanOrEqual(1024);
    expect(done.items.every((i: any) => i.migration?.state === 'completed' && i.destinationHostId === where.get(i.vmId)![0])).toBe(true);
  }, 180_000);

  it('cancel stops what has not started; running moves finish; bad requests get coded errors', async () => {
    h = await startHarness();
    const names = Array.from({ length: 4 }, (_, i) => `vm${i}`);
    await h.addHost('A', { vms: names.map((n) => vmSpec(n, { memoryMb: 1024 })), bytesPerMb: 256 * 1024 });
    await h.addHost('B');
    const res = await h.api('POST', '/v1/evacuations', { host: 'A', limits: { perSourceHost: 1, perDestinationHost: 1, perLightpath: 1 } });
    expect(res.status).toBe(202);
    await h.waitFor(async () => (await h!.api('GET', `/v1/evacuations/${res.body.id}`)).body.counts.running === 1, 'one move running');
    const c = await h.api('POST', `/v1/evacuations/${res.body.id}/cancel`, { running: 'finish' });
    expect(c.status).toBe(202);
    expect(c.body.state).toBe('cancelling');
    const done = await h.waitFor(async () => {
      const ev = (await h!.api('GET', `/v1/evacuations/${res.body.id}`)).body;
      return ENDED.includes(ev.state) ? ev : undefined;
    }, 'the evacuation to end', 60_000);
    expect(done.state).toBe('cancelled');
    expect(done.counts).toEqual({ completed: 1, cancelled: 3 });
    expect((await h.api('POST', `/v1/evacuations/${res.body.id}/cancel`, {})).body.code).toBe('VMTC_EVACUATION_NOT_CANCELLABLE');
    // The host stays in maintenance until an operator ends it.
    expect((await h.api('DELETE', '/v1/hosts/A/maintenance')).body.maintenance).toBe(false);
    expect((await h.api('POST', '/v1/evacuations', { host: 'A', site: 'x' })).body.code).toBe('VMTC_EVACUATION_TARGET_INVALID');
    expect((await h.api('POST', '/v1/evacuations', { host: 'nope' })).body.code).toBe('VMTC_EVACUATION_TARGET_INVALID');
    expect((await h.api('POST', '/v1/evacuations', { host: 'A', limits: { perSourceHost: 0 } })).status).toBe(400);
    expect((await h.api('GET', '/v1/evacuations/nope')).body.code).toBe('VMTC_EVACUATION_NOT_FOUND');
  });
});

describe('evacuation: rollback on cancel, and the cold fallback', () => {
  it('cancel with running: rollback cancels the running move; the VM stays at its source', async () => {
    h = await startHarness();
    await h.addHost('A', { vms: ['v1', 'v2'].map((n) => vmSpec(n, { memoryMb: 2048 })), bytesPerMb: 256 * 1024 });
    await h.addHost('B');
    const res = await h.api('POST', '/v1/evacuations', { host: 'A', limits: { perSourceHost: 1, perDestinationHost: 1, perLightpath: 1 } });
    expect(res.status).toBe(202);
    const running = await h.waitFor(async () => {
      const ev = (await h!.api('GET', `/v1/evacuations/${res.body.id}`)).body;
      const it = ev.items.find((i: any) => i.state === 'running' && i.migration?.state === 'precopy');
      return it;
    }, 'a move in pre-copy');
    expect((await h.api('POST', `/v1/evacuations/${res.body.id}/cancel`, { running: 'rollback' })).status).toBe(202);
    const done = await h.waitFor(async () => {
      const ev = (await h!.api('GET', `/v1/evacuations/${res.body.id}`)).body;
      return ENDED.includes(ev.state) ? ev : undefined;
    }, 'the evacuation to end', 60_000);
    expect(done.state).toBe('cancelled');
    expect(done.counts).toEqual({ cancelled: 2 });
    expect((await h.api('GET', `/v1/migrations/${running.migrationId}`)).body.state).toBe('cancelled');
    await h.waitFor(async () => {
      const w = await vmsWhere(h!.api);
      return w.get('v1')?.join() === 'A' && w.get('v2')?.join() === 'A';
    }, 'both VMs still only at A');
  });

  it('VMs that cannot move live move cold with allowCold, and are left unplaced without it', async () => {
    h = await startHarness();
    await h.addHost('A', { vms: ['v1', 'v2'].map((n) => vmSpec(n)) });
    await h.addHost('B', { cpu: { model: 'older', features: [], vcpus: 8 } });
    const live = await h.api('POST', '/v1/evacuations', { host: 'A' });
    expect(live.status).toBe(202);
    const refused = await h.waitFor(async () => {
      const ev = (await h!.api('GET', `/v1/evacuations/${live.body.id}`)).body;
      return ENDED.includes(ev.state) ? ev : undefined;
    }, 'the live-only evacuation to end');
    expect(refused.state).toBe('completed_with_errors');
    expect(refused.counts).toEqual({ unplaced: 2 });
    expect(refused.items[0].error.code).toBe('VMTC_NO_FEASIBLE_HOST');
    expect(refused.items[0].error.details.refused).toEqual(expect.arrayContaining([expect.objectContaining({ hostId: 'B', reason: 'cpu-incompatible' })]));
    const cold = await h.api('POST', '/v1/evacuations', { host: 'A', allowCold: true });
    expect(cold.status, JSON.stringify(cold.body)).toBe(202);
    expect(cold.body.items.map((i: any) => i.path)).toEqual(['cold', 'cold']);
    const done = await h.waitFor(async () => {
      const ev = (await h!.api('GET', `/v1/evacuations/${cold.body.id}`)).body;
      return ENDED.includes(ev.state) ? ev : undefined;
    }, 'the cold evacuation to end', 60_000);
    expect(done.state, JSON.stringify(done.items.map((i: any) => [i.vmId, i.state, i.error]))).toBe('completed');
    for (const it of done.items) expect((await h.api('GET', `/v1/migrations/${it.migrationId}`)).body.path).toBe('cold');
    await h.waitFor(async () => {
      const w = await vmsWhere(h!.api);
      return w.get('v1')?.join() === 'B' && w.get('v2')?.join() === 'B';
    }, 'both VMs only at B');
  }, 120_000);
});

describe('evacuation across a controller kill -9', () => {
  it('resumes after restart and completes with no VM lost or moved twice', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vmtc-evac-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const ctl = await startControllerProcess(join(dir, 'controller'), [], cleanups);
    const names = Array.from({ length: 6 }, (_, i) => `vm${i}`);
    await ctl.addDoubleAgents(join(dir, 'agents'), [
      ['A', { vms: names.map((n) => vmSpec(n, { memoryMb: 512 })), bytesPerMb: 128 * 1024 }],
      ['B', { bytesPerMb: 128 * 1024 }],
      ['C', { bytesPerMb: 128 * 1024 }],
    ]);
    const res = await ctl.api('POST', '/v1/evacuations', { host: 'A', limits: { perSourceHost: 2, perDestinationHost: 1, perLightpath: 1 } });
    expect(res.status, JSON.stringify(res.body)).toBe(202);
    // Kill it once some moves are done, one runs and others are still to come.
    await until(async () => {
      const ev = (await ctl.api('GET', `/v1/evacuations/${res.body.id}`)).body;
      return (ev.counts.completed ?? 0) >= 1 && (ev.counts.running ?? 0) >= 1 && (ev.counts.planned ?? 0) >= 1;
    }, 60_000, 'a move done, one running and others planned');
    await ctl.proc().stop('SIGKILL');
    await ctl.start();
    const done = await until(async () => {
      const ev = (await ctl.api('GET', `/v1/evacuations/${res.body.id}`).catch(() => ({ body: {} as any }))).body;
      return ENDED.includes(ev.state) ? ev : undefined;
    }, 120_000, 'the evacuation to end after the restart');
    expect(done.state, JSON.stringify(done.items.map((i: any) => [i.vmId, i.state, i.error]))).toBe('completed');
    const where = await until(async () => {
      const w = await vmsWhere(ctl.api);
      return names.every((n) => w.get(n)?.length === 1 && w.get(n)![0] !== 'A') ? w : undefined;
    }, 15_000, 'every VM once, not at A');
    expect(where!.size).toBe(names.length);
    // Every VM was completed by exactly one migration (a restart may have rolled one back first).
    const iv = await intervals(ctl.api, done);
    for (const n of names) expect(iv.filter((x) => x.vmId === n && x.state === 'completed'), n).toHaveLength(1);
  }, 240_000);
});
