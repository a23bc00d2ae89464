// The Linux tunnel driver: the client tunnel is a vxlan device with `nolearning` whose
// destinations are all-zero FDB entries, one per site (docs/design.md#lab-facts, "Bicast needs
// the all-zero FDB entry"; make-before-break: a unicast FDB entry keeps only one destination and
// `bridge fdb append` on it is silently ignored; only the all-zero default entry holds several,
// and nolearning keeps replies from rewriting them).
//
//   add(site)    = bridge fdb append 00:00:00:00:00:00 dev DEV dst IP
//   remove(site) = bridge fdb del    00:00:00:00:00:00 dev DEV dst IP
//
// run inside the client namespace with `ip netns exec NS` when one is configured. Every command
// is an argv (src/common/proc.ts; never a shell string). Calls are serialised: a check-then-change
// must not interleave with another.
import { isIP } from 'node:net';
import { commonError } from '../../src/common/errors.ts';
import { run } from '../../src/common/proc.ts';
import type { Logger } from '../../src/common/log.ts';
import { silentLogger } from '../../src/common/log.ts';
import { tunnelError } from '../../src/common/tunnel-protocol.ts';
import type { RemoveOptions, TunnelDriver } from './driver.ts';

export const ZERO_MAC = '00:00:00:00:00:00';

export interface VxlanTunnelDriverOptions {
  /** Network namespace holding the device (the lab's client namespace); absent: the current one. */
  netns?: string;
  /** The client's vxlan device. */
  device: string;
  /** Site name → the site's underlay (public) address the tunnel sends to. */
  sites: Record<string, string>;
  logger?: Logger;
  /** Timeout of each iproute2 command, ms. Default 10 000. */
  commandTimeoutMs?: number;
}

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/;
const DEV_RE = /^[A-Za-z0-9_.-]{1,15}$/;

export class VxlanTunnelDriver implements TunnelDriver {
  readonly type = 'vxlan';
  private readonly byIp = new Map<string, string>();
  private readonly log: Logger;
  private chain: Promise<unknown> = Promise.resolve();

  private constructor(private readonly opts: VxlanTunnelDriverOptions) {
    for (const [site, ip] of Object.entries(opts.sites)) this.byIp.set(ip, site);
    this.log = (opts.logger ?? silentLogger()).child({ mod: 'vxlan-driver', netns: opts.netns, device: opts.device });
  }

  /** Check the configuration and that the device exists, is vxlan and does not learn. */
  static async open(opts: VxlanTunnelDriverOptions): Promise<VxlanTunnelDriver> {
    validate(opts);
    const d = new VxlanTunnelDriver(opts);
    await d.checkDevice();
    return d;
  }

  knows(site: string): boolean {
    return Object.hasOwn(this.opts.sites, site);
  }

  knownSites(): string[] {
    return Object.keys(this.opts.sites);
  }

  sites(): Promise<string[]> {
    return this.serial(() => this.read());
  }

  add(site: string): Promise<void> {
    const ip = this.ipOf(site);
    return this.serial(async () => {
      if ((await this.destinations()).includes(ip)) return;
      await this.bridge(['fdb', 'append', ZERO_MAC, 'dev', this.opts.device, 'dst', ip]);
      this.log.info({ site, ip }, 'tunnel now also sends to site');
    });
  }

  remove(site: string, o: RemoveOptions = {}): Promise<void> {
    const ip = this.ipOf(site);
    return this.serial(async () => {
      const dsts = await this.destinations();
      if (!dsts.includes(ip)) return;
      if (dsts.length === 1 && !o.force) throw tunnelError('VMTC_TUNNEL_LAST_SITE', { site, sites: await this.read() });
      await this.bridge(['fdb', 'del', ZERO_MAC, 'dev', this.opts.device, 'dst', ip]);
      this.log.info({ site, ip, forced: Boolean(o.force) }, 'tunnel no longer sends to site');
    });
  }

  async close(): Promise<void> {
    await this.chain.catch(() => undefined);
  }

  // ---- internals ---------------------------------------------------------------------------

  private ipOf(site: string): string {
    if (typeof site !== 'string' || !Object.hasOwn(this.opts.sites, site)) throw tunnelError('VMTC_TUNNEL_UNKNOWN_SITE', { site, known: this.knownSites() });
    return this.opts.sites[site]!;
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.chain.then(fn, fn);
    this.chain = p.catch(() => undefined);
    return p;
  }

