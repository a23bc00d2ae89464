// The whole vmtc system in the lab, every service a real process: the lab's namespaces and
// delay line, an AAA, a broker with the lab's lightpath driver, the controller, one QEMU host
// agent per site and the tunnel agent for the client namespace; plus a guest VM started at the
// first site. Used by the lab end-to-end tests and the turntable. close() stops every process it
// started (by pid) and removes the lab, also after a failure halfway through start.
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, createWriteStream } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { labUp, labDown, netnsExec, type Lab } from './net.ts';
import { run } from './exec.ts';
import type { LabConfig } from './topology.ts';
import { brokerTopologyFor } from './topology.ts';
import { buildGuestImage, guestAppend, type GuestAppendOptions } from './guest/build.ts';
import { awaitGuestVerdict, markConsole, type ConsoleMark } from './guest/check.ts';
import { guestVerdictError, MIN_PASSES, type GuestVerdict } from './guest/verify.ts';
import { qemuVmPaths } from '../agents/host/qemu/cmdline.ts';
import { JsonClient } from '../src/common/http-client.ts';
import { loadControllerKey } from '../src/controller/integrations.ts';
import type { Migration } from '../src/controller/schemas.ts';
import type { ErrorBodyT } from '../src/common/schemas.ts';

const BIN = new URL('../bin/vmtc.js', import.meta.url).pathname;

export interface StackOptions {
  prefix?: string;
  rttMs?: number;
  rateMbps?: number;
  queueMs?: number;
  memoryMb?: number;
  /** QEMU's accelerator on every host agent (`vmtc agent --accel`; default tcg). */
  accel?: 'tcg' | 'kvm';
  /** Guest command-line options (probes, load). */
  guest?: GuestAppendOptions;
  /** Give the guest a qcow2 data disk of this many MiB (its first 8 MiB hold the byte 0x5a), on
   *  storage the sites do not share: live migrations then copy it (NBD mirror). Default none. */
  diskMb?: number;
  /** MiB of the data disk written with 0x5a before the guest starts (default 8, at most diskMb). */
  diskFillMb?: number;
  /** Where logs and state go (default: a temp dir, removed on close unless keepDir). */
  dir?: string;
  keepDir?: boolean;
  /** Policy: the largest bandwidth the AAA grants (default: the line rate). */
  maxBandwidthMbps?: number;
  logLevel?: string;
  /** More lab settings (TCP buffer tuning, loss, …). */
  lab?: LabConfig;
  /** The controller's fleet options (`vmtc controller --fleet`, docs/fleet.md): links, booking. */
  fleet?: Record<string, unknown>;
  /** What replica seeds and deltas ask the broker for, Mbit/s (`vmtc controller --replica-mbps`). */
  replicaMbps?: number;
  onProgress?: (msg: string) => void;
}

/** The controller's refusal of a migration request (no record was made). */
export type MigrationRefusal = ErrorBodyT & { refused: true } & { [K in keyof Migration]?: undefined };
/** How migrate() ends: the migration's final record, or the refusal (`refused` tells which). */
export type MigrationOutcome = (Migration & { refused?: undefined }) | MigrationRefusal;

/** The delay line's statistics file of a migration's lightpath, which the lab's lightpath driver
 *  names in the data plane's details (docs/lab.md). */
export function relayStatsFile(rec: MigrationOutcome | undefined): string | undefined {
  const relay = rec?.steps?.lightpath?.details?.dataPlane?.details?.relay as { statsFile?: string } | undefined;
  return relay?.statsFile;
}

export interface Stack {
  lab: Lab;
  dir: string;
  url: string;
  adminToken: string;
  brokerUrl: string;
  /** The broker's operator credential (DIR/broker/operator.token): `Authorization: Bearer` on its reads. */
  brokerToken: string;
  aaaUrl: string;
  vmId: string;
  /** Known-bad hypervisor releases the lab's hosts run (GET /v1/hosts advisories, e.g. Debian 12's
   *  QEMU 7.2 under TCG: docs/qemu.md "Known-bad versions"). Every POST /v1/migrations through
   *  api() or migrate() accepts them (overrideAdvisories) unless it names its own, so the lab
   *  still runs there, and each migration's record carries the warning; the turntable records
   *  them in its findings. */
  knownBadHypervisor: { hostId: string; id: string; summary: string; fixedIn: string }[];
  /** The guest's dirty load (lab/guest/verify.ts checks its passes after each move); 0 MB = none. */
  guest: { dirtyMb: number; dirtyPeriodMs: number };
  hostOf(site: string): string;
  siteOf(hostId: string): string;
  api(method: string, path: string, body?: unknown): Promise<{ status: number; body: any }>;
  /** Request a migration of the VM to `site` and wait for a terminal state. */
  migrate(toSite: string, body?: Record<string, unknown>, onState?: (rec: Migration) => void): Promise<MigrationOutcome>;
  waitState(id: string, states: string[], timeoutMs?: number): Promise<Migration>;
  /** Where the VM runs now, according to the agents. */
  vmPlaces(): Promise<{ hostId: string; state: string }[]>;
  agentDataDir(hostId: string): string;
  close(): Promise<void>;
}

