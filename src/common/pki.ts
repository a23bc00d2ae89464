// The deployment's certificate authority (docs/design.md#trust): agents enrol with a one-time token
// and then connect over WebSocket with mutual TLS using a certificate this CA signed.
//
// Keys are generated with node:crypto (native, ~50 ms for RSA-2048) and only the X.509 work
// (building and signing certificates, reading CSRs) goes through node-forge, whose pure-JS key
// generation takes seconds and must stay off every hot path. RSA-2048 throughout: forge cannot
// read or sign with EC keys.
import { generateKeyPairSync, randomBytes, X509Certificate } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { join } from 'node:path';
import forge from 'node-forge';
import { commonError } from './errors.ts';

const pki = forge.pki;
const DAY_MS = 86_400_000;

export interface KeyAndCert {
  keyPem: string;
  certPem: string;
}

export interface Ca extends KeyAndCert {
  /** sha256 fingerprint of the CA certificate, "AB:CD:…" (what an operator compares). */
  fingerprint: string;
}

export interface CaOptions {
  commonName?: string;
  validDays?: number;
  /** Milliseconds since the epoch, for notBefore (injected clock). */
  now?: number;
}

/** A new RSA-2048 private key as PKCS#8 PEM (node:crypto, fast). */
export function generateKeyPem(): string {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
}

/**
 * A random positive serial number, 128 bits, as upper-case hex (the form Node's TLS layer reports
 * for a peer certificate, so serials compare as strings). The first byte is kept in 0x01..0x7f so
 * the DER INTEGER is positive and needs no leading zero byte.
 */
export function randomSerial(): string {
  const b = randomBytes(16);
  b[0] = (b[0]! & 0x7f) || 0x01;
  return b.toString('hex').toUpperCase();
}

/** sha256 fingerprint of a PEM certificate, colon-separated upper-case hex. */
export function fingerprint(certPem: string): string {
  return new X509Certificate(certPem).fingerprint256;
}

/** Serial number of a PEM certificate, upper-case hex without leading zeros. */
export function serialOf(certPem: string): string {
  return normaliseSerial(new X509Certificate(certPem).serialNumber);
}

export function normaliseSerial(s: string): string {
  return s.replace(/[^0-9a-fA-F]/g, '').toUpperCase().replace(/^0+(?=.)/, '');
}

function baseCert(publicKey: forge.pki.PublicKey, serial: string, now: number, validDays: number): forge.pki.Certificate {
  const cert = pki.createCertificate();
  cert.publicKey = publicKey;
  cert.serialNumber = serial;
  // Back-date a little so a peer whose clock is slightly behind still accepts the certificate.
  cert.validity.notBefore = new Date(now - 5 * 60_000);
  cert.validity.notAfter = new Date(now + validDays * DAY_MS);
  return cert;
}

function keyPair(keyPem: string): { privateKey: forge.pki.rsa.PrivateKey; publicKey: forge.pki.rsa.PublicKey } {
  const privateKey = pki.privateKeyFromPem(keyPem) as forge.pki.rsa.PrivateKey;
  const publicKey = pki.setRsaPublicKey(privateKey.n, privateKey.e);
  return { privateKey, publicKey };
}

/** Create a self-signed CA (not persisted; see loadOrCreateCa). */
export function createCa(opts: CaOptions = {}): Ca {
  const keyPem = generateKeyPem();
  const { privateKey, publicKey } = keyPair(keyPem);
  const cert = baseCert(publicKey, randomSerial(), opts.now ?? Date.now(), opts.validDays ?? 3650);
  const subject = [{ name: 'commonName', value: opts.commonName ?? 'vmtc deployment CA' }, { name: 'organizationName', value: 'vmtc' }];
  cert.setSubject(subject);
  cert.setIssuer(subject);
  cert.setExtensions([
    { name: 'basicConstraints', cA: true, critical: true, pathLenConstraint: 0 },
    { name: 'keyUsage', keyCertSign: true, cRLSign: true, critical: true },
    { name: 'subjectKeyIdentifier' },
  ]);
  cert.sign(privateKey, forge.md.sha256.create());
  const certPem = pki.certificateToPem(cert);
  return { keyPem, certPem, fingerprint: fingerprint(certPem) };
}

/**
 * Load the CA kept in `dir` (ca.key, mode 0600, and ca.crt), or create and persist one the first
 * time. Files are written to a temporary name and renamed, so a crash never leaves half a key.
 */
export function loadOrCreateCa(dir: string, opts: CaOptions = {}): Ca {
  const keyFile = join(dir, 'ca.key');
  const certFile = join(dir, 'ca.crt');
  try {
    if (existsSync(keyFile) && existsSync(certFile)) {
      const keyPem = readFileSync(keyFile, 'utf8');
      const certPem = readFileSync(certFile, 'utf8');
      // Refuse a key that does not belong to the certificate rather than issue unusable certs.
      const x = new X509Certificate(certPem);
      const { privateKey } = keyPair(keyPem);
      const pub = pki.publicKeyFromPem(x.publicKey.export({ type: 'spki', format: 'pem' }) as string) as forge.pki.rsa.PublicKey;
      if (pub.n.compareTo(privateKey.n) !== 0) throw new Error('ca.key does not match ca.crt');
      return { keyPem, certPem, fingerprint: x.fingerprint256 };
    }
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const ca = createCa(opts);
    writeAtomic(keyFile, ca.keyPem, 0o600);
    writeAtomic(certFile, ca.certPem, 0o644);
    return ca;
  } catch (e) {
    throw commonError('VMTC_CONFIG_INVALID', { field: 'data', dir, reason: (e as Error).message }, { message: `cannot load or create the CA in ${dir}`, cause: e });
  }
}

