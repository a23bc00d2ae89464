// A broker restarted on the same data directory rebuilds its calendar and timers from SQLite and
// re-applies active data planes (drivers are idempotent); and a token signed by the AAA's own
// code (src/aaa/tokens.ts) passes the broker's gate.
import { afterAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/common/clock.ts';
import { BrokerClient } from '../../src/broker/client.ts';
import { MemoryDoubleDriver } from '../../src/broker/drivers/memory-double.ts';
import { startBroker, type Broker } from '../../src/broker/index.ts';
import { aaaSigner, holderKey, lineTopology, tempDir } from '../helpers/broker-helpers.ts';

const clock = new ManualClock(1_800_000_000_000);
const nowS = () => Math.floor(clock.now() / 1000);
const tmp = tempDir();
const holder = holderKey();
const aaa = aaaSigner();
let broker: Broker | undefined;

afterAll(async () => {
  await broker?.close();
  tmp.cleanup();
});

function aaaToken(start: number, end: number, bw = 300): string {
  return aaa.sign({ jkt: holder.jkt, now: clock.now(), scope: { migrationId: 'mig_r', vmId: 'vm', project: 'p', src: 'a1', dst: 'a3', bandwidthMbps: bw, window: { start, end }, domains: ['a'] } });
}

async function start(driver: MemoryDoubleDriver): Promise<Broker> {
  return startBroker({ dataDir: tmp.dir, domain: 'a', topology: lineTopology(), driver, clock, trust: aaa.trust });
}

describe('broker restart', () => {
  it('rebuilds calendar, hold/activation/end timers and active data planes from the store', async () => {
    const d1 = new MemoryDoubleDriver();
    broker = await start(d1);
    let client = new BrokerClient(broker.url, { now: () => clock.now(), operatorToken: broker.operatorToken });
    const t0 = nowS();
    const tHeld = aaaToken(t0, t0 + 3600);
    const held = await client.reserve({ src: 'a1', dst: 'a3', bandwidthMbps: 300, window: { end: t0 + 3600 } }, tHeld, holder);
    const tUp = aaaToken(t0, t0 + 3600);
    const up = await client.setup({ src: 'a1', dst: 'a3', bandwidthMbps: 300, window: { end: t0 + 1800 } }, tUp, holder);
    expect(up.dataPlane.active).toBe(true);
    const tAdv = aaaToken(t0, t0 + 7200);
    const adv = await client.setup({ src: 'a1', dst: 'a3', bandwidthMbps: 300, window: { start: t0 + 600, end: t0 + 7200 } }, tAdv, holder);
    expect(adv.dataPlane.active).toBe(false);
    const peak = broker.service.calendar.peak('l12', t0, t0 + 7200);
    expect(peak).toBe(900);
    await broker.close();

    clock.advance(30_000);
    const d2 = new MemoryDoubleDriver();
    broker = await start(d2);
    client = new BrokerClient(broker.url, { now: () => clock.now(), operatorToken: broker.operatorToken });
    expect(broker.service.calendar.size).toBe(3);
    expect(broker.service.calendar.peak('l12', t0, t0 + 7200)).toBe(peak);
    // The active circuit was re-applied on the new driver; the advance one waits for its start.
    expect(d2.active.has(up.id)).toBe(true);
    expect(d2.active.has(adv.id)).toBe(false);
    // A token of the AAA cannot be replayed after the restart either.
    const e = await client.reserve({ src: 'a1', dst: 'a3', bandwidthMbps: 10, window: { end: t0 + 3600 } }, tHeld, holder).catch((x: unknown) => x);
    expect((e as { code: string }).code).toBe('VMTC_TOKEN_REPLAYED');
    // The hold timer kept counting from the original hold (120 s - 30 s already gone).
    clock.advance(89_000);
    expect(broker.service.get(held.id)?.reservationState).toBe('ReserveHeld');
    clock.advance(1_000);
    expect(broker.service.get(held.id)?.reservationState).toBe('ReserveTimeout');
    // Activation at the start of the advance window, expiry at the end of the on-demand one.
    clock.advance(600_000);
    await expect.poll(() => d2.active.has(adv.id)).toBe(true);
    clock.advance(1800_000);
    await expect.poll(() => broker!.service.get(up.id)?.provisionState).toBe('Released');
    expect(broker.service.get(up.id)?.lifecycleState).toBe('PassedEndTime');
    expect(d2.active.has(up.id)).toBe(false);
    await client.teardown(adv.id, tAdv, holder);
    await client.abort(held.id, tHeld, holder);
    expect(broker.service.calendar.size).toBe(0);
  });
});
