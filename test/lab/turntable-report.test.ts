// The turntable's report.html: rendered from a FIXTURE (made-up numbers shaped like a real run,
// not a measurement) and opened in real headless Chromium, which must see no console error and
// no exception. The checker itself is shown able to fail: pages with a console.error, a thrown
// exception and an external request are reported.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { renderReport } from '../../lab/turntable/report.ts';
import { checkInChromium } from '../../lab/turntable/chromium.ts';
import { PAPER, type MigrationTimeline, type Percentiles, type TurntableMigration, type TurntableResult } from '../../lab/turntable/types.ts';

// ---------------------------------------------------------------------------------------------
// Fixture of the report renderer (not a measurement)

const T0 = Date.UTC(2025, 9, 1, 12, 0, 0);

/** Probe arrivals around a switchover: replies stop at `gapStart` and resume `gapMs` later. */
function timeline(o: { fromMs: number; toMs: number; gapStart: number; gapMs: number; serialGapMs: number; pingPhase: number; udpEvery?: number; lostUdp?: number[] }): MigrationTimeline {
  const udpEvery = o.udpEvery ?? 2;
  const inGap = (t: number) => o.gapMs > 0 && t > o.gapStart && t < o.gapStart + o.gapMs;
  const udp: number[] = [];
  for (let t = o.fromMs; t <= o.toMs; t += udpEvery) if (!inGap(t) && !(o.lostUdp ?? []).includes(t)) udp.push(t + 0.3);
  const ping: number[] = [];
  for (let t = o.fromMs + o.pingPhase; t <= o.toMs; t += 50) if (!inGap(t) && !inGap(t - 25)) ping.push(t);
  const serialSource: number[] = [];
  const serialDestination: number[] = [];
  for (let t = o.fromMs; t <= o.toMs; t += 10) {
    if (t <= 0) serialSource.push(t);
    else if (o.serialGapMs > 0 && t >= o.serialGapMs) serialDestination.push(t);
    else if (o.serialGapMs === 0) serialSource.push(t); // no switchover: the source keeps talking
  }
  const marks = o.gapMs > 0
    ? [
        { label: 'stopcopy', at: -45 },
        { label: 'committing', at: -3 },
        { label: 'activating', at: o.serialGapMs - 20 },
        { label: 'completed', at: o.serialGapMs + 180 },
      ]
    : [{ label: 'failed', at: 400 }];
  return { t0: T0, fromMs: o.fromMs, toMs: o.toMs, ping, udp, serialSource, serialDestination, marks };
}

function migration(round: number, over: Partial<TurntableMigration>): TurntableMigration {
  const from = round % 2 ? 'siteA' : 'siteB';
  const to = round % 2 ? 'siteB' : 'siteA';
  return {
    round, from, to, mode: 'live', ok: true, migrationId: `mig-fixture-${round}`, state: 'completed',
    downtimeMs: { hypervisor: 170, internal: 290, serial: 240, ping: 300, udp: 232 },
    lost: { ping: 5, udp: 115, serial: 23 },
    answeredTwice: { udp: 0 },
    totalMs: 9_800, controlPlaneMs: 1_350, hypervisorTotalMs: 8_300,
    bytes: 290_000_000, throughputMbps: 280, tcpSessionSurvived: true,
    emulator: { peakMbps: 402, queueMaxMs: 12, drops: 0 },
    timings: { authorising: 40, 'reserving-lightpath': 1_100, preparing: 210, migrating: 8_300, switching: 150 },
    placesAfter: [to],
    timeline: timeline({ fromMs: -2000, toMs: 2000, gapStart: -4, gapMs: 232, serialGapMs: 240, pingPhase: 13 }),
    ...over,
  };
}

function pcts(xs: number[]): Percentiles {
  const s = [...xs].sort((a, b) => a - b);
  const at = (q: number) => (s.length ? s[Math.min(s.length - 1, Math.ceil(q * s.length) - 1)]! : null);
  return { p50: at(0.5), p95: at(0.95), max: s.length ? s[s.length - 1]! : null, n: s.length };
}

