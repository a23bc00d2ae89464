// The agent's end of the controller link, shared by the host agent and the tunnel agent.
//
// First run (with an enrolment token): make a key and a CSR, POST {controllerUrl}/v1/enroll, keep
// agent.key (0600), agent.crt, ca.crt and agent.json in the data dir. Every run: connect to the
// hub's wss:// URL with that certificate, trusting only the stored CA (pinned: the system roots are
// not consulted), say hello, serve the controller's requests, send events, and reconnect with
// exponential backoff and jitter when the link drops. A link that sees no ping for 3 heartbeats is
// considered dead (a silent controller or a black-holed path) and is replaced.
import { EventEmitter } from 'node:events';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import WebSocket from 'ws';
import { isoTime, keepAliveClock, type Clock } from '../../src/common/clock.ts';
import type { Logger } from '../../src/common/log.ts';
import { commonError, VmtcError } from '../../src/common/errors.ts';
import { sha256Hex } from '../../src/common/hash.ts';
import { RpcPeer, type Handler } from '../../src/common/rpc.ts';
import { fingerprint, makeKeyAndCsr, writeAtomic } from '../../src/common/pki.ts';

export type AgentKind = 'host' | 'tunnel';

export interface BackoffOptions {
  /** First retry delay (default 200 ms), doubled each failure up to maxMs (default 10 s). */
  initialMs?: number;
  maxMs?: number;
  /** Fraction of the delay that is randomised (default 0.5: delay is in [d/2, d]). */
  jitter?: number;
  /** Random source in [0,1) (injectable for tests). */
  random?: () => number;
}

export interface AgentLinkOptions {
  kind: AgentKind;
  dataDir: string;
  logger: Logger;
  agentVersion: string;
  /** Base URL of the controller's REST API (http(s)://…); needed only to enrol. */
  controllerUrl?: string;
  /** One-time enrolment token; needed on first run only. */
  enrollToken?: string;
  /** If given, the CA certificate the controller returns at enrolment must have this sha256. */
  caFingerprint?: string;
  handlers?: Record<string, Handler>;
  backoff?: BackoffOptions;
  /** Heartbeat assumed until the hub's welcome says otherwise (default 5000 ms). */
  heartbeatMs?: number;
  /** Timeout of requests the agent itself sends (rare; default 15 s). */
  requestTimeoutMs?: number;
  /** Events kept while disconnected, sent after reconnecting (oldest dropped first). Default 256. */
  queueLimit?: number;
  /** Backoff, watchdog and enrolment timers, the enrolment date. Default keepAliveClock: while
   *  the link is down, its reconnect timer is what keeps an agent process alive. */
  clock?: Clock;
}

/** What agent.json holds. */
export interface AgentIdentity {
  hostId: string;
  kind: AgentKind;
  agentUrl: string;
  enrolledAt: string;
  /** sha256 of the token used, so restarting with the same --enroll does not enrol twice. */
  tokenSha256?: string;
}

/** Close reasons after which retrying cannot help. */
const PERMANENT = new Set(['VMTC_CERT_REVOKED', 'VMTC_CERT_UNKNOWN']);

export class AgentLink extends EventEmitter {
  readonly identity: AgentIdentity;
  private readonly log: Logger;
  private readonly handlers: Record<string, Handler>;
  private ws?: WebSocket;
  private peer?: RpcPeer;
  private ready = false;
  private stopped = false;
  private attempt = 0;
  private retryTimer?: { cancel(): void };
  private watchdog?: { cancel(): void };
  private readonly clock: Clock;
  private heartbeatMs: number;
  private readonly queue: { name: string; data: unknown }[] = [];
  /** Number of successful (welcomed) connections so far. */
  connections = 0;

