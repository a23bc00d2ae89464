// The turntable's fine network probe (docs/design.md#seeing-it, the 2 ms UDP echo): a numbered UDP
// datagram every --interval-ms (default 2) to the guest's echo responder (vmtc.udp=7), each send
// and each reply timestamped on the host clock. Runs inside the client namespace
// (`ip netns exec NS node udp-echo-client.mjs --host 10.1.1.2 ...`), so the pid the caller holds
// is this process. Plain Node, no dependencies.
//
// Output (stdout): `{"event":"ready"}` once the socket is bound, then, on SIGTERM/SIGINT or when
// --max-seconds / --max-count is reached, ONE JSON line:
//   {probe:'udp', intervalMs, sent, received, skipped, sends:[sentAt by seq], replies:[[seq, sentAt, recvAt], ...]}
// Times are epoch milliseconds rounded to 0.01 ms. `replies` holds every datagram that came back,
// duplicates included, in arrival order.
//
// Timing: Node's timers have 1 ms granularity and setInterval(2) drifts (each period is "at least"
// 2 ms). Sends are instead scheduled on elapsed time: slot k is due at start + k*interval, and each
// wake-up sends every due slot (at most MAX_BURST at once), then sleeps until the next slot. When
// the process fell further behind (a GC pause, a stalled machine), the older slots are dropped and
// counted in `skipped` rather than sent as a burst that would itself disturb the measurement.
// Sequence numbers stay contiguous over what was really sent, so a missing reply is a lost probe.
import dgram from 'node:dgram';
import { randomBytes } from 'node:crypto';

const MAX_BURST = 3;
const HARD_MAX_COUNT = 2_000_000;

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) continue;
    const eq = a.indexOf('=');
    if (eq >= 0) out[a.slice(2, eq)] = a.slice(eq + 1);
    else if (i + 1 < argv.length && !argv[i + 1].startsWith('--')) out[a.slice(2)] = argv[++i];
    else out[a.slice(2)] = 'true';
  }
  return out;
}

function num(v, dflt, name, min, max) {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isFinite(n) || n < min || n > max) {
    process.stderr.write(`udp-echo-client: --${name} must be a number in [${min}, ${max}]\n`);
    process.exit(2);
  }
  return n;
}

const args = parseArgs(process.argv.slice(2));
const host = args.host ?? '10.1.1.2';
const port = num(args.port, 7, 'port', 1, 65535);
const intervalMs = num(args['interval-ms'], 2, 'interval-ms', 0.5, 60_000);
const maxSeconds = num(args['max-seconds'], 600, 'max-seconds', 0.1, 86_400);
const maxCount = Math.min(HARD_MAX_COUNT, num(args['max-count'], Math.ceil((maxSeconds * 1000) / intervalMs) + 10, 'max-count', 1, HARD_MAX_COUNT));

// Host clock, epoch ms with sub-ms precision: performance.timeOrigin + performance.now() is
// precise (µs) and monotonic; Date.now() keeps it honest if the realtime clock is stepped. Date.now()
// truncates to whole ms, so it may lag the true time by < 1 ms: the offset only follows it upward,
// or downward when it is a whole ms or more behind (a backward step).
let clockOffset = performance.timeOrigin;
function hostNow() {
  const p = performance.now();
  const d = Date.now() - p;
  if (d > clockOffset || d <= clockOffset - 1) clockOffset = d;
  return clockOffset + p;
}
const r2 = (x) => Math.round(x * 100) / 100;

// Each datagram: 8 random bytes naming this run (stray or stale datagrams are ignored), then the
// sequence number. The guest's responder echoes the payload unchanged.
const nonce = randomBytes(8);
const sends = [];
const replies = [];
let received = 0;
let skipped = 0;
let sendErrors = 0;
let start = 0;
let nextSlot = 0;
let timer = null;
let done = false;

const sock = dgram.createSocket('udp4');
sock.on('error', () => { sendErrors++; });
sock.on('message', (msg) => {
  const at = hostNow();
  if (msg.length < 12 || !msg.subarray(0, 8).equals(nonce)) return;
  const seq = msg.readUInt32BE(8);
  if (seq >= sends.length) return;
  received++;
  replies.push([seq, r2(sends[seq]), r2(at)]);
});

function sendOne() {
  const seq = sends.length;
  const buf = Buffer.allocUnsafe(12);
  nonce.copy(buf, 0);
  buf.writeUInt32BE(seq, 8);
  sends.push(hostNow());
  sock.send(buf, port, host, (err) => { if (err) sendErrors++; });
}

function tick() {
  timer = null;
  if (done) return;
  const t = hostNow();
  let burst = 0;
  while (start + nextSlot * intervalMs <= t && burst < MAX_BURST && sends.length < maxCount) {
    sendOne();
    nextSlot++;
    burst++;
  }
  const due = Math.floor((t - start) / intervalMs) + 1;
  if (due > nextSlot) {
    skipped += due - nextSlot;
    nextSlot = due;
  }
  if (sends.length >= maxCount || t - start >= maxSeconds * 1000) {
    // Give the last datagrams one more interval plus a little to come back.
    setTimeout(finish, Math.max(20, intervalMs * 2));
    done = true;
    return;
  }
  const wait = start + nextSlot * intervalMs - hostNow();
  timer = setTimeout(tick, Math.max(0, Math.floor(wait)));
}

let finished = false;
function finish() {
  if (finished) return;
  finished = true;
  done = true;
  if (timer) clearTimeout(timer);
  const line = JSON.stringify({
    probe: 'udp',
    intervalMs,
    sent: sends.length,
    received,
    skipped,
    sendErrors,
    sends: sends.map(r2),
    replies,
  }) + '\n';
  try { sock.close(); } catch { /* not bound yet */ }
  process.stdout.write(line, () => process.exit(0));
  // Bounded: if stdout never drains (reader gone), leave anyway.
  setTimeout(() => process.exit(0), 5000).unref();
}

process.on('SIGTERM', finish);
process.on('SIGINT', finish);
process.stdout.on('error', () => process.exit(0));

sock.bind(0, () => {
  process.stdout.write(JSON.stringify({ event: 'ready', probe: 'udp', host, port, intervalMs }) + '\n');
  start = hostNow();
  tick();
});
