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

type Doc = {
  openapi: string;
  paths: Record<string, Record<string, Operation>>;
  components?: { schemas?: Record<string, unknown> };
};
type Media = { schema?: unknown };
type Operation = {
  operationId?: string;
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
