// The REST routes of VM groups' migration policies (migration/policy.ts; docs/policy.md):
//   GET    /v1/policies          reader  every group, the controller's configured policy, the defaults
//   GET    /v1/policies/:group   reader  one group
//   PUT    /v1/policies/:group   admin   { policy, vmIds? } -> 200 the group (created or replaced)
//   DELETE /v1/policies/:group   admin   -> 204; its VMs fall back to the `default` group
// A migration takes its group's policy when its copy starts, under the request's own `policy`.
// Registered from api.ts.
import type { FastifyInstance, onRequestHookHandler } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { errorResponses, Type } from '../common/schemas.ts';
import type { Clock } from '../common/clock.ts';
import type { Logger } from '../common/log.ts';
import { err } from './errors.ts';
import type { ControllerStore } from './store.ts';
import { PolicyGroup, PolicyGroupBody, PolicyGroupList, PolicyGroupParams } from './schemas.ts';
import { POLICY_DEFAULTS, checkPolicy, resolvePolicy, type MigrationPolicy } from './migration/policy.ts';
import { PolicyStore, type PolicyGroup as PolicyGroupRow } from './migration/policy-store.ts';

export interface PolicyRouteDeps {
  store: ControllerStore;
  clock: Clock;
  logger: Logger;
  /** The controller's configured policy (runner.policy). */
  controllerPolicy?: MigrationPolicy;
  reader: onRequestHookHandler;
  admin: onRequestHookHandler;
  security: { bearer: never[] }[];
}

function present(g: PolicyGroupRow): { group: string; policy: MigrationPolicy; vmIds: string[]; updatedAt: string } {
  return { group: g.group, policy: g.policy, vmIds: g.vmIds, updatedAt: new Date(g.updatedAt).toISOString() };
}

export function registerPolicyRoutes(fastify: FastifyInstance, d: PolicyRouteDeps): void {
  const app = fastify.withTypeProvider<TypeBoxTypeProvider>();
  const policies = new PolicyStore(d.store.db);
  const security = d.security;

  app.get('/v1/policies', {
    onRequest: d.reader,
    schema: {
      operationId: 'listPolicies', tags: ['policies'], security,
      summary: "VM groups' migration policies, the controller's configured policy over the built-in defaults, and the defaults.",
      response: { 200: PolicyGroupList, ...errorResponses({}, 401, 403) },
    },
  }, async () => ({
    groups: policies.list().map(present),
    controller: resolvePolicy([{ source: 'controller', policy: d.controllerPolicy }]).policy,
    defaults: POLICY_DEFAULTS,
  }));

  app.get('/v1/policies/:group', {
    onRequest: d.reader,
    schema: {
      operationId: 'getPolicy', tags: ['policies'], security,
      summary: "One VM group's migration policy and its VMs.",
      params: PolicyGroupParams,
      response: { 200: PolicyGroup, ...errorResponses({}, 401, 403, 404) },
    },
  }, async (request) => {
    const g = policies.get(request.params.group);
    if (!g) throw err('VMTC_POLICY_GROUP_NOT_FOUND', { group: request.params.group });
    return present(g);
  });

  app.put('/v1/policies/:group', {
    onRequest: d.admin,
    schema: {
      operationId: 'putPolicy', tags: ['policies'], security,
      summary: "Create or replace a VM group's migration policy (the defaults of its VMs' migrations, under each request's own policy) and its VMs. Migrations already copying keep the policy they started with.",
      params: PolicyGroupParams,
      body: PolicyGroupBody,
      response: { 200: PolicyGroup, ...errorResponses({ body: true }, 401, 403) },
    },
  }, async (request) => {
    const { group } = request.params;
    checkPolicy(request.body.policy, `group:${group}`);
    const g = policies.put(group, request.body.policy, request.body.vmIds ?? [], d.clock.now());
    d.logger.info({ group, policy: g.policy, vms: g.vmIds.length, by: request.principal?.name }, 'migration policy of a VM group set');
    return present(g);
  });

  app.delete('/v1/policies/:group', {
    onRequest: d.admin,
    schema: {
      operationId: 'deletePolicy', tags: ['policies'], security,
      summary: "Delete a VM group's migration policy; its VMs fall back to the `default` group's.",
      params: PolicyGroupParams,
      // No body: typed undefined so the handler sends none.
      response: { 204: Type.Unsafe<undefined>({ type: 'null', description: 'deleted' }), ...errorResponses({}, 401, 403, 404) },
    },
  }, async (request, reply) => {
    if (!policies.delete(request.params.group)) throw err('VMTC_POLICY_GROUP_NOT_FOUND', { group: request.params.group });
    d.logger.info({ group: request.params.group, by: request.principal?.name }, 'migration policy of a VM group deleted');
    return reply.status(204).send();
  });
}
