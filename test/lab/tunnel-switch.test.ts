// The tunnel agent for real (docs/design.md#live-migration, step 6): a lab (namespaces, client
// vxlan tunnel toward site A), a stand-in VM (its own namespace, 10.1.1.2, a veth into site A's VM
// bridge), a real agent hub, and the tunnel agent with the vxlan driver on the client namespace.
// While the client pings the VM every 50 ms, the controller's HubTunnelPort bicasts A+B, the VM's
// port moves from site A's bridge to site B's (the "migration": same IP, same MAC), and the port
// prunes A. The replies must go on, and the client's FDB must end with site B only.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { labUp, labDown, tunnelSites, type Lab } from '../../lab/net.ts';
import { run, tryRun } from '../../lab/exec.ts';
import { randomPrefix } from '../../lab/topology.ts';
import type { VmtcError } from '../../src/common/errors.ts';
import { VxlanTunnelDriver } from '../../agents/tunnel/vxlan-driver.ts';
import { startTunnelAgent, type TunnelAgent } from '../../agents/tunnel/index.ts';
import { HubTunnelPort } from '../../src/controller/tunnel-port.ts';
import { startHub, tempDir, type HubFixture } from '../helpers/agent-fixture.ts';

let stateDir = '';
let prefix = '';
let vmNs = '';
let lab: Lab | undefined;
const cleanups: (() => Promise<unknown> | unknown)[] = [];

beforeAll(async () => {
  stateDir = await mkdtemp(join(tmpdir(), 'vmtc-lab-'));
  prefix = randomPrefix();
  vmNs = `${prefix}-tvm`;
  // Registered before building, so a failure halfway still removes what exists.
  cleanups.push(() => rm(stateDir, { recursive: true, force: true }));
  cleanups.push(() => labDown(prefix, stateDir));
  cleanups.push(() => tryRun(['ip', 'netns', 'del', vmNs]));
  lab = await labUp({ prefix, rttMs: 10, stateDir, tunnelSite: 'siteA' });
  const A = lab.sites[0]!;
  // The stand-in VM: its own namespace (not a lab namespace, so removed above by name).
  await run(['ip', 'netns', 'add', vmNs]);
  await run(['ip', '-n', vmNs, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'tvm0', 'netns', A.ns]);
  await run(['ip', '-n', vmNs, 'link', 'set', 'eth0', 'address', lab.vm.mac, 'mtu', String(lab.tunnel.mtu)]);
  await run(['ip', '-n', vmNs, 'addr', 'add', `${lab.vm.ip}/${lab.vm.prefixLen}`, 'dev', 'eth0']);
  await run(['ip', '-n', vmNs, 'link', 'set', 'eth0', 'up']);
  await run(['ip', '-n', vmNs, 'link', 'set', 'lo', 'up']);
  await run(['ip', '-n', A.ns, 'link', 'set', 'tvm0', 'mtu', String(lab.tunnel.mtu), 'master', A.bridge, 'up']);
});

afterAll(async () => {
  for (const c of cleanups.splice(0).reverse()) await Promise.resolve().then(c).catch(() => undefined);
});

/** Ping from the client: count/time bounded, only inside the lab. -D prints a timestamp per reply. */
// (No -w: with a deadline, ping keeps sending until it has `count` replies.)
function pingVm(count: number): Promise<{ replies: { seq: number; at: number }[]; transmitted: number; out: string }> {
  return new Promise((resolve, reject) => {
    const argv = ['netns', 'exec', lab!.client.ns, 'ping', '-n', '-D', '-c', String(count), '-i', '0.05', '-W', '1', lab!.vm.ip];
    const child = spawn('ip', argv, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { out += d; });
    cleanups.push(() => { if (child.exitCode === null && child.pid) process.kill(child.pid, 'SIGKILL'); });
    child.once('error', reject);
    child.once('exit', () => {
      const replies: { seq: number; at: number }[] = [];
      for (const m of out.matchAll(/^\[(\d+\.\d+)\] \d+ bytes from [\d.]+: icmp_seq=(\d+)/gm)) replies.push({ seq: Number(m[2]), at: Number(m[1]) * 1000 });
      resolve({ replies, transmitted: Number(/(\d+) packets transmitted/.exec(out)?.[1] ?? NaN), out });
    });
  });
}