function fixture(migrations: TurntableMigration[], findings: string[]): TurntableResult {
  const live = migrations.filter((m) => m.mode === 'live' && m.ok);
  const fig = (k: 'ping' | 'udp' | 'serial' | 'hypervisor') => live.map((m) => m.downtimeMs[k]).filter((v): v is number => v !== null);
  const client = live.map((m) => m.downtimeMs.udp ?? m.downtimeMs.ping).filter((v): v is number => v !== null);
  const nonlive = migrations.find((m) => m.mode === 'nonlive' && m.ok);
  const nonLiveElapsedMs = nonlive ? nonlive.downtimeMs.udp ?? nonlive.downtimeMs.ping : null;
  const liveClientMedianMs = pcts(client).p50;
  return {
    version: 1,
    config: {
      rttMs: 198, rateMbps: 1000, memoryMb: 256, load: 'dirty', dirtyMb: 64, dirtyPeriodMs: 100, rounds: migrations.length,
      pingIntervalMs: 50, udpIntervalMs: 2, serialPeriodMs: 10, clockPeriodUs: 1000,
      bandwidthMbps: 1000, maxDowntimeMs: 300, out: '/tmp/turntable-fixture', startedAt: new Date(T0).toISOString(),
      host: { kernel: '6.1.0-fixture', cpus: 2, qemu: '7.2.19', accel: 'tcg' },
    },
    emulator: { nominalMbps: 1000, deliveredMbps: 431, rttMs: 199.2, queueMaxMs: 14, drops: 0 },
    migrations,
    summary: {
      ping: pcts(fig('ping')), udp: pcts(fig('udp')), serial: pcts(fig('serial')), hypervisor: pcts(fig('hypervisor')),
      nonLiveElapsedMs, liveClientMedianMs,
      liveNonLiveRatio: nonLiveElapsedMs !== null && liveClientMedianMs ? nonLiveElapsedMs / liveClientMedianMs : null,
      liveOk: live.length, liveTotal: migrations.filter((m) => m.mode === 'live').length,
    },
    findings,
    finishedAt: new Date(T0 + 120_000).toISOString(),
    durationMs: 120_000,
  };
}

const INTERNAL_FINDING = 'FIXTURE: the in-guest clock probe did not see the pause in round 1 (TCG guest clock follows the host clock)';
// Text that would run as markup if the renderer did not escape it: Chromium would then report a
// console error, so escaping is checked by the browser, not only by a string search.
const HOSTILE = `<img src=x onerror="console.error('unescaped')"> & <script>console.error('unescaped script')</script>`;

function mainFixture(): TurntableResult {
  return fixture([
    migration(1, { downtimeMs: { hypervisor: 180, internal: null, serial: 260, ping: 300, udp: 248 } }),
    migration(2, {
      downtimeMs: { hypervisor: 150, internal: 290, serial: 235, ping: 350, udp: 221 },
      timeline: timeline({ fromMs: -2000, toMs: 2000, gapStart: -6, gapMs: 221, serialGapMs: 235, pingPhase: 31, lostUdp: [800, 802] }),
    }),
    migration(3, {
      ok: false, state: 'failed', placesAfter: ['siteA'], tcpSessionSurvived: true,
      error: { code: 'VMTC_MIGRATION_FAILED', message: `QEMU reported "failed": ${HOSTILE}` },
      downtimeMs: { hypervisor: null, internal: null, serial: null, ping: null, udp: null },
      lost: { ping: 0, udp: 0, serial: 0 }, answeredTwice: { udp: 0 }, hypervisorTotalMs: null, throughputMbps: null, bytes: 12_000_000,
      timeline: timeline({ fromMs: -1000, toMs: 1000, gapStart: 0, gapMs: 0, serialGapMs: 0, pingPhase: 7 }),
    }),
    migration(4, {
      mode: 'nonlive', from: 'siteB', to: 'siteA',
      downtimeMs: { hypervisor: null, internal: null, serial: 14_200, ping: 14_250, udp: 14_230 },
      lost: { ping: 285, udp: 7_115, serial: 1_420 }, answeredTwice: { udp: 0 }, totalMs: 15_900, hypervisorTotalMs: null,
      timeline: timeline({ fromMs: -3000, toMs: 18_000, gapStart: -5, gapMs: 14_230, serialGapMs: 14_200, pingPhase: 3 }),
    }),
  ], [INTERNAL_FINDING, `FIXTURE: hostile text stays text: ${HOSTILE}`]);
}

// ---------------------------------------------------------------------------------------------

let dir = '';
const chromiumDirs = async () => (await readdir(tmpdir())).filter((n) => n.startsWith('vmtc-chromium-'));
let chromiumDirsBefore: string[] = [];

/** Live processes started with one of checkInChromium's profile directories (zombies have no cmdline). */
async function browsersStillRunning(): Promise<string[]> {
  const found: string[] = [];
  for (const pid of (await readdir('/proc')).filter((n) => /^\d+$/.test(n))) {
    const cmd = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
    if (cmd.includes('--user-data-dir=') && cmd.includes('vmtc-chromium-') && !chromiumDirsBefore.some((d) => cmd.includes(d))) found.push(pid);
  }
  return found;
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vmtc-report-test-'));
  chromiumDirsBefore = await chromiumDirs();
});

afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

