// Topology and trust file validation (field-named coded errors), the calendar's step function,
// path computation with prune-and-retry, and the catalogue being documented.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { VmtcError } from '../../src/common/errors.ts';
import { Calendar, StepLoad } from '../../src/broker/calendar.ts';
import { BROKER_OWN_ERRORS } from '../../src/broker/errors.ts';
import { computePath, shortestPath } from '../../src/broker/path.ts';
import { loadTopology, parseTopology } from '../../src/broker/topology.ts';
import { loadTrust, parseTrust } from '../../src/broker/trust.ts';
import { lineTopology, makeIssuer, tempDir } from '../helpers/broker-helpers.ts';

const tmp = tempDir();
afterAll(() => tmp.cleanup());

function fails(fn: () => unknown, code: string, field: string): void {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(VmtcError);
  expect((err as VmtcError).code).toBe(code);
  expect((err as VmtcError).details?.field).toBe(field);
}

const node = (id: string, extra: Record<string, unknown> = {}) => ({ id, ...extra });
const link = (id: string, a: string, z: string, capacityMbps = 100, extra: Record<string, unknown> = {}) => ({ id, a, z, capacityMbps, ...extra });

describe('topology file', () => {
  it('accepts a valid file and builds an undirected adjacency', () => {
    const t = parseTopology(lineTopology(), 'a');
    expect(t.nodes.size).toBe(4);
    expect(t.adjacency.get('a2')!.map((x) => x.to).sort()).toEqual(['a1', 'a3']);
    expect(t.maxCapacityMbps).toBe(1000);
  });

  it('refuses each kind of bad file with the field named', () => {
    const T = (nodes: unknown[], links: unknown[], extra: Record<string, unknown> = {}) => () => parseTopology({ nodes, links, ...extra }, 'a');
    const C = 'VMTC_TOPOLOGY_INVALID';
    fails(T([], []), C, 'nodes');
    fails(T([node('x'), node('x')], []), C, 'nodes[1].id');
    fails(T([node('x'), node('y')], [link('l', 'x', 'q')]), C, 'links[0].z');
    fails(T([node('x'), node('y')], [link('l', 'q', 'y')]), C, 'links[0].a');
    fails(T([node('x'), node('y')], [link('l', 'x', 'x')]), C, 'links[0].z');
    fails(T([node('x'), node('y')], [link('l', 'x', 'y'), link('m', 'y', 'x')]), C, 'links[1]');
    fails(T([node('x'), node('y')], [link('l', 'x', 'y'), link('l', 'x', 'y')]), C, 'links[1].id');
    fails(T([node('x'), node('y')], [link('l', 'x', 'y', 0)]), C, 'links[0].capacityMbps');
    fails(T([node('x'), node('y')], [link('l', 'x', 'y', -1)]), C, 'links[0].capacityMbps');
    fails(T([node('x'), node('y')], [link('l', 'x', 'y', 10, { cost: -1 })]), C, 'links[0].cost');
    fails(T([node('x'), node('y')], [link('l', 'x', 'y', 10, { colour: 'red' })]), C, 'links[0].colour');
    fails(T([node('x', { stp: { peerDomain: 'a', peerNode: 'z' } })], []), C, 'nodes[0].stp.peerDomain');
    fails(T([node('x', { stp: { peerDomain: 'b' } })], []), C, 'nodes[0].stp.peerNode');
    fails(T([node('x')], [], { domain: 'b' }), C, 'domain');
    fails(T([node('bad id')], []), C, 'nodes[0].id');
  });

  it('names the file when it cannot be read or parsed', () => {
    const f = join(tmp.dir, 'topo.json');
    writeFileSync(f, '{ nope');
    fails(() => loadTopology(f), 'VMTC_TOPOLOGY_INVALID', 'topology');
    fails(() => loadTopology(join(tmp.dir, 'missing.json')), 'VMTC_TOPOLOGY_INVALID', 'topology');
  });
});

