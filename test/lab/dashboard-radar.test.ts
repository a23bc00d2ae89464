// The dashboard's radar from real probes (docs/dashboard.md "Radar"): the whole lab stack (every
// service a real process, a QEMU guest, the tunnel agent measuring with its capture helper and
// 20 ms ICMP echo, lab/stack.ts), the dashboard open in Debian's chromium during a real live
// migration. The page must receive every probe the tunnel agent sent in the migration window,
// with the guest's pause as unanswered probes, and show the same figure as the record. Writes
// docs/screenshots/dashboard-lab-radar.png.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { chromium, type Browser } from 'playwright-core';
import { startStack, type Stack } from '../../lab/stack.ts';

let s: Stack | undefined;
let b: Browser | undefined;

beforeAll(async () => {
  s = await startStack({ rttMs: 20, rateMbps: 1000, memoryMb: 128 });
  b = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args: process.getuid?.() === 0 ? ['--no-sandbox'] : [] });
}, 300_000);

afterAll(async () => {
  await b?.close();
  await s?.close();
}, 120_000);

describe('the dashboard during a real QEMU migration', () => {
  it('draws the radar from the tunnel agent\'s real probe stream, with the pause as a dark sector', async () => {
    const page = await b!.newPage({ viewport: { width: 1280, height: 900 } });
    const problems: string[] = [];
    page.on('console', (m) => { if (m.type() === 'error') problems.push(m.text()); });
    page.on('pageerror', (e) => problems.push(e.message));
    await page.goto(s!.url + '/dashboard/');
    await page.getByLabel('Credential').fill(s!.adminToken);
    await page.keyboard.press('Enter');
    await page.locator('.stream', { hasText: 'live' }).waitFor();

    const to = s!.lab.sites[1]!.name;
    const rec = await s!.migrate(to, { bandwidthMbps: 900 });
    expect({ state: rec.state, error: rec.error }).toEqual({ state: 'completed', error: null });
    const probe = rec.downtime?.tunnelProbe as { gapMs: number; sent: number; received: number; periodMs: number };
    expect(probe.sent).toBeGreaterThan(10);

    await page.locator(`[data-history-state="${rec.id}"]`, { hasText: 'completed' }).waitFor({ timeout: 30_000 });
    await page.locator(`[data-focus-key="details-${rec.id}"]`).click();
    const radar = page.locator(`#detail [data-radar="${rec.id}"]`);
    await radar.waitFor();
    // Every probe of the window reached the page; the guest's pause is a run without replies.
    expect(Number(await radar.getAttribute('data-sent'))).toBe(probe.sent);
    expect(Number(await radar.getAttribute('data-missing'))).toBeGreaterThan(0);
    expect(probe.gapMs).toBeGreaterThan(2 * probe.periodMs);
    // The radar's longest silence is the record's figure, by the same rule over the same samples.
    expect(Math.abs(Number(await radar.getAttribute('data-longest-ms')) - probe.gapMs)).toBeLessThanOrEqual(1);
    expect(await page.locator(`#detail [data-figure="tunnelProbe"]`).textContent()).toBe(`${Math.round(probe.gapMs)} ms`);
    const shots = resolve(import.meta.dirname, '../../docs/screenshots');
    mkdirSync(shots, { recursive: true });
    await page.screenshot({ path: join(shots, 'dashboard-lab-radar.png'), fullPage: true });
    expect(problems).toEqual([]);
  }, 300_000);
});
