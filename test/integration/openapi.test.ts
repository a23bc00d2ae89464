// The OpenAPI documents the three services publish at GET /openapi.json (built by @fastify/swagger
// from the routes' own schemas, src/common/http.ts) are valid: each service is started for real,
// its document is checked by an OpenAPI validator, every Schema Object in it compiles as JSON
// Schema 2020-12 (the validators check OAS 3.1 Schema Objects only shallowly), every operation
// has a unique operationId, and every operation documents its error responses with the common
// error body { code, message, details? }.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { validate, compileErrors } from '@readme/openapi-parser';
import { Ajv2020 } from 'ajv/dist/2020.js';
import { silentLogger } from '../../src/common/log.ts';
import { startAaa, type AaaHandle } from '../../src/aaa/index.ts';
import { startBroker, type Broker } from '../../src/broker/index.ts';
import { MemoryDoubleDriver } from '../../src/broker/drivers/memory-double.ts';
import { startHarness, type Harness } from '../helpers/controller-harness.ts';
import { lineTopology, makeIssuer } from '../helpers/broker-helpers.ts';
import { ALL_CONTROLLER_ERRORS } from '../../src/controller/index.ts';
import { AAA_ERRORS } from '../../src/aaa/errors.ts';
import { BROKER_ERRORS } from '../../src/broker/errors.ts';
import { HOST_AGENT_ERRORS } from '../../agents/host/errors.ts';
import type { Catalogue } from '../../src/common/errors.ts';

type Doc = {
  openapi: string;
  paths: Record<string, Record<string, Operation>>;
  components?: { schemas?: Record<string, unknown> };
};
type Media = { schema?: unknown };
type Operation = {
  operationId?: string;
  security?: Record<string, string[]>[];
  parameters?: { schema?: unknown }[];
  requestBody?: { content?: Record<string, Media> };
  responses?: Record<string, { description?: string; content?: Record<string, Media> }>;
};

const METHODS = new Set(['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace']);

