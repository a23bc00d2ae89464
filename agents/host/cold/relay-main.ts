// The cold path's relay process (agents/host/cold/relay.ts starts it, docs/design.md#cold-path,
// "Across the lightpath"): a byte pipe between a Unix socket and a TCP address, run by the agent
// inside its driver's network namespace (`ip netns exec NS`), so that the disk fetch's TCP crosses
// the lightpath there while the agent itself stays in the root namespace: Unix sockets are not
// network-namespaced, TCP is. It sees only TLS records (the export server and the importer do
// the mutual TLS end to end) and forwards each accepted connection to one new outgoing one.
//
//   relay-main.ts --listen tcp:HOST:PORT --to unix:PATH     (source: the lightpath address → the export server)
//   relay-main.ts --listen unix:PATH --to tcp:HOST:PORT     (destination: the importer → the source's relay)
//
// Prints one JSON line `{"event":"ready","port":N}` on stdout once it listens (`port` 0 on a Unix
// socket), `{"event":"error",...}` and exits 1 when it cannot. It exits when its stdin closes
// (the agent that started it is gone) or on SIGTERM, cutting the connections it carries. A
// connection one side closes cleanly is half-closed to the other, never cut: its buffered bytes
// are delivered first (test/integration/cold-relay.test.ts).
import net from 'node:net';
import { rmSync } from 'node:fs';
import { parseArgs } from 'node:util';

type End = { type: 'tcp'; host: string; port: number } | { type: 'unix'; path: string };

function parseEnd(v: string | undefined, field: string): End {
  const m = /^(tcp|unix):(.+)$/.exec(v ?? '');
  if (m?.[1] === 'unix') return { type: 'unix', path: m[2]! };
  const t = m ? /^\[?([^\]]+?)\]?:(\d{1,5})$/.exec(m[2]!) : null;
  if (t && Number(t[2]) <= 65535) return { type: 'tcp', host: t[1]!, port: Number(t[2]) };
  fail(field, `expected tcp:HOST:PORT or unix:PATH, got ${JSON.stringify(v ?? null)}`);
}

function fail(field: string, reason: string): never {
  process.stdout.write(JSON.stringify({ event: 'error', field, reason }) + '\n');
  process.exit(1);
}

const { values } = parseArgs({ options: { listen: { type: 'string' }, to: { type: 'string' } } });
const listen = parseEnd(values.listen, 'listen');
const to = parseEnd(values.to, 'to');
const open = new Set<net.Socket>();

const server = net.createServer((inbound) => {
  const outbound = to.type === 'unix' ? net.connect({ path: to.path }) : net.connect({ host: to.host, port: to.port });
  for (const s of [inbound, outbound]) {
    open.add(s);
    s.setNoDelay(true);
    s.on('close', () => open.delete(s));
  }
  // Either side's error cuts both: the TLS above sees a cut connection, never a hang. A side that
  // closes cleanly only ends the other (the pipe did): what that one still buffers goes out first
  // — the last bytes of a response, queued behind a long path — and it closes once its peer has
  // too, or after a minute without traffic.
  const cut = () => { inbound.destroy(); outbound.destroy(); };
  inbound.on('error', cut);
  outbound.on('error', cut);
  const endOther = (other: net.Socket) => (hadError: boolean) => {
    if (hadError) return cut();
    other.end();
    other.setTimeout(60_000, () => other.destroy());
  };
  inbound.on('close', endOther(outbound));
  outbound.on('close', endOther(inbound));
  inbound.pipe(outbound);
  outbound.pipe(inbound);
});
server.on('error', (e) => fail('listen', (e as Error).message));
const onListening = () => {
  const a = server.address();
  process.stdout.write(JSON.stringify({ event: 'ready', port: typeof a === 'object' && a ? a.port : 0 }) + '\n');
};
if (listen.type === 'unix') {
  rmSync(listen.path, { force: true }); // a leftover of a relay that was killed
  server.listen(listen.path, onListening);
} else server.listen({ host: listen.host, port: listen.port }, onListening);

const stop = () => {
  server.close();
  for (const s of open) s.destroy();
  if (listen.type === 'unix') rmSync(listen.path, { force: true });
  process.exit(0);
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
process.stdin.on('end', stop);
process.stdin.on('close', stop);
process.stdin.resume();
