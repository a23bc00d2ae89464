// Shared by the hub tests: a hub per test (real fastify, wss + mutual TLS, SQLite) and temp dirs,
// both undone after each test. Not a test file itself.
import { rmSync } from 'node:fs';
import { cleanupsAfterEach, type Cleanup } from './cleanups.ts';
import { startHub, tempDir, type HubFixture } from './agent-fixture.ts';

/** Call once at the top of a test file. */
export function useHubFixtures(): { cleanups: Cleanup[]; hubFixture(o?: Parameters<typeof startHub>[0]): Promise<HubFixture>; dir(): string } {
  const cleanups = cleanupsAfterEach();
  return {
    cleanups,
    async hubFixture(o = {}) {
      const f = await startHub(o);
      cleanups.push(() => f.close());
      return f;
    },
    dir() {
      const d = tempDir();
      cleanups.push(() => rmSync(d, { recursive: true, force: true }));
      return d;
    },
  };
}
