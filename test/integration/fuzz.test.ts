// A seeded fuzz test of every route of every service. The controller (with two host agents on
// the DoubleDriver), the AAA and the broker are started for real; each one's /openapi.json says
// what its operations are, and for every operation a seeded PRNG makes requests: bodies that fit
// the schema and bodies that do not (wrong types, missing and extra fields, huge strings, deep
// nesting, odd unicode, negative and huge numbers, null), wrong content types and raw garbage,
// good, over-long and badly encoded path parameters, good and bad query parameters, with no
// credential, a garbage one, and a real one (the controller's admin token, the AAA's admin token
// and a requester's DPoP proof, the broker's operator token and a capability token with its
// proof). Every response must arrive within a few seconds, none may be a 5xx, and every error
// must carry a VMTC_ code. The seed is fixed (VMTC_FUZZ_SEED overrides it) and printed with
// every failure, so a failure can be replayed.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { silentLogger } from '../../src/common/log.ts';
import { generateRequesterKeySync, makeDpopProofSync, type RequesterKey } from '../../src/common/dpop.ts';
import { startAaa, type AaaHandle } from '../../src/aaa/index.ts';
import { startBroker, type Broker } from '../../src/broker/index.ts';
import { MemoryDoubleDriver } from '../../src/broker/drivers/memory-double.ts';
import { startHarness, vmSpec, type Harness } from '../helpers/controller-harness.ts';
import { joseProof, lineTopology, makeIssuer, mintToken, type Issuer } from '../helpers/broker-helpers.ts';

const SEED = Number(process.env.VMTC_FUZZ_SEED ?? 0x5eed2025);
/** Requests per operation (two thirds malformed in some way), and a bound on the whole run. */
const PER_OPERATION = 60;
const BUDGET_MS = 40_000;
const REQUEST_TIMEOUT_MS = 5_000;
const IN_FLIGHT = 4;
// The fuzzer is one client that is refused thousands of times: limits it cannot reach.
const NO_LIMITS = { requests: { max: 1_000_000, windowMs: 60_000 }, refusals: { max: 1_000_000, windowMs: 60_000 } };

/** mulberry32: small, fast, and the same sequence for the same seed everywhere. */
function prng(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (lo: number, hi: number) => lo + Math.floor(next() * (hi - lo + 1));
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(next() * xs.length)]!;
  const chance = (p: number) => next() < p;
  return { next, int, pick, chance };
}
type Rng = ReturnType<typeof prng>;

// ---- values from JSON Schema ----------------------------------------------------------------

type Schema = {
  type?: string | string[]; properties?: Record<string, Schema>; required?: string[]; items?: Schema; enum?: unknown[]; const?: unknown;
  minLength?: number; maxLength?: number; minimum?: number; maximum?: number; exclusiveMinimum?: number; pattern?: string; format?: string;
  additionalProperties?: boolean | Schema; anyOf?: Schema[]; oneOf?: Schema[]; allOf?: Schema[]; $ref?: string; minItems?: number; maxItems?: number;
};

/** Values that reach past validation into the services' logic (hosts, VMs, sites, nodes that exist). */
const HINTS: Record<string, unknown[]> = {
  vmId: ['vm1', 'vm2', 'vm-fuzz'], hostId: ['A', 'B', 'C'], destinationHostId: ['A', 'B'], project: ['demo', 'p1'],
  src: ['a1', 'siteA'], dst: ['a3', 'siteB'], name: ['fuzz'], role: ['reader', 'orchestrator', 'admin'], kind: ['host', 'tunnel'],
  mode: ['live', 'cold', 'auto'], migrationId: ['mig_fuzz'], bandwidthMbps: [10, 100], token: ['vmtc-enroll-guess'],
  // Windows in epoch seconds (the AAA's and the broker's).
  start: [Math.floor(Date.now() / 1000)], end: [Math.floor(Date.now() / 1000) + 600],
};
const UNICODE = ['é', 'ß', '日本', '🚀', '\u202e', '\u0000', '\ud800', '\uffff', 'Ω≈ç√', 'a\nb', '"\\'];
const ALNUM = 'abcdefghijklmnopqrstuvwxyz0123456789';
const DEEP = '@@deep:';

