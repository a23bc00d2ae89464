// The guest's memory check catches corruption (docs/lab.md, "The guest's memory check"): a lab
// guest with the dirty load runs under QEMU; the host then changes 8 bytes of one of the pages
// the load wrote, through QEMU's gdbstub (a test-only path: `-gdb` is given to this QEMU alone,
// through spec.extra.qemuArgs), in guest-physical memory at the address the guest printed for
// that page. The guest must report the page on its console and on its serial line, and the check
// every lab migration runs (lab/guest/check.ts, lab/guest/verify.ts) must call it
// VMTC_LAB_GUEST_CORRUPTED naming the page. Before the change the same check says ok, verified.
import { mkdtemp } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QemuDriver } from '../../agents/host/qemu/driver.ts';
import { buildGuestImage, guestAppend } from '../../lab/guest/build.ts';
import { awaitGuestVerdict, markConsole, readConsoleSince } from '../../lab/guest/check.ts';
import { guestVerdictError, parseMemoryLine } from '../../lab/guest/verify.ts';
import { SerialWatcher } from '../../lab/turntable/probes/serial.ts';
import { guestSpec, shortId, teardownDrivers, testLogger, waitForLine } from './qemu-helpers.ts';

const DIRTY_MB = 8;
const PERIOD_MS = 300;
/** What the host writes into the page: 8 bytes the pattern never holds there (see vmtc-probe.c). */
const CORRUPTION = Buffer.from('CORRUPT!');
/** Offset of the change within the page: in its body, past the 32-byte header. */
const OFFSET = 2048;

/**
 * A minimal client of GDB's remote serial protocol (`$data#checksum`, acknowledged with `+`),
 * enough to read and write guest memory through QEMU's gdbstub. QEMU stops the guest while a
 * debugger is attached and `D` (detach) lets it run again.
 */
class GdbRemote {
  private buf = '';
  private waiting: ((reply: string) => void) | null = null;
  private constructor(private readonly sock: Socket) {
    sock.setEncoding('latin1');
    sock.on('data', (d: string) => {
      this.buf += d;
      for (;;) {
        this.buf = this.buf.replace(/^\+/, '');
        const m = /^\$([^#]*)#[0-9a-fA-F]{2}/.exec(this.buf);
        if (!m) break;
        this.buf = this.buf.slice(m[0].length);
        sock.write('+');
        const w = this.waiting;
        this.waiting = null;
        w?.(m[1]!);
      }
    });
  }

  static open(path: string): Promise<GdbRemote> {
    return new Promise((resolve, reject) => {
      const s = connect(path);
      s.once('error', reject);
      s.once('connect', () => resolve(new GdbRemote(s)));
    });
  }

  /** Send one packet and wait (bounded) for its reply. */
  request(data: string, timeoutMs = 5000): Promise<string> {
    const sum = [...data].reduce((a, c) => (a + c.charCodeAt(0)) & 0xff, 0);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => { this.waiting = null; reject(new Error(`gdbstub: no reply to ${data.slice(0, 40)}`)); }, timeoutMs);
      this.waiting = (r) => { clearTimeout(t); resolve(r); };
      this.sock.write(`$${data}#${sum.toString(16).padStart(2, '0')}`);
    });
  }

  async read(addr: number, len: number): Promise<Buffer> {
    const r = await this.request(`m${addr.toString(16)},${len.toString(16)}`);
    if (!/^[0-9a-f]+$/.test(r)) throw new Error(`gdbstub: reading ${len} bytes at 0x${addr.toString(16)} answered ${r}`);
    return Buffer.from(r, 'hex');
  }

  async write(addr: number, data: Buffer): Promise<void> {
    const r = await this.request(`M${addr.toString(16)},${data.length.toString(16)}:${data.toString('hex')}`);
    if (r !== 'OK') throw new Error(`gdbstub: writing at 0x${addr.toString(16)} answered ${r}`);
  }

  close(): void {
    this.sock.destroy();
  }
}

