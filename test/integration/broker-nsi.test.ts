// NSI CS v2 state machines through the real REST API: legal paths, illegal transitions naming the
// current state, hold timeout and end-of-window expiry with a manual clock, provision failure,
// advance reservations, the SSE feed, bad input, and no overbooking under concurrent requests.
import http from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/common/clock.ts';
import { VmtcError } from '../../src/common/errors.ts';
import { BrokerClient } from '../../src/broker/client.ts';
import { MemoryDoubleDriver } from '../../src/broker/drivers/memory-double.ts';
import { requestJson } from '../../src/common/http-client.ts';
import { startBroker, type Broker } from '../../src/broker/index.ts';
import { LIFECYCLE_TABLE, PROVISION_TABLE, RESERVATION_TABLE, next } from '../../src/broker/nsi.ts';
import type { BrokerEvent } from '../../src/broker/service.ts';
import { holderKey, lineTopology, makeIssuer, mintToken, tempDir, type Issuer, type TokenScope } from '../helpers/broker-helpers.ts';

const clock = new ManualClock(1_800_000_000_000);
const nowS = () => Math.floor(clock.now() / 1000);
const tmp = tempDir();
const driver = new MemoryDoubleDriver();
const holder = holderKey();
let issuer: Issuer;
let broker: Broker;
let client: BrokerClient;
const events: BrokerEvent[] = [];
let sse: http.ClientRequest | undefined;

async function token(over: Partial<TokenScope> = {}): Promise<string> {
  const scope: TokenScope = { migrationId: 'mig_n', vmId: 'vm', project: 'p', src: 'a1', dst: 'a3', bandwidthMbps: 1000, window: { start: nowS(), end: nowS() + 86_400 }, domains: ['a'], ...over };
  return mintToken(issuer, { holder, scope, now: nowS(), ttl: 86_400 });
}
const body = (over: Record<string, unknown> = {}) => ({ src: 'a1', dst: 'a3', bandwidthMbps: 100, window: { end: nowS() + 3600 }, ...over });

async function code(p: Promise<unknown>): Promise<VmtcError> {
  const e = await p.then(() => undefined, (x: unknown) => x);
  expect(e).toBeInstanceOf(VmtcError);
  return e as VmtcError;
}
const tick = () => new Promise((r) => setImmediate(r));
async function until(fn: () => boolean): Promise<void> {
  for (let i = 0; i < 200 && !fn(); i++) await new Promise((r) => setTimeout(r, 5));
  expect(fn()).toBe(true);
}

beforeAll(async () => {
  issuer = await makeIssuer('a');
  broker = await startBroker({
    dataDir: tmp.dir, domain: 'a', topology: lineTopology(1000, 1000), driver, clock, holdTimeoutMs: 120_000,
    trust: { issuers: [{ iss: issuer.iss, jwks: { keys: [issuer.publicJwk] } }] },
  });
  client = new BrokerClient(broker.url, { now: () => clock.now(), operatorToken: broker.operatorToken });
  await new Promise<void>((resolve, reject) => {
    sse = http.get(`${broker.url}/v1/events`, { headers: { authorization: `Bearer ${broker.operatorToken}` } }, (res) => {
      if (res.statusCode !== 200) reject(new Error(`SSE answered ${res.statusCode}`));
      let buf = '';
      res.on('data', (c: Buffer) => {
        buf += c.toString();
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const frame = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const data = frame.split('\n').find((l) => l.startsWith('data: '));
          if (data) events.push(JSON.parse(data.slice(6)) as BrokerEvent);
        }
      });
      res.on('error', () => undefined);
      resolve();
    });
    sse.on('error', reject);
  });
});
afterAll(async () => {
  sse?.destroy();
  await broker?.close();
  tmp.cleanup();
});