/** JSON text of a value, with each deep marker replaced by that many nested arrays or objects. */
function toJson(v: unknown): string {
  return JSON.stringify(v).replace(new RegExp(`"${DEEP}(\\d+)([ao])"`, 'g'), (_m, n: string, k: string) =>
    k === 'a' ? '['.repeat(Number(n)) + '1' + ']'.repeat(Number(n)) : '{"a":'.repeat(Number(n)) + '1' + '}'.repeat(Number(n)));
}

class Gen {
  constructor(private readonly r: Rng, private readonly refs: Record<string, Schema>) {}

  resolve(s: Schema): Schema {
    for (let i = 0; s.$ref && i < 10; i++) s = this.refs[s.$ref.split('/').pop()!] ?? {};
    return s;
  }

  string(s: Schema, field?: string): string {
    const hints = field ? HINTS[field]?.filter((h): h is string => typeof h === 'string') : undefined;
    if (s.format === 'date-time') return new Date(Date.now() + this.r.int(-60, 3600) * 1000).toISOString();
    const candidates = [...(hints ?? []), 'vm-x', 'x1', 'a', '1', '200', 'fuzz-1', 'a.b'];
    if (s.pattern) {
      const re = new RegExp(s.pattern);
      const fits = candidates.filter((c) => re.test(c));
      if (fits.length) return this.r.pick(fits);
    } else if (hints?.length && this.r.chance(0.7)) {
      return this.r.pick(hints);
    }
    const len = this.r.int(s.minLength ?? 1, Math.max(s.minLength ?? 1, Math.min(s.maxLength ?? 24, 24)));
    let out = '';
    for (let i = 0; i < len; i++) out += ALNUM[this.r.int(0, ALNUM.length - 1)];
    return out;
  }

  number(s: Schema, integer: boolean, field?: string): number {
    const hints = field ? HINTS[field]?.filter((h): h is number => typeof h === 'number') : undefined;
    if (hints?.length && this.r.chance(0.5)) return this.r.pick(hints);
    const lo = s.minimum ?? (s.exclusiveMinimum !== undefined ? s.exclusiveMinimum + 1 : 0);
    const hi = s.maximum ?? lo + 1000;
    const v = lo + this.r.next() * (hi - lo);
    return integer ? Math.max(lo, Math.min(hi, Math.round(v))) : v;
  }

  /** A value that fits the schema (as far as this small generator can tell). */
  valid(schema: Schema, field?: string, depth = 0): unknown {
    const s = this.resolve(schema);
    if (s.const !== undefined) return s.const;
    if (s.enum) return this.r.pick(s.enum);
    const alt = s.anyOf ?? s.oneOf;
    if (alt) return this.valid(this.r.pick(alt), field, depth);
    if (s.allOf) return Object.assign({}, ...s.allOf.map((x) => this.valid(x, field, depth)));
    const types = [s.type ?? (s.properties ? 'object' : 'string')].flat().filter((t) => t !== 'null');
    switch (this.r.pick(types.length ? types : ['string'])) {
      case 'string': return this.string(s, field);
      case 'integer': return this.number(s, true, field);
      case 'number': return this.number(s, false, field);
      case 'boolean': return this.r.chance(0.5);
      case 'array': {
        const n = this.r.int(s.minItems ?? 0, Math.min(s.maxItems ?? 3, 3));
        return Array.from({ length: n }, () => this.valid(s.items ?? {}, undefined, depth + 1));
      }
      case 'object': {
        const out: Record<string, unknown> = {};
        const req = new Set(s.required ?? []);
        for (const [k, v] of Object.entries(s.properties ?? {})) {
          if (req.has(k) || (depth < 4 && this.r.chance(0.5))) out[k] = this.valid(v, k, depth + 1);
        }
        if (typeof s.additionalProperties === 'object' && this.r.chance(0.3)) out[`k${this.r.int(0, 9)}`] = this.valid(s.additionalProperties, undefined, depth + 1);
        return out;
      }
      default: return null;
    }
  }

