// The client verbs (`vmtc migrate|status|cancel|hosts|vms`) as real processes (`node bin/vmtc.js`)
// against a real controller with in-process host agents (DoubleDriver, the hypervisor test
// double) over real mutual-TLS links. One harness for the file; every spawned process is killed
// after its test and the harness closed after the file, also when a test fails halfway.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startHarness, vmSpec, type Harness } from '../helpers/controller-harness.ts';
import { cleanupsAfterEach } from '../helpers/cleanups.ts';
import { freePort } from '../helpers/proc.ts';
import { cliEnv, startCli, type CliRun } from '../helpers/cli-run.ts';
import { migrationBody, parseHostPort } from '../../src/cli/client/commands.ts';
import { UsageError } from '../../src/cli/client/http.ts';
import { fmtProgress, formatSummary, type MigrationView } from '../../src/cli/client/format.ts';
import { watchMigration } from '../../src/cli/client/watch.ts';
import { ApiClient } from '../../src/cli/client/http.ts';
import { EventEmitter } from 'node:events';

const cleanups = cleanupsAfterEach();
let h: Harness | undefined;
let tmp: string | undefined;

beforeAll(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'vmtc-cli-'));
  h = await startHarness();
  await h.addHost('A', { vms: [vmSpec('vm1'), vmSpec('vm2')] });
  await h.addHost('B');
  // A slow source: 2 GiB of guest memory at 64 KiB per MB, sent at 2 Mbit/s, takes minutes.
  await h.addHost('S', { vms: [vmSpec('slow', { memoryMb: 2048 })], bytesPerMb: 64 * 1024 });
});
afterAll(async () => {
  await h?.close();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

/** `node bin/vmtc.js ARGS` with the harness's controller and admin token in the environment. */
function cli(args: string[], env: Record<string, string | undefined> = {}): CliRun {
  return startCli(args, cliEnv({ url: h!.controller.url, token: h!.controller.adminToken }, env), cleanups);
}

async function run(args: string[], env?: Record<string, string | undefined>) {
  const r = cli(args, env);
  const code = await r.exited;
  return { code, stdout: r.stdout(), stderr: r.stderr() };
}

async function vmsNamed(vmId: string): Promise<any[]> {
  return (await h!.api('GET', '/v1/vms')).body.vms.filter((v: any) => v.vmId === vmId);
}

const noStack = /\n\s+at .+:\d+:\d+/;

describe('vmtc migrate', () => {
  it('waits for the migration, shows its states, prints a summary naming completed, exits 0; the VM ends at the destination', async () => {
    const r = await run(['migrate', 'vm1', '--to', 'B', '--max-downtime-ms', '300']);
    expect({ code: r.code, stderr: r.stderr }).toMatchObject({ code: 0 });
    expect(r.stdout).toMatch(/^migration mig\S* completed/m);
    expect(r.stdout).toMatch(/^steps:/m);
    expect(r.stdout).toMatch(/^\s+precopy\s+\d/m);
    expect(r.stdout).toMatch(/^result: .*transferred/m);
    for (const s of ['prechecking', 'precopy', 'stopcopy', 'completed']) expect(r.stderr).toContain(`] ${s}\n`);
    await h!.waitFor(async () => {
      const l = await vmsNamed('vm1');
      return l.length === 1 && l[0].hostId === 'B' && l[0].state === 'running';
    }, 'vm1 only at B');
  });

  it('--json prints the API record (id, state) and nothing else on stdout', async () => {
    const r = await run(['migrate', 'vm2', '--to', 'B', '--json']);
    expect(r.code).toBe(0);
    const m = JSON.parse(r.stdout);
    expect(m.id).toMatch(/^mig/);
    expect(m.state).toBe('completed');
    expect(m.vmId).toBe('vm2');
    const api = (await h!.api('GET', `/v1/migrations/${m.id}`)).body;
    expect(api.state).toBe('completed');
  });

  it('--no-wait returns the id at once; status of that id shows its transitions; status lists it', async () => {
    const r = await run(['migrate', 'vm1', '--to', 'A', '--no-wait']);
    expect(r.code).toBe(0);
    const id = r.stdout.trim();
    expect(id).toMatch(/^mig\S+$/);
    // Returned before the end: the record it printed was the 202's, not a terminal one.
    expect(r.stderr).toMatch(/accepted \(prechecking\)/);
    await h!.waitState(id, ['completed']);
    const s = await run(['status', id]);
    expect(s.code).toBe(0);
    expect(s.stdout).toContain(`migration ${id}`);
    expect(s.stdout).toMatch(/^transitions:/m);
    for (const st of ['prechecking', 'precopy', 'completed']) expect(s.stdout).toMatch(new RegExp(`-> ${st}\\s`));
    expect(s.stdout).toMatch(/route\s+B -> A/);
    const list = await run(['status', '--vm', 'vm1']);
    expect(list.code).toBe(0);
    expect(list.stdout).toMatch(new RegExp(`^${id}\\s+vm1\\s+B\\s+A\\s+live\\s+completed`, 'm'));
    const js = JSON.parse((await run(['status', '--vm', 'vm1', '--json'])).stdout);
    expect(js).toEqual((await h!.api('GET', '/v1/migrations?vmId=vm1')).body);
  });

  it('Ctrl-C during a slow migration cancels it: cancelled, exit 3, the VM still at the source', async () => {
    const p = cli(['migrate', 'slow', '--to', 'B', '--bandwidth-mbps', '2']);
    // The first progress line (bytes copied of total) shows the copy is under way.
    await h!.waitFor(() => /precopy\s+\d+%\s+[\d.]+\/[\d.]+ [KMG]iB/.test(p.stderr()), () => `a precopy progress line; stderr so far:\n${p.stderr()}`);
    p.child.kill('SIGINT');
    const code = await p.exited;
    expect({ code, stdout: p.stdout(), stderr: p.stderr() }).toMatchObject({ code: 3 });
    expect(p.stderr()).toContain('cancel requested');
    expect(p.stdout()).toMatch(/^migration mig\S* cancelled/m);
    expect(p.stdout()).toMatch(/^error: VMTC_CANCELLED/m);
    await h!.waitFor(async () => {
      const l = await vmsNamed('slow');
      return l.length === 1 && l[0].hostId === 'S' && l[0].state === 'running';
    }, 'slow running only at S');
  });
});

describe('waiting for a migration (in process)', () => {
  it('a second Ctrl-C stops waiting at once, after the first asked for a cancel; the migration goes on to its end', async () => {
    const post = await h!.api('POST', '/v1/migrations', { vmId: 'slow', destinationHostId: 'B', bandwidthMbps: 2 });
    expect(post.status).toBe(202);
    const id = post.body.id as string;
    try {
      const signals = new EventEmitter();
      let err = '';
      const client = new ApiClient({ baseUrl: h!.controller.url, token: h!.controller.adminToken });
      const watching = watchMigration(client, post.body as MigrationView, { err: { write: (s: string) => { err += s; } }, signals: signals as any });
      await h!.waitFor(() => err.includes('] precopy'), () => `precopy shown; got:\n${err}`);
      signals.emit('SIGINT');
      signals.emit('SIGINT');
      const r = await watching;
      expect(r.kind).toBe('detached');
      expect(err).toContain('cancel requested');
      expect(err).toContain('stopped waiting');
      // The handler is gone, so a third Ctrl-C would take its default course (end the process).
      expect(signals.listenerCount('SIGINT')).toBe(0);
      // The cancel that the first Ctrl-C asked for still happens, without anyone waiting.
      expect((await h!.waitState(id, ['cancelled', 'completed', 'rolled_back', 'failed'])).state).toBe('cancelled');
    } finally {
      await h!.api('POST', `/v1/migrations/${id}/cancel`);
      await h!.waitState(id, ['cancelled', 'completed', 'rolled_back', 'failed']);
      // Agents report the destination's cleanup asynchronously; later tests compare listings.
      await h!.waitFor(async () => {
        const l = await vmsNamed('slow');
        return l.length === 1 && l[0].hostId === 'S' && l[0].state === 'running';
      }, 'slow running only at S');
    }
  });
});

describe('vmtc hosts / vms', () => {
  it('list what the API lists, as tables and as JSON; one host in detail with per-project use', async () => {
    const api = (await h!.api('GET', '/v1/vms')).body;
    const vj = await run(['vms', '--json']);
    expect(vj.code).toBe(0);
    expect(JSON.parse(vj.stdout)).toEqual(api);
    const vt = await run(['vms']);
    expect(vt.code).toBe(0);
    for (const v of api.vms) expect(vt.stdout).toMatch(new RegExp(`^${v.vmId}\\s+${v.hostId}\\s+${v.state}\\s+${v.project}\\s+${v.vcpus}\\s+${v.memoryMb}`, 'm'));
    expect(vt.stdout.trim().split('\n')).toHaveLength(api.vms.length + 1);

    const hostsApi = (await h!.api('GET', '/v1/hosts')).body.hosts;
    const hj = await run(['hosts', '--json']);
    expect(JSON.parse(hj.stdout).hosts.map((x: any) => x.hostId).sort()).toEqual(hostsApi.map((x: any) => x.hostId).sort());
    const ht = await run(['hosts']);
    expect(ht.code).toBe(0);
    for (const x of hostsApi) {
      expect(ht.stdout).toMatch(new RegExp(`^${x.hostId}\\s+${x.site}\\s+yes\\s+${x.hypervisor.type} ${x.hypervisor.version}\\s+${x.used.vcpus}/${x.held.vcpus}/${x.available.vcpus}\\s+${x.used.memoryMb}/${x.held.memoryMb}/${x.available.memoryMb}`, 'm'));
    }
    // With the credential from a file instead of the environment.
    const tokenFile = join(tmp!, 'token');
    writeFileSync(tokenFile, h!.controller.adminToken + '\n', { mode: 0o600 });
    const one = await run(['hosts', 'A', '--token-file', tokenFile], { VMTC_TOKEN: undefined });
    expect(one.code).toBe(0);
    expect(one.stdout).toMatch(/^host A$/m);
    expect(one.stdout).toMatch(/^PROJECT\s+VMS/m);
    expect(one.stdout).toMatch(/^demo\s+\d+/m);
    const missing = await run(['hosts', 'ZZ']);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/^vmtc: VMTC_HOST_NOT_FOUND: /m);
  });
});

describe('vmtc client errors', () => {
  it('a bad token exits 1 with VMTC_UNAUTHENTICATED (and the error body with --json)', async () => {
    const r = await run(['vms'], { VMTC_TOKEN: 'vmtc_not-a-credential' });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^vmtc: VMTC_UNAUTHENTICATED: /m);
    const j = await run(['status', '--json'], { VMTC_TOKEN: 'vmtc_not-a-credential' });
    expect(j.code).toBe(1);
    expect(JSON.parse(j.stdout).code).toBe('VMTC_UNAUTHENTICATED');
  });

  it('an unknown VM exits 1 with VMTC_VM_NOT_FOUND and its details', async () => {
    const r = await run(['migrate', 'nope', '--to', 'B']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^vmtc: VMTC_VM_NOT_FOUND: /m);
    const j = await run(['migrate', 'nope', '--to', 'B', '--json']);
    expect(j.code).toBe(1);
    expect(JSON.parse(j.stdout)).toMatchObject({ code: 'VMTC_VM_NOT_FOUND', details: { vmId: 'nope' } });
  });

  it('an unreachable controller gets a message naming its URL, no stack trace, exit 1', async () => {
    const url = `http://127.0.0.1:${await freePort()}`;
    const r = await run(['migrate', 'vm1', '--to', 'B'], { VMTC_CONTROLLER: url });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`cannot reach the controller at ${url}`);
    expect(r.stderr).toContain('ECONNREFUSED');
    expect(r.stderr).not.toMatch(noStack);
    expect(r.stdout).toBe('');
  });

  it('usage errors exit 2 with a hint to --help; --help lists the verbs', async () => {
    const r = await run(['migrate', 'vm1', '--to', 'B', '--to-site', 'site-B']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('--to-site chooses among the hosts at a site: not with --to HOST_ID');
    expect(r.stderr).toContain("see 'vmtc migrate --help'");
    const bad = await run(['migrate', 'vm1', '--to', 'B', '--bandwidth-mbps', 'fast']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('--bandwidth-mbps');
    // The common parser's refusals (unknown option, option without its value) are usage errors too.
    for (const argv of [['vms', '--bogus'], ['migrate', 'vm1', '--to']]) {
      const u = await run(argv);
      expect(u.code).toBe(2);
      expect(u.stderr).toContain(`see 'vmtc ${argv[0]} --help'`);
    }
    const help = await run(['--help']);
    expect(help.code).toBe(0);
    for (const v of ['migrate', 'status', 'cancel', 'hosts', 'vms']) expect(help.stdout).toMatch(new RegExp(`^  ${v}\\s+\\S`, 'm'));
  });
});

describe('client verbs: pure parts', () => {
  it('builds the request body from the options and refuses bad values as usage errors', () => {
    expect(migrationBody({ to: 'B', mode: 'cold', 'max-downtime-ms': '300', 'bandwidth-mbps': '2.5', deadline: '2030-01-01T12:00:00Z', 'request-id': 'r1', postcopy: true, multifd: true, 'auto-converge': true, 'verify-tcp': '10.1.1.5:7' }, 'vm1')).toEqual({
      vmId: 'vm1', destinationHostId: 'B', mode: 'cold', maxDowntimeMs: 300, bandwidthMbps: 2.5, deadline: '2030-01-01T12:00:00.000Z', requestId: 'r1',
      postcopy: true, multifd: true, autoConverge: true, verifyTcp: { host: '10.1.1.5', port: 7 },
    });
    expect(parseHostPort('[::1]:22', 'x')).toEqual({ host: '::1', port: 22 });
    // Without --to the controller chooses (docs/fleet.md "Placement"), among --to-site's hosts if given.
    expect(migrationBody({}, 'vm1')).toEqual({ vmId: 'vm1' });
    expect(migrationBody({ 'to-site': ['s1', 's2'] }, 'vm1')).toEqual({ vmId: 'vm1', toSites: ['s1', 's2'] });
    for (const o of [{ to: 'B', 'to-site': ['s1'] }, { 'to-site': ['s1', 's1'] }, { to: 'B', mode: 'warp' }, { to: 'B', 'max-downtime-ms': '0' }, { to: 'B', deadline: 'tomorrow' }, { to: 'B', 'verify-tcp': 'host' }]) {
      expect(() => migrationBody(o, 'vm1')).toThrow(UsageError);
    }
  });

  it('formats progress and a summary from the API record', () => {
    expect(fmtProgress('precopy', { totalBytes: 4 * 1048576, transferredBytes: 1048576, pass: 1 })).toBe('precopy  25%  1.0/4.0 MiB  pass 1');
    const s = formatSummary({
      id: 'mig-1', vmId: 'vm1', state: 'rolled_back', mode: 'live', sourceHostId: 'A', destinationHostId: 'B',
      createdAt: '2030-01-01T00:00:00.000Z', updatedAt: '2030-01-01T00:00:01.500Z', timings: { precopy: 1200, prechecking: 3 },
      transitions: [{ from: null, to: 'prechecking', event: 'REQUESTED', at: '2030-01-01T00:00:00.000Z' }, { from: 'prechecking', to: 'precopy', event: 'X', at: '2030-01-01T00:00:00.003Z' }],
      result: { transferredBytes: 2 * 1048576 }, error: { code: 'VMTC_X', message: 'broke', details: { step: 'copy' } },
    });
    expect(s).toBe([
      'migration mig-1 rolled_back  (vm1: A -> B, live, 1.50 s)',
      'steps:',
      '  prechecking        3 ms',
      '  precopy          1.20 s',
      'result: transferred 2.0 MiB',
      'error: VMTC_X: broke (step=copy)',
    ].join('\n'));
  });
});
