// The guest's memory check on the host side (lab/guest/verify.ts, lab/guest/check.ts) and the
// serial line parser that carries it beside the heartbeat (lab/turntable/probes/serial.ts): the
// lines lab/guest/vmtc-probe.c prints, written out here by hand.
import { appendFile, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { awaitGuestVerdict, markConsole, readConsoleSince } from '../../lab/guest/check.ts';
import { DAMAGE_PATTERNS, guestVerdictError, judgeGuest, parseMemoryLine } from '../../lab/guest/verify.ts';
import { parseSerialLine } from '../../lab/turntable/probes/serial.ts';
import { LAB_ERRORS } from '../../lab/errors.ts';

const OK1 = 'VMTC-MEM ok pass=41 pages=8192 ms=312';
const OK2 = 'VMTC-MEM ok pass=42 pages=8192 ms=305';
const BAD = 'VMTC-MEM-BAD page=4096 gen=17 off=1024 expected=1f2e3d4c5b6a7988 got=434f525255505421 hdr=4096/17 phys=0x5a3000';

describe('parseMemoryLine', () => {
  it('reads each line the dirty load prints', () => {
    expect(parseMemoryLine('VMTC-DIRTY mb=32 period_ms=1000 pages=8192')).toEqual({ kind: 'start', mb: 32, periodMs: 1000, pages: 8192 });
    expect(parseMemoryLine('VMTC-MEM-MAP page=4096 phys=0x5a3000\r')).toEqual({ kind: 'map', page: 4096, phys: 0x5a3000 });
    expect(parseMemoryLine(OK1)).toEqual({ kind: 'pass', ok: true, pass: 41, pages: 8192, bad: 0 });
    expect(parseMemoryLine('VMTC-MEM bad pass=43 pages=8192 bad=1 ms=300')).toEqual({ kind: 'pass', ok: false, pass: 43, pages: 8192, bad: 1 });
    expect(parseMemoryLine(BAD)).toEqual({ kind: 'bad', page: 4096, text: BAD });
    expect(parseMemoryLine('VMTC-MEM-BAD dirty load exited status=139')).toEqual({ kind: 'bad', page: null, text: 'VMTC-MEM-BAD dirty load exited status=139' });
  });

  it('is null for anything else', () => {
    for (const l of ['', 'hb 12', 'VMTC-GAP n=1 mono_ms=60 real_ms=60 at_real=1', 'VMTC-MEM ok pass=x pages=1', 'xVMTC-MEM ok pass=1 pages=1', 'VMTC-MEMORY ok']) {
      expect(parseMemoryLine(l), l).toBeNull();
    }
  });
});

describe('parseSerialLine (the heartbeat port carries both)', () => {
  it('still reads heartbeats, with or without a CR', () => {
    expect(parseSerialLine('hb 0')).toEqual({ kind: 'hb', seq: 0 });
    expect(parseSerialLine('hb 123456\r')).toEqual({ kind: 'hb', seq: 123456 });
  });

  it('recognises the memory check lines and keeps their text', () => {
    expect(parseSerialLine(`${OK1}\r`)).toEqual({ kind: 'memory', memory: { kind: 'pass', ok: true, pass: 41, pages: 8192, bad: 0 }, text: OK1 });
    expect(parseSerialLine(BAD)).toMatchObject({ kind: 'memory', memory: { kind: 'bad', page: 4096 } });
  });

  it('ignores noise and half lines', () => {
    for (const l of ['hb', 'hb 1 2', 'h', 'hb -1', 'garbage', 'MEM ok pass=1 pages=1']) expect(parseSerialLine(l), l).toBeNull();
  });
});

describe('judgeGuest', () => {
  const quiet = 'some line\nVMTC-GAP n=3 mono_ms=70.1 real_ms=70.2 at_real=1\n';

  it('a dirty guest is ok and verified after two passes (one whole pass after the resume)', () => {
    expect(judgeGuest({ console: `${quiet}${OK1}\n${OK2}\n`, dirty: true })).toEqual({ status: 'ok', memory: { verified: true, passesAfter: 2 }, badPages: [] });
  });

  it('one pass is not enough: the first may have begun before the pause', () => {
    expect(judgeGuest({ console: `${OK1}\n`, dirty: true })).toEqual({ status: 'unverified', memory: { verified: false, passesAfter: 1 }, badPages: [] });
    expect(judgeGuest({ console: '', dirty: true }).status).toBe('unverified');
    expect(judgeGuest({ console: `${OK1}\n`, dirty: true, minPasses: 1 }).status).toBe('ok');
  });

  it('without a dirty load only damage counts, and nothing is verified', () => {
    expect(judgeGuest({ console: quiet, dirty: false })).toEqual({ status: 'ok', memory: { verified: false, passesAfter: 0 }, badPages: [] });
  });

  it('counts passes from the serial line when the console has fewer', () => {
    expect(judgeGuest({ console: `${OK1}\n`, serialLines: ['hb 1', OK1, 'hb 2', OK2], dirty: true }).memory).toEqual({ verified: true, passesAfter: 2 });
  });

  it('a changed page is corruption, with the page and the first evidence line', () => {
    const v = judgeGuest({ console: `${OK1}\n${BAD}\nVMTC-MEM bad pass=42 pages=8192 bad=1 ms=300\n${OK2}\n`, dirty: true });
    expect(v).toEqual({ status: 'corrupted', what: 'memory mismatch', badPages: [4096], memory: { verified: false, passesAfter: 3, evidence: BAD } });
  });

  it('evidence on the serial line alone is enough', () => {
    const v = judgeGuest({ console: `${OK1}\n${OK2}\n`, serialLines: [BAD], dirty: true });
    expect(v.status).toBe('corrupted');
    expect(v.badPages).toEqual([4096]);
    expect(v.memory.evidence).toBe(BAD);
  });

  it('finds each kind of kernel damage the brief names, dirty load or not', () => {
    const lines = [
      'Kernel panic - not syncing: Fatal exception',
      'BUG: unable to handle page fault for address: ffff8880deadbeef',
      '[   12.3] kernel BUG at lib/list_debug.c:59!',
      'Oops: 0000 [#1] PREEMPT SMP NOPTI',
      'list_del corruption. prev->next should be ffff888003b2c1d0, but was ffff888003b2c1e0',
      'list_add corruption. next->prev should be prev (ffff888003b2c1d0)',
      'general protection fault, probably for non-canonical address 0xdead000000000122: 0000 [#1]',
      'Kernel panic - not syncing: stack-protector: Kernel stack is corrupted in: foo+0x1/0x2',
      'VMTC-MEM-BAD dirty load exited status=139',
    ];
    for (const l of lines) {
      const v = judgeGuest({ console: `${OK1}\n[   10.1] ${l}\n${OK2}\n`, dirty: false });
      expect({ l, status: v.status, evidence: v.memory.evidence }).toEqual({ l, status: 'corrupted', evidence: `[   10.1] ${l}` });
    }
    // Every pattern is exercised by one of the lines above.
    for (const p of DAMAGE_PATTERNS.filter((x) => !x.re.source.includes('VMTC-MEM bad'))) expect(lines.some((l) => p.re.test(l)), p.re.source).toBe(true);
  });

  it('reports the first evidence when there are several', () => {
    const v = judgeGuest({ console: 'list_del corruption. x\nKernel panic - not syncing\n', dirty: false });
    expect(v).toMatchObject({ what: 'list corruption', memory: { evidence: 'list_del corruption. x' } });
  });

  it('a new boot after a live move is damage (a reset prints no panic); after a cold move it is expected', () => {
    const boot = 'VMTC-GUEST-READY ip=10.1.1.2/24 mac=52:54:00:0a:01:02 tcp=7 udp=7 clock=0 hb=0 dirty=16:500';
    expect(judgeGuest({ console: `${boot}\n${OK1}\n${OK2}\n`, dirty: true })).toMatchObject({ status: 'corrupted', what: 'guest booted again' });
    expect(judgeGuest({ console: `${boot}\n${OK1}\n${OK2}\n`, dirty: true, booted: true }).status).toBe('ok');
  });

  it('does not take ordinary words for damage', () => {
    const v = judgeGuest({ console: 'BUGS fixed\nOopsy\nVMTC-WARN insmod x failed\nlist_del ok\n', dirty: false });
    expect(v.status).toBe('ok');
  });
});

describe('guestVerdictError', () => {
  it('names the code, the place, the page and the evidence', () => {
    const e = guestVerdictError(judgeGuest({ console: `${BAD}\n`, dirty: true }), 'siteB')!;
    expect(e.code).toBe('VMTC_LAB_GUEST_CORRUPTED');
    expect(e.message).toContain('siteB');
    expect(e.message).toContain('page 4096');
    expect(e.details).toMatchObject({ where: 'siteB', badPages: [4096], evidence: BAD });
    expect(guestVerdictError(judgeGuest({ console: OK1, dirty: true }), 'siteA')!.code).toBe('VMTC_LAB_GUEST_UNVERIFIED');
    expect(guestVerdictError(judgeGuest({ console: `${OK1}\n${OK2}`, dirty: true }), 'siteA')).toBeNull();
    for (const c of ['VMTC_LAB_GUEST_CORRUPTED', 'VMTC_LAB_GUEST_UNVERIFIED', 'VMTC_LAB_GUEST_SILENT']) expect(LAB_ERRORS).toHaveProperty(c);
  });
});

describe('console marks (lab/guest/check.ts)', () => {
  let dir: string;
  beforeAll(async () => { dir = await mkdtemp(join(tmpdir(), 'vmtc-gmc-')); });
  afterAll(async () => { await rm(dir, { recursive: true, force: true }); });

  it('reads only what came after the mark; a file made anew is read whole; an absent one is empty', async () => {
    const f = join(dir, 'console.log');
    await writeFile(f, `old\n${BAD}\n`);
    const mark = markConsole(f);
    await appendFile(f, `${OK1}\n`);
    expect(await readConsoleSince(mark)).toBe(`${OK1}\n`);
    await rm(f);
    await writeFile(f, 'new QEMU\n');
    expect(await readConsoleSince(mark)).toBe('new QEMU\n');
    const none = markConsole(join(dir, 'absent.log'));
    expect(none).toMatchObject({ offset: 0, ino: null });
    expect(await readConsoleSince(none)).toBe('');
  });

  it('waits for the passes a dirty load owes, and gives up unverified at its bound', async () => {
    const f = join(dir, 'wait.log');
    await writeFile(f, `${OK1}\n`);
    const mark = { path: f, offset: 0, ino: null };
    const later = new Promise<void>((r) => setTimeout(() => { void appendFile(f, `${OK2}\n`).then(r); }, 150));
    const v = await awaitGuestVerdict({ console: mark, dirty: true, timeoutMs: 10_000, pollMs: 20 });
    await later;
    expect(v).toMatchObject({ status: 'ok', memory: { verified: true, passesAfter: 2 } });
    const never = await awaitGuestVerdict({ console: { path: join(dir, 'absent.log'), offset: 0, ino: null }, dirty: true, timeoutMs: 100, pollMs: 20 });
    expect(never.status).toBe('unverified');
  });

  it('returns at once on damage, without waiting for passes', async () => {
    const f = join(dir, 'bad.log');
    await writeFile(f, `${BAD}\n`);
    const v = await awaitGuestVerdict({ console: { path: f, offset: 0, ino: null }, dirty: true, timeoutMs: 60_000, pollMs: 20 });
    expect(v.status).toBe('corrupted');
  });
});
