// The runner's TunnelPort (ports.ts) over the agent hub: docs/design.md#live-migration, step 6. Each switch request
// goes to every connected tunnel agent (every place where clients' traffic enters), or to the
// configured ones, in parallel; it succeeds only if all of them succeed, and otherwise throws
// VMTC_TUNNEL_SWITCH_FAILED naming each failing agent with its own coded error. A bicast that
// fails at one headend therefore stops the migration before any VM state moves.
//
// With no tunnel agent connected (and none configured) a switch is a no-op that is logged: a
// deployment without tunnel headends is allowed (clients may reach the VM another way).
import type { Logger } from '../common/log.ts';
import { silentLogger } from '../common/log.ts';
import { toVmtcError, type ErrorBody } from '../common/errors.ts';
import { tunnelError, type BicastParams, type PruneParams, type TunnelDowntime, type TunnelMethods } from '../common/tunnel-protocol.ts';
import type { AgentHub } from './hub.ts';
import type { TunnelPort } from './ports.ts';

export interface HubTunnelPortOptions {
  /** Per-agent request timeout, ms. Default 15 000. */
  timeoutMs?: number;
  /** Only these tunnel agents; each must be connected (a configured headend that is away fails
   *  the switch). Default: every tunnel agent connected at the time of the request. */
  agentIds?: string[];
  logger?: Logger;
}

export const HUB_TUNNEL_PORT_DEFAULTS = { timeoutMs: 15_000 } as const;

/** What the port needs of the hub (AgentHub provides it). */
export type TunnelHub = Pick<AgentHub, 'agents' | 'requestRaw'>;

export class HubTunnelPort implements TunnelPort {
  private readonly log: Logger;
  private readonly timeoutMs: number;

  constructor(private readonly hub: TunnelHub, private readonly opts: HubTunnelPortOptions = {}) {
    this.log = (opts.logger ?? silentLogger()).child({ mod: 'tunnel-port' });
    this.timeoutMs = opts.timeoutMs ?? HUB_TUNNEL_PORT_DEFAULTS.timeoutMs;
  }

  /** The tunnel agents a switch goes to now. */
  targets(): string[] {
    if (this.opts.agentIds) return [...this.opts.agentIds];
    return this.hub.agents().filter((a) => a.kind === 'tunnel' && a.connected).map((a) => a.hostId).sort();
  }

  async bicast(vmId: string, oldSite: string, newSite: string): Promise<void> {
    const params: BicastParams = { vmId, oldSite, newSite };
    await this.all('tunnel.bicast', vmId, params);
  }

  /** Returns the client-seen downtime measured by the first tunnel agent (in id order) that
   *  measured it, with its id as `agent` (docs/tunnel.md "Client-seen downtime"). */
  async prune(vmId: string, keepSite: string, dropSite: string): Promise<(TunnelDowntime & { agent: string }) | undefined> {
    const params: PruneParams = { vmId, keepSite, dropSite };
    const results = await this.all('tunnel.prune', vmId, params);
    for (const [agent, r] of results) {
      const d = (r as TunnelMethods['tunnel.prune'][1] | undefined)?.downtime;
      if (d) return { ...d, agent };
    }
    return undefined;
  }

  private async all<M extends 'tunnel.bicast' | 'tunnel.prune'>(method: M, vmId: string, params: TunnelMethods[M][0]): Promise<[string, unknown][]> {
    const log = this.log.child({ vmId });
    const ids = this.targets();
    if (ids.length === 0) {
      log.warn({ method, params }, 'no tunnel agent connected: tunnel switch skipped');
      return [];
    }
    const settled = await Promise.allSettled(ids.map((id) => this.hub.requestRaw(id, method, params, this.timeoutMs)));
    const failed: { hostId: string; error: ErrorBody }[] = [];
    let firstCause: unknown;
    settled.forEach((r, i) => {
      if (r.status === 'fulfilled') return;
      firstCause ??= r.reason;
      failed.push({ hostId: ids[i]!, error: toVmtcError(r.reason).toJSON() });
    });
    const succeeded = ids.filter((id) => !failed.some((f) => f.hostId === id));
    if (failed.length > 0) {
      log.warn({ method, params, failed, succeeded }, 'tunnel switch failed');
      throw tunnelError('VMTC_TUNNEL_SWITCH_FAILED', { method, ...params, agents: failed.map((f) => f.hostId), failed, succeeded }, {
        message: `tunnel agent${failed.length > 1 ? 's' : ''} ${failed.map((f) => `${f.hostId} (${f.error.code})`).join(', ')} failed ${method}`,
        cause: firstCause,
      });
    }
    log.info({ method, params, agents: ids }, 'tunnel switched');
    return settled.map((r, i) => [ids[i]!, r.status === 'fulfilled' ? r.value : undefined]);
  }
}
