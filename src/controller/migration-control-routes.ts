// The REST routes of an operator's control of a running migration (migration/control.ts does
// it; the guards are the machine's):
//   POST  /v1/migrations/:id/force-complete  { mode?: postcopy | pause }          -> 202 record
//   PATCH /v1/migrations/:id                 { bandwidthMbps?, maxDowntimeMs? }   -> 200 record
// Both are refused with their own code outside the copy (VMTC_MIGRATION_NOT_FORCEABLE,
// VMTC_MIGRATION_NOT_TUNABLE), in particular from the switchover on (docs/design.md#switchover).
// Each change is in the record's `changes` and on the migration's event stream (`forced`,
// `tuned`). Registered from api.ts, which hands in how it presents a record and who may ask.
import type { FastifyInstance, onRequestHookHandler } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { errorResponses } from '../common/schemas.ts';
import type { Clock } from '../common/clock.ts';
import type { Logger } from '../common/log.ts';
import type { MigrationRunner } from './runner.ts';
import type { HubPort } from './ports.ts';
import type { ControllerStore, MigrationRow } from './store.ts';
import { ForceCompleteBody, IdParams, Migration, TuneMigrationBody, type Migration as MigrationT } from './schemas.ts';
import { MigrationControl, presentControl } from './migration/control.ts';
import { migrationTuning } from './migration/request.ts';
import type { MigrationChange } from './migration/record.ts';

/** The runner's event that carries an operator's change to a migration's listeners:
 *  (migrationId, 'forced' | 'tuned', change). */
export const CONTROL_EVENT = 'control';

export interface ControlRouteDeps {
  store: ControllerStore;
  hub: HubPort;
  runner: MigrationRunner;
  clock: Clock;
  logger: Logger;
  /** The record as GET /v1/migrations/:id presents it. */
  present(row: MigrationRow): MigrationT;
  /** The role check (orchestrator, as for cancel). */
  onRequest: onRequestHookHandler;
  security: { bearer: never[] }[];
}

export function registerMigrationControl(fastify: FastifyInstance, d: ControlRouteDeps): void {
  const app = fastify.withTypeProvider<TypeBoxTypeProvider>();
  const control = new MigrationControl({
    store: d.store, hub: d.hub, clock: d.clock, log: d.logger,
    notify: (id, event, change) => { d.runner.emit(CONTROL_EVENT, id, event, change); },
  });
  const by = (request: { principal?: { name: string } }) => request.principal?.name ?? 'unknown';

  app.post('/v1/migrations/:id/force-complete', {
    onRequest: d.onRequest,
    schema: {
      operationId: 'forceCompleteMigration', tags: ['migrations'], security: d.security,
      summary: 'Make a running pre-copy that does not converge end: switch it to post-copy (if it started with postcopy: true) or pause the VM so that its copy ends. Refused from the switchover on; the same again is accepted and recorded once.',
      params: IdParams,
      body: ForceCompleteBody,
      // 502/503/504: the source agent failed, is not connected, or did not answer in time.
      response: { 202: { ...Migration, description: 'the source has it: the copy ends' }, ...errorResponses({ body: true }, 401, 403, 404, 409, 502, 503, 504) },
    },
    // The body is optional: a POST without one asks for the default mode.
    preValidation: async (request) => { request.body ??= {}; },
  }, async (request, reply) => {
    const row = await control.forceComplete(request.params.id, request.body?.mode, by(request));
    return reply.status(202).send(d.present(row));
  });

  app.patch('/v1/migrations/:id', {
    onRequest: d.onRequest,
    schema: {
      operationId: 'tuneMigration', tags: ['migrations'], security: d.security,
      summary: "Change a running migration's bandwidth and downtime limit (the hypervisor's own parameters, as it runs). Refused outside the copy.",
      params: IdParams,
      body: TuneMigrationBody,
      response: { 200: { ...Migration, description: 'the source runs with the new limits' }, ...errorResponses({ body: true }, 401, 403, 404, 409, 502, 503, 504) },
    },
  }, async (request) => {
    const row = await control.tune(request.params.id, request.body, by(request));
    return d.present(row);
  });
}

/** The record's `tuning` and `changes` (api.ts presentMigration). */
export function presentMigrationControl(row: Pick<MigrationRow, 'request' | 'ctx'>): ReturnType<typeof presentControl> {
  const { copyStorage: _, ...tuning } = migrationTuning(row.request);
  return presentControl(row.ctx, tuning);
}

/** A change as the event stream sends it (`forced`, `tuned`). */
export function controlEventData(migrationId: string, change: MigrationChange): Record<string, unknown> {
  return { migrationId, ...change, at: new Date(change.at).toISOString() };
}
