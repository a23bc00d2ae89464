// QemuSystem.prepare on the real host (agents/host/qemu/proc.ts): the process starts at prepare,
// argv runs only at run() with exec's answer (exit code, stderr), and a cancelled one never runs.
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { systemQemu } from '../../agents/host/qemu/proc.ts';
import { systemClock } from '../../src/common/clock.ts';

describe('a prepared command (QemuSystem.prepare)', () => {
  let dir: string | undefined;
  afterEach(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
    dir = undefined;
  });

  it('runs argv only when told, answering as exec does; a cancelled one never runs; arguments pass as they are', async () => {
    dir = mkdtempSync(join(tmpdir(), 'vmtc-prep-'));
    const s = systemQemu(systemClock);
    const marker = join(dir, 'ran with "quotes" and $dollar');
    const p = s.prepare!(['sh', '-c', 'touch "$1"; echo said >&2; exit 3', 'sh', marker]);
    await new Promise((r) => setTimeout(r, 200));
    expect(existsSync(marker)).toBe(false); // ready, not run
    expect(await p.run()).toEqual({ code: 3, stderr: 'said\n' });
    expect(existsSync(marker)).toBe(true);
    expect(await p.run()).toMatchObject({ code: -1 }); // once only

    const never = join(dir, 'never');
    const c = s.prepare!(['touch', never]);
    c.cancel();
    await new Promise((r) => setTimeout(r, 300));
    expect(existsSync(never)).toBe(false);
    expect(await c.run()).toMatchObject({ code: -1 });
  });
});
