// The stack of the kill -9 fault matrix (test/integration/fault-matrix.test.ts), every service a
// real `vmtc` process on loopback: an AAA, a broker (its network elements are the memory test
// double) behind a gate the test can hold requests at, the controller, and two host agents on
// the DoubleDriver hypervisor test double with its test-only state file and hold points
// (agents/host/double-knobs.ts). Any of controller, source agent, destination agent and broker
// can be killed with SIGKILL and started again on the same data directory and ports. close()
// stops everything it started, by pid, also after a start that failed halfway. Not a test file.
import http from 'node:http';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { queryAccounting } from '../../src/aaa/client.ts';
import { loadControllerKey } from '../../src/controller/integrations.ts';
import type { HoldPoint } from '../../agents/host/double-knobs.ts';
import { freePort, startVmtc, VMTC_BIN, type Proc } from './proc.ts';

export type Role = 'controller' | 'source' | 'destination' | 'broker';
export const TERMINAL = ['completed', 'rolled_back', 'failed', 'cancelled'];

/** An HTTP gate in front of the broker: requests whose method and path match `hold` wait until
 *  release(). A request the broker cannot take (it was killed) breaks the caller's connection, as
 *  a dead broker would. */
export interface BrokerGate {
  url: string;
  hold(method: string, path: RegExp): void;
  /** Requests waiting at the gate now. */
  held(): number;
  release(): void;
  close(): Promise<void>;
}

async function brokerGate(listenPort: number, upstreamPort: number): Promise<BrokerGate> {
  let rule: { method: string; path: RegExp } | undefined;
  let waiting: (() => void)[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const forward = () => {
        const up = http.request({ host: '127.0.0.1', port: upstreamPort, method: req.method, path: req.url, headers: req.headers, agent: false }, (ur) => {
          res.writeHead(ur.statusCode ?? 502, ur.headers);
          ur.pipe(res);
        });
        up.on('error', () => req.socket.destroy());
        up.end(Buffer.concat(chunks));
      };
      if (rule && req.method === rule.method && rule.path.test(req.url ?? '')) waiting.push(forward);
      else forward();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(listenPort, '127.0.0.1', () => resolve());
  });
  return {
    url: `http://127.0.0.1:${listenPort}`,
    hold(method, path) { rule = { method, path }; },
    held: () => waiting.length,
    release() {
      rule = undefined;
      const go = waiting;
      waiting = [];
      for (const f of go) f();
    },
    close: () => new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    }),
  };
}

/** A `vmtc agent --driver double` process (it prints no ready line: the controller says when it
 *  is connected). */
interface AgentProc {
  child: ChildProcess;
  exited: Promise<unknown>;
  output(): string;
}

function spawnAgent(args: string[]): AgentProc {
  const child = spawn(process.execPath, [VMTC_BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, VMTC_LOG_LEVEL: 'warn' } });
  let out = '';
  const keep = (d: Buffer) => { out = (out + d.toString()).slice(-20_000); };
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  const exited = new Promise((r) => child.once('exit', r));
  return { child, exited, output: () => out };
}

async function kill9(child: ChildProcess, exited: Promise<unknown>): Promise<void> {
  if (child.exitCode === null && child.signalCode === null && child.pid) process.kill(child.pid, 'SIGKILL');
  await exited;
}

export interface MatrixStack {
  dir: string;
  gate: BrokerGate;
  api(method: string, path: string, body?: unknown): Promise<{ status: number; body: any }>;
  /** Hold an operation of host A's or B's double (agents/host/double-knobs.ts). */
  holdAgent(hostId: 'A' | 'B', points: HoldPoint[]): void;
  /** Whether host A's or B's double is holding an operation now. */
  agentHeld(hostId: 'A' | 'B'): boolean;
  releaseAll(): void;
  kill(role: Role): Promise<void>;
  restart(role: Role): Promise<void>;
  /** Every process up and both hosts connected (starts again whatever is not running). */
  healthy(): Promise<void>;
  reservations(migrationId: string): Promise<{ id: string; lifecycleState: string; provisionState: string; reservationState?: string; committed: boolean; dataPlane: { active: boolean } }[]>;
  /** The AAA's accounting records of a migration, as the controller reads them. */
  accounting(migrationId: string): Promise<{ kind: string; jti: string }[]>;
  /** Diagnostics: the tail of every process's output. */
  logs(): string;
  close(): Promise<void>;
}

