// What every effect gets: the outside world (store, agents, clock, the AAA/broker/tunnel ports),
// the in-memory secrets, and a way to report. An effect is a function of this context, the
// migration's row and an AbortSignal that returns the outcome event; a thrown error is a FAIL.
import type { Logger } from '../../common/log.ts';
import { clockSleep, type Clock } from '../../common/clock.ts';
import { toVmtcError, type VmtcError } from '../../common/errors.ts';
import type { ColdExport } from '../../common/agent-protocol.ts';
import type { ControllerStore, MigrationCtx, MigrationRow } from '../store.ts';
import type { MigrationEvent, MigrationState } from '../machine.ts';
import type { AuthorizationPort, HubPort, LightpathPort, TunnelPort } from '../ports.ts';
import type { EventInput } from './reducer.ts';
import { err } from '../errors.ts';
import type { MigrationPolicy } from './policy.ts';

export interface RunnerOptions {
  /** How long the destination may take to report the VM running after the last page. */
  destinationRunTimeoutMs: number;
  /** Default deadline when a request gives none. */
  defaultDeadlineMs: number;
  /** Safety-net poll of the source agent while waiting for a migration to end. */
  statusPollMs: number;
  /** Address the destination listens on when its inventory names no migration address. */
  defaultListenHost: string;
  /** A destination agent gone this long while its migration can still be undone fails the
   *  migration with VMTC_AGENT_LOST (and rolls it back), instead of waiting for the deadline: a
   *  dead host's migration socket can hang for many minutes. A lost *source* is waited for: it
   *  holds the primary copy, and the controller asks it rather than guess (default 60 s). */
  agentLostMs?: number;
  /** The controller's migration policy, over the built-in defaults and under a VM group's and
   *  a request's (migration/policy.ts; docs/policy.md). */
  policy?: MigrationPolicy;
}

export interface EffectContext {
  store: ControllerStore;
  hub: HubPort;
  clock: Clock;
  /** The migration's logger. */
  log: Logger;
  options: RunnerOptions;
  aaa?: AuthorizationPort;
  lightpath?: LightpathPort;
  tunnel?: TunnelPort;
  /** Capability tokens are secrets: memory only, never in the store. */
  secrets: Map<string, string>;
  /** Cold exports (their disk URLs are single-use secrets): memory only, like the tokens. */
  exports: Map<string, ColdExport>;
  /** Feed an event to the migration while the effect keeps running (e.g. STOP_AND_COPY). */
  dispatch(id: string, input: EventInput & { detail?: unknown; expectState?: MigrationState | MigrationState[] }): Promise<void>;
  /** Progress for listeners (the REST API's event stream). */
  progress(id: string, p: object): void;
  /** The migration reached a terminal state: stop its timers and tell listeners. */
  finished(id: string, state: MigrationState): void;
}

/** An effect's outcome: the event it reports, with what it learnt. */
export interface Outcome {
  event: MigrationEvent;
  detail?: unknown;
  ctxPatch?: Partial<MigrationCtx>;
}

export type EffectFn = (cx: EffectContext, row: MigrationRow, signal: AbortSignal) => Promise<Outcome | void>;

export const NOT_FOUND = /NOT_FOUND$/;

/** Save part of the ctx now (intent recorded before asking an agent, so a rollback after a lost
 *  reply still undoes it). Returns the ctx saved. */
export function saveCtx(cx: EffectContext, id: string, patch: Partial<MigrationCtx>): MigrationCtx {
  const ctx = { ...cx.store.migration(id)!.ctx, ...patch };
  cx.store.saveCtx(id, ctx, cx.clock.now());
  return ctx;
}

/** The record's current ctx (effects read it fresh: earlier steps may have saved to it). */
export function currentCtx(cx: EffectContext, id: string): MigrationCtx {
  return cx.store.migration(id)!.ctx;
}

export function site(cx: EffectContext, hostId: string): string {
  return cx.hub.inventory(hostId)?.site ?? hostId;
}

