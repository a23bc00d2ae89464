// The controller's event streams resume without a gap: a real controller and two host agents on
// the hypervisor test double, a migration slow enough to be caught in pre-copy, a client that
// disconnects there, a cancel (and an agent going away) while it is gone, and the same client
// reconnecting with the id of the last event it read. The transitions it saw across both
// connections are exactly the record's, none twice; for one migration
// (GET /v1/migrations/:id/events) and for the fleet (GET /v1/events, with agents' links too).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createParser } from 'eventsource-parser';
import { startHarness, vmSpec, type Harness } from '../helpers/controller-harness.ts';

let h: Harness;
const startedAt = new Date().toISOString();

interface Ev { event: string; id: string | undefined; data: any }

/**
 * Read a stream until `done` says so (then disconnect), or it ends; bounded by timeoutMs. Returns
 * the status and, for a refusal, its body. `onOpen` runs once the stream's headers are in (the
 * controller has fixed where the stream starts).
 */
async function follow(path: string, done: (e: Ev, all: Ev[]) => boolean, headers: Record<string, string> = {}, onOpen?: () => Promise<void>, timeoutMs = 20_000): Promise<{ status: number; events: Ev[]; body?: any }> {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(new Error(`stream ${path} did not finish in ${timeoutMs} ms`)), timeoutMs);
  const events: Ev[] = [];
  try {
    const res = await fetch(h.controller.url + path, { headers: { authorization: `Bearer ${h.controller.adminToken}`, ...headers }, signal: abort.signal });
    if (res.status !== 200) return { status: res.status, events, body: await res.json() };
    expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/);
    await onOpen?.();
    let stop = false;
    const parser = createParser({
      onEvent: (m) => {
        if (stop) return;
        const e = { event: m.event ?? 'message', id: m.id, data: JSON.parse(m.data) };
        events.push(e);
        if (done(e, events)) stop = true;
      },
    });
    const reader = res.body!.getReader();
    const text = new TextDecoder();
    while (!stop) {
      const { value, done: ended } = await reader.read();
      if (ended) break;
      parser.feed(text.decode(value, { stream: true }));
    }
    abort.abort();
    return { status: 200, events };
  } finally {
    clearTimeout(timer);
  }
}

const transitions = (evs: Ev[]) => evs.filter((e) => e.event === 'transition');

beforeAll(async () => {
  h = await startHarness();
  // 1 GiB at 2 Mbit/s: the copy stays in pre-copy until it is cancelled.
  await h.addHost('A', { vms: [vmSpec('vm1', { memoryMb: 1024 }), vmSpec('vm2', { memoryMb: 1024 })], bytesPerMb: 64 * 1024 });
  await h.addHost('B');
});
afterAll(async () => { await h?.close(); });

describe('GET /v1/migrations/:id/events', () => {
  it('gives every event an id; a client that reconnects with Last-Event-ID misses no transition and sees none twice', async () => {
    const m = await h.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B', bandwidthMbps: 2 });
    expect(m.status).toBe(202);
    const id = m.body.id as string;
    const path = `/v1/migrations/${id}/events`;

    // First connection: the snapshot, then transitions up to pre-copy; then the client goes away.
    const first = await follow(path, (e) => e.event === 'transition' && e.data.to === 'precopy');
    expect(first.events[0]!.event).toBe('snapshot');
    expect(first.events.every((e) => typeof e.id === 'string' && e.id !== '')).toBe(true);
    const lastId = first.events.at(-1)!.id!;

    // While it is away the migration is cancelled and rolls back.
    expect((await h.api('POST', `/v1/migrations/${id}/cancel`)).status).toBe(202);
    const rec = await h.waitState(id, ['cancelled']);

    // Second connection, resuming: no snapshot, the missed transitions, the end.
    const second = await follow(path, (e) => e.event === 'end', { 'last-event-id': lastId });
    expect(second.events.map((e) => e.event)).not.toContain('snapshot');
    expect(second.events.at(-1)).toMatchObject({ event: 'end', data: { id, state: 'cancelled' } });
    expect(second.events.every((e) => typeof e.id === 'string' && e.id !== '')).toBe(true);
    expect(transitions(second.events).length).toBeGreaterThan(0);

    // The union is the record: what the snapshot held, then every transition once, in order.
    const seen = [
      ...first.events[0]!.data.transitions.map((t: { seq: number }) => t.seq),
      ...transitions(first.events).map((e) => e.data.seq),
      ...transitions(second.events).map((e) => e.data.seq),
    ];
    expect(seen).toEqual(rec.transitions.map((t: { seq: number }) => t.seq));
    expect(transitions(second.events).map((e) => e.data.to)).toContain('cancelled');

    // ?lastEventId= does the same for clients that cannot set the header.
    const third = await follow(`${path}?lastEventId=${encodeURIComponent(first.events[0]!.id!)}`, (e) => e.event === 'end');
    expect([...first.events[0]!.data.transitions.map((t: { seq: number }) => t.seq), ...transitions(third.events).map((e) => e.data.seq)])
      .toEqual(rec.transitions.map((t: { seq: number }) => t.seq));
  });

  it('refuses an id it never sends with a coded 400, before the stream starts', async () => {
    const any = (await h.api('GET', '/v1/migrations?limit=1')).body.migrations[0].id;
    for (const bad of ['abc', '-1', '1.2.3.4', '9'.repeat(40)]) {
      const r = await follow(`/v1/migrations/${any}/events`, () => true, { 'last-event-id': bad });
      expect({ bad, status: r.status, code: r.body?.code }).toEqual({ bad, status: 400, code: 'VMTC_EVENT_ID_INVALID' });
    }
    const q = await follow(`/v1/migrations/${any}/events?lastEventId=x`, () => true);
    expect(q).toMatchObject({ status: 400, body: { code: 'VMTC_EVENT_ID_INVALID' } });
  });
});

