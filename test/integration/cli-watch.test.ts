// Following a migration from the command line over the controller's event stream: `vmtc status
// ID --watch` and `vmtc watch ID` as real processes against a real controller with DoubleDriver
// host agents (the hypervisor test double). Host D's guests dirty memory faster than the
// migrations' 20 Mbit/s, so a copy from D never converges by itself: each test decides when it
// ends (`vmtc tune`, `vmtc force-complete`, `vmtc cancel`), and the watcher is surely attached
// while it runs. The record (GET /v1/migrations/:id) is the reference for what must be shown.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { startHarness, vmSpec, type Harness } from '../helpers/controller-harness.ts';
import { cleanupsAfterEach } from '../helpers/cleanups.ts';
import { cliEnv, runCli, startCli } from '../helpers/cli-run.ts';
import { fmtElapsed } from '../../src/cli/client/format.ts';
import { followEvents } from '../../src/cli/client/events.ts';
import { freePort } from '../helpers/proc.ts';

const cleanups = cleanupsAfterEach();
let h: Harness | undefined;

beforeAll(async () => {
  h = await startHarness();
  await h.addHost('A', { vms: [vmSpec('vm1')] });
  await h.addHost('B');
  await h.addHost('D', { vms: ['d1', 'd2', 'd3', 'd4'].map((v) => vmSpec(v, { memoryMb: 512 })), bytesPerMb: 16 * 1024, dirtyMbps: 50 });
});
afterAll(async () => { await h?.close(); });

const env = (extra: Record<string, string | undefined> = {}) => cliEnv({ url: h!.controller.url, token: h!.controller.adminToken }, extra);

/** A migration from D that copies until someone ends it. */
async function stuckMigration(vmId: string): Promise<string> {
  const r = await h!.api('POST', '/v1/migrations', { vmId, destinationHostId: 'B', bandwidthMbps: 20 });
  expect(r.status).toBe(202);
  const id = r.body.id as string;
  cleanups.push(async () => {
    // Whatever the test did, leave nothing running for the next one.
    const cur = (await h!.api('GET', `/v1/migrations/${id}`)).body;
    if (!cur.terminal) await h!.api('POST', `/v1/migrations/${id}/cancel`);
    await h!.waitState(id, ['completed', 'cancelled', 'rolled_back', 'failed'], 30_000);
  });
  return id;
}

/** The state lines a watcher must print for a record: every transition once, in order, at its recorded offset. */
function expectedStateLines(m: { createdAt: string; transitions: { to: string; at: string }[] }): string[] {
  const t0 = Date.parse(m.createdAt);
  return m.transitions.map((t) => `[${fmtElapsed(Date.parse(t.at) - t0)}] ${t.to}`);
}

const stateLines = (stderr: string) => stderr.split('\n').filter((l) => /^\[\+[\d.]+s\] [a-z_]+$/.test(l));

