// The host around QEMU: running QEMU and its tools, telling whether a QEMU process still lives,
// the ports it listens on (from /proc), and the tap devices of its NICs. The driver reaches all
// of it through a QemuSystem, so its unit tests can stand in for the host.
import { spawn } from 'node:child_process';
import { readFile, readdir, readlink } from 'node:fs/promises';
import { clockSleep, type Clock } from '../../../src/common/clock.ts';
import { sha256Hex } from '../../../src/common/hash.ts';
import { pidAlive } from '../../../src/common/proc.ts';
import { qemuError } from './errors.ts';
import { QmpClient } from './qmp.ts';
import type { PreparedCommand, QemuSystem } from './types.ts';

/** The real host. */
export function systemQemu(clock: Clock): QemuSystem {
  return {
    exec: (argv, timeoutMs) => execArgv(argv, clock, timeoutMs),
    pidAlive: (pid, marker) => pidAlive(pid, marker),
    kill: (pid) => killPid(pid, clock),
    listeningPorts,
    connectQmp: (path, opts) => QmpClient.connect(path, opts),
    prepare: (argv) => prepareArgv(argv, clock),
  };
}

/** A shell that waits for a line on its stdin, then execs argv in its place: the fork of this
 *  (large) process is done now; run() costs only the exec. EOF instead of a line (cancel(), or
 *  this process's exit closing the pipe) ends it with code 125, unrun. */
function prepareArgv(argv: string[], clock: Clock): PreparedCommand {
  const c = spawn('sh', ['-c', 'read -r _ || exit 125; exec "$@"', 'sh', ...argv], { stdio: ['pipe', 'ignore', 'pipe'] });
  let stderr = '';
  c.stderr!.on('data', (d: Buffer) => {
    if (stderr.length < 8192) stderr += d.toString();
  });
  c.stdin!.on('error', () => undefined); // a shell already gone: its exit says so
  const exited = new Promise<{ code: number | null; stderr: string }>((resolve) => {
    c.on('error', (e) => resolve({ code: -1, stderr: e.message }));
    c.on('exit', (code) => resolve({ code, stderr }));
  });
  let used = false;
  return {
    run: (timeoutMs = 30_000) => {
      if (used) return Promise.resolve({ code: -1, stderr: 'prepared command already used' });
      used = true;
      const timer = clock.setTimeout(() => c.kill('SIGKILL'), timeoutMs);
      c.stdin!.end('\n');
      return exited.finally(() => timer.cancel());
    },
    cancel: () => {
      if (used) return;
      used = true;
      c.stdin!.end();
    },
  };
}

/**
 * Run argv to its exit; resolves with the exit code and stderr, never rejects. Not
 * src/common/proc.ts's run(): QEMU with -daemonize exits once initialised while the daemon it
 * leaves may hold the stderr pipe a little longer, so this resolves on 'exit', not on the
 * pipes' close (which run() waits for), and a non-zero exit is an answer here, not an error.
 */
function execArgv(argv: string[], clock: Clock, timeoutMs = 30_000): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve) => {
    const c = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    const timer = clock.setTimeout(() => c.kill('SIGKILL'), timeoutMs);
    c.stderr!.on('data', (d: Buffer) => {
      if (stderr.length < 8192) stderr += d.toString();
    });
    c.on('error', (e) => {
      timer.cancel();
      resolve({ code: -1, stderr: e.message });
    });
    c.on('exit', (code) => {
      timer.cancel();
      resolve({ code, stderr });
    });
  });
}

/** SIGKILL, then wait (at most 2 s) until the process is gone or a zombie. */
async function killPid(pid: number, clock: Clock): Promise<void> {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    return;
  }
  for (let i = 0; i < 100 && pidAlive(pid); i++) await clockSleep(clock, 20);
}

/** TCP ports `pid` listens on, from /proc (its own network namespace's view): how the driver
 *  learns the port the kernel gave QEMU's NBD server (QEMU 7.2 has no query for it). */
export async function listeningPorts(pid: number): Promise<number[]> {
  const inodes = new Set<string>();
  for (const fd of await readdir(`/proc/${pid}/fd`).catch(() => [] as string[])) {
    const l = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '');
    const m = /^socket:\[(\d+)\]$/.exec(l);
    if (m) inodes.add(m[1]!);
  }
  const ports: number[] = [];
  for (const f of ['tcp', 'tcp6']) {
    const text = await readFile(`/proc/${pid}/net/${f}`, 'utf8').catch(() => '');
    for (const line of text.split('\n').slice(1)) {
      const c = line.trim().split(/\s+/);
      // sl local_address rem_address st ... inode (field 9); st 0A = LISTEN
      if (c.length > 9 && c[3] === '0A' && inodes.has(c[9]!)) ports.push(parseInt(c[1]!.split(':').pop()!, 16));
    }
  }
  return [...new Set(ports)];
}

