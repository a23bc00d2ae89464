// An operator's control of a running migration, through the controller's REST API and real host
// agents (DoubleDriver hypervisor test double with a dirty guest: agents/host/double-copy.ts):
// force-complete ends a copy that would not converge, PATCH changes the limits the source runs
// with (read back from its driver), both are refused outside the copy and from the switchover on,
// each change is in the record's history and on the event stream, and a downtime over the limit
// asked for is a warning on the record.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { DoubleDriverConfig } from '../../agents/host/double-driver.ts';
import { followMigrationEvents, runningOnlyAt, startHarness, vmSpec, type Harness } from '../helpers/controller-harness.ts';

let h: Harness | undefined;
const streams: AbortController[] = [];
afterEach(async () => {
  for (const s of streams.splice(0)) s.abort();
  await h?.close();
  h = undefined;
});

// 256 MiB at the harness's 4096 bytes per MiB: 1 MiB on the wire, 1 s a pass at 8 Mbit/s. The
// guest dirties 32 Mbit/s, four times what the copy carries: by itself it never converges.
const DIRTY: DoubleDriverConfig = { vms: [vmSpec('vm1')], dirtyMbps: 32 };
const SLOW = { vmId: 'vm1', destinationHostId: 'B', mode: 'live', bandwidthMbps: 8, maxDowntimeMs: 50 };

const follow = (hh: Harness, id: string) => followMigrationEvents(hh, id, streams);

/** Wait until the copy has gone `passes` passes in pre-copy (it is not converging). */
async function passes(hh: Harness, id: string, n: number): Promise<any> {
  return hh.waitFor(async () => {
    const r = (await hh.api('GET', `/v1/migrations/${id}`)).body;
    if (r.state === 'precopy') return (r.progress?.pass ?? 0) >= n ? r : undefined;
    if (['prechecking', 'reserved', 'authorizing', 'provisioning', 'preparing'].includes(r.state)) return undefined;
    throw new Error(`left pre-copy: ${r.state} ${JSON.stringify(r.error)}`);
  }, `${n} passes of ${id}`, 20_000);
}

const onlyAt = (hh: Harness, hostId: string) => runningOnlyAt(hh, hostId);

describe('controller: force-complete a running migration', () => {
  it('a copy that does not converge ends once forced (pause); recorded once, on the event stream, with the pause as a downtime warning', { timeout: 60_000 }, async () => {
    h = await startHarness();
    await h.addHost('A', DIRTY);
    await h.addHost('B');
    const res = await h.api('POST', '/v1/migrations', SLOW);
    expect(res.status).toBe(202);
    const id = res.body.id;
    const stream = follow(h, id);
    await passes(h, id, 3);
    // No body: the default, a pause (post-copy was not allowed).
    const f = await h.api('POST', `/v1/migrations/${id}/force-complete`);
    expect(f.status).toBe(202);
    expect(f.body.changes).toEqual([{ at: expect.any(String), by: 'admin', what: 'force-complete', mode: 'pause' }]);
    // Again, while it is in effect: accepted, recorded once.
    const again = await h.api('POST', `/v1/migrations/${id}/force-complete`, { mode: 'pause' });
    expect(again.status).toBe(202);
    expect(again.body.changes).toHaveLength(1);
    // The other way now: refused.
    const other = await h.api('POST', `/v1/migrations/${id}/force-complete`, { mode: 'postcopy' });
    expect(other.status).toBe(409);
    expect(other.body).toMatchObject({ code: 'VMTC_MIGRATION_NOT_FORCEABLE', details: { state: expect.any(String), reason: 'postcopy-not-allowed' } });

    const done = await h.waitState(id, ['completed', 'rolled_back', 'failed'], 20_000);
    expect({ state: done.state, error: done.error }).toEqual({ state: 'completed', error: null });
    expect(done.changes).toHaveLength(1);
    // The guest was paused from the force to the end of the copy, over the 50 ms asked for.
    const w = done.warnings.find((x: any) => x.code === 'VMTC_DOWNTIME_ABOVE_LIMIT');
    expect(w).toMatchObject({ details: { maxDowntimeMs: 50, forcedPauseMs: expect.any(Number) } });
    expect(w.details.downtimeMs).toBeGreaterThan(50);
    await onlyAt(h, 'B');
    await h.waitFor(() => stream.events.some((e) => e.event === 'end'), 'the end of the event stream');
    const forced = stream.events.filter((e) => e.event === 'forced');
    expect(forced.map((e) => e.data)).toEqual([{ migrationId: id, at: f.body.changes[0].at, by: 'admin', what: 'force-complete', mode: 'pause' }]);
  });

  it('post-copy when the migration started with it allowed: the copy switches and completes', { timeout: 60_000 }, async () => {
    h = await startHarness();
    await h.addHost('A', DIRTY);
    const b = await h.addHost('B');
    const res = await h.api('POST', '/v1/migrations', { ...SLOW, postcopy: true });
    const id = res.body.id;
    await passes(h, id, 2);
    const f = await h.api('POST', `/v1/migrations/${id}/force-complete`, {});
    expect(f.status).toBe(202);
    expect(f.body.changes).toMatchObject([{ what: 'force-complete', mode: 'postcopy' }]);
    const done = await h.waitState(id, ['completed', 'rolled_back', 'failed'], 20_000);
    expect({ state: done.state, error: done.error }).toEqual({ state: 'completed', error: null });
    // Straight from pre-copy to the switchover: no stop-and-copy pass.
    expect(done.transitions.map((t: any) => t.to)).not.toContain('stopcopy');
    expect(b.lastIncomingTuning('vm1')).toMatchObject({ postcopy: true });
    await onlyAt(h, 'B');
  });
});

