// The delay line as a process: `node --import tsx lab/delay-line-main.ts --a IP --b IP ...`.
// lab/net.ts and the broker's Linux driver spawn it inside the lab's WAN namespace
// (`ip netns exec P-wan ...`, so its pid is this process) with stdout going to a stats file.
//
// Output: JSON lines on stdout —
//   {"event":"listening","address":…,"port":…,"pid":…} once the socket is bound;
//   {"event":"stats",…}  every --report-ms (a DelayLineReport) and at once on SIGUSR2;
//   {"event":"final",…}  on SIGTERM/SIGINT, just before exiting.
import dgram from 'node:dgram';
import { parseArgs } from 'node:util';
import { performance } from 'node:perf_hooks';
import { readProcSched } from './delay-line-sched.ts';
import { DelayLine, DELAY_LINE_DEFAULTS, queueBytesToMs, type DelayLineOptions, type Endpoint } from './delay-line.ts';

function num(v: string | undefined, def: number, name: string): number {
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) {
    process.stderr.write(`delay-line: --${name} must be a non-negative number\n`);
    process.exit(2);
  }
  return n;
}

const { values } = parseArgs({
  options: {
    'listen-host': { type: 'string', default: '0.0.0.0' },
    'listen-port': { type: 'string', default: '0' },
    a: { type: 'string' },
    b: { type: 'string' },
    'dst-port': { type: 'string' },
    'one-way-ms': { type: 'string' },
    'rate-mbps': { type: 'string' },
    'queue-ms': { type: 'string' },
    'queue-bytes': { type: 'string' },
    loss: { type: 'string' },
    'report-ms': { type: 'string', default: '1000' },
    // Free text recorded in the process's argv so a later `lab down` can tell this process is
    // the one it recorded (pid reuse) before signalling it.
    tag: { type: 'string' },
  },
  strict: true,
});

if (!values.a || !values.b) {
  process.stderr.write('delay-line: --a and --b (endpoint IPv4 addresses) are required\n');
  process.exit(2);
}

const rateMbps = num(values['rate-mbps'], DELAY_LINE_DEFAULTS.rateMbps, 'rate-mbps');
if (rateMbps <= 0) {
  process.stderr.write('delay-line: --rate-mbps must be positive\n');
  process.exit(2);
}
const opts: DelayLineOptions = {
  ...DELAY_LINE_DEFAULTS,
  oneWayMs: num(values['one-way-ms'], DELAY_LINE_DEFAULTS.oneWayMs, 'one-way-ms'),
  rateMbps,
  queueMs: values['queue-bytes'] !== undefined
    ? queueBytesToMs(num(values['queue-bytes'], 0, 'queue-bytes'), rateMbps)
    : num(values['queue-ms'], DELAY_LINE_DEFAULTS.queueMs, 'queue-ms'),
  loss: num(values.loss, 0, 'loss'),
};
if (opts.loss >= 1) {
  process.stderr.write('delay-line: --loss must be below 1\n');
  process.exit(2);
}

const sock = dgram.createSocket({ type: 'udp4', recvBufferSize: 8 << 20, sendBufferSize: 8 << 20 });
let line: DelayLine;

function emit(obj: unknown): void {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

sock.on('error', (e) => {
  process.stderr.write(`delay-line: socket error: ${e.message}\n`);
  process.exit(1);
});

sock.bind(Number(values['listen-port']), values['listen-host'], () => {
  const addr = sock.address();
  const dstPort = values['dst-port'] !== undefined ? Number(values['dst-port']) : addr.port;
  const a: Endpoint = { address: values.a!, port: dstPort };
  const b: Endpoint = { address: values.b!, port: dstPort };
  line = new DelayLine(a, b, opts, {
    now: () => performance.now(),
    // No callback: the buffer is not reused, and skipping the callback saves work per datagram.
    send: (buf, to) => sock.send(buf, to.port, to.address),
    setTimer: (fn, ms) => {
      const t = setTimeout(fn, ms);
      return { cancel: () => clearTimeout(t) };
    },
    random: Math.random,
  });
  sock.on('message', (buf, rinfo) => line.receive(buf, rinfo));
  // How the kernel schedules it (the starter may have put it under chrt/taskset: lab/delay-line-sched.ts).
  const sched = readProcSched('self');
  emit({ event: 'listening', address: addr.address, port: addr.port, pid: process.pid, a, b, config: opts, tag: values.tag ?? null, ...(sched ? { sched } : {}) });
  const reportMs = Number(values['report-ms']);
  // Periodic lines leave out the (unchanging) config to keep the stats file small.
  if (reportMs > 0) setInterval(() => emit({ ...line.report('stats', Date.now()), config: undefined }), reportMs).unref();
});

process.on('SIGUSR2', () => {
  if (line) emit(line.report('stats', Date.now()));
});
for (const sig of ['SIGTERM', 'SIGINT'] as const) {
  process.on(sig, () => {
    if (line) {
      emit(line.report('final', Date.now()));
      line.stop();
    }
    sock.close();
    process.exit(0);
  });
}
