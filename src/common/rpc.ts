// Request/reply and events over one WebSocket (controller <-> agents). Requests are correlated
// by a monotonic id and each has its own timer (docs/contributing.md#requests); an unknown or
// late reply, or a frame that is not valid JSON of the expected shape, is logged and dropped —
// it never closes or crashes the link.
import type WebSocket from 'ws';
import type { Logger } from './log.ts';
import { VmtcError, commonError, toVmtcError, type ErrorBody } from './errors.ts';

export type Frame =
  | { t: 'req'; id: number; method: string; params?: unknown }
  | { t: 'res'; id: number; ok: true; result?: unknown }
  | { t: 'res'; id: number; ok: false; error: ErrorBody }
  | { t: 'evt'; name: string; data?: unknown };

export type Handler = (params: unknown) => Promise<unknown> | unknown;

export interface RpcOptions {
  logger: Logger;
  /** Default per-request timeout in ms. */
  timeoutMs?: number;
  handlers?: Record<string, Handler>;
  onEvent?: (name: string, data: unknown) => void;
}

interface Pending {
  method: string;
  resolve: (v: unknown) => void;
  reject: (e: VmtcError) => void;
  timer: NodeJS.Timeout;
}

export class RpcPeer {
  private seq = 0;
  private readonly pending = new Map<number, Pending>();
  private readonly handlers: Record<string, Handler>;
  private readonly timeoutMs: number;
  private closed = false;
  /** Frames dropped because they were malformed or unexpected (exposed for diagnostics/tests). */
  dropped = 0;

  constructor(private readonly ws: WebSocket, private readonly opts: RpcOptions) {
    this.handlers = opts.handlers ?? {};
    this.timeoutMs = opts.timeoutMs ?? 10_000;
    ws.on('message', (data, isBinary) => this.onMessage(data as Buffer, isBinary));
    ws.on('close', () => this.failAll(commonError('VMTC_PEER_UNREACHABLE', { reason: 'link closed' })));
  }

  setHandler(method: string, h: Handler): void {
    this.handlers[method] = h;
  }

  request<T = unknown>(method: string, params?: unknown, timeoutMs = this.timeoutMs): Promise<T> {
    if (this.closed || this.ws.readyState !== 1) {
      return Promise.reject(commonError('VMTC_PEER_UNREACHABLE', { method, reason: 'link not open' }));
    }
    const id = ++this.seq;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(commonError('VMTC_TIMEOUT', { method, timeoutMs }));
      }, timeoutMs);
      this.pending.set(id, { method, resolve: resolve as (v: unknown) => void, reject, timer });
      // A request that cannot go out fails now, with a code, instead of waiting for its timer:
      // params that cannot be serialised (a cycle, nesting past the stack) or a link that fails
      // the write.
      this.send({ t: 'req', id, method, params }, (e) => {
        const p = this.pending.get(id);
        if (!p) return;
        this.pending.delete(id);
        clearTimeout(p.timer);
        p.reject(commonError('VMTC_RPC_SEND_FAILED', { method, reason: e.message.slice(0, 200) }, { cause: e }));
      });
    });
  }

  emit(name: string, data?: unknown): void {
    if (this.closed || this.ws.readyState !== 1) return;
    this.send({ t: 'evt', name, data });
  }

  close(): void {
    this.failAll(commonError('VMTC_PEER_UNREACHABLE', { reason: 'link closed' }));
  }

  /** Serialise and write one frame; `onFail` hears of a failure, at once or from the write. */
  private send(f: Frame, onFail?: (e: Error) => void): void {
    const failed = (e: unknown) => {
      const err = e instanceof Error ? e : new Error(String(e));
      this.opts.logger.warn({ reason: err.message, frame: f.t, ...(f.t === 'req' ? { method: f.method } : {}) }, 'send failed');
      onFail?.(err);
    };
    try {
      this.ws.send(JSON.stringify(f), (e) => { if (e) failed(e); });
    } catch (e) {
      failed(e);
    }
  }

  private failAll(e: VmtcError): void {
    this.closed = true;
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(e);
      this.pending.delete(id);
    }
  }

  private drop(reason: string, extra?: Record<string, unknown>): void {
    this.dropped++;
    this.opts.logger.warn({ reason, ...extra }, 'dropped frame');
  }

  private onMessage(data: Buffer, isBinary: boolean): void {
    if (isBinary) return this.drop('binary frame');
    let f: Frame;
    try {
      f = JSON.parse(data.toString('utf8')) as Frame;
    } catch {
      return this.drop('not JSON', { sample: data.toString('utf8', 0, Math.min(80, data.length)) });
    }
    if (!f || typeof f !== 'object') return this.drop('not an object');
    if (f.t === 'res') {
      if (typeof f.id !== 'number') return this.drop('reply without id');
      const p = this.pending.get(f.id);
      if (!p) return this.drop('unknown or late reply', { id: f.id });
      this.pending.delete(f.id);
      clearTimeout(p.timer);
      if (f.ok === true) p.resolve(f.result);
      else p.reject(VmtcError.fromBody(f.ok === false ? f.error : f));
    } else if (f.t === 'req') {
      if (typeof f.id !== 'number' || typeof f.method !== 'string') return this.drop('malformed request');
      void this.serve(f.id, f.method, f.params);
    } else if (f.t === 'evt') {
      if (typeof f.name !== 'string') return this.drop('malformed event');
      try {
        this.opts.onEvent?.(f.name, f.data);
      } catch (e) {
        this.opts.logger.error({ err: e, event: f.name }, 'event handler failed');
      }
    } else {
      this.drop('unknown frame type');
    }
  }

  private async serve(id: number, method: string, params: unknown): Promise<void> {
    const h = Object.prototype.hasOwnProperty.call(this.handlers, method) ? this.handlers[method] : undefined;
    if (!h) {
      this.send({ t: 'res', id, ok: false, error: { code: 'VMTC_UNKNOWN_METHOD', message: `unknown method ${method}` } });
      return;
    }
    try {
      const result = await h(params);
      // A result that cannot be serialised is answered as an error, so the caller does not wait
      // for its timer either.
      this.send({ t: 'res', id, ok: true, result }, (e) => {
        this.send({ t: 'res', id, ok: false, error: { ...commonError('VMTC_RPC_SEND_FAILED', { method, reason: e.message.slice(0, 200) }).toJSON(), ...({ status: 502 } as object) } as ErrorBody });
      });
    } catch (e) {
      const ve = toVmtcError(e);
      if (ve.status >= 500) this.opts.logger.error({ err: e, method }, 'handler failed');
      this.send({ t: 'res', id, ok: false, error: { ...ve.toJSON(), ...({ status: ve.status } as object) } as ErrorBody });
    }
  }
}