  private constructor(private readonly opts: AgentLinkOptions, identity: AgentIdentity, private readonly creds: { key: string; cert: string; ca: string }) {
    super();
    this.identity = identity;
    this.log = opts.logger.child({ mod: 'agent-link', hostId: identity.hostId });
    this.handlers = { ...(opts.handlers ?? {}) };
    this.heartbeatMs = opts.heartbeatMs ?? 5000;
    this.clock = opts.clock ?? keepAliveClock;
  }

  /**
   * Enrol if needed, then start connecting (in the background: the link comes and goes, and
   * 'connected'/'disconnected' say when). Rejects only when there are no usable credentials.
   */
  static async open(opts: AgentLinkOptions): Promise<AgentLink> {
    const { identity, creds } = await ensureEnrolled(opts);
    const link = new AgentLink(opts, identity, creds);
    link.connect();
    return link;
  }

  get hostId(): string {
    return this.identity.hostId;
  }

  get connected(): boolean {
    return this.ready;
  }

  setHandler(method: string, h: Handler): void {
    this.handlers[method] = h;
    this.peer?.setHandler(method, h);
  }

  /**
   * Send an event to the controller. While disconnected it is queued (bounded) and sent after the
   * next welcome, unless `queue: false` (for state snapshots such as the inventory, which are
   * re-sent fresh on every connect and must not be overtaken by a stale copy).
   */
  send(name: string, data?: unknown, opts: { queue?: boolean } = {}): void {
    if (this.ready && this.peer) return this.peer.emit(name, data);
    if (opts.queue === false) return;
    this.queue.push({ name, data });
    const limit = this.opts.queueLimit ?? 256;
    while (this.queue.length > limit) this.queue.shift();
  }

