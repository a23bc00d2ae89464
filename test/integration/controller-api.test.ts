// Bad input and authentication on the controller's REST API: each a coded error, nothing changed.
import { describe, it, expect, afterAll, beforeAll } from 'vitest';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { startHarness, vmSpec, type Harness } from '../helpers/controller-harness.ts';
import { ALL_CONTROLLER_ERRORS } from '../../src/controller/index.ts';
import { transition, edges, STATES, TERMINAL } from '../../src/controller/machine.ts';
import { VmtcError } from '../../src/common/errors.ts';
import { presentMigration } from '../../src/controller/api.ts';

let h: Harness;
beforeAll(async () => {
  h = await startHarness();
  await h.addHost('A', { vms: [vmSpec('vm1')] });
  await h.addHost('B');
});
afterAll(async () => { await h?.close(); });

async function raw(method: string, path: string, body: string | undefined, headers: Record<string, string> = {}) {
  const r = await fetch(h.controller.url + path, { method, headers: { authorization: `Bearer ${h.controller.adminToken}`, ...headers }, ...(body !== undefined ? { body } : {}) });
  return { status: r.status, body: await r.json().catch(() => undefined) as any };
}

describe('controller REST: bad input', () => {
  it('refuses malformed JSON, wrong types, unknown fields, huge bodies, wrong media type', async () => {
    const json = { 'content-type': 'application/json' };
    expect((await raw('POST', '/v1/migrations', '{"vmId": ', json)).body.code).toBe('VMTC_BAD_REQUEST');
    expect((await raw('POST', '/v1/migrations', JSON.stringify({ vmId: 5, destinationHostId: 'B' }), json)).body.code).toBe('VMTC_VALIDATION');
    expect((await raw('POST', '/v1/migrations', JSON.stringify({ vmId: 'vm1', destinationHostId: 'B', colour: 'red' }), json)).body.code).toBe('VMTC_VALIDATION');
    expect((await raw('POST', '/v1/migrations', JSON.stringify({ vmId: 'vm1', destinationHostId: 'B', mode: 'teleport' }), json)).body.code).toBe('VMTC_VALIDATION');
    expect((await raw('POST', '/v1/migrations', JSON.stringify({ vmId: 'vm1', destinationHostId: 'B', bandwidthMbps: -1 }), json)).body.code).toBe('VMTC_VALIDATION');
    expect((await raw('POST', '/v1/migrations', JSON.stringify({ vmId: 'vm1', destinationHostId: 'B', deadline: '2001-01-01T00:00:00Z' }), json)).body.code).toBe('VMTC_DEADLINE_INVALID');
    const huge = await raw('POST', '/v1/migrations', JSON.stringify({ vmId: 'x'.repeat(200_000), destinationHostId: 'B' }), json);
    expect(huge).toMatchObject({ status: 413, body: { code: 'VMTC_BODY_TOO_LARGE' } });
    expect((await raw('POST', '/v1/migrations', '<vmId/>', { 'content-type': 'application/xml' })).body.code).toBe('VMTC_UNSUPPORTED_MEDIA_TYPE');
    expect(await raw('POST', '/v1/migrations', 'vmId=vm1', { 'content-type': 'text/plain' })).toMatchObject({ status: 415, body: { code: 'VMTC_UNSUPPORTED_MEDIA_TYPE' } });
    // None of it created anything.
    expect((await h.api('GET', '/v1/migrations')).body.migrations).toHaveLength(0);
  });

  it('answers unknown ids and routes with coded 404s', async () => {
    expect(await h.api('GET', '/v1/migrations/mig_nope')).toMatchObject({ status: 404, body: { code: 'VMTC_MIGRATION_NOT_FOUND' } });
    expect(await h.api('POST', '/v1/migrations/mig_nope/cancel')).toMatchObject({ status: 404, body: { code: 'VMTC_MIGRATION_NOT_FOUND' } });
    expect(await h.api('GET', '/v1/hosts/nope')).toMatchObject({ status: 404, body: { code: 'VMTC_HOST_NOT_FOUND' } });
    expect(await h.api('GET', '/v1/nothing-here')).toMatchObject({ status: 404, body: { code: 'VMTC_NOT_FOUND' } });
  });

  it('requires a bearer credential; roles limit what it may do; revoked credentials stop working', async () => {
    expect((await h.api('GET', '/v1/hosts', undefined, 'vmtc_wrong')).body.code).toBe('VMTC_UNAUTHENTICATED');
    const r = await fetch(h.controller.url + '/v1/hosts');
    expect(r.status).toBe(401);
    const reader = await h.api('POST', '/v1/credentials', { name: 'dashboard', role: 'reader' });
    expect(reader.status).toBe(201);
    expect((await h.api('GET', '/v1/hosts', undefined, reader.body.token)).status).toBe(200);
    const refused = await h.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B' }, reader.body.token);
    expect(refused).toMatchObject({ status: 403, body: { code: 'VMTC_FORBIDDEN' } });
    expect((await h.api('DELETE', `/v1/credentials/${reader.body.id}`)).status).toBe(204);
    expect((await h.api('GET', '/v1/hosts', undefined, reader.body.token)).body.code).toBe('VMTC_UNAUTHENTICATED');
    expect((await h.api('DELETE', `/v1/credentials/${reader.body.id}`)).body.code).toBe('VMTC_CREDENTIAL_NOT_FOUND');
  });

  it('serves the OpenAPI document with the migration routes', async () => {
    const r = await fetch(h.controller.url + '/openapi.json');
    const doc = await r.json() as any;
    expect(doc.openapi).toMatch(/^3\./);
    expect(Object.keys(doc.paths)).toEqual(expect.arrayContaining(['/v1/migrations', '/v1/migrations/{id}', '/v1/migrations/{id}/cancel', '/v1/hosts', '/v1/hosts/{id}', '/v1/vms', '/v1/enroll']));
  });

  it('describes a host the way Nova describeresource did', async () => {
    const a = (await h.api('GET', '/v1/hosts/A')).body;
    expect(a.totals.memoryMb).toBe(16384);
    expect(a.used).toEqual({ vcpus: 1, memoryMb: 256, diskGb: 2 });
    expect(a.available.memoryMb).toBe(16384 - 256);
    expect(a.byProject.demo).toEqual({ vcpus: 1, memoryMb: 256, diskGb: 2, vms: 1 });
  });
});

