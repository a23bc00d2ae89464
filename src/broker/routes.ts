// The broker's REST API (docs/broker.md "REST API"). Every route has a schema (schemas.ts) with
// unknown fields refused. Order: each route's onRequest hook authenticates (token, proof or peer
// identity; operator credential for reads) before the body is read, parsed or validated (README
// "API"); the handler then checks what the caller may do (scope, ownership, replay), and only
// then runs the runner, so a refused request changes nothing.
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { TLSSocket } from 'node:tls';
import type { Clock } from '../common/clock.ts';
import { errorResponses, EventStream } from '../common/schemas.ts';
import { expectedHtu } from '../common/public-url.ts';
import { brokerError } from './errors.ts';
import { peerFromCertificate, type CapToken, type RequestFacts, type TokenGate } from './gate.ts';
import type { VerifiedProof } from '../common/dpop.ts';
import type { OperatorCredential } from './operator.ts';
import type { PeerLinks } from './peer.ts';
import { view, type BrokerEvent, type BrokerService } from './service.ts';
import type { BrokerStore, Owner, Reservation } from './store.ts';
import type { IssuerConfig } from './trust.ts';
import { peerCheck, registerHealthRoutes, storeCheck } from '../common/health-routes.ts';
import {
  EmptyBody, EmptyQuery, HOLDER_OR_PEER, IdParams, KeyParams, OPERATOR, ReservationList, Reservation as ReservationSchema, ReservationWithHistory, ReserveBody,
  type Reservation as ReservationView,
} from './schemas.ts';
import { registerBrokerMetrics } from './metrics.ts';
import type { NetworkElementDriver } from './driver.ts';

export interface RouteDeps {
  domain: string;
  service: BrokerService;
  gate: TokenGate;
  peers: PeerLinks;
  clock: Clock;
  /** The operator bearer credential that reads reservations and events. */
  operator: OperatorCredential;
  /** Open SSE streams, closed by the broker's close(). */
  streams: Set<{ end(): void }>;
  /** The URL holders reach this broker at (BrokerOptions.publicUrl or its default), known once listening. */
  publicUrl: () => string;
  /** For GET /readyz: the store, and the issuers whose keys are fetched from a URL. */
  store: BrokerStore;
  issuers: IssuerConfig[];
  /** For /metrics: what the data plane carries, where the driver reports it. */
  driver: Pick<NetworkElementDriver, 'dataPlaneStats'>;
}

