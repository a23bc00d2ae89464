// A migration's policy for a copy that does not converge (KubeVirt's MigrationPolicy
// completionTimeoutPerGiB, Nova's live_migration_progress_timeout and live_migration_timeout_action):
// what counts as progress, when a timeout fires, and which action comes next. Pure functions and
// types only: the timer, the agents and the record are policy-watch.ts's; the REST side is
// ../policy-routes.ts; docs/policy.md has the defaults and why.
//
// A policy comes in layers, field by field: the request's `policy`, the VM's group's
// (PUT /v1/policies/:group, stored by policy-store.ts), the controller's configuration
// (runner.policy), then POLICY_DEFAULTS. Evacuations pass theirs as the request's.
import { err } from '../errors.ts';

/** What may run when a timeout fires, in the order the policy lists them. */
export const POLICY_ACTIONS = ['raise-downtime', 'auto-converge', 'postcopy', 'cancel'] as const;
export type PolicyAction = (typeof POLICY_ACTIONS)[number];

/** A policy as given (request, group, controller configuration): every field optional; an
 *  absent field comes from the next layer. 0 turns a timeout off. */
export interface MigrationPolicy {
  /** No progress for this long fires the next action (0: never). */
  progressTimeoutS?: number;
  /** The copy may take this long per GiB of guest memory before the next action fires (0: no
   *  limit); KubeVirt's completionTimeoutPerGiB. */
  completionTimeoutPerGiBS?: number;
  /** The actions, in order; each firing takes the next one that applies. */
  onTimeout?: PolicyAction[];
  /** raise-downtime: by this much a firing… */
  downtimeStepMs?: number;
  /** …up to this limit; then the next action. */
  maxDowntimeMs?: number;
  /** A warning (and a `policy` event) once the hypervisor reports it throttles the guest's CPU
   *  at or above this percentage (auto-converge); 0: never. */
  throttleWarnPercent?: number;
}

export type EffectivePolicy = Required<MigrationPolicy>;

/** Today's behaviour, made visible: no action ever runs by default, but a copy without progress
 *  for 60 s gets a warning and a `policy` event (docs/policy.md). */
export const POLICY_DEFAULTS: EffectivePolicy = {
  progressTimeoutS: 60,
  completionTimeoutPerGiBS: 0,
  onTimeout: [],
  downtimeStepMs: 100,
  maxDowntimeMs: 2_000,
  throttleWarnPercent: 50,
};

/** The downtime limit QEMU applies when a migration gives none (its downtime-limit default). */
export const HYPERVISOR_DEFAULT_DOWNTIME_MS = 300;

/** A pass counts as progress when it is this much smaller than every earlier one… */
export const PASS_SHRINK = 0.1;
/** …and the remaining bytes when they fall this fraction of the copy's total below their lowest. */
export const REMAINING_DROP = 0.02;
/** At most this many firings are recorded on a migration (later ones are counted, not kept). */
export const MAX_FIRINGS = 50;

export type PolicySource = 'request' | `group:${string}` | 'controller' | 'default';

/** Every field of the policy in effect, with the layer it came from. */
export function resolvePolicy(layers: { source: PolicySource; policy: MigrationPolicy | undefined }[]): { policy: EffectivePolicy; from: Record<keyof EffectivePolicy, PolicySource> } {
  const policy = { ...POLICY_DEFAULTS } as EffectivePolicy;
  const from = Object.fromEntries(Object.keys(POLICY_DEFAULTS).map((k) => [k, 'default'])) as Record<keyof EffectivePolicy, PolicySource>;
  for (const { source, policy: p } of [...layers].reverse()) {
    if (!p) continue;
    for (const k of Object.keys(POLICY_DEFAULTS) as (keyof EffectivePolicy)[]) {
      if (p[k] === undefined) continue;
      (policy as Record<string, unknown>)[k] = k === 'onTimeout' ? [...(p[k] as PolicyAction[])] : p[k];
      from[k] = source;
    }
  }
  return { policy, from };
}

