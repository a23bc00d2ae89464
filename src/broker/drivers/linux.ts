// The Linux network element driver: makes a circuit real as VXLAN between the two end nodes of a
// path, with the reserved bandwidth enforced at each end.
//
// A circuit between the two end nodes of a path is
//   - a vxlan device `lp<hash>` at each end (VNI and name derived from the connection id) whose
//     UDP underlay goes from the end's underlay address to the other end's (or wherever
//     underlay() says: the lab's driver, lab/lightpath-driver.ts, sends it through a delay line);
//   - a point-to-point overlay address on it (`<overlayIp> peer <other end's overlayIp>`), so a
//     destination hypervisor can listen on its overlay address and the source reach it;
//   - an htb rate limit equal to the reserved bandwidth on each end's device.
// Node settings (from the topology file, docs/broker.md "Drivers"): underlayIp, overlayIp, and
// optionally namespace (the end is a network namespace), via (an argv prefix that runs the
// end's commands on its host, e.g. ["ssh", "-oBatchMode=yes", "root@host-a"]; absent: on the
// broker's machine), mtu, dstport, txChecksumOffload (false: turn it off on the device).
// Each provisioned connection is recorded in `<stateDir>/lightpaths/<hash>.json` before anything
// is created, so release works from another process (the broker restarted) and from tools.
import { mkdir, readdir, readFile, rm, writeFile, rename } from 'node:fs/promises';
import { join } from 'node:path';
import type { NetworkElementDriver, ProvisionedSegment, SegmentRequest } from '../driver.ts';
import type { Logger } from '../../common/log.ts';
import { silentLogger } from '../../common/log.ts';
import { VmtcError } from '../../common/errors.ts';
import { sha256Hex } from '../../common/hash.ts';
import { run as runArgv, type RunResult } from '../../common/proc.ts';
import { driverError } from './errors.ts';

export interface LinuxDriverOptions {
  /** Where lightpath records live (`<stateDir>/lightpaths/`). Default /run/vmtc-broker. */
  stateDir?: string;
  log?: Logger;
  /** Runs one argv (default src/common/proc.ts run); tests inject a recorder. */
  run?: (argv: string[]) => Promise<RunResult>;
}

export const LINUX_DRIVER_DEFAULTS = {
  stateDir: '/run/vmtc-broker',
  /** 1500-byte underlay minus the 50 bytes of VXLAN over IPv4. */
  mtu: 1450,
  /** IANA's VXLAN port. */
  dstport: 4789,
} as const;

/** Where an end's commands run: on its host (via) and in its namespace. */
export interface EndPlace {
  namespace?: string;
  via?: string[];
}

/** One end's validated settings. */
export interface LinuxEnd extends EndPlace {
  node: string;
  underlayIp: string;
  overlayIp: string;
  mtu: number;
  dstport: number;
  txChecksumOffload: boolean;
}

/** What is recorded for one provisioned connection. */
export interface LinuxLightpathRecord {
  connectionId: string;
  hash: string;
  dev: string;
  vni: number;
  bandwidthMbps: number;
  ends: (EndPlace & { node: string; underlayIp: string; overlayIp: string })[];
  createdAt: string;
}

/** Where an end's VXLAN device sends its underlay traffic. */
export interface UnderlayTarget {
  remote: string;
  dstport: number;
}

export const IPV4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;
export const NS_NAME = /^[A-Za-z0-9_.-]{1,64}$/;
// An argument of `via`: no whitespace or shell metacharacters, since ssh hands the remote side
// one string (our own arguments are addresses, names and numbers, all checked).
const VIA_ARG = /^[A-Za-z0-9_.,:=@/+-]{1,200}$/;

/** The key of the one queue provisions and releases wait in (see provision()). */
const ALL_CONNECTIONS = '*';

export function lightpathHash(connectionId: string): string {
  return sha256Hex(connectionId).slice(0, 12);
}

