// The lab's lightpath: the broker's Linux driver (src/broker/drivers/linux.ts) between two site
// namespaces, with the underlay sent through a user-space delay line in the WAN namespace
// instead of straight to the other end. The delay line holds each datagram for the one-way
// delay, paces it to the line rate and bounds the queue (docs/design.md#lab-facts: the kernel
// here has no netem). Registered with the broker as `lab-lightpath` by the entry point
// (bin/main.ts); lab/net.ts and the lab's tests use it directly.
//
// Node settings (lab/topology.ts `lightpathNodeSettings` writes them; docs/lab.md): namespace,
// underlayIp, overlayIp, wanNamespace, relayIp, and optionally underlayMtu, mtu, oneWayMs,
// rateMbps, queueMs, loss (the delay line's parameters; taken from the first end), delayLineImpl
// ('node' | 'c': which delay line program; absent: env VMTC_DELAY_LINE, else c).
// Records live in `<stateDir>/lightpaths/` (default /run/vmtc-lab), so `lab down` finds them.
import type { DataPlaneStats, ProvisionedSegment } from '../src/broker/driver.ts';
import { driverError } from '../src/broker/drivers/errors.ts';
import {
  IPV4, LINUX_DRIVER_DEFAULTS, LinuxVxlanDriver, NS_NAME, initialWindowPackets, settingsReader,
  type LinuxDriverOptions, type LinuxEnd, type LinuxLightpathRecord, type UnderlayTarget,
} from '../src/broker/drivers/linux.ts';
import { isOurDelayLine, lastDelayLineReport, requestDelayLineReport, startDelayLine, stopDelayLine, type DelayLineHandle, type DelayLineImpl, type DelayLineSpec } from './delay-line-process.ts';
import { DELAY_LINE_DEFAULTS, type DelayLineReport } from './delay-line.ts';

export { lightpathHash, initialWindowPackets } from '../src/broker/drivers/linux.ts';

export const LAB_LIGHTPATH_DRIVER = 'lab-lightpath';
export const LAB_LIGHTPATH_STATE_DIR = '/run/vmtc-lab';

/** The line of a lightpath: MTUs and the delay line's parameters (taken from the first end). */
export interface LabLineSettings {
  /** Underlay (veth) MTU and the lightpath vxlan MTU: jumbo inside (docs/lab.md). */
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
 * A site node's `driver` settings in the broker topology (lab/topology.ts writes them): the
 * end's namespace, underlay and overlay addresses, and where the delay line runs with which
 * parameters.
 */
export interface LabNodeSettings extends LabLineSettings {
  namespace: string;
  underlayIp: string;
  overlayIp: string;
  wanNamespace: string;
  relayIp: string;
}

interface LabEnd extends LinuxEnd, LabLineSettings {
  namespace: string;
  wanNamespace: string;
  relayIp: string;
}

/** What is recorded for one lab lightpath: the Linux driver's record plus its delay line. */
export interface LightpathRecord extends LinuxLightpathRecord {
  ends: { node: string; namespace: string; underlayIp: string; overlayIp: string }[];
  wanNamespace: string;
  relayIp: string;
  delayLine: DelayLineHandle | null;
}

/** The delay line's process operations (lab/delay-line-process.ts); tests may stand in for them. */
export interface DelayLineOps {
  start(spec: DelayLineSpec): Promise<DelayLineHandle>;
  stop(h: DelayLineHandle): Promise<unknown>;
  isOurs(pid: number, tag: string): boolean;
  report(h: DelayLineHandle): Promise<DelayLineReport | null>;
}

const PROCESS_OPS: DelayLineOps = {
  start: (spec) => startDelayLine(spec),
  stop: (h) => stopDelayLine(h),
  isOurs: isOurDelayLine,
  report: (h) => requestDelayLineReport(h),
};

export interface LabLightpathDriverOptions extends LinuxDriverOptions {
  delayLine?: DelayLineOps;
}

export class LabLightpathDriver extends LinuxVxlanDriver<LabEnd, LightpathRecord> {
  // Jumbo frames inside the lab's lightpath (docs/lab.md); the port is unused (underlay()).
  protected override readonly endDefaults = { mtu: 8000, dstport: LINUX_DRIVER_DEFAULTS.dstport };
  private readonly dl: DelayLineOps;

  constructor(opts: LabLightpathDriverOptions = {}) {
    super(opts, { name: LAB_LIGHTPATH_DRIVER, stateDir: LAB_LIGHTPATH_STATE_DIR });
    this.dl = opts.delayLine ?? PROCESS_OPS;
  }

