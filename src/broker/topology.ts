// The topology file (docs/broker.md "Topology file"): this domain's nodes, its links with their
// capacity, and the inter-domain points (STPs, as NSI calls the service termination points) where
// it meets a neighbour domain. Validated once at start; every problem is a VMTC_TOPOLOGY_INVALID
// naming the field, so a bad file never gets as far as a reservation.
import { readFileSync } from 'node:fs';
import { brokerError } from './errors.ts';

export interface StpSpec {
  /** The neighbour domain this point meets. */
  peerDomain: string;
  /** The node id of the same point in the neighbour's topology (where its segment starts). */
  peerNode: string;
}

export interface NodeSpec {
  id: string;
  /** Driver-specific settings passed through to the driver (SegmentRequest.nodes). */
  driver?: Record<string, unknown>;
  stp?: StpSpec;
}

export interface LinkSpec {
  id: string;
  a: string;
  z: string;
  capacityMbps: number;
  /** Routing cost (Dijkstra weight); default 1. */
  cost: number;
  latencyMs?: number;
}

export interface Topology {
  domain?: string;
  nodes: Map<string, NodeSpec>;
  links: Map<string, LinkSpec>;
  /** node id -> [{ link, neighbour }] (links are undirected; capacity is shared both ways). */
  adjacency: Map<string, { link: LinkSpec; to: string }[]>;
  maxCapacityMbps: number;
}

function bad(field: string, reason: string, extra: Record<string, unknown> = {}): never {
  throw brokerError('VMTC_TOPOLOGY_INVALID', { field, reason, ...extra }, { message: `topology: ${field}: ${reason}` });
}

const ID_RE = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/;