export function registerRoutes(fastify: FastifyInstance, d: RouteDeps): void {
  const app = fastify.withTypeProvider<TypeBoxTypeProvider>();
  const facts = (req: FastifyRequest): RequestFacts => {
    const sock = req.raw.socket as TLSSocket;
    const f: RequestFacts = {
      method: req.method,
      // The configured public URL, never the Host header, which the client chooses
      // (src/common/public-url.ts).
      htu: expectedHtu(d.publicUrl(), req.url),
    };
    if (typeof req.headers.authorization === 'string') f.authorization = req.headers.authorization;
    if (typeof req.headers.dpop === 'string') f.dpop = req.headers.dpop;
    if (sock.encrypted && typeof sock.getPeerCertificate === 'function') {
      const peer = peerFromCertificate(d.peers.configs, sock.authorized, sock.getPeerCertificate());
      if (peer) f.peerDomain = peer;
    }
    return f;
  };
  // view() builds exactly what ReservationSchema lists.
  const out = (r: Reservation) => view(r, d.domain) as ReservationView;
  registerBrokerMetrics(fastify, { service: d.service, store: d.store, driver: d.driver, clock: d.clock, onRequest: async (req) => requireOperator(req), security: OPERATOR });

  /**
   * What a route's onRequest hook established about the caller, for its handler: a proof is
   * checked once (a second check would find it replayed), and before the body is read.
   */
  interface Caller { f: RequestFacts; raw?: string; tok?: CapToken; proof?: VerifiedProof }
  const callers = new WeakMap<FastifyRequest, Caller>();
  const caller = (req: FastifyRequest): Caller => {
    const c = callers.get(req);
    if (!c) throw new Error(`route ${req.routeOptions.url} has no onRequest authentication`);
    return c;
  };

  app.post('/v1/reservations', {
    // The token, and the holder's proof bound to it; an upstream broker's mutual-TLS identity
    // stands in for the proof.
    onRequest: async (req) => {
      const f = facts(req);
      const raw = d.gate.extractToken(f.authorization);
      const tok = await d.gate.verifyToken(raw);
      callers.set(req, { f, raw, tok, ...(f.peerDomain ? {} : { proof: d.gate.verifyProof(f, raw, tok.jkt) }) });
    },
    schema: {
      operationId: 'reserve', tags: ['reservations'], security: HOLDER_OR_PEER,
      summary: 'reserve a lightpath (NSI reserve) with an AAA capability token; held until committed',
      body: ReserveBody,
      // 400: unknown endpoint, bad window or bandwidth; 409: no path, or an idempotency key used
      // for another request; 502: a peer domain failed. 200: the key's reservation, as it is now.
      response: { 201: ReservationSchema, 200: ReservationSchema, ...errorResponses({ body: true }, 401, 403, 409, 502) },
    },
  }, async (req, reply) => {
    const { f, raw, tok } = caller(req) as Caller & { raw: string; tok: CapToken };
    const b = req.body;
    // --- token gate (authenticated in onRequest): nothing below changes state until all of it has passed.
    const start = b.window.start ?? Math.floor(d.clock.now() / 1000);
    const cls = b.class ?? 'migration';
    const scopeReq = { src: b.src, dst: b.dst, bandwidthMbps: b.bandwidthMbps, start, end: b.window.end, class: cls, ...(b.migrationId ? { migrationId: b.migrationId } : {}) };
    if (f.peerDomain) {
      // An upstream broker: its mutual-TLS identity stands in for the holder's DPoP proof.
      if (!b.upstream || b.upstream.domain !== f.peerDomain) throw brokerError('VMTC_PEER_NOT_TRUSTED', { reason: 'upstream.domain must name the peer that presents the certificate', peer: f.peerDomain });
      d.gate.checkScope(tok, scopeReq, f.peerDomain);
    } else {
      if (b.upstream) throw brokerError('VMTC_PEER_NOT_TRUSTED', { reason: 'upstream is reserved to peer brokers with a trusted client certificate' });
      d.gate.checkScope(tok, scopeReq);
    }
    const owner: Owner = f.peerDomain ? { kind: 'peer', domain: f.peerDomain } : { kind: 'holder', jkt: tok.jkt };
    const migrationId = b.migrationId ?? tok.vmtc.migrationId;
    if (b.idempotencyKey !== undefined) {
      // A retry (the answer was lost, or the caller restarted): the reservation already made
      // under this key, whatever its state, and nothing new is created or consumed.
      const prior = d.service.byKey(owner, b.idempotencyKey);
      if (prior) {
        const same = prior.src === b.src && prior.dst === b.dst && prior.bandwidthMbps === b.bandwidthMbps && prior.end === b.window.end
          && (prior.class ?? 'migration') === cls && (cls !== 'background' || (prior.minMbps ?? 0) === (b.minMbps ?? 0))
          && (b.window.start === undefined || prior.start === b.window.start) && prior.migrationId === migrationId;
        if (!same) throw brokerError('VMTC_IDEMPOTENCY_KEY_REUSED', { idempotencyKey: b.idempotencyKey, reservationId: prior.id });
        return reply.status(200).send(out(prior));
      }
    }
    d.gate.checkNotReplayed(tok);
    // --- the runner.
    const r = await d.service.reserve(
      { src: b.src, dst: b.dst, bandwidthMbps: b.bandwidthMbps, start, end: b.window.end, migrationId, ...(b.class ? { class: b.class } : {}), ...(b.minMbps !== undefined ? { minMbps: b.minMbps } : {}), ...(b.idempotencyKey !== undefined ? { idempotencyKey: b.idempotencyKey } : {}) },
      {
        owner,
        token: raw, jti: tok.jti, iss: tok.iss, exp: tok.exp, domains: tok.vmtc.domains,
        ...(b.upstream ? { upstream: b.upstream } : {}),
      },
    );
    return reply.status(201).send(out(r));
  });

  /**
   * Follow-ups are bound to the reservation: the holder that created it proves possession of the
   * same key (fresh DPoP proof); the token, when sent, must be the one that created it (required
   * for provision). A reservation created by an upstream broker answers only to that broker.
   */
  const authenticateFollowUp = (tokenRequired: boolean) => async (req: FastifyRequest) => {
    const f = facts(req);
    if (f.peerDomain) return void callers.set(req, { f });
    const raw = tokenRequired ? d.gate.extractToken(f.authorization) : d.gate.optionalToken(f.authorization);
    const tok = raw !== undefined ? await d.gate.verifyToken(raw, false) : undefined;
    callers.set(req, { f, ...(raw !== undefined ? { raw } : {}), ...(tok ? { tok } : {}), proof: d.gate.verifyProof(f, raw) });
  };
  const authorizeFollowUp = (req: FastifyRequest, r: Reservation) => {
    const { f, tok, proof } = caller(req);
    if (r.owner.kind === 'peer') {
      if (f.peerDomain !== r.owner.domain) throw brokerError('VMTC_NOT_HOLDER', { reservationId: r.id, reason: 'this segment belongs to an upstream broker' });
      return;
    }
    if (f.peerDomain || !proof) throw brokerError('VMTC_NOT_HOLDER', { reservationId: r.id, reason: 'this reservation belongs to a holder, not to a peer broker' });
    if (tok && tok.jti !== r.tokenJti) throw brokerError('VMTC_TOKEN_NOT_BOUND', { reservationId: r.id });
    if (proof.jkt !== r.owner.jkt) throw brokerError('VMTC_NOT_HOLDER', { reservationId: r.id, reason: 'the proof is made with another key' });
  };

  const ops = ['commit', 'abort', 'provision', 'release', 'terminate'] as const;
  const opSummary: Record<(typeof ops)[number], string> = {
    commit: 'commit a held reservation (NSI reserveCommit)',
    abort: 'abort a held reservation (NSI reserveAbort)',
    provision: 'set the data plane up (NSI provision); the token that created the reservation is required',
    release: 'take the data plane down, keeping the reservation (NSI release)',
    terminate: 'end the reservation and free its capacity (NSI terminate)',
  };
  for (const op of ops) {
    app.post(`/v1/reservations/:id/${op}`, {
      onRequest: authenticateFollowUp(op === 'provision'),
      schema: {
        operationId: `${op}Reservation`, tags: ['reservations'], summary: opSummary[op],
        // The token is optional except for provision; the proof (or the peer's certificate) is not.
        security: op === 'provision' ? HOLDER_OR_PEER : [...HOLDER_OR_PEER, { dpopProof: [] }],
        params: IdParams, body: EmptyBody,
        response: { 200: ReservationSchema, ...errorResponses({ body: true }, 401, 403, 404, 409, 502) },
      },
    }, async (req) => {
      const r = d.service.mustGet(req.params.id);
      authorizeFollowUp(req, r);
      return out(await d.service[op](r.id));
    });
  }

  /**
   * Reads are gated (docs/broker.md "Reads"): the operator's bearer token reads everything. The
   * refusal is decided before any lookup, so it says nothing about which reservations exist.
   */
  const ACCEPTED = ['Authorization: Bearer <operator token>'];
  const refuseRead = (authorization: string | undefined, accepted = ACCEPTED) => {
    const reason = !authorization ? 'no credential' : /^Bearer\s/i.test(authorization.trim()) ? 'not the operator credential' : 'unsupported Authorization scheme';
    return brokerError('VMTC_UNAUTHENTICATED', { reason, accepted });
  };
  const requireOperator = (req: FastifyRequest) => {
    const a = typeof req.headers.authorization === 'string' ? req.headers.authorization : undefined;
    if (!d.operator.matches(a)) throw refuseRead(a);
  };
  /**
   * The holder finds its reservation by the idempotency key it chose (docs/broker.md
   * "Idempotency key"): a fresh DPoP proof for this GET, no token (a restarted caller no longer
   * has it). Only reservations made by the proof's key are searched, so nobody learns of
   * another's.
   */
  app.get('/v1/reservations/by-key/:key', {
    onRequest: async (req) => {
      const f = facts(req);
      callers.set(req, { f, proof: d.gate.verifyProof(f, d.gate.optionalToken(f.authorization)) });
    },
    schema: {
      operationId: 'getReservationByKey', tags: ['reservations'],
      summary: "the holder's reservation made with this idempotency key (holder proof)",
      security: [{ dpopProof: [] }],
      params: KeyParams,
      response: { 200: ReservationSchema, ...errorResponses({}, 401, 404) },
    },
  }, async (req) => {
    const { proof } = caller(req) as Caller & { proof: VerifiedProof };
    const r = d.service.byKey({ kind: 'holder', jkt: proof.jkt }, req.params.key);
    if (!r) throw brokerError('VMTC_RESERVATION_NOT_FOUND', { idempotencyKey: req.params.key });
    return out(r);
  });

  app.get('/v1/reservations/:id', {
    onRequest: async (req) => {
      const f = facts(req);
      if (d.operator.matches(f.authorization)) return void callers.set(req, { f });
      // The holder may read its own reservation the way it acts on it: the token that created it
      // (`Authorization: DPoP`) and a fresh proof for this GET made with the token's key.
      if (!/^DPoP\s/i.test(f.authorization?.trim() ?? '')) throw refuseRead(f.authorization, [...ACCEPTED, 'Authorization: DPoP <token that created it> + DPoP proof']);
      const raw = d.gate.extractToken(f.authorization);
      const tok = await d.gate.verifyToken(raw, false);
      callers.set(req, { f, raw, tok, proof: d.gate.verifyProof(f, raw, tok.jkt) });
    },
    schema: {
      operationId: 'getReservation', tags: ['reservations'],
      summary: 'one reservation with its history (operator, or its holder with the token that created it)',
      security: [...OPERATOR, { dpopToken: [], dpopProof: [] }],
      params: IdParams,
      response: { 200: ReservationWithHistory, ...errorResponses({}, 401, 403, 404) },
    },
  }, async (req) => {
    const { tok } = caller(req);
    if (tok) {
      // Token and proof were checked before the lookup (onRequest), so only a genuine holder
      // learns whether an id exists.
      const mine = d.service.mustGet(req.params.id);
      if (mine.owner.kind !== 'holder' || mine.owner.jkt !== tok.jkt) throw brokerError('VMTC_NOT_HOLDER', { reservationId: mine.id, reason: 'only the holder that created the reservation may read it with its token' });
      if (tok.jti !== mine.tokenJti) throw brokerError('VMTC_TOKEN_NOT_BOUND', { reservationId: mine.id });
    }
    const r = d.service.mustGet(req.params.id);
    return { ...out(r), history: d.service.transitions(r.id).map(({ seq, machine, from, to, event, at, details }) => ({ seq, machine, from, to, event, at, ...(details ? { details } : {}) })) };
  });

  app.get('/v1/reservations', {
    onRequest: async (req) => requireOperator(req),
    schema: {
      operationId: 'listReservations', tags: ['reservations'], summary: 'every reservation (operator)', security: OPERATOR,
      querystring: EmptyQuery,
      response: { 200: ReservationList, ...errorResponses({}, 401) },
    },
  }, async () => {
    return { reservations: d.service.list().map(out) };
  });

  // Live: the process runs; ready: its store answers, every issuer's JWKS URL answers (inline
  // keys need nothing) and every peer broker answers its /healthz.
  registerHealthRoutes(app, {
    store: storeCheck(d.store.db),
    ...Object.fromEntries(d.issuers.filter((i) => i.jwksUrl).map((i) => [i.iss, peerCheck(i.jwksUrl, { path: '', ...(i.ca ? { tls: { ca: i.ca } } : {}) })])),
    ...Object.fromEntries(d.peers.configs.map((p) => [`broker:${p.domain}`, peerCheck(p.url, { tls: { ca: p.ca } })])),
  }, { clock: d.clock });

  // NSI notifications (reserveTimeout, dataPlaneStateChange, errorEvent) as server-sent events.
  app.get('/v1/events', {
    // Before the hijack, so a refusal is an ordinary coded JSON error.
    onRequest: async (req) => requireOperator(req),
    schema: {
      operationId: 'followEvents', tags: ['events'], summary: 'NSI notifications as server-sent events (operator)', security: OPERATOR,
      querystring: EmptyQuery,
      response: {
        200: EventStream('events `stateChange`, `dataPlaneStateChange` and `error`, data: the notification as JSON'),
        ...errorResponses({}, 401),
      },
    },
  }, (req, reply) => {
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
    res.write(': vmtc broker events\n\n');
    const onEvent = (e: BrokerEvent) => res.write(`event: ${e.type}\ndata: ${JSON.stringify(e)}\n\n`);
    const stream = { end: () => { cleanup(); res.end(); } };
    const cleanup = () => {
      d.service.events.off('event', onEvent);
      d.streams.delete(stream);
    };
    d.service.events.on('event', onEvent);
    d.streams.add(stream);
    req.raw.on('close', cleanup);
  });
}
