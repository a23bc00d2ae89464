// The tunnel agent (`vmtc tunnel`): runs where clients' traffic enters (the paper's Figure 2; in
// the lab, the client namespace) and keeps the client tunnel pointed at the site where each VM
// lives. It keeps a link to the controller's agent hub (agents/common/agent-link.ts, kind
// 'tunnel', mutual TLS) and serves:
//
//   tunnel.bicast { vmId, oldSite, newSite }   docs/design.md#live-migration step 6, before the copy starts:
//       send toward both sites. The new site is added first and nothing is ever removed here,
//       so at no instant does the tunnel lack the site where the VM may be running.
//   tunnel.prune  { vmId, keepSite, dropSite } after the destination reports the VM running (or,
//       after a rollback, with the roles swapped): make sure keepSite is present, then stop
//       sending to dropSite. The driver refuses to remove the last site, and keepSite is added
//       before anything is removed, so a prune naming the wrong site cannot strand the VM.
//   tunnel.state  {}                            { driver, sites, vmSites, history }
//
// and sends the event `tunnel.state` (same shape) on every change and on every (re)connect.
//
// The tunnel is shared by every VM on the L2 segment, so a site is dropped only when no other VM
// this agent has switched still needs it (vmSites). VMs the agent never switched are unknown to
// it: their site is the one given by --initial-site.
import type { Logger } from '../../src/common/log.ts';
import { serviceLogger } from '../../src/common/log.ts';
import { keepAliveClock, type Clock } from '../../src/common/clock.ts';
import type { Handler } from '../../src/common/rpc.ts';
import { AgentLink, type BackoffOptions } from '../common/agent-link.ts';
import { tunnelError, type TunnelChange, type TunnelMethods, type TunnelState } from '../../src/common/tunnel-protocol.ts';
import type { TunnelDriver } from './driver.ts';
import type { DowntimeMeter } from './meter.ts';
import { probeStreams } from './probe-stream.ts';

export type { BicastParams, PruneParams, TunnelChange, TunnelMethods, TunnelState } from '../../src/common/tunnel-protocol.ts';

export const TUNNEL_AGENT_VERSION = '0.1.0';

/** Options of the tunnel agent; defaults in TUNNEL_AGENT_DEFAULTS. */
export interface TunnelAgentOptions {
  /** Base URL of the controller's REST API (used to enrol). */
  controllerUrl?: string;
  enrollToken?: string;
  /** Expected sha256 of the controller's CA (checked at enrolment). */
  caFingerprint?: string;
  dataDir: string;
  driver: TunnelDriver;
  /** Site the tunnel must send to at start (added if absent; nothing is removed). */
  initialSite?: string;
  logger?: Logger;
  backoff?: BackoffOptions;
  clock?: Clock;
  agentVersion?: string;
  /** Changes kept in `history`. */
  historyLimit?: number;
  /** Measures the client-seen downtime of the VMs it watches from bicast to prune; the prune
   *  returns the figures as `downtime` (meter.ts; docs/tunnel.md "Client-seen downtime"). */
  meter?: DowntimeMeter;
}

export const TUNNEL_AGENT_DEFAULTS = { historyLimit: 200 } as const;

export interface TunnelAgent {
  hostId: string;
  link: AgentLink;
  /** The same answer as the tunnel.state request. */
  state(): Promise<TunnelState>;
  close(): Promise<void>;
}

const ID_RE = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/;
const SITE_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/;

