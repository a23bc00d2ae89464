import { describe, it, expect, afterAll } from 'vitest';
import { statSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { loadOrCreateCa, issueServerCert, makeKeyAndCsr, signClientCsr, fingerprint, serialOf, CsrError, createCa } from '../../src/common/pki.ts';
import { tempDir } from '../helpers/agent-fixture.ts';

const dirs: string[] = [];
afterAll(() => { for (const d of dirs) rmSync(d, { recursive: true, force: true }); });

describe('pki', () => {
  it('persists the CA (key 0600) and loads the same one again', () => {
    const dir = tempDir('vmtc-pki-'); dirs.push(dir);
    const ca = loadOrCreateCa(join(dir, 'pki'));
    expect(statSync(join(dir, 'pki', 'ca.key')).mode & 0o777).toBe(0o600);
    const again = loadOrCreateCa(join(dir, 'pki'));
    expect(again.fingerprint).toBe(ca.fingerprint);
    expect(again.certPem).toBe(ca.certPem);
    const x = new X509Certificate(ca.certPem);
    expect(x.ca).toBe(true);
    expect(x.checkIssued(x)).toBe(true);
  });

  it('refuses a CA key that does not match its certificate', () => {
    const dir = tempDir('vmtc-pki-'); dirs.push(dir);
    loadOrCreateCa(dir);
    writeFileSync(join(dir, 'ca.key'), createCa().keyPem);
    expect(() => loadOrCreateCa(dir)).toThrow(expect.objectContaining({ code: 'VMTC_CONFIG_INVALID' }));
  });

  it('issues a server certificate for loopback names plus extra ones', () => {
    const ca = createCa();
    const s = issueServerCert(ca, { names: ['203.0.113.7', 'controller.example'] });
    const x = new X509Certificate(s.certPem);
    expect(x.verify(new X509Certificate(ca.certPem).publicKey)).toBe(true);
    expect(x.checkIP('127.0.0.1')).toBe('127.0.0.1');
    expect(x.checkIP('::1')).toBeDefined();
    expect(x.checkIP('203.0.113.7')).toBe('203.0.113.7');
    expect(x.checkHost('localhost')).toBe('localhost');
    expect(x.checkHost('controller.example')).toBe('controller.example');
    expect(x.checkHost('evil.example')).toBeUndefined();
  });

  it('signs a client certificate whose CN is the given host id, not the CSR subject, with unique serials', () => {
    const ca = createCa();
    const { keyPem, csrPem } = makeKeyAndCsr('i-am-someone-else');
    const serials = new Set<string>();
    for (let i = 0; i < 5; i++) {
      const c = signClientCsr(ca, csrPem, { commonName: 'host-a', organizationalUnit: 'host' });
      const x = new X509Certificate(c.certPem);
      expect(x.subject).toContain('CN=host-a');
      expect(x.subject).not.toContain('someone-else');
      expect(x.checkIssued(new X509Certificate(ca.certPem))).toBe(true);
      expect(x.checkPrivateKey(createPrivateKey(keyPem))).toBe(true);
      expect(serialOf(c.certPem)).toBe(c.serial);
      serials.add(c.serial);
    }
    expect(serials.size).toBe(5);
    expect(fingerprint(ca.certPem)).toMatch(/^([0-9A-F]{2}:){31}[0-9A-F]{2}$/);
  });

  it('refuses garbage and a CSR whose signature does not verify', () => {
    const ca = createCa();
    expect(() => signClientCsr(ca, 'garbage', { commonName: 'h' })).toThrow(CsrError);
    // Flip a bit of the signature (the last bytes of the DER): the self-signature no longer verifies.
    const { csrPem } = makeKeyAndCsr('x');
    const der = Buffer.from(csrPem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, ''), 'base64');
    der[der.length - 1]! ^= 0x01;
    const tampered = `-----BEGIN CERTIFICATE REQUEST-----\n${der.toString('base64').replace(/(.{64})/g, '$1\n')}\n-----END CERTIFICATE REQUEST-----\n`;
    expect(() => signClientCsr(ca, tampered, { commonName: 'h' })).toThrow(/does not verify/);
    expect(() => signClientCsr(ca, csrPem, { commonName: 'h' })).not.toThrow();
  });
});

