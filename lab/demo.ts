// `npm run demo`: the whole control plane on one machine, as real processes — controller, AAA,
// broker and two host agents — and one live migration requested over the REST API. The host
// agents use the hypervisor test double (DoubleDriver: VMs are records, the migration stream is
// real TCP); the lab (`vmtc lab`, QEMU guests) is where real VMs move.
import { mkdtempSync, rmSync, writeFileSync, readFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { sleep } from '../src/common/clock.ts';
import { JsonClient } from '../src/common/http-client.ts';
import { loadControllerKey } from '../src/controller/integrations.ts';

const BIN = new URL('../bin/vmtc.js', import.meta.url).pathname;

function start(args: string[], log: string): Promise<{ child: ChildProcess; ready: Record<string, any> }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, VMTC_LOG_LEVEL: 'warn' } });
    let out = '';
    const timer = setTimeout(() => reject(new Error(`${args[0]} not ready:\n${out}`)), 20_000);
    child.stderr!.on('data', (d) => { out += d; writeFileSync(log, out); });
    child.stdout!.on('data', (d) => {
      out += d;
      writeFileSync(log, out);
      for (const line of String(d).split('\n')) {
        if (line.startsWith('{') && line.includes('"ready"')) { clearTimeout(timer); resolve({ child, ready: JSON.parse(line) }); }
      }
    });
    child.once('exit', (c) => { clearTimeout(timer); reject(new Error(`${args[0]} exited ${c}:\n${out}`)); });
  });
}

async function main() {
  const dir = mkdtempSync(join(tmpdir(), 'vmtc-demo-'));
  const children: ChildProcess[] = [];
  const say = (s: string) => process.stdout.write(s + '\n');
  try {
    const ctlDir = join(dir, 'controller');
    mkdirSync(ctlDir, { recursive: true });
    const { jkt } = loadControllerKey(ctlDir);
    writeFileSync(join(dir, 'policy.json'), JSON.stringify({
      version: 1, domain: 'a', sites: { amsterdam: 'a', 'san-diego': 'a' },
      requesters: [{ id: 'controller', jkt }],
      rules: [{ id: 'turntable', requesters: ['controller'], projects: ['igrid'], src: ['amsterdam', 'san-diego'], dst: ['amsterdam', 'san-diego'], maxBandwidthMbps: 1000 }],
    }));
    const aaa = await start(['aaa', '--listen', '127.0.0.1:0', '--data', join(dir, 'aaa'), '--domain', 'a', '--policy', join(dir, 'policy.json')], join(dir, 'aaa.log'));
    children.push(aaa.child);
    say(`AAA        ${aaa.ready.url}`);
    const jwks = await new JsonClient({ baseUrl: aaa.ready.url }).get('/.well-known/jwks.json');
    writeFileSync(join(dir, 'topology.json'), JSON.stringify({ domain: 'a', nodes: [{ id: 'amsterdam' }, { id: 'san-diego' }], links: [{ id: 'lambda', a: 'amsterdam', z: 'san-diego', capacityMbps: 1000 }] }));
    writeFileSync(join(dir, 'trust.json'), JSON.stringify({ issuers: [{ iss: 'aaa:a', jwks }] }));
    const broker = await start(['broker', '--listen', '127.0.0.1:0', '--data', join(dir, 'broker'), '--domain', 'a', '--topology', join(dir, 'topology.json'), '--trust', join(dir, 'trust.json'), '--driver', 'memory'], join(dir, 'broker.log'));
    children.push(broker.child);
    say(`broker     ${broker.ready.url} (network elements: in-memory test double)`);
    const ctl = await start(['controller', '--listen', '127.0.0.1:0', '--agent-listen', '127.0.0.1:0', '--data', ctlDir, '--aaa', aaa.ready.url, '--broker', broker.ready.url], join(dir, 'controller.log'));
    children.push(ctl.child);
    const url = ctl.ready.url as string;
    const admin = readFileSync(join(ctlDir, 'admin.token'), 'utf8').trim();
    say(`controller ${url} (agents: ${ctl.ready.agentUrl})`);
    const controller = new JsonClient({ baseUrl: url, headers: () => ({ authorization: `Bearer ${admin}` }) });
    // The answer's body whatever its status: a refusal is shown as the controller coded it.
    const api = async (method: string, path: string, body?: unknown) => (await controller.raw(method, path, body)).body as any;
    for (const [host, site, vms] of [['ams-1', 'amsterdam', [{ vmId: 'vm1', project: 'igrid', vcpus: 1, memoryMb: 256, diskGb: 2 }]], ['sd-1', 'san-diego', []]] as const) {
      const tok = await api('POST', '/v1/enrollment-tokens', { kind: 'host', hostId: host });
      writeFileSync(join(dir, `${host}.json`), JSON.stringify({ vms, bytesPerMb: 1 << 20, defaultBandwidthMbps: 1000 }));
      const agent = spawn(process.execPath, [BIN, 'agent', '--controller', url, '--enroll', tok.token, '--data', join(dir, host), '--driver', 'double', '--double-config', join(dir, `${host}.json`), '--site', site, '--migration-address', '127.0.0.1'], { stdio: 'ignore', env: { ...process.env, VMTC_LOG_LEVEL: 'warn' } });
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
    for (const c of children.reverse()) if (c.exitCode === null) c.kill('SIGTERM');
    await sleep(300);
    rmSync(dir, { recursive: true, force: true });
  }
}

process.exitCode = await main();
