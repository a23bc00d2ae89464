// `vmtc migrate` on a real terminal: tmux runs it in a 60- and a 200-column window (tmux is in
// lab/install-deps.sh), and the test reads the screen as a person would see it. The progress
// line is redrawn in place; a line wider than the window would wrap, a carriage return would then
// go back to its last row only, and every redraw would leave a fragment behind. So: while the
// copy runs, exactly one progress line on the screen and no line wider than the window; at the
// end, every state of the record once, the summary, no progress left over. The guest on host D
// dirties memory faster than 20 Mbit/s, so the copy runs until the test raises the bandwidth.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execFileSync, spawnSync } from 'node:child_process';
import { resolve } from 'node:path';
import { startHarness, vmSpec, type Harness } from '../helpers/controller-harness.ts';
import { cleanupsAfterEach } from '../helpers/cleanups.ts';
import { cliEnv } from '../helpers/cli-run.ts';
import { VMTC_BIN } from '../helpers/proc.ts';
import { fmtElapsed } from '../../src/cli/client/format.ts';

const cleanups = cleanupsAfterEach();
let h: Harness | undefined;

beforeAll(async () => {
  h = await startHarness();
  await h.addHost('B');
  await h.addHost('D', { vms: [vmSpec('t60', { memoryMb: 512 }), vmSpec('t200', { memoryMb: 512 })], bytesPerMb: 16 * 1024, dirtyMbps: 50 });
});
afterAll(async () => { await h?.close(); });

/** A tmux server of this test's own (its socket name), started with the client's environment. */
function tmux(socket: string, env: NodeJS.ProcessEnv) {
  const run = (...args: string[]) => execFileSync('tmux', ['-L', socket, ...args], { env, encoding: 'utf8' });
  return {
    run,
    /** The window as shown (rows as the terminal wraps them). */
    screen: () => run('capture-pane', '-p', '-t', 't').replace(/\n+$/, '').split('\n'),
    /** Everything written, scrollback included, wrapped rows joined back into the lines they were. */
    lines: () => run('capture-pane', '-p', '-J', '-S', '-', '-t', 't').replace(/\n+$/, '').split('\n'),
  };
}

const PROGRESS = /^precopy {2}\d+%/;
/** Any piece of a progress line (what a wrapped redraw leaves behind). */
const PROGRESS_BITS = /Mbit\/s|ETA \d|\d+%|left [\d.]+ [KMG]iB/;

describe('vmtc migrate on a terminal', () => {
  it('needs tmux (lab/install-deps.sh installs it)', () => {
    expect(spawnSync('tmux', ['-V'], { encoding: 'utf8' }).stdout).toMatch(/^tmux \d/);
  });

  for (const [width, vm] of [[60, 't60'], [200, 't200']] as const) {
    it(`at ${width} columns: one progress line redrawn in place, nothing wider than the window, the end shown`, async () => {
      const socket = `vmtc-test-${process.pid}-${width}`;
      const env = cliEnv({ url: h!.controller.url, token: h!.controller.adminToken }, { TERM: 'xterm-256color' });
      const t = tmux(socket, env);
      cleanups.push(() => { spawnSync('tmux', ['-L', socket, 'kill-server']); });
      const cmd = `${process.execPath} ${VMTC_BIN} migrate ${vm} --to B --bandwidth-mbps 20; echo EXIT=$?; sleep 600`;
      t.run('new-session', '-d', '-s', 't', '-x', String(width), '-y', '50', '-c', resolve(import.meta.dirname, '../..'), cmd);

      // While it copies: sample the screen a few times.
      await h!.waitFor(() => t.screen().some((l) => PROGRESS.test(l)), () => `a progress line; screen:\n${t.screen().join('\n')}`, 30_000);
      let progressLine = '';
      for (let i = 0; i < 6; i++) {
        const screen = t.screen();
        const lines = t.lines();
        const progress = screen.filter((l) => PROGRESS_BITS.test(l));
        expect(progress, screen.join('\n')).toHaveLength(1);
        expect(progress[0]).toMatch(PROGRESS);
        progressLine = progress[0]!;
        for (const l of lines) expect(l.length, `too wide for ${width} columns: '${l}'`).toBeLessThan(width);
        await new Promise((r) => setTimeout(r, 400));
      }
      // The wider window shows more of the figures.
      if (width === 200) expect(progressLine).toMatch(/Mbit\/s .*left .*ETA/);

      // Let it finish: raise the bandwidth above the guest's dirty rate.
      const list = (await h!.api('GET', `/v1/migrations?vmId=${vm}`)).body.migrations;
      const id = list[0].id as string;
      expect((await h!.api('PATCH', `/v1/migrations/${id}`, { bandwidthMbps: 4000 })).status).toBe(200);
      await h!.waitFor(() => t.lines().some((l) => l.startsWith('EXIT=')), () => `the command's end; screen:\n${t.screen().join('\n')}`, 30_000);

      const lines = t.lines();
      expect(lines).toContain('EXIT=0');
      const rec = (await h!.api('GET', `/v1/migrations/${id}`)).body;
      const t0 = Date.parse(rec.createdAt);
      const states = rec.transitions.map((x: { to: string; at: string }) => `[${fmtElapsed(Date.parse(x.at) - t0)}] ${x.to}`);
      expect(lines.filter((l) => /^\[\+[\d.]+s\] [a-z_]+$/.test(l))).toEqual(states);
      expect(states.at(-1)).toMatch(/\] completed$/);
      expect(lines.some((l) => l.startsWith(`migration ${id} completed`))).toBe(true);
      expect(lines.filter((l) => PROGRESS_BITS.test(l)), lines.join('\n')).toEqual([]);
      for (const l of lines) expect(l.length, `too wide for ${width} columns: '${l}'`).toBeLessThan(width);
    });
  }
});