interface Started { child: ChildProcess; ready: Record<string, any> }

function startProc(args: string[], logFile: string, opts: { waitReady?: boolean; env?: NodeJS.ProcessEnv } = {}): Promise<Started> {
  const child = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...(opts.env ?? {}) } });
  const log = createWriteStream(logFile);
  child.stderr!.pipe(log);
  let buf = '';
  return new Promise((resolve, reject) => {
    if (opts.waitReady === false) {
      child.stdout!.pipe(log);
      resolve({ child, ready: {} });
      return;
    }
    const timer = setTimeout(() => reject(new Error(`vmtc ${args[0]} not ready in 60 s (log ${logFile})`)), 60_000);
    child.stdout!.on('data', (d) => {
      log.write(d);
      buf += d;
      const lines = buf.split('\n');
      buf = lines.pop()!;
      for (const line of lines) {
        if (!line.startsWith('{') || !line.includes('"ready"')) continue;
        try {
          const j = JSON.parse(line);
          if (j.event === 'ready') { clearTimeout(timer); resolve({ child, ready: j }); }
        } catch { /* a log line */ }
      }
    });
    child.once('exit', (c) => { clearTimeout(timer); reject(new Error(`vmtc ${args[0]} exited with ${c} (log ${logFile}): ${readFileSync(logFile, 'utf8').slice(-1500)}`)); });
  });
}

async function stopProc(p: ChildProcess): Promise<void> {
  if (p.exitCode !== null || p.signalCode !== null) return;
  const exited = new Promise<void>((r) => p.once('exit', () => r()));
  p.kill('SIGTERM');
  const t = setTimeout(() => { if (p.exitCode === null) p.kill('SIGKILL'); }, 8000);
  await exited;
  clearTimeout(t);
}

