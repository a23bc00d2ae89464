// REST routes of enrolment and agent administration, mounted on the controller's fastify app.
// POST /v1/enroll is the only route an agent calls without a bearer credential: the one-time
// token in its body is the credential (DESIGN.md "Trust").
import type { FastifyInstance, preHandlerHookHandler } from 'fastify';
import { errorSchema } from '../common/http.ts';
import type { AgentHub } from './hub.ts';
import { hubError } from './hub-errors.ts';

const hostIdSchema = { type: 'string', pattern: '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$' } as const;
const kindSchema = { type: 'string', enum: ['host', 'tunnel'] } as const;
const errors = { 400: errorSchema, 401: errorSchema, 403: errorSchema, 404: errorSchema, 409: errorSchema } as const;

export function registerEnrollRoutes(app: FastifyInstance, hub: AgentHub, opts: { requireAdmin: preHandlerHookHandler }): void {
  app.post<{ Body: { token: string; csr: string } }>('/v1/enroll', {
    schema: {
      summary: 'exchange a one-time enrolment token and a CSR for an agent certificate',
      tags: ['agents'],
      body: {
        type: 'object',
        additionalProperties: false,
        required: ['token', 'csr'],
        properties: {
          token: { type: 'string', minLength: 1, maxLength: 256 },
          csr: { type: 'string', minLength: 1, maxLength: 16384 },
        },
      },
      response: {
        200: {
          type: 'object',
          additionalProperties: false,
          required: ['hostId', 'kind', 'certificate', 'caCertificate', 'agentUrl'],
          properties: {
            hostId: { type: 'string' },
            kind: kindSchema,
            certificate: { type: 'string', description: 'PEM client certificate; CN is the host id' },
            caCertificate: { type: 'string', description: 'PEM certificate of the deployment CA, to pin' },
            agentUrl: { type: 'string', description: 'wss:// URL of the agent hub' },
          },
        },
        ...errors,
      },
    },
  }, async (req) => {
    const r = hub.enroll(req.body.token, req.body.csr);
    return { hostId: r.hostId, kind: r.kind, certificate: r.certPem, caCertificate: r.caCertPem, agentUrl: r.agentUrl };
  });

  app.post<{ Body: { kind: 'host' | 'tunnel'; hostId: string; ttlSeconds?: number } }>('/v1/enrollment-tokens', {
    preHandler: opts.requireAdmin,
    schema: {
      summary: 'mint a one-time enrolment token for an agent',
      tags: ['agents'],
      security: [{ bearer: [] }],
      body: {
        type: 'object',
        additionalProperties: false,
        required: ['kind', 'hostId'],
        properties: {
          kind: kindSchema,
          hostId: hostIdSchema,
          ttlSeconds: { type: 'integer', minimum: 1, maximum: 30 * 86400 },
        },
      },
      response: {
        201: {
          type: 'object',
          additionalProperties: false,
          required: ['token', 'hostId', 'kind', 'expiresAt', 'caFingerprint'],
          properties: {
            token: { type: 'string' },
            hostId: { type: 'string' },
            kind: kindSchema,
            expiresAt: { type: 'string', format: 'date-time' },
            caFingerprint: { type: 'string', description: 'sha256 of the CA certificate, for the agent to check' },
          },
        },
        ...errors,
      },
    },
  }, async (req, reply) => {
    const b = req.body;
    const t = hub.mintEnrollToken({ kind: b.kind, hostId: b.hostId, ...(b.ttlSeconds !== undefined ? { ttlMs: b.ttlSeconds * 1000 } : {}) });
    void reply.status(201);
    return { ...t, expiresAt: new Date(t.expiresAt).toISOString() };
  });

  const agentSchema = {
    type: 'object',
    additionalProperties: false,
    required: ['hostId', 'kind', 'connected', 'certSerials'],
    properties: {
      hostId: { type: 'string' },
      kind: kindSchema,
      connected: { type: 'boolean' },
      connectedAt: { type: 'string', format: 'date-time' },
      lastSeen: { type: 'string', format: 'date-time' },
      agentVersion: { type: 'string' },
      certSerials: { type: 'array', items: { type: 'string' } },
    },
  } as const;

  app.get('/v1/agents', {
    preHandler: opts.requireAdmin,
    schema: {
      summary: 'list enrolled agents and their links',
      tags: ['agents'],
      security: [{ bearer: [] }],
      response: {
        200: { type: 'object', additionalProperties: false, required: ['agents'], properties: { agents: { type: 'array', items: agentSchema } } },
        ...errors,
      },
    },
  }, async () => ({
    agents: hub.agents().map((a) => ({
      ...a,
      ...(a.connectedAt !== undefined ? { connectedAt: new Date(a.connectedAt).toISOString() } : {}),
      ...(a.lastSeen !== undefined ? { lastSeen: new Date(a.lastSeen).toISOString() } : {}),
    })),
  }));

  app.post<{ Params: { hostId: string } }>('/v1/agents/:hostId/revoke', {
    preHandler: opts.requireAdmin,
    schema: {
      summary: "revoke every certificate of an agent and drop its link",
      tags: ['agents'],
      security: [{ bearer: [] }],
      params: { type: 'object', additionalProperties: false, required: ['hostId'], properties: { hostId: hostIdSchema } },
      response: {
        200: { type: 'object', additionalProperties: false, required: ['hostId', 'revoked'], properties: { hostId: { type: 'string' }, revoked: { type: 'integer' } } },
        ...errors,
      },
    },
  }, async (req) => {
    const { hostId } = req.params;
    if (!hub.isKnown(hostId)) throw hubError('VMTC_AGENT_UNKNOWN', { hostId });
    return { hostId, revoked: hub.revoke(hostId) };
  });
}
