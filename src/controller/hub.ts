// The controller's agent hub (docs/design.md#trust): a WebSocket server behind mutual TLS where
// host agents and tunnel agents keep one link each. The hub owns the deployment CA, enrols agents
// with one-time tokens, and carries request/reply and events over RpcPeer.
//
// Identity: the TLS layer refuses any client without a certificate from our CA; the hub then reads
// the host id from the certificate's CN and checks its serial against the store (so a revoked
// certificate is turned away even though its signature is still good). An agent never says who it
// is — it can only prove it.
import { EventEmitter } from 'node:events';
import { createServer, type Server } from 'node:https';
import type { IncomingMessage } from 'node:http';
import type { TLSSocket } from 'node:tls';
import { join } from 'node:path';
import { WebSocketServer, type WebSocket } from 'ws';
import type { Logger } from '../common/log.ts';
import type { Db } from '../common/db.ts';
import { systemClock, randomIds, type Clock, type Ids } from '../common/clock.ts';
import { commonError } from '../common/errors.ts';
import { RpcPeer } from '../common/rpc.ts';
import { AGENT_EVENTS, AGENT_RESULTS, HELLO } from '../common/agent-schemas.ts';
import { CsrError, fingerprint, loadOrCreateCa, issueServerCert, signClientCsr, normaliseSerial, randomSerial, type Ca } from '../common/pki.ts';
import type { HostInventory, HostMethods, Hello } from '../common/agent-protocol.ts';
import { PkiStore, hashToken, type AgentKind } from './pki-store.ts';
import { hubError, CLOSE_CODES } from './hub-errors.ts';

export interface HubOptions {
  logger: Logger;
  db: Db;
  /** The CA lives in dataDir/pki (ca.key 0600, ca.crt). */
  dataDir: string;
  listen: { host: string; port: number };
  clock?: Clock;
  ids?: Ids;
  /** Interval of the hub's WebSocket pings; a link with no pong for 2 intervals is dropped. Default 5000. */
  heartbeatMs?: number;
  /** Default timeout of request()/requestRaw() and of the agent's hello. Default 15000. */
  requestTimeoutMs?: number;
  /** Lifetime of an enrolment token when the caller gives none. Default 1 h. */
  enrollTokenTtlMs?: number;
  /** Extra DNS names / IPs for the server certificate (beyond loopback and listen.host). */
  serverNames?: string[];
  /** URL agents are told to connect to after enrolment (default: this.url). */
  advertiseUrl?: string;
}

export const HUB_DEFAULTS = { heartbeatMs: 5000, requestTimeoutMs: 15_000, enrollTokenTtlMs: 3_600_000 } as const;

export interface AgentSummary {
  hostId: string;
  kind: AgentKind;
  connected: boolean;
  connectedAt?: number;
  lastSeen?: number;
  /** Serials of this host's certificates that are not revoked. */
  certSerials: string[];
  agentVersion?: string;
}

export interface EnrollToken {
  token: string;
  hostId: string;
  kind: string;
  expiresAt: number;
  caFingerprint: string;
}

export interface EnrollResult {
  hostId: string;
  kind: string;
  certPem: string;
  caCertPem: string;
  agentUrl: string;
}

interface Link {
  hostId: string;
  kind: AgentKind;
  serial: string;
  ws: WebSocket;
  peer: RpcPeer;
  log: Logger;
  /** True once the agent's hello was accepted; only then is the link the host's current one. */
  ready: boolean;
  closed: boolean;
  connectedAt: number;
  lastSeen: number;
  lastPong: number;
  agentVersion?: string;
  helloTimer?: { cancel(): void };
  heartbeat?: { cancel(): void };
}

const HOST_ID_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

export class AgentHub extends EventEmitter {
  readonly url: string;
  readonly caCertPem: string;
  readonly caFingerprint: string;
  private readonly links = new Map<string, Link>();
  private readonly inventories = new Map<string, HostInventory>();
  private readonly log: Logger;
  private readonly clock: Clock;
  private readonly ids: Ids;
  private readonly heartbeatMs: number;
  private readonly requestTimeoutMs: number;
  private readonly tokenTtlMs: number;
  private closing = false;