export async function until<T>(fn: () => Promise<T | undefined | false>, what: () => string, ms: number, everyMs = 50): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn().catch(() => undefined);
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms: ${what()}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** `vms` are placed at host A. */
export async function startMatrixStack(vms: { vmId: string; memoryMb: number }[]): Promise<MatrixStack> {
  const dir = mkdtempSync(join(tmpdir(), 'vmtc-fault-matrix-'));
  const stops: (() => Promise<void>)[] = [];
  let closed = false;
  const close = async () => {
    closed = true;
    for (const s of stops.splice(0).reverse()) await s().catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    const ctlDir = join(dir, 'ctl');
    mkdirSync(ctlDir, { recursive: true });
    const { jkt, key } = loadControllerKey(ctlDir);
    const [A, B] = ['site-A', 'site-B'];
    writeFileSync(join(dir, 'policy.json'), JSON.stringify({
      version: 1, domain: 'a', sites: { [A]: 'a', [B]: 'a' }, requesters: [{ id: 'controller', jkt }],
      rules: [{ id: 'ab', requesters: ['controller'], projects: ['demo'], src: [A, B], dst: [A, B], maxBandwidthMbps: 1000 }],
    }));
    const procs: { role: string; proc: () => Proc | undefined }[] = [];
    const aaa = await startVmtc(['aaa', '--listen', '127.0.0.1:0', '--data', join(dir, 'aaa'), '--domain', 'a', '--policy', join(dir, 'policy.json')]);
    stops.push(() => aaa.stop('SIGKILL').then(() => undefined));
    procs.push({ role: 'aaa', proc: () => aaa });
    const aaaUrl = aaa.ready.url as string;
    const jwks = await (await fetch(`${aaaUrl}/.well-known/jwks.json`)).json();
    writeFileSync(join(dir, 'topology.json'), JSON.stringify({ domain: 'a', nodes: [{ id: A }, { id: B }], links: [{ id: 'ab', a: A, z: B, capacityMbps: 1000 }] }));
    writeFileSync(join(dir, 'trust.json'), JSON.stringify({ issuers: [{ iss: 'aaa:a', jwks }] }));

    // The broker keeps its port across restarts; the controller reaches it through the gate.
    const [brokerPort, gatePort] = [await freePort(), await freePort()];
    const gate = await brokerGate(gatePort, brokerPort);
    stops.push(() => gate.close());
    const brokerArgs = ['broker', '--listen', `127.0.0.1:${brokerPort}`, '--data', join(dir, 'broker'), '--domain', 'a', '--topology', join(dir, 'topology.json'),
      '--trust', join(dir, 'trust.json'), '--driver', 'memory', '--public-url', gate.url];
    let broker: Proc | undefined = await startVmtc(brokerArgs);
    stops.push(async () => { await broker?.stop('SIGKILL'); });
    procs.push({ role: 'broker', proc: () => broker });
    const operatorToken = readFileSync(broker.ready.operatorTokenFile as string, 'utf8').trim();

    const [p1, p2] = [await freePort(), await freePort()];
    const ctlArgs = ['controller', '--data', ctlDir, '--listen', `127.0.0.1:${p1}`, '--agent-listen', `127.0.0.1:${p2}`, '--heartbeat-ms', '2000', '--aaa', aaaUrl, '--broker', gate.url];
    let controller: Proc | undefined = await startVmtc(ctlArgs);
    stops.push(async () => { await controller?.stop('SIGKILL'); });
    procs.push({ role: 'controller', proc: () => controller });
    const url = controller.ready.url as string;
    const adminToken = readFileSync(join(ctlDir, 'admin.token'), 'utf8').trim();
    const api: MatrixStack['api'] = async (method, path, body) => {
      const r = await fetch(url + path, { method, headers: { authorization: `Bearer ${adminToken}`, ...(body ? { 'content-type': 'application/json' } : {}) }, ...(body ? { body: JSON.stringify(body) } : {}) });
      return { status: r.status, body: await r.json() as any };
    };

    const agents = new Map<'A' | 'B', AgentProc | undefined>();
    const agentArgs = (hostId: 'A' | 'B') => ['agent', '--data', join(dir, `agent-${hostId}`), '--driver', 'double', '--double-config', join(dir, `${hostId}.json`),
      '--site', `site-${hostId}`, '--migration-address', '127.0.0.1', '--log-level', 'warn'];
    const holdFile = (hostId: 'A' | 'B') => join(dir, `${hostId}.hold.json`);
    stops.push(async () => { for (const a of agents.values()) if (a) await kill9(a.child, a.exited); });
    for (const hostId of ['A', 'B'] as const) {
      // 16 KiB of stream per MiB of guest memory: a 128 MB VM is 2 MiB in its first pass.
      writeFileSync(join(dir, `${hostId}.json`), JSON.stringify({
        // Room for every case's VM at either host.
        cpu: { model: 'double-cpu', features: ['sse2', 'sse4_2', 'avx'], vcpus: 64 },
        bytesPerMb: 16 * 1024, stateFile: join(dir, `${hostId}.vms.json`), holdFile: holdFile(hostId),
        ...(hostId === 'A' ? { vms: vms.map((v) => ({ vmId: v.vmId, project: 'demo', vcpus: 1, memoryMb: v.memoryMb, diskGb: 1 })) } : {}),
      }));
      const tok = await api('POST', '/v1/enrollment-tokens', { kind: 'host', hostId });
      if (tok.status !== 201) throw new Error(`enrollment token: ${JSON.stringify(tok.body)}`);
      agents.set(hostId, spawnAgent([...agentArgs(hostId), '--controller', url, '--enroll', tok.body.token]));
    }
    const connected = async (hostId: string) => ((await api('GET', '/v1/hosts')).body.hosts ?? []).some((h: any) => h.hostId === hostId && h.connected);
    await until(async () => (await connected('A')) && (await connected('B')), () => `both hosts connected:\n${agents.get('A')?.output()}\n${agents.get('B')?.output()}`, 30_000);

    const hostOf = (role: 'source' | 'destination') => (role === 'source' ? 'A' : 'B');
    const stack: MatrixStack = {
      dir, gate, api,
      holdAgent(hostId, points) { writeFileSync(holdFile(hostId), JSON.stringify({ hold: points })); },
      agentHeld: (hostId) => existsSync(`${holdFile(hostId)}.held`),
      releaseAll() {
        for (const h of ['A', 'B'] as const) rmSync(holdFile(h), { force: true });
        gate.release();
      },
      async kill(role) {
        if (role === 'controller') await controller?.stop('SIGKILL');
        else if (role === 'broker') await broker?.stop('SIGKILL');
        else {
          const a = agents.get(hostOf(role));
          if (a) await kill9(a.child, a.exited);
        }
      },
      async restart(role) {
        if (closed) return;
        if (role === 'controller') controller = await startVmtc(ctlArgs);
        else if (role === 'broker') broker = await startVmtc(brokerArgs);
        else agents.set(hostOf(role), spawnAgent(agentArgs(hostOf(role))));
      },
      async healthy() {
        const dead = (p: { exitCode: number | null; signalCode: NodeJS.Signals | null } | undefined) => !p || p.exitCode !== null || p.signalCode !== null;
        if (dead(controller?.child)) await stack.restart('controller');
        if (dead(broker?.child)) await stack.restart('broker');
        for (const role of ['source', 'destination'] as const) if (dead(agents.get(hostOf(role))?.child)) await stack.restart(role);
        await until(async () => (await connected('A')) && (await connected('B')), () => 'both hosts connected', 30_000);
      },
      async reservations(migrationId) {
        const r = await fetch(`http://127.0.0.1:${brokerPort}/v1/reservations`, { headers: { authorization: `Bearer ${operatorToken}` } });
        return ((await r.json()) as { reservations: any[] }).reservations.filter((x) => x.migrationId === migrationId);
      },
      async accounting(migrationId) {
        return (await queryAccounting(aaaUrl, key, { migrationId })).events as { kind: string; jti: string }[];
      },
      logs() {
        const out: string[] = [];
        for (const p of procs) out.push(`--- ${p.role}\n${p.proc()?.output().slice(-3000) ?? ''}`);
        for (const [h, a] of agents) out.push(`--- agent ${h}\n${a?.output().slice(-3000) ?? ''}`);
        return out.join('\n');
      },
      close,
    };
    return stack;
  } catch (e) {
    await close();
    throw e;
  }
}
