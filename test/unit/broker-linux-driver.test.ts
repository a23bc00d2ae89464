// The broker's Linux driver (src/broker/drivers/linux.ts) and the lab's lightpath driver built
// on it (lab/lightpath-driver.ts), without root: the commands they would run are recorded by an
// injected runner that keeps a model of which devices exist, and the lab's delay line is stood in
// for. What runs against real namespaces is in test/lab/linux-driver-lightpath.test.ts.
import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { SegmentRequest } from '../../src/broker/driver.ts';
import { LinuxVxlanDriver, lightpathHash } from '../../src/broker/drivers/linux.ts';
import { MemoryDoubleDriver } from '../../src/broker/drivers/memory-double.ts';
import { createNetworkDriver, networkDriverNames, registerNetworkDriver } from '../../src/broker/drivers/registry.ts';
import { commonError, VmtcError } from '../../src/common/errors.ts';
import { silentLogger } from '../../src/common/log.ts';
import type { RunResult } from '../../src/common/proc.ts';
import { LabLightpathDriver, type DelayLineOps } from '../../lab/lightpath-driver.ts';
import type { DelayLineHandle, DelayLineSpec } from '../../lab/delay-line-process.ts';
import { labError } from '../../lab/errors.ts';

/** Records every argv; devices made with `link add` exist until `link del` (per place). */
class FakeHost {
  readonly calls: string[] = [];
  readonly links = new Set<string>();
  /** Commands (joined argv) matching this fail. */
  failOn: RegExp | null = null;

  run = async (argv: string[]): Promise<RunResult> => {
    const line = argv.join(' ');
    this.calls.push(line);
    const fail = () => Promise.reject(commonError('VMTC_COMMAND_FAILED', { argv, code: 1, stderr: 'injected' }, { message: `${line}: injected` }));
    if (this.failOn?.test(line)) return fail();
    const i = argv.indexOf('link');
    if (i >= 0) {
      const place = argv.slice(0, i).join(' ');
      const [op, a, b] = argv.slice(i + 1);
      if (op === 'add') this.links.add(`${place}|${a}`);
      if (op === 'del' || op === 'show') {
        const key = `${place}|${b}`;
        if (!this.links.has(key)) return fail();
        if (op === 'del') this.links.delete(key);
      }
    }
    return { stdout: '', stderr: '' };
  };

  reset(): void {
    this.calls.length = 0;
  }
}

const ends = {
  a: { namespace: 'ns-a', underlayIp: '198.51.100.10', overlayIp: '192.0.2.1' },
  b: { via: ['ssh', '-oBatchMode=yes', 'root@host-b'], underlayIp: '198.51.100.20', overlayIp: '192.0.2.2' },
};

function req(connectionId: string, over: Partial<SegmentRequest> = {}): SegmentRequest {
  return { connectionId, path: ['a', 'core', 'b'], nodes: { a: { ...ends.a }, core: {}, b: { ...ends.b } }, bandwidthMbps: 200, ...over };
}

async function refusal(p: Promise<unknown>): Promise<VmtcError> {
  const e = await p.then(() => null, (x: unknown) => x);
  expect(e).toBeInstanceOf(VmtcError);
  return e as VmtcError;
}

let dir: string;
let host: FakeHost;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'vmtc-linux-driver-'));
  host = new FakeHost();
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