/** Settings reader for one node that throws VMTC_LIGHTPATH_BAD_SETTINGS naming node and field. */
export function settingsReader(node: string, s: Record<string, unknown>) {
  const bad = (field: string) => driverError('VMTC_LIGHTPATH_BAD_SETTINGS', { node, field });
  return {
    bad,
    str(k: string, re: RegExp): string {
      const v = s[k];
      if (typeof v !== 'string' || !re.test(v)) throw bad(k);
      return v;
    },
    optStr(k: string, re: RegExp): string | undefined {
      return s[k] === undefined ? undefined : this.str(k, re);
    },
    num(k: string, def: number, ok: (x: number) => boolean): number {
      const v = s[k] ?? def;
      if (typeof v !== 'number' || !Number.isFinite(v) || !ok(v)) throw bad(k);
      return v;
    },
  };
}

export class LinuxVxlanDriver<E extends LinuxEnd = LinuxEnd, R extends LinuxLightpathRecord = LinuxLightpathRecord> implements NetworkElementDriver {
  readonly name: string;
  protected readonly dir: string;
  protected readonly log: Logger;
  protected readonly run: (argv: string[]) => Promise<RunResult>;
  /** Defaults of the per-node settings (a subclass may change them). */
  protected readonly endDefaults: { mtu: number; dstport: number } = LINUX_DRIVER_DEFAULTS;
  /** Serialises operations on one connection id (provision racing release). */
  private readonly busy = new Map<string, Promise<unknown>>();

  /** `kind` is for a subclass: its driver name and its own default state directory. */
  constructor(opts: LinuxDriverOptions = {}, kind: { name: string; stateDir: string } = { name: 'linux', stateDir: LINUX_DRIVER_DEFAULTS.stateDir }) {
    this.name = kind.name;
    this.dir = join(opts.stateDir ?? kind.stateDir, 'lightpaths');
    this.run = opts.run ?? ((argv) => runArgv(argv));
    this.log = (opts.log ?? silentLogger()).child({ driver: kind.name });
  }

  // ---- extension points (lab/lightpath-driver.ts overrides them) --------------------------------

  /** Validate one end node's settings. */
  protected parseEnd(node: string, s: Record<string, unknown> | undefined): E {
    if (!s) throw driverError('VMTC_LIGHTPATH_BAD_SETTINGS', { node, field: '(node has no settings)' });
    const r = settingsReader(node, s);
    let via: string[] | undefined;
    if (s.via !== undefined) {
      if (!Array.isArray(s.via) || s.via.length === 0 || s.via.length > 16 || !s.via.every((a) => typeof a === 'string' && VIA_ARG.test(a))) throw r.bad('via');
      via = [...(s.via as string[])];
    }
    if (s.txChecksumOffload !== undefined && typeof s.txChecksumOffload !== 'boolean') throw r.bad('txChecksumOffload');
    const namespace = r.optStr('namespace', NS_NAME);
    const end: LinuxEnd = {
      node,
      ...(namespace !== undefined ? { namespace } : {}),
      ...(via ? { via } : {}),
      underlayIp: r.str('underlayIp', IPV4),
      overlayIp: r.str('overlayIp', IPV4),
      mtu: r.num('mtu', this.endDefaults.mtu, (x) => x >= 576 && x <= 65485),
      dstport: r.num('dstport', this.endDefaults.dstport, (x) => Number.isInteger(x) && x > 0 && x <= 65535),
      txChecksumOffload: s.txChecksumOffload !== false,
    };
    return end as E;
  }

  /** Refuse a pair of ends that cannot be joined (both validated already). */
  protected checkPair(connectionId: string, a: E, b: E): void {
    // A vxlan device receives on the port it sends to: both ends must agree on it.
    if (a.dstport !== b.dstport) throw driverError('VMTC_LIGHTPATH_BAD_SETTINGS', { connectionId, field: 'dstport' }, { message: 'both ends must use the same VXLAN port' });
  }

  /** The record of a new connection; a subclass adds what it needs to undo its own part. */
  protected newRecord(base: LinuxLightpathRecord, _a: E, _b: E): R {
    return base as R;
  }

