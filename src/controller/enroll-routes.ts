// REST routes of enrolment and agent administration, mounted on the controller's fastify app
// (schemas in schemas.ts). POST /v1/enroll is the only route an agent calls without a bearer
// credential: the one-time token in its body is the credential (docs/design.md "Trust"). It is
// therefore the one route whose body is read before the caller is known (README "API"): a small
// body limit, a flat schema of two bounded strings, and a refusal that names no enrolment.
import type { FastifyInstance, onRequestHookHandler } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { errorResponses } from '../common/schemas.ts';
import type { AgentHub } from './hub.ts';
import type { AgentKind } from './pki-store.ts';
import { hubError } from './hub-errors.ts';
import { AgentList, AgentParams, AgentRevoked, Enrolled, EnrollBody, EnrollToken, EnrollTokenBody } from './schemas.ts';

export function registerEnrollRoutes(fastify: FastifyInstance, hub: AgentHub, opts: { requireAdmin: onRequestHookHandler }): void {
  const app = fastify.withTypeProvider<TypeBoxTypeProvider>();
  const security = [{ bearer: [] }];

  app.post('/v1/enroll', {
    // A token (256) and a CSR (16 KiB) with JSON escapes fit; nothing bigger is read.
    bodyLimit: 32 * 1024,
    schema: {
      operationId: 'enrollAgent',
      summary: 'exchange a one-time enrolment token and a CSR for an agent certificate',
      tags: ['agents'],
      // The token in the body is the credential: 401 unknown or expired, 409 already used.
      security: [],
      body: EnrollBody,
      response: { 200: Enrolled, ...errorResponses({ body: true }, 401, 409) },
    },
  }, async (req) => {
    const r = hub.enroll(req.body.token, req.body.csr);
    // The hub enrols only the kinds its tokens were minted for (host, tunnel).
    return { hostId: r.hostId, kind: r.kind as AgentKind, certificate: r.certPem, caCertificate: r.caCertPem, agentUrl: r.agentUrl };
  });

  app.post('/v1/enrollment-tokens', {
    onRequest: opts.requireAdmin,
    schema: {
      operationId: 'createEnrollmentToken',
      summary: 'mint a one-time enrolment token for an agent',
      tags: ['agents'],
      security,
      body: EnrollTokenBody,
      response: { 201: EnrollToken, ...errorResponses({ body: true }, 401, 403, 409) },
    },
  }, async (req, reply) => {
    const b = req.body;
    const t = hub.mintEnrollToken({ kind: b.kind, hostId: b.hostId, ...(b.ttlSeconds !== undefined ? { ttlMs: b.ttlSeconds * 1000 } : {}) });
    return reply.status(201).send({ ...t, kind: b.kind, expiresAt: new Date(t.expiresAt).toISOString() });
  });

  app.get('/v1/agents', {
    onRequest: opts.requireAdmin,
    schema: {
      operationId: 'listAgents',
      summary: 'list enrolled agents and their links',
      tags: ['agents'],
      security,
      response: { 200: AgentList, ...errorResponses({}, 401, 403) },
    },
  }, async () => ({
    agents: hub.agents().map(({ connectedAt, lastSeen, ...a }) => ({
      ...a,
      ...(connectedAt !== undefined ? { connectedAt: new Date(connectedAt).toISOString() } : {}),
      ...(lastSeen !== undefined ? { lastSeen: new Date(lastSeen).toISOString() } : {}),
    })),
  }));

  app.post('/v1/agents/:hostId/revoke', {
    onRequest: opts.requireAdmin,
    schema: {
      operationId: 'revokeAgent',
      summary: 'revoke every certificate of an agent and drop its link',
      tags: ['agents'],
      security,
      params: AgentParams,
      response: { 200: AgentRevoked, ...errorResponses({}, 401, 403, 404) },
    },
  }, async (req) => {
    const { hostId } = req.params;
    if (!hub.isKnown(hostId)) throw hubError('VMTC_AGENT_UNKNOWN', { hostId });
    return { hostId, revoked: hub.revoke(hostId) };
  });
}
