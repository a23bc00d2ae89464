// The host agent, its drivers and the agents' shared link take their time from an injected Clock
// (src/common/clock.ts; docs/contributing.md#time-randomness-and-ids): no Date.now(), new Date(),
// setTimeout or setInterval of their own, so their waits and deadlines can be driven by a
// ManualClock (test/unit/qemu-driver-*.test.ts do).
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = resolve(import.meta.dirname, '../..');
const RAW = /\bDate\.now\s*\(|\bnew Date\s*\(|(?<![.\w])set(?:Timeout|Interval)\s*\(|(?<![.\w])sleep\s*\(/;

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? files(p) : n.endsWith('.ts') ? [p] : [];
  });
}

/** The code without its comments (string literals kept: a URL's // is not a comment). */
function code(src: string): string {
  let out = '';
  for (let i = 0; i < src.length;) {
    const c = src[i]!;
    if (c === '/' && src[i + 1] === '/') while (i < src.length && src[i] !== '\n') i++;
    else if (c === '/' && src[i + 1] === '*') i = src.indexOf('*/', i + 2) < 0 ? src.length : src.indexOf('*/', i + 2) + 2;
    else if (c === '"' || c === "'" || c === '`') {
      let j = i + 1;
      while (j < src.length && src[j] !== c) j += src[j] === '\\' ? 2 : 1;
      out += src.slice(i, j + 1);
      i = j + 1;
    } else {
      out += c;
      i++;
    }
  }
  return out;
}

describe('host agent time', () => {
  it('agents/host and agents/common read no wall clock and set no timer of their own', () => {
    const all = [...files(join(ROOT, 'agents/host')), ...files(join(ROOT, 'agents/common'))];
    expect(all.length).toBeGreaterThan(20);
    const offenders = all
      .map((f) => ({ f: relative(ROOT, f), lines: code(readFileSync(f, 'utf8')).split('\n').map((l, n) => [n + 1, l] as const).filter(([, l]) => RAW.test(l)) }))
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