  /** The same value with one thing wrong. */
  broken(schema: Schema | undefined, value: unknown): { what: string; value: unknown } {
    const r = this.r;
    const paths: (string | number)[][] = [];
    const walk = (v: unknown, p: (string | number)[]) => {
      if (p.length) paths.push(p);
      if (v && typeof v === 'object' && p.length < 6) for (const [k, x] of Object.entries(v)) walk(x, [...p, Array.isArray(v) ? Number(k) : k]);
    };
    walk(value, []);
    const set = (v: unknown, p: (string | number)[], x: unknown): unknown => {
      if (!p.length) return x;
      const copy: any = Array.isArray(v) ? [...v] : { ...(v as object) };
      copy[p[0]!] = set(copy[p[0]!], p.slice(1), x);
      return copy;
    };
    const at = paths.length ? r.pick(paths) : [];
    // Deep values go in as a marker the JSON text replaces (serialising them would overflow here).
    const deep = (n: number) => `${DEEP}${n}${r.chance(0.5) ? 'a' : 'o'}`;
    const kinds = ['wrong-type', 'missing', 'extra', 'huge-string', 'long-string', 'deep', 'unicode', 'negative', 'huge-number', 'fraction', 'null', 'root'] as const;
    const kind = r.pick(kinds);
    switch (kind) {
      case 'wrong-type': return { what: `${kind} at ${at.join('.')}`, value: set(value, at, r.pick([42, -1, true, 'str', [], {}, [1, 'a'], { x: 1 }])) };
      case 'missing': {
        const req = this.resolve(schema ?? {}).required ?? [];
        if (!req.length || !value || typeof value !== 'object') return { what: 'missing (root {})', value: {} };
        const k = r.pick(req);
        const { [k]: _gone, ...rest } = value as Record<string, unknown>;
        return { what: `missing ${k}`, value: rest };
      }
      case 'extra': return { what: `extra at ${at.join('.')}`, value: at.length && value && typeof value === 'object' ? set(value, [...at.slice(0, -1), 'zz_extra'], 1) : { ...(value as object), zz_extra: 1 } };
      case 'huge-string': return { what: `huge string at ${at.join('.')}`, value: set(value, at, 'x'.repeat(r.pick([5_000, 70_000, 300_000]))) };
      case 'long-string': return { what: `long string at ${at.join('.')}`, value: set(value, at, 'y'.repeat(r.int(129, 4096))) };
      case 'deep': return { what: `deep at ${at.join('.')}`, value: set(value, at, deep(r.pick([40, 100, 2000, 5000]))) };
      case 'unicode': return { what: `unicode at ${at.join('.')}`, value: set(value, at, Array.from({ length: r.int(1, 5) }, () => r.pick(UNICODE)).join('')) };
      case 'negative': return { what: `negative at ${at.join('.')}`, value: set(value, at, -r.int(1, 1_000_000)) };
      case 'huge-number': return { what: `huge number at ${at.join('.')}`, value: set(value, at, r.pick([1e308, Number.MAX_SAFE_INTEGER + 2, 2 ** 53 * 1000])) };
      case 'fraction': return { what: `fraction at ${at.join('.')}`, value: set(value, at, r.int(0, 100) + 0.5) };
      case 'null': return { what: `null at ${at.join('.')}`, value: set(value, at, null) };
      case 'root': return { what: 'root replaced', value: r.pick([null, [], 'str', 7, [value], true]) };
    }
  }
}

// ---- the services ---------------------------------------------------------------------------