async function page(name: string, html: string): Promise<string> {
  const f = join(dir, name);
  await writeFile(f, html);
  return f;
}

describe('turntable report', () => {
  it('renders the fixture run as a self-contained page that Chromium shows without errors', async () => {
    const html = renderReport(mainFixture());
    // Self-contained: no external reference of any kind, and no script at all.
    expect(html).not.toMatch(/\b(?:src|href|xlink:href)\s*=\s*["']?\s*(?:[a-z][a-z0-9+.-]*:)?\/\//i);
    expect(html).not.toMatch(/https?:\/\//i);
    expect(html).not.toMatch(/@import|url\(/i);
    expect(html).not.toMatch(/<script/i);
    // Escaped text, not markup.
    expect(html).toContain('&lt;img src=x onerror=');
    expect(html).not.toContain('<img');

    const file = await page('report.html', html);
    const check = await checkInChromium(file, { screenshot: true, timeoutMs: 60_000 });
    expect(check.consoleErrors).toEqual([]);
    expect(check.exceptions).toEqual([]);
    expect(check.blockedRequests).toEqual([]);
    expect(check.title).toContain('VM Turntable report');
    expect(check.bodyTextLength).toBeGreaterThan(2000);
    expect(check.screenshotPng?.subarray(1, 4).toString()).toBe('PNG');
    // For a person to look at: VMTC_REPORT_OUT=/some/dir keeps the page and its screenshot.
    if (process.env.VMTC_REPORT_OUT) {
      await writeFile(join(process.env.VMTC_REPORT_OUT, 'report.png'), check.screenshotPng!);
      await writeFile(join(process.env.VMTC_REPORT_OUT, 'report.html'), html);
    }
  });

  it('puts the paper’s figures beside this run’s', () => {
    const html = renderReport(mainFixture());
    const text = html.replace(/<[^>]+>/g, ' ');
    // The paper (Tables 1-3, §6.4).
    expect(text).toContain('800 ms–1,600 ms');
    expect(text).toContain(`${PAPER.table2.internalMs} ms`);
    expect(text).toContain(`${PAPER.table2.externalMs} ms`);
    expect(text).toContain('3,810 ms');
    expect(text).toContain(PAPER.ratio.text);
    // This run: client-seen median (UDP 221/248 -> lower median 221), serial, ping, ratio.
    expect(text).toContain('221 ms median');
    expect(text).toMatch(/p50 235 ms, p95 260 ms, max 260 ms \(n = 2\)/); // serial
    expect(text).toMatch(/p50 300 ms, p95 350 ms, max 350 ms \(n = 2\)/); // ping
    expect(text).toContain('64×'); // 14,230 / 221
    expect(text).toContain('290 ms median'); // internal, from the one live migration that saw it
    expect(text).toContain('199.2 ms measured');
    // The failed migration and its error are listed; the one without an internal figure says so.
    expect(text).toContain('VMTC_MIGRATION_FAILED');
    expect(text).toContain('unavailable');
    // Per-migration timelines and the radar sweeps (live median UDP = round 2, and the non-live).
    expect((html.match(/aria-label="probe timeline of round \d+"/g) ?? []).length).toBe(4);
    expect(html).toContain('aria-label="radar sweep of Live, round 2');
    expect(html).toContain('aria-label="radar sweep of Non-live, round 4');
    expect(text).toContain('paused 222 ms'); // replies at -5.7 and 216.3 ms
  });

  it('says the internal figure is unavailable, with the finding, when no live migration had one', () => {
    const r = mainFixture();
    for (const m of r.migrations) m.downtimeMs.internal = null;
    const html = renderReport(r);
    expect(html).toMatch(/<strong>unavailable<\/strong><br><span class="muted">FIXTURE: the in-guest clock probe/);
  });

  it('renders edge cases without throwing: no migrations, all-null figures, only live, huge sample streams', async () => {
    const empty = fixture([], []);
    const emptyHtml = renderReport(empty);
    expect(emptyHtml).toContain('This run has no migrations.');

    const allNull = fixture([migration(1, {
      downtimeMs: { hypervisor: null, internal: null, serial: null, ping: null, udp: null },
      hypervisorTotalMs: null, throughputMbps: null, placesAfter: [],
      timeline: { t0: NaN, fromMs: 0, toMs: 0, ping: [], udp: [], serialSource: [], serialDestination: [], marks: [] },
    })], []);
    allNull.emulator = { nominalMbps: NaN, deliveredMbps: NaN, rttMs: NaN, queueMaxMs: NaN, drops: NaN };
    const allNullHtml = renderReport(allNull);
    expect(allNullHtml).toContain('No timeline was recorded');

    // Not even the declared shape: missing objects everywhere must still render.
    const broken = renderReport({ version: 1, migrations: [{ round: 1, mode: 'live', ok: false }], summary: {} } as unknown as TurntableResult);
    expect(broken).toContain('<!doctype html>');

    const onlyLive = fixture([migration(1, {}), migration(2, {})], []);
    const onlyLiveHtml = renderReport(onlyLive);
    expect(onlyLiveHtml).toContain('this run has no non-live migration');

    // A non-live pause longer than the recorded window: drawn as an open gap with a lower bound.
    const clipped = fixture([migration(1, {}), migration(2, {
      mode: 'nonlive', downtimeMs: { hypervisor: null, internal: null, serial: 14_200, ping: 14_250, udp: 14_230 },
      timeline: timeline({ fromMs: -1000, toMs: 2000, gapStart: -5, gapMs: 14_230, serialGapMs: 14_200, pingPhase: 3 }),
    })], []);
    const clippedHtml = renderReport(clipped);
    expect(clippedHtml).toContain('paused ≥ 2,006 ms');
    expect(clippedHtml).toContain('(window edge)');

    // 11 migrations with about 2,000 UDP samples each stays well under 2 MB.
    const big = fixture(Array.from({ length: 11 }, (_, i) => migration(i + 1, i === 10 ? {
      mode: 'nonlive', downtimeMs: { hypervisor: null, internal: null, serial: 9_000, ping: 9_050, udp: 9_020 },
      timeline: timeline({ fromMs: -2000, toMs: 12_000, gapStart: -5, gapMs: 9_020, serialGapMs: 9_000, pingPhase: 3 }),
    } : {})), []);
    const bigHtml = renderReport(big);
    expect(big.migrations[0]!.timeline.udp.length).toBeGreaterThan(1800);
    expect(Buffer.byteLength(bigHtml)).toBeLessThan(2_000_000);
    if (process.env.VMTC_REPORT_OUT) {
      await writeFile(join(process.env.VMTC_REPORT_OUT, 'big.html'), bigHtml);
      await writeFile(join(process.env.VMTC_REPORT_OUT, 'clipped.html'), clippedHtml);
    }

    for (const [name, html] of [['empty.html', emptyHtml], ['all-null.html', allNullHtml], ['broken.html', broken], ['clipped.html', clippedHtml], ['big.html', bigHtml]] as const) {
      const check = await checkInChromium(await page(name, html), { timeoutMs: 60_000 });
      expect({ name, consoleErrors: check.consoleErrors, exceptions: check.exceptions, blocked: check.blockedRequests }).toEqual({ name, consoleErrors: [], exceptions: [], blocked: [] });
      expect(check.bodyTextLength).toBeGreaterThan(200);
    }
  });

  it('the checker reports console errors, exceptions and external requests', async () => {
    const consoleFile = await page('console.html', '<!doctype html><title>c</title><p>x</p><script>console.error("x")</script>');
    const c = await checkInChromium(consoleFile);
    expect(c.consoleErrors).toEqual(['x']);
    expect(c.exceptions).toEqual([]);
    expect(c.title).toBe('c');

    const throwFile = await page('throw.html', '<!doctype html><title>t</title><p>x</p><script>throw new Error("deliberate")</script>');
    const t = await checkInChromium(throwFile);
    expect(t.exceptions).toHaveLength(1);
    expect(t.exceptions[0]).toContain('deliberate');

    // A documentation address (TEST-NET-1): the request is failed inside the browser, never sent.
    const extFile = await page('external.html', '<!doctype html><title>e</title><img src="http://192.0.2.1/pixel.png">');
    const e = await checkInChromium(extFile);
    expect(e.blockedRequests).toEqual(['http://192.0.2.1/pixel.png']);
    expect(e.consoleErrors.join(' ')).toContain('ERR_BLOCKED_BY_CLIENT');
  });

  it('gives up on a page that never loads, with a timeout error, and still kills the browser', async () => {
    const hang = await page('hang.html', '<!doctype html><title>h</title><script>for (;;) {}</script>');
    const err = await checkInChromium(hang, { timeoutMs: 4000 }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'VMTC_TIMEOUT' });
    expect(await browsersStillRunning()).toEqual([]);
  });

  it('says clearly when Chromium is absent, and leaves no profile directory or browser behind', async () => {
    const err = await checkInChromium(join(dir, 'report.html'), { chromiumPath: join(dir, 'no-such-chromium') }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'VMTC_LAB_CHROMIUM_MISSING' });
    expect((await chromiumDirs()).filter((d) => !chromiumDirsBefore.includes(d))).toEqual([]);
    expect(await browsersStillRunning()).toEqual([]);
  });
});