export async function startStack(o: StackOptions = {}): Promise<Stack> {
  const say = o.onProgress ?? (() => undefined);
  const dir = o.dir ?? mkdtempSync(join(tmpdir(), 'vmtc-stack-'));
  mkdirSync(dir, { recursive: true });
  const procs: ChildProcess[] = [];
  let lab: Lab | undefined;
  // VMTC_LAB_LOG_LEVEL=debug: the services' debug logs (e.g. every QMP command and event).
  const env = { VMTC_LOG_LEVEL: o.logLevel ?? process.env.VMTC_LAB_LOG_LEVEL ?? 'info' };
  const cleanup = async () => {
    // Agents first (they stop nothing of the guests: QEMU keeps running), then the guests' QEMU
    // processes by the pidfiles the QEMU driver keeps, then services, then the lab.
    for (const p of [...procs].reverse()) await stopProc(p).catch(() => undefined);
    for (const site of lab?.sites ?? []) {
      const vmsDir = join(dir, `agent-${site.name}`, 'qemu', 'vms');
      let entries: string[] = [];
      try { entries = (await import('node:fs')).readdirSync(vmsDir); } catch { /* none */ }
      for (const vm of entries) {
        try {
          const pid = Number(readFileSync(join(vmsDir, vm, 'qemu.pid'), 'utf8').trim());
          const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
          if (cmd.includes(vmsDir)) process.kill(pid, 'SIGKILL');
        } catch { /* gone */ }
      }
    }
    if (lab) await labDown(lab.prefix).catch(() => undefined);
    if (!o.dir && !o.keepDir) rmSync(dir, { recursive: true, force: true });
  };
  try {
    say('building the guest image (cached after the first time)');
    const guest = await buildGuestImage();
    say('bringing the lab up (namespaces, WAN, client tunnel)');
    lab = await labUp({ ...(o.lab ?? {}), ...(o.prefix ? { prefix: o.prefix } : {}), rttMs: o.rttMs ?? 198, rateMbps: o.rateMbps ?? 1000, ...(o.queueMs ? { queueMs: o.queueMs } : {}), tunnelSite: null });
    const domain = `lab-${lab.prefix}`;
    const ctlDir = join(dir, 'controller');
    mkdirSync(ctlDir, { recursive: true });
    const { jkt } = loadControllerKey(ctlDir);
    const sites = lab.sites.map((s) => s.name);
    writeFileSync(join(dir, 'policy.json'), JSON.stringify({
      version: 1, domain, sites: Object.fromEntries(sites.map((s) => [s, domain])),
      requesters: [{ id: 'controller', jkt }],
      rules: [{ id: 'lab-turntable', requesters: ['controller'], projects: ['lab'], src: sites, dst: sites, maxBandwidthMbps: o.maxBandwidthMbps ?? lab.lightpath.rateMbps }],
    }, null, 2));
    say('starting the AAA, the broker (the lab lightpath driver) and the controller');
    const aaa = await startProc(['aaa', '--listen', '127.0.0.1:0', '--data', join(dir, 'aaa'), '--domain', domain, '--policy', join(dir, 'policy.json')], join(dir, 'aaa.log'), { env });
    procs.push(aaa.child);
    const jwks = await new JsonClient({ baseUrl: aaa.ready.url }).get('/.well-known/jwks.json');
    writeFileSync(join(dir, 'topology.json'), JSON.stringify(brokerTopologyFor(lab, domain), null, 2));
    writeFileSync(join(dir, 'trust.json'), JSON.stringify({ issuers: [{ iss: `aaa:${domain}`, jwks }] }, null, 2));
    const broker = await startProc(['broker', '--listen', '127.0.0.1:0', '--data', join(dir, 'broker'), '--domain', domain, '--topology', join(dir, 'topology.json'), '--trust', join(dir, 'trust.json'), '--driver', 'lab-lightpath'], join(dir, 'broker.log'), { env });
    procs.push(broker.child);
    const brokerToken = readFileSync(broker.ready.operatorTokenFile as string, 'utf8').trim();
    if (o.fleet) writeFileSync(join(dir, 'fleet.json'), JSON.stringify(o.fleet));
    const ctl = await startProc(['controller', '--listen', '127.0.0.1:0', '--agent-listen', '127.0.0.1:0', '--data', ctlDir, '--aaa', aaa.ready.url, '--broker', broker.ready.url, '--heartbeat-ms', '2000', ...(o.fleet ? ['--fleet', join(dir, 'fleet.json')] : []), ...(o.replicaMbps !== undefined ? ['--replica-mbps', String(o.replicaMbps)] : [])], join(dir, 'controller.log'), { env });
    procs.push(ctl.child);
    const url = ctl.ready.url as string;
    const adminToken = readFileSync(join(ctlDir, 'admin.token'), 'utf8').trim();
    const controller = new JsonClient({ baseUrl: url, headers: () => ({ authorization: `Bearer ${adminToken}` }) });
    // Every migration the lab requests accepts the known-bad releases its own hosts run (found
    // once the agents are connected, below), unless the request names its own overrideAdvisories.
    let knownBad: Stack['knownBadHypervisor'] = [];
    const api = async (method: string, path: string, body?: unknown) => {
      if (method === 'POST' && path === '/v1/migrations' && knownBad.length && body && typeof body === 'object' && !('overrideAdvisories' in body)) {
        body = { ...body, overrideAdvisories: [...new Set(knownBad.map((a) => a.id))] };
      }
      const r = await controller.raw(method, path, body);
      return { status: r.status, body: r.body as any };
    };
    const hostOf = (site: string) => `host-${site}`;
    const siteOf = (hostId: string) => hostId.replace(/^host-/, '');
    say('enrolling a QEMU host agent per site and the tunnel agent');
    for (const s of lab.sites) {
      const tok = (await api('POST', '/v1/enrollment-tokens', { kind: 'host', hostId: hostOf(s.name) })).body;
      const a = await startProc(['agent', '--controller', url, '--enroll', tok.token, '--data', join(dir, `agent-${s.name}`), '--driver', 'qemu', '--netns', s.ns, '--site', s.name, '--migration-address', s.lightpathIp, ...(o.accel ? ['--accel', o.accel] : [])], join(dir, `agent-${s.name}.log`), { waitReady: false, env });
      procs.push(a.child);
    }
    const ttok = (await api('POST', '/v1/enrollment-tokens', { kind: 'tunnel', hostId: 'tunnel-client' })).body;
    const tun = await startProc(['tunnel', '--controller', url, '--enroll', ttok.token, '--data', join(dir, 'tunnel'), '--driver', 'vxlan', '--netns', lab.client.ns, '--device', lab.client.tunnelDev,
      ...lab.sites.flatMap((s) => ['--site', `${s.name}=${s.publicIp}`]), '--initial-site', lab.sites[0]!.name,
      // The tunnel agent measures the guest's client-seen downtime (docs/tunnel.md): vm1 is the guest started below.
      '--watch', `vm1=${lab.vm.ip}`, '--capture-dev', lab.client.wanDev], join(dir, 'tunnel.log'), { env });
    procs.push(tun.child);
    for (let i = 0; ; i++) {
      const hosts = (await api('GET', '/v1/hosts')).body.hosts ?? [];
      if (hosts.filter((h: any) => h.connected).length === lab.sites.length) break;
      if (i > 300) throw new Error('host agents did not connect');
      await new Promise((r) => setTimeout(r, 100));
    }
    knownBad = ((await api('GET', '/v1/hosts')).body.hosts ?? [])
      .flatMap((h: any) => (h.advisories ?? []).map((a: any) => ({ hostId: h.hostId as string, id: a.id as string, summary: a.summary as string, fixedIn: a.fixedIn as string })));
    for (const a of knownBad) say(`WARNING: ${a.hostId} runs a hypervisor with a known live-migration bug (${a.id}, fixed in ${a.fixedIn}): ${a.summary}; the lab's migrations accept it`);
    const vmId = 'vm1';
    const site0 = lab.sites[0]!;
    say(`starting guest ${vmId} (${o.memoryMb ?? 256} MB) at ${site0.name}`);
    let disks: { path: string; format: 'qcow2' }[] | undefined;
    if (o.diskMb) {
      const path = join(dir, `${vmId}-data.qcow2`);
      await run(['qemu-img', 'create', '-q', '-f', 'qcow2', path, `${o.diskMb}M`]);
      await run(['qemu-io', '-f', 'qcow2', '-c', `write -P 0x5a 0 ${Math.min(o.diskFillMb ?? 8, o.diskMb)}M`, path]);
      disks = [{ path, format: 'qcow2' }];
    }
    const started = await api('POST', '/v1/vms', {
      hostId: hostOf(site0.name),
      spec: {
        vmId, project: 'lab', vcpus: 1, memoryMb: o.memoryMb ?? 256, diskGb: o.diskMb ? Math.ceil(o.diskMb / 1024) : 0,
        ...(disks ? { disks } : {}),
        kernel: guest.kernel, initrd: guest.initrd, append: guestAppend({ ip: `${lab.vm.ip}/${lab.vm.prefixLen}`, gateway: lab.vm.gateway, ...(o.guest ?? {}) }),
        nics: [{ mac: lab.vm.mac, bridge: site0.bridge }], serialPorts: 1,
      },
    });
    if (started.status !== 201) throw new Error(`could not start the guest: ${JSON.stringify(started.body)}`);
    // The guest is up when it answers ping from the client through the tunnel.
    for (let i = 0; ; i++) {
      try {
        await netnsExec(lab.client.ns, ['ping', '-c', '1', '-W', '1', lab.vm.ip]);
        break;
      } catch {
        if (i > 60) throw new Error('the guest did not answer ping within 60 s');
      }
    }
    say('guest answers from the client');
    const stack: Stack = {
      lab, dir, url, adminToken, brokerUrl: broker.ready.url, brokerToken, aaaUrl: aaa.ready.url, vmId, knownBadHypervisor: knownBad,
      guest: { dirtyMb: o.guest?.dirtyMb ?? 0, dirtyPeriodMs: o.guest?.dirtyMb ? (o.guest.dirtyPeriodMs ?? 100) : 0 },
      hostOf, siteOf, api,
      agentDataDir: (hostId) => join(dir, `agent-${siteOf(hostId)}`),
      async waitState(id, states, timeoutMs = 300_000) {
        const until = Date.now() + timeoutMs;
        for (;;) {
          const rec = (await api('GET', `/v1/migrations/${id}`)).body as Migration;
          if (states.includes(rec.state)) return rec;
          if (Date.now() > until) throw new Error(`migration ${id} stuck in ${rec.state}`);
          await new Promise((r) => setTimeout(r, 100));
        }
      },
      async migrate(toSite, body = {}, onState) {
        const m = await api('POST', '/v1/migrations', { vmId, destinationHostId: hostOf(toSite), mode: 'live', ...body });
        if (m.status !== 202) return { refused: true, ...(m.body as ErrorBodyT) };
        let last = '';
        const until = Date.now() + 600_000;
        for (;;) {
          const rec = (await api('GET', `/v1/migrations/${m.body.id}`)).body as Migration;
          if (rec.state !== last) { last = rec.state; onState?.(rec); }
          if (rec.terminal) return rec;
          if (Date.now() > until) throw new Error(`migration ${m.body.id} stuck in ${rec.state}`);
          await new Promise((r) => setTimeout(r, 50));
        }
      },
      async vmPlaces() {
        const vms = (await api('GET', '/v1/vms')).body.vms as any[];
        return vms.filter((v) => v.vmId === vmId).map((v) => ({ hostId: v.hostId, state: v.state }));
      },
      close: cleanup,
    };
    return stack;
  } catch (e) {
    await cleanup();
    throw e;
  }
}

