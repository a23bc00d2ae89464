// The host agent, its drivers, the tunnel agent and the agents' shared link take their time from an injected Clock
// (src/common/clock.ts; docs/contributing.md#time-randomness-and-ids): no Date.now(), new Date(),
// setTimeout or setInterval of their own, so their waits and deadlines can be driven by a
// ManualClock (test/unit/qemu-driver-*.test.ts do).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ROOT, listFiles, stripComments as code } from '../helpers/source-scan.ts';

const RAW = /\bDate\.now\s*\(|\bnew Date\s*\(|(?<![.\w])set(?:Timeout|Interval)\s*\(|(?<![.\w])sleep\s*\(/;

describe('agent time', () => {
  it('agents/ (host agent, tunnel agent, their link) read no wall clock and set no timer of their own', () => {
    const all = listFiles(join(ROOT, 'agents'));
    expect(all.length).toBeGreaterThan(25);
    expect(all).toContain('agents/tunnel/index.ts');
    const offenders = all
      .map((f) => ({ f, lines: code(readFileSync(join(ROOT, f), 'utf8')).split('\n').map((l, n) => [n + 1, l] as const).filter(([, l]) => RAW.test(l)) }))
      .filter((x) => x.lines.length > 0)
      .map((x) => `${x.f}:${x.lines.map(([n]) => n).join(',')}`);
    expect(offenders).toEqual([]);
  });

  it('the check sees a raw timer when there is one', () => {
    expect(RAW.test(code('const t = setTimeout(done, 5); // clock.setTimeout'))).toBe(true);
    expect(RAW.test(code('const t = this.clock.setTimeout(done, 5); // not setTimeout(...) nor Date.now()'))).toBe(false);
    expect(RAW.test(code("const u = 'https://x'; const n = Date.now();"))).toBe(true);
  });
});
