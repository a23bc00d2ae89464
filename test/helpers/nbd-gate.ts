// A byte forwarder put between the follow relay (agents/host/disks/nbd-relay.ts) and a store's
// NBD server in tests: it stands for the path. Each direction can be held (bytes wait in order
// until open()) or delayed (each chunk delivered `delayMs` after it arrived); it counts the bytes
// it delivered and holds, and says how each side's stream ended (FIN or reset). Not a test file.
import net from 'node:net';
import type { Cleanup } from './cleanups.ts';

type Dir = 'up' | 'down'; // up: relay -> store; down: store -> relay

export interface Gate {
  /** A TCP listen on 127.0.0.1. */
  port: number;
  hold(dir: Dir | 'both'): void;
  open(): void;
  /** Bytes delivered, by direction, over all connections. */
  delivered: Record<Dir, number>;
  /** Bytes waiting, by direction. */
  waiting(): Record<Dir, number>;
  /** How the relay's side of each connection ended: 'fin' (end) or 'reset' (an error). */
  relayEnds: ('fin' | 'reset')[];
  connections: number;
  /** Write `b` into the latest connection's `dir` stream at once (junk from a side). */
  inject(dir: Dir, b: Buffer): void;
  /** Close every connection open now, both sides (the path dropped them). */
  cut(): void;
}

export async function startGate(o: { to: { path: string } | { host: string; port: number }; delayMs?: number }, cleanups: Cleanup[]): Promise<Gate> {
  const held: Record<Dir, boolean> = { up: false, down: false };
  const pumps = new Set<() => void>();
  const queues: { dir: Dir; items: { buf: Buffer | null; due: number }[] }[] = [];
  const sockets = new Set<net.Socket>();
  let latest: Record<Dir, net.Socket> | undefined;
  const gate: Gate = {
    port: 0,
    hold(dir) {
      if (dir === 'both' || dir === 'up') held.up = true;
      if (dir === 'both' || dir === 'down') held.down = true;
    },
    open() {
      held.up = held.down = false;
      for (const p of pumps) p();
    },
    delivered: { up: 0, down: 0 },
    waiting: () => {
      const w = { up: 0, down: 0 };
      for (const q of queues) for (const i of q.items) w[q.dir] += i.buf?.length ?? 0;
      return w;
    },
    relayEnds: [],
    connections: 0,
    inject(dir, b) {
      latest?.[dir].write(b);
    },
    cut() {
      for (const s of sockets) s.destroy();
    },
  };
  const server = net.createServer({ allowHalfOpen: true }, (relay) => {
    gate.connections++;
    const store = 'path' in o.to ? net.connect({ path: o.to.path, allowHalfOpen: true }) : net.connect({ host: o.to.host, port: o.to.port, allowHalfOpen: true });
    for (const s of [relay, store]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
    }
    latest = { up: store, down: relay };
    const cut = () => { relay.destroy(); store.destroy(); };
    relay.on('error', () => { gate.relayEnds.push('reset'); cut(); });
    store.on('error', cut);
    relay.on('end', () => gate.relayEnds.push('fin'));
    const lane = (dir: Dir, from: net.Socket, to: net.Socket) => {
      const q = { dir, items: [] as { buf: Buffer | null; due: number }[] };
      queues.push(q);
      let timer: NodeJS.Timeout | undefined;
      const pump = () => {
        if (timer) { clearTimeout(timer); timer = undefined; }
        while (q.items.length && !held[dir]) {
          const head = q.items[0]!;
          const wait = head.due - Date.now();
          if (wait > 0) { timer = setTimeout(pump, wait); return; }
          q.items.shift();
          if (head.buf === null) { to.end(); continue; }
          gate.delivered[dir] += head.buf.length;
          to.write(head.buf);
        }
      };
      pumps.add(pump);
      to.on('close', () => { pumps.delete(pump); if (timer) clearTimeout(timer); });
      from.on('data', (b: Buffer) => { q.items.push({ buf: b, due: Date.now() + (o.delayMs ?? 0) }); pump(); });
      from.on('end', () => { q.items.push({ buf: null, due: Date.now() + (o.delayMs ?? 0) }); pump(); });
    };
    lane('up', relay, store);
    lane('down', store, relay);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  gate.port = (server.address() as net.AddressInfo).port;
  cleanups.push(async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((r) => server.close(() => r()));
  });
  return gate;
}
