// The host agent (`vmtc agent`): one per hypervisor host. It keeps a link to the controller's
// agent hub (agents/common/agent-link.ts), serves the HostMethods requests by calling its
// HypervisorDriver, and reports: its inventory on every connect and whenever a VM changes state,
// and the progress and end of each live migration it runs as a source
// (docs/design.md#live-migration, step 5). The cold path (power off, publish the disks, fetch
// them, boot the copy) is in cold/.
import type { Logger } from '../../src/common/log.ts';
import { serviceLogger } from '../../src/common/log.ts';
import { toVmtcError, VmtcError } from '../../src/common/errors.ts';
import type { ColdExport, HostInventory, HostMethods, MigrationParams, MigrationProgress, MigrationResult, MigrationTuning, VmSpec, VmState } from '../../src/common/agent-protocol.ts';
import { keepAliveClock, type Clock } from '../../src/common/clock.ts';
import type { Handler } from '../../src/common/rpc.ts';
import { AGENT_PARAMS } from '../../src/common/agent-schemas.ts';
import { AgentLink, type BackoffOptions } from '../common/agent-link.ts';
import { ColdTransfer, type ColdOptions } from './cold/index.ts';
import type { VerifyAttempt } from './cold/import.ts';
import { reachByProbe } from './reach.ts';
import type { HypervisorDriver } from './driver.ts';
import { hostError } from './errors.ts';
import { inheritedOutcome, MigrationJournal } from './migration-journal.ts';
import { StatsReporter } from './stats.ts';
import { dropLeftCheckpoints, removeLeftStores, replicaHandlers } from './replicas.ts';

export const AGENT_VERSION = '0.1.0';

export interface HostAgentOptions {
  /** Base URL of the controller's REST API (used to enrol). */
  controllerUrl: string;
  enrollToken?: string;
  dataDir: string;
  driver: HypervisorDriver;
  site?: string;
  /** This host's end of the lightpath, reported in the inventory. */
  migrationAddress?: string;
  logger?: Logger;
  agentVersion?: string;
  /** Expected sha256 of the controller's CA (checked at enrolment). */
  caFingerprint?: string;
  /** Reconnect backoff (default 200 ms doubling to 10 s, jitter 0.5). */
  backoff?: BackoffOptions;
  /** Inventory changes within this window are sent once (default 50 ms). */
  inventoryCoalesceMs?: number;
  /** HOST:PORT the cold path's disk export server listens on (HTTPS, mutual TLS), started at the
   *  first vm.coldExport. Default '127.0.0.1:0'; on a wildcard address the URLs name
   *  migrationAddress (or the host name). */
  exportListen?: string;
  /** The network namespace the driver's guests and lightpath address are in (the QEMU driver's
   *  netns: the lab). The cold path then serves its disks on migrationAddress and fetches them
   *  from inside that namespace, through relays, so they cross the lightpath
   *  (docs/design.md#cold-path, "Across the lightpath"). */
  netns?: string;
  /** Tuning of the cold path (tests: clock, free space, stall timeout). */
  cold?: Pick<ColdOptions, 'clock' | 'ids' | 'freeSpace' | 'stallMs' | 'progressEveryMs' | 'exportHost'>;
  /** How often the 'stats' event goes out (docs/monitoring.md; default STATS_DEFAULTS, 0: never),
   *  and every how many reports a dirty-rate measurement starts. */
  statsIntervalMs?: number;
  dirtyRateEvery?: number;
  /** Timers of the agent and its link; the cold path's too unless `cold.clock` says otherwise.
   *  Default keepAliveClock (the command passes it; the driver gets its own). */
  clock?: Clock;
}

export interface HostAgent {
  hostId: string;
  link: AgentLink;
  close(): Promise<void>;
}

type HandlerMap = { [M in keyof HostMethods]: (p: HostMethods[M][0]) => Promise<HostMethods[M][1]> };