/** What no schema can say: throws VMTC_POLICY_INVALID (`where`: request, group, controller). */
export function checkPolicy(p: MigrationPolicy, where: string): void {
  const bad = (field: string, reason: string): never => { throw err('VMTC_POLICY_INVALID', { where, field, reason }); };
  for (const k of ['progressTimeoutS', 'completionTimeoutPerGiBS', 'downtimeStepMs', 'maxDowntimeMs', 'throttleWarnPercent'] as const) {
    const v = p[k];
    if (v !== undefined && !(typeof v === 'number' && Number.isFinite(v) && v >= 0)) bad(k, 'a number >= 0');
  }
  if (p.throttleWarnPercent !== undefined && p.throttleWarnPercent > 100) bad('throttleWarnPercent', 'at most 100');
  if (p.downtimeStepMs !== undefined && p.downtimeStepMs < 1) bad('downtimeStepMs', 'at least 1 ms');
  if (p.maxDowntimeMs !== undefined && p.maxDowntimeMs < 1) bad('maxDowntimeMs', 'at least 1 ms');
  if (p.onTimeout !== undefined) {
    if (!Array.isArray(p.onTimeout)) bad('onTimeout', 'a list of actions');
    const seen = new Set<string>();
    p.onTimeout.forEach((a, i) => {
      if (!(POLICY_ACTIONS as readonly string[]).includes(a)) bad('onTimeout', `unknown action ${JSON.stringify(a)} (one of ${POLICY_ACTIONS.join(', ')})`);
      if (seen.has(a)) bad('onTimeout', `${a} listed twice`);
      seen.add(a);
      if (a === 'cancel' && i !== p.onTimeout!.length - 1) bad('onTimeout', 'cancel ends the migration: it can only be the last action');
    });
  }
}

// ---- progress and the decision

/** One progress report of the copy, as the source sent it. */
export interface Observation {
  at: number;
  remainingBytes: number;
  totalBytes: number;
  pass?: number;
  cpuThrottlePercent?: number;
}

/** What the watch remembers of a copy (policy-watch.ts keeps one per migration). */
export interface WatchState {
  /** When the copy started (the first window's start). */
  startedAt: number;
  /** The start of the current window: the last progress, or the last action. */
  progressAt: number;
  /** When the current completion window started (the copy's start, then each action). */
  windowAt: number;
  /** The guest's memory, for the completion timeout (bytes; the first report's total if unknown). */
  memoryBytes?: number;
  /** The lowest remaining bytes seen, and the total they are measured against. */
  lowRemaining?: number;
  total?: number;
  /** The current pass and the size of the smallest pass so far (its first report's remaining). */
  pass?: number;
  smallestPass?: number;
  /** Index in onTimeout of the next action to try. */
  next: number;
  /** The downtime limit the watch last set (raise-downtime). */
  downtimeMs?: number;
  throttleWarned?: boolean;
  firings: number;
}

export function startWatch(now: number, memoryBytes?: number): WatchState {
  return { startedAt: now, progressAt: now, windowAt: now, next: 0, firings: 0, ...(memoryBytes ? { memoryBytes } : {}) };
}

/**
 * A progress report: whether it is progress, and whether the CPU throttle crossed the warning
 * threshold. Progress is (docs/policy.md#progress): the remaining bytes fall REMAINING_DROP of
 * the total below their lowest (the first pass moving), or a new pass starts PASS_SHRINK
 * smaller than every earlier pass (the dirty set shrinks). A new pass alone is not progress: a
 * copy that does not converge starts new passes for ever.
 */
