// The controller's server-sent event streams (README "API (controller)"):
//  - GET /v1/migrations/:id/events follows one migration: `snapshot` (the record) at once, then
//    `transition` on every state change, `progress` as the copy goes, an operator's `forced` and
//    `tuned`, and `end` with the final record, after which the stream closes;
//  - GET /v1/events follows the fleet, for dashboards and orchestrators: `transition` of every
//    migration (filtered by the list's query), `progress` (at most one a second a migration) and
//    `host` (an agent's link came up or went down);
//  - both also send `probe`: the tunnel agent's probe stream of a migration in flight
//    (probe-stream.ts), what the dashboard's radar draws; on a new stream, first what was kept.
// Every event has an id. Transitions and agents' connections are rows of the store, numbered by
// their own logs (transitions.seq, host_events.seq), and an id is the position in those logs of
// what was sent so far: a client that reconnects with `Last-Event-ID` (or `?lastEventId=`) is
// sent every row after it from the store, then the live ones, so nothing is lost or repeated.
// Progress and an operator's changes are not kept; their ids name the position they came after,
// so resuming from one of them loses nothing else. A comment every 15 s keeps proxies from
// dropping a quiet stream; a client that stops reading is disconnected (it resumes by its id).
import { EventEmitter } from 'node:events';
import type { FastifyInstance, FastifyReply, FastifyRequest, onRequestHookHandler } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { ServerResponse } from 'node:http';
import { errorResponses, EventStream } from '../common/schemas.ts';
import type { Clock } from '../common/clock.ts';
import { err } from './errors.ts';
import { TERMINAL } from './machine.ts';
import { migrationFilter, type ControllerStore, type FleetTransitionRow, type HostEventRow, type MigrationRow } from './store.ts';
import type { MigrationRunner } from './runner.ts';
import type { HubPort } from './ports.ts';
import { CONTROL_EVENT, controlEventData } from './migration-control-routes.ts';
import { ProbeTails, type ProbeEvent } from './probe-stream.ts';
import type { TunnelProbeBatch } from '../common/tunnel-protocol.ts';
import { FleetEventsQuery, IdParams, MigrationEventsQuery, type Migration as MigrationT } from './schemas.ts';

export interface EventRouteDeps {
  store: ControllerStore;
  hub: HubPort;
  runner: MigrationRunner;
  clock: Clock;
  /** The record as GET /v1/migrations/:id presents it. */
  present(row: MigrationRow): MigrationT;
  /** The role check (reader). */
  onRequest: onRequestHookHandler;
  security: { bearer: never[] }[];
}

/** Tunables, fixed here: the keep-alive period, what a stream may buffer for a client that does
 *  not read before it is disconnected, how many rows one pass sends, and the fleet's progress rate. */
export const EVENT_STREAM_LIMITS = {
  keepAliveMs: 15_000,
  maxBufferedBytes: 4 * 1024 * 1024,
  rowsPerQuery: 200,
  queriesPerPass: 50,
  fleetProgressEveryMs: 1000,
} as const;

/** A migration stream's id: the seq of the last transition sent, then what came after it
 *  (`.pN` progress, `.cN` an operator's change, `.end`). A fleet id (below) reads as one too. */
const MIGRATION_ID = /^(\d{1,15})(\.[0-9a-z]{1,16}){0,2}$/;
/** A fleet stream's id: the seq of the last transition and of the last host event sent, then `.pN` for progress. */
const FLEET_ID = /^(\d{1,15})\.(\d{1,15})(\.p\d{1,15})?$/;

/** Where to resume: the Last-Event-ID header, else ?lastEventId=, else undefined. */
function lastEventIdOf(request: FastifyRequest): string | undefined {
  const h = request.headers['last-event-id'];
  if (typeof h === 'string' && h !== '') return h;
  return (request.query as { lastEventId?: string } | undefined)?.lastEventId;
}

function badId(id: string, expected: string): never {
  throw err('VMTC_EVENT_ID_INVALID', { lastEventId: id.slice(0, 64), expected });
}