/** Before a terminal state is recorded: both hosts' inventories fresh (hub.refreshInventory),
 *  so that where the API locates the VM agrees with how the migration ended. A host that does
 *  not answer in time keeps its last inventory; its next push corrects it. */
export async function refreshInventories(cx: EffectContext, row: { sourceHostId: string; destinationHostId: string }): Promise<void> {
  const refresh = cx.hub.refreshInventory?.bind(cx.hub);
  if (!refresh) return;
  await Promise.all([row.sourceHostId, row.destinationHostId].filter((h) => cx.hub.isConnected(h)).map((h) =>
    refresh(h, INVENTORY_REFRESH_MS).catch((e: unknown) => cx.log.info({ hostId: h, code: toVmtcError(e).code }, 'inventory refresh failed; the host\'s next push corrects it'))));
}
const INVENTORY_REFRESH_MS = 5_000;

/** A transport-level failure under the step's own code, with the cause inside; coded errors
 *  from the peer pass through. */
export function wrap(e: unknown, code: Parameters<typeof err>[0]): VmtcError {
  const ve = toVmtcError(e);
  if (ve.code !== 'VMTC_INTERNAL' && ve.code !== 'VMTC_PEER_UNREACHABLE' && ve.code !== 'VMTC_TIMEOUT') return ve;
  return err(code, { cause: ve.toJSON() }, { cause: e });
}

/** Request failures that say the agent's link is down (its agent restarting, or gone), not
 *  that the agent refused. */
export const LINK_DOWN = new Set(['VMTC_AGENT_NOT_CONNECTED', 'VMTC_PEER_UNREACHABLE']);

/** Resolves once `hostId` is connected, or after `ms` (whichever comes first). */
export function whenConnected(cx: Pick<EffectContext, 'hub' | 'clock'>, hostId: string, ms: number): Promise<void> {
  if (cx.hub.isConnected(hostId) || ms <= 0) return Promise.resolve();
  return new Promise<void>((resolve) => {
    const done = () => {
      timer.cancel();
      cx.hub.off('connected', onConnected);
      resolve();
    };
    const onConnected = (h: string) => { if (h === hostId) done(); };
    const timer = cx.clock.setTimeout(done, ms);
    cx.hub.on('connected', onConnected);
  });
}

/**
 * Ask an agent whose answer the migration cannot do without (it holds a copy of the VM). While
 * its link is down (a restarting agent: docs/design.md#restart) wait for it to connect again and
 * ask again, for at most `withinMs` (default: agentLostMs); then the last failure is thrown. Its
 * own refusal is thrown at once.
 */
export async function askAgent<T>(cx: EffectContext, hostId: string, ask: () => Promise<T>, withinMs = cx.options.agentLostMs ?? 60_000): Promise<T> {
  const until = cx.clock.now() + withinMs;
  for (;;) {
    try {
      return await ask();
    } catch (e) {
      const code = toVmtcError(e).code;
      const left = until - cx.clock.now();
      if (!LINK_DOWN.has(code) || left <= 0) throw e;
      cx.log.warn({ hostId, code, leftMs: left }, 'the agent cannot be asked now; waiting for it to come back');
      // A link that is up again (or never went down: a reply lost as it closed) is asked again
      // after a short pause, so a flapping link is not hammered.
      await (cx.hub.isConnected(hostId) ? clockSleep(cx.clock, Math.min(left, 200)) : whenConnected(cx, hostId, left));
    }
  }
}

/** Rejects when the signal aborts (the migration was cancelled or failed meanwhile). */
export function aborted(signal: AbortSignal, migrationId: string): Promise<never> {
  return new Promise<never>((_, reject) => {
    if (signal.aborted) reject(err('VMTC_CANCELLED', { migrationId }));
    signal.addEventListener('abort', () => reject(err('VMTC_CANCELLED', { migrationId })), { once: true });
  });
}
