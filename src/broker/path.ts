// Path computation: Dijkstra by link cost over the links that have enough free bandwidth for the
// whole requested window. We first try the unconstrained shortest path; when one of its links is
// full we prune every link without room and search again (prune-and-retry), which yields the
// cheapest alternative that fits, or proves there is none.
import type { Topology } from './topology.ts';

export interface Path {
  nodes: string[];
  links: string[];
  cost: number;
}

/** The topology as integer-indexed arrays, built once per Topology (path queries are hot). */
interface Compiled {
  index: Map<string, number>;
  ids: string[];
  linkIds: string[];
  /** CSR adjacency: neighbours of node i are adjTo[adjStart[i] .. adjStart[i+1]). */
  adjStart: Int32Array;
  adjTo: Int32Array;
  adjLink: Int32Array;
  adjCost: Float64Array;
}

const compiled = new WeakMap<Topology, Compiled>();

function compile(topo: Topology): Compiled {
  let c = compiled.get(topo);
  if (c) return c;
  const ids = [...topo.nodes.keys()];
  const index = new Map(ids.map((id, i) => [id, i]));
  const linkIds = [...topo.links.keys()];
  const linkIndex = new Map(linkIds.map((id, i) => [id, i]));
  const adjStart = new Int32Array(ids.length + 1);
  for (let i = 0; i < ids.length; i++) adjStart[i + 1] = adjStart[i]! + (topo.adjacency.get(ids[i]!)?.length ?? 0);
  const m = adjStart[ids.length]!;
  const adjTo = new Int32Array(m), adjLink = new Int32Array(m), adjCost = new Float64Array(m);
  for (let i = 0; i < ids.length; i++) {
    let k = adjStart[i]!;
    for (const { link, to } of topo.adjacency.get(ids[i]!) ?? []) {
      adjTo[k] = index.get(to)!;
      adjLink[k] = linkIndex.get(link.id)!;
      adjCost[k] = link.cost;
      k++;
    }
  }
  c = { index, ids, linkIds, adjStart, adjTo, adjLink, adjCost };
  compiled.set(topo, c);
  return c;
}

/** A binary min-heap of (priority, node index). */
class Heap {
  private p: number[] = [];
  private v: number[] = [];
  get size(): number {
    return this.p.length;
  }
  push(pri: number, val: number): void {
    const p = this.p, v = this.v;
    let i = p.length;
    p.push(pri); v.push(val);
    while (i > 0) {
      const up = (i - 1) >> 1;
      if (p[up]! <= pri) break;
      p[i] = p[up]!; v[i] = v[up]!;
      i = up;
    }
    p[i] = pri; v[i] = val;
  }
  /** Pops the minimum; its priority is left in `lastPri`. */
  lastPri = 0;
  pop(): number {
    const p = this.p, v = this.v;
    this.lastPri = p[0]!;
    const top = v[0]!;
    const lp = p.pop()!, lv = v.pop()!;
    const n = p.length;
    if (n > 0) {
      let i = 0;
      for (;;) {
        const l = 2 * i + 1, r = l + 1;
        let m = i, mp = lp;
        if (l < n && p[l]! < mp) { m = l; mp = p[l]!; }
        if (r < n && p[r]! < mp) { m = r; mp = p[r]!; }
        if (m === i) break;
        p[i] = p[m]!; v[i] = v[m]!;
        i = m;
      }
      p[i] = lp; v[i] = lv;
    }
    return top;
  }
}

/**
 * Cheapest path from `src` to the nearest of `targets`, using only links for which `usable`
 * returns true. Ties are broken by fewer hops.
 */
export function shortestPath(topo: Topology, src: string, targets: Set<string>, usable?: (linkId: string) => boolean): Path | undefined {
  const g = compile(topo);
  const s = g.index.get(src);
  if (s === undefined) return undefined;
  const n = g.ids.length;
  const isTarget = new Uint8Array(n);
  for (const t of targets) {
    const i = g.index.get(t);
    if (i !== undefined) isTarget[i] = 1;
  }
  const dist = new Float64Array(n).fill(Infinity);
  const prevNode = new Int32Array(n).fill(-1);
  const prevLink = new Int32Array(n).fill(-1);
  const done = new Uint8Array(n);
  // Usability of a link is asked at most once per search (the calendar query is the costly part):
  // 0 = not asked yet, 1 = usable, 2 = not usable.
  const ok = usable ? new Uint8Array(g.linkIds.length) : undefined;
  const heap = new Heap();
  dist[s] = 0;
  heap.push(0, s);
  while (heap.size > 0) {
    const u = heap.pop();
    const d = heap.lastPri;
    if (done[u]) continue;
    done[u] = 1;
    if (isTarget[u]) {
      const nodes = [g.ids[u]!], links: string[] = [];
      for (let x = u; x !== s; x = prevNode[x]!) {
        links.push(g.linkIds[prevLink[x]!]!);
        nodes.push(g.ids[prevNode[x]!]!);
      }
      return { nodes: nodes.reverse(), links: links.reverse(), cost: d };
    }
    for (let k = g.adjStart[u]!, e = g.adjStart[u + 1]!; k < e; k++) {
      const to = g.adjTo[k]!;
      if (done[to]) continue;
      if (ok) {
        const li = g.adjLink[k]!;
        if (ok[li] === 0) ok[li] = usable!(g.linkIds[li]!) ? 1 : 2;
        if (ok[li] === 2) continue;
      }
      // Cost plus a tiny per-hop term so that equal-cost paths prefer fewer hops.
      const nd = d + g.adjCost[k]! + 1e-9;
      if (nd < dist[to]!) {
        dist[to] = nd;
        prevNode[to] = u;
        prevLink[to] = g.adjLink[k]!;
        heap.push(nd, to);
      }
    }
  }
  return undefined;
}

export interface PathResult {
  path?: Path;
  /** The unconstrained shortest path was full and an alternative was chosen. */
  alternative: boolean;
}

/** Shortest path with `fits(linkId)` on every link: first choice, else prune full links and retry. */
export function computePath(topo: Topology, src: string, targets: Set<string>, fits: (linkId: string) => boolean): PathResult {
  const first = shortestPath(topo, src, targets);
  if (!first) return { alternative: false };
  if (first.links.every(fits)) return { path: tidy(first), alternative: false };
  const alt = shortestPath(topo, src, targets, fits);
  return alt ? { path: tidy(alt), alternative: true } : { alternative: true };
}

function tidy(p: Path): Path {
  return { ...p, cost: Math.round(p.cost * 1e6) / 1e6 };
}