describe("the guest's memory check", () => {
  const vmId = `gm-${shortId()}`;
  const pids = new Set<number>();
  let tmp: string;
  let gdbSock: string;
  let driver: QemuDriver | undefined;
  let watcher: SerialWatcher | undefined;
  let consolePath: string;

  beforeAll(async () => {
    const img = await buildGuestImage();
    tmp = await mkdtemp(join(tmpdir(), 'vmtc-gm-'));
    gdbSock = join(tmp, 'gdb.sock');
    driver = new QemuDriver({ dataDir: join(tmp, 'qemu'), logger: testLogger() });
    const append = guestAppend({ tcpEchoPort: 0, udpEchoPort: 0, heartbeatMs: 50, dirtyMb: DIRTY_MB, dirtyPeriodMs: PERIOD_MS });
    await driver.start(guestSpec(vmId, img.kernel, img.initrd, append, { extra: { qemuArgs: ['-gdb', `unix:${gdbSock},server=on,wait=off`] } }));
    const pid = await driver.pid(vmId);
    if (pid) pids.add(pid);
    const paths = await driver.paths(vmId);
    consolePath = paths.console;
    watcher = new SerialWatcher();
    watcher.watch(paths.serial[0]!, 'guest', { maxMs: 300_000 });
  });

  afterAll(async () => {
    await watcher?.stop();
    await teardownDrivers([driver], pids, tmp);
  });

  it('says ok (verified) while the pages hold what the guest wrote, and reports a page changed from the host as VMTC_LAB_GUEST_CORRUPTED', async () => {
    const map = await waitForLine(consolePath, /VMTC-MEM-MAP page=(\d+) phys=0x([0-9a-f]+)/, 90_000);
    const clean = await awaitGuestVerdict({ console: markConsole(consolePath), dirty: true, booted: true, timeoutMs: 60_000 });
    expect(clean).toMatchObject({ status: 'ok', memory: { verified: true } });
    expect(clean.memory.passesAfter).toBeGreaterThanOrEqual(2);
    // The serial line carries the same passes (beside the heartbeat, which still parses).
    expect(watcher!.memoryLines('guest').some((l) => parseMemoryLine(l.text)?.kind === 'pass')).toBe(true);
    expect(watcher!.samples().length).toBeGreaterThan(5);

    let page = Number(map[1]);
    let verdict: Awaited<ReturnType<typeof awaitGuestVerdict>> | undefined;
    // Up to three attempts: a change made while the guest was halfway through rewriting that very
    // page (the guest is stopped at an arbitrary instruction) would be overwritten, not found.
    for (let attempt = 1; attempt <= 3; attempt++) {
      const console0 = await readConsoleSince({ path: consolePath, offset: 0, ino: null });
      const lastMap = [...console0.matchAll(/VMTC-MEM-MAP page=(\d+) phys=0x([0-9a-f]+)/g)].pop()!;
      page = Number(lastMap[1]);
      const phys = parseInt(lastMap[2]!, 16);
      expect(phys).toBeGreaterThan(0);
      const mark = markConsole(consolePath);
      const serialFrom = watcher!.memoryLines('guest').length;
      const gdb = await GdbRemote.open(gdbSock);
      try {
        // Physical addresses (QEMU's gdbstub extension), not the current CPU's virtual ones.
        expect(await gdb.request('Qqemu.PhyMemMode:1')).toBe('OK');
        expect(await gdb.request('qqemu.PhyMemMode')).toBe('1');
        // The page the guest named holds its header: magic "VMTCMEM1", then its own index.
        const head = await gdb.read(phys, 16);
        expect(head.subarray(0, 8).toString('latin1')).toBe('VMTCMEM1');
        expect(Number(head.readBigUInt64LE(8))).toBe(page);
        await gdb.write(phys + OFFSET, CORRUPTION);
        expect(await gdb.read(phys + OFFSET, CORRUPTION.length)).toEqual(CORRUPTION);
        expect(await gdb.request('D')).toBe('OK');
      } finally {
        gdb.close();
      }
      // The guest runs again (detach continues it).
      for (let i = 0; i < 50 && (await driver!.describe(vmId)).state !== 'running'; i++) await new Promise((r) => setTimeout(r, 100));
      expect((await driver!.describe(vmId)).state).toBe('running');
      // Three passes from a mark taken before the guest stopped: at least two whole ones ran
      // after the change, so an ok would mean the check missed it.
      verdict = await awaitGuestVerdict({
        console: mark, dirty: true, minPasses: 3, timeoutMs: 60_000,
        serialLines: watcher!.memoryLines('guest').slice(serialFrom).map((l) => l.text),
      });
      if (verdict.status === 'corrupted') break;
    }
    expect(verdict!.status).toBe('corrupted');
    expect(verdict!.badPages).toEqual([page]);
    expect(verdict!.memory.evidence).toMatch(new RegExp(`^VMTC-MEM-BAD page=${page} gen=\\d+ off=${OFFSET} expected=[0-9a-f]{16} got=${CORRUPTION.readBigUInt64LE(0).toString(16)} `));
    const err = guestVerdictError(verdict!, 'test guest')!;
    expect(err.code).toBe('VMTC_LAB_GUEST_CORRUPTED');
    expect(err.message).toContain(`page ${page}`);
    // The guest said so on its serial line too, where the turntable reads it.
    await waitForSerial(() => watcher!.memoryLines('guest').some((l) => l.text.startsWith(`VMTC-MEM-BAD page=${page} `)));
    // It keeps running and checking: later passes say how many pages were found changed.
    await waitForLine(consolePath, /VMTC-MEM bad pass=\d+ pages=\d+ bad=1 /, 30_000);
    const passMs = [...(await readConsoleSince({ path: consolePath, offset: 0, ino: null })).matchAll(/VMTC-MEM \w+ pass=\d+ pages=\d+ (?:bad=\d+ )?ms=(\d+)/g)].map((m) => Number(m[1]));
    console.log(`[numbers] ${DIRTY_MB} MB verify+rewrite pass under TCG: ${Math.min(...passMs)}–${Math.max(...passMs)} ms over ${passMs.length} passes`);
  });
});

async function waitForSerial(cond: () => boolean): Promise<void> {
  for (let i = 0; i < 100 && !cond(); i++) await new Promise((r) => setTimeout(r, 100));
  expect(cond()).toBe(true);
}
