// Migration policies with a real controller and real host agents (DoubleDriver hypervisor test
// double with a dirty guest, agents/host/double-copy.ts: each pass as big as the memory, so the
// copy never converges by itself): a VM group's policy set over the API fires on no progress,
// raises the downtime limit step by step through the source agent and then cancels; a request's
// policy raises it until the copy converges and completes. Each firing is in the record, on the
// migration's event stream (`policy`), in its transitions (the cancel) and in the metrics.
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

// 256 MiB at the harness's 4096 bytes per MiB: 1 MiB on the wire, a pass of about 1.05 s at
// 8 Mbit/s. The guest dirties 32 Mbit/s: every pass is the whole memory again.
const DIRTY: DoubleDriverConfig = { vms: [vmSpec('vm1')], dirtyMbps: 32 };
const SLOW = { vmId: 'vm1', destinationHostId: 'B', mode: 'live', bandwidthMbps: 8, maxDowntimeMs: 50 };

const follow = (hh: Harness, id: string) => followMigrationEvents(hh, id, streams);

const onlyAt = (hh: Harness, hostId: string) => runningOnlyAt(hh, hostId);

describe('migration policy: a copy that does not converge is handled as its policy says', () => {
  it("a group's progress timeout raises the downtime limit step by step, then cancels: recorded, streamed, counted; the VM stays at its source", { timeout: 60_000 }, async () => {
    h = await startHarness();
    await h.addHost('A', DIRTY);
    await h.addHost('B');
    const put = await h.api('PUT', '/v1/policies/slow-wan', { policy: { progressTimeoutS: 2, onTimeout: ['raise-downtime', 'postcopy', 'cancel'], downtimeStepMs: 20, maxDowntimeMs: 90 }, vmIds: ['vm1'] });
    expect(put.status).toBe(200);
    expect(put.body).toMatchObject({ group: 'slow-wan', vmIds: ['vm1'], policy: { progressTimeoutS: 2 } });
    expect((await h.api('GET', '/v1/policies')).body.groups.map((g: any) => g.group)).toEqual(['slow-wan']);

    const res = await h.api('POST', '/v1/migrations', SLOW);
    expect(res.status).toBe(202);
    const id = res.body.id;
    const stream = follow(h, id);
    const end = await h.waitState(id, ['cancelled', 'rolled_back', 'failed', 'completed'], 40_000);
    expect(end.state).toBe('cancelled');
    expect(end.error).toMatchObject({ code: 'VMTC_MIGRATION_POLICY_TIMEOUT', details: { trigger: 'progress', timeoutS: 2 } });

    // The record: the policy in effect and where each field came from, and every firing.
    expect(end.policy.policy).toMatchObject({ progressTimeoutS: 2, downtimeStepMs: 20, maxDowntimeMs: 90, completionTimeoutPerGiBS: 0 });
    expect(end.policy.from).toMatchObject({ progressTimeoutS: 'group:slow-wan', completionTimeoutPerGiBS: 'default' });
    expect(end.policy.fired.map((f: any) => [f.trigger, f.action, f.outcome, f.maxDowntimeMs])).toEqual([
      ['progress', 'raise-downtime', 'done', 70],
      ['progress', 'raise-downtime', 'done', 90],
      ['progress', 'cancel', 'done', undefined],
    ]);
    // Post-copy was listed but the copy did not start with it allowed: skipped, with why.
    expect(end.policy.fired[2].skipped).toEqual([{ action: 'postcopy', reason: expect.stringContaining('postcopy: true') }]);
    for (const f of end.policy.fired) expect(f.waitedMs).toBeGreaterThanOrEqual(2000);
    // The raises went through the source agent (the limits it read back), by `policy`.
    expect(end.changes.map((c: any) => [c.by, c.what, c.limits?.maxDowntimeMs, c.reported?.maxDowntimeMs])).toEqual([['policy', 'tune', 70, 70], ['policy', 'tune', 90, 90]]);
    expect(end.tuning.maxDowntimeMs).toBe(90);
    // The cancel's transition says the policy did it.
    const cancel = end.transitions.find((t: any) => t.event === 'CANCEL');
    expect(cancel.detail.policy).toMatchObject({ trigger: 'progress', action: 'cancel' });

    // The stream: a `policy` event for each firing, the tunes among them, before the end.
    await h.waitFor(() => stream.events.some((e) => e.event === 'end'), 'the end of the stream');
    const names = stream.events.map((e) => e.event).filter((n) => n === 'policy' || n === 'tuned' || n === 'end');
    expect(names).toEqual(['tuned', 'policy', 'tuned', 'policy', 'policy', 'end']);
    expect(stream.events.filter((e) => e.event === 'policy').map((e) => [e.data.migrationId, e.data.action])).toEqual([[id, 'raise-downtime'], [id, 'raise-downtime'], [id, 'cancel']]);

    const metrics = await fetch(`${h.controller.url}/metrics`, { headers: { authorization: `Bearer ${h.controller.adminToken}` } }).then((r) => r.text());
    expect(metrics).toMatch(/^vmtc_migration_policy_actions_total\{trigger="progress",action="raise-downtime",outcome="done"[^}]*\} 2$/m);
    expect(metrics).toMatch(/^vmtc_migration_policy_actions_total\{trigger="progress",action="cancel",outcome="done"[^}]*\} 1$/m);
    await onlyAt(h, 'A');
  });

  it("a request's policy raises the limit until the copy fits in it, and the migration completes", { timeout: 60_000 }, async () => {
    h = await startHarness();
    // 16 Mbit/s dirty, twice the copy's 8: every pass is still the whole memory (~1.05 s to send).
    await h.addHost('A', { vms: [vmSpec('vm1')], dirtyMbps: 16 });
    await h.addHost('B');
    const res = await h.api('POST', '/v1/migrations', { ...SLOW, policy: { progressTimeoutS: 2, onTimeout: ['raise-downtime', 'cancel'], downtimeStepMs: 600, maxDowntimeMs: 1300 } });
    expect(res.status).toBe(202);
    const end = await h.waitState(res.body.id, ['cancelled', 'rolled_back', 'failed', 'completed'], 40_000);
    expect(end.state).toBe('completed');
    expect(end.policy.from.progressTimeoutS).toBe('request');
    expect(end.policy.fired.map((f: any) => [f.action, f.maxDowntimeMs])).toEqual([['raise-downtime', 650], ['raise-downtime', 1250]]);
    await onlyAt(h, 'B');
  });

  it("auto-converge throttling the guest hard is never silent: the default policy warns once it passes 50 %, on the record and the stream", { timeout: 60_000 }, async () => {
    h = await startHarness();
    await h.addHost('A', DIRTY);
    await h.addHost('B');
    // No policy anywhere: the defaults. The double throttles as QEMU does (20 %, +10 a pass, 99 % at most).
    const res = await h.api('POST', '/v1/migrations', { ...SLOW, autoConverge: true });
    expect(res.status).toBe(202);
    const stream = follow(h, res.body.id);
    const end = await h.waitState(res.body.id, ['cancelled', 'rolled_back', 'failed', 'completed'], 40_000);
    expect(end.state).toBe('completed');
    expect(end.policy.from.throttleWarnPercent).toBe('default');
    expect(end.policy.fired).toEqual([{ at: expect.any(String), trigger: 'throttle', action: 'warn', outcome: 'done', cpuThrottlePercent: 50, reason: expect.stringContaining('50 %') }]);
    expect(end.warnings.filter((w: any) => w.code === 'VMTC_MIGRATION_THROTTLED').map((w: any) => w.details)).toEqual([{ cpuThrottlePercent: 50, throttleWarnPercent: 50 }]);
    // The copy's progress carries the throttle as the source reports it.
    await h.waitFor(() => stream.events.some((e) => e.event === 'end'), 'the end of the stream');
    expect(stream.events.filter((e) => e.event === 'policy').map((e) => [e.data.action, e.data.cpuThrottlePercent])).toEqual([['warn', 50]]);
    expect(Math.max(...stream.events.filter((e) => e.event === 'progress').map((e) => e.data.cpuThrottlePercent ?? 0))).toBeGreaterThanOrEqual(50);
    await onlyAt(h, 'B');
  });

  it('bad policies are refused with a coded error: over the API and in a migration request', async () => {
    h = await startHarness();
    const bad = await h.api('PUT', '/v1/policies/g1', { policy: { onTimeout: ['cancel', 'raise-downtime'] } });
    expect({ status: bad.status, code: bad.body.code, field: bad.body.details?.field }).toEqual({ status: 400, code: 'VMTC_POLICY_INVALID', field: 'onTimeout' });
    const unknown = await h.api('PUT', '/v1/policies/g1', { policy: { onTimeout: ['reboot'] } });
    expect(unknown.status).toBe(400);
    expect((await h.api('PUT', '/v1/policies/Bad Name', { policy: {} })).status).toBe(400);
    expect((await h.api('GET', '/v1/policies/nope')).body.code).toBe('VMTC_POLICY_GROUP_NOT_FOUND');
    expect((await h.api('DELETE', '/v1/policies/nope')).status).toBe(404);
    await h.addHost('A', { vms: [vmSpec('vm1')] });
    await h.addHost('B');
    const req = await h.api('POST', '/v1/migrations', { ...SLOW, policy: { onTimeout: ['cancel', 'postcopy'] } });
    expect({ status: req.status, code: req.body.code, where: req.body.details?.where }).toEqual({ status: 400, code: 'VMTC_POLICY_INVALID', where: 'request' });
    expect((await h.api('GET', '/v1/migrations')).body.migrations).toEqual([]);
    // A reader may look, not change.
    const reader = (await h.api('POST', '/v1/credentials', { name: 'watcher', role: 'reader' })).body.token;
    expect((await h.api('PUT', '/v1/policies/g1', { policy: { progressTimeoutS: 30 } }, reader)).body.code).toBe('VMTC_FORBIDDEN');
    const put = await h.api('PUT', '/v1/policies/g1', { policy: { progressTimeoutS: 30 } });
    expect(put.status).toBe(200);
    expect((await h.api('GET', '/v1/policies/g1', undefined, reader)).body).toMatchObject({ group: 'g1', policy: { progressTimeoutS: 30 }, vmIds: [] });
    expect((await h.api('DELETE', '/v1/policies/g1')).status).toBe(204);
    expect((await h.api('GET', '/v1/policies/g1')).status).toBe(404);
  });
});