// ---------------------------------------------------------------------------------------------
// Is the guest intact after a move? (docs/lab.md, "The guest's memory check") Every lab
// migration path asks: the turntable (lab/turntable/measure.ts) and the lab tests.

/** The guest's console at a host (the console.log its QEMU writes there). */
export function guestConsolePath(s: Stack, hostId: string): string {
  return qemuVmPaths(join(s.agentDataDir(hostId), 'qemu'), s.vmId, 1).console;
}

/** Marks of the guest's console at every site, taken before a move: the check reads only what
 *  came after. */
export function markGuestConsoles(s: Stack): Map<string, ConsoleMark> {
  return new Map(s.lab.sites.map((site) => [s.hostOf(site.name), markConsole(guestConsolePath(s, s.hostOf(site.name)))]));
}

export interface GuestCheckOptions {
  /** Where the VM runs now (default: the one place the agents report it running). */
  hostId?: string;
  /** From markGuestConsoles() before the move (default: the whole console there). */
  marks?: Map<string, ConsoleMark>;
  /** The move booted the guest (cold migration). */
  booted?: boolean;
  /** Memory lines from the guest's serial port after the switchover. */
  serialLines?: readonly string[];
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** The guest's verdict where it runs now: damage on its console or memory lines, or (with a
 *  dirty load) whether a whole verifying pass ran after the move — waited for, bounded. */
