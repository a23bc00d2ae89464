// The lab's topology as data: every namespace, device and address of one lab instance, computed
// from its options alone (pure, so `down`/`status` and other processes can recompute or read it
// from the state file). lab/net.ts makes it real. The layout (docs/lab.md has a drawing):
//
//   P-client ── veth ──┐                       ┌── veth ── P-siteA (brvm 10.1.1.1, vxc, lpu0)
//                      ├─ P-wan: br0 (198.51.100.0/24, the public WAN)
//                      │         brlp (203.0.113.0/24, lightpath underlay; delay lines bind .1)
//                      └────────────────────── ┴── veth ── P-siteB (brvm 10.1.1.1, vxc, lpu0)
//
// Addresses only from the documentation ranges and the VM's private 10.1.1.0/24.
import { randomBytes } from 'node:crypto';
import { DELAY_LINE_DEFAULTS, queueBytesToMs } from './delay-line.ts';
import { labError } from './errors.ts';
import type { LabLineSettings, LabNodeSettings } from './lightpath-driver.ts';
import type { DelayLineImpl } from './delay-line-process.ts';

export interface LabConfig {
  /** 1-4 chars [a-z0-9]; random when absent. Keeps "P-siteA" etc. short and unique. */
  prefix?: string;
  /** Number of sites, ≥ 2 (siteA, siteB, …). Default 2. */
  sites?: number;
  /** Round-trip time of the lightpath, ms (the delay line holds rttMs/2 each way). Default 198. */
  rttMs?: number;
  /** Line rate of the emulated lightpath, Mbit/s. Default 1000. */
  rateMbps?: number;
  /** Queue bound of the delay line, ms at the line rate. Default 20. */
  queueMs?: number;
  /** Queue bound in bytes instead (converted to ms at the line rate); wins over queueMs. */
  queueBytes?: number;
  /** Random loss probability on the lightpath. Default 0. */
  loss?: number;
  /** Which delay line relays the lightpath: 'node' (lab/delay-line-main.ts) or 'c'
   * (lab/delay-line/delay-line.c, faster). Absent: env VMTC_DELAY_LINE where the delay line is
   * started, else 'c'. */
  delayLineImpl?: DelayLineImpl;
  /** Upper bound of tcp_rmem/tcp_wmem in every namespace, bytes. Default 64 MiB (docs/design.md#lab-facts, "TCP buffers"). */
  tcpMaxBytes?: number;
  /** net.ipv4.tcp_notsent_lowat in every namespace: how many not-yet-sent bytes a TCP socket may
   * hold before a writer blocks. Default 128 KiB, so a migration's last pages do not queue behind
   * megabytes of earlier data in the sender's buffer (0: the kernel default, unlimited). */
  tcpNotsentLowatBytes?: number;
  /** The site the client's tunnel points at after `up` (null: none). Default the first site. */
  tunnelSite?: string | null;
  /** Where state files live. Default /run/vmtc-lab. */
  stateDir?: string;
}

export interface LabSite {
  /** "siteA", "siteB", … (also the broker node id). */
  name: string;
  /** 1-based. */
  index: number;
  ns: string;
  /** The site's public address on the WAN (198.51.100.10*i) on device `wanDev`. */
  publicIp: string;
  wanDev: string;
  /** The bridge for the site's VMs, holding the virtual gateway. */
  bridge: string;
  gatewayIp: string;
  /** Same MAC at every site, so a migrated VM's ARP entry for the gateway stays valid. */
  gatewayMac: string;
  /** The vxlan port on `bridge` that terminates the client tunnel. */
  tunnelDev: string;
  /** Lightpath underlay: device and address (203.0.113.10*i) toward the delay lines. */
  underlayDev: string;
  underlayIp: string;
  /** Lightpath overlay address (192.0.2.i): QEMU's incoming migration listens here. */
  lightpathIp: string;
}

export interface Lab {
  prefix: string;
  createdAt: string;
  stateDir: string;
  wan: {
    ns: string;
    publicBridge: string;
    publicIp: string;
    underlayBridge: string;
    /** Delay line processes bind here. */
    underlayIp: string;
  };
  client: {
    ns: string;
    wanDev: string;
    publicIp: string;
    /** The client's vxlan device (nolearning; destinations = all-zero FDB entries). */
    tunnelDev: string;
    /** The client's address on the VM's L2 segment. */
    ip: string;
  };
  sites: LabSite[];
  vm: { ip: string; prefixLen: number; gateway: string; mac: string };
  tunnel: { vni: number; port: number; mtu: number };
  lightpath: LabLineSettings;
  tcpMaxBytes: number;
  tcpNotsentLowatBytes: number;
  tunnelSite: string | null;
}

