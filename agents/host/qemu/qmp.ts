// A QMP client over a unix socket (QEMU Machine Protocol, docs/interop/qmp-spec).
//
// Protocol steps (qmp-spec §2-§4): the server sends a greeting {"QMP": {...}}; the client must
// send `qmp_capabilities` before any other command; every command may carry an "id" that the
// server copies into its reply; asynchronous events {"event", "data", "timestamp"} may arrive
// between replies at any time.
//
// As every request/reply link here (docs/contributing.md#requests): requests are correlated by a monotonic id, each with its own timer; a reply
// that matches no pending request (it came after its timeout, or carries no id) is logged and
// dropped; closing the socket fails every pending request with a coded error.
import { EventEmitter } from 'node:events';
import { connect, type Socket } from 'node:net';
import { systemClock, type Clock } from '../../../src/common/clock.ts';
import type { Logger } from '../../../src/common/log.ts';
import { qemuError } from './errors.ts';

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

export interface QmpOptions {
  logger: Logger;
  /** How long to keep retrying while the socket is absent or refuses (QEMU still starting). Default 10 s. */
  connectTimeoutMs?: number;
  /** Default per-command timeout. Default 10 s. */
  commandTimeoutMs?: number;
  clock?: Clock;
}

interface Pending {
  command: string;
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
  timer: { cancel(): void };
  /** When it was sent (a debug log says how long QEMU took). */
  at: number;
}

export interface QmpClientEvents {
  event: [QmpEvent];
  close: [];
}

export class QmpClient extends EventEmitter<QmpClientEvents> {
  /** QEMU's version from the greeting, e.g. "7.2.22". */
  version = '';
  private buf = '';
  private seq = 0;
  private pending = new Map<number, Pending>();
  private isClosed = false;
  private greeting: ((g: Record<string, unknown>) => void) | null = null;
  private readonly log: Logger;
  private readonly clock: Clock;
  private readonly commandTimeoutMs: number;

  private constructor(private readonly sock: Socket, readonly path: string, opts: QmpOptions) {
    super();
    this.log = opts.logger;
    this.clock = opts.clock ?? systemClock;
    this.commandTimeoutMs = opts.commandTimeoutMs ?? 10_000;
    sock.setEncoding('utf8');
    sock.on('data', (chunk: string) => this.onData(chunk));
    sock.on('error', (e) => this.log.debug({ err: e.message, path }, 'qmp socket error'));
    sock.on('close', () => this.onClose());
  }

  /** Open the socket, read the greeting and negotiate capabilities (qmp-spec §4). */
  static async connect(path: string, opts: QmpOptions): Promise<QmpClient> {
    const clock = opts.clock ?? systemClock;
    const deadline = clock.now() + (opts.connectTimeoutMs ?? 10_000);
    let lastErr: unknown;
    for (;;) {
      try {
        const sock = await openSocket(path);
        const client = new QmpClient(sock, path, opts);
        await client.handshake(Math.max(1000, deadline - clock.now()));
        return client;
      } catch (e) {
        lastErr = e;
        const code = (e as NodeJS.ErrnoException).code;
        // Only "not there yet" is worth retrying; a protocol error will not fix itself. A
        // connection closed before the greeting (or the capabilities' answer) is "not there yet"
        // too: a QEMU or storage daemon still starting (or already stopping) may drop it; a
        // daemon that is gone then refuses the next attempt, and the deadline bounds them all.
        if ((code !== 'ENOENT' && code !== 'ECONNREFUSED' && code !== 'VMTC_QMP_CLOSED') || clock.now() >= deadline) break;
        await new Promise<void>((r) => clock.setTimeout(r, 50));
      }
    }
    if (lastErr && typeof lastErr === 'object' && 'code' in lastErr && String((lastErr as { code: unknown }).code).startsWith('VMTC_')) throw lastErr;
    throw qemuError('VMTC_QMP_CONNECT_FAILED', { path, reason: lastErr instanceof Error ? lastErr.message : String(lastErr) }, { cause: lastErr });
  }

  get closed(): boolean {
    return this.isClosed;
  }

