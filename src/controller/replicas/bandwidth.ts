// Background bandwidth for replica transfers (docs/disks.md#replicas, docs/broker.md "Classes"):
// every seed and periodic delta runs under a `background` reservation in the broker, made with a
// capability token of its own (the AAA grants it with class background, so it cannot book a
// migration's bandwidth). The source agent copies at the granted rate (replica.send's
// rateBytesPerS); while the step runs the grant is read again every followMs and a change is
// passed on (replica.limit): a migration admitted over the same links squeezes the seed, down to
// SUSPENDED_RATE when the grant is 0. The reservation is terminated when the step ends in any way.
//
// Durable: the reservation's idempotency key is written (replica_reservations) before the broker
// is asked and deleted once it is terminated, so a controller killed mid-step terminates, at its
// next start (cleanup), what it left; the holder's proof alone does it (no token: tokens are
// memory-only secrets).
//
// No reservation, no step: when the AAA or the broker refuses, or cannot be reached, the step
// waits (the service retries it later) rather than copying at a rate nobody granted; a seed is
// never urgent, a migration on the same links is.
import type { Clock, Ids } from '../../common/clock.ts';
import type { Db } from '../../common/db.ts';
import { VmtcError, toVmtcError, type ErrorBody } from '../../common/errors.ts';
import type { Logger } from '../../common/log.ts';
import { BrokerClient } from '../../broker/client.ts';
import type { RequesterKey } from '../../common/dpop.ts';
import type { AuthorizationPort, HubPort, LightpathRequest } from '../ports.ts';
import type { ReplicaRow } from './machine.ts';

/** The copy rate of a suspended reservation (grant 0), bytes/s: the copy all but stops, and goes
 *  on from where it was once the grant comes back (0 would mean "no limit" to the agent). */
export const SUSPENDED_RATE = 1024;

export interface ReplicaBandwidthOptions { mbps: number; minMbps: number; windowS: number; followMs: number }

export const REPLICA_BANDWIDTH_DEFAULTS: Readonly<ReplicaBandwidthOptions> = {
  /** What a transfer asks for, Mbit/s: the most it is granted. */
  mbps: 100,
  /** Below this the broker grants 0 (suspended). */
  minMbps: 1,
  /** How long a reservation lasts, s (the longest a transfer may take: REPLICA_DEFAULTS.transferTimeoutMs). */
  windowS: 3_600,
  /** How often the grant is read again while a transfer runs. */
  followMs: 2_000,
};

/** What the replica service needs of the AAA and the broker. */
export interface ReplicaBandwidthPort {
  /** A committed background reservation under `key`; throws coded (nothing held) when refused. */
  reserve(req: LightpathRequest, key: string, minMbps: number): Promise<{ reservationId: string; grantedMbps: number }>;
  /** The reservation under `key` as it is now; undefined when there is none. */
  grant(key: string): Promise<{ reservationId: string; grantedMbps: number; live: boolean } | undefined>;
  /** Terminate the reservation under `key` (none, or already ended: fine). Throws when the broker cannot be asked. */
  release(key: string): Promise<void>;
}

/** The port over a real AAA and broker, with the controller's requester key. */
export class BrokerReplicaBandwidth implements ReplicaBandwidthPort {
  private readonly client: BrokerClient;
  /** Grants by key, to close their accounting at release (memory only, as tokens). */
  private readonly jtis = new Map<string, string>();

  constructor(brokerUrl: string, private readonly key: RequesterKey, private readonly aaa: AuthorizationPort, private readonly log: Logger, opts: { ca?: string } = {}) {
    this.client = new BrokerClient(brokerUrl, opts.ca ? { ca: opts.ca } : {});
  }

  async reserve(req: LightpathRequest, key: string, minMbps: number) {
    const t = await this.aaa.authorize({ ...req, class: 'background' });
    this.jtis.set(key, t.jti);
    const body = { src: req.src, dst: req.dst, bandwidthMbps: req.bandwidthMbps, window: req.window, migrationId: req.migrationId, class: 'background' as const, minMbps, idempotencyKey: key };
    const r = await this.client.reserve(body, t.token, this.key);
    if (!r.committed) await this.client.commit(r.id, t.token, this.key);
    return { reservationId: r.id, grantedMbps: r.grantedMbps ?? 0 };
  }

