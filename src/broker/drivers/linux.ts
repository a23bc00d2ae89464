// The Linux network element driver (issue 3/4): makes a lightpath real in the lab.
//
// A lightpath between the two end nodes of a path is
//   - a vxlan device `lp<hash>` in each end's namespace (VNI and name derived from the
//     connection id), whose UDP underlay goes to a delay line in the WAN namespace rather than
//     to the other end directly: the delay line holds each datagram for the one-way delay, paces
//     it to the line rate and bounds the queue (LAB-NOTES: the kernel here has no netem);
//   - a point-to-point overlay address on it (`<overlayIp> peer <other end's overlayIp>`), so
//     QEMU at the destination can listen on its 192.0.2.x and the source reach it;
//   - tx checksum offload off on the vxlan devices (LAB-NOTES: otherwise inner TCP hangs while
//     ping works);
//   - an htb rate limit equal to the reserved bandwidth on each end's device.
// Node settings (from the topology file; lab/topology.ts `linuxNodeSettings`, docs/lab.md):
//   namespace, underlayIp, overlayIp, wanNamespace, relayIp, and optionally underlayMtu, mtu,
//   oneWayMs, rateMbps, queueMs, loss (the delay line's parameters; taken from the first end),
//   delayLineImpl ('node' | 'c': which delay line program; absent: env VMTC_DELAY_LINE, else c).
// Each provisioned connection is recorded in `<stateDir>/lightpaths/<hash>.json` before anything
// is created, so release works from another process and `lab down` finds leftovers.
import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile, rm, writeFile, rename } from 'node:fs/promises';
import { join } from 'node:path';
import type { NetworkElementDriver, ProvisionedSegment, SegmentRequest } from '../driver.ts';
import type { Logger } from '../../common/log.ts';
import { silentLogger } from '../../common/log.ts';
import { VmtcError } from '../../common/errors.ts';
import { labError } from '../../../lab/errors.ts';
import { run, tryRun, linkExists } from '../../../lab/exec.ts';
import { startDelayLine, stopDelayLine, requestDelayLineReport, isOurDelayLine, type DelayLineHandle, type DelayLineImpl } from '../../../lab/delay-line-process.ts';
import { DELAY_LINE_DEFAULTS, type DelayLineReport } from '../../../lab/delay-line.ts';

export interface LinuxDriverOptions {
  /** Where lightpath records and delay-line stats live. Default /run/vmtc-lab. */
  stateDir?: string;
  log?: Logger;
}

/** The line of a lightpath: MTUs and the delay line's parameters (taken from the first end). */
export interface LinuxLineSettings {
  /** Underlay (veth) MTU and the lightpath vxlan MTU: jumbo inside (LAB-NOTES). */
  underlayMtu: number;
  mtu: number;
  oneWayMs: number;
  rateMbps: number;
  queueMs: number;
  loss: number;
  /** Which delay line program relays (absent: env VMTC_DELAY_LINE, else 'c'). */
  delayLineImpl?: DelayLineImpl;
}

/**
 * A node's `driver` settings in the topology file, validated by parseEnd (lab/topology.ts
 * `linuxNodeSettings` writes them for the lab): the end's namespace, underlay and overlay
 * addresses, and where the delay line runs with which parameters.
 */
export interface LinuxNodeSettings extends LinuxLineSettings {
  namespace: string;
  underlayIp: string;
  overlayIp: string;
  wanNamespace: string;
  relayIp: string;
}

interface EndSettings extends LinuxNodeSettings {
  node: string;
}

/** What is recorded for one provisioned connection. */
export interface LightpathRecord {
  connectionId: string;
  hash: string;
  dev: string;
  vni: number;
  bandwidthMbps: number;
  ends: { node: string; namespace: string; underlayIp: string; overlayIp: string }[];
  wanNamespace: string;
  relayIp: string;
  delayLine: DelayLineHandle | null;
  createdAt: string;
}

const IPV4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;
const NS_NAME = /^[A-Za-z0-9_.-]{1,64}$/;