  private async handshake(timeoutMs: number): Promise<void> {
    const greeting = await new Promise<Record<string, unknown>>((resolve, reject) => {
      const timer = this.clock.setTimeout(() => {
        this.greeting = null;
        reject(qemuError('VMTC_QMP_TIMEOUT', { path: this.path, command: '(greeting)', timeoutMs }));
        this.close();
      }, timeoutMs);
      this.greeting = (g) => {
        timer.cancel();
        resolve(g);
      };
      this.once('close', () => {
        timer.cancel();
        reject(qemuError('VMTC_QMP_CLOSED', { path: this.path, command: '(greeting)' }));
      });
    });
    const v = (greeting.version as { qemu?: { major: number; minor: number; micro: number } } | undefined)?.qemu;
    if (v) this.version = `${v.major}.${v.minor}.${v.micro}`;
    await this.execute('qmp_capabilities');
  }

  /** Run one QMP command; resolves with its "return" value, rejects with a coded VmtcError. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, opts: { timeoutMs?: number } = {}): Promise<T> {
    if (this.isClosed) return Promise.reject(qemuError('VMTC_QMP_CLOSED', { path: this.path, command }));
    const id = ++this.seq;
    const timeoutMs = opts.timeoutMs ?? this.commandTimeoutMs;
    return new Promise<T>((resolve, reject) => {
      const timer = this.clock.setTimeout(() => {
        this.pending.delete(id);
        reject(qemuError('VMTC_QMP_TIMEOUT', { path: this.path, command, id, timeoutMs }));
      }, timeoutMs);
      this.pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject, timer, at: this.clock.now() });
      const msg: Record<string, unknown> = { execute: command, id };
      if (args !== undefined) msg.arguments = args;
      this.sock.write(JSON.stringify(msg) + '\n');
    });
  }

  close(): void {
    if (!this.isClosed) this.sock.destroy();
  }

  private onData(chunk: string): void {
    this.buf += chunk;
    let nl: number;
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      if (line) this.onLine(line);
    }
  }

  private onLine(line: string): void {
    let msg: Record<string, unknown>;
    try {
      msg = JSON.parse(line) as Record<string, unknown>;
    } catch {
      this.log.warn({ path: this.path, line: line.slice(0, 200) }, 'qmp: unparsable line dropped');
      return;
    }
    if ('QMP' in msg) {
      const g = this.greeting;
      this.greeting = null;
      if (g) g(msg.QMP as Record<string, unknown>);
      else this.log.warn({ path: this.path }, 'qmp: unexpected greeting dropped');
      return;
    }
    if (typeof msg.event === 'string') {
      this.emit('event', { event: msg.event, data: msg.data as Record<string, unknown> | undefined, timestamp: msg.timestamp as QmpEvent['timestamp'] });
      return;
    }
    const id = typeof msg.id === 'number' ? msg.id : undefined;
    const p = id === undefined ? undefined : this.pending.get(id);
    if (!p) {
      // Late (after its timeout) or unknown: never fatal to the link (docs/contributing.md#requests).
      this.log.warn({ path: this.path, id: msg.id ?? null, reply: line.slice(0, 200) }, 'qmp: reply matches no pending command, dropped');
      return;
    }
    this.pending.delete(id!);
    p.timer.cancel();
    this.log.debug({ command: p.command, ms: this.clock.now() - p.at }, 'qmp command answered');
    if ('error' in msg) {
      const err = msg.error as { class?: string; desc?: string };
      p.reject(qemuError('VMTC_QMP_COMMAND_FAILED', { command: p.command, class: err.class ?? 'unknown', desc: err.desc ?? '' }, {
        message: `QEMU refused ${p.command}: ${err.desc ?? err.class ?? 'error'}`,
        cause: new Error(`${err.class}: ${err.desc}`),
      }));
    } else if ('return' in msg) {
      p.resolve(msg.return);
    } else {
      p.reject(qemuError('VMTC_QMP_PROTOCOL', { command: p.command, reply: line.slice(0, 200) }));
    }
  }

  private onClose(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    for (const [id, p] of this.pending) {
      p.timer.cancel();
      p.reject(qemuError('VMTC_QMP_CLOSED', { path: this.path, command: p.command, id }));
    }
    this.pending.clear();
    this.emit('close');
  }
}

function openSocket(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect(path);
    const onErr = (e: Error) => {
      s.destroy();
      reject(e);
    };
    s.once('error', onErr);
    s.once('connect', () => {
      s.off('error', onErr);
      resolve(s);
    });
  });
}
