// The AAA's Prometheus metrics (README "Metrics"): capability tokens issued and refused (by the
// refusal's code), DPoP proofs checked, served on GET /metrics behind the admin credential.
// Counted from the answers of the routes (fastify hooks), so the routes stay as they are.
import type { FastifyInstance, onRequestHookHandler } from 'fastify';
import { Counter, createRegistry, registerMetricsRoute, type Registry } from '../common/metrics.ts';
import { toVmtcError } from '../common/errors.ts';

const AUTHORIZE = '/v1/authorizations';

export function registerAaaMetrics(app: FastifyInstance, opts: { onRequest: onRequestHookHandler; security: Record<string, string[]>[] }): Registry {
  const registry = createRegistry('aaa');
  const registers = [registry];
  const issued = new Counter({ name: 'vmtc_aaa_tokens_issued_total', help: 'Capability tokens signed (POST /v1/authorizations answered 201).', registers });
  const refused = new Counter({ name: 'vmtc_aaa_tokens_refused_total', help: 'Token requests refused, by the refusal code (policy, quota, window, proof, peer domain).', labelNames: ['reason'], registers });
  const proofs = new Counter({ name: 'vmtc_aaa_proof_verifications_total', help: 'Requests that carried a DPoP proof, by whether the proof verified (valid) or not (invalid).', labelNames: ['result'], registers });
  issued.inc(0);
  for (const result of ['valid', 'invalid']) proofs.inc({ result }, 0);
  // The refusal's code, kept for onResponse (which sees the status only).
  const codes = new WeakMap<object, string>();
  app.addHook('onError', async (request, _reply, error) => { codes.set(request, toVmtcError(error).code); });
  app.addHook('onResponse', async (request, reply) => {
    const code = codes.get(request);
    if (request.headers.dpop !== undefined && request.routeOptions.url !== undefined) proofs.inc({ result: code === 'VMTC_AAA_PROOF_INVALID' ? 'invalid' : 'valid' });
    if (request.routeOptions.url !== AUTHORIZE || request.method !== 'POST') return;
    if (reply.statusCode === 201) issued.inc();
    else refused.inc({ reason: code ?? `http_${reply.statusCode}` });
  });
  registerMetricsRoute(app, registry, opts);
  return registry;
}
