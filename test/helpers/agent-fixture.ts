// Shared set-up for the hub/agent tests (not a test file): a real AgentHub (mTLS wss on port 0,
// CA in a mkdtemp dir, SQLite file) plus the enrolment routes on a real fastify server.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';
import type { FastifyInstance } from 'fastify';
import { openDb, type Db } from '../../src/common/db.ts';
import { buildHttp, baseUrl } from '../../src/common/http.ts';
import { commonError } from '../../src/common/errors.ts';
import { silentLogger, type Logger } from '../../src/common/log.ts';
import type { Clock } from '../../src/common/clock.ts';
import { AgentHub } from '../../src/controller/hub.ts';
import { registerEnrollRoutes } from '../../src/controller/enroll-routes.ts';

export const ADMIN = { authorization: 'Bearer test-admin' };

export interface HubFixture {
  hub: AgentHub;
  app: FastifyInstance;
  db: Db;
  dir: string;
  controllerUrl: string;
  /** Close hub and app (not the db/dir), e.g. to restart on the same data. */
  stop(): Promise<void>;
  /** Close everything and remove the dir. */
  close(): Promise<void>;
}

export async function startHub(o: { dir?: string; port?: number; clock?: Clock; heartbeatMs?: number; requestTimeoutMs?: number; logger?: Logger; db?: Db } = {}): Promise<HubFixture> {
  const dir = o.dir ?? mkdtempSync(join(tmpdir(), 'vmtc-hub-'));
  const db = o.db ?? openDb(join(dir, 'controller.db'), []);
  const logger = o.logger ?? silentLogger();
  let hub: AgentHub | undefined;
  let app: FastifyInstance | undefined;
  const stop = async () => {
    await app?.close();
    await hub?.close();
  };
  try {
    hub = await AgentHub.start({
      logger, db, dataDir: dir, listen: { host: '127.0.0.1', port: o.port ?? 0 },
      ...(o.clock ? { clock: o.clock } : {}),
      ...(o.heartbeatMs ? { heartbeatMs: o.heartbeatMs } : {}),
      ...(o.requestTimeoutMs ? { requestTimeoutMs: o.requestTimeoutMs } : {}),
    });
    app = await buildHttp({ logger, title: 'hub test' });
    registerEnrollRoutes(app, hub, {
      requireAdmin: async (req) => {
        if (req.headers.authorization !== ADMIN.authorization) throw commonError('VMTC_UNAUTHENTICATED');
      },
    });
    await app.listen({ host: '127.0.0.1', port: 0 });
  } catch (e) {
    await stop().catch(() => {});
    if (!o.db) db.close();
    if (!o.dir) rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  return {
    hub, app, db, dir, controllerUrl: baseUrl(app), stop,
    async close() {
      await stop();
      if (db.open) db.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export function tempDir(prefix = 'vmtc-agent-'): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

/** Wait for an emitter event whose arguments satisfy `pred` (rejects after timeoutMs). */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export async function waitFor(em: NodeJS.EventEmitter, event: string, pred: (...args: any[]) => boolean = () => true, timeoutMs = 10_000): Promise<any[]> {
  return new Promise<any[]>((resolve, reject) => {
    const t = setTimeout(() => {
      em.off(event, h);
      reject(new Error(`timed out waiting for '${event}'`));
    }, timeoutMs);
    const h = (...args: unknown[]) => {
      if (!pred(...args)) return;
      clearTimeout(t);
      em.off(event, h);
      resolve(args);
    };
    em.on(event, h);
  });
}

/** Poll until fn() is truthy. */
export async function until<T>(fn: () => T | Promise<T>, timeoutMs = 10_000, what = 'condition'): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export { once };
