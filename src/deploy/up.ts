// `vmtc up --config vmtc.json`: start a domain's services on this machine from its deployment
// file, each as its own `vmtc SERVICE --config FILE` process (the AAA and the broker first, then
// the controller that calls them), print one ready line when all are up, and stop them all on
// SIGINT/SIGTERM or as soon as one of them exits (docs/deploy.md#one-machine). Before anything
// starts, the file and the service files it names are checked by the parsers the services use,
// so a mistake is reported with its field and nothing is left half-started.
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, mkdirSync, type WriteStream } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Command } from '../common/command.ts';
import { systemClock, type Clock } from '../common/clock.ts';
import { commonError } from '../common/errors.ts';
import { loadPolicyFile } from '../aaa/policy.ts';
import { loadTopology } from '../broker/topology.ts';
import { loadTrust } from '../broker/trust.ts';
import { deployError } from './errors.ts';
import { loadDeployment, type LoadedDeployment } from './schema.ts';

export const SERVICES = ['aaa', 'broker', 'controller'] as const;
export type Service = (typeof SERVICES)[number];

export const UP_DEFAULTS = { readyTimeoutMs: 30_000, stopTimeoutMs: 10_000 } as const;

/** The `vmtc` entry point the services are started with (the one this process runs from). */
const VMTC_BIN = fileURLToPath(new URL('../../bin/vmtc.js', import.meta.url));

/** Check the files the services will read, with the services' own parsers and codes. */
export function preflight(d: LoadedDeployment, services: readonly Service[]): void {
  if (services.includes('aaa')) loadPolicyFile(d.path(d.doc.aaa.policy), d.doc.domain);
  if (services.includes('broker')) {
    loadTopology(d.path(d.doc.broker.topology), d.doc.domain);
    loadTrust(d.path(d.doc.broker.trust));
  }
}

interface Started {
  service: Service;
  child: ChildProcess;
  ready: Record<string, unknown>;
  exited: Promise<number | null>;
}

