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

/** A binary min-heap of [priority, node]. */
class Heap {
  private p: number[] = [];
  private v: string[] = [];
  get size(): number {
    return this.p.length;
  }
  push(pri: number, val: string): void {
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
  pop(): [number, string] {
    const p = this.p, v = this.v;
    const top: [number, string] = [p[0]!, v[0]!];
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
 * returns true. Ties are broken by fewer hops, then by node id (deterministic).
 */
export function shortestPath(topo: Topology, src: string, targets: Set<string>, usable: (linkId: string) => boolean = () => true): Path | undefined {
  if (!topo.nodes.has(src)) return undefined;
  const dist = new Map<string, number>([[src, 0]]);
  const prev = new Map<string, { node: string; link: string }>();
  const done = new Set<string>();
  const heap = new Heap();
  heap.push(0, src);
  // Usability of a link is asked at most once per search (the calendar query is the costly part).
  const cache = new Map<string, boolean>();
  while (heap.size > 0) {
    const [d, u] = heap.pop();
    if (done.has(u)) continue;
    done.add(u);
    if (targets.has(u)) {
      const nodes = [u], links: string[] = [];
      for (let x = u; x !== src; ) {
        const p = prev.get(x)!;
        links.push(p.link);
        nodes.push(p.node);
        x = p.node;
      }
      return { nodes: nodes.reverse(), links: links.reverse(), cost: d };
    }
    for (const { link, to } of topo.adjacency.get(u) ?? []) {
      if (done.has(to)) continue;
      let ok = cache.get(link.id);
      if (ok === undefined) cache.set(link.id, (ok = usable(link.id)));
      if (!ok) continue;
      // Cost plus a tiny per-hop term so that equal-cost paths prefer fewer hops.
      const nd = d + link.cost + 1e-9;
      const old = dist.get(to);
      if (old === undefined || nd < old) {
        dist.set(to, nd);
        prev.set(to, { node: u, link: link.id });
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
