// Building, inspecting and removing a lab instance (the namespaces of lab/topology.ts), and the
// client tunnel operations the tunnel agent uses. Everything lives inside the lab's own
// namespaces (devices are created there directly, never in the root namespace), so a lab is
// removed by deleting its namespaces, and two labs with different prefixes never collide.
//
// The state file `<stateDir>/<prefix>.json` holds the Lab description; it is written before the
// first namespace is made, so a crash at any point leaves enough for `down` to clean up, and
// `up` with the same prefix removes leftovers before building.
import { mkdir, readFile, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { LabLightpathDriver, type LightpathRecord } from './lightpath-driver.ts';
import { sleep } from '../src/common/clock.ts';
import { lastDelayLineReport } from './delay-line-process.ts';
import type { DelayLineReport } from './delay-line.ts';
import { labError } from './errors.ts';
import { ipBatch, listNetns, netnsExec, run, tryRun } from './exec.ts';
import { LAB_DEFAULTS, LAB_NS_PATTERN, describeLab, lightpathNodeSettings, siteOf, validPrefix, type Lab, type LabConfig, type LabSite } from './topology.ts';

export { netnsExec, tryNetnsExec, run } from './exec.ts';
export type { Lab, LabConfig, LabSite } from './topology.ts';

const ZERO_MAC = '00:00:00:00:00:00';

function statePath(stateDir: string, prefix: string): string {
  return join(stateDir, `${prefix}.json`);
}

async function writeState(lab: Lab): Promise<void> {
  await mkdir(lab.stateDir, { recursive: true });
  const p = statePath(lab.stateDir, lab.prefix);
  await writeFile(p + '.tmp', JSON.stringify(lab, null, 2));
  await rename(p + '.tmp', p);
}

/** The recorded description of lab `prefix`, or null. */
export async function readLab(prefix: string, stateDir: string = LAB_DEFAULTS.stateDir): Promise<Lab | null> {
  try {
    return JSON.parse(await readFile(statePath(stateDir, prefix), 'utf8')) as Lab;
  } catch {
    return null;
  }
}

/** Like readLab, but a missing lab is a coded error. */
export async function loadLab(prefix: string, stateDir: string = LAB_DEFAULTS.stateDir): Promise<Lab> {
  const lab = await readLab(prefix, stateDir);
  if (!lab) throw labError('VMTC_LAB_NOT_FOUND', { prefix, stateDir });
  return lab;
}

/** Prefixes with a state file. */
export async function listLabs(stateDir: string = LAB_DEFAULTS.stateDir): Promise<string[]> {
  try {
    return (await readdir(stateDir)).filter((f) => f.endsWith('.json')).map((f) => f.slice(0, -5)).filter(validPrefix);
  } catch {
    return [];
  }
}

function sysctls(lab: Lab, forward: boolean): string[] {
  const max = lab.tcpMaxBytes;
  // docs/design.md#lab-facts, "TCP buffers": 1 Gbit/s × 198 ms is ~25 MB in flight, far above
  // the default windows.
  return [
    // A receive buffer that starts large enough for a fast start over a long path (see
    // initialWindowPackets in lab/lightpath-driver.ts); memory is only used when data waits.
    `net.ipv4.tcp_rmem=4096 ${Math.min(max, 8 * 1024 * 1024)} ${max}`,
    `net.ipv4.tcp_wmem=4096 16384 ${max}`,
    `net.ipv4.ip_forward=${forward ? 1 : 0}`,
    // 0 means "the kernel default" (unlimited, 4294967295).
    `net.ipv4.tcp_notsent_lowat=${lab.tcpNotsentLowatBytes || 4294967295}`,
  ];
}

async function setSysctls(ns: string, kv: string[]): Promise<void> {
  await netnsExec(ns, ['sysctl', '-q', '-w', ...kv]);
}

async function txOff(ns: string, dev: string): Promise<void> {
  // docs/design.md#lab-facts: vxlan with tx checksum offload leaves inner TCP checksums unfilled.
  await netnsExec(ns, ['ethtool', '-K', dev, 'tx', 'off']);
}

/**
 * Build lab `cfg.prefix` (random if absent). Leftovers of an earlier run with the same prefix
 * (a crash) are removed first, so calling it twice is harmless.
 */
export async function labUp(cfg: LabConfig = {}): Promise<Lab> {
  const lab = describeLab(cfg);
  await labDown(lab.prefix, lab.stateDir);
  await writeState(lab);
  try {
    await build(lab);
  } catch (e) {
    await labDown(lab.prefix, lab.stateDir);
    throw e;
  }
  return lab;
}

async function build(lab: Lab): Promise<void> {
  const W = lab.wan.ns;
  const all = [W, lab.client.ns, ...lab.sites.map((s) => s.ns)];
  for (const ns of all) await run(['ip', 'netns', 'add', ns]);
  const mtu = String(lab.lightpath.underlayMtu);

  // WAN: two bridges, the public one and the lightpath underlay, with veths to every member.
  // IP forwarding stays off here: between sites' underlay addresses the only path that carries
  // the lightpath is the delay line (the vxlan devices name it as their remote).
  const wan: string[] = [
    'link set lo up',
    `link add ${lab.wan.publicBridge} type bridge`,
    `link add ${lab.wan.underlayBridge} type bridge`,
    `addr add ${lab.wan.publicIp}/24 dev ${lab.wan.publicBridge}`,
    `addr add ${lab.wan.underlayIp}/24 dev ${lab.wan.underlayBridge}`,
    `link add pc mtu ${mtu} type veth peer name ${lab.client.wanDev} netns ${lab.client.ns} mtu ${mtu}`,
    `link set pc master ${lab.wan.publicBridge} up`,
  ];
  for (const s of lab.sites) {
    const L = s.name.slice(4); // "A"
    wan.push(
      `link add p${L} mtu ${mtu} type veth peer name ${s.wanDev} netns ${s.ns} mtu ${mtu}`,
      `link set p${L} master ${lab.wan.publicBridge} up`,
      `link add u${L} mtu ${mtu} type veth peer name ${s.underlayDev} netns ${s.ns} mtu ${mtu}`,
      `link set u${L} master ${lab.wan.underlayBridge} up`,
    );
  }
  wan.push(`link set ${lab.wan.publicBridge} up`, `link set ${lab.wan.underlayBridge} up`);
  await ipBatch(W, wan);
  await setSysctls(W, sysctls(lab, false));

  for (const s of lab.sites) await buildSite(lab, s);

  // The client: its public address, and a vxlan device on the VM's L2 segment whose destinations
  // are the all-zero FDB entries (docs/design.md#lab-facts: only that entry holds several
  // destinations, which is what make-before-break needs); nolearning so replies never rewrite them.
  const c = lab.client;
  await ipBatch(c.ns, [
    'link set lo up',
    `addr add ${c.publicIp}/24 dev ${c.wanDev}`,
    `link set ${c.wanDev} up`,
    `link add ${c.tunnelDev} type vxlan id ${lab.tunnel.vni} local ${c.publicIp} dstport ${lab.tunnel.port} nolearning`,
    `link set ${c.tunnelDev} mtu ${lab.tunnel.mtu}`,
    `addr add ${c.ip}/24 dev ${c.tunnelDev}`,
    `link set ${c.tunnelDev} up`,
  ]);
  await txOff(c.ns, c.tunnelDev);
  await setSysctls(c.ns, sysctls(lab, false));
  if (lab.tunnelSite) await tunnelAddSite(lab, lab.tunnelSite);
}

async function buildSite(lab: Lab, s: LabSite): Promise<void> {
  await ipBatch(s.ns, [
    'link set lo up',
    `addr add ${s.publicIp}/24 dev ${s.wanDev}`,
    `link set ${s.wanDev} up`,
    `addr add ${s.underlayIp}/24 dev ${s.underlayDev}`,
    `link set ${s.underlayDev} up`,
    // The VMs' bridge with the virtual gateway: same address and MAC at every site (the paper's
    // Figure 2), so a migrated VM keeps a valid ARP entry for its gateway.
    `link add ${s.bridge} type bridge`,
    `link set ${s.bridge} address ${s.gatewayMac}`,
    `addr add ${s.gatewayIp}/24 dev ${s.bridge}`,
    // The client tunnel's end at this site: a vxlan port on the VMs' bridge, sending toward the
    // client (the all-zero entry below); the bridge itself learns the client's MAC on it.
    `link add ${s.tunnelDev} type vxlan id ${lab.tunnel.vni} local ${s.publicIp} dstport ${lab.tunnel.port} nolearning`,
    `link set ${s.tunnelDev} mtu ${lab.tunnel.mtu} master ${s.bridge}`,
    `link set ${s.tunnelDev} up`,
    `link set ${s.bridge} up`,
  ]);
  await run(['bridge', '-n', s.ns, 'fdb', 'append', ZERO_MAC, 'dev', s.tunnelDev, 'dst', lab.client.publicIp]);
  await txOff(s.ns, s.tunnelDev);
  await setSysctls(s.ns, sysctls(lab, true));
}

async function killNamespacePids(ns: string): Promise<void> {
  // Processes still inside a lab namespace (a VM, a probe, a delay line) would keep it alive
  // after `ip netns del`. They were started in this lab's own namespace; ended by pid.
  const r = await tryRun(['ip', 'netns', 'pids', ns]);
  const pids = (r?.stdout ?? '').split(/\s+/).filter(Boolean).map(Number).filter((p) => p > 1 && p !== process.pid);
  if (pids.length === 0) return;
  for (const p of pids) { try { process.kill(p, 'SIGTERM'); } catch { /* gone */ } }
  const deadline = Date.now() + 3000;
  while (Date.now() < deadline && pids.some((p) => { try { process.kill(p, 0); return true; } catch { return false; } })) await sleep(50);
  for (const p of pids) { try { process.kill(p, 'SIGKILL'); } catch { /* gone */ } }
}

function recordBelongsTo(r: LightpathRecord, prefix: string): boolean {
  return r.wanNamespace === `${prefix}-wan` || r.ends.some((e) => e.namespace.startsWith(`${prefix}-`));
}

/**
 * Remove lab `prefix`: its lightpaths (and their delay lines), processes left in its
 * namespaces, the namespaces, and its state. Anything already gone is fine.
 */
export async function labDown(prefix: string, stateDir: string = LAB_DEFAULTS.stateDir): Promise<void> {
  if (!validPrefix(prefix)) throw labError('VMTC_LAB_BAD_PREFIX', { prefix });
  // Lightpaths of this lab may be recorded under the lab's state dir (lab/net.ts, tests) or the
  // default one (a broker process running the lab's lightpath driver with its defaults).
  for (const dir of new Set([stateDir, LAB_DEFAULTS.stateDir])) {
    const driver = new LabLightpathDriver({ stateDir: dir });
    for (const r of await driver.records()) if (recordBelongsTo(r, prefix)) await driver.release(r.connectionId);
  }
  const mine = (await listNetns()).filter((n) => LAB_NS_PATTERN.exec(n)?.[1] === prefix);
  for (const ns of mine) await killNamespacePids(ns);
  for (const ns of mine) await tryRun(['ip', 'netns', 'del', ns]);
  await rm(statePath(stateDir, prefix), { force: true });
  const lpDir = join(stateDir, 'lightpaths');
  for (const f of await readdir(lpDir).catch(() => [] as string[])) {
    if (f.startsWith(`${prefix}-wan.`)) await rm(join(lpDir, f), { force: true });
  }
}

/** Remove every lab: all recorded ones, every namespace named like a lab's, every recorded delay line. */
export async function labDownAll(stateDir: string = LAB_DEFAULTS.stateDir): Promise<string[]> {
  const prefixes = new Set(await listLabs(stateDir));
  for (const n of await listNetns()) {
    const m = LAB_NS_PATTERN.exec(n);
    if (m) prefixes.add(m[1]!);
  }
  const driver = new LabLightpathDriver({ stateDir });
  for (const r of await driver.records()) await driver.release(r.connectionId);
  for (const p of prefixes) await labDown(p, stateDir);
  return [...prefixes];
}

export interface LabStatus {
  prefix: string;
  recorded: boolean;
  namespaces: Record<string, boolean>;
  /** Sites the client tunnel currently sends to. */
  tunnelSites: string[];
  lightpaths: { connectionId: string; device: string; ends: string[]; relayPid: number | null; relayPort: number | null; report: DelayLineReport | null }[];
  lab: Lab | null;
}

export async function labStatus(prefix: string, stateDir: string = LAB_DEFAULTS.stateDir): Promise<LabStatus> {
  const lab = await readLab(prefix, stateDir);
  const present = new Set(await listNetns());
  const namespaces: Record<string, boolean> = {};
  if (lab) for (const ns of [lab.wan.ns, lab.client.ns, ...lab.sites.map((s) => s.ns)]) namespaces[ns] = present.has(ns);
  for (const n of present) if (LAB_NS_PATTERN.exec(n)?.[1] === prefix) namespaces[n] = true;
  const driver = new LabLightpathDriver({ stateDir });
  const lightpaths: LabStatus['lightpaths'] = [];
  for (const r of await driver.records()) {
    if (!recordBelongsTo(r, prefix)) continue;
    lightpaths.push({
      connectionId: r.connectionId,
      device: r.dev,
      ends: r.ends.map((e) => e.node),
      relayPid: r.delayLine?.pid ?? null,
      relayPort: r.delayLine?.port ?? null,
      report: r.delayLine ? await lastDelayLineReport(r.delayLine.statsFile) : null,
    });
  }
  let tunnel: string[] = [];
  if (lab && present.has(lab.client.ns)) tunnel = await tunnelSites(lab).catch(() => []);
  return { prefix, recorded: lab !== null, namespaces, tunnelSites: tunnel, lightpaths, lab };
}

// ---- client tunnel (used by the tunnel agent: make-before-break = add new, then remove old) ----

/** Make the client's tunnel also send to `site` (an extra all-zero FDB destination). */
export async function tunnelAddSite(lab: Lab, site: string): Promise<void> {
  const s = siteOf(lab, site);
  if ((await tunnelSites(lab)).includes(s.name)) return;
  await netnsExec(lab.client.ns, ['bridge', 'fdb', 'append', ZERO_MAC, 'dev', lab.client.tunnelDev, 'dst', s.publicIp]);
}

/** Stop sending the client's tunnel traffic to `site`. Not present: nothing to do. */
export async function tunnelRemoveSite(lab: Lab, site: string): Promise<void> {
  const s = siteOf(lab, site);
  if (!(await tunnelSites(lab)).includes(s.name)) return;
  await netnsExec(lab.client.ns, ['bridge', 'fdb', 'del', ZERO_MAC, 'dev', lab.client.tunnelDev, 'dst', s.publicIp]);
}

/** The sites the client's tunnel sends to (its all-zero FDB destinations), in FDB order. */
export async function tunnelSites(lab: Lab): Promise<string[]> {
  const { stdout } = await netnsExec(lab.client.ns, ['bridge', '-j', 'fdb', 'show', 'dev', lab.client.tunnelDev]);
  const entries = stdout.trim() ? (JSON.parse(stdout) as { mac: string; dst?: string }[]) : [];
  const out: string[] = [];
  for (const e of entries) {
    if (e.mac !== ZERO_MAC || !e.dst) continue;
    const s = lab.sites.find((x) => x.publicIp === e.dst);
    out.push(s ? s.name : e.dst);
  }
  return out;
}

// ---- VM taps (for the QEMU driver: `-netdev tap,ifname=NAME,script=no,downscript=no`, run inside the site namespace) ----

/** Create tap `name` in `site`'s namespace, attached to the VMs' bridge. Idempotent. */
export async function createTap(lab: Lab, site: string, name: string): Promise<void> {
  const s = siteOf(lab, site);
  if (!/^[A-Za-z0-9_.-]{1,15}$/.test(name)) throw labError('VMTC_CONFIG_INVALID', { field: 'tap', value: name });
  await deleteTap(lab, site, name);
  await ipBatch(s.ns, [
    `tuntap add dev ${name} mode tap`,
    `link set ${name} mtu ${lab.tunnel.mtu} master ${s.bridge}`,
    `link set ${name} up`,
  ]);
}

export async function deleteTap(lab: Lab, site: string, name: string): Promise<void> {
  const s = siteOf(lab, site);
  await tryRun(['ip', '-n', s.ns, 'link', 'del', 'dev', name]);
}

// ---- standing lightpath (manual use: `vmtc lab up --lightpath`) ----

export function standingLightpathId(lab: Lab): string {
  return `lab-${lab.prefix}-standing`;
}

/** Provision a lightpath between two sites through the lab's lightpath driver, as the broker would. */
export async function provisionLightpath(lab: Lab, from: string, to: string, bandwidthMbps: number, connectionId = standingLightpathId(lab)) {
  const a = siteOf(lab, from);
  const b = siteOf(lab, to);
  const driver = new LabLightpathDriver({ stateDir: lab.stateDir });
  return driver.provision({
    connectionId,
    path: [a.name, 'wan', b.name],
    nodes: {
      [a.name]: lightpathNodeSettings(lab, a) as unknown as Record<string, unknown>,
      wan: { namespace: lab.wan.ns },
      [b.name]: lightpathNodeSettings(lab, b) as unknown as Record<string, unknown>,
    },
    bandwidthMbps,
  });
}
