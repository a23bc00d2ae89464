// The broker's idempotency key (docs/broker.md "Idempotency key"): a reserve with a key its
// holder already used answers with that reservation (nothing new booked, no token consumed);
// the holder finds it by the key with a proof alone, also after a broker restart, and can then
// release it without the token — what a controller killed mid set-up needs.
import { afterAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/common/clock.ts';
import { BrokerClient } from '../../src/broker/client.ts';
import { MemoryDoubleDriver } from '../../src/broker/drivers/memory-double.ts';
import { startBroker, type Broker } from '../../src/broker/index.ts';
import type { RequesterKey } from '../../src/common/dpop.ts';
import { aaaSigner, holderKey, lineTopology, tempDir } from '../helpers/broker-helpers.ts';

const clock = new ManualClock(1_800_000_000_000);
const nowS = () => Math.floor(clock.now() / 1000);
const tmp = tempDir();
const aaa = aaaSigner();
let broker: Broker | undefined;

afterAll(async () => {
  await broker?.close();
  tmp.cleanup();
});

function aaaToken(holder: RequesterKey & { jkt: string }, bw = 300): string {
  return aaa.sign({ jkt: holder.jkt, now: clock.now(), scope: { migrationId: 'mig_k', vmId: 'vm', project: 'p', src: 'a1', dst: 'a3', bandwidthMbps: bw, window: { start: nowS(), end: nowS() + 3600 }, domains: ['a'] } });
}

const start = (driver: MemoryDoubleDriver) => startBroker({ dataDir: tmp.dir, domain: 'a', topology: lineTopology(), driver, clock, trust: aaa.trust });

describe('broker idempotency key', () => {
  it('answers a reused key with its reservation, finds it by key with a proof alone, across a restart', async () => {
    const holder = holderKey();
    const other = holderKey();
    const driver = new MemoryDoubleDriver();
    broker = await start(driver);
    let client = new BrokerClient(broker.url, { now: () => clock.now(), operatorToken: broker.operatorToken });
    const end = nowS() + 1800;
    const body = { src: 'a1', dst: 'a3', bandwidthMbps: 100, window: { end }, migrationId: 'mig_k', idempotencyKey: 'mig_k' };
    const t1 = aaaToken(holder);
    const up = await client.setup(body, t1, holder);
    expect(up).toMatchObject({ idempotencyKey: 'mig_k', provisionState: 'Provisioned' });

    // A retry with the same token is not a replay; with a fresh token it does not consume it.
    expect((await client.reserve(body, t1, holder)).id).toBe(up.id);
    const t2 = aaaToken(holder);
    const again = await client.reserve(body, t2, holder);
    expect([again.id, again.provisionState]).toEqual([up.id, 'Provisioned']);
    expect(broker.service.calendar.size).toBe(1);
    const fresh = await client.reserve({ ...body, idempotencyKey: undefined }, t2, holder);
    expect(fresh.id).not.toBe(up.id);
    await client.abort(fresh.id, t2, holder);
    // The same key for another request is refused, naming the reservation it names.
    const e = await client.reserve({ ...body, bandwidthMbps: 200 }, aaaToken(holder), holder).then(() => undefined, (x: unknown) => x as { code: string; details: Record<string, unknown> });
    expect([e?.code, e?.details.reservationId]).toEqual(['VMTC_IDEMPOTENCY_KEY_REUSED', up.id]);

    // Keys are the holder's own: another holder neither finds it nor collides with it.
    expect(await client.findByKey('mig_k', other)).toBeUndefined();
    const theirs = await client.reserve(body, aaaToken(other), other);
    expect(theirs.id).not.toBe(up.id);
    await client.abort(theirs.id, undefined, other);
    // A lookup needs a proof.
    const bare = await fetch(`${broker.url}/v1/reservations/by-key/mig_k`);
    expect([bare.status, ((await bare.json()) as { code: string }).code]).toEqual([401, 'VMTC_DPOP_PROOF_INVALID']);
    expect(await client.findByKey('nope', holder)).toBeUndefined();

    await broker.close();
    clock.advance(10_000);
    broker = await start(new MemoryDoubleDriver());
    client = new BrokerClient(broker.url, { now: () => clock.now() });
    const found = await client.findByKey('mig_k', holder);
    expect([found?.id, found?.lifecycleState, found?.dataPlane.active]).toEqual([up.id, 'Created', true]);
    // The holder that lost the token releases it with its proof alone.
    await client.teardown(up.id, undefined, holder);
    expect((await client.findByKey('mig_k', holder))?.lifecycleState).toBe('Terminated');
    // The key still names it: a retry now learns that it ended.
    expect((await client.reserve(body, aaaToken(holder), holder)).lifecycleState).toBe('Terminated');
  });
});