  private constructor(
    private readonly opts: HubOptions,
    private readonly ca: Ca,
    private readonly store: PkiStore,
    private readonly server: Server,
    private readonly wss: WebSocketServer,
    url: string,
  ) {
    super();
    this.url = url;
    this.caCertPem = ca.certPem;
    this.caFingerprint = ca.fingerprint;
    this.log = opts.logger.child({ mod: 'hub' });
    this.clock = opts.clock ?? systemClock;
    this.ids = opts.ids ?? randomIds;
    this.heartbeatMs = opts.heartbeatMs ?? HUB_DEFAULTS.heartbeatMs;
    this.requestTimeoutMs = opts.requestTimeoutMs ?? HUB_DEFAULTS.requestTimeoutMs;
    this.tokenTtlMs = opts.enrollTokenTtlMs ?? HUB_DEFAULTS.enrollTokenTtlMs;
    wss.on('connection', (ws, req) => this.onConnection(ws, req));
  }

  /** Create or load the CA in dataDir/pki, issue a fresh server certificate, listen (wss, mTLS). */
  static async start(opts: HubOptions): Promise<AgentHub> {
    const log = opts.logger.child({ mod: 'hub' });
    for (const [k, v] of [['heartbeatMs', opts.heartbeatMs], ['requestTimeoutMs', opts.requestTimeoutMs], ['enrollTokenTtlMs', opts.enrollTokenTtlMs]] as const) {
      if (v !== undefined && !(Number.isFinite(v) && v > 0)) throw commonError('VMTC_CONFIG_INVALID', { field: k, value: v }, { message: `${k} must be a positive number` });
    }
    const ca = loadOrCreateCa(join(opts.dataDir, 'pki'));
    const store = new PkiStore(opts.db);
    // The server certificate is reissued at every start (cheap) so its names follow the config.
    const server = issueServerCert(ca, { names: [opts.listen.host, ...(opts.serverNames ?? [])] });
    const https = createServer({
      key: server.keyPem,
      cert: server.certPem,
      ca: ca.certPem,
      requestCert: true,
      rejectUnauthorized: true,
      minVersion: 'TLSv1.2',
    }, (_req, res) => {
      // Only WebSocket upgrades are served here; the REST API is elsewhere.
      res.writeHead(426, { 'content-type': 'application/json', upgrade: 'websocket' });
      res.end(JSON.stringify({ code: 'VMTC_BAD_REQUEST', message: 'this endpoint only accepts WebSocket agent links' }));
    });
    https.on('tlsClientError', (err) => log.info({ reason: err.message }, 'agent TLS handshake refused'));
    const wss = new WebSocketServer({ server: https, maxPayload: 1024 * 1024 });
    wss.on('error', (err) => log.error({ err }, 'websocket server error'));
    await new Promise<void>((resolve, reject) => {
      const onErr = (e: Error) => reject(commonError('VMTC_CONFIG_INVALID', { field: 'listen', value: `${opts.listen.host}:${opts.listen.port}`, reason: e.message }, { message: 'the agent hub cannot listen', cause: e }));
      https.once('error', onErr);
      https.listen(opts.listen.port, opts.listen.host, () => {
        https.off('error', onErr);
        resolve();
      });
    });
    const addr = https.address();
    const port = addr && typeof addr === 'object' ? addr.port : opts.listen.port;
    let host = opts.listen.host;
    if (host === '0.0.0.0' || host === '') host = '127.0.0.1';
    if (host === '::') host = '::1';
    const url = `wss://${host.includes(':') ? `[${host}]` : host}:${port}`;
    log.info({ url, caFingerprint: ca.fingerprint }, 'agent hub listening');
    return new AgentHub(opts, ca, store, https, wss, url);
  }

  // ---- enrolment -------------------------------------------------------------------------

  mintEnrollToken(o: { kind: 'host' | 'tunnel'; hostId: string; ttlMs?: number }): EnrollToken {
    if (o.kind !== 'host' && o.kind !== 'tunnel') throw commonError('VMTC_VALIDATION', { field: 'kind', value: o.kind });
    if (typeof o.hostId !== 'string' || !HOST_ID_RE.test(o.hostId)) throw hubError('VMTC_HOST_ID_INVALID', { hostId: o.hostId });
    const ttl = o.ttlMs ?? this.tokenTtlMs;
    if (!(Number.isFinite(ttl) && ttl > 0)) throw commonError('VMTC_VALIDATION', { field: 'ttl', value: ttl });
    const known = this.store.kindOf(o.hostId);
    if (known && known !== o.kind) throw hubError('VMTC_AGENT_KIND_CONFLICT', { hostId: o.hostId, enrolledAs: known, requested: o.kind });
    const token = `vmtc-enroll-${this.ids.secret(32)}`;
    const now = this.clock.now();
    const expiresAt = now + ttl;
    this.store.addToken({ tokenHash: hashToken(token), kind: o.kind, hostId: o.hostId, createdAt: now, expiresAt });
    this.log.info({ hostId: o.hostId, kind: o.kind, expiresAt }, 'enrolment token minted');
    return { token, hostId: o.hostId, kind: o.kind, expiresAt, caFingerprint: this.caFingerprint };
  }

