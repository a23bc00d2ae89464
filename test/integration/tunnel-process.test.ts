// `vmtc tunnel` as a real process (node bin/vmtc.js tunnel … --driver memory) against a hub
// started here: it enrols as a tunnel agent, prints its ready line on stdout, is switched by the
// controller's HubTunnelPort, and exits 0 on SIGTERM. Bad configuration fails at start, coded.
import { describe, it, expect } from 'vitest';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { HubTunnelPort } from '../../src/controller/tunnel-port.ts';
import { cleanupsAfterEach, spawnVmtcCli } from '../helpers/cleanups.ts';
import { startHub, tempDir, waitFor, until } from '../helpers/agent-fixture.ts';

const cleanups = cleanupsAfterEach();

const spawnTunnel = (args: string[]) => spawnVmtcCli(['tunnel', ...args], cleanups);

describe('vmtc tunnel (process)', () => {
  it('enrols, prints its ready line, is switched by the controller, and stops on SIGTERM', async () => {
    const f = await startHub();
    cleanups.push(() => f.close());
    const d = tempDir('vmtc-tunnel-');
    cleanups.push(() => rmSync(d, { recursive: true, force: true }));
    const minted = f.hub.mintEnrollToken({ kind: 'tunnel', hostId: 'tun-proc' });
    const connected = waitFor(f.hub, 'connected', (h: string) => h === 'tun-proc', 25_000);
    const p = spawnTunnel(['--controller', f.controllerUrl, '--enroll', minted.token, '--ca-fingerprint', minted.caFingerprint, '--data', join(d, 'agent'),
      '--driver', 'memory', '--site', 'siteA', '--site', 'siteB=198.51.100.20', '--initial-site', 'siteA', '--log-level', 'warn']);
    try {
      const [, kind] = await connected;
      expect(kind).toBe('tunnel');
      await until(() => p.stdout().includes('\n'), 10_000, 'ready line');
    } catch (e) {
      throw new Error(`tunnel agent never got ready: ${p.stdout()} ${p.stderr()}`, { cause: e });
    }
    // stdout holds exactly the ready line (the log goes to stderr).
    const lines = p.stdout().trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(JSON.parse(lines[0]!)).toEqual({ event: 'ready', hostId: 'tun-proc', kind: 'tunnel', driver: 'memory', sites: ['siteA'] });

    const port = new HubTunnelPort(f.hub);
    await port.bicast('vm-1', 'siteA', 'siteB');
    expect(await f.hub.requestRaw('tun-proc', 'tunnel.state', {})).toMatchObject({ sites: ['siteA', 'siteB'] });
    await port.prune('vm-1', 'siteB', 'siteA');
    expect(await f.hub.requestRaw('tun-proc', 'tunnel.state', {})).toMatchObject({ sites: ['siteB'], vmSites: { 'vm-1': ['siteB'] } });

    const gone = waitFor(f.hub, 'disconnected', (h: string) => h === 'tun-proc');
    process.kill(p.child.pid!, 'SIGTERM');
    expect(await p.exited).toBe(0);
    await gone;
  });

  it('fails at start, coded and naming the field, on bad configuration', async () => {
    const d = tempDir('vmtc-tunnel-');
    cleanups.push(() => rmSync(d, { recursive: true, force: true }));
    const cases: [string[], string][] = [
      [['--data', d, '--driver', 'vxlan', '--site', 'siteA=198.51.100.10'], 'device'],
      [['--data', d, '--driver', 'vxlan', '--device', 'vx0', '--site', 'siteA'], 'site'],
      [['--data', d, '--driver', 'vxlan', '--device', 'vx0', '--site', 'siteA=not-an-ip'], 'site'],
      [['--data', d, '--driver', 'carrier-pigeon'], 'driver'],
      [['--data', d, '--driver', 'memory'], 'enroll'],
    ];
    for (const [args, field] of cases) {
      const p = spawnTunnel(args);
      expect(await p.exited, args.join(' ')).toBe(1);
      expect(p.stderr(), args.join(' ')).toContain('VMTC_CONFIG_INVALID');
      // The field is named: by its option in the message, or in the details after it.
      expect(p.stderr(), args.join(' ')).toMatch(new RegExp(`--${field}\\b|"field":"${field}"`));
    }
  });
});
