// The QMP client against a real QEMU: handshake, id-correlated commands, QEMU's error replies as
// coded errors, events, a per-command timeout whose late reply is logged and dropped without
// harming the link (QEMU frozen with SIGSTOP), and pending commands failed when QEMU dies.
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QmpClient, type QmpEvent } from '../../agents/host/qemu/qmp.ts';
import { VmtcError } from '../../src/common/errors.ts';

describe('QMP client', () => {
  let tmp: string;
  let pid: number | undefined;
  let qmp: QmpClient | undefined;
  const logs: { level: number; msg: string }[] = [];
  const logger = pino({ level: 'debug' }, new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString().split('\n').filter(Boolean)) logs.push(JSON.parse(line) as { level: number; msg: string });
      cb();
    },
  }));

  beforeAll(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'vmtc-qmp-'));
    // A machine with no guest, held at start (-S): enough for QMP, events from stop/cont.
    await new Promise<void>((resolve, reject) => {
      const c = spawn('qemu-system-x86_64', ['-machine', 'pc', '-accel', 'tcg', '-m', '32M', '-nodefaults', '-no-user-config', '-display', 'none', '-S',
        '-qmp', `unix:${join(tmp, 'qmp.sock')},server=on,wait=off`, '-pidfile', join(tmp, 'pid'), '-daemonize'], { stdio: 'ignore' });
      c.on('error', reject);
      c.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`qemu exited ${code}`))));
    });
    pid = Number(await readFile(join(tmp, 'pid'), 'utf8'));
  });

  afterAll(async () => {
    qmp?.close();
    if (pid) {
      try {
        process.kill(pid, 'SIGCONT');
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  it('negotiates, runs commands, wraps error replies and emits events', async () => {
    qmp = await QmpClient.connect(join(tmp, 'qmp.sock'), { logger });
    expect(qmp.version).toMatch(/^\d+\.\d+\.\d+$/);
    expect(await qmp.execute('query-status')).toMatchObject({ status: 'prelaunch', running: false });

    const err = await qmp.execute('no-such-command').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(VmtcError);
    expect(err).toMatchObject({ code: 'VMTC_QMP_COMMAND_FAILED', details: { command: 'no-such-command', class: 'CommandNotFound' } });
    expect((err as Error).cause).toBeInstanceOf(Error);

    const events: QmpEvent[] = [];
    qmp.on('event', (e) => events.push(e));
    await qmp.execute('cont');
    await qmp.execute('stop');
    for (let i = 0; i < 50 && events.length < 2; i++) await new Promise((r) => setTimeout(r, 20));
    expect(events.map((e) => e.event)).toEqual(['RESUME', 'STOP']);
    expect(events[0]!.timestamp?.seconds).toEqual(expect.any(Number));
  });

  it('times a command out, drops its late reply and keeps the link', async () => {
    const c = qmp!;
    process.kill(pid!, 'SIGSTOP');
    try {
      const err = await c.execute('query-status', undefined, { timeoutMs: 200 }).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'VMTC_QMP_TIMEOUT', details: { command: 'query-status', timeoutMs: 200 } });
    } finally {
      process.kill(pid!, 'SIGCONT');
    }
    // The next command gets its own reply, not the late one.
    expect(await c.execute('query-name')).toEqual({});
    expect(logs.some((l) => l.msg === 'qmp: reply matches no pending command, dropped')).toBe(true);
  });

  it('fails pending commands with VMTC_QMP_CLOSED when QEMU dies', async () => {
    const c = qmp!;
    const closed = new Promise<void>((r) => c.once('close', r));
    process.kill(pid!, 'SIGSTOP'); // the command below cannot be answered before the kill
    const pending = c.execute('query-status').catch((e: unknown) => e);
    process.kill(pid!, 'SIGKILL');
    pid = undefined;
    expect(await pending).toMatchObject({ code: 'VMTC_QMP_CLOSED', details: { command: 'query-status' } });
    await closed;
    expect(c.closed).toBe(true);
    await expect(c.execute('query-status')).rejects.toMatchObject({ code: 'VMTC_QMP_CLOSED' });
  });

  it('reports a socket nobody listens on with VMTC_QMP_CONNECT_FAILED', async () => {
    await expect(QmpClient.connect(join(tmp, 'absent.sock'), { logger, connectTimeoutMs: 200 })).rejects.toMatchObject({ code: 'VMTC_QMP_CONNECT_FAILED' });
  });
});
