// The controller against real host agents (DoubleDriver hypervisor test double, real mutual-TLS
// WebSocket links, real TCP migration streams), over its real REST API.
import { describe, it, expect, afterEach, vi } from 'vitest';
import { startHarness, vmSpec, type Harness } from '../helpers/controller-harness.ts';

let h: Harness | undefined;
afterEach(async () => { await h?.close(); h = undefined; });

describe('controller: live migration through the state machine', () => {
  it('migrates a VM from A to B: pre-checks, every transition recorded, VM ends at B only', async () => {
    h = await startHarness();
    await h.addHost('A', { vms: [vmSpec('vm1')] });
    await h.addHost('B');
    const res = await h.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B', mode: 'live', maxDowntimeMs: 300, bandwidthMbps: 800 });
    expect(res.status).toBe(202);
    expect(res.body.sourceHostId).toBe('A');
    const done = await h.waitState(res.body.id, ['completed', 'rolled_back', 'failed']);
    expect(done.state).toBe('completed');
    const states = done.transitions.map((t: any) => t.to);
    expect(states).toEqual(['prechecking', 'reserved', 'authorizing', 'provisioning', 'preparing', 'precopy', 'stopcopy', 'switchover', 'committing', 'activating', 'cleanup', 'completed']);
    expect(done.steps.token).toEqual({ skipped: 'no AAA configured' });
    expect(done.progress.status).toBeDefined();
    expect(Object.keys(done.timings)).toContain('precopy');
    const vms = (await h.api('GET', '/v1/vms')).body.vms.filter((v: any) => v.vmId === 'vm1');
    await h.waitFor(async () => {
      const list = (await h!.api('GET', '/v1/vms')).body.vms.filter((v: any) => v.vmId === 'vm1');
      return list.length === 1 && list[0].hostId === 'B' && list[0].state === 'running';
    }, 'vm1 only at B', 5000);
    expect(vms.length).toBeGreaterThan(0);
    // The hold is gone: B's used memory is the VM itself, nothing held.
    const b = (await h.api('GET', '/v1/hosts/B')).body;
    expect(b.held.memoryMb).toBe(0);
    expect(b.used.memoryMb).toBe(256);
    expect(b.byProject.demo.vms).toBe(1);
  });

  it('cancel during pre-copy leaves the VM running at the source and nothing at the destination', async () => {
    h = await startHarness();
    await h.addHost('A', { vms: [vmSpec('vm1', { memoryMb: 2048 })], bytesPerMb: 64 * 1024 });
    await h.addHost('B');
    const res = await h.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B', bandwidthMbps: 2 });
    expect(res.status).toBe(202);
    await h.waitState(res.body.id, ['precopy']);
    const c = await h.api('POST', `/v1/migrations/${res.body.id}/cancel`);
    expect(c.status).toBe(202);
    const done = await h.waitState(res.body.id, ['cancelled', 'rolled_back', 'failed']);
    expect(done.state).toBe('cancelled');
    expect(done.error.code).toBe('VMTC_CANCELLED');
    await h.waitFor(async () => {
      const list = (await h!.api('GET', '/v1/vms')).body.vms.filter((v: any) => v.vmId === 'vm1');
      return list.length === 1 && list[0].hostId === 'A' && list[0].state === 'running';
    }, 'vm1 running only at A');
    expect((await h.api('GET', '/v1/hosts/B')).body.held.memoryMb).toBe(0);
    // Cancelling a finished migration is an illegal transition with its own code.
    const again = await h.api('POST', `/v1/migrations/${res.body.id}/cancel`);
    expect(again.status).toBe(409);
    expect(again.body.code).toBe('VMTC_MIGRATION_NOT_CANCELLABLE');
    expect(again.body.details.state).toBe('cancelled');
  });

  it('a migration stream that breaks rolls back: source resumed, destination cleaned', async () => {
    h = await startHarness();
    await h.addHost('A', { vms: [vmSpec('vm1')], failures: { failMigrateAfterBytes: 100_000 } });
    await h.addHost('B');
    const res = await h.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B' });
    const done = await h.waitState(res.body.id, ['completed', 'rolled_back', 'failed']);
    expect(done.state).toBe('rolled_back');
    expect(done.error.code).toMatch(/^VMTC_/);
    // Agents report inventory changes asynchronously: wait for the destination's copy to go.
    await h.waitFor(async () => {
      const list = (await h!.api('GET', '/v1/vms')).body.vms.filter((v: any) => v.vmId === 'vm1');
      return list.length === 1 && list[0].hostId === 'A' && list[0].state === 'running';
    }, 'vm1 running only at A');
  });

  it('sends each migration its own tuning, to both ends, and never stores it in the VM\'s spec', async () => {
    h = await startHarness();
    await h.addHost('A', { vms: [vmSpec('vm1')] });
    await h.addHost('B');
    // What the controller asks of the agents (the double driver does not say what tuning it got).
    const hub = h.controller.hub;
    const asked: { hostId: string; method: string; params: any }[] = [];
    const request = hub.request.bind(hub);
    const spy = vi.spyOn(hub, 'request').mockImplementation(((hostId: string, method: string, params: unknown, t?: number) => {
      asked.push({ hostId, method, params });
      return request(hostId as never, method as never, params as never, t);
    }) as typeof hub.request);
    try {
      const move = async (from: string, to: string, flags: Record<string, unknown>) => {
        // Agents report inventory changes asynchronously: the VM must be seen at `from` only.
        await h!.waitFor(async () => {
          const list = (await h!.api('GET', '/v1/vms')).body.vms.filter((v: any) => v.vmId === 'vm1');
          return list.length === 1 && list[0].hostId === from && list[0].state === 'running';
        }, `vm1 running only at ${from}`);
        asked.length = 0;
        const res = await h!.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: to, ...flags });
        expect((await h!.waitState(res.body.id, ['completed', 'rolled_back', 'failed'])).state).toBe('completed');
        const prepare = asked.find((a) => a.method === 'vm.prepareIncoming')!;
        const migrate = asked.find((a) => a.method === 'vm.migrate')!;
        const atDestination = await hub.request(to, 'vm.describe', { vmId: 'vm1' });
        return { id: res.body.id, prepare, migrate, atDestination };
      };
      const first = await move('A', 'B', { multifd: true, postcopy: true, maxDowntimeMs: 300 });
      expect(first.prepare).toMatchObject({ hostId: 'B', params: { tuning: { multifd: true, postcopy: true, maxDowntimeMs: 300 } } });
      expect(first.migrate).toMatchObject({ hostId: 'A', params: { params: { migrationId: first.id, multifd: true, postcopy: true, maxDowntimeMs: 300 } } });
      expect(first.migrate.params.params).not.toHaveProperty('copyStorage');
      expect(first.prepare.params.spec.extra?.migration).toBeUndefined();
      expect(first.atDestination.spec.extra?.migration).toBeUndefined();
      // The next migration carries none of the first one's flags, in its tuning or in the spec.
      const second = await move('B', 'A', { bandwidthMbps: 50 });
      expect(second.prepare).toMatchObject({ hostId: 'A', params: { tuning: { bandwidthMbps: 50 } } });
      expect(second.prepare.params.tuning).toEqual({ bandwidthMbps: 50 });
      expect(second.migrate.params.params).toEqual({ migrationId: second.id, bandwidthMbps: 50 });
      // multifd asked without a count: the controller sizes the streams to the lightpath, the
      // same at both ends (src/controller/migration/tuning-default.ts).
      const third = await move('A', 'B', { bandwidthMbps: 500, multifd: true });
      expect(third.prepare.params.tuning).toEqual({ bandwidthMbps: 500, multifd: true, multifdChannels: 6 });
      expect(third.migrate.params.params).toEqual({ migrationId: third.id, bandwidthMbps: 500, multifd: true, multifdChannels: 6 });
      expect(second.prepare.params.spec.extra?.migration).toBeUndefined();
      expect(second.atDestination.spec.extra?.migration).toBeUndefined();
    } finally {
      spy.mockRestore();
    }
  });

  it('a destination agent that stays away fails the migration with VMTC_AGENT_LOST and rolls back', async () => {
    h = await startHarness({ runner: { statusPollMs: 200, destinationRunTimeoutMs: 5000, agentLostMs: 400 } });
    await h.addHost('A', { vms: [vmSpec('vm1', { memoryMb: 2048 })], bytesPerMb: 64 * 1024 });
    await h.addHost('B');
    const res = await h.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B', bandwidthMbps: 2 });
    await h.waitState(res.body.id, ['precopy']);
    // B's agent goes away but its hypervisor keeps receiving: only the controller's link is lost.
    await h.agents.get('B')!.agent.close();
    const done = await h.waitState(res.body.id, ['completed', 'rolled_back', 'failed', 'cancelled']);
    expect(done.state).toBe('rolled_back');
    expect(done.error).toMatchObject({ code: 'VMTC_AGENT_LOST', details: { hostId: 'B', role: 'destination', state: 'precopy' } });
    // The source never finished sending, so it was safe to resume it although B could not be cleaned.
    expect(done.warnings.map((w: any) => w.details?.step)).toContain('destroy-destination');
    const atA = await h.controller.hub.request('A', 'vm.describe', { vmId: 'vm1' });
    expect(atA.state).toBe('running');
  });
});

