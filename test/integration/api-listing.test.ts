// GET /v1/migrations against a real controller (port 0, real HTTP, SQLite in a temp dir): query
// parameters are coerced (`?limit=5` is a number, as `vmtc status --limit 5` sends it), pages of
// at most `limit` follow nextCursor past 100 without a repeat or a gap even while migrations are
// created between two pages, the filters (state, vmId, hostId, since, until) select what they
// say, and bad paging input is a coded 400. The records are written into the controller's own
// store (terminal ones, so nothing acts on them); the listing is read over HTTP.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startHarness, type Harness } from '../helpers/controller-harness.ts';
import type { MigrationRow } from '../../src/controller/store.ts';

let h: Harness;
const T0 = Date.parse('2031-03-01T00:00:00.000Z');
const STATES = ['completed', 'rolled_back', 'failed', 'cancelled'] as const;
const seeded: MigrationRow[] = [];

/** Write n terminal migration records, three to a millisecond (ties are ordered by id). */
function seed(n: number, from: number): void {
  for (let i = from; i < from + n; i++) {
    const row: MigrationRow = {
      id: `mig_${String(i).padStart(4, '0')}`, vmId: `vm-${i % 7}`, project: 'demo', sourceHostId: `h${i % 3}`, destinationHostId: `h${(i + 1) % 3}`,
      mode: 'live', state: STATES[i % 4]!, request: { vmId: `vm-${i % 7}`, destinationHostId: `h${(i + 1) % 3}`, mode: 'live' },
      ctx: { path: 'live' }, error: null, progress: null, createdAt: T0 + Math.floor(i / 3) * 1000, updatedAt: T0 + Math.floor(i / 3) * 1000,
    };
    h.controller.store.createMigration(row, null, null, { seeded: true });
    seeded.push(row);
  }
}

/** The seeded records a filter selects, in the list's order: newest first, then by id. */
function expected(f: (r: MigrationRow) => boolean = () => true): string[] {
  return seeded.filter(f).sort((a, b) => b.createdAt - a.createdAt || (a.id < b.id ? -1 : 1)).map((r) => r.id);
}

async function list(query: string): Promise<{ status: number; body: any }> {
  return h.api('GET', `/v1/migrations${query ? `?${query}` : ''}`);
}

/** Every page of a query, following nextCursor (bounded), with `between` run after the first page. */
async function allPages(query: string, between?: () => void): Promise<{ ids: string[]; pages: number }> {
  const ids: string[] = [];
  let cursor: string | undefined;
  let pages = 0;
  do {
    const r = await list([query, cursor ? `cursor=${encodeURIComponent(cursor)}` : ''].filter(Boolean).join('&'));
    expect(r.status).toBe(200);
    ids.push(...r.body.migrations.map((m: { id: string }) => m.id));
    cursor = r.body.nextCursor;
    pages++;
    if (pages === 1) between?.();
  } while (cursor && pages < 50);
  return { ids, pages };
}

beforeAll(async () => {
  h = await startHarness();
  seed(130, 0);
});
afterAll(async () => { await h?.close(); });

describe('GET /v1/migrations: paging', () => {
  it('takes ?limit=5 as a number: the 5 newest and a cursor to the rest', async () => {
    const r = await list('limit=5');
    expect(r.status).toBe(200);
    expect(r.body.migrations.map((m: { id: string }) => m.id)).toEqual(expected().slice(0, 5));
    expect(typeof r.body.nextCursor).toBe('string');
    // Records in a list come without their transitions.
    expect(r.body.migrations[0].transitions).toBeUndefined();
  });

  it('answers 50 by default, and at most 500', async () => {
    const def = await list('');
    expect(def.body.migrations).toHaveLength(50);
    expect(def.body.nextCursor).toBeDefined();
    const big = await list('limit=500');
    expect(big.body.migrations.map((m: { id: string }) => m.id)).toEqual(expected());
    expect(big.body.nextCursor).toBeUndefined();
  });

  it('pages past 100 with nextCursor: every record once, in order, even when newer ones are created between two pages', async () => {
    const before = expected();
    const { ids, pages } = await allPages('limit=40', () => seed(10, 1000));
    expect(pages).toBe(4);
    // The pages after the first hold exactly the older records: none repeated, none skipped.
    expect(ids).toEqual(before);
    // A fresh listing starts with the new ones.
    expect((await list('limit=10')).body.migrations.map((m: { id: string }) => m.id)).toEqual(expected().slice(0, 10));
  });

  it('refuses bad paging input with coded 400s', async () => {
    for (const q of ['limit=0', 'limit=501', 'limit=abc', 'limit=2.5', 'limit=', 'colour=red', 'state=teleporting', 'state=completed,', 'since=yesterday']) {
      const r = await list(q);
      expect({ q, status: r.status, code: r.body.code }).toEqual({ q, status: 400, code: 'VMTC_VALIDATION' });
    }
    for (const cursor of ['garbage', Buffer.from('[1,2,3]').toString('base64url'), Buffer.from('{"a":1}').toString('base64url')]) {
      const r = await list(`cursor=${cursor}`);
      expect({ cursor, status: r.status, code: r.body.code }).toEqual({ cursor, status: 400, code: 'VMTC_CURSOR_INVALID' });
    }
  });
});

describe('GET /v1/migrations: filters', () => {
  const at = (i: number) => new Date(T0 + i * 1000).toISOString();
  const cases: [string, (r: MigrationRow) => boolean][] = [
    ['state=completed', (r) => r.state === 'completed'],
    ['state=failed,cancelled', (r) => r.state === 'failed' || r.state === 'cancelled'],
    ['vmId=vm-3', (r) => r.vmId === 'vm-3'],
    ['hostId=h1', (r) => r.sourceHostId === 'h1' || r.destinationHostId === 'h1'],
    [`since=${at(10)}`, (r) => r.createdAt >= T0 + 10_000],
    [`until=${at(10)}`, (r) => r.createdAt < T0 + 10_000],
    [`since=${at(5)}&until=${at(20)}&hostId=h2&state=rolled_back,completed`, (r) => r.createdAt >= T0 + 5000 && r.createdAt < T0 + 20_000 && (r.sourceHostId === 'h2' || r.destinationHostId === 'h2') && (r.state === 'rolled_back' || r.state === 'completed')],
    ['vmId=nobody', () => false],
  ];
  it.each(cases)('%s selects what it says, a page at a time', async (query, f) => {
    const want = expected(f);
    const { ids } = await allPages(`${query}&limit=7`);
    expect(ids).toEqual(want);
    const one = await list(`${query}&limit=500`);
    expect(one.body.migrations.map((m: { id: string }) => m.id)).toEqual(want);
  });
});