/** Start one service and resolve with its ready line; reject with its last output if it exits first. */
function startService(service: Service, file: string, sink: (service: Service, line: string) => void, clock: Clock, timeoutMs: number): Promise<Started> {
  const child = spawn(process.execPath, [VMTC_BIN, service, '--config', file], { stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = new Promise<number | null>((r) => child.once('exit', (code, signal) => r(code ?? (signal ? 128 : null))));
  const tail: string[] = [];
  const keep = (line: string) => {
    tail.push(line);
    if (tail.length > 20) tail.shift();
  };
  return new Promise((resolveP, reject) => {
    let ready: Record<string, unknown> | undefined;
    const fail = (reason: string) => reject(deployError('VMTC_DEPLOY_SERVICE_EXITED', { service, reason, output: tail.join('\n').slice(-4000) }, { message: `vmtc ${service} did not start: ${reason}` }));
    const timer = clock.setTimeout(() => {
      if (child.exitCode === null) child.kill('SIGKILL');
      fail(`no ready line within ${timeoutMs} ms`);
    }, timeoutMs);
    const lines = (stream: NodeJS.ReadableStream, isStdout: boolean) => {
      let buf = '';
      stream.on('data', (chunk) => {
        buf += String(chunk);
        let i: number;
        while ((i = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, i);
          buf = buf.slice(i + 1);
          keep(line);
          if (isStdout && !ready && line.startsWith('{') && line.includes('"ready"')) {
            try {
              const j = JSON.parse(line) as Record<string, unknown>;
              if (j.event === 'ready') {
                ready = j;
                timer.cancel();
                resolveP({ service, child, ready: j, exited });
                continue;
              }
            } catch { /* a log line */ }
          }
          sink(service, line);
        }
      });
    };
    lines(child.stdout!, true);
    lines(child.stderr!, false);
    void exited.then((code) => {
      if (ready) return;
      timer.cancel();
      fail(`exited with ${code}`);
    });
  });
}

async function stop(s: Started, clock: Clock, timeoutMs: number): Promise<void> {
  if (s.child.exitCode !== null || s.child.signalCode !== null) return;
  s.child.kill('SIGTERM');
  const t = clock.setTimeout(() => { if (s.child.exitCode === null) s.child.kill('SIGKILL'); }, timeoutMs);
  await s.exited;
  t.cancel();
}

function parseOnly(v: unknown): Service[] {
  if (v === undefined) return [...SERVICES];
  const names = String(v).split(',').map((x) => x.trim()).filter(Boolean);
  for (const n of names) {
    if (!(SERVICES as readonly string[]).includes(n)) throw commonError('VMTC_CONFIG_INVALID', { field: 'only', value: n, known: SERVICES }, { message: `--only: '${n}' is not one of ${SERVICES.join(', ')}` });
  }
  if (!names.length) throw commonError('VMTC_CONFIG_INVALID', { field: 'only' }, { message: '--only names no service' });
  return SERVICES.filter((s) => names.includes(s));
}

export const up: Command = {
  name: 'up',
  summary: "start a domain's services (AAA, broker, controller) on this machine from its deployment file",
  usage: [
    'vmtc up --config /etc/vmtc/vmtc.json [--only aaa,broker,controller] [--log-dir DIR]',
    'Prints one JSON ready line on stdout when every service is up; the services\' logs go to stderr (or DIR/SERVICE.log).',
    'SIGINT/SIGTERM stops them all; if one exits, the others are stopped and the exit code is 1.',
  ].join('\n'),
  options: {
    config: { type: 'string', arg: 'FILE', required: true, help: 'deployment file (vmtc.json, written by vmtc init)' },
    only: { type: 'string', arg: 'SERVICE,…', help: `start only these (${SERVICES.join(', ')})` },
    'log-dir': { type: 'string', arg: 'DIR', help: "write each service's output to DIR/SERVICE.log instead of stderr" },
  },
  async run(o) {
    const clock = systemClock;
    const d = loadDeployment(o.config as string);
    const services = parseOnly(o.only);
    preflight(d, services);
    const logs = new Map<Service, WriteStream>();
    if (typeof o['log-dir'] === 'string') {
      const dir = resolve(o['log-dir']);
      mkdirSync(dir, { recursive: true });
      for (const s of services) logs.set(s, createWriteStream(join(dir, `${s}.log`), { flags: 'a' }));
    }
    const sink = (s: Service, line: string) => {
      const f = logs.get(s);
      if (f) f.write(line + '\n');
      else process.stderr.write(line + '\n');
    };
    const started: Started[] = [];
    const stopAll = async () => {
      for (const s of [...started].reverse()) await stop(s, clock, UP_DEFAULTS.stopTimeoutMs);
      for (const f of logs.values()) f.end();
    };
    try {
      // The AAA and the broker do not call each other (the broker trusts the AAA's key from its
      // trust file), so they start together; the controller calls both, so it starts last.
      const first = await Promise.allSettled(services.filter((s) => s !== 'controller').map((s) => startService(s, d.file, sink, clock, UP_DEFAULTS.readyTimeoutMs)));
      for (const r of first) if (r.status === 'fulfilled') started.push(r.value);
      const failed = first.find((r) => r.status === 'rejected');
      if (failed) throw (failed as PromiseRejectedResult).reason;
      if (services.includes('controller')) started.push(await startService('controller', d.file, sink, clock, UP_DEFAULTS.readyTimeoutMs));
    } catch (e) {
      await stopAll();
      throw e;
    }
    const ready = Object.fromEntries(started.map((s) => [s.service, { pid: s.child.pid, ...s.ready }]));
    const adminTokenFile = services.includes('controller') ? join(d.path(d.doc.controller.dataDir), 'admin.token') : undefined;
    process.stdout.write(JSON.stringify({ event: 'ready', svc: 'up', config: d.file, services: ready, ...(adminTokenFile ? { adminTokenFile } : {}) }) + '\n');
    process.stderr.write(`vmtc up: ${started.map((s) => `${s.service} ${String(s.ready.url)} (pid ${s.child.pid})`).join(', ')}; SIGINT/SIGTERM stops them\n`);
    return new Promise<number>((resolveExit) => {
      let stopping = false;
      const finish = (code: number) => {
        if (stopping) return;
        stopping = true;
        process.off('SIGINT', onSignal);
        process.off('SIGTERM', onSignal);
        void stopAll().then(() => resolveExit(code));
      };
      const onSignal = (sig: NodeJS.Signals) => {
        process.stderr.write(`vmtc up: ${sig}, stopping ${started.map((s) => s.service).reverse().join(', ')}\n`);
        finish(0);
      };
      process.on('SIGINT', onSignal);
      process.on('SIGTERM', onSignal);
      for (const s of started) {
        void s.exited.then((code) => {
          if (stopping) return;
          const e = deployError('VMTC_DEPLOY_SERVICE_EXITED', { service: s.service, code }, { message: `vmtc ${s.service} exited with ${code}; stopping the others` });
          process.stderr.write(`error ${e.code}: ${e.message} ${JSON.stringify(e.details)}\n`);
          finish(1);
        });
      }
    });
  },
};