describe('controller: pre-checks through REST, each with its own code, changing nothing', () => {
  it('gives the right code for each failing check', async () => {
    h = await startHarness();
    await h.addHost('A', { vms: [vmSpec('vm1'), vmSpec('big', { memoryMb: 8192 }), vmSpec('wide', { vcpus: 6 }), vmSpec('fat', { diskGb: 400 })], sharedStorage: false, version: '7.2.0' });
    await h.addHost('B', { memoryMb: 4096, cpu: { model: 'd', features: ['sse2', 'sse4_2', 'avx'], vcpus: 4 }, diskGb: 100, sharedStorage: false, version: '7.2.0' });
    await h.addHost('OLD', { version: '6.0.0' });
    await h.addHost('C');
    await h.controller.hub.request('A', 'vm.stop', { vmId: 'wide' });
    await h.waitFor(() => h!.controller.hub.inventory('A')?.vms.find((v) => v.vmId === 'wide')?.state === 'stopped', 'wide stopped');
    const post = (b: Record<string, unknown>) => h!.api('POST', '/v1/migrations', { mode: 'live', ...b });
    const cases: [Record<string, unknown>, number, string][] = [
      [{ vmId: 'nope', destinationHostId: 'B' }, 404, 'VMTC_VM_NOT_FOUND'],
      [{ vmId: 'vm1', destinationHostId: 'ZZ' }, 404, 'VMTC_HOST_NOT_FOUND'],
      [{ vmId: 'vm1', destinationHostId: 'A' }, 409, 'VMTC_SAME_HOST'],
      [{ vmId: 'big', destinationHostId: 'B' }, 409, 'VMTC_INSUFFICIENT_MEMORY'],
      [{ vmId: 'fat', destinationHostId: 'B' }, 409, 'VMTC_INSUFFICIENT_DISK'],
      [{ vmId: 'vm1', destinationHostId: 'OLD' }, 409, 'VMTC_HYPERVISOR_VERSION_INCOMPATIBLE'],
      [{ vmId: 'wide', destinationHostId: 'B' }, 409, 'VMTC_VM_NOT_RUNNING'],
    ];
    for (const [body, status, code] of cases) {
      const r = await post(body);
      expect({ body, status: r.status, code: r.body.code }).toEqual({ body, status, code });
    }
    // Nothing was created by the refused requests.
    expect((await h.api('GET', '/v1/migrations')).body.migrations).toHaveLength(0);
    // vCPUs: start a 4-vCPU-wide VM elsewhere and ask for more than B has left.
    await h.controller.hub.request('A', 'vm.start', { spec: vmSpec('cpu5', { vcpus: 5, memoryMb: 64 }) });
    await h.waitFor(() => h!.controller.hub.inventory('A')?.vms.some((v) => v.vmId === 'cpu5'), 'cpu5 in inventory');
    const r = await post({ vmId: 'cpu5', destinationHostId: 'B' });
    expect(r.body.code).toBe('VMTC_INSUFFICIENT_VCPUS');
    // A destination that is known but disconnected.
    await h.stopHost('C');
    await h.waitFor(() => !h!.controller.hub.isConnected('C'), 'C disconnected');
    const dc = await post({ vmId: 'vm1', destinationHostId: 'C' });
    expect(dc.body.code).toBe('VMTC_HOST_NOT_CONNECTED');
  });

  it('refuses a second migration of a VM in flight, and honours requestId idempotency', async () => {
    h = await startHarness();
    await h.addHost('A', { vms: [vmSpec('vm1', { memoryMb: 1024 })], bytesPerMb: 64 * 1024 });
    await h.addHost('B');
    const body = { vmId: 'vm1', destinationHostId: 'B', bandwidthMbps: 2, requestId: 'req-1' };
    const first = await h.api('POST', '/v1/migrations', body);
    expect(first.status).toBe(202);
    const dup = await h.api('POST', '/v1/migrations', body);
    expect(dup.status).toBe(200);
    expect(dup.body.id).toBe(first.body.id);
    const conflict = await h.api('POST', '/v1/migrations', { ...body, bandwidthMbps: 3 });
    expect(conflict.body.code).toBe('VMTC_IDEMPOTENCY_CONFLICT');
    const second = await h.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B' });
    expect(second.status).toBe(409);
    expect(second.body.code).toBe('VMTC_MIGRATION_IN_FLIGHT');
    await h.api('POST', `/v1/migrations/${first.body.id}/cancel`);
    await h.waitState(first.body.id, ['cancelled']);
  });

  it('concurrent requests never overcommit the destination', async () => {
    h = await startHarness();
    const vms = Array.from({ length: 8 }, (_, i) => vmSpec(`v${i}`, { memoryMb: 1024 }));
    await h.addHost('A', { vms, memoryMb: 65536, bytesPerMb: 64 * 1024 });
    // Room for exactly three of them.
    await h.addHost('B', { memoryMb: 3 * 1024 + 512 });
    const results = await Promise.all(vms.map((v) => h!.api('POST', '/v1/migrations', { vmId: v.vmId, destinationHostId: 'B', bandwidthMbps: 2 })));
    const accepted = results.filter((r) => r.status === 202);
    const refused = results.filter((r) => r.status !== 202);
    expect(accepted).toHaveLength(3);
    expect(refused.map((r) => r.body.code)).toEqual(Array(5).fill('VMTC_INSUFFICIENT_MEMORY'));
    const b = (await h.api('GET', '/v1/hosts/B')).body;
    expect(b.held.memoryMb).toBe(3 * 1024);
    expect(b.available.memoryMb).toBe(512);
    for (const r of accepted) await h.api('POST', `/v1/migrations/${r.body.id}/cancel`);
    for (const r of accepted) await h.waitState(r.body.id, ['cancelled']);
    expect((await h.api('GET', '/v1/hosts/B')).body.held.memoryMb).toBe(0);
  });
});