describe('controller: force-complete after a restart', () => {
  it('a force the record holds but the source never confirmed (the controller restarted while asking) is asked again', { timeout: 60_000 }, async () => {
    h = await startHarness();
    await h.addHost('A', DIRTY);
    await h.addHost('B');
    const res = await h.api('POST', '/v1/migrations', SLOW);
    const id = res.body.id;
    await passes(h, id, 2);
    // What a controller killed between recording its intent and the source's answer leaves.
    const store = h.controller.store;
    store.saveCtx(id, { ...store.migration(id)!.ctx, forced: { mode: 'pause', at: Date.now(), by: 'admin' } }, Date.now());
    const f = await h.api('POST', `/v1/migrations/${id}/force-complete`);
    expect(f.status).toBe(202);
    expect(f.body.changes).toMatchObject([{ what: 'force-complete', mode: 'pause' }]);
    const done = await h.waitState(id, ['completed', 'rolled_back', 'failed'], 20_000);
    expect({ state: done.state, error: done.error }).toEqual({ state: 'completed', error: null });
  });
});

describe('controller: tune a running migration', () => {
  it('PATCH changes the limits the source runs with (read back from its driver); a higher downtime limit lets the copy converge', { timeout: 60_000 }, async () => {
    h = await startHarness();
    const a = await h.addHost('A', DIRTY);
    await h.addHost('B');
    const res = await h.api('POST', '/v1/migrations', SLOW);
    const id = res.body.id;
    const stream = follow(h, id);
    await passes(h, id, 2);
    expect(a.migrationLimits('vm1')).toEqual({ bandwidthMbps: 8, maxDowntimeMs: 50 });

    const t1 = await h.api('PATCH', `/v1/migrations/${id}`, { bandwidthMbps: 16 });
    expect(t1.status).toBe(200);
    expect(t1.body.tuning).toMatchObject({ bandwidthMbps: 16, maxDowntimeMs: 50 });
    expect(t1.body.changes).toEqual([{
      at: expect.any(String), by: 'admin', what: 'tune', limits: { bandwidthMbps: 16 }, previous: { bandwidthMbps: 8 }, reported: { bandwidthMbps: 16, maxDowntimeMs: 50 },
    }]);
    expect(a.migrationLimits('vm1')).toEqual({ bandwidthMbps: 16, maxDowntimeMs: 50 });
    // Twice the bandwidth is still half the dirty rate: it goes on copying.
    const before = (await h.api('GET', `/v1/migrations/${id}`)).body.progress.pass;
    await passes(h, id, before + 2);

    // 1 MiB at 2 MB/s fits in 5 s: the next pass is the stop-and-copy.
    const t2 = await h.api('PATCH', `/v1/migrations/${id}`, { maxDowntimeMs: 5000 });
    expect(t2.status).toBe(200);
    expect(t2.body.tuning).toMatchObject({ bandwidthMbps: 16, maxDowntimeMs: 5000 });
    expect(t2.body.changes.at(-1)).toMatchObject({ limits: { maxDowntimeMs: 5000 }, previous: { maxDowntimeMs: 50 }, reported: { bandwidthMbps: 16, maxDowntimeMs: 5000 } });
    const done = await h.waitState(id, ['completed', 'rolled_back', 'failed'], 20_000);
    expect({ state: done.state, error: done.error }).toEqual({ state: 'completed', error: null });
    expect(done.changes).toHaveLength(2);
    // Measured against the limit in effect (5000 ms), not the request's 50.
    expect(done.warnings.filter((x: any) => x.code === 'VMTC_DOWNTIME_ABOVE_LIMIT')).toEqual([]);
    await h.waitFor(() => stream.events.some((e) => e.event === 'end'), 'the end of the event stream');
    expect(stream.events.filter((e) => e.event === 'tuned').map((e) => e.data.limits)).toEqual([{ bandwidthMbps: 16 }, { maxDowntimeMs: 5000 }]);
  });
});