describe('NSI transition tables (pure)', () => {
  it('allow exactly the documented edges', () => {
    expect(next('reservation', 'ReserveStart', 'reserve')?.to).toBe('ReserveChecking');
    expect(next('reservation', 'ReserveHeld', 'commit')?.to).toBe('ReserveCommitting');
    expect(next('reservation', 'ReserveCommitting', 'commitConfirmed')?.to).toBe('ReserveStart');
    expect(next('reservation', 'ReserveHeld', 'timeout')?.to).toBe('ReserveTimeout');
    expect(next('reservation', 'ReserveTimeout', 'commit')).toBeUndefined();
    expect(next('provision', 'Released', 'release')).toBeUndefined();
    expect(next('provision', 'Provisioning', 'provisionFailed')?.to).toBe('Released');
    expect(next('lifecycle', 'Terminated', 'terminate')).toBeUndefined();
    expect(next('lifecycle', 'PassedEndTime', 'terminate')?.to).toBe('Terminating');
    // Every target of every table is a state of that table.
    for (const t of [RESERVATION_TABLE, PROVISION_TABLE, LIFECYCLE_TABLE] as Record<string, Record<string, { to: string }>>[]) {
      for (const edges of Object.values(t)) for (const r of Object.values(edges)) expect(Object.keys(t)).toContain(r.to);
    }
  });
});

