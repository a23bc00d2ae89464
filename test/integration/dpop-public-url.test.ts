// The DPoP `htu` a proof must name is the service's configured public URL plus the route's path,
// never something built from the request's Host header (src/common/public-url.ts): a real AAA and
// a real broker on port 0, requests sent with forged Host headers.
import { describe, it, expect } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ManualClock } from '../../src/common/clock.ts';
import { silentLogger } from '../../src/common/log.ts';
import { VmtcError } from '../../src/common/errors.ts';
import { requestJson } from '../../src/common/http-client.ts';
import { parseCommandArgs, type Command } from '../../src/common/command.ts';
import { generateRequesterKeySync, makeDpopProofSync } from '../../src/common/dpop.ts';
import { startAaa, type AaaOptions } from '../../src/aaa/index.ts';
import { command as aaaCommand } from '../../src/aaa/command.ts';
import { startBroker, type BrokerOptions } from '../../src/broker/index.ts';
import { command as brokerCommand } from '../../src/broker/command.ts';
import { MemoryDoubleDriver } from '../../src/broker/drivers/memory-double.ts';
import { cleanupsAfterEach } from '../helpers/cleanups.ts';
import { holderKey, joseProof, lineTopology, makeIssuer, mintToken } from '../helpers/broker-helpers.ts';

const cleanups = cleanupsAfterEach();
const clock = new ManualClock(Date.now());
const nowSec = () => Math.floor(clock.now() / 1000);
const ctl = generateRequesterKeySync();
const POLICY = {
  version: 1,
  sites: { a1: 'a', a3: 'a' },
  requesters: [{ id: 'ctl', jkt: ctl.jkt }],
  rules: [{ id: 'any', requesters: ['ctl'], projects: '*', maxBandwidthMbps: 1000 }],
};
const lightpath = (migrationId: string) => ({
  migrationId, vmId: 'vm-1', project: 'p', src: 'a1', dst: 'a3', bandwidthMbps: 100, window: { start: nowSec(), end: nowSec() + 600 },
});

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'vmtc-htu-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

async function aaa(over: Partial<AaaOptions> = {}) {
  const h = await startAaa({ dataDir: tempDir(), domain: 'a', clock, logger: silentLogger(), policy: POLICY, ...over });
  cleanups.push(() => h.close());
  return h;
}

async function broker(over: Partial<BrokerOptions> = {}) {
  const issuer = await makeIssuer('a');
  const b = await startBroker({
    dataDir: tempDir(), domain: 'a', topology: lineTopology(), driver: new MemoryDoubleDriver(), clock, logger: silentLogger(),
    trust: { issuers: [{ iss: issuer.iss, jwks: { keys: [issuer.publicJwk] } }] }, ...over,
  });
  cleanups.push(() => b.close());
  return { b, issuer };
}

async function configError(p: Promise<unknown>): Promise<VmtcError> {
  const e = await p.then(() => undefined, (x: unknown) => x);
  expect(e).toBeInstanceOf(VmtcError);
  expect((e as VmtcError).code).toBe('VMTC_CONFIG_INVALID');
  return e as VmtcError;
}