interface Sse {
  /** Write one event; false once the stream has ended. */
  send(event: string, id: string, data: unknown): boolean;
  /** An id with no event: where to resume when nothing was sent yet (EventSource keeps it). */
  mark(id: string): void;
  readonly ended: boolean;
  end(): void;
  /** Called once the client has read what was buffered (write() said to wait). */
  onDrain(fn: () => void): void;
}

/**
 * Take the reply over as an event stream: headers, keep-alive comments, an end that every path
 * (client gone, server closing, terminal migration) shares, and a client that stops reading is
 * disconnected instead of buffered without bound.
 */
function openSse(request: FastifyRequest, reply: FastifyReply, clock: Clock, streams: Set<() => void>, onEnd: () => void): Sse {
  reply.hijack();
  const res: ServerResponse = reply.raw;
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive', 'x-accel-buffering': 'no' });
  let ended = false;
  let keepAlive: { cancel(): void } | undefined;
  const tick = () => {
    keepAlive = clock.setTimeout(() => {
      if (ended) return;
      write(': keep-alive\n\n');
      tick();
    }, EVENT_STREAM_LIMITS.keepAliveMs);
  };
  const write = (text: string) => {
    if (ended) return false;
    res.write(text);
    if (res.writableLength > EVENT_STREAM_LIMITS.maxBufferedBytes) {
      end();
      return false;
    }
    return true;
  };
  const end = () => {
    if (ended) return;
    ended = true;
    keepAlive?.cancel();
    streams.delete(end);
    onEnd();
    if (!res.writableEnded) res.end();
  };
  streams.add(end);
  request.raw.on('close', end);
  res.on('close', end);
  tick();
  return {
    send: (event, id, data) => write(`event: ${event}\nid: ${id}\ndata: ${JSON.stringify(data)}\n\n`),
    mark: (id) => { write(`id: ${id}\n\n`); },
    get ended() { return ended; },
    end,
    onDrain: (fn) => { res.once('drain', fn); },
  };
}

