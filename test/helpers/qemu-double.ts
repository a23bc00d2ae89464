// A TEST DOUBLE of QEMU for the QEMU driver's unit tests (real QEMU runs only in the lab:
// docs/contributing.md#real-things-in-tests): QemuHostDouble stands in for the host (the driver's
// QemuSystem seam: "starting" QEMU writes its pidfile and creates a QmpDouble; no process runs)
// and QmpDouble for a QEMU's QMP connection (the driver's QmpLink seam). The QMP double answers
// the commands the driver sends the way QEMU does, keeps a log of them, and lets a test set what
// query-migrate and query-status report and send QEMU's events. Time in these tests is a
// ManualClock that only the test moves (idle() lets real time pass for the driver's file I/O).
import { EventEmitter } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { QemuDriver } from '../../agents/host/qemu/driver.ts';
import { qemuError } from '../../agents/host/qemu/errors.ts';
import type { QmpEvent } from '../../agents/host/qemu/qmp.ts';
import type { QemuSystem, QmpLink, QueryMigrate } from '../../agents/host/qemu/types.ts';
import type { VmSpec } from '../../src/common/agent-protocol.ts';
import { ManualClock } from '../../src/common/clock.ts';
import { silentLogger } from '../../src/common/log.ts';
import type { Cleanup } from './cleanups.ts';

type Handler = (args: Record<string, unknown> | undefined) => unknown;

export class QmpDouble extends EventEmitter implements QmpLink {
  /** QEMU's RunState as query-status reports it. */
  runState: string;
  /** What query-migrate answers (a test moves it along). */
  migration: QueryMigrate = {};
  /** The migration parameters, as migrate-set-parameters left them (QEMU's defaults at start:
   *  128 MiB/s, 300 ms) and query-migrate-parameters reports them. */
  parameters: Record<string, unknown> = { 'max-bandwidth': 134_217_728, 'downtime-limit': 300 };
  /** Every command the driver sent, in order. */
  readonly log: { command: string; args?: Record<string, unknown> }[] = [];
  /** Per-command overrides of the built-in answers. */
  readonly handlers = new Map<string, Handler>();
  private isClosed = false;

  /** `blocks`: what query-block reports (the -drive devices); `host` hears of quit and of the NBD
   *  server opening (a new listening port of this process). */
  constructor(readonly path: string, initial: string, private readonly blocks: unknown[], private readonly host: { quit(): void; nbdStarted(): void }) {
    super();
    this.runState = initial;
  }

  get closed(): boolean {
    return this.isClosed;
  }

  commands(): string[] {
    return this.log.map((c) => c.command);
  }

  /** The arguments of every `command` sent. */
  argsOf(command: string): (Record<string, unknown> | undefined)[] {
    return this.log.filter((c) => c.command === command).map((c) => c.args);
  }

  /** A QEMU event, delivered as the socket would: after the current turn. */
  event(event: string, data?: Record<string, unknown>): void {
    const ev: QmpEvent = { event, ...(data ? { data } : {}) };
    queueMicrotask(() => this.emit('event', ev));
  }

  async execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    if (this.isClosed) throw qemuError('VMTC_QMP_CLOSED', { path: this.path, command });
    this.log.push({ command, ...(args ? { args } : {}) });
    const h = this.handlers.get(command);
    if (h) return (await h(args)) as T;
    return this.builtin(command, args) as T;
  }

  /** The QEMU process went away: the socket closes. */
  close(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    queueMicrotask(() => this.emit('close'));
  }

  private builtin(command: string, args?: Record<string, unknown>): unknown {
    switch (command) {
      case 'query-status':
        return { status: this.runState, running: this.runState === 'running' };
      case 'query-migrate':
        return structuredClone(this.migration);
      case 'query-block':
        return structuredClone(this.blocks);
      case 'query-block-jobs':
        return [];
      case 'nbd-server-start':
        this.host.nbdStarted();
        return {};
      case 'migrate-incoming': {
        const port = /:(\d+)$/.exec(String(args?.uri))?.[1];
        this.migration = { status: 'setup', 'socket-address': [{ host: '127.0.0.1', port: port === '0' || !port ? '49152' : port }] };
        return {};
      }
      case 'migrate':
        this.migration = { status: 'setup' };
        return {};
      case 'migrate-set-parameters':
        this.parameters = { ...this.parameters, ...(args ?? {}) };
        return {};
      case 'query-migrate-parameters':
        return structuredClone(this.parameters);
      case 'migrate_cancel':
        if (this.migration.status && this.migration.status !== 'completed') this.migration = { ...this.migration, status: 'cancelling' };
        return {};
      case 'stop':
        this.runState = 'paused';
        this.event('STOP');
        return {};
      case 'cont':
        this.runState = 'running';
        this.event('RESUME');
        return {};
      case 'quit':
        this.runState = 'shutdown';
        this.host.quit();
        this.close();
        return {};
      default:
        // migrate-set-capabilities, migrate-continue,
        // migrate-start-postcopy, nbd-server-*, block-*: accepted.
        return {};
    }
  }
}

