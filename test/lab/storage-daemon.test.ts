// The host agent's qemu-storage-daemon (agents/host/disks/qemu-images.ts startStorageDaemon), for
// real: run in the agent's network namespace (the lab's agents run in the root namespace while
// their guests and lightpath addresses are in the site's: a replica store must listen there), and
// started under a data directory too deep for a unix socket's 108-byte path (its sockets then go
// to a short directory of their own, removed when it stops).
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startStorageDaemon, type StorageDaemon } from '../../agents/host/disks/qemu-images.ts';
import { systemClock } from '../../src/common/clock.ts';
import { exec, shortId } from './qemu-helpers.ts';

const NS = `vmtc-qsd-${shortId()}`;
// A documentation address (TEST-NET-1) that exists only inside the test's namespace.
const ADDR = '192.0.2.77';
const PORT = 10809;

/** Whether something listens on ADDR:PORT in `ns` (or the root namespace): read from the
 *  sockets table, no packet sent. */
async function listening(ns: string | null): Promise<boolean> {
  const { stdout } = ns ? await exec('ip', ['netns', 'exec', ns, 'ss', '-ltnH']) : await exec('ss', ['-ltnH']);
  return stdout.split('\n').some((l) => l.includes(`${ADDR}:${PORT}`));
}

describe('qemu-storage-daemon as the agent starts it', () => {
  let tmp: string;
  const daemons: StorageDaemon[] = [];

  beforeAll(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'vmtc-qsd-test-'));
    await exec('ip', ['netns', 'add', NS]);
    await exec('ip', ['-n', NS, 'link', 'set', 'lo', 'up']);
    await exec('ip', ['-n', NS, 'addr', 'add', `${ADDR}/32`, 'dev', 'lo']);
  });

  afterAll(async () => {
    for (const d of daemons) await d.stop().catch(() => undefined);
    await exec('ip', ['netns', 'del', NS]).catch(() => undefined);
    await rm(tmp, { recursive: true, force: true });
  });

  it('with netns, exports on an address only that namespace has; stopping ends it', async () => {
    const image = join(tmp, 'store.qcow2');
    await exec('qemu-img', ['create', '-q', '-f', 'qcow2', image, '16M']);
    const dir = join(tmp, 'ns-export');
    await mkdir(dir);
    const d = await startStorageDaemon({ image, format: 'qcow2', dir, clock: systemClock, exportName: 'x', nbd: { type: 'inet', host: ADDR, port: PORT }, netns: NS });
    daemons.push(d);
    // `ip netns exec` execs the daemon: the pid is the daemon's own, in the namespace.
    const { stdout } = await exec('ip', ['netns', 'identify', String(d.pid)]);
    expect(stdout.trim()).toBe(NS);
    expect(await listening(NS)).toBe(true);
    expect(await listening(null)).toBe(false);
    await d.stop();
    expect(await listening(NS)).toBe(false);
  });

  it('under a directory too deep for a unix socket, its sockets go to a short directory that stop() removes', async () => {
    const image = join(tmp, 'deep.qcow2');
    await exec('qemu-img', ['create', '-q', '-f', 'qcow2', image, '16M']);
    const dir = join(tmp, 'a-directory-name-long-enough'.repeat(3), 'and-one-more-level-below-it', '.vmtc-export-XXXXXX');
    await mkdir(dir, { recursive: true });
    expect(Buffer.byteLength(join(dir, 'qsd-nbd.sock'))).toBeGreaterThan(108);
    const d = await startStorageDaemon({ image, format: 'qcow2', dir, clock: systemClock, exportName: 'x', nbd: { type: 'unix' } });
    daemons.push(d);
    expect(Buffer.byteLength(d.nbdSocket!)).toBeLessThan(108);
    expect(Buffer.byteLength(d.qmpSocket)).toBeLessThan(108);
    expect(existsSync(d.nbdSocket!)).toBe(true);
    // The export answers on it: qemu-img reads the image's size through NBD.
    const { stdout } = await exec('qemu-img', ['info', '--output=json', `nbd+unix:///x?socket=${d.nbdSocket}`]);
    expect(JSON.parse(stdout)['virtual-size']).toBe(16 * 1024 * 1024);
    await d.stop();
    expect(existsSync(dirname(d.qmpSocket))).toBe(false);
  });
});