function parseEnd(node: string, s: Record<string, unknown> | undefined): EndSettings {
  const bad = (field: string) => labError('VMTC_LIGHTPATH_BAD_SETTINGS', { node, field });
  if (!s) throw bad('(node has no settings)');
  const str = (k: string, re: RegExp) => {
    const v = s[k];
    if (typeof v !== 'string' || !re.test(v)) throw bad(k);
    return v;
  };
  const n = (k: string, def: number, ok: (x: number) => boolean) => {
    const v = s[k] ?? def;
    if (typeof v !== 'number' || !Number.isFinite(v) || !ok(v)) throw bad(k);
    return v;
  };
  return {
    node,
    namespace: str('namespace', NS_NAME),
    underlayIp: str('underlayIp', IPV4),
    overlayIp: str('overlayIp', IPV4),
    wanNamespace: str('wanNamespace', NS_NAME),
    relayIp: str('relayIp', IPV4),
    underlayMtu: n('underlayMtu', 9000, (x) => x >= 1280 && x <= 65535),
    mtu: n('mtu', 8000, (x) => x >= 576 && x <= 65485),
    oneWayMs: n('oneWayMs', DELAY_LINE_DEFAULTS.oneWayMs, (x) => x >= 0),
    rateMbps: n('rateMbps', DELAY_LINE_DEFAULTS.rateMbps, (x) => x > 0),
    queueMs: n('queueMs', DELAY_LINE_DEFAULTS.queueMs, (x) => x >= 0),
    loss: n('loss', 0, (x) => x >= 0 && x < 1),
    ...(s.delayLineImpl === undefined ? {} : { delayLineImpl: impl(s.delayLineImpl) }),
  };
  function impl(v: unknown): DelayLineImpl {
    if (v !== 'node' && v !== 'c') throw bad('delayLineImpl');
    return v;
  }
}

export function lightpathHash(connectionId: string): string {
  return createHash('sha256').update(connectionId).digest('hex').slice(0, 12);
}

export class LinuxLightpathDriver implements NetworkElementDriver {
  readonly name = 'linux';
  private readonly dir: string;
  private readonly log: Logger;
  /** Serialises operations on one connection id (provision racing release). */
  private readonly busy = new Map<string, Promise<unknown>>();

  constructor(opts: LinuxDriverOptions = {}) {
    this.dir = join(opts.stateDir ?? '/run/vmtc-lab', 'lightpaths');
    this.log = (opts.log ?? silentLogger()).child({ driver: 'linux' });
  }

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

  private async readRecord(connectionId: string): Promise<LightpathRecord | null> {
    try {
      return JSON.parse(await readFile(this.recordPath(lightpathHash(connectionId)), 'utf8')) as LightpathRecord;
    } catch {
      return null;
    }
  }

  private async writeRecord(r: LightpathRecord): Promise<void> {
    await mkdir(this.dir, { recursive: true });
    const p = this.recordPath(r.hash);
    await writeFile(p + '.tmp', JSON.stringify(r, null, 2));
    await rename(p + '.tmp', p);
  }

  /** Every recorded lightpath (any process's). */
  async records(): Promise<LightpathRecord[]> {
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch {
      return [];
    }
    const out: LightpathRecord[] = [];
    for (const f of names.filter((x) => x.endsWith('.json'))) {
      try {
        out.push(JSON.parse(await readFile(join(this.dir, f), 'utf8')) as LightpathRecord);
      } catch { /* torn or foreign file */ }
    }
    return out;
  }

  provision(req: SegmentRequest): Promise<ProvisionedSegment> {
    return this.serial(req.connectionId, () => this.doProvision(req));
  }

  private details(r: LightpathRecord): ProvisionedSegment {
    return {
      connectionId: r.connectionId,
      details: {
        device: r.dev,
        vni: r.vni,
        bandwidthMbps: r.bandwidthMbps,
        ends: r.ends,
        relay: r.delayLine ? { namespace: r.wanNamespace, ip: r.relayIp, port: r.delayLine.port, pid: r.delayLine.pid, statsFile: r.delayLine.statsFile } : null,
      },
    };
  }

  private async intact(r: LightpathRecord): Promise<boolean> {
    for (const e of r.ends) if (!(await linkExists(e.namespace, r.dev))) return false;
    return r.delayLine !== null && isOurDelayLine(r.delayLine.pid, r.delayLine.tag);
  }

