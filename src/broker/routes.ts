// The broker's REST API (docs/broker.md "REST API"). Every route has a JSON Schema with unknown
// fields refused. Order inside each handler: token gate (token, proof or peer identity, scope,
// replay), and only then the runner, so a refused request changes nothing.
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { TLSSocket } from 'node:tls';
import type { Clock } from '../common/clock.ts';
import { errorSchema } from '../common/http.ts';
import { brokerError } from './errors.ts';
import { peerFromCertificate, type RequestFacts, type TokenGate } from './gate.ts';
import type { OperatorCredential } from './operator.ts';
import type { PeerLinks } from './peer.ts';
import { view, type BrokerEvent, type BrokerService } from './service.ts';
import type { Reservation } from './store.ts';

const idParams = {
  type: 'object',
  additionalProperties: false,
  required: ['id'],
  properties: { id: { type: 'string', minLength: 1, maxLength: 128 } },
} as const;

const reserveBody = {
  type: 'object',
  additionalProperties: false,
  required: ['src', 'dst', 'bandwidthMbps', 'window'],
  properties: {
    src: { type: 'string', minLength: 1, maxLength: 128 },
    dst: { type: 'string', minLength: 1, maxLength: 128 },
    // Not exclusiveMinimum here: a bandwidth <= 0 gets its own code (VMTC_BAD_BANDWIDTH).
    bandwidthMbps: { type: 'number' },
    window: {
      type: 'object',
      additionalProperties: false,
      required: ['end'],
      properties: {
        start: { type: 'integer', description: 'epoch seconds; omitted = now (on-demand)' },
        end: { type: 'integer', description: 'epoch seconds, exclusive' },
      },
    },
    migrationId: { type: 'string', minLength: 1, maxLength: 200 },
    upstream: {
      type: 'object',
      additionalProperties: false,
      required: ['domain', 'reservationId'],
      properties: { domain: { type: 'string', minLength: 1, maxLength: 128 }, reservationId: { type: 'string', minLength: 1, maxLength: 128 } },
      description: 'set only by an upstream broker (mutual TLS)',
    },
  },
} as const;

const emptyBody = { type: 'object', additionalProperties: false, properties: {} } as const;
const errors = { 400: errorSchema, 401: errorSchema, 403: errorSchema, 404: errorSchema, 409: errorSchema, 502: errorSchema };

interface ReserveBodyT {
  src: string;
  dst: string;
  bandwidthMbps: number;
  window: { start?: number; end: number };
  migrationId?: string;
  upstream?: { domain: string; reservationId: string };
}

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

export function registerRoutes(app: FastifyInstance, d: RouteDeps): void {
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
  const out = (r: Reservation) => view(r, d.domain);

  app.post<{ Body: ReserveBodyT }>('/v1/reservations', { schema: { body: reserveBody, response: errors } }, async (req, reply) => {
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
  for (const op of ops) {
    app.post<{ Params: { id: string } }>(`/v1/reservations/:id/${op}`, { schema: { params: idParams, body: emptyBody, response: errors } }, async (req) => {
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
  const readErrors = { 401: errorSchema, 403: errorSchema, 404: errorSchema };

  app.get<{ Params: { id: string } }>('/v1/reservations/:id', { schema: { params: idParams, response: readErrors } }, async (req) => {
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

  app.get('/v1/reservations', { schema: { querystring: { type: 'object', additionalProperties: false, properties: {} }, response: { 401: errorSchema } } }, async (req) => {
    requireOperator(req);
    return { reservations: d.service.list().map(out) };
  });

  // NSI notifications (reserveTimeout, dataPlaneStateChange, errorEvent) as server-sent events.
  app.get('/v1/events', { schema: { querystring: { type: 'object', additionalProperties: false, properties: {} }, response: { 401: errorSchema } } }, (req, reply) => {
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