describe('vmtc status ID --watch / vmtc watch ID', () => {
  it('--watch shows exactly the transitions of the record, with their recorded times, and the operator\'s tune; exit 0', async () => {
    const id = await stuckMigration('d1');
    const w = startCli(['status', id, '--watch'], env(), cleanups);
    await h!.waitFor(() => w.stderr().includes('] precopy\n'), () => `the watcher shows precopy; stderr:\n${w.stderr()}`, 30_000);
    const tuned = await runCli(['tune', id, '--bandwidth-mbps', '4000'], env(), cleanups);
    expect(tuned).toMatchObject({ code: 0 });
    expect(tuned.stdout).toMatch(new RegExp(`^tuned \\(bandwidth 4000 Mbit/s\\) for migration ${id}`));
    const code = await w.exited;
    expect({ code, stderr: w.stderr() }).toMatchObject({ code: 0 });
    const rec = (await h!.api('GET', `/v1/migrations/${id}`)).body;
    expect(rec.state).toBe('completed');
    expect(stateLines(w.stderr())).toEqual(expectedStateLines(rec));
    expect(w.stderr().match(/\] tune bandwidthMbps=4000 by admin/g)).toHaveLength(1);
    expect(w.stdout()).toMatch(new RegExp(`^migration ${id} completed`, 'm'));
    // Not a terminal: plain lines, no control codes.
    expect(w.stderr()).not.toMatch(/\x1b|\r/);
  });

  it('a dropped stream is resumed with Last-Event-ID: nothing missed, nothing twice', async () => {
    const id = await stuckMigration('d2');
    const proxy = await cuttingProxy(h!.controller.url);
    cleanups.push(() => proxy.close());
    const w = startCli(['watch', id], env({ VMTC_CONTROLLER: proxy.url }), cleanups);
    // The proxy cuts the first event stream once the snapshot (which has an id) went through.
    await h!.waitFor(() => proxy.cuts >= 1, () => `the proxy cut the stream; stderr:\n${w.stderr()}`, 30_000);
    const forced = await runCli(['force-complete', id, '--mode', 'pause'], env(), cleanups);
    expect(forced).toMatchObject({ code: 0 });
    const code = await w.exited;
    expect({ code, stderr: w.stderr() }).toMatchObject({ code: 0 });
    const rec = (await h!.api('GET', `/v1/migrations/${id}`)).body;
    expect(stateLines(w.stderr())).toEqual(expectedStateLines(rec));
    expect(w.stderr()).toMatch(/vmtc: VMTC_PEER_UNREACHABLE: the event stream .* broke off.*; reconnecting/);
    const streams = proxy.requests.filter((r) => r.startsWith(`GET /v1/migrations/${id}/events`));
    expect(streams.length).toBeGreaterThanOrEqual(2);
    expect(streams[0]).not.toMatch(/^last-event-id:/im);
    expect(streams[1]).toMatch(/^last-event-id: \d+/im);
    expect(w.stderr().match(/\] force-complete \(pause\) by admin/g)).toHaveLength(1);
  });

  it('Ctrl-C stops following (exit 130) and the migration goes on; watching it again to its cancel exits 3', async () => {
    const id = await stuckMigration('d3');
    const w = startCli(['watch', id], env(), cleanups);
    await h!.waitFor(() => w.stderr().includes('] precopy\n'), () => `the watcher shows precopy; stderr:\n${w.stderr()}`, 30_000);
    w.child.kill('SIGINT');
    expect(await w.exited).toBe(130);
    expect(w.stderr()).toContain(`stopped following; migration ${id} goes on`);
    expect((await h!.api('GET', `/v1/migrations/${id}`)).body.state).toBe('precopy');
    const again = startCli(['status', id, '-w'], env(), cleanups);
    await h!.waitFor(() => again.stderr().includes('] precopy\n'), () => `the second watcher shows precopy; stderr:\n${again.stderr()}`, 30_000);
    expect((await runCli(['cancel', id], env(), cleanups)).code).toBe(0);
    expect(await again.exited).toBe(3);
    const rec = (await h!.api('GET', `/v1/migrations/${id}`)).body;
    expect(rec.state).toBe('cancelled');
    expect(stateLines(again.stderr())).toEqual(expectedStateLines(rec));
    expect(again.stdout()).toMatch(/^error: VMTC_CANCELLED/m);
  });

  it('migrate --no-wait, then watch -o json: the final record as the API has it', async () => {
    const started = await runCli(['migrate', 'vm1', '--to', 'B', '--no-wait'], env(), cleanups);
    expect(started.code).toBe(0);
    const id = started.stdout.trim();
    expect(started.stderr).toContain(`follow it with: vmtc watch ${id}`);
    const w = await runCli(['watch', id, '-o', 'json'], env(), cleanups);
    expect(w.code).toBe(0);
    const rec = (await h!.api('GET', `/v1/migrations/${id}`)).body;
    expect(JSON.parse(w.stdout)).toEqual(rec);
    expect(stateLines(w.stderr)).toEqual(expectedStateLines(rec));
  });

  it('watching a migration that does not exist, or without a credential, is the API\'s error, exit 1', async () => {
    const nf = await runCli(['watch', 'mig_nope'], env(), cleanups);
    expect(nf.code).toBe(1);
    expect(nf.stderr).toMatch(/^vmtc: VMTC_MIGRATION_NOT_FOUND: /m);
    const un = await runCli(['status', 'mig_nope', '--watch'], env({ VMTC_TOKEN: 'vmtc_wrong' }), cleanups);
    expect(un.code).toBe(1);
    expect(un.stderr).toMatch(/^vmtc: VMTC_UNAUTHENTICATED: /m);
    const usage = await runCli(['status', '--watch'], env(), cleanups);
    expect(usage.code).toBe(2);
    expect(usage.stderr).toMatch(/^error VMTC_CONFIG_INVALID: vmtc status: --watch follows one migration/m);
  });
});