  async grant(key: string) {
    const v = await this.client.findByKey(key, this.key);
    return v ? { reservationId: v.id, grantedMbps: v.grantedMbps ?? 0, live: v.lifecycleState === 'Created' } : undefined;
  }

  async release(key: string): Promise<void> {
    const v = await this.client.findByKey(key, this.key);
    if (v && v.lifecycleState !== 'Terminated') {
      try {
        await this.client.terminate(v.id, undefined, this.key);
      } catch (e) {
        if (!(e instanceof VmtcError && (e.code === 'VMTC_ILLEGAL_TRANSITION' || e.code === 'VMTC_RESERVATION_NOT_FOUND'))) throw e;
      }
    }
    const jti = this.jtis.get(key);
    this.jtis.delete(key);
    if (jti && this.aaa.release) await this.aaa.release(jti, { replicaReservation: key, reservationId: v?.id }).catch((e: unknown) => this.log.warn({ key, code: toVmtcError(e).code }, 'closing the accounting of a replica grant failed'));
  }
}

/** What a replica's reservation is now, for its view. */
export interface ReplicaBandwidthStatus {
  state: 'reserved' | 'waiting';
  reservationId?: string;
  grantedMbps?: number;
  error?: ErrorBody;
}

export interface ReplicaBandwidthDeps {
  port: ReplicaBandwidthPort;
  db: Db;
  hub: HubPort;
  clock: Clock;
  ids: Ids;
  logger: Logger;
  options?: Partial<ReplicaBandwidthOptions>;
}

const mbpsToRate = (mbps: number) => (mbps > 0 ? Math.max(SUSPENDED_RATE, Math.floor((mbps * 1e6) / 8)) : SUSPENDED_RATE);

export class ReplicaBandwidth {
  private readonly o: ReplicaBandwidthOptions;
  private readonly status = new Map<string, ReplicaBandwidthStatus>();
  /** Keys of the steps running now: cleanup() leaves them alone. */
  private readonly inFlight = new Set<string>();

  constructor(private readonly d: ReplicaBandwidthDeps) {
    this.o = { ...REPLICA_BANDWIDTH_DEFAULTS, ...(d.options ?? {}) };
    d.db.exec('CREATE TABLE IF NOT EXISTS replica_reservations (idem_key TEXT PRIMARY KEY, replica_id TEXT NOT NULL, created_at INTEGER NOT NULL)');
  }

  /** The replica's reservation as last known (undefined: no step has asked yet, or it ended). */
  of(replicaId: string): ReplicaBandwidthStatus | undefined {
    return this.status.get(replicaId);
  }

  /** Keys whose reservation may still be held (written before asking, deleted once terminated). */
  pending(): { key: string; replicaId: string }[] {
    return (this.d.db.prepare('SELECT idem_key, replica_id FROM replica_reservations ORDER BY created_at').all() as { idem_key: string; replica_id: string }[]).map((r) => ({ key: r.idem_key, replicaId: r.replica_id }));
  }

  /** Terminate every reservation a step left (a controller killed mid-step); what the broker
   *  cannot be asked about now stays recorded for the next call. */
  async cleanup(): Promise<void> {
    for (const p of this.pending()) if (!this.inFlight.has(p.key)) await this.releaseKey(p.key, p.replicaId);
  }

