// `npm run demo`: the whole control plane on one machine, as real processes, set up the way an
// operator would (docs/deploy.md): `vmtc init` writes the domain, `vmtc up` starts the AAA, the
// broker and the controller from it, `vmtc enroll-token` mints the two host agents' tokens, and
// one live migration is requested over the REST API. The host agents use the hypervisor test
// double (DoubleDriver: VMs are records, the migration stream is real TCP); the lab (`vmtc lab`,
// QEMU guests) is where real VMs move.
import { mkdtempSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { sleep } from '../src/common/clock.ts';
import { JsonClient } from '../src/common/http-client.ts';

const BIN = new URL('../bin/vmtc.js', import.meta.url).pathname;
const ENV = { ...process.env, VMTC_LOG_LEVEL: 'warn' };

/** A port that was free a moment ago: the deployment file names its ports before anything runs. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

/** Run a vmtc verb to its end; its stdout, or an error with its stderr. */
function vmtc(args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [BIN, ...args], { env: ENV }, (err, stdout, stderr) => (err ? reject(new Error(`vmtc ${args[0]}: ${stderr || err.message}`)) : resolve(stdout)));
  });
}

/** `vmtc up`: resolves with its ready line; the services' logs go to `logDir`. */
function up(config: string, logDir: string): Promise<{ child: ChildProcess; ready: Record<string, any> }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, 'up', '--config', config, '--log-dir', logDir], { stdio: ['ignore', 'pipe', 'pipe'], env: ENV });
    let out = '';
    const timer = setTimeout(() => reject(new Error(`vmtc up not ready:\n${out}`)), 60_000);
    child.stderr!.on('data', (d) => { out += d; });
    child.stdout!.on('data', (d) => {
      out += d;
      for (const line of String(d).split('\n')) {
        if (line.startsWith('{') && line.includes('"ready"')) { clearTimeout(timer); resolve({ child, ready: JSON.parse(line) }); }
      }
    });
    child.once('exit', (c) => { clearTimeout(timer); reject(new Error(`vmtc up exited ${c}:\n${out}`)); });
  });
}

async function main() {
  const dir = mkdtempSync(join(tmpdir(), 'vmtc-demo-'));
  const children: ChildProcess[] = [];
  const say = (s: string) => process.stdout.write(s + '\n');
  try {
    const config = join(dir, 'etc', 'vmtc.json');
    const ports = `controller=${await freePort()},agents=${await freePort()},aaa=${await freePort()},broker=${await freePort()}`;
    await vmtc(['init', '--dir', join(dir, 'etc'), '--domain', 'a', '--sites', 'amsterdam,san-diego', '--ports', ports, '--max-bandwidth-mbps', '1000', '--link-mbps', '1000']);
    say(`vmtc init: domain a (sites amsterdam, san-diego) in ${config}`);
    const u = await up(config, join(dir, 'log'));
    children.push(u.child);
    const s = u.ready.services;
    say(`AAA        ${s.aaa.url}`);
    say(`broker     ${s.broker.url} (network elements: in-memory test double)`);
    say(`controller ${s.controller.url} (agents: ${s.controller.agentUrl})`);
    const admin = readFileSync(u.ready.adminTokenFile, 'utf8').trim();
    const controller = new JsonClient({ baseUrl: s.controller.url, headers: () => ({ authorization: `Bearer ${admin}` }) });
    // The answer's body whatever its status: a refusal is shown as the controller coded it.
    const api = async (method: string, path: string, body?: unknown) => (await controller.raw(method, path, body)).body as any;
    for (const [host, site, vms] of [['ams-1', 'amsterdam', [{ vmId: 'vm1', project: 'igrid', vcpus: 1, memoryMb: 256, diskGb: 2 }]], ['sd-1', 'san-diego', []]] as const) {
      const token = (await vmtc(['enroll-token', '--config', config, '--host', host])).trim();
      writeFileSync(join(dir, `${host}.json`), JSON.stringify({ vms, bytesPerMb: 1 << 20, defaultBandwidthMbps: 1000 }));
      const agent = spawn(process.execPath, [BIN, 'agent', '--config', config, '--enroll', token, '--data', join(dir, host), '--driver', 'double', '--double-config', join(dir, `${host}.json`), '--site', site, '--migration-address', '127.0.0.1'], { stdio: 'ignore', env: ENV });
      children.push(agent);
    }
    for (let i = 0; i < 200; i++) {
      const hosts = (await api('GET', '/v1/hosts')).hosts ?? [];
      if (hosts.filter((h: any) => h.connected).length === 2) break;
      await sleep(100);
    }
    say('host agents ams-1 (amsterdam, runs vm1) and sd-1 (san-diego) enrolled over mutual TLS');
    const m = await api('POST', '/v1/migrations', { vmId: 'vm1', destinationHostId: 'sd-1', mode: 'live', bandwidthMbps: 800, maxDowntimeMs: 300 });
    if (!m.id) throw new Error(`migration refused: ${JSON.stringify(m)}`);
    say(`migration ${m.id} requested`);
    let last = '';
    let rec: any;
    for (let i = 0; i < 600; i++) {
      rec = await api('GET', `/v1/migrations/${m.id}`);
      const line = `  ${rec.state}${rec.progress ? ` ${Math.round((rec.progress.transferredBytes ?? 0) / 1048576)}/${Math.round((rec.progress.totalBytes ?? 0) / 1048576)} MiB` : ''}`;
      if (line !== last) { say(line); last = line; }
      if (rec.terminal) break;
      await sleep(100);
    }
    say(`\nresult: ${rec.state}${rec.error ? ` ${rec.error.code}` : ''}; token jti ${rec.steps?.token?.jti ?? '-'}; lightpath ${rec.steps?.lightpath?.reservationId ?? '-'} released=${rec.steps?.lightpath?.released ?? false}`);
    say('time per step (ms): ' + Object.entries(rec.timings).map(([k, v]) => `${k}=${v}`).join(' '));
    const vms = (await api('GET', '/v1/vms')).vms.filter((v: any) => v.vmId === 'vm1');
    say(`vm1 now: ${vms.map((v: any) => `${v.hostId}/${v.state}`).join(', ')}`);
    return rec.state === 'completed' ? 0 : 1;
  } finally {
    // The agents first, then `vmtc up`, which stops the services it started.
    for (const c of children.reverse()) if (c.exitCode === null) c.kill('SIGTERM');
    await Promise.race([sleep(20_000), Promise.all(children.map((c) => (c.exitCode === null && c.signalCode === null ? new Promise((r) => c.once('exit', r)) : undefined)))]);
    rmSync(dir, { recursive: true, force: true });
  }
}

process.exitCode = await main();
