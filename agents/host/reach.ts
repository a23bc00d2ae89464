// Is the cold path's verification target reachable from the destination, before the source is
// powered off (host.checkReach; the rule is docs/design.md#cold-path, "Checking the verify
// address first")? Before the move nothing of the VM runs at the destination, so whether its
// service answers cannot be known; what can be known is whether the destination's network (the
// VM network's namespace, for a driver that has one) has a route to the address. The decision
// is a pure function of two facts: the kernel's route lookup (`ip route get`) and one TCP
// connection attempt, which only informs (an on-link address nobody holds yet, as the VM's own
// before it moves, gets no answer or EHOSTUNREACH and is still fine), except that the kernel's
// ENETUNREACH is the same "no route" answer.
import net from 'node:net';
import { keepAliveClock, type Clock } from '../../src/common/clock.ts';
import type { ReachProbe, ReachResult } from '../../src/common/agent-protocol.ts';

/** What the kernel's route lookup said: a route, none (with its words), or not asked (a name). */
export type RouteFact = { route: 'found' } | { route: 'none'; reason: string } | { route: 'not-checked'; reason: string };

/** `ip route get ADDR`'s outcome: exit 0 is a route (local, on-link or via a gateway); otherwise
 *  its "RTNETLINK answers: …" names why there is none (no route, an unreachable, prohibit or
 *  blackhole route). */
export function routeFromIp(code: number | null, stderr: string): RouteFact {
  if (code === 0) return { route: 'found' };
  const said = stderr.replace(/^RTNETLINK answers:\s*/m, '').trim().split('\n')[0]?.slice(0, 200) || `ip route get exited with ${code}`;
  return { route: 'none', reason: said };
}

/** A TCP attempt's outcome from its errno (Node's `err.code`), or from bash's /dev/tcp words. */
export function probeFromError(errno: string | undefined): ReachProbe {
  switch (errno) {
    case 'ECONNREFUSED': case 'ECONNRESET': return 'refused';
    case 'ENETUNREACH': case 'EHOSTUNREACH': case 'EACCES': case 'EPERM': case 'EINVAL': return 'unreachable';
    default: return 'no-answer';
  }
}

/** bash's `exec 3<>/dev/tcp/H/P` under `timeout`: exit 0 connected, 124 timed out, else its
 *  message names the errno ("connect: Connection refused", "No route to host", …). */
export function probeFromBash(code: number | null, stderr: string): { probe: ReachProbe; errno?: string } {
  if (code === 0) return { probe: 'open' };
  if (code === 124) return { probe: 'no-answer' };
  const words: [RegExp, string][] = [[/Connection refused/i, 'ECONNREFUSED'], [/Network is unreachable/i, 'ENETUNREACH'], [/No route to host/i, 'EHOSTUNREACH'], [/Permission denied/i, 'EACCES'], [/Connection timed out/i, 'ETIMEDOUT']];
  const errno = words.find(([re]) => re.test(stderr))?.[1];
  return errno ? { probe: probeFromError(errno), errno } : { probe: 'no-answer' };
}

/**
 * The rule: unreachable when the kernel has no route to the address from the VM's network (the
 * lookup failed, or the connection attempt got ENETUNREACH, the same answer); reachable
 * otherwise, whatever the attempt got (refused: the port is closed until the VM is there; no
 * answer or EHOSTUNREACH: an on-link address nobody holds yet). A name (not an address) has no
 * route to look up: only ENETUNREACH refuses it.
 */
export function decideReach(route: RouteFact, attempt: { probe: ReachProbe; errno?: string }): ReachResult {
  const base = { route: route.route, probe: attempt.probe, ...(attempt.errno ? { errno: attempt.errno } : {}) };
  if (route.route === 'none') return { ...base, reachable: false, reason: `no route from the destination: ${route.reason}` };
  if (attempt.errno === 'ENETUNREACH') return { ...base, reachable: false, reason: 'no route from the destination: network is unreachable' };
  const why: Record<ReachProbe, string> = {
    open: 'something already accepts connections there',
    refused: 'the address answers, the port is closed (until the VM is there)',
    'no-answer': 'no answer yet (expected for the VM\'s own address before it moves)',
    unreachable: `the attempt got ${attempt.errno ?? 'unreachable'} (expected for an on-link address nobody holds yet)`,
  };
  const prefix = route.route === 'found' ? 'a route exists' : route.reason;
  return { ...base, reachable: true, reason: `${prefix}; ${why[attempt.probe]}` };
}

/** A name is not looked up: only IP literals have a route to ask the kernel about. */
export function isAddress(host: string): boolean {
  return net.isIP(host) !== 0;
}

/** One TCP connection attempt from this process, with its errno. */
export function tcpProbe(host: string, port: number, timeoutMs: number, clock: Clock = keepAliveClock): Promise<{ probe: ReachProbe; errno?: string }> {
  return new Promise((resolve) => {
    const sock = net.connect({ host, port });
    const done = (r: { probe: ReachProbe; errno?: string }) => {
      timer.cancel();
      sock.destroy();
      resolve(r);
    };
    const timer = clock.setTimeout(() => done({ probe: 'no-answer' }), Math.max(1, timeoutMs));
    sock.once('connect', () => done({ probe: 'open' }));
    sock.once('error', (e: NodeJS.ErrnoException) => done({ probe: probeFromError(e.code), ...(e.code ? { errno: e.code } : {}) }));
  });
}

/** For a driver without checkReach: the agent's own namespace, no route lookup (no `ip` to ask
 *  here), one attempt: only ENETUNREACH refuses. */
export async function reachByProbe(host: string, port: number, timeoutMs: number, clock: Clock = keepAliveClock): Promise<ReachResult> {
  return decideReach({ route: 'not-checked', reason: 'no route lookup from the agent itself' }, await tcpProbe(host, port, timeoutMs, clock));
}

/** `10.1.1.0/24`, `::1/128`, a bare address (one host): a BlockList matching them, or the first
 *  entry that is none of those. */
export function networksList(cidrs: readonly string[]): { list: net.BlockList } | { bad: string } {
  const list = new net.BlockList();
  for (const c of cidrs) {
    const [addr, bits, more] = typeof c === 'string' ? c.split('/') : [];
    const fam = net.isIP(addr ?? '');
    const max = fam === 6 ? 128 : 32;
    const n = bits === undefined ? max : Number(bits);
    if (!fam || more !== undefined || !(Number.isInteger(n) && n >= 0 && n <= max) || (bits !== undefined && !/^\d+$/.test(bits))) return { bad: String(c) };
    list.addSubnet(addr!, n, fam === 6 ? 'ipv6' : 'ipv4');
  }
  return { list };
}
