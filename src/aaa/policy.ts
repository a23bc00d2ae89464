// The AAA policy: who may ask for which lightpath, and what this domain consents to when a peer
// asks. Loaded once at start and validated field by field (docs/contributing.md#options): a bad
// file fails with VMTC_AAA_POLICY_INVALID naming the field (e.g. "rules[2].maxBandwidthMbps").
// Deciding is a pure function of (policy, request, usage): no I/O, no clock of its own.
import { readFileSync } from 'node:fs';
import { jwkThumbprint, type PublicJwk } from '../common/dpop.ts';
import type { LightpathRequest as LightpathBase } from '../common/lightpath.ts';
import { aaaError } from './errors.ts';

export interface TimeOfDay {
  /** Minutes after 00:00 UTC. */
  startMin: number;
  /** Minutes after 00:00 UTC; <= startMin means the window runs past midnight. */
  endMin: number;
  /** Days of the week the window *starts* on, 0 = Sunday; undefined = every day. */
  days?: number[];
}

export interface Rule {
  id: string;
  /** Requester ids (grant rules) or peer domains (consent rules); '*' = any. */
  who: string[] | '*';
  vms: string[] | '*' | undefined;
  projects: string[] | '*' | undefined;
  src: string[] | '*';
  dst: string[] | '*';
  maxBandwidthMbps: number;
  maxDurationSec?: number;
  timeOfDay?: TimeOfDay[];
  quota?: { maxGrantsPerHour?: number; maxMbitSecondsPerHour?: number };
}

export interface Requester {
  id: string;
  jkt: string;
}

export interface Peer {
  domain: string;
  url: string;
  /** Pinned public keys by kid (several while the peer rotates). */
  keys: Map<string, PublicJwk>;
}

export interface Policy {
  /** Site (broker topology endpoint) name -> the domain it belongs to. */
  sites: Map<string, string>;
  requesters: Requester[];
  requestersByJkt: Map<string, Requester>;
  /** Parties allowed to report use/release to accounting (brokers), besides requesters. */
  reporters: Requester[];
  reportersByJkt: Map<string, Requester>;
  peers: Map<string, Peer>;
  rules: Rule[];
  consentRules: Rule[];
  tokenLifetimeSec?: number;
}

/** What is being asked: the body of POST /v1/authorizations (and of a consent request). */
export interface LightpathRequest extends LightpathBase {
  via?: string[];
}

export interface Usage {
  grantsLastHour: number;
  mbitSecondsLastHour: number;
}

export type Decision =
  | { ok: true; rule: string }
  | { ok: false; code: 'VMTC_AAA_POLICY_DENIED' | 'VMTC_AAA_QUOTA_EXCEEDED'; details: Record<string, unknown> };

// ---------------------------------------------------------------------------------------------
// Loading and validation

const DAYS = ['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'];