describe('the event stream client', () => {
  it('gives up on a stream that stays unreachable, and on one that is accepted and dropped again and again; a refusal at once', async () => {
    const config = (url: string, token?: string) => ({ baseUrl: url, token });
    const nobody = `http://127.0.0.1:${await freePort()}`;
    const retries: number[] = [];
    await expect(followEvents(config(nobody), '/v1/migrations/x/events', { onEvent: () => true, onRetry: (_e, n) => { retries.push(n); }, retryMs: 20, maxRetryMs: 40, giveUpMs: 300 }))
      .rejects.toMatchObject({ code: 'VMTC_PEER_UNREACHABLE' });
    expect(retries.length).toBeGreaterThan(1);
    expect(retries).toEqual(retries.map((_, i) => i + 1));

    const rude = createServer((s) => s.destroy());
    await new Promise<void>((r) => rude.listen(0, '127.0.0.1', () => r()));
    cleanups.push(() => new Promise<void>((r) => rude.close(() => r())));
    await expect(followEvents(config(`http://127.0.0.1:${(rude.address() as { port: number }).port}`), '/x', { onEvent: () => true, retryMs: 20, maxRetryMs: 40, giveUpMs: 300 }))
      .rejects.toMatchObject({ code: 'VMTC_PEER_UNREACHABLE' });

    let calls = 0;
    await expect(followEvents(config(h!.controller.url, 'vmtc_wrong'), '/v1/migrations/x/events', { onEvent: () => true, onRetry: () => { calls++; }, retryMs: 20, giveUpMs: 300 }))
      .rejects.toMatchObject({ code: 'VMTC_UNAUTHENTICATED' });
    expect(calls).toBe(0);
  });
});

/**
 * A TCP proxy in front of the controller that cuts the first event stream right after the
 * snapshot went through (as a restarting controller or a proxy's idle timeout would), and keeps
 * the head of every request it relayed.
 */
async function cuttingProxy(target: string): Promise<{ url: string; cuts: number; requests: string[]; close(): Promise<void> }> {
  const t = new URL(target);
  const sockets = new Set<Socket>();
  const state = { cuts: 0, requests: [] as string[] };
  const server: Server = createServer((client) => {
    const upstream = connect(Number(t.port), t.hostname);
    sockets.add(client).add(upstream);
    let head = '';
    let isStream = false;
    let cutThis = false;
    client.on('data', (d: Buffer) => {
      if (!head.includes('\r\n\r\n')) {
        head += d.toString('latin1');
        if (head.includes('\r\n\r\n')) {
          state.requests.push(head.split('\r\n\r\n')[0]!);
          isStream = /^GET \/v1\/migrations\/[^/\s]+\/events/.test(head);
          cutThis = isStream && state.cuts === 0;
        }
      }
      upstream.write(d);
    });
    let seen = '';
    upstream.on('data', (d: Buffer) => {
      client.write(d);
      if (!cutThis) return;
      seen += d.toString('utf8');
      const snapshotEnd = seen.indexOf('\n\n', seen.indexOf('event: snapshot'));
      if (seen.includes('event: snapshot') && snapshotEnd >= 0) {
        cutThis = false;
        state.cuts++;
        client.destroy();
        upstream.destroy();
      }
    });
    const close = () => { client.destroy(); upstream.destroy(); };
    client.on('error', close).on('close', close);
    upstream.on('error', close).on('close', close);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as { port: number }).port;
  return {
    url: `http://127.0.0.1:${port}`,
    get cuts() { return state.cuts; },
    requests: state.requests,
    close: () => new Promise<void>((r) => { for (const s of sockets) s.destroy(); server.close(() => r()); }),
  };
}