  private async doProvision(req: SegmentRequest): Promise<ProvisionedSegment> {
    const { connectionId, path } = req;
    if (path.length < 2 || path[0] === path[path.length - 1]) {
      throw labError('VMTC_LIGHTPATH_BAD_SETTINGS', { connectionId, field: 'path', path }, { message: 'a lightpath needs two distinct end nodes' });
    }
    if (!(req.bandwidthMbps > 0)) throw labError('VMTC_LIGHTPATH_BAD_SETTINGS', { connectionId, field: 'bandwidthMbps' });
    const a = parseEnd(path[0]!, req.nodes[path[0]!]);
    const b = parseEnd(path[path.length - 1]!, req.nodes[path[path.length - 1]!]);
    if (a.wanNamespace !== b.wanNamespace || a.relayIp !== b.relayIp) {
      throw labError('VMTC_LIGHTPATH_BAD_SETTINGS', { connectionId, field: 'wanNamespace' }, { message: 'both ends must name the same WAN namespace and relay address' });
    }

    const existing = await this.readRecord(connectionId);
    if (existing) {
      if (existing.bandwidthMbps === req.bandwidthMbps && (await this.intact(existing))) return this.details(existing);
      // Same id but damaged (or another bandwidth): rebuild from scratch.
      await this.teardown(existing);
    }
    // One overlay pair per two namespaces: two lightpaths joining the same sites would both
    // claim the same point-to-point route.
    for (const r of await this.records()) {
      const ns = new Set(r.ends.map((e) => e.namespace));
      if (!(ns.has(a.namespace) && ns.has(b.namespace))) continue;
      // A record whose devices or relay are gone is debris of a crash or of a lab removed
      // under it: clear it rather than refuse forever.
      if (!(await this.intact(r))) {
        this.log.warn({ connectionId: r.connectionId }, 'removing a stale lightpath record');
        await this.teardown(r);
        continue;
      }
      throw labError('VMTC_LIGHTPATH_CONFLICT', { connectionId, existing: r.connectionId, ends: [a.node, b.node] });
    }

    const hash = lightpathHash(connectionId);
    const rec: LightpathRecord = {
      connectionId,
      hash,
      dev: `lp${hash.slice(0, 8)}`,
      // 24-bit VNI, away from the client tunnel's (100).
      vni: 1000 + (parseInt(hash.slice(0, 6), 16) % 16_000_000),
      bandwidthMbps: req.bandwidthMbps,
      ends: [a, b].map((e) => ({ node: e.node, namespace: e.namespace, underlayIp: e.underlayIp, overlayIp: e.overlayIp })),
      wanNamespace: a.wanNamespace,
      relayIp: a.relayIp,
      delayLine: null,
      createdAt: new Date().toISOString(),
    };
    const log = this.log.child({ connectionId, dev: rec.dev });
    // Recorded before anything exists, so a crash at any point leaves something to clean.
    await this.writeRecord(rec);
    try {
      rec.delayLine = await startDelayLine({
        ns: a.wanNamespace,
        listenHost: a.relayIp,
        a: a.underlayIp,
        b: b.underlayIp,
        oneWayMs: a.oneWayMs,
        rateMbps: a.rateMbps,
        queueMs: a.queueMs,
        loss: a.loss,
        ...(a.delayLineImpl ? { impl: a.delayLineImpl } : {}),
        tag: `vmtc-dl:${hash}`,
        statsFile: join(this.dir, `${a.wanNamespace}.${hash}.stats.jsonl`),
        errFile: join(this.dir, `${a.wanNamespace}.${hash}.err`),
      });
      await this.writeRecord(rec);
      for (const [me, peer] of [[a, b], [b, a]] as const) await this.makeEnd(rec, me, peer);
    } catch (e) {
      log.warn({ err: e }, 'lightpath provision failed; removing what was made');
      await this.teardown(rec);
      if (e instanceof VmtcError && e.code !== 'VMTC_LAB_COMMAND_FAILED') throw e;
      throw labError('VMTC_LIGHTPATH_PROVISION_FAILED', { connectionId, reason: (e as Error).message.slice(0, 500) }, { cause: e });
    }
    log.info({ vni: rec.vni, port: rec.delayLine?.port, ends: rec.ends.map((x) => x.node), bandwidthMbps: rec.bandwidthMbps }, 'lightpath up');
    return this.details(rec);
  }

