// The shape of a cold export as it reaches the destination: it crosses the controller, and its
// ids name files in the disk store, so it is checked before anything is fetched.
import type { ColdDisk, ColdExport, VmSpec } from '../../../src/common/agent-protocol.ts';
import { hostError } from '../errors.ts';
import { SAFE_NAME } from './shared.ts';

/** The shape of an export, checked before anything is fetched (it crosses the controller). */
export function checkExport(exp: unknown): asserts exp is ColdExport {
  const bad = (field: string, reason?: string): never => {
    throw hostError('VMTC_HOST_BAD_PARAMS', { field: `export.${field}`, ...(reason ? { reason } : {}) });
  };
  if (!exp || typeof exp !== 'object' || Array.isArray(exp)) bad('', 'an object is required');
  const e = exp as Record<string, unknown>;
  for (const k of ['migrationId', 'vmId', 'sourceHostId', 'destinationHostId'] as const) if (typeof e[k] !== 'string' || !e[k]) bad(k);
  // Both name files in the disk store: no separators, no dot-names.
  if (!SAFE_NAME.test(e.migrationId as string)) bad('migrationId', 'letters, digits, dot, dash, underscore; 1-128');
  if (!SAFE_NAME.test(e.vmId as string)) bad('vmId', 'letters, digits, dot, dash, underscore; 1-128');
  const spec = e.spec as VmSpec | undefined;
  if (!spec || typeof spec !== 'object' || spec.vmId !== e.vmId) bad('spec', 'a VmSpec of the same vmId is required');
  if (typeof e.expiresAt !== 'number') bad('expiresAt');
  for (const k of ['sourceCertSerials', 'destinationCertSerials'] as const) {
    const v = e[k];
    if (v !== undefined && !(Array.isArray(v) && v.every((x) => typeof x === 'string'))) bad(k, 'an array of hex serials');
  }
  if (e.replica !== undefined) {
    const r = e.replica as { replicaId?: unknown } | null;
    if (!r || typeof r !== 'object' || typeof r.replicaId !== 'string' || !/^[A-Za-z0-9_-]{1,40}$/.test(r.replicaId)) bad('replica.replicaId', 'a replica id');
  }
  if (!Array.isArray(e.disks)) bad('disks');
  const disks = e.disks as ColdDisk[];
  const specDisks = spec!.disks ?? [];
  if (disks.length !== specDisks.length) bad('disks', 'one entry per disk of the spec');
  for (const [i, d] of disks.entries()) {
    if (!d || typeof d !== 'object') bad(`disks[${i}]`);
    if (d.index !== i) bad(`disks[${i}].index`);
    if (typeof d.url !== 'string') bad(`disks[${i}].url`);
    if (d.format !== 'raw' && d.format !== 'qcow2') bad(`disks[${i}].format`);
    if (!(Number.isSafeInteger(d.sizeBytes) && d.sizeBytes >= 0)) bad(`disks[${i}].sizeBytes`);
    // Booting from a replica fetches nothing: its export may come without checksums (empty).
    if (typeof d.sha256 !== 'string' || !(/^[0-9a-f]{64}$/.test(d.sha256) || (e.replica !== undefined && d.sha256 === ''))) bad(`disks[${i}].sha256`);
  }
}