  /** Bring up what the devices need before they exist (the lab starts its delay line here). */
  protected async startLine(_rec: R, _a: E, _b: E): Promise<void> {}

  /** Where `me`'s device sends: straight to the other end. */
  protected underlay(_rec: R, me: E, peer: E): UnderlayTarget {
    return { remote: peer.underlayIp, dstport: me.dstport };
  }

  /** Initial congestion and receive window for the route to the peer (packets); null: Linux's. */
  protected initialWindow(_rec: R, _me: E): number | null {
    return null;
  }

  /** Whether what startLine made is still there. */
  protected async lineIntact(_rec: R): Promise<boolean> {
    return true;
  }

  /** Undo startLine; tolerant of anything already gone. */
  protected async stopLine(_rec: R): Promise<void> {}

  /** What provision answers: facts a caller may need. */
  protected details(r: R): ProvisionedSegment {
    return { connectionId: r.connectionId, details: { device: r.dev, vni: r.vni, bandwidthMbps: r.bandwidthMbps, ends: r.ends } };
  }

  // ---- the contract ----------------------------------------------------------------------------

  // Provisions and releases run one at a time across all connections, not only per connection:
  // a provision reads the other records to find conflicts and debris, and a record written by a
  // provision still building its devices would look like debris (devices missing) and be torn
  // down under it. An evacuation's concurrent moves between the same two sites did exactly that
  // (`tc: Cannot find device`).
  provision(req: SegmentRequest): Promise<ProvisionedSegment> {
    return this.serial(ALL_CONNECTIONS, () => this.doProvision(req));
  }

  release(connectionId: string): Promise<void> {
    return this.serial(ALL_CONNECTIONS, async () => {
      const rec = await this.readRecord(connectionId);
      if (!rec) return;
      await this.teardown(rec);
      this.log.info({ connectionId, dev: rec.dev }, 'lightpath released');
    });
  }

  async close(): Promise<void> {
    // Provisioned circuits outlive the broker process on purpose (NSI: a provisioned circuit
    // stays up until released); their records let a later process release them.
    await Promise.allSettled([...this.busy.values()]);
  }

  /** Every recorded lightpath (any process's). */
  async records(): Promise<R[]> {
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch {
      return [];
    }
    const out: R[] = [];
    for (const f of names.filter((x) => x.endsWith('.json'))) {
      try {
        out.push(JSON.parse(await readFile(join(this.dir, f), 'utf8')) as R);
      } catch { /* torn or foreign file */ }
    }
    return out;
  }

  // ---- internals -------------------------------------------------------------------------------

  private serial<T>(id: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.busy.get(id) ?? Promise.resolve();
    const next = prev.catch(() => undefined).then(fn);
    this.busy.set(id, next);
    void next.finally(() => { if (this.busy.get(id) === next) this.busy.delete(id); }).catch(() => undefined);
    return next;
  }

  private recordPath(hash: string): string {
    return join(this.dir, `${hash}.json`);
  }

  protected async readRecord(connectionId: string): Promise<R | null> {
    try {
      return JSON.parse(await readFile(this.recordPath(lightpathHash(connectionId)), 'utf8')) as R;
    } catch {
      return null;
    }
  }

  protected async writeRecord(r: R): Promise<void> {
    await mkdir(this.dir, { recursive: true });
    const p = this.recordPath(r.hash);
    await writeFile(p + '.tmp', JSON.stringify(r, null, 2));
    await rename(p + '.tmp', p);
  }

  /** A file beside the records (a subclass keeps its processes' output there). */
  protected stateFile(name: string): string {
    return join(this.dir, name);
  }

  /** argv prefixes that run a command at `end`: `ip`/`tc` in its namespace, or anything there. */
  protected ip(end: EndPlace, ...args: string[]): string[] {
    return [...(end.via ?? []), 'ip', ...(end.namespace ? ['-n', end.namespace] : []), ...args];
  }