export function observe(s: WatchState, o: Observation, p: Pick<EffectivePolicy, 'throttleWarnPercent'>): { state: WatchState; progress: boolean; throttleWarning?: number } {
  const st: WatchState = { ...s };
  let progress = false;
  if (st.memoryBytes === undefined && o.totalBytes > 0) st.memoryBytes = o.totalBytes;
  const total = st.total ?? (o.totalBytes > 0 ? o.totalBytes : undefined);
  if (total !== undefined) st.total = total;
  if (st.lowRemaining === undefined) {
    st.lowRemaining = o.remainingBytes;
  } else if (o.remainingBytes < st.lowRemaining) {
    if (total !== undefined && st.lowRemaining - o.remainingBytes >= REMAINING_DROP * total) progress = true;
    if (progress || total === undefined) st.lowRemaining = o.remainingBytes;
  }
  if (o.pass !== undefined && o.pass !== st.pass) {
    if (st.pass !== undefined && st.smallestPass !== undefined && o.remainingBytes <= (1 - PASS_SHRINK) * st.smallestPass) progress = true;
    if (st.smallestPass === undefined || o.remainingBytes < st.smallestPass) st.smallestPass = o.remainingBytes;
    st.pass = o.pass;
  }
  if (progress) {
    st.progressAt = o.at;
    st.lowRemaining = Math.min(st.lowRemaining, o.remainingBytes);
  }
  let throttleWarning: number | undefined;
  if (!st.throttleWarned && p.throttleWarnPercent > 0 && o.cpuThrottlePercent !== undefined && o.cpuThrottlePercent >= p.throttleWarnPercent) {
    st.throttleWarned = true;
    throttleWarning = o.cpuThrottlePercent;
  }
  return { state: st, progress, throttleWarning };
}

/** What the migration runs with now, as the actions need it. */
export interface CopyTuning {
  /** The copy started with post-copy allowed (request.postcopy). */
  postcopy: boolean;
  autoConverge: boolean;
  /** The downtime limit in effect (an operator's change, else the request's, else the hypervisor's). */
  maxDowntimeMs: number;
}

export type Trigger = 'progress' | 'completion';

/** One action a firing considered: taken (with what it sets) or skipped (why). */
export type PolicyStep =
  | { action: 'raise-downtime'; take: true; maxDowntimeMs: number; previousMs: number }
  | { action: 'postcopy' | 'cancel'; take: true }
  | { action: 'none'; take: true; reason: string }
  | { action: PolicyAction; take: false; reason: string };

export type Decision =
  | { fire: false; /** When to look again if nothing is reported (epoch ms); none: no timeout set. */ checkAt?: number }
  | { fire: true; trigger: Trigger; /** What the timeout was (s) and how long it waited (ms). */ timeoutS: number; waitedMs: number; steps: PolicyStep[]; state: WatchState };

/** The completion timeout in ms for this copy; undefined when off or the memory is unknown. */
export function completionTimeoutMs(p: EffectivePolicy, s: WatchState): number | undefined {
  if (!(p.completionTimeoutPerGiBS > 0) || !s.memoryBytes) return undefined;
  return Math.ceil(p.completionTimeoutPerGiBS * 1000 * Math.max(s.memoryBytes / 1024 ** 3, 1 / 1024));
}

/**
 * Whether a timeout fires at `now`, and if so which action runs: the next one in onTimeout that
 * applies (those that do not are skipped, with the reason). raise-downtime stays the next action
 * until the limit reaches maxDowntimeMs. After a firing both windows start again from `now`.
 * With no action left the firing is a warning only ('none').
 */