describe('DPoP htu from the public URL', () => {
  it('AAA, default public URL: a proof naming a forged Host is refused, one naming the listen URL is accepted whatever Host says', async () => {
    const h = await aaa();
    expect(h.publicUrl).toBe(h.url);
    const url = `${h.url}/v1/authorizations`;
    const post = (dpop: string, host: string, migrationId: string) => requestJson(url, { method: 'POST', body: lightpath(migrationId), headers: { host, dpop } });
    const forged = await post(makeDpopProofSync(ctl, 'POST', 'http://evil.example:8080/v1/authorizations', undefined, { now: clock.now() }), 'evil.example:8080', 'm1');
    expect(forged.status).toBe(401);
    expect(forged.body).toMatchObject({ code: 'VMTC_AAA_PROOF_INVALID', details: { reason: 'htu', expected: url } });
    const genuine = await post(makeDpopProofSync(ctl, 'POST', url, undefined, { now: clock.now() }), 'other.example', 'm2');
    expect(genuine.status).toBe(201);
  });

  it('AAA behind a proxy: proofs name the configured public URL (with its path prefix), not what reaches the server', async () => {
    const h = await aaa({ publicUrl: 'https://AAA.example.org:443/aaa/' });
    expect(h.publicUrl).toBe('https://aaa.example.org/aaa');
    const url = `${h.url}/v1/authorizations`;
    const post = (dpop: string, host: string, migrationId: string) => requestJson(url, { method: 'POST', body: lightpath(migrationId), headers: { host, dpop } });
    const viaHost = await post(makeDpopProofSync(ctl, 'POST', url, undefined, { now: clock.now() }), new URL(h.url).host, 'm3');
    expect(viaHost.body).toMatchObject({ code: 'VMTC_AAA_PROOF_INVALID', details: { reason: 'htu' } });
    const viaPublic = await post(makeDpopProofSync(ctl, 'POST', 'https://aaa.example.org/aaa/v1/authorizations', undefined, { now: clock.now() }), 'whatever.example', 'm4');
    expect(viaPublic.status).toBe(201);
  });

  it('broker: a proof naming a forged Host is refused, one naming the public URL is accepted whatever Host says', async () => {
    const { b, issuer } = await broker({ publicUrl: 'https://broker.example.net' });
    expect(b.publicUrl).toBe('https://broker.example.net');
    const holder = holderKey();
    const scope = { migrationId: 'mig', vmId: 'vm-1', project: 'p', src: 'a1', dst: 'a3', bandwidthMbps: 100, window: { start: nowSec(), end: nowSec() + 600 }, domains: ['a'] };
    const body = { src: 'a1', dst: 'a3', bandwidthMbps: 100, window: { start: nowSec(), end: nowSec() + 600 } };
    const url = `${b.url}/v1/reservations`;
    const token = await mintToken(issuer, { holder, scope, now: nowSec() });
    const post = async (htu: string, host: string) => requestJson(url, { method: 'POST', body, headers: { host, authorization: `DPoP ${token}`, dpop: await joseProof(holder, 'POST', htu, token, nowSec()) } });
    const forged = await post('http://evil.example/v1/reservations', 'evil.example');
    expect(forged.status).toBe(401);
    expect(forged.body).toMatchObject({ code: 'VMTC_DPOP_PROOF_INVALID', details: { reason: 'htu', expected: 'https://broker.example.net/v1/reservations' } });
    const direct = await post(url, new URL(b.url).host);
    expect(direct.body).toMatchObject({ code: 'VMTC_DPOP_PROOF_INVALID', details: { reason: 'htu' } });
    const genuine = await post('https://broker.example.net/v1/reservations', 'elsewhere.example');
    expect(genuine.status).toBe(201);
  });

  it('broker, default public URL: the listen URL; a forged Host does not change it', async () => {
    const { b, issuer } = await broker();
    expect(b.publicUrl).toBe(b.url);
    const holder = holderKey();
    const token = await mintToken(issuer, { holder, scope: { migrationId: 'mig', vmId: 'vm-1', project: 'p', src: 'a1', dst: 'a3', bandwidthMbps: 100, window: { start: nowSec(), end: nowSec() + 600 }, domains: ['a'] }, now: nowSec() });
    const res = await requestJson(`${b.url}/v1/reservations`, {
      method: 'POST', body: { src: 'a1', dst: 'a3', bandwidthMbps: 100, window: { end: nowSec() + 600 } },
      headers: { host: 'evil.example', authorization: `DPoP ${token}`, dpop: await joseProof(holder, 'POST', 'http://evil.example/v1/reservations', token, nowSec()) },
    });
    expect(res.body).toMatchObject({ code: 'VMTC_DPOP_PROOF_INVALID', details: { reason: 'htu' } });
  });

  it('refuses a bad public URL, and a missing one on a wildcard listen address, naming the field', async () => {
    for (const publicUrl of ['ftp://aaa.example', 'not a url', 'http://aaa.example/?x=1', 'http://user:pw@aaa.example', 'http://aaa.example/#f']) {
      expect((await configError(aaa({ publicUrl }))).details).toMatchObject({ field: 'publicUrl', value: publicUrl });
      expect((await configError(broker({ publicUrl }))).details).toMatchObject({ field: 'publicUrl', value: publicUrl });
    }
    expect((await configError(aaa({ host: '0.0.0.0' }))).details).toMatchObject({ field: 'publicUrl', listen: '0.0.0.0' });
    expect((await configError(broker({ listen: '[::]:0' }))).details).toMatchObject({ field: 'publicUrl', listen: '::' });
  });

  it('takes --public-url on the command line of vmtc aaa and vmtc broker', async () => {
    const dir = tempDir();
    const policy = join(dir, 'policy.json');
    writeFileSync(policy, JSON.stringify(POLICY));
    const run = (cmd: Command, args: string[]) => cmd.run(parseCommandArgs(cmd, args).values, []);
    const aaaErr = await configError(run(aaaCommand, ['--listen', '127.0.0.1:0', '--data', join(dir, 'aaa'), '--domain', 'a', '--policy', policy, '--public-url', 'ftp://x', '--log-level', 'silent']));
    expect(aaaErr.details).toMatchObject({ field: 'publicUrl', value: 'ftp://x' });
    const brokerErr = await configError(run(brokerCommand, ['--listen', '127.0.0.1:0', '--data', join(dir, 'broker'), '--domain', 'a', '--topology', join(dir, 'none.json'), '--trust', join(dir, 'none.json'), '--public-url', 'ftp://x']));
    expect(brokerErr.details).toMatchObject({ field: 'publicUrl', value: 'ftp://x' });
  });
});