export const LAB_DEFAULTS = {
  sites: 2,
  rttMs: 2 * DELAY_LINE_DEFAULTS.oneWayMs,
  rateMbps: DELAY_LINE_DEFAULTS.rateMbps,
  queueMs: DELAY_LINE_DEFAULTS.queueMs,
  loss: 0,
  tcpMaxBytes: 64 * 1024 * 1024,
  tcpNotsentLowatBytes: 128 * 1024,
  stateDir: '/run/vmtc-lab',
} as const;

/** Lab namespaces are named `<prefix>-wan|-client|-site<X>`. */
export const LAB_NS_PATTERN = /^([a-z0-9]{1,4})-(wan|client|site[A-Z])$/;

export function validPrefix(p: string): boolean {
  return /^[a-z0-9]{1,4}$/.test(p);
}

export function randomPrefix(): string {
  // A letter first, so a prefix never looks like a number in a listing.
  const letters = 'abcdefghijklmnopqrstuvwxyz';
  const b = randomBytes(4);
  const alnum = letters + '0123456789';
  return letters[b[0]! % 26]! + alnum[b[1]! % 36]! + alnum[b[2]! % 36]! + alnum[b[3]! % 36]!;
}

export function siteLetter(i: number): string {
  return String.fromCharCode(64 + i);
}

/** Compute a lab's full description from its options (no side effects). */
export function describeLab(cfg: LabConfig = {}, now: Date = new Date()): Lab {
  const prefix = cfg.prefix ?? randomPrefix();
  if (!validPrefix(prefix)) throw labError('VMTC_LAB_BAD_PREFIX', { prefix });
  const n = cfg.sites ?? LAB_DEFAULTS.sites;
  if (!Number.isInteger(n) || n < 2 || n > 9) throw labError('VMTC_CONFIG_INVALID', { field: 'sites', value: n }, { message: 'sites must be an integer from 2 to 9' });
  const rttMs = cfg.rttMs ?? LAB_DEFAULTS.rttMs;
  const rateMbps = cfg.rateMbps ?? LAB_DEFAULTS.rateMbps;
  const queueMs = cfg.queueBytes !== undefined ? queueBytesToMs(cfg.queueBytes, rateMbps) : cfg.queueMs ?? LAB_DEFAULTS.queueMs;
  const loss = cfg.loss ?? LAB_DEFAULTS.loss;
  for (const [field, v, ok] of [
    ['rttMs', rttMs, rttMs >= 0],
    ['rateMbps', rateMbps, rateMbps > 0],
    ['queueMs', queueMs, queueMs >= 0],
    ['loss', loss, loss >= 0 && loss < 1],
  ] as const) {
    if (!Number.isFinite(v) || !ok) throw labError('VMTC_CONFIG_INVALID', { field, value: v }, { message: `lab option ${field} is out of range` });
  }
  if (cfg.delayLineImpl !== undefined && cfg.delayLineImpl !== 'node' && cfg.delayLineImpl !== 'c') {
    throw labError('VMTC_CONFIG_INVALID', { field: 'delayLineImpl', value: cfg.delayLineImpl }, { message: 'lab option delayLineImpl must be node or c' });
  }
  const sites: LabSite[] = [];
  for (let i = 1; i <= n; i++) {
    const name = `site${siteLetter(i)}`;
    sites.push({
      name,
      index: i,
      ns: `${prefix}-${name}`,
      publicIp: `198.51.100.${10 * i}`,
      wanDev: 'wan0',
      bridge: 'brvm',
      gatewayIp: '10.1.1.1',
      gatewayMac: '02:00:0a:01:01:01',
      tunnelDev: 'vxc',
      underlayDev: 'lpu0',
      underlayIp: `203.0.113.${10 * i}`,
      lightpathIp: `192.0.2.${i}`,
    });
  }
  const tunnelSite = cfg.tunnelSite === undefined ? sites[0]!.name : cfg.tunnelSite;
  if (tunnelSite !== null && !sites.some((s) => s.name === tunnelSite)) throw labError('VMTC_LAB_NO_SUCH_SITE', { site: tunnelSite });
  return {
    prefix,
    createdAt: now.toISOString(),
    stateDir: cfg.stateDir ?? LAB_DEFAULTS.stateDir,
    wan: { ns: `${prefix}-wan`, publicBridge: 'br0', publicIp: '198.51.100.1', underlayBridge: 'brlp', underlayIp: '203.0.113.1' },
    client: { ns: `${prefix}-client`, wanDev: 'wan0', publicIp: '198.51.100.100', tunnelDev: 'vx0', ip: '10.1.1.100' },
    sites,
    vm: { ip: '10.1.1.2', prefixLen: 24, gateway: '10.1.1.1', mac: '52:54:00:0a:01:02' },
    // The WAN veths carry jumbo frames so the tunnel's inner MTU can stay 1500 (the VM's).
    tunnel: { vni: 100, port: 4789, mtu: 1500 },
    lightpath: { underlayMtu: 9000, mtu: 8000, oneWayMs: rttMs / 2, rateMbps, queueMs, loss, ...(cfg.delayLineImpl ? { delayLineImpl: cfg.delayLineImpl } : {}) },
    tcpMaxBytes: cfg.tcpMaxBytes ?? LAB_DEFAULTS.tcpMaxBytes,
    tcpNotsentLowatBytes: cfg.tcpNotsentLowatBytes ?? LAB_DEFAULTS.tcpNotsentLowatBytes,
    tunnelSite,
  };
}