  /**
   * Run `step` (a seed or a delta of `r`) under a background reservation, with the agent's copy
   * rate set to the grant and following it; the reservation is terminated when the step ends,
   * however it ends. `{ ran: false }` when no reservation could be had (nothing ran).
   */
  async around<T>(r: ReplicaRow, step: (rateBytesPerS: number) => Promise<T>): Promise<{ ran: true; value: T } | { ran: false; error: ErrorBody }> {
    await this.cleanup();
    const src = this.d.hub.inventory(r.sourceHostId);
    const project = src?.vms.find((v) => v.vmId === r.vmId)?.project ?? 'default';
    const nowS = Math.floor(this.d.clock.now() / 1000);
    const key = `${r.id}.${this.d.ids.next('bw')}`;
    const req: LightpathRequest = {
      migrationId: key, vmId: r.vmId, project, src: src?.site ?? r.sourceHostId, dst: this.d.hub.inventory(r.destinationHostId)?.site ?? r.destinationHostId,
      bandwidthMbps: this.o.mbps, window: { start: nowS, end: nowS + this.o.windowS }, class: 'background',
    };
    this.d.db.prepare('INSERT INTO replica_reservations (idem_key, replica_id, created_at) VALUES (?, ?, ?)').run(key, r.id, this.d.clock.now());
    this.inFlight.add(key);
    try {
      return await this.reserved(r, key, req, step);
    } finally {
      this.inFlight.delete(key);
    }
  }

  private async reserved<T>(r: ReplicaRow, key: string, req: LightpathRequest, step: (rateBytesPerS: number) => Promise<T>): Promise<{ ran: true; value: T } | { ran: false; error: ErrorBody }> {
    let held: { reservationId: string; grantedMbps: number };
    try {
      held = await this.d.port.reserve(req, key, this.o.minMbps);
    } catch (e) {
      const error = toVmtcError(e).toJSON();
      this.d.logger.warn({ replicaId: r.id, code: error.code }, 'no background reservation for the replica transfer: it waits');
      this.status.set(r.id, { state: 'waiting', error });
      await this.releaseKey(key, r.id);
      return { ran: false, error };
    }
    this.status.set(r.id, { state: 'reserved', reservationId: held.reservationId, grantedMbps: held.grantedMbps });
    this.d.logger.info({ replicaId: r.id, reservationId: held.reservationId, grantedMbps: held.grantedMbps }, 'background reservation held for the replica transfer');
    let rate = mbpsToRate(held.grantedMbps);
    let stopped = false;
    let timer: { cancel(): void } | undefined;
    const follow = (): void => {
      timer = this.d.clock.setTimeout(() => {
        void (async () => {
          try {
            const g = await this.d.port.grant(key);
            if (stopped || !g) return;
            const next = mbpsToRate(g.grantedMbps);
            this.status.set(r.id, { state: 'reserved', reservationId: g.reservationId, grantedMbps: g.grantedMbps });
            if (next !== rate) {
              rate = next;
              this.d.logger.info({ replicaId: r.id, reservationId: g.reservationId, grantedMbps: g.grantedMbps }, 'background grant changed: copy rate follows');
              await this.d.hub.request(r.sourceHostId, 'replica.limit', { replicaId: r.id, rateBytesPerS: rate });
            }
          } catch (e) {
            this.d.logger.warn({ replicaId: r.id, code: toVmtcError(e).code }, 'reading the background grant failed: the copy rate stays');
          } finally {
            if (!stopped) follow();
          }
        })();
      }, this.o.followMs);
    };
    follow();
    try {
      return { ran: true, value: await step(rate) };
    } finally {
      stopped = true;
      timer?.cancel();
      // The rate is the host's, for every transfer: a migration's own delta must not inherit it.
      if (this.d.hub.isConnected(r.sourceHostId)) await this.d.hub.request(r.sourceHostId, 'replica.limit', { replicaId: r.id, rateBytesPerS: 0 }).catch(() => undefined);
      await this.releaseKey(key, r.id);
    }
  }

  private async releaseKey(key: string, replicaId: string): Promise<void> {
    try {
      await this.d.port.release(key);
      this.d.db.prepare('DELETE FROM replica_reservations WHERE idem_key = ?').run(key);
      const s = this.status.get(replicaId);
      if (s?.state === 'reserved') this.status.delete(replicaId);
    } catch (e) {
      this.d.logger.warn({ replicaId, key, code: toVmtcError(e).code }, 'could not terminate a replica reservation: retried later');
    }
  }
}