describe('GET /v1/events', () => {
  it('sends every migration\'s transitions and agents\' links with ids, and resumes after a disconnect without a gap', async () => {
    await h.addHost('C');
    // Connected before the migration exists (it is created once the stream is open): from
    // its first transition on, everything.
    let migrationId: string | undefined;
    const first = await follow('/v1/events', (e) => e.event === 'transition' && e.data.vmId === 'vm2' && e.data.to === 'precopy', {}, async () => {
      const m = await h.api('POST', '/v1/migrations', { vmId: 'vm2', destinationHostId: 'B', bandwidthMbps: 2 });
      expect(m.status).toBe(202);
      migrationId = m.body.id;
    });
    expect(first.events.every((e) => typeof e.id === 'string' && /^\d+\.\d+$/.test(e.id!))).toBe(true);
    const lastId = first.events.at(-1)!.id!;

    // Away: the migration is cancelled and agent C goes.
    expect((await h.api('POST', `/v1/migrations/${migrationId}/cancel`)).status).toBe(202);
    const rec = await h.waitState(migrationId!, ['cancelled']);
    await h.stopHost('C');
    await h.waitFor(() => !h.controller.hub.isConnected('C'), 'C disconnected');

    let sawEnd = false;
    let sawC = false;
    const second = await follow('/v1/events', (e) => {
      if (e.event === 'transition' && e.data.migrationId === migrationId && e.data.to === 'cancelled') sawEnd = true;
      if (e.event === 'host' && e.data.hostId === 'C' && e.data.connected === false) sawC = true;
      return sawEnd && sawC;
    }, { 'last-event-id': lastId });
    expect(sawEnd && sawC).toBe(true);

    const ofMig = (evs: Ev[]) => transitions(evs).filter((e) => e.data.migrationId === migrationId);
    expect(ofMig(second.events).length).toBeGreaterThan(0);
    expect([...ofMig(first.events), ...ofMig(second.events)].map((e) => e.data.seq)).toEqual(rec.transitions.map((t: { seq: number }) => t.seq));
    expect(ofMig(first.events)[0]!.data).toMatchObject({ migrationId, vmId: 'vm2', sourceHostId: 'A', destinationHostId: 'B', from: null, to: 'prechecking' });
    const ids = [...first.events, ...second.events].map((e) => e.id);
    expect(new Set(ids).size).toBe(ids.length);
  });

  it('replays from since, and filters as the list does (no agents\' links under a VM filter)', async () => {
    let seenC = 0;
    const all = await follow(`/v1/events?since=${encodeURIComponent(startedAt)}`, (e) => {
      if (e.event === 'host' && e.data.hostId === 'C') seenC++;
      return seenC === 2;
    });
    const hosts = all.events.filter((e) => e.event === 'host').map((e) => `${e.data.hostId}:${e.data.connected}`);
    expect(hosts).toEqual(expect.arrayContaining(['A:true', 'B:true', 'C:true', 'C:false']));
    const vm2 = (await h.api('GET', '/v1/migrations?vmId=vm2')).body.migrations[0].id;
    const rec = (await h.api('GET', `/v1/migrations/${vm2}`)).body;
    const last = rec.transitions.at(-1).seq;
    const filtered = await follow(`/v1/events?since=${encodeURIComponent(startedAt)}&vmId=vm2`, (e) => e.event === 'transition' && e.data.seq === last);
    expect(filtered.events.filter((e) => e.event === 'host')).toEqual([]);
    expect(new Set(transitions(filtered.events).map((e) => e.data.vmId))).toEqual(new Set(['vm2']));
    expect(transitions(filtered.events).map((e) => e.data.seq)).toEqual(rec.transitions.map((t: { seq: number }) => t.seq));
    const bad = await follow('/v1/events', () => true, { 'last-event-id': '12' });
    expect(bad).toMatchObject({ status: 400, body: { code: 'VMTC_EVENT_ID_INVALID' } });
  });
});