  private async makeEnd(rec: LightpathRecord, me: EndSettings, peer: EndSettings): Promise<void> {
    const ns = me.namespace;
    const dev = rec.dev;
    const ip = (...args: string[]) => run(['ip', '-n', ns, ...args]);
    await ip('link', 'add', dev, 'type', 'vxlan', 'id', String(rec.vni), 'local', me.underlayIp, 'remote', rec.relayIp,
      'dstport', String(rec.delayLine!.port), 'nolearning');
    await ip('link', 'set', 'dev', dev, 'mtu', String(me.mtu), 'alias', `vmtc:${rec.connectionId}`.slice(0, 250));
    // LAB-NOTES: with tx checksum offload on, inner TCP checksums are never filled in over the
    // relay and TCP hangs (ping still works).
    await run(['ip', 'netns', 'exec', ns, 'ethtool', '-K', dev, 'tx', 'off']);
    await ip('addr', 'add', `${me.overlayIp}/32`, 'peer', `${peer.overlayIp}/32`, 'dev', dev);
    // The reserved bandwidth, enforced at the edge as a circuit would be. Jumbo frames need a
    // quantum above the MTU; the leaf queue is bounded (1000 packets) like any port.
    const rate = `${rec.bandwidthMbps}mbit`;
    const burst = Math.max(64 * 1024, Math.ceil((rec.bandwidthMbps * 1e6) / 8 / 1000)); // ≥ 1 ms at rate
    await run(['tc', '-n', ns, 'qdisc', 'replace', 'dev', dev, 'root', 'handle', '1:', 'htb', 'default', '1']);
    await run(['tc', '-n', ns, 'class', 'replace', 'dev', dev, 'parent', '1:', 'classid', '1:1', 'htb',
      'rate', rate, 'ceil', rate, 'burst', String(burst), 'cburst', String(burst), 'quantum', String(Math.max(me.mtu + 100, 60000))]);
    await run(['tc', '-n', ns, 'qdisc', 'replace', 'dev', dev, 'parent', '1:1', 'handle', '10:', 'pfifo', 'limit', '1000']);
    await ip('link', 'set', 'dev', dev, 'up');
    // A reserved circuit need not be discovered by slow start: TCP over it starts with the
    // window the circuit's queue can absorb at once (at the reserved rate, at most the queue
    // bound), on both the sending and the receiving side. Over 198 ms this saves several round
    // trips on every migration (docs/lab.md has the numbers).
    const initWindow = initialWindowPackets(Math.min(rec.bandwidthMbps, me.rateMbps), me.queueMs, me.mtu);
    await ip('route', 'replace', `${peer.overlayIp}/32`, 'dev', dev, 'src', me.overlayIp, 'initcwnd', String(initWindow), 'initrwnd', String(initWindow));
  }

  /** Remove devices, the delay line and the record; tolerant of anything already gone. */
  private async teardown(rec: LightpathRecord): Promise<void> {
    for (const e of rec.ends) await tryRun(['ip', '-n', e.namespace, 'link', 'del', 'dev', rec.dev]);
    if (rec.delayLine) await stopDelayLine(rec.delayLine);
    await rm(this.recordPath(rec.hash), { force: true });
  }

  release(connectionId: string): Promise<void> {
    return this.serial(connectionId, async () => {
      const rec = await this.readRecord(connectionId);
      if (!rec) return;
      await this.teardown(rec);
      this.log.info({ connectionId, dev: rec.dev }, 'lightpath released');
    });
  }

  /** What the delay line of a provisioned connection has delivered so far (null if unknown). */
  async report(connectionId: string): Promise<DelayLineReport | null> {
    const rec = await this.readRecord(connectionId);
    if (!rec?.delayLine) return null;
    return requestDelayLineReport(rec.delayLine);
  }

  async close(): Promise<void> {
    // Provisioned lightpaths outlive the broker process on purpose (NSI: a provisioned circuit
    // stays up until released); their records let a later process release them.
    await Promise.allSettled([...this.busy.values()]);
  }
}

/** Packets of `mtu` that half of `queueMs` at the circuit's rate holds (10..1000; 10 is Linux's
 * default): the first flight of a new connection then fits in the queue with room to spare. */
export function initialWindowPackets(rateMbps: number, queueMs: number, mtu: number): number {
  const bytes = ((rateMbps * 1e6) / 8) * (queueMs / 1000) / 2;
  return Math.max(10, Math.min(1000, Math.floor(bytes / Math.max(mtu, 576))));
}