  /** Resolve once connected (now, or at the next connection). */
  waitConnected(timeoutMs = 15_000): Promise<void> {
    if (this.ready) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const t = this.clock.setTimeout(() => {
        this.off('connected', ok);
        reject(commonError('VMTC_TIMEOUT', { waitingFor: 'controller link', timeoutMs }));
      }, timeoutMs);
      const ok = () => { t.cancel(); resolve(); };
      this.once('connected', ok);
    });
  }

  async close(): Promise<void> {
    this.stopped = true;
    this.retryTimer?.cancel();
    this.watchdog?.cancel();
    const ws = this.ws;
    if (!ws || ws.readyState === WebSocket.CLOSED) return;
    await new Promise<void>((resolve) => {
      const t = this.clock.setTimeout(() => { ws.terminate(); resolve(); }, 1000);
      ws.once('close', () => { t.cancel(); resolve(); });
      try {
        ws.close(1000, 'agent stopping');
      } catch {
        ws.terminate();
      }
    });
  }

  private connect(): void {
    if (this.stopped) return;
    const url = this.identity.agentUrl;
    const ws = new WebSocket(url, {
      key: this.creds.key,
      cert: this.creds.cert,
      ca: this.creds.ca,
      maxPayload: 1024 * 1024,
      handshakeTimeout: 10_000,
    });
    this.ws = ws;
    const peer = new RpcPeer(ws, {
      logger: this.log,
      timeoutMs: this.opts.requestTimeoutMs ?? 15_000,
      handlers: this.handlers,
      onEvent: (name, data) => this.onEvent(name, data),
    });
    this.peer = peer;
    ws.on('open', () => {
      this.log.debug({ url }, 'link open, saying hello');
      peer.emit('hello', { kind: this.opts.kind, agentVersion: this.opts.agentVersion });
      this.armWatchdog();
    });
    ws.on('ping', () => this.armWatchdog());
    ws.on('message', () => this.armWatchdog());
    ws.on('unexpected-response', (_req, res) => {
      this.log.warn({ status: res.statusCode }, 'hub answered the upgrade with HTTP');
      ws.terminate();
    });
    ws.on('error', (err) => this.log.info({ reason: err.message, url }, 'link error'));
    ws.on('close', (code, reasonBuf) => this.onClose(ws, code, reasonBuf.toString()));
  }

  private onEvent(name: string, data: unknown): void {
    if (name === 'welcome') {
      const hb = (data as { heartbeatMs?: unknown } | null)?.heartbeatMs;
      if (typeof hb === 'number' && hb > 0) this.heartbeatMs = hb;
      this.ready = true;
      this.attempt = 0;
      this.connections++;
      this.armWatchdog();
      this.log.info({ url: this.identity.agentUrl, heartbeatMs: this.heartbeatMs }, 'connected to controller');
      // 'connected' first so listeners can send fresh state before the stale queued events.
      this.emit('connected');
      for (const e of this.queue.splice(0)) this.peer?.emit(e.name, e.data);
      return;
    }
    this.emit('event', name, data);
  }

  private armWatchdog(): void {
    this.watchdog?.cancel();
    if (this.stopped) return;
    // The open socket keeps the process alive; this timer only watches it.
    this.watchdog = this.clock.setTimeout(() => {
      this.log.warn({ heartbeatMs: this.heartbeatMs }, 'no ping from the controller for 3 heartbeats: dropping the link');
      this.ws?.terminate();
    }, 3 * this.heartbeatMs);
  }

  private onClose(ws: WebSocket, code: number, reason: string): void {
    if (ws !== this.ws) return;
    this.watchdog?.cancel();
    this.peer?.close();
    const was = this.ready;
    this.ready = false;
    if (was) {
      this.log.warn({ code, reason }, 'disconnected from controller');
      this.emit('disconnected', { code, reason });
    }
    if (this.stopped) return;
    if (PERMANENT.has(reason)) {
      // A revoked or foreign certificate will never be accepted again: stop, and say why.
      this.stopped = true;
      this.log.error({ code, reason }, 'controller refused this agent permanently; re-enrol with a new token');
      this.emit('refused', new VmtcError(reason, 403, 'the controller refused this agent certificate', { code }));
      return;
    }
    const b = this.opts.backoff ?? {};
    const base = Math.min(b.maxMs ?? 10_000, (b.initialMs ?? 200) * 2 ** this.attempt);
    const jitter = b.jitter ?? 0.5;
    const delay = Math.round(base * (1 - jitter * (b.random ?? Math.random)()));
    this.attempt = Math.min(this.attempt + 1, 30);
    this.log.debug({ delay, attempt: this.attempt }, 'reconnecting');
    this.retryTimer = this.clock.setTimeout(() => this.connect(), delay);
  }
}

// ---- enrolment (files in the data dir) ---------------------------------------------------

export function identityFiles(dataDir: string) {
  return { key: join(dataDir, 'agent.key'), cert: join(dataDir, 'agent.crt'), ca: join(dataDir, 'ca.crt'), json: join(dataDir, 'agent.json') };
}

function loadStored(dataDir: string): { identity: AgentIdentity; creds: { key: string; cert: string; ca: string } } | undefined {
  const f = identityFiles(dataDir);
  if (!existsSync(f.json)) return undefined;
  try {
    const identity = JSON.parse(readFileSync(f.json, 'utf8')) as AgentIdentity;
    if (typeof identity.hostId !== 'string' || typeof identity.agentUrl !== 'string') throw new Error('agent.json lacks hostId or agentUrl');
    return { identity, creds: { key: readFileSync(f.key, 'utf8'), cert: readFileSync(f.cert, 'utf8'), ca: readFileSync(f.ca, 'utf8') } };
  } catch (e) {
    throw commonError('VMTC_CONFIG_INVALID', { field: 'data', dir: dataDir, reason: (e as Error).message }, { message: 'stored agent credentials are unreadable', cause: e });
  }
}

