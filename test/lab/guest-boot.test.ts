// The lab guest boots under QEMU TCG through the driver, inside a namespace of its own with the
// paper's VM network (bridge with gateway 10.1.1.1, VM 10.1.1.2): it prints its ready line,
// answers ping, echoes over TCP and UDP, writes its serial heartbeat, and runs its clock probe.
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QemuDriver } from '../../agents/host/qemu/driver.ts';
import { buildGuestImage, guestAppend, type GuestImage } from '../../lab/guest/build.ts';
import { exec, guestSpec, makeSiteNetns, readSerial, shortId, testLogger, waitForLine } from './qemu-helpers.ts';

describe('lab guest under the QEMU driver', () => {
  let img: GuestImage;
  let tmp: string;
  let site: { ns: string; remove(): Promise<void> } | undefined;
  let driver: QemuDriver | undefined;
  let pid: number | undefined;
  const vmId = `g-${shortId()}`;

  beforeAll(async () => {
    img = await buildGuestImage();
    tmp = await mkdtemp(join(tmpdir(), 'vmtc-qb-'));
    site = await makeSiteNetns();
    driver = new QemuDriver({ dataDir: tmp, logger: testLogger(), netns: site.ns });
  });

  afterAll(async () => {
    if (driver) {
      await driver.destroy(vmId).catch(() => undefined);
      await driver.close();
    }
    if (pid) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    await site?.remove();
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  it('builds once: a second build returns the cached image', async () => {
    const again = await buildGuestImage();
    expect(again).toEqual(img);
    expect((await readFile(img.initrd)).length).toBeGreaterThan(100_000);
  });

  it('boots on a tap in the namespace and serves the probes', async () => {
    const d = driver!;
    const ns = site!.ns;
    const append = guestAppend({ heartbeatMs: 10, clockGapMs: 50 });
    const spec = guestSpec(vmId, img.kernel, img.initrd, append, { nics: [{ mac: '52:54:00:0a:01:02', bridge: 'br0' }] });
    const t0 = Date.now();
    const info = await d.start(spec);
    pid = await d.pid(vmId);
    expect(info.state).toBe('running');
    const paths = await d.paths(vmId);
    const ready = await waitForLine(paths.console, /VMTC-GUEST-READY ip=(\S+) mac=(\S+)/, 60_000);
    const bootMs = Date.now() - t0;
    expect(ready[1]).toBe('10.1.1.2/24');
    expect(ready[2]).toBe('52:54:00:0a:01:02');

    // The tap is on the namespace's bridge.
    const { stdout: links } = await exec('ip', ['-n', ns, '-o', 'link', 'show', 'master', 'br0']);
    expect(links).toMatch(/vt[0-9a-f]{10}0/);

    const { stdout: ping } = await exec('ip', ['netns', 'exec', ns, 'ping', '-c', '3', '-i', '0.2', '-W', '2', '10.1.1.2']);
    expect(ping).toMatch(/3 received/);

    const { stdout: tcp } = await exec('sh', ['-c', `echo vmtc-tcp-hello | ip netns exec ${ns} busybox nc -w 2 10.1.1.2 7`]);
    expect(tcp).toContain('vmtc-tcp-hello');
    // A UDP round trip from inside the namespace (node's dgram; busybox nc has no UDP mode here).
    const udpClient = `const s=require('dgram').createSocket('udp4');s.on('message',m=>{process.stdout.write(String(m));process.exit(0)});` +
      `const send=()=>s.send('vmtc-udp-hello',7,'10.1.1.2');send();setInterval(send,200);setTimeout(()=>process.exit(1),3000)`;
    const { stdout: udp } = await exec('ip', ['netns', 'exec', ns, process.execPath, '-e', udpClient]);
    expect(udp).toContain('vmtc-udp-hello');

    const hb = await readSerial(paths.serial[0]!, 500);
    const seqs = [...hb.matchAll(/hb (\d+)\n/g)].map((m) => Number(m[1]));
    expect(seqs.length).toBeGreaterThan(5);
    for (let i = 1; i < seqs.length; i++) expect(seqs[i]).toBe(seqs[i - 1]! + 1);

    await waitForLine(paths.console, /VMTC-CLOCK start gap_ms=50/, 5_000);
    console.log(`[numbers] boot-to-ready ${bootMs} ms, heartbeat lines in 500 ms: ${seqs.length}`);

    const facts = await d.facts();
    expect(facts.hypervisor.type).toBe('qemu');
    expect(facts.hypervisor.version).toMatch(/^\d+\.\d+/);
    expect(facts.cpu.model).toBe('qemu64');
    expect(facts.cpu.features).toContain('lm');
    expect(facts.memoryMb).toBeGreaterThan(0);
  });

  it('stop powers the VM off and destroy removes its tap and files', async () => {
    const d = driver!;
    await d.stop(vmId);
    expect((await d.describe(vmId)).state).toBe('stopped');
    const paths = await d.paths(vmId);
    await d.destroy(vmId);
    pid = undefined;
    await expect(d.describe(vmId)).rejects.toMatchObject({ code: 'VMTC_QEMU_VM_NOT_FOUND' });
    const { stdout: links } = await exec('ip', ['-n', site!.ns, '-o', 'link', 'show', 'master', 'br0']);
    expect(links).not.toMatch(/vt[0-9a-f]{10}0/);
    await expect(readFile(join(paths.dir, 'vm.json'))).rejects.toThrow();
  });
});
