// src/common/proc.ts: the one argv runner and pid check every service, agent and the lab use.
import { describe, it, expect } from 'vitest';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { pidAlive, run, tryRun } from '../../src/common/proc.ts';

describe('run', () => {
  it('resolves stdout and stderr, and feeds input to stdin', async () => {
    const r = await run([process.execPath, '-e', 'process.stdin.pipe(process.stdout); console.error("e")'], { input: 'hello' });
    expect(r).toEqual({ stdout: 'hello', stderr: 'e\n' });
  });

  it('runs in cwd', async () => {
    const r = await run(['pwd'], { cwd: '/' });
    expect(r.stdout.trim()).toBe('/');
  });

  it('rejects a non-zero exit with VMTC_COMMAND_FAILED, its argv, status and stderr', async () => {
    const argv = [process.execPath, '-e', 'console.error("boom"); process.exit(3)'];
    await expect(run(argv)).rejects.toMatchObject({
      code: 'VMTC_COMMAND_FAILED',
      status: 500,
      details: { argv, code: 3, timedOut: false, stderr: 'boom' },
    });
  });

  it('rejects a missing program with the errno code', async () => {
    await expect(run(['/nonexistent/vmtc-no-such-program'])).rejects.toMatchObject({ code: 'VMTC_COMMAND_FAILED', details: { code: 'ENOENT' } });
  });

  it('kills a program that overruns its timeout and says so', async () => {
    await expect(run([process.execPath, '-e', 'setTimeout(() => {}, 10000)'], { timeoutMs: 200 }))
      .rejects.toMatchObject({ code: 'VMTC_COMMAND_FAILED', details: { timedOut: true, signal: 'SIGTERM' } });
  });

  it('tryRun returns null on failure and the output on success', async () => {
    expect(await tryRun([process.execPath, '-e', 'process.exit(1)'])).toBeNull();
    expect((await tryRun(['echo', 'x']))?.stdout).toBe('x\n');
  });
});

describe('pidAlive', () => {
  it('is true for this process and false for nonsense pids', () => {
    expect(pidAlive(process.pid)).toBe(true);
    expect(pidAlive(0)).toBe(false);
    expect(pidAlive(-1)).toBe(false);
    expect(pidAlive(1.5)).toBe(false);
  });

  it('with a marker, checks the command line too (a reused pid is someone else)', () => {
    const mine = readFileSync(`/proc/${process.pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
    expect(pidAlive(process.pid, mine[0]!)).toBe(true);
    expect(pidAlive(process.pid, 'vmtc-marker-that-is-not-there')).toBe(false);
  });

  it('is false once a process has exited', async () => {
    const c = spawn(process.execPath, ['-e', '0'], { stdio: 'ignore' });
    const pid = c.pid!;
    await new Promise((r) => c.on('exit', r));
    // Reaped by node right after 'exit'; give it a moment if the kernel has not caught up.
    for (let i = 0; i < 50 && pidAlive(pid); i++) await new Promise((r) => setTimeout(r, 10));
    expect(pidAlive(pid)).toBe(false);
  });
});