export async function checkGuest(s: Stack, o: GuestCheckOptions = {}): Promise<GuestVerdict & { hostId: string }> {
  let hostId = o.hostId;
  if (!hostId) {
    const running = (await s.vmPlaces()).filter((p) => p.state === 'running');
    if (running.length !== 1) throw new Error(`the guest runs in ${running.length} places (${running.map((p) => p.hostId).join(', ') || 'none'}); cannot check it`);
    hostId = running[0]!.hostId;
  }
  const dirty = s.guest.dirtyMb > 0;
  const verdict = await awaitGuestVerdict({
    console: o.marks?.get(hostId) ?? { path: guestConsolePath(s, hostId), offset: 0, ino: null }, dirty, ...(o.booted ? { booted: true } : {}),
    ...(o.serialLines ? { serialLines: o.serialLines } : {}), ...(o.signal ? { signal: o.signal } : {}),
    timeoutMs: o.timeoutMs ?? Math.max(20_000, (MIN_PASSES + 2) * s.guest.dirtyPeriodMs),
  });
  return { ...verdict, hostId };
}

/** checkGuest, throwing VMTC_LAB_GUEST_CORRUPTED or VMTC_LAB_GUEST_UNVERIFIED unless it is ok. */
export async function assertGuestIntact(s: Stack, o: GuestCheckOptions = {}): Promise<GuestVerdict & { hostId: string }> {
  const v = await checkGuest(s, o);
  const err = guestVerdictError(v, s.siteOf(v.hostId));
  if (err) throw err;
  return v;
}
