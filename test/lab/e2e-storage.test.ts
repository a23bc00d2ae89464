// Live migration without shared storage, end to end in the lab: the guest has a qcow2 data disk
// that only its site holds; the controller has the destination make an empty copy served over
// NBD on the lightpath address, the source mirrors into it (bulk, then the blocks written since,
// the last delta at the pause) and migrates RAM; every service is a real process. The guest runs
// the dirty load, which verifies its memory; after each move it must be intact
// (lab/stack.ts assertGuestIntact).
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { assertGuestIntact, markGuestConsoles, startStack, type Stack } from '../../lab/stack.ts';
import { netnsExec, tunnelSites } from '../../lab/net.ts';
import { run } from '../../lab/exec.ts';

let s: Stack | undefined;

beforeAll(async () => {
  s = await startStack({ rttMs: 20, rateMbps: 1000, memoryMb: 128, diskMb: 32, guest: { dirtyMb: 16, dirtyPeriodMs: 500 } });
}, 300_000);

afterAll(async () => {
  await s?.close();
}, 120_000);

const sha = (p: string) => createHash('sha256').update(readFileSync(p)).digest('hex');

describe('live migration with the disk copied (no shared storage)', () => {
  it('moves the VM and its disk A → B and back; each copy holds what the source held', async () => {
    const [a, b] = [s!.lab.sites[0]!.name, s!.lab.sites[1]!.name];
    const original = join(s!.dir, `${s!.vmId}-data.qcow2`);
    const before = sha(original);
    let from = original;
    for (const to of [b, a]) {
      const marks = markGuestConsoles(s!);
      const rec = await s!.migrate(to, { bandwidthMbps: 900, maxDowntimeMs: 300 });
      expect({ state: rec.state, error: rec.error }).toEqual({ state: 'completed', error: null });
      // The destination offered its copy over NBD on its lightpath address; the source mirrored it.
      expect(rec.steps!.incoming!.storage!.exports).toHaveLength(1);
      expect(rec.result!.storageBytes).toBeGreaterThanOrEqual(8 * 1024 * 1024);
      expect(await s!.vmPlaces()).toEqual([{ hostId: s!.hostOf(to), state: 'running' }]);
      expect(await tunnelSites(s!.lab)).toEqual([to]);
      await netnsExec(s!.lab.client.ns, ['ping', '-c', '2', '-i', '0.2', '-W', '2', s!.lab.vm.ip]);
      expect((await assertGuestIntact(s!, { marks })).memory).toMatchObject({ verified: true });
      // The VM now runs from a copy under the destination agent's own directory.
      const copies = join(s!.agentDataDir(s!.hostOf(to)), 'qemu', 'disks', s!.vmId);
      const files = readdirSync(copies);
      expect(files).toEqual([expect.stringMatching(new RegExp(`^${rec.id}-disk0\\.qcow2$`))]);
      const copy = join(copies, files[0]!);
      // …and QEMU there has it open (its command line names it).
      const pid = Number(readFileSync(join(s!.agentDataDir(s!.hostOf(to)), 'qemu', 'vms', s!.vmId, 'qemu.pid'), 'utf8').trim());
      expect(readFileSync(`/proc/${pid}/cmdline`, 'utf8')).toContain(copy);
      // Same guest-visible content as the original (this guest never writes to it; -U: the
      // running QEMU holds the image's lock).
      await run(['qemu-img', 'compare', '-U', original, copy]);
      await run(['qemu-io', '-U', '-r', '-f', 'qcow2', '-c', 'read -P 0x5a 0 8M', copy]);
      // A copy the agent made goes with the VM it belonged to; the operator's image stays.
      if (from !== original) expect(existsSync(from)).toBe(false);
      from = copy;
    }
    expect(sha(original)).toBe(before);
  });
});