describe('NSI life of a reservation over REST', () => {
  it('reserve, commit, provision, release, terminate: every transition persisted and published', async () => {
    const t = await token();
    const r = await client.reserve(body(), t, holder);
    expect(r).toMatchObject({ reservationState: 'ReserveHeld', provisionState: 'Released', lifecycleState: 'Created', booked: true });
    // Illegal before commit, each naming the current state.
    let e = await code(client.provision(r.id, t, holder));
    expect(e.code).toBe('VMTC_ILLEGAL_TRANSITION');
    expect(e.details).toMatchObject({ machine: 'provision', state: 'Released', reservationState: 'ReserveHeld' });
    e = await code(client.release(r.id, t, holder));
    expect(e.details).toMatchObject({ machine: 'provision', state: 'Released', event: 'release' });
    await client.commit(r.id, t, holder);
    e = await code(client.commit(r.id, t, holder));
    expect(e.details).toMatchObject({ machine: 'reservation', state: 'ReserveStart', event: 'commit' });
    e = await code(client.abort(r.id, t, holder));
    expect(e.details).toMatchObject({ machine: 'reservation', state: 'ReserveStart', event: 'abort' });
    const p = await client.provision(r.id, t, holder);
    expect(p.provisionState).toBe('Provisioned');
    expect(p.dataPlane).toMatchObject({ active: true, details: { driver: 'memory-double', path: ['a1', 'a2', 'a3'] } });
    expect(driver.active.get(r.id)?.nodes).toEqual({ a1: { ns: 'site-a' }, a2: {}, a3: { ns: 'site-b' } });
    e = await code(client.provision(r.id, t, holder));
    expect(e.details).toMatchObject({ machine: 'provision', state: 'Provisioned' });
    expect((await client.release(r.id, t, holder)).provisionState).toBe('Released');
    expect(driver.active.has(r.id)).toBe(false);
    const done = await client.terminate(r.id, t, holder);
    expect(done).toMatchObject({ lifecycleState: 'Terminated', booked: false });
    e = await code(client.terminate(r.id, t, holder));
    expect(e.details).toMatchObject({ machine: 'lifecycle', state: 'Terminated' });
    const got = await client.get(r.id);
    expect(got.history!.map((h) => `${h.machine}:${h.from}>${h.to}`)).toEqual([
      'reservation:ReserveStart>ReserveChecking', 'reservation:ReserveChecking>ReserveHeld',
      'reservation:ReserveHeld>ReserveCommitting', 'reservation:ReserveCommitting>ReserveStart',
      'provision:Released>Provisioning', 'dataPlane:inactive>active', 'provision:Provisioning>Provisioned',
      'provision:Provisioned>Releasing', 'dataPlane:active>inactive', 'provision:Releasing>Released',
      'lifecycle:Created>Terminating', 'lifecycle:Terminating>Terminated',
    ]);
    await until(() => events.some((x) => x.reservationId === r.id && x.type === 'stateChange' && x.to === 'Terminated'));
    const mine = events.filter((x) => x.reservationId === r.id);
    expect(mine.filter((x) => x.type === 'dataPlaneStateChange').map((x) => (x as { active: boolean }).active)).toEqual([true, false]);
    expect((await code(client.get('rsv_nope'))).code).toBe('VMTC_RESERVATION_NOT_FOUND');
  });

  it('times a held reservation out after the hold timeout, frees it, and refuses a later commit', async () => {
    const t = await token();
    const r = await client.reserve(body({ bandwidthMbps: 1000 }), t, holder);
    expect(broker.service.calendar.peak('l12', nowS(), nowS() + 3600)).toBe(1000);
    clock.advance(119_000);
    expect(broker.service.get(r.id)?.reservationState).toBe('ReserveHeld');
    clock.advance(1_000);
    expect(broker.service.get(r.id)).toMatchObject({ reservationState: 'ReserveTimeout', booked: false });
    expect(broker.service.calendar.peak('l12', nowS(), nowS() + 3600)).toBe(0);
    const e = await code(client.commit(r.id, t, holder));
    expect(e.code).toBe('VMTC_ILLEGAL_TRANSITION');
    expect(e.details).toMatchObject({ state: 'ReserveTimeout', event: 'commit' });
    expect((await client.abort(r.id, t, holder)).lifecycleState).toBe('Terminated');
  });

  it('releases the calendar and the data plane at the end of the window (PassedEndTime)', async () => {
    const t = await token();
    const r = await client.reserve(body({ bandwidthMbps: 1000, window: { end: nowS() + 600 } }), t, holder);
    await client.commit(r.id, t, holder);
    await client.provision(r.id, t, holder);
    expect(driver.active.has(r.id)).toBe(true);
    clock.advance(600_000);
    await until(() => broker.service.get(r.id)?.provisionState === 'Released');
    expect(driver.active.has(r.id)).toBe(false);
    expect(broker.service.get(r.id)).toMatchObject({ lifecycleState: 'PassedEndTime', provisionState: 'Released', booked: false });
    expect(broker.service.calendar.peak('l12', nowS() - 700, nowS() + 10)).toBe(0);
    expect((await code(client.provision(r.id, t, holder))).details).toMatchObject({ machine: 'lifecycle', state: 'PassedEndTime' });
    expect((await client.terminate(r.id, t, holder)).lifecycleState).toBe('Terminated');
  });

  it('activates an advance reservation at the start of its window', async () => {
    const t = await token();
    const start = nowS() + 1800;
    const r = await client.reserve(body({ window: { start, end: start + 600 } }), t, holder);
    await client.commit(r.id, t, holder);
    const p = await client.provision(r.id, t, holder);
    expect(p).toMatchObject({ provisionState: 'Provisioned', dataPlane: { active: false } });
    expect(driver.active.has(r.id)).toBe(false);
    clock.advance(1_800_000);
    await until(() => driver.active.has(r.id));
    await until(() => broker.service.get(r.id)?.dataPlane.active === true);
    await client.teardown(r.id, t, holder);
    expect(driver.active.has(r.id)).toBe(false);
  });

  it('reports a provision failure as an error event and returns to Released with the error recorded', async () => {
    const t = await token();
    const r = await client.reserve(body(), t, holder);
    await client.commit(r.id, t, holder);
    driver.failProvision(r.id);
    const e = await code(client.provision(r.id, t, holder));
    expect(e.code).toBe('VMTC_PROVISION_FAILED');
    const got = await client.get(r.id);
    expect(got).toMatchObject({ provisionState: 'Released', lifecycleState: 'Created', committed: true, dataPlane: { active: false, error: { code: 'VMTC_PROVISION_FAILED' } } });
    expect(driver.active.has(r.id)).toBe(false);
    await until(() => events.some((x) => x.type === 'error' && x.reservationId === r.id && x.code === 'VMTC_PROVISION_FAILED'));
    driver.clearFaults();
    const ok = await client.provision(r.id, t, holder);
    expect(ok.dataPlane.active).toBe(true);
    expect(ok.dataPlane.error).toBeUndefined();
    await client.teardown(r.id, t, holder);
  });
});