  protected tc(end: EndPlace, ...args: string[]): string[] {
    return [...(end.via ?? []), 'tc', ...(end.namespace ? ['-n', end.namespace] : []), ...args];
  }

  protected inEnd(end: EndPlace, argv: string[]): string[] {
    return [...(end.via ?? []), ...(end.namespace ? ['ip', 'netns', 'exec', end.namespace] : []), ...argv];
  }

  private async linkExists(end: EndPlace, dev: string): Promise<boolean> {
    return this.run(this.ip(end, 'link', 'show', 'dev', dev)).then(() => true, () => false);
  }

  private async intact(r: R): Promise<boolean> {
    for (const e of r.ends) if (!(await this.linkExists(e, r.dev))) return false;
    return this.lineIntact(r);
  }

  private async doProvision(req: SegmentRequest): Promise<ProvisionedSegment> {
    const { connectionId, path } = req;
    if (path.length < 2 || path[0] === path[path.length - 1]) {
      throw driverError('VMTC_LIGHTPATH_BAD_SETTINGS', { connectionId, field: 'path', path }, { message: 'a lightpath needs two distinct end nodes' });
    }
    if (!(req.bandwidthMbps > 0)) throw driverError('VMTC_LIGHTPATH_BAD_SETTINGS', { connectionId, field: 'bandwidthMbps' });
    const a = this.parseEnd(path[0]!, req.nodes[path[0]!]);
    const b = this.parseEnd(path[path.length - 1]!, req.nodes[path[path.length - 1]!]);
    this.checkPair(connectionId, a, b);

    const existing = await this.readRecord(connectionId);
    if (existing) {
      if (existing.bandwidthMbps === req.bandwidthMbps && (await this.intact(existing))) return this.details(existing);
      // Same id but damaged (or another bandwidth): rebuild from scratch.
      await this.teardown(existing);
    }
    // One overlay pair per two end places: two circuits joining the same two would both claim
    // the same point-to-point route.
    const placeOf = (e: EndPlace) => JSON.stringify([e.via ?? [], e.namespace ?? '']);
    for (const r of await this.records()) {
      const places = new Set(r.ends.map(placeOf));
      if (!(places.has(placeOf(a)) && places.has(placeOf(b)))) continue;
      // A record whose devices (or line) are gone is debris of a crash or of a setup removed
      // under it: clear it rather than refuse forever.
      if (!(await this.intact(r))) {
        this.log.warn({ connectionId: r.connectionId }, 'removing a stale lightpath record');
        await this.teardown(r);
        continue;
      }
      throw driverError('VMTC_LIGHTPATH_CONFLICT', { connectionId, existing: r.connectionId, ends: [a.node, b.node] });
    }

    const hash = lightpathHash(connectionId);
    const end = (e: E) => ({ node: e.node, ...(e.namespace !== undefined ? { namespace: e.namespace } : {}), ...(e.via ? { via: e.via } : {}), underlayIp: e.underlayIp, overlayIp: e.overlayIp });
    const rec = this.newRecord({
      connectionId,
      hash,
      dev: `lp${hash.slice(0, 8)}`,
      // 24-bit VNI, away from small ones a client tunnel may use (the lab's is 100).
      vni: 1000 + (parseInt(hash.slice(0, 6), 16) % 16_000_000),
      bandwidthMbps: req.bandwidthMbps,
      ends: [end(a), end(b)],
      createdAt: new Date().toISOString(),
    }, a, b);
    const log = this.log.child({ connectionId, dev: rec.dev });
    // Recorded before anything exists, so a crash at any point leaves something to clean.
    await this.writeRecord(rec);
    try {
      await this.startLine(rec, a, b);
      for (const [me, peer] of [[a, b], [b, a]] as const) await this.makeEnd(rec, me, peer);
    } catch (e) {
      log.warn({ err: e }, 'lightpath provision failed; removing what was made');
      await this.teardown(rec);
      // Coded failures of our own making pass as they are; a failed command says what failed.
      if (e instanceof VmtcError && !/^VMTC_(LAB_)?COMMAND_FAILED$/.test(e.code)) throw e;
      throw driverError('VMTC_LIGHTPATH_PROVISION_FAILED', { connectionId, reason: (e as Error).message.slice(0, 500) }, { cause: e });
    }
    log.info({ vni: rec.vni, ends: rec.ends.map((x) => x.node), bandwidthMbps: rec.bandwidthMbps }, 'lightpath up');
    return this.details(rec);
  }