describe('controller: refusals', () => {
  it('codes for an unknown migration, a bad body, a reader, and a finished migration', async () => {
    h = await startHarness();
    await h.addHost('A', { vms: [vmSpec('vm1')] });
    await h.addHost('B');
    for (const [method, path, body] of [['POST', '/v1/migrations/mig_nope/force-complete', {}], ['PATCH', '/v1/migrations/mig_nope', { maxDowntimeMs: 10 }]] as const) {
      const r = await h.api(method, path, body);
      expect({ status: r.status, code: r.body.code }).toEqual({ status: 404, code: 'VMTC_MIGRATION_NOT_FOUND' });
    }
    const res = await h.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B' });
    const id = res.body.id;
    for (const body of [{}, { bandwidthMbps: 0 }, { maxDowntimeMs: 1.5 }, { bandwidthMbps: 10, extra: 1 }, 'x']) {
      const r = await h.api('PATCH', `/v1/migrations/${id}`, body);
      expect({ status: r.status, code: r.body.code }).toMatchObject({ status: 400, code: expect.stringMatching(/^VMTC_(VALIDATION|BAD_REQUEST)$/) });
    }
    const badMode = await h.api('POST', `/v1/migrations/${id}/force-complete`, { mode: 'harder' });
    expect({ status: badMode.status, code: badMode.body.code }).toEqual({ status: 400, code: 'VMTC_VALIDATION' });
    const cred = await h.api('POST', '/v1/credentials', { name: 'watcher', role: 'reader' });
    const asReader = await h.api('PATCH', `/v1/migrations/${id}`, { maxDowntimeMs: 10 }, cred.body.token);
    expect({ status: asReader.status, code: asReader.body.code }).toEqual({ status: 403, code: 'VMTC_FORBIDDEN' });

    expect((await h.waitState(id, ['completed', 'rolled_back', 'failed'])).state).toBe('completed');
    const f = await h.api('POST', `/v1/migrations/${id}/force-complete`);
    expect({ status: f.status, code: f.body.code, state: f.body.details?.state }).toEqual({ status: 409, code: 'VMTC_MIGRATION_NOT_FORCEABLE', state: 'completed' });
    const t = await h.api('PATCH', `/v1/migrations/${id}`, { bandwidthMbps: 10 });
    expect({ status: t.status, code: t.body.code, state: t.body.details?.state }).toEqual({ status: 409, code: 'VMTC_MIGRATION_NOT_TUNABLE', state: 'completed' });
    expect((await h.api('GET', `/v1/migrations/${id}`)).body.changes).toEqual([]);
  });

  it('from the switchover on: refused by the controller, and by the source agent if asked anyway', async () => {
    h = await startHarness();
    const hold = join(h.dir, 'hold.json');
    // TEST ONLY knob (agents/host/double-knobs.ts): the source holds between the controller's
    // continue and its final state, so the migration stays in 'switchover'.
    writeFileSync(hold, JSON.stringify({ hold: ['finalState'] }));
    await h.addHost('A', { vms: [vmSpec('vm1')], holdFile: hold } as DoubleDriverConfig);
    await h.addHost('B');
    const res = await h.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B', postcopy: true });
    const id = res.body.id;
    await h.waitState(id, ['switchover']);
    const f = await h.api('POST', `/v1/migrations/${id}/force-complete`, { mode: 'pause' });
    expect({ status: f.status, code: f.body.code, state: f.body.details?.state }).toEqual({ status: 409, code: 'VMTC_MIGRATION_NOT_FORCEABLE', state: 'switchover' });
    const t = await h.api('PATCH', `/v1/migrations/${id}`, { bandwidthMbps: 10 });
    expect({ status: t.status, code: t.body.code, state: t.body.details?.state }).toEqual({ status: 409, code: 'VMTC_MIGRATION_NOT_TUNABLE', state: 'switchover' });
    // The source agent agrees on the point of no return.
    const hub = h.controller.hub;
    await expect(hub.request('A', 'vm.tuneMigration', { vmId: 'vm1', migrationId: id, bandwidthMbps: 10 })).rejects.toMatchObject({ code: 'VMTC_HOST_VM_STATE', details: { reason: expect.stringMatching(/switchover/) } });
    await expect(hub.request('A', 'vm.forceComplete', { vmId: 'vm1', migrationId: id, mode: 'postcopy' })).rejects.toMatchObject({ code: 'VMTC_HOST_VM_STATE' });
    await expect(hub.request('A', 'vm.forceComplete', { vmId: 'vm1', migrationId: 'mig_other', mode: 'pause' })).rejects.toMatchObject({ code: 'VMTC_HOST_MIGRATION_NOT_FOUND' });
    await expect(hub.request('A', 'vm.tuneMigration', { vmId: 'vm1', migrationId: id } as never)).rejects.toMatchObject({ code: 'VMTC_HOST_BAD_PARAMS' });
    await expect(hub.request('A', 'vm.forceComplete', { vmId: 'vm1', migrationId: id, mode: 'harder' } as never)).rejects.toMatchObject({ code: 'VMTC_HOST_BAD_PARAMS', details: { field: 'mode' } });
    writeFileSync(hold, JSON.stringify({ hold: [] }));
    const done = await h.waitState(id, ['completed', 'rolled_back', 'failed']);
    expect(done.state).toBe('completed');
    expect(done.changes).toEqual([]);
  });
});

