// Disks of VMs for the replica tests with DoubleDriver (its replica double reads the spec's disk
// files as bytes): a real file of random data then zeros, and writes into it as a guest's would
// land. Not a test file.
import { randomBytes } from 'node:crypto';
import { closeSync, mkdirSync, openSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { expect } from 'vitest';
import { vmSpec, type Harness } from './controller-harness.ts';

const MiB = 1024 * 1024;

/** A VM whose one disk is a real file: `dataMb` MiB of random bytes, then zeros up to `sizeMb`. */
export function diskVm(harness: Harness, vmId: string, dataMb: number, sizeMb: number) {
  const dir = join(harness.dir, 'images');
  mkdirSync(dir, { recursive: true });
  const path = join(dir, `${vmId}.img`);
  writeFileSync(path, Buffer.concat([randomBytes(dataMb * MiB), Buffer.alloc((sizeMb - dataMb) * MiB)]));
  return { spec: { ...vmSpec(vmId), disks: [{ path, format: 'raw' as const }] }, path };
}

export function writeAt(path: string, offset: number, data: Buffer): void {
  const fd = openSync(path, 'r+');
  try {
    writeSync(fd, data, 0, data.length, offset);
  } finally {
    closeSync(fd);
  }
}

/** Ask for a replica of `vmId` at `to` (no periodic delta for an hour) and wait until it is warm;
 *  its id. */
export async function warmReplica(harness: Harness, vmId: string, to = 'B'): Promise<string> {
  const res = await harness.api('POST', `/v1/vms/${vmId}/replicas`, { destinationHostId: to, intervalS: 3600 });
  expect(res.status).toBe(202);
  await harness.waitFor(async () => (await harness.api('GET', `/v1/vms/${vmId}/replicas/${res.body.id}`)).body.state === 'warm', 'replica warm');
  return res.body.id as string;
}

/** Every request the controller sends a host from now on, in order, as `method@host` (a
 *  `replica.digest` also says `keep` or `since`); `each` runs before a request is passed on. */
export function traceRequests(harness: Harness, each?: (method: string, hostId: string) => void): string[] {
  const hub = harness.controller.hub;
  const sent: string[] = [];
  const request = hub.request.bind(hub);
  hub.request = ((hostId: string, method: string, params: any, timeoutMs?: number) => {
    sent.push(method === 'replica.digest' ? `replica.digest${params?.keepAs ? ' keep' : params?.since ? ' since' : ''}@${hostId}` : `${method}@${hostId}`);
    each?.(method, hostId);
    return (request as any)(hostId, method, params, timeoutMs);
  }) as typeof hub.request;
  return sent;
}
