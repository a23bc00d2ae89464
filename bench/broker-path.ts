// Path computation on a generated 1,000-node, 5,000-link topology (docs/broker.md#benchmarks).
//
//   npx tsx bench/broker-path.ts [--nodes 1000] [--links 5000] [--queries 2000] [--bookings 20000]
//
// Prints, per query: the unconstrained Dijkstra (shortestPath), and computePath against a busy
// calendar (bookings spread over the links so that many shortest paths are full and the
// prune-and-retry alternative has to be found), i.e. what a reserve does before it books.
import { parseArgs } from 'node:util';
import { Calendar } from '../src/broker/calendar.ts';
import { computePath, shortestPath } from '../src/broker/path.ts';
import { parseTopology } from '../src/broker/topology.ts';

const { values } = parseArgs({ options: { nodes: { type: 'string', default: '1000' }, links: { type: 'string', default: '5000' }, queries: { type: 'string', default: '2000' }, bookings: { type: 'string', default: '20000' } } });
const N = Number(values.nodes), L = Number(values.links), Q = Number(values.queries), B = Number(values.bookings);

// Deterministic PRNG so runs are comparable.
let seed = 42;
const rnd = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
const pick = (n: number) => Math.floor(rnd() * n);

function generate(): Record<string, unknown> {
  const nodes = Array.from({ length: N }, (_, i) => ({ id: `n${i}` }));
  const links: Record<string, unknown>[] = [];
  const pairs = new Set<string>();
  const add = (a: number, z: number) => {
    if (a === z) return false;
    const k = a < z ? `${a}-${z}` : `${z}-${a}`;
    if (pairs.has(k)) return false;
    pairs.add(k);
    links.push({ id: `l${links.length}`, a: `n${a}`, z: `n${z}`, capacityMbps: [1000, 10000, 40000][pick(3)], cost: 1 + pick(20) });
    return true;
  };
  // A random spanning tree keeps the graph connected; the rest are random chords.
  for (let i = 1; i < N; i++) add(i, pick(i));
  while (links.length < L) add(pick(N), pick(N));
  return { nodes, links };
}

const t0 = performance.now();
const topo = parseTopology(generate());
const tParse = performance.now() - t0;
const queries = Array.from({ length: Q }, () => {
  const s = pick(N);
  let d = pick(N);
  if (d === s) d = (s + 1) % N;
  return [`n${s}`, `n${d}`] as const;
});

// Unconstrained Dijkstra.
let hops = 0;
let t = performance.now();
for (const [s, d] of queries) hops += shortestPath(topo, s, new Set([d]))!.links.length;
const tDijkstra = (performance.now() - t) / Q;

// A busy calendar: B bookings of random windows on random links.
const cal = new Calendar((l) => topo.links.get(l)!.capacityMbps);
const linkIds = [...topo.links.keys()];
const T0 = 1_800_000_000;
for (let i = 0; i < B; i++) {
  const l = linkIds[pick(linkIds.length)]!;
  const start = T0 + pick(86_400);
  cal.force({ id: `b${i}`, links: [l], start, end: start + 600 + pick(7200), mbps: 100 + pick(900) });
}
let alternatives = 0, none = 0;
t = performance.now();
for (const [s, d] of queries) {
  const start = T0 + pick(86_400);
  const r = computePath(topo, s, new Set([d]), (l) => cal.free(l, start, start + 3600) >= 1000);
  if (!r.path) none++;
  else if (r.alternative) alternatives++;
}
const tConstrained = (performance.now() - t) / Q;

console.log(JSON.stringify({
  bench: 'broker-path', nodes: N, links: L, queries: Q, calendarBookings: B,
  parseTopologyMs: +tParse.toFixed(1),
  dijkstraMsPerQuery: +tDijkstra.toFixed(3), avgHops: +(hops / Q).toFixed(1),
  computePathWithCalendarMsPerQuery: +tConstrained.toFixed(3), alternativesFound: alternatives, noPath: none,
}, null, 2));
