// Policy files: every error names the field; the decision function is pure and explains refusals.
import { describe, it, expect } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { generateRequesterKeySync } from '../../src/common/dpop.ts';
import { VmtcError } from '../../src/common/errors.ts';
import { parsePolicy, loadPolicyFile, decide, insideTimeOfDay, pathDomains } from '../../src/aaa/policy.ts';
import { AAA_ERRORS } from '../../src/aaa/errors.ts';
import { startAaa } from '../../src/aaa/index.ts';
import { silentLogger } from '../../src/common/log.ts';

const key = generateRequesterKeySync();
const valid = () => ({
  version: 1,
  sites: { siteA: 'a', siteB: 'b' },
  requesters: [{ id: 'ctl', jkt: key.jkt }],
  reporters: [{ id: 'broker-a', jwk: generateRequesterKeySync().publicJwk }],
  peers: [{ domain: 'b', url: 'http://127.0.0.1:7401', jwk: { ...key.publicJwk, kid: 'kb' } }],
  rules: [{ id: 'r1', requesters: ['ctl'], projects: ['p'], src: ['siteA'], dst: ['siteB'], maxBandwidthMbps: 100 }],
  consent: { rules: [{ id: 'c1', domains: ['b'], vms: '*', maxBandwidthMbps: 100 }] },
});

function fieldOf(doc: unknown, domain = 'a'): unknown {
  try {
    parsePolicy(doc, domain);
  } catch (e) {
    expect(e).toBeInstanceOf(VmtcError);
    expect((e as VmtcError).code).toBe('VMTC_AAA_POLICY_INVALID');
    return (e as VmtcError).details?.field;
  }
  throw new Error('expected the policy to be refused');
}

