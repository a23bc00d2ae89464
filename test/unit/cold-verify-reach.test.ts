// The cold path's verify address, pure parts: the reachability rule applied before the source is
// powered off (agents/host/reach.ts, docs/design.md#cold-path "Checking the verify address
// first"), the double's model of it, the verification's progress line, and the CLI's timeout flag.
import { describe, it, expect } from 'vitest';
import { decideReach, networksList, probeFromBash, probeFromError, routeFromIp } from '../../agents/host/reach.ts';
import { DoubleDriver } from '../../agents/host/double-driver.ts';
import { fmtProgressLine } from '../../src/cli/client/progress.ts';
import { migrationBody } from '../../src/cli/client/commands.ts';
import { UsageError } from '../../src/cli/client/usage.ts';

describe('reachability rule', () => {
  it('no route from the destination refuses, whatever the connection attempt got', () => {
    const none = routeFromIp(2, 'RTNETLINK answers: Network is unreachable\n');
    expect(none).toEqual({ route: 'none', reason: 'Network is unreachable' });
    for (const probe of ['open', 'refused', 'no-answer', 'unreachable'] as const) {
      const r = decideReach(none, { probe });
      expect(r.reachable).toBe(false);
      expect(r.reason).toMatch(/no route from the destination: Network is unreachable/);
    }
    expect(routeFromIp(2, 'RTNETLINK answers: No route to host').route).toBe('none');
  });

  it('a route is enough: refused, no answer and EHOSTUNREACH (the VM\'s own address before it moves) go ahead', () => {
    const found = routeFromIp(0, '');
    expect(found).toEqual({ route: 'found' });
    expect(decideReach(found, { probe: 'refused', errno: 'ECONNREFUSED' })).toMatchObject({ reachable: true, route: 'found', probe: 'refused' });
    expect(decideReach(found, { probe: 'no-answer' }).reachable).toBe(true);
    expect(decideReach(found, { probe: 'unreachable', errno: 'EHOSTUNREACH' }).reachable).toBe(true);
    expect(decideReach(found, { probe: 'open' }).reason).toMatch(/already accepts/);
  });

  it('the kernel\'s ENETUNREACH on the attempt is the same "no route", also for a name', () => {
    const name = { route: 'not-checked' as const, reason: 'a name' };
    expect(decideReach(name, { probe: 'unreachable', errno: 'ENETUNREACH' }).reachable).toBe(false);
    expect(decideReach(name, { probe: 'no-answer' }).reachable).toBe(true);
    expect(probeFromError('ENETUNREACH')).toBe('unreachable');
    expect(probeFromError('ECONNREFUSED')).toBe('refused');
    expect(probeFromError(undefined)).toBe('no-answer');
  });

  it('reads bash\'s /dev/tcp outcome under timeout', () => {
    expect(probeFromBash(0, '')).toEqual({ probe: 'open' });
    expect(probeFromBash(124, '')).toEqual({ probe: 'no-answer' });
    expect(probeFromBash(1, 'bash: connect: Connection refused\nbash: line 1: /dev/tcp/10.1.1.5/7: Connection refused')).toEqual({ probe: 'refused', errno: 'ECONNREFUSED' });
    expect(probeFromBash(1, 'bash: connect: Network is unreachable')).toEqual({ probe: 'unreachable', errno: 'ENETUNREACH' });
    expect(probeFromBash(1, 'bash: connect: No route to host')).toEqual({ probe: 'unreachable', errno: 'EHOSTUNREACH' });
  });

  it('networks: CIDRs and single addresses; anything else is named', () => {
    const n = networksList(['10.1.1.0/24', '::1', '127.0.0.1/32']);
    expect('list' in n && n.list.check('10.1.1.200', 'ipv4')).toBe(true);
    expect('list' in n && n.list.check('10.1.2.1', 'ipv4')).toBe(false);
    expect(networksList(['10.1.1.0/33'])).toEqual({ bad: '10.1.1.0/33' });
    expect(networksList(['host.example/24'])).toEqual({ bad: 'host.example/24' });
  });
});