let dir: string;
let controller: Harness;
let aaa: AaaHandle;
let broker: Broker;
const docs = new Map<string, Doc>();

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'vmtc-openapi-'));
  controller = await startHarness();
  aaa = await startAaa({
    dataDir: join(dir, 'aaa'), domain: 'a', logger: silentLogger(),
    policy: { version: 1, sites: { siteA: 'a' }, requesters: [], rules: [] },
  });
  const issuer = await makeIssuer('a');
  broker = await startBroker({
    dataDir: join(dir, 'broker'), domain: 'a', topology: lineTopology(), driver: new MemoryDoubleDriver(),
    trust: { issuers: [{ iss: issuer.iss, jwks: { keys: [issuer.publicJwk] } }] },
  });
  for (const [name, url] of [['controller', controller.controller.url], ['aaa', aaa.url], ['broker', broker.url]] as const) {
    const res = await fetch(`${url}/openapi.json`);
    expect(res.status).toBe(200);
    docs.set(name, await res.json() as Doc);
  }
});
afterAll(async () => {
  await controller?.close();
  await aaa?.close();
  await broker?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

function operations(doc: Doc): { where: string; op: Operation }[] {
  return Object.entries(doc.paths).flatMap(([path, item]) =>
    Object.entries(item).filter(([m]) => METHODS.has(m)).map(([m, op]) => ({ where: `${m.toUpperCase()} ${path}`, op })));
}

/** Every Schema Object of the document with where it is. */
function schemaObjects(doc: Doc): { where: string; schema: unknown }[] {
  const out: { where: string; schema: unknown }[] = [];
  for (const [name, s] of Object.entries(doc.components?.schemas ?? {})) out.push({ where: `components.schemas.${name}`, schema: s });
  for (const { where, op } of operations(doc)) {
    for (const [i, p] of (op.parameters ?? []).entries()) if (p.schema !== undefined) out.push({ where: `${where} parameter ${i}`, schema: p.schema });
    for (const [type, m] of Object.entries(op.requestBody?.content ?? {})) if (m.schema !== undefined) out.push({ where: `${where} body ${type}`, schema: m.schema });
    for (const [status, r] of Object.entries(op.responses ?? {})) {
      for (const [type, m] of Object.entries(r.content ?? {})) if (m.schema !== undefined) out.push({ where: `${where} ${status} ${type}`, schema: m.schema });
    }
  }
  return out;
}

/** Every (sub)schema of a schema, with its JSON path. */
function walk(schema: unknown, fn: (s: { type?: unknown; enum?: unknown[] }, path: string) => void, path = ''): void {
  if (!schema || typeof schema !== 'object') return;
  if (Array.isArray(schema)) {
    schema.forEach((s, i) => walk(s, fn, `${path}[${i}]`));
    return;
  }
  fn(schema as { type?: unknown; enum?: unknown[] }, path);
  for (const [k, v] of Object.entries(schema)) if (k !== 'enum' && k !== 'default' && k !== 'example') walk(v, fn, `${path}.${k}`);
}

const SERVICES = ['controller', 'aaa', 'broker'] as const;

describe.each(SERVICES)('the OpenAPI document of the %s', (name) => {
  it('passes an OpenAPI validator with no errors', async () => {
    const doc = docs.get(name)!;
    const result = await validate(structuredClone(doc) as Parameters<typeof validate>[0]);
    expect(result.valid ? '' : compileErrors(result)).toBe('');
    expect(result.valid).toBe(true);
  });

  it('has only Schema Objects that are valid JSON Schema 2020-12 (the OAS 3.1 dialect), with no unknown keywords', () => {
    const doc = docs.get(name)!;
    expect(doc.openapi).toMatch(/^3\.1\./);
    // Strict: an unknown keyword (e.g. OAS 3.0's `nullable`) or a wrong keyword type (e.g. a
    // boolean exclusiveMinimum) is an error. The OAS vocabulary's own keywords are allowed.
    const ajv = new Ajv2020({ strict: true, strictTypes: false, validateFormats: false, allErrors: true });
    ajv.addVocabulary(['discriminator', 'xml', 'externalDocs', 'example']);
    const problems: string[] = [];
    for (const { where, schema } of schemaObjects(doc)) {
      try {
        ajv.compile(schema as object);
      } catch (e) {
        problems.push(`${where}: ${(e as Error).message}`);
      }
      // A nullable enum must list null, or it refuses null after all.
      walk(schema, (s, path) => {
        if (Array.isArray(s.type) && s.type.includes('null') && Array.isArray(s.enum) && !s.enum.includes(null)) problems.push(`${where}${path}: null type but not in enum`);
      });
    }
    expect(problems).toEqual([]);
  });

  it('gives every operation an operationId, unique in the document', () => {
    const ops = operations(docs.get(name)!);
    expect(ops.length).toBeGreaterThan(3);
    expect(ops.filter(({ op }) => !op.operationId).map(({ where }) => where)).toEqual([]);
    const ids = ops.map(({ op }) => op.operationId);
    expect(ids.filter((id, i) => ids.indexOf(id) !== i)).toEqual([]);
  });

  it('documents the shared error responses of every operation with the error body schema', () => {
    const missing: string[] = [];
    for (const { where, op } of operations(docs.get(name)!)) {
      const rs = op.responses ?? {};
      const expected = ['400', '500', ...(op.requestBody ? ['413', '415'] : [])];
      for (const status of expected) if (!rs[status]) missing.push(`${where} ${status}`);
      for (const [status, r] of Object.entries(rs)) {
        if (!/^[45]/.test(status)) continue;
        const s = r.content?.['application/json']?.schema as { required?: string[]; properties?: Record<string, unknown> } | undefined;
        if (!s || !s.required?.includes('code') || !s.required.includes('message') || !s.properties?.details) missing.push(`${where} ${status}: not the error body`);
      }
      if (!Object.keys(rs).some((s) => /^2/.test(s))) missing.push(`${where}: no success response`);
    }
    expect(missing).toEqual([]);
  });
});

// The codes each operation can answer with, beyond the ones every operation has (400 validation,
// 429 rate limits, 500; 413 and 415 with a body; 401 when it needs a credential): each code's
// status must be among the operation's documented responses. The controller passes on the
// AAA's refusals at admission (policy-precheck.ts) and a host agent's (POST /v1/vms).
const CODES: Record<(typeof SERVICES)[number], { catalogue: Catalogue; ops: Record<string, string[]> }> = {
  controller: {
    catalogue: { ...HOST_AGENT_ERRORS, ...AAA_ERRORS, ...ALL_CONTROLLER_ERRORS },
    ops: {
      getIdentity: ['VMTC_FORBIDDEN'],
      createMigration: [
        'VMTC_FORBIDDEN', 'VMTC_NO_FEASIBLE_HOST', 'VMTC_HOST_IN_MAINTENANCE', 'VMTC_DEADLINE_INVALID', 'VMTC_VM_NOT_FOUND', 'VMTC_HOST_NOT_FOUND', 'VMTC_VM_NOT_RUNNING', 'VMTC_HOST_NOT_CONNECTED',
        'VMTC_SAME_HOST', 'VMTC_INSUFFICIENT_MEMORY', 'VMTC_INSUFFICIENT_VCPUS', 'VMTC_INSUFFICIENT_DISK', 'VMTC_HYPERVISOR_MISMATCH',
        'VMTC_HYPERVISOR_VERSION_INCOMPATIBLE', 'VMTC_CPU_INCOMPATIBLE', 'VMTC_MIGRATION_IN_FLIGHT', 'VMTC_IDEMPOTENCY_CONFLICT',
        'VMTC_AAA_POLICY_DENIED', 'VMTC_AAA_QUOTA_EXCEEDED', 'VMTC_AAA_SITE_UNKNOWN', 'VMTC_AAA_WINDOW_INVALID', 'VMTC_AAA_PEER_UNKNOWN', 'VMTC_AAA_REQUESTER_UNKNOWN',
      ],
      listMigrations: ['VMTC_FORBIDDEN', 'VMTC_CURSOR_INVALID'],
      getMigration: ['VMTC_FORBIDDEN', 'VMTC_MIGRATION_NOT_FOUND'],
      followMigration: ['VMTC_FORBIDDEN', 'VMTC_MIGRATION_NOT_FOUND', 'VMTC_EVENT_ID_INVALID'],
      followFleet: ['VMTC_FORBIDDEN', 'VMTC_EVENT_ID_INVALID'],
      cancelMigration: ['VMTC_FORBIDDEN', 'VMTC_MIGRATION_NOT_FOUND', 'VMTC_MIGRATION_NOT_CANCELLABLE', 'VMTC_ILLEGAL_TRANSITION'],
      tuneMigration: ['VMTC_FORBIDDEN', 'VMTC_MIGRATION_NOT_FOUND', 'VMTC_MIGRATION_NOT_TUNABLE', 'VMTC_AGENT_NOT_CONNECTED', 'VMTC_TIMEOUT'],
      forceCompleteMigration: ['VMTC_FORBIDDEN', 'VMTC_MIGRATION_NOT_FOUND', 'VMTC_MIGRATION_NOT_FORCEABLE', 'VMTC_AGENT_NOT_CONNECTED', 'VMTC_TIMEOUT'],
      listHosts: ['VMTC_FORBIDDEN'],
      getHost: ['VMTC_FORBIDDEN', 'VMTC_HOST_NOT_FOUND'],
      listVms: ['VMTC_FORBIDDEN'],
      startVm: [
        'VMTC_FORBIDDEN', 'VMTC_HOST_NOT_FOUND', 'VMTC_HOST_NOT_CONNECTED', 'VMTC_INSUFFICIENT_MEMORY', 'VMTC_INSUFFICIENT_DISK', 'VMTC_VM_TOO_LARGE',
        'VMTC_HOST_INSUFFICIENT_RESOURCES', 'VMTC_HOST_VM_EXISTS', 'VMTC_HOST_BAD_PARAMS', 'VMTC_AGENT_NOT_CONNECTED', 'VMTC_TIMEOUT', 'VMTC_RPC_SEND_FAILED',
      ],
      createCredential: ['VMTC_FORBIDDEN'],
      listCredentials: ['VMTC_FORBIDDEN'],
      revokeCredential: ['VMTC_FORBIDDEN', 'VMTC_CREDENTIAL_NOT_FOUND'],
      enrollAgent: ['VMTC_ENROLL_TOKEN_INVALID', 'VMTC_ENROLL_TOKEN_EXPIRED', 'VMTC_ENROLL_TOKEN_USED', 'VMTC_CSR_INVALID'],
      createEnrollmentToken: ['VMTC_FORBIDDEN', 'VMTC_HOST_ID_INVALID', 'VMTC_AGENT_KIND_CONFLICT'],
      listAgents: ['VMTC_FORBIDDEN'],
      revokeAgent: ['VMTC_FORBIDDEN', 'VMTC_AGENT_UNKNOWN'],
      getLiveness: [],
      getReadiness: ['VMTC_NOT_READY'],
      getMetrics: ['VMTC_FORBIDDEN'],
      // Monitoring and fleet plans (plan-routes.ts).
      getHostStats: ['VMTC_FORBIDDEN', 'VMTC_HOST_NOT_FOUND'],
      getVmProfile: ['VMTC_FORBIDDEN', 'VMTC_VM_NOT_FOUND'],
      getPlan: ['VMTC_FORBIDDEN'],
      runPlan: ['VMTC_FORBIDDEN'],
      // VM groups' migration policies (policy-routes.ts).
      listPolicies: ['VMTC_FORBIDDEN'],
      getPolicy: ['VMTC_FORBIDDEN', 'VMTC_POLICY_GROUP_NOT_FOUND'],
      putPolicy: ['VMTC_FORBIDDEN', 'VMTC_POLICY_INVALID'],
      deletePolicy: ['VMTC_FORBIDDEN', 'VMTC_POLICY_GROUP_NOT_FOUND'],
      // Evacuations and maintenance (evacuation-routes.ts).
      createEvacuation: ['VMTC_FORBIDDEN', 'VMTC_EVACUATION_TARGET_INVALID', 'VMTC_EVACUATION_CONFLICT'],
      listEvacuations: ['VMTC_FORBIDDEN'],
      getEvacuation: ['VMTC_FORBIDDEN', 'VMTC_EVACUATION_NOT_FOUND'],
      cancelEvacuation: ['VMTC_FORBIDDEN', 'VMTC_EVACUATION_NOT_FOUND', 'VMTC_EVACUATION_NOT_CANCELLABLE'],
      listMaintenance: ['VMTC_FORBIDDEN'],
      setHostMaintenance: ['VMTC_FORBIDDEN', 'VMTC_HOST_NOT_FOUND'],
      clearHostMaintenance: ['VMTC_FORBIDDEN', 'VMTC_HOST_NOT_FOUND', 'VMTC_EVACUATION_CONFLICT'],
      // Replicas (replica-routes.ts).
      createReplica: ['VMTC_FORBIDDEN', 'VMTC_VM_NOT_FOUND', 'VMTC_HOST_NOT_FOUND', 'VMTC_SAME_HOST', 'VMTC_HOST_NOT_CONNECTED'],
      listReplicas: ['VMTC_FORBIDDEN'],
      getReplica: ['VMTC_FORBIDDEN', 'VMTC_REPLICA_NOT_FOUND'],
      deleteReplica: ['VMTC_FORBIDDEN', 'VMTC_REPLICA_NOT_FOUND'],
    },
  },
  aaa: {
    catalogue: AAA_ERRORS,
    ops: {
      getJwks: [],
      getInfo: [],
      requestAuthorization: [
        'VMTC_AAA_PROOF_INVALID', 'VMTC_AAA_REQUESTER_UNKNOWN', 'VMTC_AAA_POLICY_DENIED', 'VMTC_AAA_QUOTA_EXCEEDED', 'VMTC_AAA_SITE_UNKNOWN',
        'VMTC_AAA_WINDOW_INVALID', 'VMTC_AAA_PEER_UNKNOWN', 'VMTC_AAA_PEER_REFUSED', 'VMTC_AAA_PEER_UNREACHABLE', 'VMTC_AAA_PEER_BAD_REPLY',
      ],
      checkPolicy: ['VMTC_AAA_PROOF_INVALID', 'VMTC_AAA_REQUESTER_UNKNOWN'],
      requestConsent: ['VMTC_AAA_CONSENT_UNAUTHENTICATED', 'VMTC_AAA_CONSENT_DENIED', 'VMTC_AAA_QUOTA_EXCEEDED'],
      withdrawConsent: ['VMTC_AAA_CONSENT_UNAUTHENTICATED', 'VMTC_AAA_GRANT_UNKNOWN'],
      reportAccountingEvent: ['VMTC_FORBIDDEN', 'VMTC_AAA_PROOF_INVALID', 'VMTC_AAA_REQUESTER_UNKNOWN', 'VMTC_AAA_GRANT_UNKNOWN'],
      listAccounting: ['VMTC_FORBIDDEN', 'VMTC_AAA_PROOF_INVALID', 'VMTC_AAA_REQUESTER_UNKNOWN'],
      rotateKeys: ['VMTC_FORBIDDEN'],
      getLiveness: [],
      getReadiness: ['VMTC_NOT_READY'],
      getMetrics: ['VMTC_FORBIDDEN'],
    },
  },
  broker: {
    catalogue: BROKER_ERRORS,
    ops: {
      reserve: [
        'VMTC_TOKEN_MISSING', 'VMTC_TOKEN_SCOPE', 'VMTC_DPOP_PROOF_INVALID', 'VMTC_PEER_NOT_TRUSTED', 'VMTC_UNKNOWN_ENDPOINT', 'VMTC_BAD_WINDOW',
        'VMTC_BAD_BANDWIDTH', 'VMTC_NO_PATH', 'VMTC_IDEMPOTENCY_KEY_REUSED', 'VMTC_PEER_SEGMENT_FAILED',
      ],
      listReservations: [],
      commitReservation: ['VMTC_NOT_HOLDER', 'VMTC_RESERVATION_NOT_FOUND', 'VMTC_ILLEGAL_TRANSITION', 'VMTC_COMMIT_FAILED'],
      abortReservation: ['VMTC_NOT_HOLDER', 'VMTC_RESERVATION_NOT_FOUND', 'VMTC_ILLEGAL_TRANSITION'],
      provisionReservation: ['VMTC_NOT_HOLDER', 'VMTC_RESERVATION_NOT_FOUND', 'VMTC_ILLEGAL_TRANSITION', 'VMTC_PROVISION_FAILED'],
      releaseReservation: ['VMTC_NOT_HOLDER', 'VMTC_RESERVATION_NOT_FOUND', 'VMTC_ILLEGAL_TRANSITION'],
      terminateReservation: ['VMTC_NOT_HOLDER', 'VMTC_RESERVATION_NOT_FOUND', 'VMTC_ILLEGAL_TRANSITION'],
      getReservationByKey: ['VMTC_DPOP_PROOF_INVALID', 'VMTC_RESERVATION_NOT_FOUND'],
      getReservation: ['VMTC_NOT_HOLDER', 'VMTC_TOKEN_NOT_BOUND', 'VMTC_RESERVATION_NOT_FOUND'],
      followEvents: [],
      getLiveness: [],
      getReadiness: ['VMTC_NOT_READY'],
      getMetrics: [],
    },
  },
};

describe.each(SERVICES)('the responses the %s documents', (name) => {
  it('cover every code each operation can answer with, 401 where it needs a credential, and 429 everywhere', () => {
    const { catalogue, ops } = CODES[name];
    const found = operations(docs.get(name)!);
    // Every operation is in the table (a new route adds its row), and nothing else is.
    expect(found.map(({ op }) => op.operationId).sort()).toEqual(Object.keys(ops).sort());
    const missing: string[] = [];
    for (const { where, op } of found) {
      const documented = new Set(Object.keys(op.responses ?? {}));
      const want = new Set<string>(['400', '429', '500']);
      if (op.security?.length) want.add('401');
      for (const code of ops[op.operationId!]!) {
        const spec = catalogue[code];
        if (!spec) missing.push(`${where}: ${code} is in no catalogue`);
        else want.add(String(spec.status));
      }
      for (const status of want) if (!documented.has(status)) missing.push(`${where} ${status}`);
    }
    expect(missing).toEqual([]);
  });
});