  private async makeEnd(rec: R, me: E, peer: E): Promise<void> {
    const dev = rec.dev;
    const { remote, dstport } = this.underlay(rec, me, peer);
    await this.run(this.ip(me, 'link', 'add', dev, 'type', 'vxlan', 'id', String(rec.vni), 'local', me.underlayIp, 'remote', remote,
      'dstport', String(dstport), 'nolearning'));
    const alias = `vmtc:${rec.connectionId}`.replace(/[^A-Za-z0-9_.:-]/g, '_').slice(0, 250);
    await this.run(this.ip(me, 'link', 'set', 'dev', dev, 'mtu', String(me.mtu), 'alias', alias));
    // docs/design.md#lab-facts, "VXLAN transmit checksum offload": where the offload leaves inner
    // TCP checksums unfilled, TCP hangs while ping works; such ends turn it off.
    if (!me.txChecksumOffload) await this.run(this.inEnd(me, ['ethtool', '-K', dev, 'tx', 'off']));
    await this.run(this.ip(me, 'addr', 'add', `${me.overlayIp}/32`, 'peer', `${peer.overlayIp}/32`, 'dev', dev));
    // The reserved bandwidth, enforced at the edge as a circuit would be. Jumbo frames need a
    // quantum above the MTU; the leaf queue is bounded (1000 packets) like any port.
    const rate = `${rec.bandwidthMbps}mbit`;
    const burst = Math.max(64 * 1024, Math.ceil((rec.bandwidthMbps * 1e6) / 8 / 1000)); // ≥ 1 ms at rate
    await this.run(this.tc(me, 'qdisc', 'replace', 'dev', dev, 'root', 'handle', '1:', 'htb', 'default', '1'));
    await this.run(this.tc(me, 'class', 'replace', 'dev', dev, 'parent', '1:', 'classid', '1:1', 'htb',
      'rate', rate, 'ceil', rate, 'burst', String(burst), 'cburst', String(burst), 'quantum', String(Math.max(me.mtu + 100, 60000))));
    await this.run(this.tc(me, 'qdisc', 'replace', 'dev', dev, 'parent', '1:1', 'handle', '10:', 'pfifo', 'limit', '1000'));
    await this.run(this.ip(me, 'link', 'set', 'dev', dev, 'up'));
    const win = this.initialWindow(rec, me);
    await this.run(this.ip(me, 'route', 'replace', `${peer.overlayIp}/32`, 'dev', dev, 'src', me.overlayIp,
      ...(win !== null ? ['initcwnd', String(win), 'initrwnd', String(win)] : [])));
  }

  /** Remove devices, the line and the record; tolerant of anything already gone. */
  protected async teardown(rec: R): Promise<void> {
    for (const e of rec.ends) await this.run(this.ip(e, 'link', 'del', 'dev', rec.dev)).catch(() => undefined);
    await this.stopLine(rec);
    await rm(this.recordPath(rec.hash), { force: true });
  }
}

/** Packets of `mtu` that half of `queueMs` at the circuit's rate holds (10..1000; 10 is Linux's
 * default): the first flight of a new connection then fits in the queue with room to spare. */
export function initialWindowPackets(rateMbps: number, queueMs: number, mtu: number): number {
  const bytes = ((rateMbps * 1e6) / 8) * (queueMs / 1000) / 2;
  return Math.max(10, Math.min(1000, Math.floor(bytes / Math.max(mtu, 576))));
}
