// Inter-domain: three brokers (domains a, b, c) chained over mutual TLS with certificates made
// at test time; a reservation from a1 (domain a) to c2 (domain c) holds a segment in every domain
// and commits in all or in none. Failures are injected in the last domain.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/common/clock.ts';
import { VmtcError } from '../../src/common/errors.ts';
import { createCa, issueServerCert, makeKeyAndCsr, signClientCsr, type Ca } from '../../src/common/pki.ts';
import { BrokerClient } from '../../src/broker/client.ts';
import { MemoryDoubleDriver } from '../../src/broker/drivers/memory-double.ts';
import { requestJson } from '../../src/common/http-client.ts';
import { startBroker, type Broker } from '../../src/broker/index.ts';
import type { FaultInjection } from '../../src/broker/service.ts';
import type { PeerConfig } from '../../src/broker/trust.ts';
import { holderKey, joseProof, makeIssuer, mintToken, tempDir, type Issuer, type TokenScope } from '../helpers/broker-helpers.ts';

const clock = new ManualClock(1_800_000_000_000);
const nowS = () => Math.floor(clock.now() / 1000);
const DOMAINS = ['a', 'b', 'c'] as const;
type D = (typeof DOMAINS)[number];
const tmp = tempDir();
const holder = holderKey();
const brokers = {} as Record<D, Broker>;
const drivers = { a: new MemoryDoubleDriver(), b: new MemoryDoubleDriver(), c: new MemoryDoubleDriver() };
const faultsC: FaultInjection = {};
const cas = {} as Record<D, Ca>;
let issuer: Issuer;
let client: BrokerClient;

const topologies: Record<D, Record<string, unknown>> = {
  a: { nodes: [{ id: 'a1' }, { id: 'a2' }, { id: 'a-gw', stp: { peerDomain: 'b', peerNode: 'b-in' } }], links: [{ id: 'a-l1', a: 'a1', z: 'a2', capacityMbps: 1000 }, { id: 'a-l2', a: 'a2', z: 'a-gw', capacityMbps: 1000 }] },
  b: { nodes: [{ id: 'b-in', stp: { peerDomain: 'a', peerNode: 'a-gw' } }, { id: 'b1' }, { id: 'b-out', stp: { peerDomain: 'c', peerNode: 'c-in' } }], links: [{ id: 'b-l1', a: 'b-in', z: 'b1', capacityMbps: 1000 }, { id: 'b-l2', a: 'b1', z: 'b-out', capacityMbps: 1000 }] },
  // The last link of domain c is the narrowest: 600 Mbps.
  c: { nodes: [{ id: 'c-in', stp: { peerDomain: 'b', peerNode: 'b-out' } }, { id: 'c1' }, { id: 'c2' }], links: [{ id: 'c-l1', a: 'c-in', z: 'c1', capacityMbps: 1000 }, { id: 'c-l2', a: 'c1', z: 'c2', capacityMbps: 600 }] },
};

async function token(bw = 500): Promise<string> {
  const scope: TokenScope = { migrationId: 'mig_x', vmId: 'vm', project: 'p', src: 'a1', dst: 'c2', bandwidthMbps: bw, window: { start: nowS(), end: nowS() + 7200 }, domains: ['a', 'b', 'c'] };
  return mintToken(issuer, { holder, scope, now: nowS() });
}
const body = (bw = 500) => ({ src: 'a1', dst: 'c2', bandwidthMbps: bw, window: { end: nowS() + 3600 } });
const segments = (aId: string) => {
  const a = brokers.a.service.get(aId)!;
  const b = brokers.b.service.get(a.downstream!.reservationId)!;
  const c = brokers.c.service.get(b.downstream!.reservationId)!;
  return { a, b, c };
};
const bookedEverywhere = () => DOMAINS.reduce((n, d) => n + brokers[d].service.calendar.size, 0);
async function code(p: Promise<unknown>): Promise<VmtcError> {
  const e = await p.then(() => undefined, (x: unknown) => x);
  expect(e).toBeInstanceOf(VmtcError);
  return e as VmtcError;
}