describe('Linux VXLAN driver', () => {
  it('joins the two ends straight over their underlay, rate-limited, each end where it lives', async () => {
    const d = new LinuxVxlanDriver({ stateDir: dir, run: host.run });
    const seg = await d.provision(req('c-1'));
    const dev = `lp${lightpathHash('c-1').slice(0, 8)}`;
    expect(seg.details).toMatchObject({ device: dev, bandwidthMbps: 200 });
    const vni = seg.details.vni as number;
    const ssh = 'ssh -oBatchMode=yes root@host-b';
    expect(host.calls).toEqual([
      `ip -n ns-a link add ${dev} type vxlan id ${vni} local 198.51.100.10 remote 198.51.100.20 dstport 4789 nolearning`,
      `ip -n ns-a link set dev ${dev} mtu 1450 alias vmtc:c-1`,
      `ip -n ns-a addr add 192.0.2.1/32 peer 192.0.2.2/32 dev ${dev}`,
      `tc -n ns-a qdisc replace dev ${dev} root handle 1: htb default 1`,
      `tc -n ns-a class replace dev ${dev} parent 1: classid 1:1 htb rate 200mbit ceil 200mbit burst 65536 cburst 65536 quantum 60000`,
      `tc -n ns-a qdisc replace dev ${dev} parent 1:1 handle 10: pfifo limit 1000`,
      `ip -n ns-a link set dev ${dev} up`,
      `ip -n ns-a route replace 192.0.2.2/32 dev ${dev} src 192.0.2.1`,
      `${ssh} ip link add ${dev} type vxlan id ${vni} local 198.51.100.20 remote 198.51.100.10 dstport 4789 nolearning`,
      `${ssh} ip link set dev ${dev} mtu 1450 alias vmtc:c-1`,
      `${ssh} ip addr add 192.0.2.2/32 peer 192.0.2.1/32 dev ${dev}`,
      `${ssh} tc qdisc replace dev ${dev} root handle 1: htb default 1`,
      `${ssh} tc class replace dev ${dev} parent 1: classid 1:1 htb rate 200mbit ceil 200mbit burst 65536 cburst 65536 quantum 60000`,
      `${ssh} tc qdisc replace dev ${dev} parent 1:1 handle 10: pfifo limit 1000`,
      `${ssh} ip link set dev ${dev} up`,
      `${ssh} ip route replace 192.0.2.1/32 dev ${dev} src 192.0.2.2`,
    ]);
    // Idempotent: the same id and bandwidth with both devices present changes nothing.
    host.reset();
    expect(await d.provision(req('c-1'))).toEqual(seg);
    expect(host.calls.filter((c) => !c.includes(' link show '))).toEqual([]);
  });

  it('turns transmit checksum offload off where the settings ask, inside the namespace', async () => {
    const d = new LinuxVxlanDriver({ stateDir: dir, run: host.run });
    await d.provision(req('c-tx', { nodes: { a: { ...ends.a, txChecksumOffload: false, mtu: 8000 }, b: { ...ends.b } } }));
    const dev = `lp${lightpathHash('c-tx').slice(0, 8)}`;
    expect(host.calls).toContain(`ip netns exec ns-a ethtool -K ${dev} tx off`);
    expect(host.calls).toContain(`ip -n ns-a link set dev ${dev} mtu 8000 alias vmtc:c-tx`);
    expect(host.calls.filter((c) => c.includes('ethtool'))).toHaveLength(1);
  });

  it('refuses bad settings naming node and field, and touches nothing', async () => {
    const d = new LinuxVxlanDriver({ stateDir: dir, run: host.run });
    const { overlayIp: _o, ...noOverlay } = ends.b;
    const cases: [Partial<SegmentRequest>, Record<string, unknown>][] = [
      [{ nodes: { a: ends.a, b: noOverlay } }, { node: 'b', field: 'overlayIp' }],
      [{ nodes: { a: { ...ends.a, namespace: 'x; rm -rf /' }, b: ends.b } }, { node: 'a', field: 'namespace' }],
      [{ nodes: { a: ends.a, b: { ...ends.b, via: ['ssh', 'root@b; reboot'] } } }, { node: 'b', field: 'via' }],
      [{ nodes: { a: { ...ends.a, dstport: 8472 }, b: ends.b } }, { field: 'dstport' }],
      [{ nodes: { a: ends.a } }, { node: 'b' }],
      [{ path: ['a', 'core', 'a'] }, { field: 'path' }],
      [{ bandwidthMbps: 0 }, { field: 'bandwidthMbps' }],
    ];
    for (const [over, details] of cases) {
      const e = await refusal(d.provision(req('c-bad', over)));
      expect(e.code).toBe('VMTC_LIGHTPATH_BAD_SETTINGS');
      expect(e.details).toMatchObject(details);
    }
    expect(host.calls).toEqual([]);
    expect(await d.records()).toEqual([]);
  });

  it('leaves nothing behind when the far end cannot be built', async () => {
    const d = new LinuxVxlanDriver({ stateDir: dir, run: host.run });
    host.failOn = /^ssh .* link add /;
    const e = await refusal(d.provision(req('c-half')));
    expect(e.code).toBe('VMTC_LIGHTPATH_PROVISION_FAILED');
    expect(e.details).toMatchObject({ connectionId: 'c-half' });
    expect(String(e.details?.reason)).toContain('injected');
    expect(host.links.size).toBe(0);
    expect(await d.records()).toEqual([]);
  });

  it('refuses a second circuit joining the same two ends, but clears a stale record', async () => {
    const d = new LinuxVxlanDriver({ stateDir: dir, run: host.run });
    await d.provision(req('c-1'));
    const e = await refusal(d.provision(req('c-2', { path: ['b', 'a'] })));
    expect(e.code).toBe('VMTC_LIGHTPATH_CONFLICT');
    expect(e.details).toMatchObject({ existing: 'c-1' });
    // Its devices vanish (a host rebooted): the record is debris, the new circuit goes ahead.
    host.links.clear();
    await d.provision(req('c-2', { path: ['b', 'a'] }));
    expect((await d.records()).map((r) => r.connectionId)).toEqual(['c-2']);
  });

  it('rebuilds on a new bandwidth, and another instance releases from the record', async () => {
    const d = new LinuxVxlanDriver({ stateDir: dir, run: host.run });
    await d.provision(req('c-1'));
    host.reset();
    const seg = await d.provision(req('c-1', { bandwidthMbps: 300 }));
    expect(seg.details.bandwidthMbps).toBe(300);
    expect(host.calls.filter((c) => c.includes(' link del '))).toHaveLength(2);
    expect(host.calls.filter((c) => c.includes('rate 300mbit'))).toHaveLength(2);
    const restarted = new LinuxVxlanDriver({ stateDir: dir, run: host.run });
    await restarted.release('c-1');
    expect(host.links.size).toBe(0);
    expect(await restarted.records()).toEqual([]);
    await restarted.release('c-1'); // already released: not an error
    await restarted.release('never-provisioned');
  });
});