describe('AAA policy validation', () => {
  it('accepts a valid policy', () => {
    const p = parsePolicy(valid(), 'a');
    expect(p.requestersByJkt.get(key.jkt)?.id).toBe('ctl');
    expect(p.peers.get('b')?.keys.get('kb')?.x).toBe(key.publicJwk.x);
    expect(p.consentRules[0]!.who).toEqual(['b']);
  });

  it('names the field of each mistake', () => {
    const m = (f: (d: ReturnType<typeof valid>) => void) => { const d = valid(); f(d); return d; };
    expect(fieldOf(m((d) => { (d.rules[0] as Record<string, unknown>).maxBandwidthMbps = -1; }))).toBe('rules[0].maxBandwidthMbps');
    expect(fieldOf(m((d) => { delete (d.rules[0] as Record<string, unknown>).maxBandwidthMbps; }))).toBe('rules[0].maxBandwidthMbps');
    expect(fieldOf(m((d) => { d.rules[0]!.dst = ['siteZ']; }))).toBe('rules[0].dst[0]');
    expect(fieldOf(m((d) => { d.rules[0]!.requesters = ['nobody']; }))).toBe('rules[0].requesters[0]');
    expect(fieldOf(m((d) => { (d.rules[0] as Record<string, unknown>).timeOfDay = [{ start: '25:00', end: '02:00' }]; }))).toBe('rules[0].timeOfDay[0].start');
    expect(fieldOf(m((d) => { (d.rules[0] as Record<string, unknown>).timeOfDay = [{ start: '01:00', end: '02:00', days: ['funday'] }]; }))).toBe('rules[0].timeOfDay[0].days[0]');
    expect(fieldOf(m((d) => { (d.rules[0] as Record<string, unknown>).quota = { maxGrantsPerHour: 'ten' }; }))).toBe('rules[0].quota.maxGrantsPerHour');
    expect(fieldOf(m((d) => { (d.rules[0] as Record<string, unknown>).colour = 'red'; }))).toBe('rules[0].colour');
    expect(fieldOf(m((d) => { d.requesters[0]!.jkt = 'short'; }))).toBe('requesters[0].jkt');
    expect(fieldOf(m((d) => { d.requesters.push({ id: 'ctl', jkt: generateRequesterKeySync().jkt }); }))).toBe('requesters[1].id');
    expect(fieldOf(m((d) => { d.peers[0]!.jwk = { ...key.publicJwk } as never; }))).toBe('peers[0].jwk.kid');
    expect(fieldOf(m((d) => { d.peers[0]!.url = 'ftp://x'; }))).toBe('peers[0].url');
    expect(fieldOf(m((d) => { d.peers[0]!.domain = 'a'; }))).toBe('peers[0].domain');
    expect(fieldOf(m((d) => { (d.consent.rules[0] as Record<string, unknown>).requesters = ['x']; }))).toBe('consent.rules[0].requesters');
    expect(fieldOf(m((d) => { d.consent.rules[0]!.id = 'r1'; }))).toBe('consent.rules[0].id');
    expect(fieldOf(m((d) => { delete (d as Partial<typeof d>).sites; }))).toBe('sites');
    expect(fieldOf({ ...valid(), domain: 'z' })).toBe('domain');
    expect(fieldOf(valid(), 'b')).toBe('peers[0].domain');
  });

  it('reports unreadable and non-JSON files with the policy field, and startAaa refuses to start', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vmtc-aaa-pol-'));
    try {
      const f = join(dir, 'policy.json');
      writeFileSync(f, '{ not json');
      expect(() => loadPolicyFile(f, 'a')).toThrow(expect.objectContaining({ code: 'VMTC_AAA_POLICY_INVALID', details: expect.objectContaining({ field: 'policy', file: f }) }));
      expect(() => loadPolicyFile(join(dir, 'missing.json'), 'a')).toThrow(expect.objectContaining({ code: 'VMTC_AAA_POLICY_INVALID' }));
      const bad = valid();
      bad.rules[0]!.src = ['nowhere'];
      writeFileSync(f, JSON.stringify(bad));
      await expect(startAaa({ dataDir: join(dir, 'data'), domain: 'a', policyFile: f, logger: silentLogger() })).rejects.toMatchObject({ code: 'VMTC_AAA_POLICY_INVALID', details: { field: 'rules[0].src[0]', file: f } });
      // The binary prints the coded error and exits non-zero.
      const r = spawnSync(process.execPath, [join(process.cwd(), 'bin/vmtc.js'), 'aaa', '--listen', '127.0.0.1:0', '--data', join(dir, 'data'), '--domain', 'a', '--policy', f], { encoding: 'utf8', timeout: 20_000 });
      expect(r.status).toBe(1);
      expect(r.stderr).toMatch(/VMTC_AAA_POLICY_INVALID.*rules\[0\]\.src\[0\]/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('vmtc aaa (the binary)', () => {
  it('serves its JWKS and stops cleanly on SIGTERM', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vmtc-aaa-bin-'));
    const f = join(dir, 'policy.json');
    writeFileSync(f, JSON.stringify(valid()));
    const child = spawn(process.execPath, [join(process.cwd(), 'bin/vmtc.js'), 'aaa', '--listen', '127.0.0.1:0', '--data', join(dir, 'data'), '--domain', 'a', '--policy', f, '--log-level', 'warn'], { stdio: ['ignore', 'ignore', 'pipe'] });
    try {
      let stderr = '';
      const url = await new Promise<string>((resolve, reject) => {
        child.stderr!.on('data', (d: Buffer) => {
          stderr += d.toString();
          const m = /listening on (http:\/\/\S+)/.exec(stderr);
          if (m) resolve(m[1]!);
        });
        child.once('exit', (code) => reject(new Error(`exited ${code}: ${stderr}`)));
      });
      expect(stderr).toContain('aaa:a');
      const jwks = (await (await fetch(`${url}/.well-known/jwks.json`)).json()) as { keys: { kid: string; kty: string; crv: string }[] };
      expect(jwks.keys).toHaveLength(1);
      expect(jwks.keys[0]).toMatchObject({ kty: 'OKP', crv: 'Ed25519', kid: expect.any(String) });
      const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
      child.kill('SIGTERM');
      expect(await exited).toBe(0);
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('AAA policy decisions (pure)', () => {
  const p = parsePolicy(valid(), 'a');
  const none = () => ({ grantsLastHour: 0, mbitSecondsLastHour: 0 });
  const r = { migrationId: 'm', vmId: 'v', project: 'p', src: 'siteA', dst: 'siteB', bandwidthMbps: 10, window: { start: 1000, end: 2000 } };

  it('grants by the matching rule and explains the furthest-reaching refusal', () => {
    expect(decide(p.rules, 'ctl', r, none)).toEqual({ ok: true, rule: 'r1' });
    expect(decide(p.rules, 'other', r, none)).toMatchObject({ ok: false, code: 'VMTC_AAA_POLICY_DENIED', details: { field: 'requester' } });
    expect(decide(p.rules, 'ctl', { ...r, bandwidthMbps: 101 }, none)).toMatchObject({ ok: false, details: { rule: 'r1', field: 'bandwidthMbps' } });
    expect(decide([], 'ctl', r, none)).toMatchObject({ ok: false, details: { reason: 'no rule' } });
  });

  it('counts quotas including the request itself', () => {
    const q = parsePolicy({ ...valid(), rules: [{ id: 'q', requesters: '*', projects: '*', maxBandwidthMbps: 100, quota: { maxMbitSecondsPerHour: 15_000 } }] }, 'a');
    expect(decide(q.rules, 'ctl', r, () => ({ grantsLastHour: 1, mbitSecondsLastHour: 5_000 })).ok).toBe(true);
    expect(decide(q.rules, 'ctl', r, () => ({ grantsLastHour: 1, mbitSecondsLastHour: 5_001 }))).toMatchObject({ ok: false, code: 'VMTC_AAA_QUOTA_EXCEEDED', details: { field: 'quota.maxMbitSecondsPerHour' } });
  });

  it('handles time-of-day windows past midnight and by day of week', () => {
    const night = [{ startMin: 22 * 60, endMin: 2 * 60 }];
    const d = Date.UTC(2024, 0, 3) / 1000; // a Wednesday
    expect(insideTimeOfDay(night, d + 23 * 3600, d + 25 * 3600)).toBe(true);
    expect(insideTimeOfDay(night, d + 1 * 3600, d + 1.5 * 3600)).toBe(true);
    expect(insideTimeOfDay(night, d + 21 * 3600, d + 23 * 3600)).toBe(false);
    expect(insideTimeOfDay([{ startMin: 0, endMin: 24 * 60, days: [3] }], d + 3600, d + 7200)).toBe(true);
    expect(insideTimeOfDay([{ startMin: 0, endMin: 24 * 60, days: [4] }], d + 3600, d + 7200)).toBe(false);
  });

  it('lists the path domains in order without repeats', () => {
    expect(pathDomains(p, { ...r, via: ['x', 'a'] })).toEqual(['a', 'x', 'b']);
    expect(() => pathDomains(p, { ...r, src: 'nope' })).toThrow(expect.objectContaining({ code: 'VMTC_AAA_SITE_UNKNOWN', details: { field: 'src', site: 'nope' } }));
  });

  it('has a catalogue where every code is VMTC_ and has a status', () => {
    for (const [code, spec] of Object.entries(AAA_ERRORS)) {
      expect(code).toMatch(/^VMTC_[A-Z_]+$/);
      expect(spec.status).toBeGreaterThanOrEqual(400);
    }
  });
});