async function ensureEnrolled(opts: AgentLinkOptions) {
  const stored = loadStored(opts.dataDir);
  const tokenSha = opts.enrollToken ? sha256Hex(opts.enrollToken) : undefined;
  // A service unit may keep passing the same --enroll on every start: that token is spent, so
  // the stored credentials are used. A different token means "enrol again" (e.g. after revocation).
  if (stored && (!tokenSha || stored.identity.tokenSha256 === tokenSha)) {
    if (stored.identity.kind !== opts.kind) throw commonError('VMTC_CONFIG_INVALID', { field: 'data', enrolledAs: stored.identity.kind, kind: opts.kind }, { message: 'the data dir holds credentials of another kind of agent' });
    return stored;
  }
  if (!opts.enrollToken) {
    throw commonError('VMTC_CONFIG_INVALID', { field: 'enroll', dir: opts.dataDir }, { message: 'no stored credentials in the data dir: an enrolment token is needed the first time' });
  }
  if (!opts.controllerUrl) throw commonError('VMTC_CONFIG_INVALID', { field: 'controller' }, { message: 'the controller URL is needed to enrol' });
  const { keyPem, csrPem } = makeKeyAndCsr(`vmtc-${opts.kind}-agent`);
  const url = new URL('/v1/enroll', opts.controllerUrl).toString();
  const clock = opts.clock ?? keepAliveClock;
  const abort = new AbortController();
  const timer = clock.setTimeout(() => abort.abort(new Error('no answer in 15000 ms')), 15_000);
  let res: Response;
  let body: Record<string, unknown> | undefined;
  try {
    try {
      res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token: opts.enrollToken, csr: csrPem }), signal: abort.signal });
    } catch (e) {
      throw commonError('VMTC_PEER_UNREACHABLE', { url, reason: (e as Error).message }, { message: 'cannot reach the controller to enrol', cause: e });
    }
    body = (await res.json().catch(() => undefined)) as Record<string, unknown> | undefined;
  } finally {
    timer.cancel();
  }
  if (!res.ok) throw VmtcError.fromBody({ ...(body ?? {}), status: res.status }, res.status);
  const r = body as { hostId?: unknown; kind?: unknown; certificate?: unknown; caCertificate?: unknown; agentUrl?: unknown } | undefined;
  if (!r || typeof r.hostId !== 'string' || typeof r.certificate !== 'string' || typeof r.caCertificate !== 'string' || typeof r.agentUrl !== 'string') {
    throw commonError('VMTC_PEER_BAD_REPLY', { url }, { message: 'the enrolment answer lacks fields' });
  }
  if (r.kind !== opts.kind) throw commonError('VMTC_CONFIG_INVALID', { field: 'enroll', tokenKind: r.kind, kind: opts.kind }, { message: `the token was minted for a ${String(r.kind)} agent` });
  if (opts.caFingerprint && normFp(fingerprint(r.caCertificate)) !== normFp(opts.caFingerprint)) {
    throw commonError('VMTC_CONFIG_INVALID', { field: 'ca-fingerprint', expected: opts.caFingerprint, got: fingerprint(r.caCertificate) }, { message: 'the controller CA does not match the expected fingerprint' });
  }
  const f = identityFiles(opts.dataDir);
  mkdirSync(opts.dataDir, { recursive: true, mode: 0o700 });
  writeAtomic(f.key, keyPem, 0o600);
  writeAtomic(f.cert, r.certificate, 0o644);
  writeAtomic(f.ca, r.caCertificate, 0o644);
  const identity: AgentIdentity = { hostId: r.hostId, kind: opts.kind, agentUrl: r.agentUrl, enrolledAt: isoTime(clock.now()), ...(tokenSha ? { tokenSha256: tokenSha } : {}) };
  writeAtomic(f.json, JSON.stringify(identity, null, 2) + '\n', 0o600);
  opts.logger.info({ hostId: r.hostId, agentUrl: r.agentUrl }, 'enrolled with the controller');
  return { identity, creds: { key: keyPem, cert: r.certificate, ca: r.caCertificate } };
}

function normFp(s: string): string {
  return s.replace(/[^0-9a-fA-F]/g, '').toUpperCase();
}