type Doc = { paths: Record<string, Record<string, Op>>; components?: { schemas?: Record<string, Schema> } };
type Op = {
  operationId: string;
  parameters?: { in: string; name: string; required?: boolean; schema: Schema }[];
  requestBody?: { content?: Record<string, { schema?: Schema }> };
  responses?: Record<string, { content?: Record<string, unknown> }>;
};

interface Service {
  name: string;
  url: string;
  doc: Doc;
  /** Headers for one credential variant, made at send time (proofs are single-use and dated). */
  credentials: ((method: string, url: string) => Promise<Record<string, string>>)[];
}

let dir: string;
let controller: Harness;
let aaa: AaaHandle;
let broker: Broker;
let issuer: Issuer;
const requester: RequesterKey = generateRequesterKeySync();
const holder: RequesterKey = generateRequesterKeySync();
const services: Service[] = [];
const nowS = () => Math.floor(Date.now() / 1000);

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'vmtc-fuzz-'));
  issuer = await makeIssuer('a');
  [controller, aaa, broker] = await Promise.all([
    startHarness({ rateLimit: NO_LIMITS }),
    startAaa({
      dataDir: join(dir, 'aaa'), domain: 'a', logger: silentLogger(), rateLimit: NO_LIMITS,
      policy: {
        version: 1, sites: { siteA: 'a', siteB: 'a' }, requesters: [{ id: 'fuzzer', jkt: requester.jkt }],
        rules: [{ id: 'fuzz', requesters: ['fuzzer'], vms: '*', maxBandwidthMbps: 100 }],
      },
    }),
    startBroker({
      dataDir: join(dir, 'broker'), domain: 'a', topology: lineTopology(), driver: new MemoryDoubleDriver(), rateLimit: NO_LIMITS,
      trust: { issuers: [{ iss: issuer.iss, jwks: { keys: [issuer.publicJwk] } }] },
    }),
  ]);
  await controller.addHost('A', { vms: [vmSpec('vm1'), vmSpec('vm2')] });
  await controller.addHost('B');
  const doc = async (url: string) => (await (await fetch(`${url}/openapi.json`)).json()) as Doc;
  const garbage = async () => ({ authorization: 'Bearer not-a-credential' });
  const none = async () => ({});
  services.push(
    {
      name: 'controller', url: controller.controller.url, doc: await doc(controller.controller.url),
      credentials: [none, garbage, async () => ({ authorization: `Bearer ${controller.controller.adminToken}` }), async () => ({ authorization: `Bearer ${controller.controller.adminToken}` })],
    },
    {
      name: 'aaa', url: aaa.url, doc: await doc(aaa.url),
      credentials: [
        none, garbage,
        async () => ({ authorization: `Bearer ${aaa.adminToken}` }),
        async () => ({ dpop: 'eyJ0eXAiOiJkcG9wK2p3dCJ9.e30.AAAA' }),
        async (m, u) => ({ dpop: makeDpopProofSync(requester, m, u) }),
        async (m, u) => ({ dpop: makeDpopProofSync(requester, m, u) }),
      ],
    },
    {
      name: 'broker', url: broker.url, doc: await doc(broker.url),
      credentials: [
        none, garbage,
        async () => ({ authorization: `Bearer ${broker.operatorToken}` }),
        async (m, u) => ({ authorization: 'DPoP not.a.token', dpop: await joseProof(holder, m, u, 'not.a.token', nowS()) }),
        ...Array.from({ length: 3 }, () => async (m: string, u: string) => {
          const token = await mintToken(issuer, { holder, now: nowS(), scope: { migrationId: 'mig_fuzz', vmId: 'vm1', project: 'demo', src: 'a1', dst: 'a3', bandwidthMbps: 100, window: { start: nowS() - 5, end: nowS() + 3600 }, domains: ['a'] } });
          return { authorization: `DPoP ${token}`, dpop: await joseProof(holder, m, u.split('?')[0]!, token, nowS()) };
        }),
        async (m, u) => ({ dpop: await joseProof(holder, m, u.split('?')[0]!, undefined, nowS()) }),
      ],
    },
  );
}, 60_000);