  /**
   * Exchange a one-time token and a CSR for a client certificate. The certificate's CN is the host
   * id the token was minted for, whatever the CSR asks for. A CSR that does not verify leaves the
   * token unused, so the agent can retry with a good one.
   */
  enroll(token: string, csrPem: string): EnrollResult {
    const tokenHash = hashToken(String(token));
    const row = this.store.token(tokenHash);
    if (!row) throw hubError('VMTC_ENROLL_TOKEN_INVALID');
    const log = this.log.child({ hostId: row.hostId });
    if (row.usedAt !== null) {
      log.warn('enrolment refused: token already used');
      throw hubError('VMTC_ENROLL_TOKEN_USED', { hostId: row.hostId });
    }
    const now = this.clock.now();
    if (now >= row.expiresAt) {
      log.warn({ expiresAt: row.expiresAt }, 'enrolment refused: token expired');
      throw hubError('VMTC_ENROLL_TOKEN_EXPIRED', { hostId: row.hostId, expiresAt: row.expiresAt });
    }
    let serial = randomSerial();
    while (this.store.serialExists(serial)) serial = randomSerial();
    let signed;
    try {
      signed = signClientCsr(this.ca, String(csrPem), { commonName: row.hostId, organizationalUnit: row.kind, serial });
    } catch (e) {
      if (e instanceof CsrError) throw hubError('VMTC_CSR_INVALID', { reason: e.message }, { cause: e });
      throw e;
    }
    this.store.transaction(() => {
      if (!this.store.useToken(tokenHash, now)) throw hubError('VMTC_ENROLL_TOKEN_USED', { hostId: row.hostId });
      this.store.addCert({ serial: signed.serial, hostId: row.hostId, kind: row.kind, fingerprint: fingerprint(signed.certPem), issuedAt: now, notAfter: signed.notAfter });
    });
    log.info({ kind: row.kind, serial: signed.serial }, 'agent enrolled');
    return { hostId: row.hostId, kind: row.kind, certPem: signed.certPem, caCertPem: this.caCertPem, agentUrl: this.opts.advertiseUrl ?? this.url };
  }

  /** Revoke every certificate of a host, void its outstanding tokens, and drop its link now. */
  revoke(hostId: string): number {
    const now = this.clock.now();
    const n = this.store.transaction(() => {
      this.store.voidTokensOf(hostId, now);
      return this.store.revokeHost(hostId, now);
    });
    this.log.info({ hostId, revoked: n }, 'agent certificates revoked');
    const link = this.links.get(hostId);
    if (link) this.dropLink(link, 'VMTC_CERT_REVOKED');
    return n;
  }

  // ---- queries ---------------------------------------------------------------------------

  certSerials(hostId: string): string[] {
    return this.store.allCerts().filter((c) => c.hostId === hostId && c.revokedAt === null).map((c) => c.serial);
  }

  agents(): AgentSummary[] {
    const out = new Map<string, AgentSummary>();
    for (const c of this.store.allCerts()) {
      let a = out.get(c.hostId);
      if (!a) out.set(c.hostId, (a = { hostId: c.hostId, kind: c.kind, connected: false, certSerials: [] }));
      if (c.revokedAt === null) a.certSerials.push(c.serial);
    }
    for (const l of this.links.values()) {
      const a = out.get(l.hostId) ?? { hostId: l.hostId, kind: l.kind, connected: false, certSerials: [] };
      a.connected = true;
      a.connectedAt = l.connectedAt;
      a.lastSeen = l.lastSeen;
      if (l.agentVersion) a.agentVersion = l.agentVersion;
      out.set(l.hostId, a);
    }
    return [...out.values()];
  }

  /** Whether a certificate was ever issued to this host id. */
  isKnown(hostId: string): boolean {
    return this.store.certsOf(hostId).length > 0;
  }

  isConnected(hostId: string): boolean {
    return this.links.has(hostId);
  }

  inventory(hostId: string): HostInventory | undefined {
    return this.inventories.get(hostId);
  }

  /** Ask a host for its inventory now and keep it as if the host had pushed it. A host pushes
   *  its inventory coalesced, a moment after a change; a migration asks both its hosts before it
   *  records its terminal state, so that a client reading that state finds the VM where it is
   *  (locateVm) and not where the last push left it. */
  async refreshInventory(hostId: string, timeoutMs?: number): Promise<void> {
    const inv = await this.request(hostId, 'host.inventory', {}, timeoutMs);
    if (!this.links.has(hostId) || this.closing) return;
    const fixed: HostInventory = { ...inv, hostId };
    this.inventories.set(hostId, fixed);
    this.emit('inventory', hostId, fixed);
  }