describe('controller: following a migration as server-sent events', () => {
  /** Read an SSE stream until `until` says stop (or it ends); returns the events in order. */
  async function readEvents(res: Response, until: (e: { event: string; data: any }) => boolean, timeoutMs = 20_000) {
    const events: { event: string; data: any }[] = [];
    const reader = res.body!.getReader();
    const dec = new TextDecoder();
    let buf = '';
    const deadline = Date.now() + timeoutMs;
    try {
      for (;;) {
        if (Date.now() > deadline) throw new Error(`no end of stream; got ${events.map((e) => e.event).join(',')}`);
        const { value, done } = await reader.read();
        if (done) return events;
        buf += dec.decode(value, { stream: true });
        let i: number;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const ev = /^event: (.+)$/m.exec(block)?.[1];
          const data = /^data: (.+)$/m.exec(block)?.[1];
          if (!ev || !data) continue;
          const e = { event: ev, data: JSON.parse(data) };
          events.push(e);
          if (until(e)) return events;
        }
      }
    } finally {
      await reader.cancel().catch(() => undefined);
    }
  }

  it('streams a snapshot, every transition, progress and the end, then closes', async () => {
    h = await startHarness();
    await h.addHost('A', { vms: [vmSpec('vm1', { memoryMb: 1024 })], bytesPerMb: 16 * 1024 });
    await h.addHost('B');
    const m = await h.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B', bandwidthMbps: 40 });
    expect(m.status).toBe(202);
    const res = await fetch(`${h.controller.url}/v1/migrations/${m.body.id}/events`, { headers: { authorization: `Bearer ${h.controller.adminToken}` } });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('text/event-stream');
    const events = await readEvents(res, () => false);
    expect(events[0]!.event).toBe('snapshot');
    expect(events.at(-1)!.event).toBe('end');
    expect(events.at(-1)!.data.state).toBe('completed');
    expect(events.some((e) => e.event === 'progress' && e.data.totalBytes > 0)).toBe(true);
    // The transitions seen after the snapshot are exactly the record's, in order, without gaps.
    const snapshotSeqs = events[0]!.data.transitions.map((t: any) => t.seq);
    const streamed = events.filter((e) => e.event === 'transition').map((e) => e.data.seq);
    const all = events.at(-1)!.data.transitions.map((t: any) => t.seq);
    expect([...snapshotSeqs, ...streamed]).toEqual(all);
    expect(events.filter((e) => e.event === 'transition').map((e) => e.data.to)).toContain('committing');
  });

  it('ends at once for a finished migration; refuses unknown ids and missing credentials', async () => {
    h = await startHarness();
    await h.addHost('A', { vms: [vmSpec('vm1')] });
    await h.addHost('B');
    const m = await h.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B' });
    await h.waitState(m.body.id, ['completed']);
    const res = await fetch(`${h.controller.url}/v1/migrations/${m.body.id}/events`, { headers: { authorization: `Bearer ${h.controller.adminToken}` } });
    const events = await readEvents(res, () => false);
    expect(events.map((e) => e.event)).toEqual(['snapshot', 'end']);
    const unknown = await fetch(`${h.controller.url}/v1/migrations/mig_nope/events`, { headers: { authorization: `Bearer ${h.controller.adminToken}` } });
    expect(unknown.status).toBe(404);
    expect(((await unknown.json()) as any).code).toBe('VMTC_MIGRATION_NOT_FOUND');
    const anon = await fetch(`${h.controller.url}/v1/migrations/${m.body.id}/events`);
    expect(anon.status).toBe(401);
  });

  it('a controller that closes ends the open streams instead of hanging', async () => {
    h = await startHarness();
    await h.addHost('A', { vms: [vmSpec('vm1', { memoryMb: 2048 })], bytesPerMb: 64 * 1024 });
    await h.addHost('B');
    const m = await h.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B', bandwidthMbps: 2 });
    const res = await fetch(`${h.controller.url}/v1/migrations/${m.body.id}/events`, { headers: { authorization: `Bearer ${h.controller.adminToken}` } });
    // Keep reading (the client does not go away) while the controller closes: the server must
    // end the stream itself, and close() must return.
    const reading = readEvents(res, () => false, 15_000);
    await h.waitState(m.body.id, ['precopy']);
    const closed = await Promise.race([h.controller.close().then(() => 'closed'), new Promise((r) => setTimeout(() => r('close hung'), 10_000))]);
    expect(closed).toBe('closed');
    const events = await reading;
    expect(events[0]!.event).toBe('snapshot');
    expect(events.at(-1)!.event).not.toBe('end');
  });
});