describe('tunnel agent in the lab', () => {
  it('switches the client tunnel A → A+B → B while the VM moves, and the pings go on', async () => {
    const L = lab!;
    const [A, B] = [L.sites[0]!, L.sites[1]!];
    const hub: HubFixture = await startHub();
    cleanups.push(() => hub.close());
    const dataDir = tempDir('vmtc-tunnel-');
    cleanups.push(() => rm(dataDir, { recursive: true, force: true }));
    const driver = await VxlanTunnelDriver.open({ netns: L.client.ns, device: L.client.tunnelDev, sites: { siteA: A.publicIp, siteB: B.publicIp } });
    const { token } = hub.hub.mintEnrollToken({ kind: 'tunnel', hostId: 'tun-lab' });
    const agent: TunnelAgent = await startTunnelAgent({ controllerUrl: hub.controllerUrl, enrollToken: token, dataDir, driver, initialSite: 'siteA' });
    cleanups.push(() => agent.close());
    await agent.link.waitConnected();
    const port = new HubTunnelPort(hub.hub);

    expect(await tunnelSites(L)).toEqual(['siteA']);
    expect((await pingVm(3)).replies).toHaveLength(3);

    const probes = 80; // 4 s at 50 ms
    const ping = pingVm(probes);
    await new Promise((r) => setTimeout(r, 500));
    await port.bicast('vm-1', 'siteA', 'siteB');
    expect(await tunnelSites(L)).toEqual(['siteA', 'siteB']);
    // The "migration": the VM's port leaves site A's bridge and joins site B's.
    const movedAt = Date.now();
    await run(['ip', '-n', A.ns, 'link', 'set', 'tvm0', 'netns', B.ns]);
    await run(['ip', '-n', B.ns, 'link', 'set', 'tvm0', 'master', B.bridge, 'up']);
    // Hold both destinations a while (the destination "reports running" later): without the
    // bicast every probe of this interval would be lost (checked by hand: 7 of 80 at 300 ms).
    await new Promise((r) => setTimeout(r, 500));
    await port.prune('vm-1', 'siteB', 'siteA');
    const prunedAt = Date.now();
    const { replies, transmitted, out } = await ping;

    // The FDB, read independently of the agent: only site B is left.
    expect(await tunnelSites(L)).toEqual(['siteB']);
    const after = replies.filter((r) => r.at > prunedAt);
    expect(after.length, `no replies after the prune (ping ended too early?):\n${out}`).toBeGreaterThanOrEqual(5);
    expect(transmitted).toBe(probes);
    const lost = probes - new Set(replies.map((r) => r.seq)).size;
    let maxGap = 0;
    for (let i = 1; i < replies.length; i++) maxGap = Math.max(maxGap, replies[i]!.at - replies[i - 1]!.at);
    const history = (await agent.state()).history;
    console.log(JSON.stringify({ probes, lost, maxGapMs: Math.round(maxGap), moveToPruneMs: prunedAt - movedAt, history: history.map((h) => ({ at: h.at, op: h.op, site: h.site, cause: h.cause })) }));
    // The move itself takes milliseconds: at most a couple of probes may be lost during it. With
    // the tunnel still on A only, every probe between the move and the prune (about 10) would be.
    expect(lost, out).toBeLessThanOrEqual(3);
    expect(history.map((h) => [h.op, h.site])).toEqual([['add', 'siteB'], ['remove', 'siteA']]);

    // The driver never removes the last destination unless forced, and is idempotent.
    let err: VmtcError | undefined;
    await driver.remove('siteB').catch((e: VmtcError) => { err = e; });
    expect(err?.code).toBe('VMTC_TUNNEL_LAST_SITE');
    await driver.remove('siteA');
    await driver.add('siteB');
    expect(await tunnelSites(L)).toEqual(['siteB']);
    expect((await pingVm(3)).replies).toHaveLength(3);
  });

  it('refuses a device that is not a nolearning vxlan device, naming the field', async () => {
    const L = lab!;
    const A = L.sites[0]!;
    for (const device of [L.client.wanDev, 'nosuchdev0']) {
      let err: VmtcError | undefined;
      await VxlanTunnelDriver.open({ netns: L.client.ns, device, sites: { siteA: A.publicIp } }).catch((e: VmtcError) => { err = e; });
      expect(err?.code).toBe('VMTC_CONFIG_INVALID');
      expect(err?.details?.field).toBe('device');
    }
    const learning = 'vxl0';
    await run(['ip', '-n', L.client.ns, 'link', 'add', learning, 'type', 'vxlan', 'id', '999', 'local', L.client.publicIp, 'dstport', '4790']);
    let err: VmtcError | undefined;
    await VxlanTunnelDriver.open({ netns: L.client.ns, device: learning, sites: { siteA: A.publicIp } }).catch((e: VmtcError) => { err = e; });
    expect(err?.code).toBe('VMTC_CONFIG_INVALID');
    expect(err?.details).toMatchObject({ field: 'device', learning: true });
  });
});
