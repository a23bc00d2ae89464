// Listen addresses as the command lines and options files write them. Kept apart from http.ts
// (which loads fastify) so an agent can parse its own listen options without a web framework.
import { commonError } from './errors.ts';

/** Parse "HOST:PORT" (IPv6 as [::1]:PORT; port 0 = any free one); the field name goes into the
 *  VMTC_CONFIG_INVALID error. */
export function parseListen(value: string, field: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(value);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) {
    throw commonError('VMTC_CONFIG_INVALID', { field, value, expected: 'HOST:PORT' }, { message: `${field} must be HOST:PORT` });
  }
  return { host: (m[1] ?? m[2])!, port };
}
