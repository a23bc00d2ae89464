// The health routes every service serves the same way (README "Health"): GET /healthz answers
// 200 { ok: true } while the process lives (liveness: nothing is checked, so a slow peer never
// gets a live process restarted); GET /readyz says whether the service can do its work now and
// what it depends on: 200 { ready: true, checks } or 503 with the common error body plus
// { ready: false, checks }, each check 'ok', 'failed', 'unreachable' or 'not-configured'.
// Neither needs a credential, so neither says more than the names of what is checked and their
// state: no URLs, no addresses, no reasons. A check runs with a timeout and its answer is kept
// for a moment, so a flood of probes costs the peers nothing.
import type { FastifyInstance } from 'fastify';
import type { Db } from './db.ts';
import type { Clock } from './clock.ts';
import { systemClock } from './clock.ts';
import { commonError } from './errors.ts';
import { requestJson, type TlsClientOptions } from './http-client.ts';
import { errorResponses, MapOf, StringEnum, Type, type Static } from './schemas.ts';

export const CHECK_STATES = ['ok', 'failed', 'unreachable', 'not-configured'] as const;
export type CheckState = (typeof CHECK_STATES)[number];

/** One dependency: resolves with its state (a throw counts as 'failed'). */
export type ReadinessCheck = () => CheckState | Promise<CheckState>;

export const HEALTH_DEFAULTS = {
  /** Longest a check may take before it counts as 'unreachable'. */
  timeoutMs: 2000,
  /** How long an answer is reused. */
  cacheMs: 1000,
} as const;

const Checks = MapOf(StringEnum(CHECK_STATES), { description: 'what the service depends on, by name (store, aaa, broker, aaa:<domain>, broker:<domain>), and its state' });
export const Liveness = Type.Object({ ok: Type.Boolean() });
export const Readiness = Type.Object({ ready: Type.Boolean(), checks: Checks });
export type Readiness = Static<typeof Readiness>;
/** 503: the common error body (VMTC_NOT_READY) with the same fields as a 200. */
const NotReady = Type.Object({
  code: Type.String({ description: 'VMTC_NOT_READY' }),
  message: Type.String(),
  details: Type.Optional(Type.Object({}, { additionalProperties: true })),
  ready: Type.Boolean(),
  checks: Checks,
}, { description: 'a dependency is not ok: the service is alive but cannot do its work now' });

/** The service's own SQLite store answers a query. */
export function storeCheck(db: Db): ReadinessCheck {
  return () => {
    db.prepare('SELECT 1').get();
    return 'ok';
  };
}

/** A peer's GET /healthz (or `path`) answers 2xx: 'ok'; answers otherwise: 'failed'; no answer: 'unreachable'. */
export function peerCheck(url: string | undefined, o: { path?: string; tls?: TlsClientOptions; timeoutMs?: number } = {}): ReadinessCheck {
  if (!url) return () => 'not-configured';
  const target = `${url.replace(/\/+$/, '')}${o.path ?? '/healthz'}`;
  return async () => {
    try {
      const res = await requestJson(target, { method: 'GET', timeoutMs: o.timeoutMs ?? HEALTH_DEFAULTS.timeoutMs, ...(o.tls ? { tls: o.tls } : {}) });
      return res.status >= 200 && res.status < 300 ? 'ok' : 'failed';
    } catch {
      return 'unreachable';
    }
  };
}

/** Run every check (in parallel, each bounded by `timeoutMs`). Ready when none is 'failed' or 'unreachable'. */
export async function readiness(checks: Record<string, ReadinessCheck>, timeoutMs: number = HEALTH_DEFAULTS.timeoutMs, clock: Clock = systemClock): Promise<Readiness> {
  const names = Object.keys(checks);
  const states = await Promise.all(names.map((n) => runCheck(checks[n]!, timeoutMs, clock)));
  const out: Record<string, CheckState> = {};
  names.forEach((n, i) => { out[n] = states[i]!; });
  return { ready: states.every((s) => s === 'ok' || s === 'not-configured'), checks: out };
}

async function runCheck(check: ReadinessCheck, timeoutMs: number, clock: Clock): Promise<CheckState> {
  let timer: { cancel(): void } | undefined;
  try {
    return await Promise.race([
      Promise.resolve().then(check),
      new Promise<CheckState>((resolve) => { timer = clock.setTimeout(() => resolve('unreachable'), timeoutMs); }),
    ]);
  } catch {
    return 'failed';
  } finally {
    timer?.cancel();
  }
}

/** `checks` may be a function, for dependencies that change while the service runs (a reloaded policy's peers). */
export function registerHealthRoutes(app: FastifyInstance, checks: Record<string, ReadinessCheck> | (() => Record<string, ReadinessCheck>), o: { clock?: Clock; timeoutMs?: number; cacheMs?: number } = {}): void {
  const clock = o.clock ?? systemClock;
  const cacheMs = o.cacheMs ?? HEALTH_DEFAULTS.cacheMs;
  let cached: { at: number; answer: Promise<Readiness> } | undefined;
  const current = (): Promise<Readiness> => {
    const now = clock.now();
    if (!cached || now - cached.at >= cacheMs) cached = { at: now, answer: readiness(typeof checks === 'function' ? checks() : checks, o.timeoutMs, clock) };
    return cached.answer;
  };
  app.get('/healthz', {
    schema: {
      operationId: 'getLiveness', tags: ['health'], security: [],
      summary: 'Live: 200 while the process runs (no dependency is checked).',
      response: { 200: Liveness, ...errorResponses({}) },
    },
  }, async () => ({ ok: true }));
  app.get('/readyz', {
    schema: {
      operationId: 'getReadiness', tags: ['health'], security: [],
      summary: 'Ready: every dependency (store, peers) is ok; 503 VMTC_NOT_READY with the same checks otherwise.',
      response: { 200: Readiness, ...errorResponses({}), 503: NotReady },
    },
  }, async (_request, reply) => {
    const r = await current();
    if (r.ready) return r;
    const failing = Object.entries(r.checks).filter(([, s]) => s === 'failed' || s === 'unreachable').map(([n]) => n);
    const e = commonError('VMTC_NOT_READY', { failing });
    return reply.status(503).send({ ...e.toJSON(), ready: false, checks: r.checks });
  });
}
