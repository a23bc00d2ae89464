// Keys, accounting and the admin credential live in DIR and survive a restart: a token issued
// before the restart still verifies against the JWKS after it, and quotas still count.
import { describe, it, expect } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLocalJWKSet, jwtVerify } from 'jose';
import { silentLogger } from '../../src/common/log.ts';
import { generateRequesterKey } from '../../src/common/dpop.ts';
import { startAaa, type AaaHandle } from '../../src/aaa/index.ts';
import { requestAuthorization, queryAccounting } from '../../src/aaa/client.ts';

describe('AAA restart', () => {
  it('keeps its key, its accounting and its quotas across a restart', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vmtc-aaa-restart-'));
    const ctl = await generateRequesterKey();
    const policy = {
      sites: { s1: 'a', s2: 'a' },
      requesters: [{ id: 'ctl', jkt: ctl.jkt }],
      rules: [{ id: 'r', requesters: ['ctl'], vms: ['vm-1'], maxBandwidthMbps: 100, quota: { maxGrantsPerHour: 1 } }],
    };
    const now = () => Math.floor(Date.now() / 1000);
    const body = { migrationId: 'm-r', vmId: 'vm-1', project: 'p', src: 's1', dst: 's2', bandwidthMbps: 10, window: { start: now(), end: now() + 60 } };
    let h: AaaHandle | undefined;
    try {
      h = await startAaa({ dataDir: dir, domain: 'a', policy, logger: silentLogger() });
      const first = await requestAuthorization(h.url, ctl, body);
      const kid = h.keys.signing().kid;
      const admin = h.adminToken;
      await h.close();
      h = await startAaa({ dataDir: dir, domain: 'a', policy, logger: silentLogger() });
      expect(h.keys.signing().kid).toBe(kid);
      expect(h.adminToken).toBe(admin);
      await expect(jwtVerify(first.token, createLocalJWKSet(h.jwks() as never), { issuer: 'aaa:a', audience: 'broker:a' })).resolves.toBeTruthy();
      // The grant before the restart still counts against the quota of one per hour.
      await expect(requestAuthorization(h.url, ctl, body)).rejects.toMatchObject({ code: 'VMTC_AAA_QUOTA_EXCEEDED' });
      const { events } = await queryAccounting(h.url, ctl, { migrationId: 'm-r' });
      expect(events.map((e) => [e.kind, e.jti === first.jti])).toEqual([['grant', true], ['refusal', false]]);
    } finally {
      await h?.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
