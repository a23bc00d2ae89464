// The controller's monitoring (docs/monitoring.md): it stores the host agents' 'stats' events
// (checked by the hub against src/common/agent-schemas.ts), answers a VM's profile and a host's
// history, builds the hotspot and consolidation plans from them (pure: hotspots.ts,
// consolidation.ts), runs a plan by submitting each move as an ordinary migration request, and
// with autoMitigate runs a hotspot's plan as soon as the hotspot is detected.
import { createHash } from 'node:crypto';
import type { StatsReport } from '../../common/agent-protocol.ts';
import type { Clock } from '../../common/clock.ts';
import type { ErrorBody } from '../../common/errors.ts';
import type { Logger } from '../../common/log.ts';
import { TERMINAL } from '../machine.ts';
import type { HubPort } from '../ports.ts';
import type { ControllerStore } from '../store.ts';
import { planConsolidation, type ConsolidationPlan } from './consolidation.ts';
import { detectHotspots, planHotspots, type HostObservation, type Hotspot, type HotspotPlan } from './hotspots.ts';
import { capacityOf, sharesOf, type Fleet, type PlannedMove, type Use, type VmLoad } from './model.ts';
import { monitoringOptions, type MonitoringOptions } from './options.ts';
import { profileOf, type VmProfile } from './profile.ts';
import { MonitoringStore, type HostStatsRow } from './store.ts';

export { MONITORING_DEFAULTS, type MonitoringOptions } from './options.ts';

export type PlanKind = 'hotspots' | 'consolidation';

/** How one planned move went when the plan ran: the migration admission started, or its refusal. */
export interface MoveResult {
  vmId: string;
  from: string;
  to: string;
  status: 'started' | 'refused';
  migrationId?: string;
  error?: ErrorBody;
}

/** The credential a plan's moves are submitted with: the caller's headers that carry it
 *  (authorization, or the dashboard's session cookie). */
export type Credential = Record<string, string>;

/** Submits one move through the controller's own admission (POST /v1/migrations), with the
 *  caller's credential (plan-routes.ts). */
export type SubmitMove = (move: PlannedMove, requestId: string, credential: Credential) => Promise<MoveResult>;

/** One automatic mitigation (autoMitigate), kept in memory for GET /v1/plans/hotspots. */
export interface AutoRun {
  hostId: string;
  /** When the k-th observation over a threshold was taken (the agent's clock). */
  detectedAt: number;
  /** When the controller received it and ran the plan. */
  ranAt: number;
  /** When the first migration of the plan was admitted (its record's createdAt). */
  firstMigrationAt?: number;
  moves: MoveResult[];
  unresolved: HotspotPlan['unresolved'];
}

const MAX_AUTO_RUNS = 50;

export interface MonitoringDeps {
  store: ControllerStore;
  hub: HubPort;
  clock: Clock;
  logger: Logger;
  options?: Partial<MonitoringOptions>;
}

export class Monitoring {
  readonly options: MonitoringOptions;
  readonly history: MonitoringStore;
  readonly autoRuns: AutoRun[] = [];
  private readonly lastAuto = new Map<string, number>();
  private submitMove?: SubmitMove;
  private autoCredential?: Credential;
  private closed = false;

  constructor(private readonly d: MonitoringDeps) {
    this.options = monitoringOptions(d.options);
    this.history = new MonitoringStore(d.store.db, { maxAgeMs: this.options.retentionMs, maxSamples: this.options.retentionSamples });
  }

  /** How plans are run (set once the REST API exists); `autoCredential` is the credential
   *  automatic runs submit with. */
  setSubmitter(submit: SubmitMove, autoCredential: Credential): void {
    this.submitMove = submit;
    this.autoCredential = autoCredential;
  }

  /** A 'stats' event of a host agent (already checked against its schema by the hub). */
  ingest(hostId: string, report: StatsReport): void {
    if (this.closed || !this.d.store.host(hostId)) return;
    const now = this.d.clock.now();
    this.history.add(hostId, report, now);
    if (this.options.autoMitigate) void this.autoMitigate(hostId, now).catch((e: unknown) => this.d.logger.warn({ hostId, err: String(e) }, 'automatic hotspot mitigation failed'));
  }

  close(): void {
    this.closed = true;
  }

  // ---- reads -------------------------------------------------------------------------------

  hostStats(hostId: string, limit: number): HostStatsRow[] {
    return this.history.hostSamples(hostId, limit);
  }

  profile(vmId: string, limit = this.options.retentionSamples): VmProfile {
    return profileOf(vmId, this.history.vmSamples(vmId, limit));
  }

  /** A host's shares at one sample. */
  private sharesOfRow(row: HostStatsRow, cap: Use): HostObservation {
    return { at: row.at, shares: sharesOf({ cpu: row.cpu * cap.cpu, memory: row.memoryUsedMb, net: row.netRxMbps + row.netTxMbps }, cap) };
  }

