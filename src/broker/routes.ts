// The broker's REST API (docs/broker.md "REST API"). Every route has a schema (schemas.ts) with
// unknown fields refused. Order inside each handler: token gate (token, proof or peer identity,
// scope, replay), and only then the runner, so a refused request changes nothing.
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { TLSSocket } from 'node:tls';
import type { Clock } from '../common/clock.ts';
import { errorResponses, EventStream } from '../common/schemas.ts';
import { brokerError } from './errors.ts';
import { peerFromCertificate, type RequestFacts, type TokenGate } from './gate.ts';
import type { OperatorCredential } from './operator.ts';
import type { PeerLinks } from './peer.ts';
import { view, type BrokerEvent, type BrokerService } from './service.ts';
import type { Reservation } from './store.ts';
import {
  EmptyBody, EmptyQuery, HOLDER_OR_PEER, IdParams, OPERATOR, ReservationList, Reservation as ReservationSchema, ReservationWithHistory, ReserveBody,
  type Reservation as ReservationView,
} from './schemas.ts';

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
}

export function registerRoutes(fastify: FastifyInstance, d: RouteDeps): void {
  const app = fastify.withTypeProvider<TypeBoxTypeProvider>();
  const facts = (req: FastifyRequest): RequestFacts => {
    const sock = req.raw.socket as TLSSocket;
    const f: RequestFacts = {
      method: req.method,
      htu: `${req.protocol}://${req.host}${req.url.split('?')[0]}`,
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

  app.post('/v1/reservations', {
    schema: {
      operationId: 'reserve', tags: ['reservations'], security: HOLDER_OR_PEER,
      summary: 'reserve a lightpath (NSI reserve) with an AAA capability token; held until committed',
      body: ReserveBody,
      // 400: unknown endpoint, bad window or bandwidth; 409: no path; 502: a peer domain failed.
      response: { 201: ReservationSchema, ...errorResponses({ body: true }, 401, 403, 409, 502) },
    },
  }, async (req, reply) => {
    const f = facts(req);
    const b = req.body;
    // --- token gate: nothing below changes state until all of it has passed.
    const raw = d.gate.extractToken(f.authorization);
    const tok = await d.gate.verifyToken(raw);
    const start = b.window.start ?? Math.floor(d.clock.now() / 1000);
    const scopeReq = { src: b.src, dst: b.dst, bandwidthMbps: b.bandwidthMbps, start, end: b.window.end, ...(b.migrationId ? { migrationId: b.migrationId } : {}) };
    if (f.peerDomain) {
      // An upstream broker: its mutual-TLS identity stands in for the holder's DPoP proof.
      if (!b.upstream || b.upstream.domain !== f.peerDomain) throw brokerError('VMTC_PEER_NOT_TRUSTED', { reason: 'upstream.domain must name the peer that presents the certificate', peer: f.peerDomain });
      d.gate.checkScope(tok, scopeReq, f.peerDomain);
    } else {
      if (b.upstream) throw brokerError('VMTC_PEER_NOT_TRUSTED', { reason: 'upstream is reserved to peer brokers with a trusted client certificate' });
      d.gate.verifyProof(f, raw, tok.jkt);
      d.gate.checkScope(tok, scopeReq);
    }
    d.gate.checkNotReplayed(tok);
    // --- the runner.
    const r = await d.service.reserve(
      { src: b.src, dst: b.dst, bandwidthMbps: b.bandwidthMbps, start, end: b.window.end, migrationId: b.migrationId ?? tok.vmtc.migrationId },
      {
        owner: f.peerDomain ? { kind: 'peer', domain: f.peerDomain } : { kind: 'holder', jkt: tok.jkt },
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
  const authorizeFollowUp = async (req: FastifyRequest, r: Reservation, tokenRequired: boolean) => {
    const f = facts(req);
    if (r.owner.kind === 'peer') {
      if (f.peerDomain !== r.owner.domain) throw brokerError('VMTC_NOT_HOLDER', { reservationId: r.id, reason: 'this segment belongs to an upstream broker' });
      return;
    }
    if (f.peerDomain) throw brokerError('VMTC_NOT_HOLDER', { reservationId: r.id, reason: 'this reservation belongs to a holder, not to a peer broker' });
    const raw = tokenRequired ? d.gate.extractToken(f.authorization) : d.gate.optionalToken(f.authorization);
    if (raw !== undefined) {
      const tok = await d.gate.verifyToken(raw, false);
      if (tok.jti !== r.tokenJti) throw brokerError('VMTC_TOKEN_NOT_BOUND', { reservationId: r.id });
    }
    const proof = d.gate.verifyProof(f, raw);
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
      schema: {
        operationId: `${op}Reservation`, tags: ['reservations'], summary: opSummary[op],
        // The token is optional except for provision; the proof (or the peer's certificate) is not.
        security: op === 'provision' ? HOLDER_OR_PEER : [...HOLDER_OR_PEER, { dpopProof: [] }],
        params: IdParams, body: EmptyBody,
        response: { 200: ReservationSchema, ...errorResponses({ body: true }, 401, 403, 404, 409, 502) },
      },
    }, async (req) => {
      const r = d.service.mustGet(req.params.id);
      await authorizeFollowUp(req, r, op === 'provision');
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
  app.get('/v1/reservations/:id', {
    schema: {
      operationId: 'getReservation', tags: ['reservations'],
      summary: 'one reservation with its history (operator, or its holder with the token that created it)',
      security: [...OPERATOR, { dpopToken: [], dpopProof: [] }],
      params: IdParams,
      response: { 200: ReservationWithHistory, ...errorResponses({}, 401, 403, 404) },
    },
  }, async (req) => {
    const f = facts(req);
    if (!d.operator.matches(f.authorization)) {
      // The holder may read its own reservation the way it acts on it: the token that created it
      // (`Authorization: DPoP`) and a fresh proof for this GET made with the token's key. Token and
      // proof are checked before the lookup, so only a genuine holder learns whether an id exists.
      if (!/^DPoP\s/i.test(f.authorization?.trim() ?? '')) throw refuseRead(f.authorization, [...ACCEPTED, 'Authorization: DPoP <token that created it> + DPoP proof']);
      const raw = d.gate.extractToken(f.authorization);
      const tok = await d.gate.verifyToken(raw, false);
      d.gate.verifyProof(f, raw, tok.jkt);
      const mine = d.service.mustGet(req.params.id);
      if (mine.owner.kind !== 'holder' || mine.owner.jkt !== tok.jkt) throw brokerError('VMTC_NOT_HOLDER', { reservationId: mine.id, reason: 'only the holder that created the reservation may read it with its token' });
      if (tok.jti !== mine.tokenJti) throw brokerError('VMTC_TOKEN_NOT_BOUND', { reservationId: mine.id });
    }
    const r = d.service.mustGet(req.params.id);
    return { ...out(r), history: d.service.transitions(r.id).map(({ seq, machine, from, to, event, at, details }) => ({ seq, machine, from, to, event, at, ...(details ? { details } : {}) })) };
  });

  app.get('/v1/reservations', {
    schema: {
      operationId: 'listReservations', tags: ['reservations'], summary: 'every reservation (operator)', security: OPERATOR,
      querystring: EmptyQuery,
      response: { 200: ReservationList, ...errorResponses({}, 401) },
    },
  }, async (req) => {
    requireOperator(req);
    return { reservations: d.service.list().map(out) };
  });

  // NSI notifications (reserveTimeout, dataPlaneStateChange, errorEvent) as server-sent events.
  app.get('/v1/events', {
    schema: {
      operationId: 'followEvents', tags: ['events'], summary: 'NSI notifications as server-sent events (operator)', security: OPERATOR,
      querystring: EmptyQuery,
      response: {
        200: EventStream('events `stateChange`, `dataPlaneStateChange` and `error`, data: the notification as JSON'),
        ...errorResponses({}, 401),
      },
    },
  }, (req, reply) => {
    // Before the hijack, so a refusal is an ordinary coded JSON error.
    requireOperator(req);
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
