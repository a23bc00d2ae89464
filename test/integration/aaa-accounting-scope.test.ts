// Accounting is scoped to who asks (docs/aaa.md#accounting): a requester reads and reports only on
// its own grants, a reporter reads what it reported, the operator (admin credential) everything;
// refusals of keys the policy does not know add a bounded number of rows however many come.
// A real AAA on port 0 with a real SQLite file.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ManualClock } from '../../src/common/clock.ts';
import { silentLogger } from '../../src/common/log.ts';
import { generateRequesterKeySync, type RequesterKey } from '../../src/common/dpop.ts';
import { startAaa, type AaaHandle } from '../../src/aaa/index.ts';
import { parsePolicy } from '../../src/aaa/policy.ts';
import { requestAuthorization, reportAccounting, queryAccounting, type LightpathRequest } from '../../src/aaa/client.ts';
import type { AccountingEvent } from '../../src/aaa/accounting.ts';
import { refusal } from '../helpers/aaa-fixture.ts';

const clock = new ManualClock(Date.now());
const C = { now: () => clock.now() };
const nowSec = () => Math.floor(clock.now() / 1000);
const PER_WINDOW = 3;
let dir: string;
let aaa: AaaHandle;
const alice = generateRequesterKeySync();
const bob = generateRequesterKeySync();
const meter = generateRequesterKeySync();

const req = (over: Partial<LightpathRequest> = {}): LightpathRequest => ({
  migrationId: 'mig-x', vmId: 'vm-1', project: 'p1', src: 'siteA', dst: 'siteB', bandwidthMbps: 100,
  window: { start: nowSec(), end: nowSec() + 600 }, ...over,
});

async function adminEvents(query = ''): Promise<AccountingEvent[]> {
  const r = await fetch(`${aaa.url}/v1/accounting?limit=1000${query}`, { headers: { authorization: `Bearer ${aaa.adminToken}` } });
  expect(r.status).toBe(200);
  return ((await r.json()) as { events: AccountingEvent[] }).events;
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'vmtc-aaa-scope-'));
  aaa = await startAaa({
    dataDir: dir, domain: 'a', clock, logger: silentLogger(), unknownRefusalsPerWindow: PER_WINDOW, unknownRefusalWindowSec: 60,
    policy: {
      version: 1,
      sites: { siteA: 'a', siteB: 'a' },
      requesters: [{ id: 'alice', jkt: alice.jkt }, { id: 'bob', jkt: bob.jkt }],
      reporters: [{ id: 'broker-a', jkt: meter.jkt }],
      rules: [{ id: 'any', requesters: '*', projects: '*', maxBandwidthMbps: 1000 }],
    },
  });
});