beforeAll(async () => {
  issuer = await makeIssuer('a');
  const creds = {} as Record<D, { cert: string; key: string; clientCert: string; clientKey: string }>;
  for (const d of DOMAINS) {
    cas[d] = createCa({ commonName: `broker CA ${d}` });
    const server = issueServerCert(cas[d], { commonName: `broker:${d}` });
    const csr = makeKeyAndCsr(`broker:${d}`);
    const client = signClientCsr(cas[d], csr.csrPem, { commonName: `broker:${d}` });
    creds[d] = { cert: server.certPem, key: server.keyPem, clientCert: client.certPem, clientKey: csr.keyPem };
  }
  // Start from the end of the chain: each broker needs the URL of the next one only.
  const urls: Partial<Record<D, string>> = {};
  const neighbours: Record<D, D[]> = { a: ['b'], b: ['a', 'c'], c: ['b'] };
  for (const d of ['c', 'b', 'a'] as D[]) {
    const peers: PeerConfig[] = neighbours[d].map((p) => ({ domain: p, url: urls[p] ?? 'https://127.0.0.1:9', ca: cas[p].certPem }));
    brokers[d] = await startBroker({
      dataDir: `${tmp.dir}/${d}`, domain: d, topology: topologies[d], driver: drivers[d], clock,
      trust: { issuers: [{ iss: issuer.iss, jwks: { keys: [issuer.publicJwk] } }], peers, tls: creds[d] },
      ...(d === 'c' ? { faults: faultsC } : {}),
    });
    urls[d] = brokers[d].url;
  }
  client = new BrokerClient(brokers.a.url, { ca: cas.a.certPem, now: () => clock.now(), operatorToken: brokers.a.operatorToken });
}, 60_000);

afterAll(async () => {
  for (const d of DOMAINS) await brokers[d]?.close();
  tmp.cleanup();
});