export async function startTunnelAgent(opts: TunnelAgentOptions): Promise<TunnelAgent> {
  const base = serviceLogger(opts.logger, 'tunnel');
  const driver = opts.driver;
  // Also the link's (backoff, watchdog): while disconnected, its reconnect timer keeps the
  // process alive, hence timers that hold the event loop by default.
  const clock = opts.clock ?? keepAliveClock;
  const historyLimit = opts.historyLimit ?? TUNNEL_AGENT_DEFAULTS.historyLimit;
  if (!(Number.isInteger(historyLimit) && historyLimit > 0)) throw tunnelError('VMTC_TUNNEL_BAD_PARAMS', { field: 'historyLimit', value: historyLimit });
  const vmSites = new Map<string, string[]>();
  const history: TunnelChange[] = [];
  let log = base;
  let closed = false;
  // One change at a time: a prune must not interleave with a bicast's check-then-add.
  let chain: Promise<unknown> = Promise.resolve();
  const serial = <T>(fn: () => Promise<T>): Promise<T> => {
    const p = chain.then(fn, fn);
    chain = p.catch(() => undefined);
    return p;
  };

  const state = async (): Promise<TunnelState> => ({
    driver: driver.type,
    sites: await driver.sites(),
    vmSites: Object.fromEntries([...vmSites].map(([k, v]) => [k, [...v]])),
    history: history.map((h) => ({ ...h, sites: [...h.sites] })),
  });

  let link: AgentLink | undefined;
  // The meter's echo probe, live to the controller for the dashboard's radar (probe-stream.ts).
  const probes = probeStreams(clock, (batch) => {
    if (!link || closed) return;
    try { link.send('tunnel.probe', batch, { queue: false }); } catch (e) { log.warn({ err: e }, 'cannot send the probe stream'); }
  });
  // Queued behind the change in progress, so events leave in the order the changes happened.
  const publish = (): void => {
    void serial(async () => {
      if (!link || closed) return;
      try {
        link.send('tunnel.state', await state());
      } catch (e) {
        log.warn({ err: e }, 'cannot read the tunnel state');
      }
    });
  };

  const record = async (op: 'add' | 'remove', site: string, cause: TunnelChange['cause'], vmId?: string) => {
    const sites = await driver.sites();
    history.push({ at: clock.now(), op, site, cause, ...(vmId ? { vmId } : {}), sites });
    while (history.length > historyLimit) history.shift();
    (vmId ? log.child({ vmId }) : log).info({ op, site, cause, sites }, op === 'add' ? 'tunnel sends to site' : 'tunnel stopped sending to site');
  };

  /** Add `site` if it is absent; say whether the data plane changed. */
  const ensure = async (site: string, cause: TunnelChange['cause'], vmId?: string): Promise<boolean> => {
    if ((await driver.sites()).includes(site)) return false;
    await driver.add(site);
    await record('add', site, cause, vmId);
    return true;
  };

  // ---- parameter checks (coded, naming the field) ------------------------------------------
  const obj = (p: unknown): Record<string, unknown> => {
    if (!p || typeof p !== 'object' || Array.isArray(p)) throw tunnelError('VMTC_TUNNEL_BAD_PARAMS', { field: 'params', reason: 'not an object' });
    return p as Record<string, unknown>;
  };
  const only = (q: Record<string, unknown>, fields: string[]) => {
    for (const k of Object.keys(q)) if (!fields.includes(k)) throw tunnelError('VMTC_TUNNEL_BAD_PARAMS', { field: k, reason: 'unknown field' });
  };
  const vmIdOf = (q: Record<string, unknown>): string => {
    const v = q.vmId;
    if (typeof v !== 'string' || !ID_RE.test(v)) throw tunnelError('VMTC_TUNNEL_BAD_PARAMS', { field: 'vmId', value: typeof v === 'string' ? v.slice(0, 80) : v ?? null });
    return v;
  };
  const siteOf = (q: Record<string, unknown>, field: string): string => {
    const v = q[field];
    if (typeof v !== 'string' || !SITE_RE.test(v)) throw tunnelError('VMTC_TUNNEL_BAD_PARAMS', { field, value: typeof v === 'string' ? v.slice(0, 80) : v ?? null });
    // Checked before anything changes, so a request naming an unknown site changes nothing.
    if (!driver.knows(v)) throw tunnelError('VMTC_TUNNEL_UNKNOWN_SITE', { field, site: v, known: driver.knownSites() ?? null });
    return v;
  };

  const bicast = async (p: unknown): Promise<TunnelMethods['tunnel.bicast'][1]> => {
    const q = obj(p);
    only(q, ['vmId', 'oldSite', 'newSite']);
    const vmId = vmIdOf(q);
    const oldSite = siteOf(q, 'oldSite');
    const newSite = siteOf(q, 'newSite');
    return serial(async () => {
      // New first: the old site is (normally) present already; adding the new one first means
      // that even if the old one had been lost, the VM is reachable once it runs at the new site.
      let changed = await ensure(newSite, 'bicast', vmId);
      changed = (await ensure(oldSite, 'bicast', vmId)) || changed;
      vmSites.set(vmId, [...new Set([oldSite, newSite])]);
      log.child({ vmId }).info({ oldSite, newSite, changed }, 'bicast');
      // A measurement that cannot start never fails the switch: the prune then says why.
      if (opts.meter?.watches(vmId)) await opts.meter.start(vmId, oldSite, newSite).catch((e: unknown) => log.child({ vmId }).warn({ err: e }, 'cannot measure the client-seen downtime'));
      const probeLog = opts.meter?.probeLog?.(vmId);
      if (probeLog) probes.start(vmId, probeLog);
      publish();
      return { sites: await driver.sites() };
    });
  };

  const prune = async (p: unknown): Promise<TunnelMethods['tunnel.prune'][1]> => {
    const q = obj(p);
    only(q, ['vmId', 'keepSite', 'dropSite']);
    const vmId = vmIdOf(q);
    const keepSite = siteOf(q, 'keepSite');
    const dropSite = siteOf(q, 'dropSite');
    return serial(async () => {
      const vlog = log.child({ vmId });
      // Make before break: the site to keep is present before anything is removed. If adding it
      // fails, the request fails here and the old site keeps receiving.
      await ensure(keepSite, 'prune', vmId);
      vmSites.set(vmId, [keepSite]);
      let removed = false;
      let keptFor: string[] | undefined;
      if (dropSite !== keepSite) {
        const others = [...vmSites].filter(([id, s]) => id !== vmId && s.includes(dropSite)).map(([id]) => id);
        if (others.length > 0) {
          keptFor = others;
          vlog.info({ dropSite, keptFor }, 'prune: site still needed by other VMs, kept');
        } else if ((await driver.sites()).includes(dropSite)) {
          await driver.remove(dropSite);
          await record('remove', dropSite, 'prune', vmId);
          removed = true;
        }
      }
      const downtime = await opts.meter?.stop(vmId, keepSite).catch((e: unknown) => { vlog.warn({ err: e }, 'cannot read the client-seen downtime'); return undefined; });
      // After the meter's tail, so the stream's last batch has the replies the figures count.
      probes.stop(vmId);
      vlog.info({ keepSite, dropSite, removed, ...(downtime ? { downtime } : {}) }, 'prune');
      publish();
      return { sites: await driver.sites(), removed, ...(keptFor ? { keptFor } : {}), ...(downtime ? { downtime } : {}) };
    });
  };

  const handlers: Record<keyof TunnelMethods, Handler> = {
    'tunnel.bicast': bicast,
    'tunnel.prune': prune,
    'tunnel.state': async (p) => {
      if (p !== undefined && p !== null) only(obj(p), []);
      return serial(state);
    },
  };

  if (opts.initialSite !== undefined) {
    if (!SITE_RE.test(opts.initialSite) || !driver.knows(opts.initialSite)) throw tunnelError('VMTC_TUNNEL_UNKNOWN_SITE', { field: 'initialSite', site: opts.initialSite, known: driver.knownSites() ?? null });
    await serial(() => ensure(opts.initialSite!, 'initial'));
  }

  link = await AgentLink.open({
    kind: 'tunnel',
    dataDir: opts.dataDir,
    logger: base,
    agentVersion: opts.agentVersion ?? TUNNEL_AGENT_VERSION,
    ...(opts.controllerUrl ? { controllerUrl: opts.controllerUrl } : {}),
    ...(opts.enrollToken ? { enrollToken: opts.enrollToken } : {}),
    ...(opts.caFingerprint ? { caFingerprint: opts.caFingerprint } : {}),
    ...(opts.backoff ? { backoff: opts.backoff } : {}),
    clock,
    handlers,
  });
  const hostId = link.hostId;
  log = base.child({ hostId });
  // Fresh state first on every connect: the controller may have missed changes while away.
  link.on('connected', publish);
  log.info({ driver: driver.type, sites: await driver.sites() }, 'tunnel agent started');
  const l = link;

  return {
    hostId,
    link: l,
    state: () => serial(state),
    async close() {
      if (closed) return;
      closed = true;
      probes.close();
      await l.close();
      await chain.catch(() => undefined);
      await opts.meter?.close();
      log.info('tunnel agent stopped');
    },
  };
}
