// Two of the turntable's probes that need the running stack (lab/stack.ts): a client TCP session
// to the guest's echo server for the length of one migration (lab/probes/tcp-session.mjs), and
// the lightpath's real round-trip time (ping between the sites' overlay addresses).
import { spawn } from 'node:child_process';
import { netnsExec } from '../../net.ts';
import type { Stack } from '../../stack.ts';

/** A client TCP session to the guest's echo server for the length of one migration. */
export function startTcpSession(s: Stack) {
  const child = spawn('ip', ['netns', 'exec', s.lab.client.ns, process.execPath, new URL('../../probes/tcp-session.mjs', import.meta.url).pathname,
    `--host=${s.lab.vm.ip}`, '--interval=50', '--max-seconds=900'], { stdio: ['ignore', 'pipe', 'ignore'] });
  let out = '';
  child.stdout!.on('data', (d) => { out += d; });
  const ready = new Promise<void>((res, rej) => {
    const t = setTimeout(() => rej(new Error('TCP session probe did not connect in 10 s')), 10_000);
    child.stdout!.on('data', () => { if (out.includes('"ready"')) { clearTimeout(t); res(); } });
    child.once('exit', () => { clearTimeout(t); rej(new Error('TCP session probe exited before connecting')); });
  });
  return {
    ready,
    async stop(): Promise<{ survived: boolean; summary: any }> {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 5000);
        await exited;
        clearTimeout(t);
      }
      const line = out.split('\n').reverse().find((l) => l.includes('"probe":"tcp-session"') && l.includes('"sent"'));
      const summary = line ? JSON.parse(line) : null;
      return { survived: !!summary && summary.open === true && summary.mismatches === 0 && summary.echoed > 0, summary };
    },
  };
}

/** Smallest RTT of a few pings across the lightpath (the propagation delay the path really has). */
export async function lightpathRtt(s: Stack, fromSite: string, toSite: string): Promise<number | null> {
  const a = s.lab.sites.find((x) => x.name === fromSite)!;
  const b = s.lab.sites.find((x) => x.name === toSite)!;
  return pingMinMs(a.ns, b.lightpathIp);
}

/** The least of 4 pings from namespace `ns` to `ip`, ms (null: no answer). Measure on an idle
 *  path: behind a migration's copy the pings wait in the htb's queue and the least is not the RTT
 *  (a CI run saw 77 ms on a 20 ms lightpath). */
export async function pingMinMs(ns: string, ip: string): Promise<number | null> {
  try {
    const { stdout: text } = await netnsExec(ns, ['ping', '-c', '4', '-i', '0.2', '-W', '2', ip], { timeoutMs: 10_000 });
    const times = [...text.matchAll(/time=([\d.]+) ms/g)].map((m) => Number(m[1]));
    return times.length ? Math.min(...times) : null;
  } catch {
    return null;
  }
}