  private async read(): Promise<string[]> {
    return (await this.destinations()).map((ip) => this.byIp.get(ip) ?? ip);
  }

  /** Underlay addresses of the all-zero FDB entries, in FDB order. */
  private async destinations(): Promise<string[]> {
    const out = await this.bridge(['-j', 'fdb', 'show', 'dev', this.opts.device]);
    let entries: { mac?: string; dst?: string }[];
    try {
      entries = out.trim() ? (JSON.parse(out) as { mac?: string; dst?: string }[]) : [];
    } catch (e) {
      throw tunnelError('VMTC_TUNNEL_COMMAND_FAILED', { op: 'fdb show', reason: 'output is not JSON' }, { cause: e });
    }
    const dsts: string[] = [];
    for (const e of entries) if (e.mac === ZERO_MAC && e.dst && !dsts.includes(e.dst)) dsts.push(e.dst);
    return dsts;
  }

  private async checkDevice(): Promise<void> {
    const out = await this.exec(['ip', '-d', '-j', 'link', 'show', 'dev', this.opts.device]).catch((e) => {
      throw commonError('VMTC_CONFIG_INVALID', { field: 'device', device: this.opts.device, netns: this.opts.netns ?? null, reason: (e as { details?: { stderr?: string } }).details?.stderr ?? String(e) }, { message: 'the tunnel device does not exist', cause: e });
    });
    const link = (JSON.parse(out) as { linkinfo?: { info_kind?: string; info_data?: { learning?: boolean } } }[])[0];
    if (link?.linkinfo?.info_kind !== 'vxlan') throw commonError('VMTC_CONFIG_INVALID', { field: 'device', device: this.opts.device, kind: link?.linkinfo?.info_kind ?? null }, { message: 'the tunnel device is not a vxlan device' });
    // With learning on, a reply from one site would pin the VM's MAC to that site and the
    // all-zero entries (both sites) would no longer be used for it: bicast would silently fail.
    if (link.linkinfo.info_data?.learning !== false) throw commonError('VMTC_CONFIG_INVALID', { field: 'device', device: this.opts.device, learning: link.linkinfo.info_data?.learning ?? null }, { message: 'the tunnel device must be created with nolearning' });
  }

  private bridge(args: string[]): Promise<string> {
    return this.exec(['bridge', ...args]);
  }

  private async exec(argv: string[]): Promise<string> {
    const full = this.opts.netns ? ['ip', 'netns', 'exec', this.opts.netns, ...argv] : argv;
    try {
      return (await run(full, { timeoutMs: this.opts.commandTimeoutMs ?? 10_000, maxBuffer: 4 * 1024 * 1024 })).stdout;
    } catch (e) {
      const stderr = String((e as { details?: { stderr?: unknown } }).details?.stderr ?? '').slice(0, 500);
      throw tunnelError('VMTC_TUNNEL_COMMAND_FAILED', { argv: full, stderr }, { message: (e as Error).message, cause: e });
    }
  }
}

function validate(o: VxlanTunnelDriverOptions): void {
  const bad = (field: string, value: unknown, message: string) => commonError('VMTC_CONFIG_INVALID', { field, value }, { message });
  if (o.netns !== undefined && !NAME_RE.test(o.netns)) throw bad('netns', o.netns, 'the namespace name is not valid');
  if (typeof o.device !== 'string' || !DEV_RE.test(o.device)) throw bad('device', o.device, 'the device name is 1-15 letters, digits, dots, dashes or underscores');
  if (!o.sites || typeof o.sites !== 'object') throw bad('site', o.sites, 'at least one site NAME=IP is needed');
  const entries = Object.entries(o.sites);
  if (entries.length === 0) throw bad('site', o.sites, 'at least one site NAME=IP is needed');
  const seen = new Map<string, string>();
  for (const [name, ip] of entries) {
    if (!NAME_RE.test(name)) throw bad('site', name, 'a site name is 1-63 letters, digits, dots, dashes or underscores');
    if (typeof ip !== 'string' || isIP(ip) === 0) throw bad('site', `${name}=${String(ip)}`, 'the site address is not an IP address');
    // Two names on one address would make sites() and remove() ambiguous.
    if (seen.has(ip)) throw bad('site', `${name}=${ip}`, `the address is already the address of ${seen.get(ip)!}`);
    seen.set(ip, name);
  }
}
