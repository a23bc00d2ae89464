// Calendar admission with 10,000 existing reservations (docs/broker.md#benchmarks).
//
//   npx tsx bench/broker-calendar.ts [--existing 10000] [--checks 100000] [--links 50]
//
// Books `existing` reservations (random windows over a week, each on a 4-link path out of
// `links` links), then measures: a fits() admission check of a new 4-link request, a book+unbook
// pair, and the same admission when all 10,000 are on ONE link (the worst case for the per-link
// step function). Also the REST-free end to end: BrokerService.reserve on a real SQLite store.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Calendar } from '../src/broker/calendar.ts';

const { values } = parseArgs({ options: { existing: { type: 'string', default: '10000' }, checks: { type: 'string', default: '100000' }, links: { type: 'string', default: '50' } } });
const E = Number(values.existing), C = Number(values.checks), LN = Number(values.links);
let seed = 7;
const rnd = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
const pick = (n: number) => Math.floor(rnd() * n);
const T0 = 1_800_000_000, WEEK = 7 * 86_400;
const links = Array.from({ length: LN }, (_, i) => `l${i}`);
const path4 = () => { const s = new Set<string>(); while (s.size < 4) s.add(links[pick(LN)]!); return [...s]; };

function measure(label: string, cal: Calendar, linksFor: () => string[]) {
  let t = performance.now();
  let booked = 0;
  for (let i = 0; i < E; i++) {
    const start = T0 + pick(WEEK);
    if (cal.book({ id: `r${i}`, links: linksFor(), start, end: start + 600 + pick(4 * 3600), mbps: 1 + pick(100) })) booked++;
  }
  const tLoad = performance.now() - t;
  const reqs = Array.from({ length: C }, () => { const start = T0 + pick(WEEK); return { links: linksFor(), start, end: start + 3600, mbps: 50 }; });
  t = performance.now();
  let fit = 0;
  for (const r of reqs) if (cal.fits(r.links, r.start, r.end, r.mbps)) fit++;
  const tFits = (performance.now() - t) / C;
  t = performance.now();
  const M = Math.min(C, 20_000);
  for (let i = 0; i < M; i++) {
    const r = reqs[i]!;
    if (cal.book({ id: `x${i}`, ...r })) cal.unbook(`x${i}`);
  }
  const tBook = (performance.now() - t) / M;
  return { label, existingBooked: booked, loadMs: +tLoad.toFixed(1), admissionCheckUs: +(tFits * 1000).toFixed(2), bookUnbookUs: +(tBook * 1000).toFixed(2), admitted: `${fit}/${C}` };
}

const spread = measure(`${E} reservations on 4-link paths over ${LN} links of 100 Gb/s`, new Calendar(() => 100_000), path4);
const oneLink = measure(`${E} reservations all on one link of 1 Tb/s`, new Calendar(() => 1_000_000), () => ['l0']);

// End to end through the runner (SQLite with synchronous=FULL, transitions persisted), no HTTP.
const { BrokerService } = await import('../src/broker/service.ts');
const { BrokerStore } = await import('../src/broker/store.ts');
const { parseTopology } = await import('../src/broker/topology.ts');
const { PeerLinks } = await import('../src/broker/peer.ts');
const { MemoryDoubleDriver } = await import('../src/broker/drivers/memory-double.ts');
const { ManualClock, randomIds } = await import('../src/common/clock.ts');
const { silentLogger } = await import('../src/common/log.ts');
const dir = mkdtempSync(join(tmpdir(), 'vmtc-bench-broker-'));
try {
  const nodes = Array.from({ length: 20 }, (_, i) => ({ id: `n${i}` }));
  const tl = nodes.slice(1).map((n, i) => ({ id: `l${i}`, a: `n${i}`, z: n.id, capacityMbps: 1_000_000 }));
  const clock = new ManualClock(T0 * 1000);
  const svc = new BrokerService({ domain: 'a', topology: parseTopology({ nodes, links: tl }), store: new BrokerStore(join(dir, 'broker.db')), driver: new MemoryDoubleDriver(), peers: new PeerLinks([], undefined), clock, ids: randomIds, logger: silentLogger(), holdTimeoutMs: 120_000 });
  const R = 2000;
  const t = performance.now();
  for (let i = 0; i < R; i++) {
    const start = T0 + pick(WEEK);
    await svc.reserve({ src: 'n0', dst: `n${1 + pick(19)}`, bandwidthMbps: 10, start, end: start + 3600 }, { owner: { kind: 'holder', jkt: 'x' }, token: 't', jti: `j${i}`, iss: 'aaa:a', exp: T0 + WEEK, domains: ['a'] });
  }
  const perReserve = (performance.now() - t) / R;
  svc.close();
  console.log(JSON.stringify({ bench: 'broker-calendar', spread, oneLink, runnerReserveMs: +perReserve.toFixed(3), runnerReserves: R }, null, 2));
} finally {
  rmSync(dir, { recursive: true, force: true });
}