describe('DoubleDriver: its model of reachability (a test double)', () => {
  it('with networks, only addresses in them have a route; without, every address has one', async () => {
    const d = new DoubleDriver({ networks: ['10.1.1.0/24'] });
    expect(await d.checkReach('192.0.2.7', 7, 100)).toMatchObject({ reachable: false, route: 'none' });
    expect(await d.checkReach('10.1.1.5', 7, 100)).toMatchObject({ reachable: true, route: 'found', probe: 'no-answer' });
    expect(await new DoubleDriver().checkReach('192.0.2.7', 7, 100)).toMatchObject({ reachable: true, route: 'found' });
    expect(() => new DoubleDriver({ networks: ['nope'] })).toThrow(/networks/);
  });
});

describe('the verification in the progress line', () => {
  it('shows attempts, time spent of the bound and the last error instead of bytes', () => {
    const p = { status: 'active', phase: 'verify', verify: { attempts: 12, elapsedMs: 2500, timeoutMs: 60_000, lastError: 'no connection accepted within 2000 ms' } };
    expect(fmtProgressLine('cold_verifying', p)).toBe('cold_verifying/verify  attempt 12  3s of 1m00s  last: no connection accepted within 2000 ms');
    // Narrower: the last error goes first, then the time; the attempts stay.
    expect(fmtProgressLine('cold_verifying', p, 50)).toBe('cold_verifying/verify  attempt 12  3s of 1m00s');
    expect(fmtProgressLine('cold_verifying', p, 40)).toBe('cold_verifying/verify  attempt 12');
    expect(fmtProgressLine('cold_verifying', p)).not.toMatch(/MiB/);
  });
});

describe('vmtc migrate --multifd-channels / --no-multifd', () => {
  it('sets the streams or turns them off; neither leaves the controller\'s default; both together are refused', () => {
    expect(migrationBody({ to: 'B' }, 'vm1')).not.toHaveProperty('multifd');
    expect(migrationBody({ to: 'B' }, 'vm1')).not.toHaveProperty('multifdChannels');
    expect(migrationBody({ to: 'B', 'multifd-channels': '4' }, 'vm1')).toMatchObject({ multifd: true, multifdChannels: 4 });
    expect(migrationBody({ to: 'B', 'no-multifd': true }, 'vm1')).toMatchObject({ multifd: false });
    for (const v of ['0', '65', 'x', '2.5']) expect(() => migrationBody({ to: 'B', 'multifd-channels': v }, 'vm1')).toThrow(UsageError);
    expect(() => migrationBody({ to: 'B', 'no-multifd': true, 'multifd-channels': '4' }, 'vm1')).toThrow(/--no-multifd/);
    expect(() => migrationBody({ to: 'B', 'no-multifd': true, multifd: true }, 'vm1')).toThrow(/--no-multifd/);
  });
});

describe('vmtc migrate --verify-timeout-ms', () => {
  it('goes into verifyTcp.timeoutMs, bounded, and only with --verify-tcp', () => {
    expect(migrationBody({ to: 'B', mode: 'cold', 'verify-tcp': '10.1.1.5:7', 'verify-timeout-ms': '2000' }, 'vm1').verifyTcp).toEqual({ host: '10.1.1.5', port: 7, timeoutMs: 2000 });
    expect(migrationBody({ to: 'B', mode: 'cold', 'verify-tcp': '10.1.1.5:7' }, 'vm1').verifyTcp).toEqual({ host: '10.1.1.5', port: 7 });
    for (const v of ['999', '600001', 'x']) expect(() => migrationBody({ to: 'B', 'verify-tcp': '10.1.1.5:7', 'verify-timeout-ms': v }, 'vm1')).toThrow(UsageError);
    expect(() => migrationBody({ to: 'B', 'verify-timeout-ms': '2000' }, 'vm1')).toThrow(/needs --verify-tcp/);
  });
});