describe('bad input', () => {
  it('refuses bad windows, bandwidths, endpoints and bodies with coded errors and creates nothing', async () => {
    const before = broker.store.list().length;
    const t = await token();
    expect((await code(client.reserve(body({ window: { start: nowS() + 10, end: nowS() + 10 } }), t, holder))).code).toBe('VMTC_BAD_WINDOW');
    expect((await code(client.reserve(body({ window: { start: nowS() + 20, end: nowS() + 10 } }), t, holder))).code).toBe('VMTC_BAD_WINDOW');
    expect((await code(client.reserve(body({ bandwidthMbps: 0 }), t, holder))).code).toBe('VMTC_BAD_BANDWIDTH');
    expect((await code(client.reserve(body({ bandwidthMbps: -5 }), t, holder))).code).toBe('VMTC_BAD_BANDWIDTH');
    const big = await token({ bandwidthMbps: 5000 });
    expect((await code(client.reserve(body({ bandwidthMbps: 1001 }), big, holder))).code).toBe('VMTC_BAD_BANDWIDTH');
    const nowhere = await token({ dst: 'zz' });
    expect((await code(client.reserve(body({ dst: 'zz' }), nowhere, holder))).code).toBe('VMTC_UNKNOWN_ENDPOINT');
    expect((await code(client.reserve({ ...body(), extra: 1 } as never, t, holder))).code).toBe('VMTC_VALIDATION');
    expect((await code(client.reserve(body({ src: 'x'.repeat(70_000) }), t, holder))).code).toBe('VMTC_BODY_TOO_LARGE');
    // Without a token, nothing of the body is read: the refusal is the credential's (README "API").
    const raw = await requestJson(`${broker.url}/v1/reservations`, { method: 'POST', body: { src: 'x'.repeat(70_000) } });
    expect((raw.body as { code: string }).code).toBe('VMTC_TOKEN_MISSING');
    expect(broker.store.list().length).toBe(before);
    // The same token still works: none of the refusals consumed it.
    const r = await client.reserve(body(), t, holder);
    await client.abort(r.id, t, holder);
  });
});

describe('bandwidth calendar under concurrent requests', () => {
  it('never books a link past its capacity and falls back to the detour when the short path is full', async () => {
    const end = nowS() + 3600;
    const tokens = await Promise.all(Array.from({ length: 30 }, () => token()));
    // Staggered windows so that the admission has to look at overlaps, not just at the start.
    const results = await Promise.allSettled(tokens.map((t, i) => client.reserve(body({ bandwidthMbps: 150, window: { start: nowS() + (i % 3) * 100, end: end - (i % 2) * 100 } }), t, holder)));
    const ok = results.filter((x): x is PromiseFulfilledResult<Awaited<ReturnType<BrokerClient['reserve']>>> => x.status === 'fulfilled').map((x) => x.value);
    const failed = results.filter((x): x is PromiseRejectedResult => x.status === 'rejected');
    expect(failed.every((f) => (f.reason as VmtcError).code === 'VMTC_NO_PATH')).toBe(true);
    // 1000 Mbps on each of the two routes: at most 6 + 6 circuits of 150 Mbps at any instant.
    expect(ok.length).toBeGreaterThanOrEqual(12);
    expect(ok.some((r) => r.path.alternative && r.path.nodes.includes('a4'))).toBe(true);
    for (const link of ['l12', 'l23', 'l14', 'l43']) {
      // Check every instant independently of the calendar: sum the bookings at each breakpoint.
      const mine = ok.filter((r) => r.path.links.includes(link));
      for (const t of mine.map((r) => r.window.start)) {
        const sum = mine.filter((r) => r.window.start <= t && t < r.window.end).reduce((s, r) => s + r.bandwidthMbps, 0);
        expect(sum).toBeLessThanOrEqual(1000);
      }
      expect(broker.service.calendar.peak(link, nowS(), end)).toBeLessThanOrEqual(1000);
    }
    // Failed ones left no booking behind and ended (ReserveFailed, Terminated).
    for (const f of failed) {
      const id = (f.reason as VmtcError).details?.reservationId as string;
      expect(broker.service.get(id)).toMatchObject({ reservationState: 'ReserveFailed', lifecycleState: 'Terminated', booked: false });
    }
    await Promise.all(results.map((x, i) => (x.status === 'fulfilled' ? client.abort(x.value.id, tokens[i], holder) : undefined)));
    for (const link of ['l12', 'l23', 'l14', 'l43']) expect(broker.service.calendar.peak(link, nowS(), end)).toBe(0);
    await tick();
  });
});