export async function startHostAgent(opts: HostAgentOptions): Promise<HostAgent> {
  const log = serviceLogger(opts.logger, 'agent');
  const driver = opts.driver;
  const clock = opts.clock ?? keepAliveClock;
  const agentVersion = opts.agentVersion ?? AGENT_VERSION;
  /** Each VM's last migration as a source (progress, then result), on disk so that a restarted
   *  agent still answers vm.migrationStatus for it (agents/host/migration-journal.ts). Opened
   *  before the link, so no request is served without it. */
  const journal = await MigrationJournal.open({ dataDir: opts.dataDir, clock, logger: log });
  const running = new Set<string>();
  let closed = false;
  let hostId = '';
  // Built once the link has enrolled (it needs the host id and the credentials).
  let cold!: ColdTransfer;

  const inventory = async (): Promise<HostInventory> => {
    const [facts, vms] = await Promise.all([driver.facts(), driver.list()]);
    return {
      hostId,
      ...(opts.site ? { site: opts.site } : {}),
      ...facts,
      ...(opts.migrationAddress ? { migrationAddress: opts.migrationAddress } : {}),
      vms,
      agentVersion,
    };
  };

  const str = (v: unknown, field: string): string => {
    if (typeof v !== 'string' || v.length === 0) throw hostError('VMTC_HOST_BAD_PARAMS', { field });
    return v;
  };
  const obj = (v: unknown, field: string): Record<string, unknown> => {
    if (!v || typeof v !== 'object' || Array.isArray(v)) throw hostError('VMTC_HOST_BAD_PARAMS', { field });
    return v as Record<string, unknown>;
  };
  /** This migration's tuning, checked field by field (it goes to the driver as it is). */
  const tuningOf = (v: unknown): MigrationTuning | undefined => {
    if (v === undefined) return undefined;
    const t = obj(v, 'tuning');
    for (const k of ['autoConverge', 'multifd', 'postcopy', 'suspend', 'copyStorage'] as const) {
      if (t[k] !== undefined && typeof t[k] !== 'boolean') throw hostError('VMTC_HOST_BAD_PARAMS', { field: `tuning.${k}` });
    }
    for (const k of ['bandwidthMbps', 'maxDowntimeMs', 'multifdChannels'] as const) {
      const n = t[k];
      if (n !== undefined && !(typeof n === 'number' && Number.isFinite(n) && n >= 0)) throw hostError('VMTC_HOST_BAD_PARAMS', { field: `tuning.${k}` });
    }
    return t as MigrationTuning;
  };

  /** Parameters checked against the method's schema (src/common/agent-schemas.ts AGENT_PARAMS). */
  const checked = <M extends 'vm.tuneMigration' | 'vm.forceComplete'>(method: M, p: unknown): HostMethods[M][0] => {
    const problems = AGENT_PARAMS[method]!.problems(p);
    if (problems.length) throw hostError('VMTC_HOST_BAD_PARAMS', { field: problems[0]!.path.replace(/^\//, '') || 'params', problems });
    return p as HostMethods[M][0];
  };
  /** Refused (coded) unless this agent runs the VM's migration `migrationId` as its source. */
  const migrationRunsHere = (vmId: string, migrationId: string): void => {
    const e = journal.get(vmId);
    if (!running.has(vmId) || e?.migrationId !== migrationId) throw hostError('VMTC_HOST_MIGRATION_NOT_FOUND', { vmId, migrationId });
  };

  /** A migration an earlier process of this agent started and did not see end: settle it from
   *  what the hypervisor says now (inheritedOutcome), record and report an end once, and answer
   *  with it. One settling per VM at a time, so the end is reported once. */
  const settling = new Map<string, Promise<MigrationProgress | MigrationResult | null>>();
  const settleInherited = (vmId: string): Promise<MigrationProgress | MigrationResult | null> => {
    let p = settling.get(vmId);
    if (p) return p;
    p = (async () => {
      const e = journal.get(vmId);
      if (!e) return null;
      if (!journal.isInherited(vmId)) return e.result ?? e.progress ?? null;
      let state: VmState | undefined;
      try {
        state = (await driver.describe(vmId)).state;
      } catch (err) {
        if (!(err instanceof VmtcError && /_VM_NOT_FOUND$/.test(err.code))) throw err;
      }
      const out = inheritedOutcome(e, state);
      if ('totalBytes' in out) return out;
      await journal.finish(out);
      log.warn({ hostId, vmId, migrationId: out.migrationId, status: out.status, vmState: state ?? null }, 'live migration of an earlier agent process settled');
      link.send('migration.done', out);
      return out;
    })().finally(() => settling.delete(vmId));
    settling.set(vmId, p);
    return p;
  };
  const migrationStatus = async (vmId: string): Promise<MigrationProgress | MigrationResult | null> => {
    if (journal.isInherited(vmId)) return settleInherited(vmId);
    const e = journal.get(vmId);
    return e ? e.result ?? e.progress ?? null : null;
  };
  const settleAllInherited = () => {
    for (const vmId of journal.inheritedVms()) void settleInherited(vmId).catch((e: unknown) => log.warn({ vmId, err: String(e) }, 'settling an inherited migration failed'));
  };

  const handlers: HandlerMap = {
    'host.inventory': async () => inventory(),
    // Before a cold move powers the source off (docs/design.md#cold-path): the verify address
    // seen from this host's VM network. The rule is agents/host/reach.ts.
    'host.checkReach': async (p) => {
      const q = obj(p, 'params');
      const host = str(q.host, 'host');
      if (host.length > 255) throw hostError('VMTC_HOST_BAD_PARAMS', { field: 'host' });
      const { port, timeoutMs: t } = q;
      if (!(Number.isInteger(port) && (port as number) > 0 && (port as number) <= 65535)) throw hostError('VMTC_HOST_BAD_PARAMS', { field: 'port' });
      if (!(typeof t === 'number' && t > 0 && t <= 60_000)) throw hostError('VMTC_HOST_BAD_PARAMS', { field: 'timeoutMs' });
      return driver.checkReach ? driver.checkReach(host, port as number, t) : reachByProbe(host, port as number, t, clock);
    },
    'vm.start': async (p) => driver.start(obj(obj(p, 'params').spec, 'spec') as unknown as VmSpec),
    'vm.describe': async (p) => driver.describe(str(obj(p, 'params').vmId, 'vmId')),
    'vm.stop': async (p) => {
      await driver.stop(str(obj(p, 'params').vmId, 'vmId'));
      return { ok: true as const };
    },
    'vm.destroy': async (p) => {
      const q = obj(p, 'params');
      const vmId = str(q.vmId, 'vmId');
      // After a committed move: the disks it leaves keep no replica checkpoint (agents/host/replicas.ts).
      // leftForGood (a committed move): the consumed replica stores it ran from go too.
      const leaving = q.dropCheckpoints === true || q.leftForGood === true ? await driver.describe(vmId).then((i) => i.spec, () => undefined) : undefined;
      try {
        await driver.destroy(vmId);
      } catch (e) {
        // A failed cold import leaves no VM but may leave copies: cleaning up still removes them.
        if (!(e instanceof VmtcError && /_VM_NOT_FOUND$/.test(e.code))) throw e;
        await cold.forgetVm(vmId);
        await journal.forget(vmId);
        throw e;
      }
      // The agent-owned disk copies (a cold import's) go with the VM; disks elsewhere never do.
      await cold.forgetVm(vmId);
      // Nobody asks about the migration of a VM that is gone from here.
      await journal.forget(vmId);
      const checkpoints = leaving && q.dropCheckpoints === true ? await dropLeftCheckpoints(driver.replicas, leaving, log) : undefined;
      const stores = leaving && q.leftForGood === true ? await removeLeftStores(driver.replicas, leaving, log) : undefined;
      return { ok: true as const, ...(checkpoints ? { checkpoints } : {}), ...(stores ? { stores } : {}) };
    },
    'vm.resume': async (p) => {
      const vmId = str(obj(p, 'params').vmId, 'vmId');
      const info = await driver.resume(vmId);
      // Running here again: its last migration (if it ended) no longer matters to anyone.
      await journal.forget(vmId, { onlyFinished: true });
      return info;
    },
    'vm.prepareIncoming': async (p) => {
      const q = obj(p, 'params');
      const port = q.port;
      if (port !== undefined && !(Number.isInteger(port) && (port as number) >= 0 && (port as number) <= 65535)) throw hostError('VMTC_HOST_BAD_PARAMS', { field: 'port' });
      const tuning = tuningOf(q.tuning);
      return driver.prepareIncoming(obj(q.spec, 'spec') as unknown as VmSpec, str(q.migrationId, 'migrationId'), str(q.listenHost, 'listenHost'), {
        ...(port !== undefined ? { port: port as number } : {}),
        ...(tuning ? { tuning } : {}),
      });
    },
    'vm.migrate': async (p) => {
      const q = obj(p, 'params');
      const vmId = str(q.vmId, 'vmId');
      const uri = str(q.uri, 'uri');
      const params = obj(q.params, 'params.params') as unknown as MigrationParams;
      const migrationId = str(params.migrationId, 'params.migrationId');
      if (running.has(vmId)) throw hostError('VMTC_HOST_MIGRATION_IN_PROGRESS', { vmId });
      running.add(vmId);
      try {
        // Refuse what cannot start now, so the controller's request fails rather than a later event.
        const info = await driver.describe(vmId);
        if (info.state !== 'running') throw hostError('VMTC_HOST_VM_STATE', { vmId, state: info.state, op: 'migrate' });
        // On disk before the hypervisor starts, so an agent restarted from here on knows it.
        await journal.begin(vmId, migrationId);
      } catch (e) {
        running.delete(vmId);
        throw e;
      }
      const mlog = log.child({ hostId, vmId, migrationId });
      mlog.info({ uri, bandwidthMbps: params.bandwidthMbps }, 'live migration started');
      void (async () => {
        let result: MigrationResult;
        try {
          result = await driver.migrate(vmId, uri, params, (prog) => {
            journal.progress(prog);
            link.send('migration.progress', prog);
          });
        } catch (e) {
          const ve = toVmtcError(e);
          result = { migrationId, vmId, status: 'failed', error: ve.toJSON() };
        }
        running.delete(vmId);
        await journal.finish(result).catch((e: unknown) => mlog.warn({ err: String(e) }, 'migration journal not written'));
        mlog.info({ status: result.status, downtimeMs: result.downtimeMs, totalTimeMs: result.totalTimeMs, error: result.error }, 'live migration ended');
        // Sent (or queued while the link is down) exactly once per migration.
        link.send('migration.done', result);
      })();
      return { started: true as const };
    },
    'vm.migrationStatus': async (p) => migrationStatus(str(obj(p, 'params').vmId, 'vmId')),
    // The controller's decision at the point of no return (docs/design.md#switchover).
    // Idempotent: a controller that restarted in 'switchover' asks again, perhaps after the end.
    'vm.continueMigration': async (p) => {
      const q = obj(p, 'params');
      const vmId = str(q.vmId, 'vmId');
      const migrationId = str(q.migrationId, 'migrationId');
      if (!running.has(vmId)) {
        const last = await migrationStatus(vmId);
        const ours = last?.migrationId === migrationId ? last : undefined;
        if (ours?.status === 'completed') return { ok: true as const };
        throw hostError('VMTC_HOST_MIGRATION_NOT_FOUND', { vmId, migrationId, ...(ours ? { status: ours.status } : {}) });
      }
      await driver.continueMigration(vmId, migrationId);
      return { ok: true as const };
    },
    'vm.cancelMigration': async (p) => {
      await driver.cancelMigration(str(obj(p, 'params').vmId, 'vmId'));
      return { ok: true as const };
    },
    // An operator's control of a running migration (the controller's force-complete and tune).
    'vm.tuneMigration': async (p) => {
      const q = checked('vm.tuneMigration', p);
      if (q.bandwidthMbps === undefined && q.maxDowntimeMs === undefined) throw hostError('VMTC_HOST_BAD_PARAMS', { field: 'bandwidthMbps', reason: 'give bandwidthMbps, maxDowntimeMs or both' });
      migrationRunsHere(q.vmId, q.migrationId);
      return driver.tuneMigration(q.vmId, q.migrationId, {
        ...(q.bandwidthMbps !== undefined ? { bandwidthMbps: q.bandwidthMbps } : {}),
        ...(q.maxDowntimeMs !== undefined ? { maxDowntimeMs: q.maxDowntimeMs } : {}),
      });
    },
    'vm.forceComplete': async (p) => {
      const q = checked('vm.forceComplete', p);
      migrationRunsHere(q.vmId, q.migrationId);
      await driver.forceComplete(q.vmId, q.migrationId, q.mode);
      log.info({ hostId, vmId: q.vmId, migrationId: q.migrationId, mode: q.mode }, 'live migration forced to complete');
      return { mode: q.mode };
    },
    'vm.waitRunning': async (p) => {
      const q = obj(p, 'params');
      const t = q.timeoutMs;
      if (!(typeof t === 'number' && t > 0)) throw hostError('VMTC_HOST_BAD_PARAMS', { field: 'timeoutMs' });
      return driver.waitRunning(str(q.vmId, 'vmId'), t);
    },
    // The cold path (EGI-Engage D4.4; agents/host/cold/).
    'vm.coldExport': async (p) => {
      const q = obj(p, 'params');
      const vmId = str(q.vmId, 'vmId');
      const migrationId = str(q.migrationId, 'migrationId');
      const destinationHostId = str(q.destinationHostId, 'destinationHostId');
      const ttlMs = q.ttlMs;
      if (!(typeof ttlMs === 'number' && Number.isFinite(ttlMs) && ttlMs > 0)) throw hostError('VMTC_HOST_BAD_PARAMS', { field: 'ttlMs' });
      if (destinationHostId === hostId) throw hostError('VMTC_HOST_BAD_PARAMS', { field: 'destinationHostId', reason: 'the destination is this host' });
      const serials = (field: 'destinationCertSerials' | 'sourceCertSerials'): { [k: string]: string[] } => {
        const v = q[field];
        if (v === undefined) return {};
        if (!Array.isArray(v) || v.length > 100 || !v.every((x) => typeof x === 'string' && /^[0-9A-Fa-f:]{1,128}$/.test(x))) throw hostError('VMTC_HOST_BAD_PARAMS', { field });
        return { [field]: v as string[] };
      };
      if (q.checksums !== undefined && q.checksums !== 'now' && q.checksums !== 'later') throw hostError('VMTC_HOST_BAD_PARAMS', { field: 'checksums', reason: "'now' or 'later'" });
      const checksums = q.checksums === 'later' ? { checksums: 'later' as const } : {};
      return cold.export({ vmId, migrationId, destinationHostId, ttlMs, ...serials('destinationCertSerials'), ...serials('sourceCertSerials'), ...checksums }, (prog) => link.send('cold.progress', prog));
    },
    'vm.coldChecksums': async (p) => {
      const q = obj(p, 'params');
      return cold.checksums({ vmId: str(q.vmId, 'vmId'), migrationId: str(q.migrationId, 'migrationId') }, (prog) => link.send('cold.progress', prog));
    },
    'vm.coldAbort': async (p) => {
      const q = obj(p, 'params');
      return cold.abort({ vmId: str(q.vmId, 'vmId'), migrationId: str(q.migrationId, 'migrationId') });
    },
    'vm.coldImport': async (p) => {
      const exp = obj(obj(p, 'params').export, 'export') as unknown as ColdExport;
      return cold.import(exp, (prog) => link.send('cold.progress', prog));
    },
    'vm.coldVerify': async (p) => {
      const q = obj(p, 'params');
      const vmId = str(q.vmId, 'vmId');
      const t = q.timeoutMs;
      if (!(typeof t === 'number' && t > 0)) throw hostError('VMTC_HOST_BAD_PARAMS', { field: 'timeoutMs' });
      if (q.tcp === undefined) return cold.verify({ vmId, timeoutMs: t });
      const tcp = obj(q.tcp, 'tcp');
      const port = tcp.port;
      if (!(Number.isInteger(port) && (port as number) > 0 && (port as number) <= 65535)) throw hostError('VMTC_HOST_BAD_PARAMS', { field: 'tcp.port' });
      // Each attempt that did not connect goes to the controller (the migration's progress).
      const migrationId = q.migrationId === undefined ? undefined : str(q.migrationId, 'migrationId');
      const onAttempt = migrationId ? (a: VerifyAttempt) => link.send('cold.verify', { migrationId, vmId, ...a }) : undefined;
      return cold.verify({ vmId, timeoutMs: t, tcp: { host: str(tcp.host, 'tcp.host'), port: port as number } }, onAttempt);
    },
    // Replicas (agents/host/replicas.ts; docs/disks.md#replicas).
    ...replicaHandlers(driver.replicas, log, driver.activateDisks ? (vmId) => driver.activateDisks!(vmId) : undefined),
  };

  const link = await AgentLink.open({
    kind: 'host',
    dataDir: opts.dataDir,
    logger: log,
    agentVersion,
    controllerUrl: opts.controllerUrl,
    ...(opts.enrollToken ? { enrollToken: opts.enrollToken } : {}),
    ...(opts.caFingerprint ? { caFingerprint: opts.caFingerprint } : {}),
    ...(opts.backoff ? { backoff: opts.backoff } : {}),
    clock,
    handlers: handlers as unknown as Record<string, Handler>,
  });
  hostId = link.hostId;
  try {
    cold = new ColdTransfer({
      dataDir: opts.dataDir, hostId, driver, logger: log, clock,
      ...(opts.exportListen ? { exportListen: opts.exportListen } : {}),
      ...(opts.migrationAddress ? { exportHost: opts.migrationAddress } : {}),
      ...(opts.netns ? { relay: { netns: opts.netns, ...(opts.migrationAddress ? { host: opts.migrationAddress } : {}) } } : {}),
      ...(opts.cold ?? {}),
    });
  } catch (e) {
    await link.close();
    throw e;
  }

  // Inventory: sent on every (re)connect, and after driver changes, coalesced so a burst of state
  // changes (a migration ending touches two VMs) becomes one message; never two sends in flight.
  let timer: { cancel(): void } | undefined;
  let sending = false;
  let again = false;
  const sendInventory = async () => {
    if (sending) {
      again = true;
      return;
    }
    sending = true;
    try {
      do {
        again = false;
        if (!link.connected || closed) break;
        link.send('inventory', await inventory(), { queue: false });
      } while (again);
    } catch (e) {
      log.warn({ err: e }, 'inventory failed');
    } finally {
      sending = false;
    }
  };
  const schedule = () => {
    if (closed || timer) return;
    timer = clock.setTimeout(() => {
      timer = undefined;
      void sendInventory();
    }, opts.inventoryCoalesceMs ?? 50);
  };
  driver.onChange(schedule);
  // A migration an earlier process started ends when the hypervisor's VM changes state.
  driver.onChange(() => { if (!closed) settleAllInherited(); });
  link.on('connected', () => void sendInventory());
  settleAllInherited();
  // Monitoring (agents/host/stats.ts): reports are dropped, not queued, while the link is down.
  const stats = new StatsReporter({
    driver, clock, logger: log,
    ...(opts.statsIntervalMs !== undefined ? { intervalMs: opts.statsIntervalMs } : {}),
    ...(opts.dirtyRateEvery !== undefined ? { dirtyRateEvery: opts.dirtyRateEvery } : {}),
    send: (r) => { if (link.connected && !closed) link.send('stats', r, { queue: false }); },
  });
  stats.start();
  log.info({ hostId, driver: driver.type }, 'host agent started');

  return {
    hostId,
    link,
    async close() {
      if (closed) return;
      closed = true;
      timer?.cancel();
      stats.stop();
      await cold.close();
      await link.close();
      await journal.close();
      log.info({ hostId }, 'host agent stopped');
    },
  };
}