afterAll(async () => {
  await aaa?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('accounting scope', () => {
  it("does not let one requester read or release another's grant, and answers as for a grant that does not exist", async () => {
    const a = await requestAuthorization(aaa.url, alice, req({ migrationId: 'mig-alice' }), C);
    const b = await requestAuthorization(aaa.url, bob, req({ migrationId: 'mig-bob' }), C);

    // Bob sees his own records only, whatever he filters on.
    const bobAll = await queryAccounting(aaa.url, bob, {}, C);
    expect(bobAll.events.length).toBeGreaterThan(0);
    expect(bobAll.events.every((e) => e.who === 'bob')).toBe(true);
    expect((await queryAccounting(aaa.url, bob, { jti: a.jti }, C)).events).toEqual([]);
    expect((await queryAccounting(aaa.url, bob, { migrationId: 'mig-alice' }, C)).events).toEqual([]);

    // Bob's release of Alice's grant: the very answer a jti never granted gets.
    const theirs = await refusal(reportAccounting(aaa.url, bob, { kind: 'release', jti: a.jti }, C));
    const none = await refusal(reportAccounting(aaa.url, bob, { kind: 'release', jti: 'never-granted-jti' }, C));
    expect([theirs.code, theirs.status]).toEqual(['VMTC_AAA_GRANT_UNKNOWN', 404]);
    expect([none.code, none.status, none.message]).toEqual([theirs.code, theirs.status, theirs.message]);
    expect(theirs.details).toEqual({ jti: a.jti });
    expect(none.details).toEqual({ jti: 'never-granted-jti' });
    // … and nothing was recorded against Alice's grant.
    expect((await adminEvents(`&jti=${a.jti}`)).map((e) => e.kind)).toEqual(['grant']);

    // Alice releases her own, and reads it; Bob still does not see it.
    await reportAccounting(aaa.url, alice, { kind: 'release', jti: a.jti }, C);
    expect((await queryAccounting(aaa.url, alice, { jti: a.jti }, C)).events.map((e) => [e.kind, e.reporter])).toEqual([['grant', undefined], ['release', 'alice']]);
    expect((await queryAccounting(aaa.url, bob, { jti: a.jti }, C)).events).toEqual([]);
    expect((await queryAccounting(aaa.url, alice, {}, C)).events.some((e) => e.jti === b.jti)).toBe(false);
  });

  it('lets the operator read everything and a reporter report on any grant but read only its reports', async () => {
    const a = await requestAuthorization(aaa.url, alice, req({ migrationId: 'mig-op' }), C);
    const b = await requestAuthorization(aaa.url, bob, req({ migrationId: 'mig-op' }), C);
    const all = await adminEvents('&migrationId=mig-op');
    expect(all.map((e) => [e.kind, e.who])).toEqual([['grant', 'alice'], ['grant', 'bob']]);

    const use = await reportAccounting(aaa.url, meter, { kind: 'use', jti: b.jti }, C);
    expect(use).toMatchObject({ kind: 'use', who: 'bob', reporter: 'broker-a' });
    const seen = await queryAccounting(aaa.url, meter, { migrationId: 'mig-op' }, C);
    expect(seen.events.map((e) => [e.kind, e.who, e.reporter])).toEqual([['use', 'bob', 'broker-a']]);
    // The use report is on Bob's grant, so Bob sees it; Alice does not.
    expect((await queryAccounting(aaa.url, bob, { migrationId: 'mig-op' }, C)).events.map((e) => e.kind)).toEqual(['grant', 'use']);
    expect((await queryAccounting(aaa.url, alice, { migrationId: 'mig-op' }, C)).events.map((e) => e.jti)).toEqual([a.jti]);
  });

  it('refuses requester and reporter ids that would read as another party in accounting', () => {
    const doc = (id: string) => ({ version: 1, sites: { s: 'a' }, requesters: [{ id, jkt: alice.jkt }], rules: [] });
    for (const id of ['aaa:b', 'jkt:x', 'admin']) {
      expect(() => parsePolicy(doc(id), 'a')).toThrow(expect.objectContaining({ code: 'VMTC_AAA_POLICY_INVALID', details: expect.objectContaining({ field: 'requesters[0].id' }) }));
    }
    expect(parsePolicy(doc('controller-1'), 'a').requesters[0]!.id).toBe('controller-1');
  });

  it('adds a bounded number of rows for a flood of requests from unknown keys, and counts the rest', async () => {
    // Start at the beginning of a window, so the whole flood falls in one.
    const windowMs = 60_000;
    clock.advance(windowMs - (clock.now() % windowMs));
    const before = (await adminEvents()).length;
    const keys: RequesterKey[] = Array.from({ length: 40 }, () => generateRequesterKeySync());
    for (const k of keys) {
      expect((await refusal(requestAuthorization(aaa.url, k, req({ migrationId: 'mig-flood' }), C))).code).toBe('VMTC_AAA_REQUESTER_UNKNOWN');
    }
    for (let i = 0; i < 5; i++) await refusal(requestAuthorization(aaa.url, keys[0]!, req({ migrationId: 'mig-flood' }), C));
    // The first keys of the window are on record one by one, with their request; nothing else yet.
    const during = await adminEvents();
    expect(during.length - before).toBe(PER_WINDOW);
    expect(during.slice(before).map((e) => [e.who, e.code, e.migrationId])).toEqual(
      keys.slice(0, PER_WINDOW).map((k) => [`jkt:${k.jkt}`, 'VMTC_AAA_REQUESTER_UNKNOWN', 'mig-flood']),
    );
    // When the window ends, one row sums up the rest.
    clock.advance(windowMs);
    const after = await adminEvents();
    expect(after.length - before).toBe(PER_WINDOW + 1);
    expect(after[after.length - 1]).toMatchObject({
      kind: 'refusal', who: 'jkt:*', code: 'VMTC_AAA_REQUESTER_UNKNOWN',
      details: { aggregated: true, requests: 40 - PER_WINDOW + 5, otherKeysRequests: 40 - PER_WINDOW, repeats: { [keys[0]!.jkt]: 5 } },
    });
    // The summary was written once: more time changes nothing.
    clock.advance(windowMs);
    expect((await adminEvents()).length).toBe(after.length);
  });
});