/** Validate a parsed topology document (and optionally that it belongs to `domain`). */
export function parseTopology(doc: unknown, domain?: string): Topology {
  if (!doc || typeof doc !== 'object' || Array.isArray(doc)) bad('$', 'must be a JSON object');
  const d = doc as Record<string, unknown>;
  for (const k of Object.keys(d)) if (!['domain', 'nodes', 'links', 'description'].includes(k)) bad(k, 'unknown field');
  if (d.domain !== undefined) {
    if (typeof d.domain !== 'string' || !d.domain) bad('domain', 'must be a non-empty string');
    if (domain !== undefined && d.domain !== domain) bad('domain', `is "${d.domain}" but this broker runs domain "${domain}"`);
  }
  if (!Array.isArray(d.nodes) || d.nodes.length === 0) bad('nodes', 'must be a non-empty array');
  if (!Array.isArray(d.links)) bad('links', 'must be an array');
  const nodes = new Map<string, NodeSpec>();
  (d.nodes as unknown[]).forEach((n, i) => {
    const f = `nodes[${i}]`;
    if (!n || typeof n !== 'object' || Array.isArray(n)) bad(f, 'must be an object');
    const o = n as Record<string, unknown>;
    for (const k of Object.keys(o)) if (!['id', 'driver', 'stp', 'description'].includes(k)) bad(`${f}.${k}`, 'unknown field');
    if (typeof o.id !== 'string' || !ID_RE.test(o.id)) bad(`${f}.id`, 'must be an id of letters, digits, _ . : -');
    if (nodes.has(o.id)) bad(`${f}.id`, `duplicate node id "${o.id}"`);
    const spec: NodeSpec = { id: o.id };
    if (o.driver !== undefined) {
      if (!o.driver || typeof o.driver !== 'object' || Array.isArray(o.driver)) bad(`${f}.driver`, 'must be an object');
      spec.driver = o.driver as Record<string, unknown>;
    }
    if (o.stp !== undefined) {
      const s = o.stp as Record<string, unknown>;
      if (!s || typeof s !== 'object' || Array.isArray(s)) bad(`${f}.stp`, 'must be an object');
      if (typeof s.peerDomain !== 'string' || !s.peerDomain) bad(`${f}.stp.peerDomain`, 'must be a non-empty string');
      if (domain !== undefined && s.peerDomain === domain) bad(`${f}.stp.peerDomain`, 'an inter-domain point cannot lead to its own domain');
      if (typeof s.peerNode !== 'string' || !ID_RE.test(s.peerNode)) bad(`${f}.stp.peerNode`, 'must be the node id of this point in the peer topology');
      spec.stp = { peerDomain: s.peerDomain, peerNode: s.peerNode };
    }
    nodes.set(o.id, spec);
  });
  const links = new Map<string, LinkSpec>();
  const pairs = new Map<string, string>();
  const adjacency = new Map<string, { link: LinkSpec; to: string }[]>();
  for (const id of nodes.keys()) adjacency.set(id, []);
  let maxCapacityMbps = 0;
  (d.links as unknown[]).forEach((l, i) => {
    const f = `links[${i}]`;
    if (!l || typeof l !== 'object' || Array.isArray(l)) bad(f, 'must be an object');
    const o = l as Record<string, unknown>;
    for (const k of Object.keys(o)) if (!['id', 'a', 'z', 'capacityMbps', 'cost', 'latencyMs', 'description'].includes(k)) bad(`${f}.${k}`, 'unknown field');
    if (typeof o.id !== 'string' || !ID_RE.test(o.id)) bad(`${f}.id`, 'must be an id of letters, digits, _ . : -');
    if (links.has(o.id)) bad(`${f}.id`, `duplicate link id "${o.id}"`);
    if (typeof o.a !== 'string' || !nodes.has(o.a)) bad(`${f}.a`, `dangling link: node "${String(o.a)}" is not defined`);
    if (typeof o.z !== 'string' || !nodes.has(o.z)) bad(`${f}.z`, `dangling link: node "${String(o.z)}" is not defined`);
    // A self-loop can never be on a shortest path and usually means a typo.
    if (o.a === o.z) bad(`${f}.z`, 'self-loop: a link must join two different nodes');
    // Parallel links between the same pair are refused: a path is reported to drivers as a node
    // list, which could not say which of two parallel links carries the circuit.
    const key = [o.a, o.z].sort().join('\u0000');
    if (pairs.has(key)) bad(`${f}`, `parallel link: "${pairs.get(key)}" already joins ${o.a} and ${o.z}`);
    if (typeof o.capacityMbps !== 'number' || !Number.isFinite(o.capacityMbps) || o.capacityMbps <= 0) bad(`${f}.capacityMbps`, 'must be a positive number');
    if (o.cost !== undefined && (typeof o.cost !== 'number' || !Number.isFinite(o.cost) || o.cost < 0)) bad(`${f}.cost`, 'must be a number >= 0');
    if (o.latencyMs !== undefined && (typeof o.latencyMs !== 'number' || !Number.isFinite(o.latencyMs) || o.latencyMs < 0)) bad(`${f}.latencyMs`, 'must be a number >= 0');
    const spec: LinkSpec = { id: o.id, a: o.a, z: o.z, capacityMbps: o.capacityMbps, cost: (o.cost as number | undefined) ?? 1 };
    if (o.latencyMs !== undefined) spec.latencyMs = o.latencyMs as number;
    pairs.set(key, o.id);
    links.set(o.id, spec);
    adjacency.get(o.a)!.push({ link: spec, to: o.z });
    adjacency.get(o.z)!.push({ link: spec, to: o.a });
    maxCapacityMbps = Math.max(maxCapacityMbps, o.capacityMbps);
  });
  const out: Topology = { nodes, links, adjacency, maxCapacityMbps };
  if (typeof d.domain === 'string') out.domain = d.domain;
  return out;
}

export function loadTopology(file: string, domain?: string): Topology {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw brokerError('VMTC_TOPOLOGY_INVALID', { field: 'topology', file, reason: (e as Error).message }, { message: `cannot read topology file ${file}`, cause: e });
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw brokerError('VMTC_TOPOLOGY_INVALID', { field: 'topology', file, reason: (e as Error).message }, { message: `topology file ${file} is not JSON`, cause: e });
  }
  return parseTopology(doc, domain);
}

/** The inter-domain points of this domain that lead to `peerDomain`. */
export function stpsToward(topo: Topology, peerDomain: string): NodeSpec[] {
  return [...topo.nodes.values()].filter((n) => n.stp?.peerDomain === peerDomain);
}