describe('controller: downtime against the limit asked for', () => {
  it('a committed migration whose measured downtime is over maxDowntimeMs carries VMTC_DOWNTIME_ABOVE_LIMIT; one without a limit does not', async () => {
    h = await startHarness();
    await h.addHost('A', { vms: [vmSpec('vm1')] });
    await h.addHost('B');
    // The stop-and-copy sends 64 KiB at 8 Mbit/s: about 65 ms, and the pause before the
    // switchover adds the controller's round trip.
    const tight = await h.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B', bandwidthMbps: 8, maxDowntimeMs: 1 });
    const first = await h.waitState(tight.body.id, ['completed', 'rolled_back', 'failed']);
    expect(first.state).toBe('completed');
    expect(first.result.downtimeMs).toBeGreaterThan(1);
    expect(first.warnings).toEqual([{ code: 'VMTC_DOWNTIME_ABOVE_LIMIT', message: expect.stringContaining('above the limit'), details: { downtimeMs: first.result.downtimeMs, maxDowntimeMs: 1, hypervisorDowntimeMs: first.result.downtimeMs } }]);
    await onlyAt(h, 'B');
    const free = await h.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'A', bandwidthMbps: 8 });
    const second = await h.waitState(free.body.id, ['completed', 'rolled_back', 'failed']);
    expect(second.state).toBe('completed');
    expect(second.warnings).toEqual([]);
  });
});