class Check {
  constructor(private readonly file: string | undefined) {}
  fail(field: string, reason: string, extra?: Record<string, unknown>): never {
    throw aaaError('VMTC_AAA_POLICY_INVALID', { field, reason, ...(this.file ? { file: this.file } : {}), ...(extra ?? {}) }, {
      message: `policy: ${field}: ${reason}`,
    });
  }
  obj(v: unknown, field: string, allowed: string[]): Record<string, unknown> {
    if (!v || typeof v !== 'object' || Array.isArray(v)) this.fail(field, 'must be an object');
    for (const k of Object.keys(v as object)) if (!allowed.includes(k)) this.fail(field ? `${field}.${k}` : k, 'unknown field', { allowed });
    return v as Record<string, unknown>;
  }
  str(v: unknown, field: string, re = /^[A-Za-z0-9._:@\-]{1,128}$/): string {
    if (typeof v !== 'string' || !re.test(v)) this.fail(field, `must be a string matching ${re}`);
    return v;
  }
  num(v: unknown, field: string, min: number, max = Number.MAX_SAFE_INTEGER): number {
    if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max) this.fail(field, `must be a number in [${min}, ${max}]`);
    return v;
  }
  arr(v: unknown, field: string): unknown[] {
    if (!Array.isArray(v)) this.fail(field, 'must be an array');
    return v;
  }
  /** A list of names or the string "*". */
  names(v: unknown, field: string): string[] | '*' {
    if (v === '*') return '*';
    const a = this.arr(v, field);
    if (a.length === 0) this.fail(field, 'must not be empty (use "*" for any)');
    return a.map((x, i) => this.str(x, `${field}[${i}]`));
  }
  jwk(v: unknown, field: string): PublicJwk {
    const o = this.obj(v, field, ['kty', 'crv', 'x', 'kid', 'alg', 'use']);
    if (o.kty !== 'OKP') this.fail(`${field}.kty`, 'must be "OKP"');
    if (o.crv !== 'Ed25519') this.fail(`${field}.crv`, 'must be "Ed25519"');
    const x = this.str(o.x, `${field}.x`, /^[A-Za-z0-9_-]{43}$/);
    const jwk: PublicJwk = { kty: 'OKP', crv: 'Ed25519', x };
    if (o.kid !== undefined) jwk.kid = this.str(o.kid, `${field}.kid`);
    return jwk;
  }
  hhmm(v: unknown, field: string): number {
    const s = this.str(v, field, /^([01]\d|2[0-3]):[0-5]\d$|^24:00$/);
    const [h, m] = s.split(':').map(Number);
    return h! * 60 + m!;
  }
}

function parseIdentity(c: Check, v: unknown, field: string): Requester {
  const o = c.obj(v, field, ['id', 'jkt', 'jwk', 'comment']);
  const id = c.str(o.id, `${field}.id`);
  // Accounting tells parties apart by these names (docs/aaa.md#accounting): a requester called
  // "aaa:b" would read peer b's consent records as its own.
  if (id === 'admin' || /^(aaa|jkt):/.test(id)) c.fail(`${field}.id`, 'is reserved: accounting names the operator "admin", peer AAAs "aaa:<domain>" and unknown keys "jkt:<thumbprint>"');
  if ((o.jkt === undefined) === (o.jwk === undefined)) c.fail(field, 'exactly one of jkt or jwk is required');
  const jkt = o.jkt !== undefined ? c.str(o.jkt, `${field}.jkt`, /^[A-Za-z0-9_-]{43}$/) : jwkThumbprint(c.jwk(o.jwk, `${field}.jwk`));
  return { id, jkt };
}