export function decide(p: EffectivePolicy, s: WatchState, now: number, t: CopyTuning): Decision {
  const progressMs = p.progressTimeoutS > 0 ? p.progressTimeoutS * 1000 : undefined;
  const completionMs = completionTimeoutMs(p, s);
  const progressAt = progressMs !== undefined ? s.progressAt + progressMs : undefined;
  const completionAt = completionMs !== undefined ? s.windowAt + completionMs : undefined;
  let trigger: Trigger | undefined;
  if (progressAt !== undefined && now >= progressAt) trigger = 'progress';
  else if (completionAt !== undefined && now >= completionAt) trigger = 'completion';
  if (!trigger) {
    const at = [progressAt, completionAt].filter((x): x is number => x !== undefined);
    return at.length ? { fire: false, checkAt: Math.min(...at) } : { fire: false };
  }
  const steps: PolicyStep[] = [];
  let next = s.next;
  let downtimeMs = s.downtimeMs;
  for (; next < p.onTimeout.length; next++) {
    const action = p.onTimeout[next]!;
    if (action === 'raise-downtime') {
      const current = Math.max(downtimeMs ?? 0, t.maxDowntimeMs);
      if (current >= p.maxDowntimeMs) {
        steps.push({ action, take: false, reason: `the downtime limit is ${current} ms, at or above the policy's maxDowntimeMs ${p.maxDowntimeMs}` });
        continue;
      }
      downtimeMs = Math.min(p.maxDowntimeMs, current + p.downtimeStepMs);
      steps.push({ action, take: true, maxDowntimeMs: downtimeMs, previousMs: current });
      // Stays the next action until the limit is reached.
      if (downtimeMs >= p.maxDowntimeMs) next++;
      break;
    }
    if (action === 'auto-converge') {
      // The hypervisor fixes its capabilities when the copy starts (QEMU refuses
      // migrate-set-capabilities during a migration): auto-converge runs only if asked for then.
      steps.push({ action, take: false, reason: t.autoConverge ? 'auto-converge has throttled the guest since the copy started; nothing more to turn on' : 'auto-converge can only be turned on when the copy starts (request autoConverge: true)' });
      continue;
    }
    if (action === 'postcopy') {
      if (!t.postcopy) {
        steps.push({ action, take: false, reason: 'the copy did not start with post-copy allowed (request postcopy: true)' });
        continue;
      }
      steps.push({ action, take: true });
      next++;
      break;
    }
    steps.push({ action: 'cancel', take: true });
    next++;
    break;
  }
  if (!steps.some((x) => x.take)) steps.push({ action: 'none', take: true, reason: p.onTimeout.length ? 'no action left to try' : 'the policy lists no action' });
  const state: WatchState = { ...s, next, progressAt: now, windowAt: now, firings: s.firings + 1, ...(downtimeMs !== undefined ? { downtimeMs } : {}) };
  const timeoutS = trigger === 'progress' ? p.progressTimeoutS : completionMs! / 1000;
  const waitedMs = now - (trigger === 'progress' ? s.progressAt : s.windowAt);
  return { fire: true, trigger, timeoutS, waitedMs, steps, state };
}

/** The action a firing took (the last step). */
export function takenStep(d: Extract<Decision, { fire: true }>): Extract<PolicyStep, { take: true }> {
  return d.steps.find((x): x is Extract<PolicyStep, { take: true }> => x.take)!;
}

// ---- what the record keeps (ctx.policy; presented as the record's `policy`)

/** One firing: what fired, what was tried, and how the action went ('failed': the source
 *  refused or could not be asked; error has why). */
export interface PolicyFiring {
  at: number;
  trigger: Trigger | 'throttle';
  timeoutS?: number;
  waitedMs?: number;
  action: PolicyAction | 'none' | 'warn';
  outcome: 'done' | 'failed';
  maxDowntimeMs?: number;
  cpuThrottlePercent?: number;
  skipped?: { action: PolicyAction; reason: string }[];
  reason?: string;
  error?: { code: string; message: string; details?: Record<string, unknown> };
}

export interface PolicyRecord {
  /** The policy in effect and where each field came from. */
  policy: EffectivePolicy;
  from: Record<keyof EffectivePolicy, PolicySource>;
  /** Oldest first, at most MAX_FIRINGS; `firings` counts them all. */
  fired: PolicyFiring[];
  firings: number;
}
