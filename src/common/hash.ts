// SHA-256 in the encodings the code uses: hex for file names, ids and fingerprints, base64url
// for JOSE (RFC 7638 thumbprints, DPoP's ath), raw bytes for constant-time comparison.
import { createHash } from 'node:crypto';

export function sha256(data: string | Uint8Array): Buffer {
  return createHash('sha256').update(data).digest();
}

export function sha256Hex(data: string | Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

export function sha256Base64url(data: string | Uint8Array): string {
  return createHash('sha256').update(data).digest('base64url');
}