function parseRule(c: Check, v: unknown, field: string, kind: 'grant' | 'consent', sites: Map<string, string>): Rule {
  const whoKey = kind === 'grant' ? 'requesters' : 'domains';
  const o = c.obj(v, field, ['id', whoKey, 'vms', 'projects', 'src', 'dst', 'maxBandwidthMbps', 'maxDurationSec', 'timeOfDay', 'quota', 'comment']);
  const id = c.str(o.id, `${field}.id`);
  if (o[whoKey] === undefined) c.fail(`${field}.${whoKey}`, 'is required (use "*" for any)');
  const who = c.names(o[whoKey], `${field}.${whoKey}`);
  if (o.vms === undefined && o.projects === undefined) c.fail(field, 'one of vms or projects is required (use "*" for any)');
  const vms = o.vms === undefined ? undefined : c.names(o.vms, `${field}.vms`);
  const projects = o.projects === undefined ? undefined : c.names(o.projects, `${field}.projects`);
  const src = o.src === undefined ? '*' : c.names(o.src, `${field}.src`);
  const dst = o.dst === undefined ? '*' : c.names(o.dst, `${field}.dst`);
  for (const [k, list] of [['src', src], ['dst', dst]] as const) {
    if (list !== '*') list.forEach((s, i) => { if (!sites.has(s)) c.fail(`${field}.${k}[${i}]`, `site "${s}" is not in sites`); });
  }
  if (o.maxBandwidthMbps === undefined) c.fail(`${field}.maxBandwidthMbps`, 'is required');
  const rule: Rule = { id, who, vms, projects, src, dst, maxBandwidthMbps: c.num(o.maxBandwidthMbps, `${field}.maxBandwidthMbps`, 0.001, 1e7) };
  if (o.maxDurationSec !== undefined) rule.maxDurationSec = c.num(o.maxDurationSec, `${field}.maxDurationSec`, 1);
  if (o.timeOfDay !== undefined) {
    rule.timeOfDay = c.arr(o.timeOfDay, `${field}.timeOfDay`).map((w, i) => {
      const f = `${field}.timeOfDay[${i}]`;
      const wo = c.obj(w, f, ['start', 'end', 'days']);
      const tod: TimeOfDay = { startMin: c.hhmm(wo.start, `${f}.start`), endMin: c.hhmm(wo.end, `${f}.end`) };
      if (wo.days !== undefined) {
        tod.days = c.arr(wo.days, `${f}.days`).map((d, j) => {
          const n = DAYS.indexOf(String(d).toLowerCase());
          if (n < 0) c.fail(`${f}.days[${j}]`, `must be one of ${DAYS.join(', ')}`);
          return n;
        });
      }
      return tod;
    });
    if (rule.timeOfDay.length === 0) c.fail(`${field}.timeOfDay`, 'must not be empty (leave it out for any time)');
  }
  if (o.quota !== undefined) {
    const q = c.obj(o.quota, `${field}.quota`, ['maxGrantsPerHour', 'maxMbitSecondsPerHour']);
    rule.quota = {};
    if (q.maxGrantsPerHour !== undefined) rule.quota.maxGrantsPerHour = c.num(q.maxGrantsPerHour, `${field}.quota.maxGrantsPerHour`, 0);
    if (q.maxMbitSecondsPerHour !== undefined) rule.quota.maxMbitSecondsPerHour = c.num(q.maxMbitSecondsPerHour, `${field}.quota.maxMbitSecondsPerHour`, 0);
  }
  return rule;
}

/**
 * Validate a parsed policy document. `domain` is this AAA's domain: a peer entry for it, or a
 * duplicate id/site/domain, is an error.
 */