  /** Each connected host's newest n observations. */
  observations(only?: string): Map<string, HostObservation[]> {
    const out = new Map<string, HostObservation[]>();
    for (const h of this.hosts()) {
      if (!h.connected || (only !== undefined && h.inventory.hostId !== only)) continue;
      const cap = capacityOf(h.inventory, this.options);
      const rows = this.history.hostSamples(h.inventory.hostId, this.options.sustain.n);
      if (rows.length) out.set(h.inventory.hostId, rows.map((r) => this.sharesOfRow(r, cap)));
    }
    return out;
  }

  private hosts() {
    return this.d.store.hosts().map((h) => ({ inventory: this.d.hub.inventory(h.inventory.hostId) ?? h.inventory, connected: this.d.hub.isConnected(h.inventory.hostId) }));
  }

  /** The fleet as the planners see it: use is the mean of the newest k observations (the
   *  sustained load the detector saw, not diluted by older ones in its window of n). */
  fleet(): Fleet {
    const hosts = this.hosts();
    const n = this.options.sustain.k;
    const mean = (xs: number[]) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : 0);
    const hostUse = new Map<string, Use>();
    const vmLoad = new Map<string, VmLoad>();
    for (const h of hosts) {
      const id = h.inventory.hostId;
      const rows = this.history.hostSamples(id, n);
      if (rows.length) {
        const cap = capacityOf(h.inventory, this.options);
        hostUse.set(id, { cpu: mean(rows.map((r) => r.cpu)) * cap.cpu, memory: mean(rows.map((r) => r.memoryUsedMb)), net: mean(rows.map((r) => r.netRxMbps + r.netTxMbps)) });
      }
      for (const vm of h.inventory.vms) {
        if (vm.state !== 'running') continue;
        const s = this.history.vmSamples(vm.vmId, n).filter((x) => x.hostId === id);
        if (!s.length) continue;
        vmLoad.set(vm.vmId, { vmId: vm.vmId, use: { cpu: mean(s.map((x) => x.cpu)) * vm.vcpus, memory: mean(s.map((x) => x.memoryUsedMb ?? x.memoryMb)), net: mean(s.map((x) => x.netMbps)) } });
      }
    }
    const inFlight = new Set(this.d.store.activeMigrations(TERMINAL).map((m) => m.vmId));
    return { hosts, holds: this.d.store.holds(), inFlight, hostUse, vmLoad };
  }

  hotspotPlan(only?: string): HotspotPlan & { generatedAt: number } {
    const now = this.d.clock.now();
    const hs = detectHotspots(this.observations(only), this.options);
    // The fleet is read only when there is something to relieve (autoMitigate asks on every report).
    if (hs.length === 0) return { generatedAt: now, hotspots: [], moves: [], unresolved: [] };
    return { generatedAt: now, ...planHotspots(this.fleet(), hs, this.options, now) };
  }

  consolidationPlan(): ConsolidationPlan & { generatedAt: number } {
    const now = this.d.clock.now();
    return { generatedAt: now, ...planConsolidation(this.fleet(), this.options, now) };
  }

  // ---- running plans ----------------------------------------------------------------------

  /** Submit every move of a plan, in order, through admission. A refused move does not stop
   *  the others (each is its own migration). */
  async runMoves(kind: PlanKind, moves: readonly PlannedMove[], key: string, credential: Credential): Promise<MoveResult[]> {
    if (!this.submitMove) throw new Error('monitoring: no submitter');
    const out: MoveResult[] = [];
    for (const m of moves) {
      // The same plan run twice (a retried POST) submits the same requests: admission answers
      // with the first migrations instead of starting new ones.
      const requestId = `plan-${createHash('sha256').update(`${kind}\n${key}\n${m.vmId}\n${m.from}\n${m.to}`).digest('hex').slice(0, 40)}`;
      out.push(await this.submitMove(m, requestId, credential));
    }
    return out;
  }

  private async autoMitigate(hostId: string, now: number): Promise<void> {
    const last = this.lastAuto.get(hostId);
    if (last !== undefined && now - last < this.options.autoCooldownMs) return;
    if (!this.submitMove || !this.autoCredential) return;
    const plan = this.hotspotPlan(hostId);
    const hs: Hotspot | undefined = plan.hotspots[0];
    // Nothing to do (the newest observations are below the thresholds again): no cooldown.
    if (!hs || (plan.moves.length === 0 && plan.unresolved.length === 0)) return;
    this.lastAuto.set(hostId, now);
    this.d.logger.info({ hostId, detectedAt: hs.detectedAt, resources: hs.resources, moves: plan.moves.length }, 'hotspot detected: running its plan');
    const moves = await this.runMoves('hotspots', plan.moves, `${hostId}\n${hs.detectedAt}`, this.autoCredential);
    const first = moves.find((m) => m.migrationId);
    const firstRow = first?.migrationId ? this.d.store.migration(first.migrationId) : undefined;
    this.autoRuns.push({ hostId, detectedAt: hs.detectedAt, ranAt: now, ...(firstRow ? { firstMigrationAt: firstRow.createdAt } : {}), moves, unresolved: plan.unresolved });
    if (this.autoRuns.length > MAX_AUTO_RUNS) this.autoRuns.shift();
  }
}