// ---- taps ----------------------------------------------------------------------------------

/** Tap names must be unique on the host (≤ 15 chars): derived from dataDir + vmId. */
export function tapNames(dataDir: string, vmId: string, n: number): string[] {
  const h = sha256Hex(`${dataDir}\0${vmId}`).slice(0, 10);
  return Array.from({ length: n }, (_, i) => `vt${h}${i.toString(36)}`);
}

const ipArgv = (netns: string | undefined, args: string[]) => (netns ? ['ip', '-n', netns, ...args] : ['ip', ...args]);

function ip(system: QemuSystem, netns: string | undefined, args: string[]): Promise<{ code: number | null; stderr: string }> {
  return system.exec(ipArgv(netns, args));
}

/** `ip link set TAP up` for each tap, made ready ahead (QemuSystem.prepare) for setTapsUp; none
 *  without prepare. */
export function prepareTapsUp(system: QemuSystem, netns: string | undefined, taps: string[]): Map<string, PreparedCommand> {
  const out = new Map<string, PreparedCommand>();
  if (!system.prepare) return out;
  for (const tap of taps) out.set(tap, system.prepare(ipArgv(netns, ['link', 'set', tap, 'up'])));
  return out;
}

/** One tap per NIC, joined to the NIC's bridge; on failure none is left behind. With `up: false`
 *  the taps are joined but left down (an incoming VM's, see tapsUp): a bridge does not forward
 *  to a port that is down, so nothing queues for a guest that is not running yet. */
export async function createTaps(system: QemuSystem, netns: string | undefined, vmId: string, taps: string[], bridges: string[], o: { up: boolean } = { up: true }): Promise<void> {
  for (const [i, tap] of taps.entries()) {
    const bridge = bridges[i]!;
    await ip(system, netns, ['link', 'del', tap]); // a leftover from a crash would make `add` fail
    for (const args of [['tuntap', 'add', 'dev', tap, 'mode', 'tap'], ['link', 'set', tap, 'master', bridge, ...(o.up ? ['up'] : [])]]) {
      const r = await ip(system, netns, args);
      if (r.code !== 0) {
        await removeTaps(system, netns, taps);
        throw qemuError('VMTC_QEMU_TAP_FAILED', { vmId, tap, bridge, netns: netns ?? null, argv: args.join(' '), stderr: r.stderr.trim().slice(0, 500) });
      }
    }
  }
}

/** Bring taps up (idempotent); the first failure is thrown as VMTC_QEMU_TAP_FAILED. With the
 *  NICs' MACs, each bridge is then told at once that the VM's MAC is behind its tap (`bridge fdb
 *  replace … master dynamic`, an ordinary learned entry that ages and moves as usual). Without
 *  that the bridge keeps what it learned while the VM ran elsewhere (its MAC behind the lightpath
 *  port) and sends the VM's traffic back there until the VM's own first frame, QEMU's announce
 *  or the guest's first answer, is seen here: the announce QEMU sends as the incoming stream
 *  ends comes before the RESUME that brings the tap up, so it is lost, and the next is 50 ms
 *  later (`announce-initial`). The entry is best effort: a bridge that refuses it learns the MAC
 *  from the VM's next frame, so its failures are returned, not thrown. */
export async function setTapsUp(system: QemuSystem, netns: string | undefined, vmId: string, taps: string[], macs: (string | undefined)[] = [], linksUp: () => void = () => undefined, prepared?: Map<string, PreparedCommand>): Promise<string[]> {
  for (const tap of taps) {
    const p = prepared?.get(tap);
    prepared?.delete(tap);
    const r = p ? await p.run() : await ip(system, netns, ['link', 'set', tap, 'up']);
    if (r.code !== 0) throw qemuError('VMTC_QEMU_TAP_FAILED', { vmId, tap, netns: netns ?? null, argv: `link set ${tap} up`, stderr: r.stderr.trim().slice(0, 500) });
  }
  // (The fdb entries need a port that is up: the kernel refuses them on one that is down.)
  linksUp();
  const refused: string[] = [];
  for (const [i, tap] of taps.entries()) {
    const mac = macs[i];
    if (!mac) continue;
    const args = ['fdb', 'replace', mac.toLowerCase(), 'dev', tap, 'master', 'dynamic'];
    const r = await system.exec(netns ? ['bridge', '-n', netns, ...args] : ['bridge', ...args]);
    if (r.code !== 0) refused.push(`bridge ${args.join(' ')}: ${r.stderr.trim().slice(0, 200)}`);
  }
  return refused;
}

export async function removeTaps(system: QemuSystem, netns: string | undefined, taps: string[]): Promise<void> {
  for (const tap of taps) await ip(system, netns, ['link', 'del', tap]);
}
