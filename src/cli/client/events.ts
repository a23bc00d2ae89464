// Following one of the controller's server-sent event streams (README "API (controller)":
// GET /v1/migrations/:id/events) from the client verbs. The stream's framing (fields, line ends,
// multi-line data, comments, `id:` and `retry:`) is eventsource-parser's; what is ours is the
// connection: the bearer credential and CA of the other verbs, a coded error for a refusal, and
// reconnecting when the connection drops (a controller restart, a proxy's idle cut) with the
// last event id in `Last-Event-ID`, so a controller that keeps ids resumes where it stopped and
// one that does not starts again with a snapshot (the caller drops what it already showed).
import http from 'node:http';
import https from 'node:https';
import { createParser, type EventSourceMessage } from 'eventsource-parser';
import { VmtcError, commonError } from '../../common/errors.ts';
import { keepAliveClock, type Clock } from '../../common/clock.ts';
import { errorFromReply } from '../../common/http-client.ts';
import { authHeaders, type ClientConfig } from './http.ts';

export interface StreamEvent {
  /** `message` when the server named none. */
  event: string;
  data: string;
  id?: string;
}

export const EVENT_STREAM_DEFAULTS = {
  /** First wait before reconnecting, doubled up to maxRetryMs (a server's `retry:` replaces it). */
  retryMs: 250,
  maxRetryMs: 4000,
  /** How long the stream may stay unreachable before following gives up. */
  giveUpMs: 60_000,
  /** Silence after which the connection counts as dropped (the controller writes a keep-alive
   *  comment every 15 s). */
  idleMs: 45_000,
  /** Largest event the parser buffers (a migration record with its transitions is a few KiB). */
  maxEventBytes: 8 * 1024 * 1024,
} as const;

export interface FollowOptions {
  /** Each event; return true when it was the last one the caller needs (the stream is closed). */
  onEvent(e: StreamEvent): boolean;
  /** A connection dropped or could not be made and another attempt follows. */
  onRetry?(e: VmtcError, attempt: number): void;
  /** Events arrive again after one or more connections failed. */
  onResumed?(): void;
  /** Stop following: resolves 'aborted'. */
  signal?: AbortSignal;
  clock?: Clock;
  retryMs?: number;
  maxRetryMs?: number;
  giveUpMs?: number;
  idleMs?: number;
}

type Attempt =
  | { kind: 'done' }
  | { kind: 'aborted' }
  | { kind: 'dropped'; error: VmtcError; connected: boolean }
  | { kind: 'refused'; error: VmtcError };

/** A refusal worth retrying: the controller is restarting or a proxy in front of it is. */
function transientStatus(status: number): boolean {
  return status === 502 || status === 503 || status === 504;
}

/**
 * Follow `path` until onEvent says it is done ('ended'), the signal aborts ('aborted'), or it
 * fails: a refusal (401, 404, …) at once with the API's own coded error; a stream that stays
 * unreachable for giveUpMs with the last transport error.
 */
export async function followEvents(config: ClientConfig, path: string, o: FollowOptions): Promise<'ended' | 'aborted'> {
  // Timers that keep the process alive: between two attempts nothing else may.
  const clock = o.clock ?? keepAliveClock;
  const giveUpMs = o.giveUpMs ?? EVENT_STREAM_DEFAULTS.giveUpMs;
  const maxRetryMs = o.maxRetryMs ?? EVENT_STREAM_DEFAULTS.maxRetryMs;
  let retryMs = o.retryMs ?? EVENT_STREAM_DEFAULTS.retryMs;
  let serverRetryMs: number | undefined;
  let lastEventId: string | undefined;
  let failingSince: number | undefined;
  let attempt = 0;
  for (;;) {
    if (o.signal?.aborted) return 'aborted';
    const r = await connectOnce(config, path, {
      lastEventId,
      idleMs: o.idleMs ?? EVENT_STREAM_DEFAULTS.idleMs,
      clock,
      ...(o.signal ? { signal: o.signal } : {}),
      onEvent: (e) => {
        if (e.id !== undefined) lastEventId = e.id;
        return o.onEvent(e);
      },
      // Only a stream that delivers (an event, or the controller's keep-alive) counts as
      // recovered: one accepted and dropped at once, again and again, still ends in giving up.
      onData: () => {
        if (failingSince !== undefined) o.onResumed?.();
        failingSince = undefined;
        attempt = 0;
        retryMs = o.retryMs ?? EVENT_STREAM_DEFAULTS.retryMs;
      },
      onRetry: (ms) => { serverRetryMs = ms; },
    });
    if (r.kind === 'done') return 'ended';
    if (r.kind === 'aborted') return 'aborted';
    if (r.kind === 'refused') throw r.error;
    const now = clock.now();
    failingSince ??= now;
    if (now - failingSince > giveUpMs) throw r.error;
    attempt++;
    o.onRetry?.(r.error, attempt);
    const wait = serverRetryMs ?? retryMs;
    retryMs = Math.min(maxRetryMs, retryMs * 2);
    if (await sleep(clock, wait, o.signal)) return 'aborted';
  }
}

