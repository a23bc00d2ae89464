// The follow relay's process (nbd-relay.ts startFollowRelay starts it, docs/disks.md#following):
// an NBD proxy from a unix socket (where the VM's QEMU connects its mirror's node) to the
// store's NBD export across the path, run by the agent inside its driver's network namespace
// (`ip netns exec NS`): unix sockets are not network-namespaced, TCP is.
//
//   nbd-relay-main.ts --listen unix:PATH --to tcp:HOST:PORT --export NAME     (or --to unix:PATH)
//
// Negotiates with the store's export NAME first, then listens; prints
// `{"event":"ready","listen":PATH}` on stdout once both are done; `{"event":"error",...}` and
// exits 1 when it cannot (the store cannot be reached, refuses the export, or the listen fails). SIGUSR1 releases (the VM stopped: write-like requests are answered
// at once from then on). SIGTERM, SIGINT or its stdin closing (the agent that started it is gone):
// each connection forwards what it holds, sends NBD_CMD_DISC, half-closes and waits (60 s at
// most) for the store to close; then it exits 0. Logs (pino JSON) go to stderr.
import { parseArgs } from 'node:util';
import { keepAliveClock } from '../../../src/common/clock.ts';
import { createLogger } from '../../../src/common/log.ts';
import { startNbdProxy, type ProxyListen } from './nbd-relay.ts';
import { MAX_STRING } from './nbd-wire.ts';

function fail(field: string, reason: string): never {
  process.stdout.write(JSON.stringify({ event: 'error', field, reason }) + '\n');
  process.exit(1);
}

function parseEnd(v: string | undefined, field: string, tcp: boolean): ProxyListen {
  const m = /^(tcp|unix):(.+)$/.exec(v ?? '');
  if (m?.[1] === 'unix') return { path: m[2]! };
  const t = m && tcp ? /^\[?([^\]]+?)\]?:(\d{1,5})$/.exec(m[2]!) : null;
  if (t && Number(t[2]) <= 65535) return { host: t[1]!, port: Number(t[2]) };
  fail(field, `expected ${tcp ? 'tcp:HOST:PORT or ' : ''}unix:PATH, got ${JSON.stringify(v ?? null)}`);
}

let values: { listen?: string; to?: string; export?: string };
try {
  ({ values } = parseArgs({ options: { listen: { type: 'string' }, to: { type: 'string' }, export: { type: 'string' } } }));
} catch (e) {
  fail('argv', (e as Error).message);
}
const listen = parseEnd(values.listen, 'listen', false);
const to = parseEnd(values.to, 'to', true);
const exportName = values.export ?? '';
if (!exportName || Buffer.byteLength(exportName) > MAX_STRING) fail('export', `expected an export name of 1..${MAX_STRING} bytes, got ${JSON.stringify(values.export ?? null)}`);
const log = createLogger({ svc: 'nbd-relay', destination: process.stderr });

const proxy = await startNbdProxy({ listen, connect: to, exportName, clock: keepAliveClock, logger: log }).catch((e: Error & { details?: { reason?: string; listen?: unknown } }) => fail(e.details?.listen ? 'listen' : 'to', e.details?.reason ?? e.message));
process.stdout.write(JSON.stringify({ event: 'ready', listen: 'path' in listen ? listen.path : `${listen.host}:${listen.port}` }) + '\n');

process.on('SIGUSR1', () => proxy.release());
let stopping = false;
const stop = (why: string) => {
  if (stopping) return;
  stopping = true;
  log.info({ why }, 'nbd relay: closing');
  void proxy.close().then(
    () => process.exit(0),
    (e: unknown) => {
      log.error({ err: String(e) }, 'nbd relay: close failed');
      process.exit(1);
    },
  );
};
process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGINT', () => stop('SIGINT'));
process.stdin.on('end', () => stop('stdin closed'));
process.stdin.on('close', () => stop('stdin closed'));
process.stdin.resume();