describe('controller REST: responses', () => {
  // After the host test above: this moves vm1 to B.
  it('sends a migration record whole: the response schemas drop nothing the controller builds', async () => {
    const m = await h.api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'B', bandwidthMbps: 12.5, requestId: 'whole-1' });
    expect(m.status).toBe(202);
    await h.waitState(m.body.id, ['completed', 'rolled_back', 'failed']);
    const store = h.controller.store;
    const built = (withTransitions: boolean) => JSON.parse(JSON.stringify(presentMigration(store.migration(m.body.id)!, store, withTransitions)));
    expect((await h.api('GET', `/v1/migrations/${m.body.id}`)).body).toEqual(built(true));
    expect((await h.api('GET', '/v1/migrations?vmId=vm1')).body.migrations).toEqual([built(false)]);
    expect(built(true)).toMatchObject({ terminal: true, request: { bandwidthMbps: 12.5, requestId: 'whole-1', mode: 'live' } });
  });
});

describe('migration state machine (pure)', () => {
  it('walks the live path and refuses illegal events with a code naming the state', () => {
    expect(transition('precopy', { type: 'SWITCHOVER_READY' })).toMatchObject({ to: 'switchover', effects: ['switchover'] });
    expect(transition('switchover', { type: 'MIGRATION_COMPLETED' })).toMatchObject({ to: 'committing', effects: ['awaitDestinationRunning'] });
    expect(() => transition('switchover', { type: 'CANCEL' })).toThrow(/can no longer be cancelled/);
    expect(transition('rolling_back', { type: 'ROLLED_BACK', cancelled: true }).to).toBe('cancelled');
    expect(transition('rolling_back', { type: 'ROLLED_BACK', cancelled: false }).to).toBe('rolled_back');
    let e: unknown;
    try { transition('completed', { type: 'CANCEL' }); } catch (x) { e = x; }
    expect(e).toBeInstanceOf(VmtcError);
    expect((e as VmtcError).code).toBe('VMTC_MIGRATION_NOT_CANCELLABLE');
    expect(() => transition('committing', { type: 'CANCEL' })).toThrow(/can no longer be cancelled/);
    expect(() => transition('precopy', { type: 'LIGHTPATH_UP' })).toThrowError(expect.objectContaining({ code: 'VMTC_ILLEGAL_TRANSITION', details: { state: 'precopy', event: 'LIGHTPATH_UP' } }));
  });
  it('walks the cold path to the same activation and cleanup, cancellable until verified', () => {
    expect(transition('reserved', { type: 'START_COLD' })).toMatchObject({ to: 'cold_exporting', effects: ['coldExport'] });
    expect(transition('cold_exporting', { type: 'COLD_EXPORTED' })).toMatchObject({ to: 'cold_importing', effects: ['coldImport'] });
    expect(transition('cold_importing', { type: 'COLD_IMPORTED' })).toMatchObject({ to: 'cold_verifying', effects: ['coldVerify'] });
    expect(transition('cold_verifying', { type: 'COLD_VERIFIED' })).toMatchObject({ to: 'activating', effects: ['activate'] });
    for (const st of ['cold_exporting', 'cold_importing', 'cold_verifying'] as const) {
      expect(transition(st, { type: 'CANCEL' }).to).toBe('rolling_back');
      expect(transition(st, { type: 'FAIL' }).to).toBe('rolling_back');
    }
    expect(transition('rolling_back', { type: 'FALLBACK_COLD' }).to).toBe('cold_exporting');
    expect(() => transition('cold_exporting', { type: 'MIGRATION_COMPLETED' })).toThrowError(expect.objectContaining({ code: 'VMTC_ILLEGAL_TRANSITION' }));
  });
  it('has no way out of a terminal state and no way back after commit', () => {
    for (const e of edges()) expect(TERMINAL.has(e.from)).toBe(false);
    for (const s of ['activating', 'cleanup'] as const) {
      expect(() => transition(s, { type: 'FAIL' })).toThrow();
      expect(() => transition(s, { type: 'CANCEL' })).toThrow();
    }
    // Every non-terminal state is reachable and every state appears in the table or is terminal.
    const targets = new Set(edges().flatMap((e) => String(e.to).split('|')));
    expect(STATES.filter((s) => s !== 'prechecking' && !targets.has(s))).toEqual([]);
  });
});

describe('error catalogue', () => {
  it('documents every code the controller can answer with', () => {
    const doc = readFileSync(resolve(import.meta.dirname, '../../docs/errors.md'), 'utf8');
    const missing = Object.keys(ALL_CONTROLLER_ERRORS).filter((c) => !doc.includes(`\`${c}\``));
    expect(missing).toEqual([]);
  });
});