  request<M extends keyof HostMethods>(hostId: string, method: M, params: HostMethods[M][0], timeoutMs?: number): Promise<HostMethods[M][1]> {
    return this.requestRaw(hostId, method, params, timeoutMs) as Promise<HostMethods[M][1]>;
  }

  requestRaw(hostId: string, method: string, params: unknown, timeoutMs?: number): Promise<unknown> {
    if (this.closing) return Promise.reject(commonError('VMTC_SHUTTING_DOWN'));
    const link = this.links.get(hostId);
    if (!link) return Promise.reject(hubError('VMTC_AGENT_NOT_CONNECTED', { hostId, method }));
    const schema = Object.prototype.hasOwnProperty.call(AGENT_RESULTS, method) ? AGENT_RESULTS[method] : undefined;
    return link.peer.request(method, params, timeoutMs ?? this.requestTimeoutMs).then((result) => {
      // A result the controller reads is checked like an event: a wrong one fails the request
      // with a code instead of a TypeError somewhere later.
      const problems = schema?.problems(result) ?? [];
      if (problems.length > 0) {
        link.log.warn({ method, problems }, 'invalid result refused');
        throw hubError('VMTC_AGENT_MESSAGE_INVALID', { hostId, method, problems });
      }
      return result;
    });
  }

  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    for (const l of [...this.links.values()]) this.dropLink(l, 'VMTC_SHUTTING_DOWN');
    for (const c of this.wss.clients) c.terminate();
    await new Promise<void>((r) => this.wss.close(() => r()));
    await new Promise<void>((r) => {
      this.server.close(() => r());
      this.server.closeAllConnections();
    });
    this.log.info('agent hub closed');
  }

  // ---- links -----------------------------------------------------------------------------

  private onConnection(ws: WebSocket, req: IncomingMessage): void {
    const sock = req.socket as TLSSocket;
    ws.on('error', (err) => this.log.info({ reason: err.message }, 'agent link error'));
    if (this.closing) return ws.close(CLOSE_CODES.VMTC_SHUTTING_DOWN, 'VMTC_SHUTTING_DOWN');
    // rejectUnauthorized already refused unsigned or foreign certificates during the handshake;
    // this is the belt to those braces.
    if (!sock.authorized) return ws.close(CLOSE_CODES.VMTC_CERT_UNKNOWN, 'VMTC_CERT_UNKNOWN');
    const pc = sock.getPeerCertificate();
    const serial = normaliseSerial(pc.serialNumber ?? '');
    const cnRaw = pc.subject?.CN as string | string[] | undefined;
    const cn = Array.isArray(cnRaw) ? cnRaw[0] : cnRaw;
    const row = this.store.cert(serial);
    if (!row || row.hostId !== cn) {
      this.log.warn({ serial, cn, remote: sock.remoteAddress }, 'agent link refused: certificate not issued by this hub');
      return ws.close(CLOSE_CODES.VMTC_CERT_UNKNOWN, 'VMTC_CERT_UNKNOWN');
    }
    const log = this.log.child({ hostId: row.hostId });
    if (row.revokedAt !== null) {
      log.warn({ serial }, 'agent link refused: certificate revoked');
      return ws.close(CLOSE_CODES.VMTC_CERT_REVOKED, 'VMTC_CERT_REVOKED');
    }
    const now = this.clock.now();
    const link: Link = {
      hostId: row.hostId, kind: row.kind, serial, ws, log, ready: false, closed: false,
      connectedAt: now, lastSeen: now, lastPong: now,
      peer: undefined as unknown as RpcPeer,
    };
    link.peer = new RpcPeer(ws, { logger: log, timeoutMs: this.requestTimeoutMs, onEvent: (name, data) => this.onEvent(link, name, data) });
    ws.on('message', () => { link.lastSeen = this.clock.now(); });
    ws.on('pong', () => { link.lastPong = link.lastSeen = this.clock.now(); });
    ws.on('close', (code, reason) => this.onClose(link, code, reason.toString()));
    // An agent that connects but never says hello holds a socket for nothing.
    link.helloTimer = this.clock.setTimeout(() => {
      if (!link.ready && !link.closed) {
        log.warn('agent link dropped: no hello');
        this.dropLink(link, 'VMTC_TIMEOUT');
      }
    }, this.requestTimeoutMs);
    this.scheduleHeartbeat(link);
    log.debug({ serial, remote: sock.remoteAddress }, 'agent link opened');
  }

  private scheduleHeartbeat(link: Link): void {
    link.heartbeat = this.clock.setTimeout(() => {
      if (link.closed) return;
      if (this.clock.now() - link.lastPong >= 2 * this.heartbeatMs) {
        link.log.warn({ lastPong: link.lastPong }, 'agent link dead: no pong for 2 heartbeats');
        link.ws.terminate();
        // terminate() emits 'close' asynchronously; mark and report now so callers see it at once.
        this.onClose(link, 1006, 'heartbeat');
        return;
      }
      try {
        link.ws.ping();
      } catch (e) {
        link.log.info({ reason: (e as Error).message }, 'ping failed');
      }
      this.scheduleHeartbeat(link);
    }, this.heartbeatMs);
  }

  private onEvent(link: Link, name: string, data: unknown): void {
    if (!link.ready) {
      if (name !== 'hello') {
        link.log.warn({ event: name }, 'event before hello dropped');
        return;
      }
      const problems = HELLO.problems(data);
      const h = data as Hello;
      if (problems.length > 0 || h.kind !== link.kind) {
        link.log.warn({ problems, kind: problems.length ? undefined : h.kind, certKind: link.kind }, 'agent link refused: bad hello');
        this.dropLink(link, 'VMTC_AGENT_HELLO_INVALID');
        return;
      }
      const old = this.links.get(link.hostId);
      link.ready = true;
      link.agentVersion = h.agentVersion.slice(0, 64);
      this.links.set(link.hostId, link);
      if (old && old !== link) {
        // A second connection with the same identity wins: the old one is usually a half-dead
        // socket the agent has already given up on. The new link is current before the old one
        // closes, so listeners see no 'disconnected' (the host never stopped being reachable),
        // but they do see 'connected' again (requests in flight on the old link have failed).
        link.log.info('newer link replaces the current one');
        this.dropLink(old, 'VMTC_AGENT_REPLACED');
      }
      link.peer.emit('welcome', { hostId: link.hostId, heartbeatMs: this.heartbeatMs });
      link.log.info({ kind: link.kind, agentVersion: link.agentVersion }, 'agent connected');
      this.emit('connected', link.hostId, link.kind);
      return;
    }
    if (name === 'hello') return link.log.warn('repeated hello dropped');
    // Every event is checked against its schema before anyone sees it (src/common/agent-schemas.ts):
    // what an agent sends is stored and read by every API caller, so a broken or hostile agent
    // must not be able to plant a record that breaks those reads.
    const schema = Object.prototype.hasOwnProperty.call(AGENT_EVENTS, name) ? AGENT_EVENTS[name] : undefined;
    if (!schema) return link.log.warn({ event: name.slice(0, 64) }, 'unknown event dropped');
    const problems = schema.problems(data);
    if (name === 'inventory') {
      if (link.kind !== 'host' || problems.length > 0) {
        // Refused with a coded close and never stored: the hub keeps the last good inventory.
        link.log.warn({ problems, certKind: link.kind }, 'agent link dropped: invalid inventory');
        this.dropLink(link, 'VMTC_AGENT_MESSAGE_INVALID');
        return;
      }
      // The certificate names the host; an inventory cannot speak for another one.
      const fixed: HostInventory = { ...(data as HostInventory), hostId: link.hostId };
      this.inventories.set(link.hostId, fixed);
      this.emit('inventory', link.hostId, fixed);
      return;
    }
    if (problems.length > 0) return link.log.warn({ event: name, problems }, 'invalid event dropped');
    this.emit('event', link.hostId, name, data);
  }

  private dropLink(link: Link, code: keyof typeof CLOSE_CODES): void {
    try {
      link.ws.close(CLOSE_CODES[code], code);
    } catch {
      /* already closing */
    }
    // Do not wait for the closing handshake: the agent may be dead. Terminate shortly after.
    const t = setTimeout(() => link.ws.terminate(), 1000);
    t.unref();
    this.onClose(link, CLOSE_CODES[code], code);
  }

  private onClose(link: Link, code: number, reason: string): void {
    if (link.closed) return;
    link.closed = true;
    link.helloTimer?.cancel();
    link.heartbeat?.cancel();
    link.peer.close();
    const current = this.links.get(link.hostId) === link;
    if (current) this.links.delete(link.hostId);
    link.log.info({ code, reason }, 'agent link closed');
    if (current) this.emit('disconnected', link.hostId, link.kind);
  }
}