/** The host: QEMU "starts" (pidfile, QMP double), lives until `quit` or crash(), `qemu-img`
 *  succeeds without doing anything, and `ip` keeps the taps' state as Linux would: `tuntap add`
 *  makes a tap that is down, `link set … master BR [up]` joins it to a bridge (up only when
 *  asked), `link set … up` brings it up, `link del` removes it (an absent tap is an error) with
 *  its bridge's entries. `bridge fdb replace MAC dev TAP master dynamic` points the bridge's entry
 *  for MAC at TAP, refused (as the kernel does) for a device that does not exist or is in no
 *  bridge; entries on a port that goes down are flushed, as the bridge does. */
export class QemuHostDouble implements QemuSystem {
  readonly qmps = new Map<string, QmpDouble>();
  readonly argvs: string[][] = [];
  /** Tap devices by name, as `ip` left them. */
  readonly links = new Map<string, { master?: string; up: boolean }>();
  /** Bridge forwarding entries, `bridge/MAC` → port, as `bridge fdb` left them. */
  readonly fdb = new Map<string, string>();
  /** The virtual size QEMU reports for every disk. */
  diskBytes = 1024 * 1024;
  private readonly alive = new Set<number>();
  private readonly ports = new Map<number, number[]>();
  private nextPid = 4_000_000;

  /** Commands made ready (QemuSystem.prepare), and what became of each: run through exec, or
   *  cancelled. */
  readonly prepared: { argv: string[]; fate?: 'run' | 'cancelled' }[] = [];

  prepare(argv: string[]): { run(): Promise<{ code: number | null; stderr: string }>; cancel(): void } {
    const p: { argv: string[]; fate?: 'run' | 'cancelled' } = { argv };
    this.prepared.push(p);
    return {
      run: () => {
        if (p.fate) return Promise.resolve({ code: -1, stderr: 'used' });
        p.fate = 'run';
        return this.exec(argv);
      },
      cancel: () => {
        p.fate ??= 'cancelled';
      },
    };
  }

  /** Holds a command until the promise it returns settles (a test's slow `bridge`, say). */
  gate?: (argv: string[]) => Promise<void> | undefined;

  async exec(argv: string[]): Promise<{ code: number | null; stderr: string }> {
    this.argvs.push(argv);
    await this.gate?.(argv);
    if (argv[0] === 'ip') return this.ip(argv[1] === '-n' ? argv.slice(3) : argv.slice(1));
    if (argv[0] === 'bridge') return this.bridge(argv[1] === '-n' ? argv.slice(3) : argv.slice(1));
    const at = argv.indexOf('-pidfile');
    if (at < 0) return { code: 0, stderr: '' };
    const pid = this.nextPid++;
    writeFileSync(argv[at + 1]!, `${pid}\n`);
    const qmpPath = /id=qmp,path=(.*?),server=on/.exec(argv.join(' '))?.[1];
    if (!qmpPath) throw new Error('no QMP socket in the QEMU command line');
    // -incoming defer: waiting for the stream; -S: not started; otherwise the guest runs.
    const initial = argv.includes('-incoming') ? 'inmigrate' : argv.includes('-S') ? 'prelaunch' : 'running';
    // Both forms of the driver's -drive (agents/host/qemu/cmdline.ts): `file=…,format=…` and a
    // writable qcow2 disk's raw pass-through node over `diskN-fmt`.
    const blocks = argv.flatMap((a) => {
      const id = /(?:^|,)id=(disk\d+)/.exec(a)?.[1];
      if (!id || !(a.startsWith('file=') || a.startsWith('if=virtio,'))) return [];
      const raw = a.includes('driver=raw,file.driver=qcow2');
      return [{ device: id, inserted: { 'node-name': `#block-${id}`, image: { 'virtual-size': this.diskBytes, ...(raw ? { format: 'raw' } : {}) } } }];
    });
    this.qmps.set(qmpPath, new QmpDouble(qmpPath, initial, blocks, {
      quit: () => this.alive.delete(pid),
      nbdStarted: () => this.ports.set(pid, [...(this.ports.get(pid) ?? []), 10809]),
    }));
    this.alive.add(pid);
    return { code: 0, stderr: '' };
  }

  private ip(a: string[]): { code: number | null; stderr: string } {
    const fail = (why: string) => ({ code: 1, stderr: why });
    if (a[0] === 'tuntap' && a[1] === 'add') {
      if (this.links.has(a[3]!)) return fail('RTNETLINK answers: File exists');
      this.links.set(a[3]!, { up: false });
    } else if (a[0] === 'link' && a[1] === 'del') {
      if (!this.links.delete(a[2]!)) return fail(`Cannot find device "${a[2]}"`);
      this.flushPort(a[2]!);
    } else if (a[0] === 'link' && a[1] === 'set') {
      const l = this.links.get(a[2]!);
      if (!l) return fail(`Cannot find device "${a[2]}"`);
      const m = a.indexOf('master');
      if (m >= 0) l.master = a[m + 1]!;
      if (a.includes('up')) l.up = true;
      if (a.includes('down')) {
        l.up = false;
        this.flushPort(a[2]!);
      }
    }
    return { code: 0, stderr: '' };
  }