describe('trust file', () => {
  it('accepts inline JWKS and refuses bad entries by field', async () => {
    const iss = await makeIssuer('a');
    const f = join(tmp.dir, 'trust.json');
    writeFileSync(f, JSON.stringify({ issuers: [{ iss: iss.iss, jwks: { keys: [iss.publicJwk] } }] }));
    expect(loadTrust(f).issuers[0]!.iss).toBe('aaa:a');
    const C = 'VMTC_TRUST_INVALID';
    fails(() => parseTrust({ issuers: [] }), C, 'issuers');
    fails(() => parseTrust({ issuers: [{ iss: 'x', jwks: { keys: [] } }] }), C, 'issuers[0].iss');
    fails(() => parseTrust({ issuers: [{ iss: 'aaa:a' }] }), C, 'issuers[0]');
    fails(() => parseTrust({ issuers: [{ iss: 'aaa:a', jwks: { keys: [{ kty: 'RSA' }] } }] }), C, 'issuers[0].jwks.keys[0]');
    fails(() => parseTrust({ issuers: [{ iss: 'aaa:a', jwks: { keys: [{ ...iss.publicJwk, d: 'secret' }] } }] }), C, 'issuers[0].jwks.keys[0].d');
    fails(() => parseTrust({ issuers: [{ iss: 'aaa:a', jwks: { keys: [] } }], peers: [{ domain: 'b', url: 'http://x', ca: '-----BEGIN CERTIFICATE-----' }] }), C, 'peers[0].url');
    fails(() => parseTrust({ issuers: [{ iss: 'aaa:a', jwks: { keys: [] } }], peers: [{ domain: 'b', url: 'https://x', ca: 'nofile.pem' }] }, tmp.dir), C, 'peers[0].ca');
    fails(() => parseTrust({ issuers: [{ iss: 'aaa:a', jwks: { keys: [] } }], peers: [{ domain: 'b', url: 'https://x', ca: '-----BEGIN CERTIFICATE-----' }] }), C, 'tls');
  });
});

describe('calendar', () => {
  it('checks the peak of overlapping bookings over the whole window, not the load at its start', () => {
    const s = new StepLoad();
    s.add(10, 20, 300);
    s.add(15, 30, 400);
    expect(s.peak(0, 10)).toBe(0);
    expect(s.peak(0, 11)).toBe(300);
    expect(s.peak(16, 17)).toBe(700);
    expect(s.peak(20, 40)).toBe(400);
    expect(s.peak(30, 40)).toBe(0);
    s.add(10, 20, -300);
    s.add(15, 30, -400);
    expect(s.breakpoints).toBe(0);

    const cal = new Calendar(() => 1000);
    expect(cal.book({ id: 'x', links: ['l'], start: 0, end: 100, mbps: 600 })).toBe(true);
    // Starts after x ends for half its window but overlaps it: refused.
    expect(cal.book({ id: 'y', links: ['l'], start: 50, end: 150, mbps: 500 })).toBe(false);
    // Back to back ([start, end) windows): fits.
    expect(cal.book({ id: 'z', links: ['l'], start: 100, end: 150, mbps: 1000 })).toBe(true);
    expect(cal.free('l', 0, 200)).toBe(0);
    cal.unbook('z');
    expect(cal.free('l', 100, 200)).toBe(1000);
    // All or nothing across links.
    expect(cal.book({ id: 'w', links: ['m', 'l'], start: 0, end: 10, mbps: 500 })).toBe(false);
    expect(cal.free('m', 0, 10)).toBe(1000);
  });
});

describe('path computation', () => {
  it('takes the cheapest path, prunes full links and retries, and says when nothing fits', () => {
    const t = parseTopology(lineTopology());
    expect(shortestPath(t, 'a1', new Set(['a3']))!.nodes).toEqual(['a1', 'a2', 'a3']);
    const viaDetour = computePath(t, 'a1', new Set(['a3']), (l) => l !== 'l23');
    expect(viaDetour).toMatchObject({ alternative: true, path: { nodes: ['a1', 'a4', 'a3'], links: ['l14', 'l43'], cost: 10 } });
    expect(computePath(t, 'a1', new Set(['a3']), () => false).path).toBeUndefined();
    expect(computePath(t, 'a1', new Set(['zz']), () => true).path).toBeUndefined();
  });
});

describe('error catalogue', () => {
  it('documents every broker code in docs/broker.md', () => {
    const doc = readFileSync(new URL('../../docs/broker.md', import.meta.url), 'utf8');
    const own = Object.keys(BROKER_OWN_ERRORS);
    expect(own.length).toBeGreaterThan(20);
    for (const c of own) expect(doc, c).toContain(c);
  });
});