export function writeAtomic(file: string, data: string, mode: number): void {
  const tmp = `${file}.tmp-${process.pid}`;
  writeFileSync(tmp, data, { mode });
  chmodSync(tmp, mode); // the umask may have narrowed or (for 0600) must not widen it
  renameSync(tmp, file);
}

export interface ServerCertOptions {
  commonName?: string;
  /** Extra DNS names and IP addresses (mixed; IPs are recognised) beyond 127.0.0.1, ::1, localhost. */
  names?: string[];
  validDays?: number;
  now?: number;
}

/** Issue a TLS server certificate (new key) signed by the CA. */
export function issueServerCert(ca: KeyAndCert, opts: ServerCertOptions = {}): KeyAndCert {
  const keyPem = generateKeyPem();
  const { publicKey } = keyPair(keyPem);
  const caCert = pki.certificateFromPem(ca.certPem);
  const caKey = pki.privateKeyFromPem(ca.keyPem) as forge.pki.rsa.PrivateKey;
  const cert = baseCert(publicKey, randomSerial(), opts.now ?? Date.now(), opts.validDays ?? 825);
  cert.setSubject([{ name: 'commonName', value: opts.commonName ?? 'vmtc-controller' }]);
  cert.setIssuer(caCert.subject.attributes);
  const dns = new Set(['localhost']);
  const ips = new Set(['127.0.0.1', '::1']);
  for (const n of opts.names ?? []) {
    if (!n || n === '0.0.0.0' || n === '::') continue;
    if (isIP(n)) ips.add(n);
    else dns.add(n);
  }
  cert.setExtensions([
    { name: 'basicConstraints', cA: false },
    { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
    { name: 'extKeyUsage', serverAuth: true },
    { name: 'subjectAltName', altNames: [...[...dns].map((value) => ({ type: 2, value })), ...[...ips].map((ip) => ({ type: 7, ip }))] },
  ]);
  cert.sign(caKey, forge.md.sha256.create());
  return { keyPem, certPem: pki.certificateToPem(cert) };
}

/** Agent side: a new key and a CSR for it. The CN is only a hint; the CA decides the identity. */
export function makeKeyAndCsr(commonName: string): { keyPem: string; csrPem: string } {
  const keyPem = generateKeyPem();
  const { privateKey, publicKey } = keyPair(keyPem);
  const csr = pki.createCertificationRequest();
  csr.publicKey = publicKey;
  csr.setSubject([{ name: 'commonName', value: commonName }]);
  csr.sign(privateKey, forge.md.sha256.create());
  return { keyPem, csrPem: pki.certificationRequestToPem(csr) };
}

export interface ClientCertOptions {
  /** The identity: the host id the enrolment token was minted for, never the CSR's subject. */
  commonName: string;
  /** Carried as OU so the certificate says what it is for (host | tunnel). */
  organizationalUnit?: string;
  serial?: string;
  validDays?: number;
  now?: number;
}

/** Why a CSR was refused, thrown as a plain Error whose message the caller wraps in a coded error. */
export class CsrError extends Error {}

/**
 * Sign a client certificate for the public key in `csrPem`. The CSR's self-signature is checked
 * (proof that the requester holds the key); everything else in it is ignored.
 */
export function signClientCsr(ca: KeyAndCert, csrPem: string, opts: ClientCertOptions): { certPem: string; serial: string; notAfter: number } {
  let csr: forge.pki.CertificateSigningRequest;
  try {
    csr = pki.certificationRequestFromPem(csrPem);
  } catch (e) {
    throw new CsrError(`not a PEM certificate request: ${(e as Error).message}`);
  }
  let ok = false;
  try {
    ok = csr.verify();
  } catch (e) {
    throw new CsrError(`the request signature does not verify (${(e as Error).message})`);
  }
  if (!ok) throw new CsrError('the request signature does not verify');
  const pub = csr.publicKey as forge.pki.rsa.PublicKey | null;
  if (!pub || typeof pub.n?.bitLength !== 'function') throw new CsrError('the request does not carry an RSA public key');
  if (pub.n.bitLength() < 2048) throw new CsrError('the RSA key is shorter than 2048 bits');

  const caCert = pki.certificateFromPem(ca.certPem);
  const caKey = pki.privateKeyFromPem(ca.keyPem) as forge.pki.rsa.PrivateKey;
  const serial = opts.serial ?? randomSerial();
  const cert = baseCert(pub, serial, opts.now ?? Date.now(), opts.validDays ?? 825);
  const subject: forge.pki.CertificateField[] = [{ name: 'commonName', value: opts.commonName }];
  if (opts.organizationalUnit) subject.push({ name: 'organizationalUnitName', value: opts.organizationalUnit });
  cert.setSubject(subject);
  cert.setIssuer(caCert.subject.attributes);
  cert.setExtensions([
    { name: 'basicConstraints', cA: false },
    { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
    // serverAuth too: a host agent also serves its VM's disks to another agent over mutual TLS
    // during a cold migration (agents/host/cold/), with this same certificate.
    { name: 'extKeyUsage', clientAuth: true, serverAuth: true },
  ]);
  cert.sign(caKey, forge.md.sha256.create());
  return { certPem: pki.certificateToPem(cert), serial: normaliseSerial(serial), notAfter: cert.validity.notAfter.getTime() };
}