/** Wait ms; true when the signal aborted the wait. */
function sleep(clock: Clock, ms: number, signal?: AbortSignal): Promise<boolean> {
  if (signal?.aborted) return Promise.resolve(true);
  return new Promise((resolve) => {
    const onAbort = () => { t.cancel(); resolve(true); };
    const t = clock.setTimeout(() => { signal?.removeEventListener('abort', onAbort); resolve(false); }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

interface ConnectOptions {
  lastEventId: string | undefined;
  idleMs: number;
  clock: Clock;
  signal?: AbortSignal;
  onEvent(e: StreamEvent): boolean;
  onRetry(ms: number): void;
  onData(): void;
}

/** One connection: resolves when it ends, however it ends (never rejects). */
function connectOnce(config: ClientConfig, path: string, o: ConnectOptions): Promise<Attempt> {
  const url = new URL(config.baseUrl + path);
  const isHttps = url.protocol === 'https:';
  return new Promise<Attempt>((resolve) => {
    let settled = false;
    let idle: { cancel(): void } | undefined;
    const finish = (a: Attempt) => {
      if (settled) return;
      settled = true;
      idle?.cancel();
      o.signal?.removeEventListener('abort', onAbort);
      req.destroy();
      resolve(a);
    };
    const onAbort = () => finish({ kind: 'aborted' });
    const unreachable = (reason: string, errno: string | null, connected: boolean): Attempt => ({
      kind: 'dropped',
      connected,
      error: commonError('VMTC_PEER_UNREACHABLE', { url: config.baseUrl, reason: errno ?? reason }, {
        message: connected
          ? `the event stream from the controller at ${config.baseUrl} broke off (${errno ?? reason})`
          : `cannot reach the controller at ${config.baseUrl} (${errno ?? reason}); is it running? (set --controller or VMTC_CONTROLLER)`,
      }),
    });
    const headers: Record<string, string> = { accept: 'text/event-stream', 'cache-control': 'no-cache', ...authHeaders(config) };
    if (o.lastEventId !== undefined) headers['last-event-id'] = o.lastEventId;
    const req = (isHttps ? https : http).request({
      method: 'GET',
      hostname: url.hostname.replace(/^\[|\]$/g, ''),
      port: url.port || (isHttps ? 443 : 80),
      path: `${url.pathname}${url.search}`,
      headers,
      agent: false,
      ...(isHttps && config.ca ? { ca: config.ca } : {}),
    }, (res) => {
      const status = res.statusCode ?? 0;
      if (status !== 200) {
        // A refusal: read its coded body (bounded), then report it.
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => { if (text.length < 64 * 1024) text += c; });
        res.on('error', (e: NodeJS.ErrnoException) => finish(unreachable(e.message, e.code ?? null, true)));
        res.on('end', () => {
          let body: unknown = text;
          let json = true;
          try { body = text ? JSON.parse(text) : undefined; } catch { json = false; }
          const error = errorFromReply(url.toString(), { status, body, text, json });
          finish(transientStatus(status) ? { kind: 'dropped', error, connected: false } : { kind: 'refused', error });
        });
        return;
      }
      const type = String(res.headers['content-type'] ?? '');
      if (!type.startsWith('text/event-stream')) {
        finish({ kind: 'refused', error: commonError('VMTC_PEER_BAD_REPLY', { url: url.toString(), status, contentType: type }, { message: `the controller at ${config.baseUrl} answered ${path} with ${type || 'no content type'}, not an event stream (is it a vmtc controller?)` }) });
        return;
      }
      const armIdle = () => {
        idle?.cancel();
        idle = o.clock.setTimeout(() => finish(unreachable(`no data for ${Math.round(o.idleMs / 1000)} s`, null, true)), o.idleMs);
      };
      armIdle();
      const parser = createParser({
        maxBufferSize: EVENT_STREAM_DEFAULTS.maxEventBytes,
        onEvent: (m: EventSourceMessage) => {
          if (settled) return;
          const e: StreamEvent = { event: m.event ?? 'message', data: m.data, ...(m.id !== undefined ? { id: m.id } : {}) };
          let done: boolean;
          try {
            done = o.onEvent(e);
          } catch (err) {
            // The caller could not read the event (not the JSON it expects): a bad reply, not a wait.
            const error = err instanceof VmtcError ? err : commonError('VMTC_PEER_BAD_REPLY', { url: url.toString(), event: e.event, reason: (err as Error).message }, { message: `the controller at ${config.baseUrl} sent an unreadable '${e.event}' event` });
            finish({ kind: 'refused', error });
            return;
          }
          if (done) finish({ kind: 'done' });
        },
        onRetry: (ms) => o.onRetry(ms),
        onError: (err) => {
          if (err.type === 'max-buffer-size-exceeded') {
            finish({ kind: 'refused', error: commonError('VMTC_PEER_BAD_REPLY', { url: url.toString(), reason: err.type }, { message: `the controller at ${config.baseUrl} sent an event larger than ${EVENT_STREAM_DEFAULTS.maxEventBytes} bytes` }) });
          }
        },
      });
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        armIdle();
        o.onData();
        parser.feed(chunk);
      });
      res.on('error', (e: NodeJS.ErrnoException) => finish(unreachable(e.message, e.code ?? null, true)));
      res.on('end', () => finish(unreachable('the controller closed the stream', null, true)));
      res.on('close', () => finish(unreachable('the connection closed', null, true)));
    });
    req.on('error', (e: NodeJS.ErrnoException) => finish(unreachable(e.message, e.code ?? null, false)));
    o.signal?.addEventListener('abort', onAbort, { once: true });
    req.end();
  });
}