afterAll(async () => {
  await controller?.close();
  await aaa?.close();
  await broker?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

// ---- requests -------------------------------------------------------------------------------

interface Planned {
  service: Service;
  what: string;
  method: string;
  path: string;
  body?: string;
  contentType?: string;
  credential: number;
}

const METHODS = ['get', 'post', 'put', 'delete', 'patch'];
/** Percent-encoding that also takes a lone surrogate (as the bytes of its invalid UTF-8 form). */
const enc = (x: string) => { try { return encodeURIComponent(x); } catch { return '%ED%A0%80'; } };

function plan(s: Service, rng: Rng): Planned[] {
  const gen = new Gen(rng, s.doc.components?.schemas ?? {});
  const out: Planned[] = [];
  for (const [template, item] of Object.entries(s.doc.paths)) {
    for (const [method, op] of Object.entries(item)) {
      if (!METHODS.includes(method)) continue;
      const bodySchema = op.requestBody?.content?.['application/json']?.schema;
      for (let i = 0; i < PER_OPERATION; i++) {
        const notes: string[] = [];
        // Path parameters: mostly plausible, sometimes over-long, badly encoded or odd.
        let path = template.replace(/\{([^}]+)\}/g, (_m, name: string) => {
          const p = op.parameters?.find((x) => x.in === 'path' && x.name === name);
          const bad = rng.chance(0.2);
          const v = bad ? rng.pick(['x'.repeat(rng.int(101, 2000)), '%zz', '%2e%2e', enc(rng.pick(UNICODE)), '..', ' ', 'a%00b']) : enc(String(gen.valid(p?.schema ?? { type: 'string' })));
          if (bad) notes.push(`path ${name}=${v.slice(0, 20)}`);
          return v;
        });
        // Query parameters.
        const query: string[] = [];
        for (const q of (op.parameters ?? []).filter((x) => x.in === 'query')) {
          if (!rng.chance(0.5)) continue;
          const bad = rng.chance(0.3);
          const v = bad ? rng.pick(['-5', 'abc', 'x'.repeat(5000), '', '1e9', '%zz', '0']) : String(gen.valid(q.schema, q.name));
          if (bad) notes.push(`query ${q.name}=${v.slice(0, 20)}`);
          query.push(`${enc(q.name)}=${v === '%zz' ? v : enc(v)}`);
          if (rng.chance(0.05)) query.push(`${enc(q.name)}=1`);
        }
        if (rng.chance(0.05)) query.push('zz_unknown=1');
        if (query.length) path += `?${query.join('&')}`;
        // The body and its content type.
        let body: string | undefined;
        let contentType: string | undefined;
        const m = rng.chance(0.06) ? rng.pick(METHODS.filter((x) => x !== method)) : method;
        if (m !== method) notes.push(`method ${m}`);
        if (bodySchema || rng.chance(0.1)) {
          const good = bodySchema ? gen.valid(bodySchema) : {};
          const roll = rng.next();
          if (roll < 0.35) {
            body = toJson(good);
          } else if (roll < 0.8) {
            const b = gen.broken(bodySchema, good);
            notes.push(b.what);
            body = toJson(b.value);
          } else {
            const raw = rng.pick(['{', '{"a":}', '\u0000\u0001', 'null', '', '[]', '{"__proto__":{"x":1}}', '{"constructor":{"prototype":{"x":1}}}', '1'.repeat(400), `${'['.repeat(3000)}${']'.repeat(3000)}`]);
            notes.push(`raw ${JSON.stringify(raw.slice(0, 16))}`);
            body = raw;
          }
          contentType = rng.chance(0.85) ? 'application/json' : rng.pick(['text/plain', 'application/xml', 'application/x-www-form-urlencoded', 'application/json; charset=latin1', 'multipart/form-data; boundary=x', '']);
          if (contentType !== 'application/json') notes.push(`content-type ${JSON.stringify(contentType)}`);
        }
        out.push({ service: s, what: `${m.toUpperCase()} ${path.slice(0, 120)}${notes.length ? ` [${notes.join('; ')}]` : ''}`, method: m.toUpperCase(), path, ...(body !== undefined ? { body } : {}), ...(contentType !== undefined ? { contentType } : {}), credential: rng.int(0, s.credentials.length - 1) });
      }
    }
  }
  return out;
}

async function run(p: Planned, answers: Map<string, number>): Promise<string | undefined> {
  const url = p.service.url + p.path;
  const headers: Record<string, string> = { ...(await p.service.credentials[p.credential]!(p.method, url)) };
  if (p.contentType) headers['content-type'] = p.contentType;
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), REQUEST_TIMEOUT_MS);
  const where = `${p.service.name} ${p.what} (credential ${p.credential})`;
  try {
    const res = await fetch(url, { method: p.method, headers, ...(p.body !== undefined && p.method !== 'GET' ? { body: p.body } : {}), signal: ac.signal });
    // A stream (server-sent events) has answered once its headers are here.
    if ((res.headers.get('content-type') ?? '').startsWith('text/event-stream')) {
      ac.abort();
      return res.status === 200 ? undefined : `${where}: event stream with status ${res.status}`;
    }
    const text = await res.text();
    const tally = `${p.service.name} ${res.status} ${res.status >= 400 ? (/"code":"(\w+)"/.exec(text)?.[1] ?? '?') : ''}`;
    answers.set(tally, (answers.get(tally) ?? 0) + 1);
    if (res.status >= 500) return `${where}: ${res.status} ${text.slice(0, 300)}`;
    if (res.status >= 400) {
      let code: unknown;
      try { code = (JSON.parse(text) as { code?: unknown }).code; } catch { /* checked below */ }
      if (typeof code !== 'string' || !/^VMTC_[A-Z0-9_]+$/.test(code)) return `${where}: ${res.status} without a VMTC_ code: ${text.slice(0, 300)}`;
    }
    return undefined;
  } catch (e) {
    return `${where}: ${ac.signal.aborted ? `no answer within ${REQUEST_TIMEOUT_MS} ms` : (e as Error).message}`;
  } finally {
    clearTimeout(timer);
  }
}