export function registerEventRoutes(fastify: FastifyInstance, d: EventRouteDeps): void {
  const app = fastify.withTypeProvider<TypeBoxTypeProvider>();
  const { store, runner, clock } = d;
  const streams = new Set<() => void>();
  // Each open stream listens to the runner: as many listeners as there are clients.
  runner.setMaxListeners(0);
  app.addHook('preClose', (done) => {
    for (const end of [...streams]) end();
    done();
  });

  // Agents' links as a log, so the fleet stream can send what a client missed.
  const fleet = new EventEmitter();
  fleet.setMaxListeners(0);
  const hostLink = (connected: boolean) => (hostId: string, kind?: string) => {
    store.addHostEvent(hostId, kind ?? 'host', connected, clock.now());
    fleet.emit('host');
  };
  d.hub.on('connected', hostLink(true));
  d.hub.on('disconnected', hostLink(false));
  // The tunnel agents' probe streams (the hub checked each batch against its schema).
  const probes = new ProbeTails(store);
  d.hub.on('event', (hostId: string, name: string, data: unknown) => {
    if (name === 'tunnel.probe') probes.add(hostId, data as TunnelProbeBatch);
  });

  app.get('/v1/migrations/:id/events', {
    onRequest: d.onRequest,
    schema: {
      operationId: 'followMigration', tags: ['migrations'], security: d.security,
      summary: 'Follow one migration as server-sent events: snapshot, transition, progress, end. Every event has an id; reconnecting with Last-Event-ID resumes after it (no snapshot then).',
      params: IdParams,
      querystring: MigrationEventsQuery,
      response: {
        200: EventStream('events `snapshot` and `end` (data: the migration record), `transition` (data: one transition and migrationId), `progress` (data: the copy progress), `forced` and `tuned` (data: an operator\'s change, as in the record\'s changes, and migrationId), `probe` (data: { migrationId, vmId, agent, periodMs, samples: [seq, sentAt, rttMs|null][], final? }: the tunnel agent\'s probe stream, not resumed); each with an id'),
        ...errorResponses({}, 401, 403, 404),
      },
    },
  }, async (request, reply) => {
    const id = request.params.id;
    const row = store.migration(id);
    if (!row) throw err('VMTC_MIGRATION_NOT_FOUND', { migrationId: id });
    const resume = lastEventIdOf(request);
    let last: number;
    if (resume !== undefined) {
      const m = MIGRATION_ID.exec(resume);
      if (!m) badId(resume, 'an id this stream sent, e.g. 42 or 42.p3');
      last = Number(m[1]);
    } else {
      last = store.transitions(id).at(-1)?.seq ?? 0;
    }
    let after = 0;
    const onChange = (mid: string) => { if (mid === id) pump(); };
    const onProgress = (mid: string, p: unknown) => { if (mid === id) sse.send('progress', `${last}.p${++after}`, p); };
    // An operator's change (migration-control-routes.ts): `forced`, `tuned`.
    const onControl = (mid: string, event: string, change: Parameters<typeof controlEventData>[1]) => {
      if (mid === id) sse.send(event, `${last}.c${++after}`, controlEventData(id, change));
    };
    const onProbe = (p: ProbeEvent) => { if (p.migrationId === id) sse.send('probe', `${last}.q${++after}`, p); };
    const sse = openSse(request, reply, clock, streams, () => {
      runner.off('change', onChange);
      runner.off('progress', onProgress);
      runner.off(CONTROL_EVENT, onControl);
      probes.off('probe', onProbe);
    });
    const pump = () => {
      for (const t of store.transitions(id)) {
        if (t.seq <= last) continue;
        last = t.seq;
        after = 0;
        if (!sse.send('transition', String(t.seq), { ...t, at: new Date(t.at).toISOString(), migrationId: id })) return;
      }
      const cur = store.migration(id);
      if (cur && TERMINAL.has(cur.state)) {
        sse.send('end', `${last}.end`, d.present(cur));
        sse.end();
      }
    };
    runner.on('change', onChange);
    runner.on('progress', onProgress);
    runner.on(CONTROL_EVENT, onControl);
    probes.on('probe', onProbe);
    if (resume === undefined) {
      sse.send('snapshot', String(last), d.present(row));
      const kept = probes.tail(id);
      if (kept) sse.send('probe', `${last}.q${++after}`, kept);
    }
    pump();
  });

  app.get('/v1/events', {
    onRequest: d.onRequest,
    schema: {
      operationId: 'followFleet', tags: ['events'], security: d.security,
      summary: 'Follow every migration and agent as server-sent events: transition, progress, host. Filtered as the list is; every event has an id, and reconnecting with Last-Event-ID resumes after it; without one the stream starts now, or at since.',
      querystring: FleetEventsQuery,
      response: {
        200: EventStream('events `transition` (data: one transition with migrationId, vmId, sourceHostId, destinationHostId), `progress` (data: the copy progress with migrationId and vmId; at most one a second a migration, not resumed), `host` (data: { hostId, kind, connected, at }: an agent connected or disconnected; not with state or vmId filters), `probe` (data: the tunnel agent\'s probe stream of a migration, as on a migration\'s stream; not resumed); each with an id'),
        ...errorResponses({}, 401, 403),
      },
    },
  }, async (request, reply) => {
    const q = request.query;
    const filter = migrationFilter(q);
    // Host events belong to no migration: a filter by state or VM leaves them out.
    const hostsToo = q.state === undefined && q.vmId === undefined;
    const hostFilter = { ...(filter.hostId !== undefined ? { hostId: filter.hostId } : {}), ...(filter.since !== undefined ? { since: filter.since } : {}), ...(filter.until !== undefined ? { until: filter.until } : {}) };
    const resume = lastEventIdOf(request);
    let cur: { t: number; h: number };
    if (resume !== undefined) {
      const m = FLEET_ID.exec(resume);
      if (!m) badId(resume, 'an id this stream sent, e.g. 42.7');
      cur = { t: Number(m[1]), h: Number(m[2]) };
    } else {
      const s = store.eventSeqs(filter.since);
      cur = { t: s.transitions, h: s.hosts };
    }
    const idNow = () => `${cur.t}.${cur.h}`;
    let progressN = 0;
    const lastProgress = new Map<string, number>();
    const onProgress = (mid: string, p: unknown) => {
      const now = clock.now();
      if (now - (lastProgress.get(mid) ?? -Infinity) < EVENT_STREAM_LIMITS.fleetProgressEveryMs) return;
      const row = store.migration(mid);
      if (!row || !matches(row, filter, now)) return;
      if (lastProgress.size >= 10_000) lastProgress.clear();
      lastProgress.set(mid, now);
      sse.send('progress', `${idNow()}.p${++progressN}`, { ...(p as object), migrationId: mid, vmId: row.vmId });
    };
    const onProbe = (p: ProbeEvent) => {
      const row = store.migration(p.migrationId);
      if (row && matches(row, filter, clock.now())) sse.send('probe', `${idNow()}.p${++progressN}`, p);
    };
    let waiting = false;
    const pump = () => {
      if (waiting || sse.ended) return;
      for (let i = 0; i < EVENT_STREAM_LIMITS.queriesPerPass; i++) {
        const ts: FleetTransitionRow[] = store.transitionsAfter(cur.t, filter, EVENT_STREAM_LIMITS.rowsPerQuery);
        const hs: HostEventRow[] = hostsToo ? store.hostEventsAfter(cur.h, hostFilter, EVENT_STREAM_LIMITS.rowsPerQuery) : [];
        if (ts.length === 0 && hs.length === 0) break;
        const rows = [...ts.map((r) => ({ t: r })), ...hs.map((r) => ({ h: r }))]
          .sort((a, b) => ('t' in a ? a.t.at : a.h.at) - ('t' in b ? b.t.at : b.h.at));
        for (const r of rows) {
          let ok: boolean;
          if ('t' in r) {
            cur.t = r.t.seq;
            ok = sse.send('transition', idNow(), { ...r.t, at: new Date(r.t.at).toISOString() });
          } else {
            cur.h = r.h.seq;
            ok = sse.send('host', idNow(), { hostId: r.h.hostId, kind: r.h.kind, connected: r.h.connected, at: new Date(r.h.at).toISOString() });
          }
          if (!ok) return;
        }
        // The client reads slower than the store is sent: go on once it has caught up.
        if (reply.raw.writableNeedDrain) {
          waiting = true;
          sse.onDrain(() => { waiting = false; pump(); });
          return;
        }
      }
      if (filter.until !== undefined && clock.now() >= filter.until) sse.end();
    };
    const sse = openSse(request, reply, clock, streams, () => {
      runner.off('change', pump);
      runner.off('progress', onProgress);
      fleet.off('host', pump);
      probes.off('probe', onProbe);
    });
    runner.on('change', pump);
    runner.on('progress', onProgress);
    fleet.on('host', pump);
    probes.on('probe', onProbe);
    sse.mark(idNow());
    // What was kept of the probe streams of migrations in flight, so a radar opened now is whole.
    if (resume === undefined) {
      for (const row of store.activeMigrations(TERMINAL)) {
        const kept = probes.tail(row.id);
        if (kept && matches(row, filter, clock.now())) sse.send('probe', `${idNow()}.p${++progressN}`, kept);
      }
    }
    pump();
  });
}

/** Whether a migration's progress belongs on a filtered fleet stream. */
function matches(row: MigrationRow, f: ReturnType<typeof migrationFilter>, now: number): boolean {
  if (f.states && !f.states.includes(row.state)) return false;
  if (f.vmId !== undefined && row.vmId !== f.vmId) return false;
  if (f.hostId !== undefined && row.sourceHostId !== f.hostId && row.destinationHostId !== f.hostId) return false;
  if (f.since !== undefined && now < f.since) return false;
  if (f.until !== undefined && now >= f.until) return false;
  return true;
}