  protected override parseEnd(node: string, s: Record<string, unknown> | undefined): LabEnd {
    const base = super.parseEnd(node, s);
    const r = settingsReader(node, s!);
    if (base.namespace === undefined) throw r.bad('namespace');
    if (base.via) throw r.bad('via'); // the delay line runs on this machine: so must both ends
    const impl = s!.delayLineImpl;
    if (impl !== undefined && impl !== 'node' && impl !== 'c') throw r.bad('delayLineImpl');
    return {
      ...base,
      namespace: base.namespace,
      // The relay breaks the inner checksums an offloading device leaves to the hardware
      // (docs/design.md#lab-facts, "VXLAN transmit checksum offload").
      txChecksumOffload: false,
      wanNamespace: r.str('wanNamespace', NS_NAME),
      relayIp: r.str('relayIp', IPV4),
      underlayMtu: r.num('underlayMtu', 9000, (x) => x >= 1280 && x <= 65535),
      oneWayMs: r.num('oneWayMs', DELAY_LINE_DEFAULTS.oneWayMs, (x) => x >= 0),
      rateMbps: r.num('rateMbps', DELAY_LINE_DEFAULTS.rateMbps, (x) => x > 0),
      queueMs: r.num('queueMs', DELAY_LINE_DEFAULTS.queueMs, (x) => x >= 0),
      loss: r.num('loss', 0, (x) => x >= 0 && x < 1),
      ...(impl === undefined ? {} : { delayLineImpl: impl }),
    };
  }

  protected override checkPair(connectionId: string, a: LabEnd, b: LabEnd): void {
    super.checkPair(connectionId, a, b);
    if (a.wanNamespace !== b.wanNamespace || a.relayIp !== b.relayIp) {
      throw driverError('VMTC_LIGHTPATH_BAD_SETTINGS', { connectionId, field: 'wanNamespace' }, { message: 'both ends must name the same WAN namespace and relay address' });
    }
  }

  protected override newRecord(base: LinuxLightpathRecord, a: LabEnd): LightpathRecord {
    return { ...(base as LightpathRecord), wanNamespace: a.wanNamespace, relayIp: a.relayIp, delayLine: null };
  }

  protected override async startLine(rec: LightpathRecord, a: LabEnd, b: LabEnd): Promise<void> {
    rec.delayLine = await this.dl.start({
      ns: a.wanNamespace,
      listenHost: a.relayIp,
      a: a.underlayIp,
      b: b.underlayIp,
      oneWayMs: a.oneWayMs,
      rateMbps: a.rateMbps,
      queueMs: a.queueMs,
      loss: a.loss,
      ...(a.delayLineImpl ? { impl: a.delayLineImpl } : {}),
      tag: `vmtc-dl:${rec.hash}`,
      statsFile: this.stateFile(`${a.wanNamespace}.${rec.hash}.stats.jsonl`),
      errFile: this.stateFile(`${a.wanNamespace}.${rec.hash}.err`),
    });
    await this.writeRecord(rec);
  }

  /** Both ends send to the delay line, which passes each datagram on to the other end. */
  protected override underlay(rec: LightpathRecord): UnderlayTarget {
    return { remote: rec.relayIp, dstport: rec.delayLine!.port };
  }

  /**
   * A reserved circuit need not be discovered by slow start: TCP over it starts with the window
   * the circuit's queue can absorb at once (at the reserved rate, at most the queue bound), on
   * both the sending and the receiving side. Over 198 ms this saves several round trips on every
   * migration (docs/lab.md has the numbers).
   */
  protected override initialWindow(rec: LightpathRecord, me: LabEnd): number {
    return initialWindowPackets(Math.min(rec.bandwidthMbps, me.rateMbps), me.queueMs, me.mtu);
  }

  protected override async lineIntact(rec: LightpathRecord): Promise<boolean> {
    return rec.delayLine !== null && this.dl.isOurs(rec.delayLine.pid, rec.delayLine.tag);
  }

  protected override async stopLine(rec: LightpathRecord): Promise<void> {
    if (rec.delayLine) await this.dl.stop(rec.delayLine);
  }

  protected override details(r: LightpathRecord): ProvisionedSegment {
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

  /** Each live delay line's last periodic report, per direction (the broker's /metrics). Read
   *  from the stats files; no signal is sent, so a scrape never disturbs the line. */
  async dataPlaneStats(): Promise<DataPlaneStats[]> {
    const out: DataPlaneStats[] = [];
    for (const rec of await this.records()) {
      if (!rec.delayLine || !this.dl.isOurs(rec.delayLine.pid, rec.delayLine.tag)) continue;
      const r = await lastDelayLineReport(rec.delayLine.statsFile);
      if (!r) continue;
      for (const direction of ['ab', 'ba'] as const) {
        const i = r.interval[direction];
        const t = r.total[direction];
        out.push({ connectionId: rec.connectionId, direction, deliveredMbps: i.mbps, queueP50Ms: i.queueP50Ms, queueMaxMs: i.queueMaxMs, packets: t.packets, bytes: t.bytes, drops: t.drops });
      }
    }
    return out;
  }

  /** What the delay line of a provisioned connection has delivered so far (null if unknown). */
  async report(connectionId: string): Promise<DelayLineReport | null> {
    const rec = await this.readRecord(connectionId);
    if (!rec?.delayLine) return null;
    return this.dl.report(rec.delayLine);
  }
}