describe(`fuzzing every route of every service (seed ${SEED})`, () => {
  it('answers every request in time, never with a 5xx, every error with a VMTC_ code', async () => {
    const rng = prng(SEED);
    const planned = services.flatMap((s) => plan(s, rng));
    // Interleave the services, so each sees a mix while another is busy.
    planned.sort((a, b) => (a.what.length % 7) - (b.what.length % 7));
    const failures: string[] = [];
    const statuses = new Map<string, number>();
    const answers = new Map<string, number>();
    const started = Date.now();
    let next = 0;
    let sent = 0;
    const worker = async () => {
      while (next < planned.length && Date.now() - started < BUDGET_MS) {
        const p = planned[next++]!;
        const f = await run(p, answers);
        sent++;
        if (f) failures.push(f);
        statuses.set(p.service.name, (statuses.get(p.service.name) ?? 0) + 1);
      }
    };
    await Promise.all(Array.from({ length: IN_FLIGHT }, worker));
    // VMTC_FUZZ_VERBOSE=1: what the services answered, to see what the run reached.
    if (process.env.VMTC_FUZZ_VERBOSE) console.log([...answers].sort().map(([k, n]) => `${k}: ${n}`).join('\n'), `\n${sent} of ${planned.length} requests in ${Date.now() - started} ms`);
    expect(failures, `seed ${SEED} (VMTC_FUZZ_SEED=${SEED} replays it): ${failures.length} of ${sent} requests failed`).toEqual([]);
    // The run covered every service and most of the plan (the time budget is a bound, not the aim).
    expect(sent).toBeGreaterThan(Math.min(planned.length, 1500));
    for (const s of services) expect(statuses.get(s.name) ?? 0, s.name).toBeGreaterThan(100);
  }, 90_000);
});