  private bridge(a: string[]): { code: number | null; stderr: string } {
    if (a[0] !== 'fdb' || a[1] !== 'replace' || a[3] !== 'dev' || !a.includes('master')) return { code: 1, stderr: `double: unsupported bridge ${a.join(' ')}` };
    const port = a[4]!;
    const l = this.links.get(port);
    if (!l) return { code: 1, stderr: `Cannot find device "${port}"` };
    if (!l.master) return { code: 1, stderr: 'RTNETLINK answers: Operation not supported' };
    this.fdb.set(`${l.master}/${a[2]!.toLowerCase()}`, port);
    return { code: 0, stderr: '' };
  }

  private flushPort(port: string): void {
    for (const [k, p] of this.fdb) if (p === port) this.fdb.delete(k);
  }

  pidAlive(pid: number): boolean {
    return this.alive.has(pid);
  }

  async kill(pid: number): Promise<void> {
    this.alive.delete(pid);
  }

  async listeningPorts(pid: number): Promise<number[]> {
    return [...(this.ports.get(pid) ?? [])];
  }

  async connectQmp(path: string): Promise<QmpLink> {
    const q = this.qmps.get(path);
    if (!q || q.closed) throw qemuError('VMTC_QMP_CONNECT_FAILED', { path, reason: 'no QEMU' });
    return q;
  }

  /** The QMP double of the (last) QEMU started with this QMP socket. */
  qmpAt(path: string): QmpDouble {
    const q = this.qmps.get(path);
    if (!q) throw new Error(`no QEMU at ${path}`);
    return q;
  }
}

/** How a promise ended, and when on the test's clock. */
export interface Outcome<T> {
  settled: boolean;
  value?: T;
  error?: { code?: string; details?: Record<string, unknown> } & Error;
  at?: number;
}

export function watch<T>(p: Promise<T>, clock: ManualClock): Outcome<T> {
  const o: Outcome<T> = { settled: false };
  p.then(
    (v) => Object.assign(o, { settled: true, value: v, at: clock.now() }),
    (e: unknown) => Object.assign(o, { settled: true, error: e, at: clock.now() }),
  );
  return o;
}

/** Let the code under test run (QMP answers, file I/O) until it waits on the clock or `until`
 *  holds. Real time passes here only for the driver's file I/O; the clock does not move. */
export async function idle(clock: ManualClock, until: () => boolean = () => false): Promise<void> {
  for (let i = 0; i < 500; i++) {
    if (until()) return;
    await new Promise((r) => setImmediate(r));
    await new Promise((r) => setTimeout(r, 1));
    if (clock.pending() > 0 && i > 2) return;
  }
  throw new Error('the code under test neither settled nor waited on the clock');
}

/** Move the clock timer by timer (letting the code run in between) until `o` settles or `limitMs`
 *  of clock time have passed. */
export async function runUntilSettled(clock: ManualClock, o: Outcome<unknown>, limitMs: number): Promise<void> {
  const end = clock.now() + limitMs;
  for (;;) {
    await idle(clock, () => o.settled);
    if (o.settled) return;
    const next = clock.nextAt();
    if (next === undefined || next > end) return;
    clock.advanceToNext();
  }
}

export interface DriverUnderTest {
  driver: QemuDriver;
  host: QemuHostDouble;
  clock: ManualClock;
  dataDir: string;
  /** The QMP double of a VM the driver started. */
  qmp(vmId: string): Promise<QmpDouble>;
}

/** A QemuDriver on the doubles and a ManualClock, in a temp dir the cleanups remove. */
export function driverUnderTest(cleanups: Cleanup[], opts: { pollMs?: number } = {}): DriverUnderTest {
  const dataDir = mkdtempSync(join(tmpdir(), 'vmtc-qemu-unit-'));
  cleanups.push(() => rmSync(dataDir, { recursive: true, force: true }));
  const clock = new ManualClock();
  const host = new QemuHostDouble();
  // No QEMU binary is ever run: asking it for its machine types fails and the alias is kept.
  const driver = new QemuDriver({ dataDir, logger: silentLogger(), clock, system: host, qemuBinary: join(dataDir, 'no-qemu'), pollMs: opts.pollMs ?? 200 });
  cleanups.push(() => driver.close());
  return { driver, host, clock, dataDir, qmp: async (vmId) => host.qmpAt((await driver.paths(vmId)).qmp) };
}

export function vmSpec(vmId: string, extra: Partial<VmSpec> = {}): VmSpec {
  return { vmId, project: 'unit', vcpus: 1, memoryMb: 64, diskGb: 0, kernel: '/boot/vmlinuz-unit', ...extra };
}
