// A client's TCP session to the guest's echo server (the NTT design's own acceptance test): one
// connection, a numbered line every --interval ms, each echo checked. Runs inside the client
// namespace; bounded by --max-seconds; on SIGTERM or at the end prints one JSON summary line.
import net from 'node:net';

const args = Object.fromEntries(process.argv.slice(2).map((a) => a.replace(/^--/, '').split('=')));
const host = args.host ?? '10.1.1.2';
const port = Number(args.port ?? 7);
const interval = Number(args.interval ?? 100);
const maxSeconds = Number(args['max-seconds'] ?? 600);
let sent = 0, echoed = 0, mismatches = 0, lastEcho = Date.now(), maxGapMs = 0, closed = null, buf = '';
const started = Date.now();
const sock = net.connect({ host, port });
sock.setNoDelay(true);
sock.on('connect', () => process.stdout.write(JSON.stringify({ event: 'ready', probe: 'tcp-session' }) + '\n'));
sock.on('data', (d) => {
  buf += d;
  let i;
  while ((i = buf.indexOf('\n')) >= 0) {
    const line = buf.slice(0, i);
    buf = buf.slice(i + 1);
    if (line !== `seq ${echoed + 1}`) mismatches++;
    echoed++;
    const now = Date.now();
    maxGapMs = Math.max(maxGapMs, now - lastEcho);
    lastEcho = now;
  }
});
sock.on('error', (e) => { closed = closed ?? `error: ${e.message}`; });
sock.on('close', () => { closed = closed ?? 'closed by peer'; finish(); });
const timer = setInterval(() => {
  if (sock.writable) sock.write(`seq ${++sent}\n`);
  if (Date.now() - started > maxSeconds * 1000) finish();
}, interval);
let done = false;
function finish() {
  if (done) return;
  done = true;
  clearInterval(timer);
  process.stdout.write(JSON.stringify({ probe: 'tcp-session', sent, echoed, mismatches, maxGapMs, open: closed === null, closed }) + '\n');
  sock.destroy();
  setTimeout(() => process.exit(0), 50);
}
process.on('SIGTERM', finish);
process.on('SIGINT', finish);