describe('inter-domain reservations over mutual TLS', () => {
  it('holds, commits, provisions and tears down a segment in every domain', async () => {
    expect(brokers.a.url).toMatch(/^https:/);
    const t = await token();
    const r = await client.reserve(body(), t, holder);
    expect(r.reservationState).toBe('ReserveHeld');
    let s = segments(r.id);
    expect(s.a.path.nodes).toEqual(['a1', 'a2', 'a-gw']);
    expect(s.b.path.nodes).toEqual(['b-in', 'b1', 'b-out']);
    expect(s.c.path.nodes).toEqual(['c-in', 'c1', 'c2']);
    expect([s.a, s.b, s.c].map((x) => x.reservationState)).toEqual(['ReserveHeld', 'ReserveHeld', 'ReserveHeld']);
    expect(s.b.owner).toEqual({ kind: 'peer', domain: 'a' });
    expect(s.c.owner).toEqual({ kind: 'peer', domain: 'b' });
    await client.commit(r.id, t, holder);
    s = segments(r.id);
    expect([s.a, s.b, s.c].map((x) => x.committed)).toEqual([true, true, true]);
    await client.provision(r.id, t, holder);
    expect([drivers.a.active.has(s.a.id), drivers.b.active.has(s.b.id), drivers.c.active.has(s.c.id)]).toEqual([true, true, true]);
    // A holder cannot act on another domain's segment directly: it belongs to the upstream broker.
    const bc = new BrokerClient(brokers.b.url, { ca: cas.b.certPem, now: () => clock.now(), operatorToken: brokers.b.operatorToken });
    expect((await code(bc.release(s.b.id, t, holder))).code).toBe('VMTC_NOT_HOLDER');
    expect(drivers.b.active.has(s.b.id)).toBe(true);
    await client.teardown(r.id, t, holder);
    s = segments(r.id);
    expect([s.a, s.b, s.c].map((x) => x.lifecycleState)).toEqual(['Terminated', 'Terminated', 'Terminated']);
    expect(drivers.a.active.size + drivers.b.active.size + drivers.c.active.size).toBe(0);
    expect(bookedEverywhere()).toBe(0);
  });

  it('commits in none when the commit fails in the last domain', async () => {
    const t = await token();
    const r = await client.reserve(body(), t, holder);
    const held = segments(r.id);
    expect(bookedEverywhere()).toBe(3);
    faultsC.failCommit = true;
    try {
      const e = await code(client.commit(r.id, t, holder));
      expect(e.code).toBe('VMTC_COMMIT_FAILED');
      expect(e.details?.domain).toBe('c');
    } finally {
      faultsC.failCommit = false;
    }
    for (const [d, seg] of [['a', held.a], ['b', held.b], ['c', held.c]] as const) {
      expect(brokers[d].service.get(seg.id)).toMatchObject({ committed: false, booked: false, lifecycleState: 'Terminated' });
    }
    expect(bookedEverywhere()).toBe(0);
    // Nothing left half-committed: the full capacity of every domain can be booked again.
    const t2 = await token(600);
    const again = await client.reserve(body(600), t2, holder);
    await client.abort(again.id, t2, holder);
    expect(bookedEverywhere()).toBe(0);
  });

  it('holds in none when the last domain cannot hold its segment', async () => {
    const before = DOMAINS.map((d) => brokers[d].store.list().length);
    const t = await token(700);
    const e = await code(client.reserve(body(700), t, holder));
    expect(e.code).toBe('VMTC_PEER_SEGMENT_FAILED');
    expect(e.details).toMatchObject({ domain: 'c' });
    expect(bookedEverywhere()).toBe(0);
    // Each domain created (then ended) its segment: a and b show ReserveFailed/Terminated.
    const after = DOMAINS.map((d) => brokers[d].store.list());
    for (const [i, list] of after.entries()) {
      const fresh = list.slice(before[i]);
      expect(fresh.every((x) => x.lifecycleState === 'Terminated' && !x.booked)).toBe(true);
    }
  });

  it('provisions in none when the last domain fails to set up its data plane', async () => {
    const t = await token();
    const r = await client.reserve(body(), t, holder);
    await client.commit(r.id, t, holder);
    const s = segments(r.id);
    drivers.c.failProvision(s.c.id);
    const e = await code(client.provision(r.id, t, holder));
    expect(e.code).toBe('VMTC_PROVISION_FAILED');
    expect(drivers.a.active.size + drivers.b.active.size + drivers.c.active.size).toBe(0);
    for (const [d, seg] of [['a', s.a], ['b', s.b], ['c', s.c]] as const) {
      expect(brokers[d].service.get(seg.id)).toMatchObject({ provisionState: 'Released', committed: true });
    }
    drivers.c.clearFaults();
    await client.teardown(r.id, t, holder);
    expect(bookedEverywhere()).toBe(0);
  });

  it('refuses a peer request without a trusted client certificate', async () => {
    const t = await token();
    const url = `${brokers.b.url}/v1/reservations`;
    const res = await requestJson(url, {
      method: 'POST',
      body: { src: 'b-in', dst: 'c2', bandwidthMbps: 10, window: { end: nowS() + 60 }, upstream: { domain: 'a', reservationId: 'x' } },
      headers: { authorization: `DPoP ${t}`, dpop: await joseProof(holder, 'POST', url, t, nowS()) },
      tls: { ca: cas.b.certPem },
    });
    expect((res.body as { code: string }).code).toBe('VMTC_PEER_NOT_TRUSTED');
    // A certificate from a CA b does not trust for domain a (c's CA, CN broker:a) is not a peer.
    const csr = makeKeyAndCsr('broker:a');
    const rogue = signClientCsr(cas.c, csr.csrPem, { commonName: 'broker:a' });
    const rogueRequest = async (proof: boolean) => requestJson(url, {
      method: 'POST',
      body: { src: 'b-in', dst: 'c2', bandwidthMbps: 10, window: { end: nowS() + 60 }, upstream: { domain: 'a', reservationId: 'x' } },
      headers: { authorization: `DPoP ${t}`, ...(proof ? { dpop: await joseProof(holder, 'POST', url, t, nowS()) } : {}) },
      tls: { ca: cas.b.certPem, cert: rogue.certPem, key: csr.keyPem },
    });
    expect(((await rogueRequest(true)).body as { code: string }).code).toBe('VMTC_PEER_NOT_TRUSTED');
    // Not a peer, and no holder's proof either: refused before the body is read (README "API").
    expect(((await rogueRequest(false)).body as { code: string }).code).toBe('VMTC_DPOP_PROOF_INVALID');
    expect(brokers.b.service.calendar.size).toBe(0);
  });
});
