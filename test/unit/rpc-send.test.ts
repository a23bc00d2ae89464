// A request that cannot be sent fails at once with a coded error (src/common/rpc.ts): params
// that cannot be serialised, a socket that throws, a write that fails later. Before, the failure
// was logged and the caller waited for the request's timer (minutes for vm.start).
import { describe, it, expect } from 'vitest';
import { EventEmitter } from 'node:events';
import type WebSocket from 'ws';
import { RpcPeer } from '../../src/common/rpc.ts';
import { silentLogger } from '../../src/common/log.ts';

/** The part of a ws socket RpcPeer uses; `send` does what the test says. */
class FakeSocket extends EventEmitter {
  readyState = 1;
  sent: string[] = [];
  constructor(private readonly behaviour: 'ok' | 'throw' | 'fail-later' = 'ok') {
    super();
  }
  send(data: string, cb?: (e?: Error) => void): void {
    if (this.behaviour === 'throw') throw new Error('WebSocket is not open: readyState 0 (CONNECTING)');
    if (this.behaviour === 'fail-later') {
      queueMicrotask(() => cb?.(new Error('write EPIPE')));
      return;
    }
    this.sent.push(data);
    queueMicrotask(() => cb?.());
  }
}

const HOUR = 3_600_000;
const peer = (ws: FakeSocket, handlers = {}) => new RpcPeer(ws as unknown as WebSocket, { logger: silentLogger(), timeoutMs: HOUR, handlers });

function nested(depth: number): unknown {
  let v: unknown = {};
  for (let i = 0; i < depth; i++) v = { a: v };
  return v;
}

describe('RpcPeer: a request that cannot be sent fails at once', () => {
  it('params that cannot be serialised (a cycle; nesting past the stack)', async () => {
    const ws = new FakeSocket();
    const p = peer(ws);
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    await expect(p.request('vm.start', cyclic)).rejects.toMatchObject({ code: 'VMTC_RPC_SEND_FAILED', status: 502, details: { method: 'vm.start' } });
    await expect(p.request('vm.start', { spec: { extra: nested(200_000) } })).rejects.toMatchObject({ code: 'VMTC_RPC_SEND_FAILED' });
    expect(ws.sent).toEqual([]);
    // The peer still works for the next request.
    const ok = p.request('vm.describe', { vmId: 'x' });
    const frame = JSON.parse(ws.sent[0]!) as { id: number };
    ws.emit('message', Buffer.from(JSON.stringify({ t: 'res', id: frame.id, ok: true, result: 'fine' })), false);
    expect(await ok).toBe('fine');
  });

  it('a socket that throws on send', async () => {
    await expect(peer(new FakeSocket('throw')).request('vm.describe', {})).rejects.toMatchObject({ code: 'VMTC_RPC_SEND_FAILED', details: { reason: expect.stringContaining('not open') } });
  });

  it('a write that fails after send returned', async () => {
    await expect(peer(new FakeSocket('fail-later')).request('vm.describe', {})).rejects.toMatchObject({ code: 'VMTC_RPC_SEND_FAILED', details: { reason: 'write EPIPE' } });
  });

  it('a handler result that cannot be serialised is answered with a coded error, not silence', async () => {
    const ws = new FakeSocket();
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    peer(ws, { 'vm.describe': () => cyclic });
    ws.emit('message', Buffer.from(JSON.stringify({ t: 'req', id: 7, method: 'vm.describe', params: {} })), false);
    await new Promise((r) => setImmediate(r));
    expect(ws.sent.map((s) => JSON.parse(s))).toEqual([{ t: 'res', id: 7, ok: false, error: expect.objectContaining({ code: 'VMTC_RPC_SEND_FAILED', status: 502 }) }]);
  });
});
