// The base URL clients use to reach a service, for checking the `htu` of DPoP proofs (RFC 9449
// §4.3 step 9). The expected htu is this configured URL plus the request's path, never the
// request's Host header: the header is whatever the client chose to send, so building the
// expected URL from it would let a proof made for one URL pass at another. Shared by the AAA and
// the broker.
import { commonError } from './errors.ts';

const WILDCARDS = new Set(['', '0.0.0.0', '::', '[::]']);

/**
 * Check a configured public URL: http(s), no credentials, query or fragment; a path prefix is
 * allowed (a proxy serving the service under /aaa/). Returned without a trailing slash. Bad ones
 * are VMTC_CONFIG_INVALID naming `field`.
 */
export function parsePublicUrl(value: unknown, field = 'publicUrl'): string {
  const bad = (reason: string): never => {
    throw commonError('VMTC_CONFIG_INVALID', { field, value, reason }, { message: `${field} ${reason}` });
  };
  if (typeof value !== 'string' || value === '') bad('must be a URL such as https://aaa.example.org');
  let u: URL;
  try {
    u = new URL(value as string);
  } catch {
    return bad('must be a URL such as https://aaa.example.org');
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') bad('must be an http or https URL');
  if (u.username || u.password) bad('must not carry credentials');
  if (u.search || u.hash || (value as string).includes('?') || (value as string).includes('#')) bad('must not have a query or a fragment');
  return `${u.protocol}//${u.host}${u.pathname.replace(/\/+$/, '')}`;
}

/**
 * The public URL of a service: the configured one, else scheme://HOST:PORT of the listen address
 * (`port` is the one actually bound, so port 0 works). A wildcard listen host (0.0.0.0, ::) names
 * no address a client could use, so there the URL must be configured.
 */
export function resolvePublicUrl(configured: string | undefined, listen: { scheme: 'http' | 'https'; host: string; port: number }, field = 'publicUrl'): string {
  if (configured !== undefined) return parsePublicUrl(configured, field);
  requirePublicUrlFor(listen.host, field);
  const host = listen.host.includes(':') && !listen.host.startsWith('[') ? `[${listen.host}]` : listen.host;
  return parsePublicUrl(`${listen.scheme}://${host}:${listen.port}`, field);
}

/** Fail at start (before binding) when the default cannot be derived from the listen host. */
export function requirePublicUrlFor(listenHost: string, field = 'publicUrl'): void {
  if (WILDCARDS.has(listenHost)) {
    throw commonError('VMTC_CONFIG_INVALID', { field, listen: listenHost, reason: 'required when listening on a wildcard address' }, {
      message: `${field} is required when listening on ${listenHost || 'all addresses'}: clients' proofs name the URL they use`,
    });
  }
}

/** The URL a client addressed, as its proof's htu must name it: the public URL plus the request's path (query dropped). */
export function expectedHtu(publicUrl: string, requestUrl: string): string {
  const path = requestUrl.split('?')[0]!.split('#')[0]!;
  return `${publicUrl}${path.startsWith('/') ? path : `/${path}`}`;
}