export function parsePolicy(doc: unknown, domain: string, file?: string): Policy {
  const c = new Check(file);
  const o = c.obj(doc, '', ['version', 'domain', 'sites', 'requesters', 'reporters', 'peers', 'rules', 'consent', 'tokenLifetimeSec', 'comment']);
  if (o.version !== undefined && o.version !== 1) c.fail('version', 'must be 1');
  if (o.domain !== undefined && o.domain !== domain) c.fail('domain', `is "${String(o.domain)}" but this AAA runs for domain "${domain}"`);

  const sites = new Map<string, string>();
  const so = c.obj(o.sites ?? c.fail('sites', 'is required'), 'sites', Object.keys((o.sites as object) ?? {}));
  for (const [name, d] of Object.entries(so)) {
    c.str(name, `sites.${name}`);
    sites.set(name, c.str(d, `sites.${name}`));
  }

  const ids = new Set<string>();
  const identities = (key: 'requesters' | 'reporters') => {
    const list = o[key] === undefined ? [] : c.arr(o[key], key).map((r, i) => parseIdentity(c, r, `${key}[${i}]`));
    const byJkt = new Map<string, Requester>();
    list.forEach((r, i) => {
      if (ids.has(r.id)) c.fail(`${key}[${i}].id`, `"${r.id}" is used twice`);
      if (byJkt.has(r.jkt)) c.fail(`${key}[${i}]`, 'the same key is listed twice');
      ids.add(r.id);
      byJkt.set(r.jkt, r);
    });
    return { list, byJkt };
  };
  const req = identities('requesters');
  const rep = identities('reporters');

  const peers = new Map<string, Peer>();
  if (o.peers !== undefined) {
    c.arr(o.peers, 'peers').forEach((p, i) => {
      const f = `peers[${i}]`;
      const po = c.obj(p, f, ['domain', 'url', 'jwk', 'keys', 'comment']);
      const d = c.str(po.domain, `${f}.domain`);
      if (d === domain) c.fail(`${f}.domain`, 'is this AAA\'s own domain');
      if (peers.has(d)) c.fail(`${f}.domain`, `"${d}" is listed twice`);
      const url = c.str(po.url, `${f}.url`, /^https?:\/\/\S+$/);
      const jwks = [...(po.jwk !== undefined ? [c.jwk(po.jwk, `${f}.jwk`)] : []), ...(po.keys !== undefined ? c.arr(po.keys, `${f}.keys`).map((k, j) => c.jwk(k, `${f}.keys[${j}]`)) : [])];
      if (jwks.length === 0) c.fail(`${f}.jwk`, 'a pinned public key (jwk or keys) is required');
      const keys = new Map<string, PublicJwk>();
      jwks.forEach((k, j) => {
        const off = po.jwk !== undefined ? 1 : 0;
        if (!k.kid) c.fail(`${f}.${off === 1 && j === 0 ? 'jwk' : `keys[${j - off}]`}.kid`, 'is required for a pinned key');
        keys.set(k.kid!, k);
      });
      peers.set(d, { domain: d, url: url.replace(/\/+$/, ''), keys });
    });
  }

  const ruleIds = new Set<string>();
  const rules = (v: unknown, field: string, kind: 'grant' | 'consent') =>
    (v === undefined ? [] : c.arr(v, field)).map((r, i) => {
      const rule = parseRule(c, r, `${field}[${i}]`, kind, sites);
      if (ruleIds.has(rule.id)) c.fail(`${field}[${i}].id`, `rule id "${rule.id}" is used twice`);
      ruleIds.add(rule.id);
      if (kind === 'grant' && rule.who !== '*') rule.who.forEach((w, j) => { if (!req.list.some((r) => r.id === w)) c.fail(`${field}[${i}].requesters[${j}]`, `no requester "${w}"`); });
      return rule;
    });
  const grantRules = rules(o.rules, 'rules', 'grant');
  let consentRules: Rule[] = [];
  if (o.consent !== undefined) {
    const co = c.obj(o.consent, 'consent', ['rules']);
    consentRules = rules(co.rules, 'consent.rules', 'consent');
  }
  const policy: Policy = {
    sites,
    requesters: req.list,
    requestersByJkt: req.byJkt,
    reporters: rep.list,
    reportersByJkt: rep.byJkt,
    peers,
    rules: grantRules,
    consentRules,
  };
  if (o.tokenLifetimeSec !== undefined) policy.tokenLifetimeSec = c.num(o.tokenLifetimeSec, 'tokenLifetimeSec', 5, 3600);
  return policy;
}

export function loadPolicyFile(file: string, domain: string): Policy {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw aaaError('VMTC_AAA_POLICY_INVALID', { field: 'policy', file, reason: (e as Error).message }, { message: `cannot read policy file ${file}`, cause: e });
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw aaaError('VMTC_AAA_POLICY_INVALID', { field: 'policy', file, reason: (e as Error).message }, { message: `policy file ${file} is not JSON`, cause: e });
  }
  return parsePolicy(doc, domain, file);
}

// ---------------------------------------------------------------------------------------------
// Deciding

/** Is [start, end) (epoch seconds) inside one occurrence of a time-of-day window (UTC)? */
export function insideTimeOfDay(windows: TimeOfDay[], start: number, end: number): boolean {
  const day0 = Math.floor(start / 86400) * 86400;
  for (const w of windows) {
    // Occurrences starting the day before (for windows past midnight), the same day and the next.
    for (const d of [day0 - 86400, day0, day0 + 86400]) {
      if (w.days && !w.days.includes(new Date(d * 1000).getUTCDay())) continue;
      const s = d + w.startMin * 60;
      const e = d + (w.endMin > w.startMin ? w.endMin : w.endMin + 24 * 60) * 60;
      if (s <= start && end <= e) return true;
    }
  }
  return false;
}