describe("the lab's lightpath driver", () => {
  const lab = {
    a: { namespace: 'p-siteA', underlayIp: '203.0.113.2', overlayIp: '192.0.2.1', wanNamespace: 'p-wan', relayIp: '203.0.113.1', oneWayMs: 99, rateMbps: 1000, queueMs: 20 },
    b: { namespace: 'p-siteB', underlayIp: '203.0.113.3', overlayIp: '192.0.2.2', wanNamespace: 'p-wan', relayIp: '203.0.113.1', oneWayMs: 99, rateMbps: 1000, queueMs: 20 },
  };
  const labReq = (id: string, over: Partial<SegmentRequest> = {}): SegmentRequest =>
    ({ connectionId: id, path: ['siteA', 'wan', 'siteB'], nodes: { siteA: { ...lab.a }, wan: { namespace: 'p-wan' }, siteB: { ...lab.b } }, bandwidthMbps: 500, ...over });

  /** Stands in for lab/delay-line-process.ts: records starts and stops. */
  function fakeDelayLine(fail = false) {
    const started: DelayLineSpec[] = [];
    const stopped: DelayLineHandle[] = [];
    const live = new Set<number>();
    const ops: DelayLineOps = {
      async start(spec) {
        if (fail) throw labError('VMTC_LAB_DELAY_LINE_FAILED', { ns: spec.ns });
        started.push(spec);
        const pid = 40_000 + started.length;
        live.add(pid);
        return { pid, port: 50_000 + started.length, tag: spec.tag, statsFile: spec.statsFile, errFile: spec.errFile };
      },
      async stop(h) { stopped.push(h); live.delete(h.pid); },
      isOurs: (pid) => live.has(pid),
      async report() { return null; },
    };
    return { ops, started, stopped };
  }

  it('sends both ends through the delay line, offload off, with a large first window', async () => {
    const dl = fakeDelayLine();
    const d = new LabLightpathDriver({ stateDir: dir, run: host.run, delayLine: dl.ops });
    expect(d.name).toBe('lab-lightpath');
    const seg = await d.provision(labReq('c-lab'));
    const hash = lightpathHash('c-lab');
    const dev = `lp${hash.slice(0, 8)}`;
    expect(dl.started).toEqual([expect.objectContaining({ ns: 'p-wan', listenHost: '203.0.113.1', a: '203.0.113.2', b: '203.0.113.3', oneWayMs: 99, rateMbps: 1000, queueMs: 20, loss: 0, tag: `vmtc-dl:${hash}` })]);
    expect(dl.started[0]!.statsFile).toBe(join(dir, 'lightpaths', `p-wan.${hash}.stats.jsonl`));
    const vni = seg.details.vni as number;
    for (const [ns, local] of [['p-siteA', '203.0.113.2'], ['p-siteB', '203.0.113.3']]) {
      expect(host.calls).toContain(`ip -n ${ns} link add ${dev} type vxlan id ${vni} local ${local} remote 203.0.113.1 dstport 50001 nolearning`);
      expect(host.calls).toContain(`ip netns exec ${ns} ethtool -K ${dev} tx off`);
      expect(host.calls).toContain(`ip -n ${ns} link set dev ${dev} mtu 8000 alias vmtc:c-lab`);
    }
    // 500 Mbit/s × 10 ms (half the 20 ms queue) / 8000-byte packets = 78 packets.
    expect(host.calls).toContain(`ip -n p-siteA route replace 192.0.2.2/32 dev ${dev} src 192.0.2.1 initcwnd 78 initrwnd 78`);
    expect(seg.details.relay).toMatchObject({ namespace: 'p-wan', ip: '203.0.113.1', port: 50001, pid: 40001 });
    const [rec] = await d.records();
    expect(rec).toMatchObject({ connectionId: 'c-lab', wanNamespace: 'p-wan', relayIp: '203.0.113.1', delayLine: { pid: 40001, port: 50001 } });

    await new LabLightpathDriver({ stateDir: dir, run: host.run, delayLine: dl.ops }).release('c-lab');
    expect(dl.stopped.map((h) => h.pid)).toEqual([40001]);
    expect(host.links.size).toBe(0);
    expect(readdirSync(join(dir, 'lightpaths')).filter((f) => f.endsWith('.json'))).toEqual([]);
  });

  it('needs a namespace and one WAN at both ends; a delay line that does not start leaves nothing', async () => {
    const d = new LabLightpathDriver({ stateDir: dir, run: host.run, delayLine: fakeDelayLine().ops });
    const { namespace: _n, ...noNs } = lab.b;
    let e = await refusal(d.provision(labReq('c-x', { nodes: { siteA: lab.a, siteB: noNs } })));
    expect([e.code, e.details]).toEqual(['VMTC_LIGHTPATH_BAD_SETTINGS', { node: 'siteB', field: 'namespace' }]);
    e = await refusal(d.provision(labReq('c-x', { nodes: { siteA: lab.a, siteB: { ...lab.b, wanNamespace: 'q-wan' } } })));
    expect(e.details).toMatchObject({ field: 'wanNamespace' });
    expect(host.calls).toEqual([]);

    const broken = new LabLightpathDriver({ stateDir: dir, run: host.run, delayLine: fakeDelayLine(true).ops });
    e = await refusal(broken.provision(labReq('c-norelay')));
    expect(e.code).toBe('VMTC_LAB_DELAY_LINE_FAILED');
    expect(await broken.records()).toEqual([]);
    expect(host.links.size).toBe(0);
  });

  it('rebuilds a lightpath whose delay line died', async () => {
    const dl = fakeDelayLine();
    const d = new LabLightpathDriver({ stateDir: dir, run: host.run, delayLine: dl.ops });
    await d.provision(labReq('c-lab'));
    dl.ops.isOurs = () => false; // the relay was killed
    const seg = await d.provision(labReq('c-lab'));
    expect(dl.stopped).toHaveLength(1);
    expect(dl.started).toHaveLength(2);
    expect(seg.details.relay).toMatchObject({ pid: 40002 });
  });
});

describe('network driver registry', () => {
  it('builds the broker\'s own drivers by name and refuses an unknown one, listing the known', async () => {
    expect(networkDriverNames()).toEqual(expect.arrayContaining(['memory', 'linux']));
    expect(await createNetworkDriver('memory', { logger: silentLogger() })).toBeInstanceOf(MemoryDoubleDriver);
    const linux = await createNetworkDriver('linux', { logger: silentLogger() });
    expect(linux).toBeInstanceOf(LinuxVxlanDriver);
    expect(linux.name).toBe('linux');
    const e = await refusal(createNetworkDriver('nope', { logger: silentLogger() }));
    expect(e.code).toBe('VMTC_CONFIG_INVALID');
    expect(e.details).toMatchObject({ field: 'driver', value: 'nope', known: expect.arrayContaining(['memory', 'linux']) });
  });

  it('takes drivers registered from outside', async () => {
    const mine = new MemoryDoubleDriver();
    registerNetworkDriver('test-outside', () => mine);
    expect(networkDriverNames()).toContain('test-outside');
    expect(await createNetworkDriver('test-outside', { logger: silentLogger() })).toBe(mine);
    expect(() => registerNetworkDriver('Bad Name', () => mine)).toThrow(/lower-case/);
  });
});
