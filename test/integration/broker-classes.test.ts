// The broker's reservation classes over its REST API (docs/broker.md "Classes"): a background
// reservation gets what migrations leave; a migration over it is admitted in full and squeezes it
// for the migration's window only (a timer at the window's start and end), each change recorded
// in the reservation's history, published as a grantChange event and visible in the view; a
// background token cannot book a migration; a background reservation has no data plane and stays
// in one domain; grants survive a restart.
import { afterAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/common/clock.ts';
import { BrokerClient } from '../../src/broker/client.ts';
import { MemoryDoubleDriver } from '../../src/broker/drivers/memory-double.ts';
import { startBroker, type Broker } from '../../src/broker/index.ts';
import type { BrokerEvent } from '../../src/broker/service.ts';
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

function token(o: { bw: number; end: number; cls?: 'background' | 'migration'; dst?: string; domains?: string[] }): string {
  const t0 = nowS();
  return aaa.sign({ jkt: holder.jkt, now: clock.now(), scope: { migrationId: 'm', vmId: 'vm', project: 'p', src: 'a1', dst: o.dst ?? 'a3', bandwidthMbps: o.bw, window: { start: t0, end: o.end }, domains: o.domains ?? ['a'], ...(o.cls ? { class: o.cls } : {}) } });
}

const start = () => startBroker({ dataDir: tmp.dir, domain: 'a', topology: lineTopology(1000, 10), driver: new MemoryDoubleDriver(), clock, trust: aaa.trust });
const code = (p: Promise<unknown>) => p.then(() => 'resolved', (e: { code: string; details?: { field?: string } }) => `${e.code}${e.details?.field ? ` ${e.details.field}` : ''}`);

describe('broker reservation classes', () => {
  it('a background reservation is squeezed by a migration for its window only, and follows it back; every change is in the history, the events and the view', async () => {
    broker = await start();
    let client = new BrokerClient(broker.url, { now: () => clock.now(), operatorToken: broker.operatorToken });
    const events: BrokerEvent[] = [];
    broker.service.events.on('event', (e: BrokerEvent) => events.push(e));
    const t0 = nowS();

    const bgTok = token({ bw: 600, end: t0 + 3600, cls: 'background' });
    const bg = await client.reserve({ src: 'a1', dst: 'a3', bandwidthMbps: 600, window: { end: t0 + 3600 }, class: 'background', minMbps: 50 }, bgTok, holder);
    expect(bg).toMatchObject({ class: 'background', grantedMbps: 600, minMbps: 50, reservationState: 'ReserveHeld', path: { links: ['l12', 'l23'] } });
    await client.commit(bg.id, undefined, holder);
    // It has no data plane of its own.
    expect(await code(client.provision(bg.id, bgTok, holder))).toBe('VMTC_CLASS_UNSUPPORTED');

    // A migration for [t0+600, t0+1200) at 700 Mbit/s: admitted in full although 600 of the
    // 1,000 are granted to the background one, which keeps its 600 until the window starts.
    const mig = await client.setup({ src: 'a1', dst: 'a3', bandwidthMbps: 700, window: { start: t0 + 600, end: t0 + 1200 } }, token({ bw: 700, end: t0 + 1200 }), holder);
    expect({ class: mig.class, grantedMbps: mig.grantedMbps, committed: mig.committed }).toEqual({ class: 'migration', grantedMbps: 700, committed: true });
    expect((await client.get(bg.id)).grantedMbps).toBe(600);

    clock.advance(600_000);
    expect((await client.get(bg.id)).grantedMbps).toBe(300);
    // A second migration takes 250 more: 50 left is the floor, still granted; 1 more and it is suspended.
    const mig2 = await client.setup({ src: 'a1', dst: 'a3', bandwidthMbps: 250, window: { end: t0 + 900 } }, token({ bw: 250, end: t0 + 900 }), holder);
    expect(mig2.grantedMbps).toBe(250);
    expect((await client.get(bg.id)).grantedMbps).toBe(50);
    await client.teardown(mig2.id, undefined, holder);
    const mig3 = await client.setup({ src: 'a1', dst: 'a3', bandwidthMbps: 251, window: { end: t0 + 900 } }, token({ bw: 251, end: t0 + 900 }), holder);
    expect(mig3.grantedMbps).toBe(251);
    expect((await client.get(bg.id)).grantedMbps).toBe(0);
    await client.teardown(mig3.id, undefined, holder);
    expect((await client.get(bg.id)).grantedMbps).toBe(300);

    // The restart rebuilds both classes: the grant is the same, and the end of the migration's
    // window still gives the bandwidth back.
    await broker.close();
    broker = await start();
    client = new BrokerClient(broker.url, { now: () => clock.now(), operatorToken: broker.operatorToken });
    broker.service.events.on('event', (e: BrokerEvent) => events.push(e));
    expect((await client.get(bg.id)).grantedMbps).toBe(300);
    clock.advance(600_000);
    const after = await client.get(bg.id);
    expect(after.grantedMbps).toBe(600);
    expect((await client.get(mig.id)).lifecycleState).toBe('PassedEndTime');

    const grants = (after.history ?? []).filter((t) => t.machine === 'grant').map((t) => `${t.event} ${t.from}->${t.to}`);
    expect(grants).toEqual(['squeezed 600->300', 'squeezed 300->50', 'raised 50->300', 'suspended 300->0', 'raised 0->300', 'raised 300->600']);
    const published = events.filter((e) => e.type === 'grantChange').map((e) => e.type === 'grantChange' && `${e.previousMbps}->${e.grantedMbps}`);
    expect(published).toEqual(['600->300', '300->50', '50->300', '300->0', '0->300', '300->600']);
    await client.terminate(bg.id, undefined, holder);
    expect(broker.service.calendar.backgroundIds).toEqual([]);
  });

  it('refusals: a background token books no migration, a floor only for background and within its bandwidth, background stays in one domain, nothing left when migrations took all', async () => {
    await broker?.close();
    broker = await start();
    const client = new BrokerClient(broker.url, { now: () => clock.now(), operatorToken: broker.operatorToken });
    const t0 = nowS();
    const end = t0 + 600;
    expect(await code(client.reserve({ src: 'a1', dst: 'a3', bandwidthMbps: 100, window: { end } }, token({ bw: 100, end, cls: 'background' }), holder))).toBe('VMTC_TOKEN_SCOPE class');
    expect(await code(client.reserve({ src: 'a1', dst: 'a3', bandwidthMbps: 100, window: { end }, class: 'migration' }, token({ bw: 100, end, cls: 'background' }), holder))).toBe('VMTC_TOKEN_SCOPE class');
    expect(await code(client.reserve({ src: 'a1', dst: 'a3', bandwidthMbps: 100, window: { end }, minMbps: 10 }, token({ bw: 100, end }), holder))).toBe('VMTC_CLASS_UNSUPPORTED minMbps');
    expect(await code(client.reserve({ src: 'a1', dst: 'a3', bandwidthMbps: 100, window: { end }, class: 'background', minMbps: 101 }, token({ bw: 100, end }), holder))).toBe('VMTC_BAD_BANDWIDTH minMbps');
    expect(await code(client.reserve({ src: 'a1', dst: 'b9', bandwidthMbps: 100, window: { end }, class: 'background' }, token({ bw: 100, end, dst: 'b9', domains: ['a', 'b'] }), holder))).toBe('VMTC_CLASS_UNSUPPORTED class');
    // A migration token may book background bandwidth (less than it was granted for).
    const ok = await client.reserve({ src: 'a1', dst: 'a3', bandwidthMbps: 100, window: { end }, class: 'background' }, token({ bw: 100, end }), holder);
    expect(ok.class).toBe('background');
    await client.terminate(ok.id, undefined, holder);
    // Migrations on both paths take everything: no background reservation is admitted.
    const full = await client.setup({ src: 'a1', dst: 'a3', bandwidthMbps: 1000, window: { end } }, token({ bw: 1000, end }), holder);
    const detour = await client.setup({ src: 'a1', dst: 'a3', bandwidthMbps: 10, window: { end } }, token({ bw: 10, end }), holder);
    expect(await code(client.reserve({ src: 'a1', dst: 'a3', bandwidthMbps: 100, window: { end }, class: 'background' }, token({ bw: 100, end, cls: 'background' }), holder))).toBe('VMTC_NO_PATH');
    await client.teardown(full.id, undefined, holder);
    await client.teardown(detour.id, undefined, holder);
  });
});