export function siteOf(lab: Lab, site: string): LabSite {
  const s = lab.sites.find((x) => x.name === site || x.ns === site);
  if (!s) throw labError('VMTC_LAB_NO_SUCH_SITE', { site, prefix: lab.prefix });
  return s;
}

/** A site's node settings for the lab's lightpath driver (the type and its validation live in
 *  lab/lightpath-driver.ts). */
export function lightpathNodeSettings(lab: Lab, site: LabSite): LabNodeSettings {
  return {
    namespace: site.ns,
    underlayIp: site.underlayIp,
    overlayIp: site.lightpathIp,
    wanNamespace: lab.wan.ns,
    relayIp: lab.wan.underlayIp,
    underlayMtu: lab.lightpath.underlayMtu,
    mtu: lab.lightpath.mtu,
    oneWayMs: lab.lightpath.oneWayMs,
    rateMbps: lab.lightpath.rateMbps,
    queueMs: lab.lightpath.queueMs,
    loss: lab.lightpath.loss,
    ...(lab.lightpath.delayLineImpl ? { delayLineImpl: lab.lightpath.delayLineImpl } : {}),
  };
}

/** The broker's topology file format (src/broker/topology.ts; docs/broker.md). */
export interface BrokerTopologyFile {
  domain: string;
  description: string;
  nodes: { id: string; description: string; driver: Record<string, unknown> }[];
  links: { id: string; a: string; z: string; capacityMbps: number; latencyMs: number; description: string }[];
}

/**
 * A broker topology for this lab: one node per site whose `driver` settings are what the lab's
 * lightpath driver reads, the WAN as a node, and a link from every site to it with the lightpath's line
 * rate as capacity and half its RTT split over the two hops. A path siteA → wan → siteB has
 * ends siteA and siteB, which is all the driver uses.
 */
export function brokerTopologyFor(lab: Lab, domain = `lab-${lab.prefix}`): BrokerTopologyFile {
  return {
    domain,
    description: `vmtc lab ${lab.prefix}: ${lab.sites.length} sites, ${lab.lightpath.oneWayMs * 2} ms RTT, ${lab.lightpath.rateMbps} Mbit/s`,
    nodes: [
      ...lab.sites.map((s) => ({ id: s.name, description: `site ${s.name} (namespace ${s.ns})`, driver: lightpathNodeSettings(lab, s) as unknown as Record<string, unknown> })),
      { id: 'wan', description: `the WAN (namespace ${lab.wan.ns}), where delay lines run`, driver: { namespace: lab.wan.ns } },
    ],
    links: lab.sites.map((s) => ({
      id: `${s.name}-wan`,
      a: s.name,
      z: 'wan',
      capacityMbps: lab.lightpath.rateMbps,
      latencyMs: lab.lightpath.oneWayMs / 2,
      description: `${s.name} to the WAN (half of the one-way delay)`,
    })),
  };
}