const inList = (list: string[] | '*' | undefined, v: string) => list === '*' || (list !== undefined && list.includes(v));

/**
 * Evaluate the rules in order of specificity of failure: the request is allowed by the first rule
 * that passes every check. When none does, the refusal reports the rule that got furthest (so
 * "too much bandwidth" wins over "not your VM"), naming the field that failed.
 */
export function decide(rules: Rule[], who: string, req: LightpathRequest, usage: (ruleId: string) => Usage): Decision {
  let best: { depth: number; details: Record<string, unknown>; quota: boolean } | undefined;
  const duration = req.window.end - req.window.start;
  const mbitSeconds = req.bandwidthMbps * duration;
  for (const r of rules) {
    const checks: [boolean, () => Record<string, unknown>][] = [
      [inList(r.who, who), () => ({ field: 'requester', got: who })],
      [inList(r.vms, req.vmId) || inList(r.projects, req.project), () => ({ field: r.vms !== undefined ? 'vmId' : 'project', got: r.vms !== undefined ? req.vmId : req.project })],
      [inList(r.src, req.src), () => ({ field: 'src', got: req.src, allowed: r.src })],
      [inList(r.dst, req.dst), () => ({ field: 'dst', got: req.dst, allowed: r.dst })],
      [req.bandwidthMbps <= r.maxBandwidthMbps, () => ({ field: 'bandwidthMbps', got: req.bandwidthMbps, limit: r.maxBandwidthMbps })],
      [r.maxDurationSec === undefined || duration <= r.maxDurationSec, () => ({ field: 'window', reason: 'too long', got: duration, limit: r.maxDurationSec })],
      [r.timeOfDay === undefined || insideTimeOfDay(r.timeOfDay, req.window.start, req.window.end), () => ({ field: 'window', reason: 'outside the allowed time of day (UTC)' })],
    ];
    let depth = 0;
    let failed: Record<string, unknown> | undefined;
    for (const [ok, details] of checks) {
      if (!ok) {
        failed = details();
        break;
      }
      depth++;
    }
    let quota = false;
    if (!failed && r.quota) {
      const u = usage(r.id);
      if (r.quota.maxGrantsPerHour !== undefined && u.grantsLastHour + 1 > r.quota.maxGrantsPerHour) {
        failed = { field: 'quota.maxGrantsPerHour', used: u.grantsLastHour, limit: r.quota.maxGrantsPerHour };
      } else if (r.quota.maxMbitSecondsPerHour !== undefined && u.mbitSecondsLastHour + mbitSeconds > r.quota.maxMbitSecondsPerHour) {
        failed = { field: 'quota.maxMbitSecondsPerHour', used: u.mbitSecondsLastHour, asked: mbitSeconds, limit: r.quota.maxMbitSecondsPerHour };
      }
      quota = failed !== undefined;
      depth++;
    }
    if (!failed) return { ok: true, rule: r.id };
    if (!best || depth > best.depth) best = { depth, details: { rule: r.id, ...failed }, quota };
  }
  if (!best) return { ok: false, code: 'VMTC_AAA_POLICY_DENIED', details: { field: 'requester', got: who, reason: 'no rule' } };
  return { ok: false, code: best.quota ? 'VMTC_AAA_QUOTA_EXCEEDED' : 'VMTC_AAA_POLICY_DENIED', details: best.details };
}

/**
 * The domains a lightpath crosses, in path order and without repeats: the source site's domain,
 * then the transit domains named in `via`, then the destination site's domain.
 */
export function pathDomains(policy: Policy, req: LightpathRequest): string[] {
  const siteDomain = (field: 'src' | 'dst') => {
    const d = policy.sites.get(req[field]);
    if (d === undefined) throw aaaError('VMTC_AAA_SITE_UNKNOWN', { field, site: req[field] });
    return d;
  };
  const out: string[] = [];
  for (const d of [siteDomain('src'), ...(req.via ?? []), siteDomain('dst')]) if (!out.includes(d)) out.push(d);
  return out;
}
