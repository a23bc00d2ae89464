// The QEMU backend's destination store (docs/disks.md#qemu-cow): a qcow2 image that a
// qemu-storage-daemon exports writable over NBD while a full copy or a delta arrives (the
// source's backup job writes into it), and a small record beside it of the checkpoint it holds
// (IMAGE.vmtc.json), so a delta is only ever written onto the checkpoint it starts from.
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { clockSleep, systemClock, type Clock } from '../../../src/common/clock.ts';
import { silentLogger, type Logger } from '../../../src/common/log.ts';
import { hostError } from '../errors.ts';
import type { Checkpoint, TransferReport } from './backend.ts';
import { runOk, systemRunner, type CommandRunner } from './io.ts';
import { startStorageDaemon, type StorageDaemon } from './qemu-images.ts';
import { QmpClient } from '../qemu/qmp.ts';

/** Where the source's backup job writes: an NBD export (unix socket, or the lightpath address). */
export interface NbdDestination {
  /** The image at the destination (used there only). */
  image: string;
  exportName: string;
  nbd: { type: 'unix'; path: string } | { type: 'inet'; host: string; port: number };
}

export interface StoreRecord {
  checkpoint: Checkpoint;
  diskBytes: number;
  updatedAt: number;
}

export class QemuStore {
  private readonly run: CommandRunner;
  private readonly clock: Clock;
  private readonly netns: string | undefined;
  /** `netns`: the namespace the export's storage daemon runs in (the lightpath address is there). */
  constructor(readonly image: string, opts: { runner?: CommandRunner; clock?: Clock; netns?: string } = {}) {
    this.run = opts.runner ?? systemRunner;
    this.clock = opts.clock ?? systemClock;
    this.netns = opts.netns;
  }

  get recordPath(): string {
    return `${this.image}.vmtc.json`;
  }

  /** An empty qcow2 image of the source disk's virtual size, for a seed. */
  async create(sizeBytes: number): Promise<void> {
    if (!(Number.isSafeInteger(sizeBytes) && sizeBytes > 0)) throw hostError('VMTC_HOST_BAD_PARAMS', { field: 'sizeBytes' });
    if (existsSync(this.image)) throw hostError('VMTC_HOST_DISK_CHECKPOINT_EXISTS', { image: this.image, reason: 'the store exists; remove the old replica first' });
    await runOk(this.run, ['qemu-img', 'create', '-q', '-f', 'qcow2', this.image, String(sizeBytes)], { image: this.image });
  }

  /** The checkpoint the store holds, or null (never seeded, or a seed that did not finish). */
  async held(): Promise<StoreRecord | null> {
    try {
      return JSON.parse(await readFile(this.recordPath, 'utf8')) as StoreRecord;
    } catch {
      return null;
    }
  }

  /** Export the image for one transfer. `expect`: the checkpoint the coming delta starts from
   *  (null for a seed); a store that holds another is refused before anything is written. */
  async export(nbd: { type: 'unix' } | { type: 'inet'; host: string; port: number }, expect: Checkpoint | null, exportName = 'vmtc-replica'): Promise<{ dest: NbdDestination; daemon: StorageDaemon; close(opts?: CloseOptions): Promise<void> }> {
    if (!existsSync(this.image)) throw hostError('VMTC_HOST_DISK_NOT_FOUND', { image: this.image });
    await this.check(expect);
    const dir = await mkdtemp(join(dirname(this.image), '.vmtc-export-'));
    let daemon: StorageDaemon;
    try {
      daemon = await startStorageDaemon({ image: this.image, format: 'qcow2', dir, clock: this.clock, exportName, nbd, ...(this.netns ? { netns: this.netns } : {}) });
    } catch (e) {
      await rm(dir, { recursive: true, force: true });
      throw e;
    }
    const address: NbdDestination['nbd'] = nbd.type === 'unix' ? { type: 'unix', path: daemon.nbdSocket! } : nbd;
    return {
      dest: { image: this.image, exportName, nbd: address },
      daemon,
      close: async (o: CloseOptions = {}) => {
        if (o.waitClients) await waitForClients(daemon, this.clock, o.logger, o.waitMs ?? 10_000);
        const t0 = this.clock.now();
        await daemon.stop();
        await rm(dir, { recursive: true, force: true });
        o.logger?.info({ image: this.image, ms: this.clock.now() - t0 }, 'store daemon stopped');
      },
    };
  }

  /** After the transfer (export closed): record the checkpoint the store now holds. */
  async record(report: TransferReport): Promise<void> {
    await this.check(report.kind === 'full' ? null : report.from ?? null);
    const rec: StoreRecord = { checkpoint: report.checkpoint, diskBytes: report.diskBytes, updatedAt: this.clock.now() };
    const tmp = `${this.recordPath}.tmp`;
    await writeFile(tmp, JSON.stringify(rec) + '\n', { mode: 0o600 });
    await rename(tmp, this.recordPath);
  }

  private async check(expect: Checkpoint | null): Promise<void> {
    const held = await this.held();
    const ok = expect === null ? held === null : held !== null && held.checkpoint.id === expect.id && held.checkpoint.seq === expect.seq;
    if (!ok) throw hostError('VMTC_HOST_DISK_DELTA_REJECTED', { image: this.image, holds: held ? { id: held.checkpoint.id, seq: held.checkpoint.seq } : null, expected: expect ? { id: expect.id, seq: expect.seq } : null });
  }
}

export interface CloseOptions {
  /** Close only once no client is connected (at most `waitMs`, default 10 s): a follow cut at
   *  the VM's stop (qemu-follow.ts cutFollows) leaves writes on their way across the path, and
   *  the relay's connection ends behind them; stopping the daemon before would drop them. */
  waitClients?: boolean;
  waitMs?: number;
  logger?: Logger;
}

/** Wait until the daemon's export has no client: `block-export-del` in its safe mode refuses an
 *  export still in use, and removes it once the last client left (its requests all done). */
async function waitForClients(daemon: StorageDaemon, clock: Clock, logger: Logger | undefined, waitMs: number): Promise<void> {
  const t0 = clock.now();
  let qmp: QmpClient | undefined;
  let tries = 0;
  try {
    qmp = await QmpClient.connect(daemon.qmpSocket, { logger: logger ?? silentLogger(), clock, commandTimeoutMs: 5_000 });
    for (;;) {
      tries++;
      const ok = await qmp.execute('block-export-del', { id: 'exp0', mode: 'safe' }).then(() => true, () => false);
      if (ok || clock.now() - t0 > waitMs) {
        logger?.info({ ms: clock.now() - t0, tries, clientsLeft: ok }, ok ? 'store export closed after its last client left' : 'store export still in use: closing it anyway');
        return;
      }
      await clockSleep(clock, 2);
    }
  } catch (e) {
    logger?.warn({ err: String(e) }, 'could not wait for the store export\'s clients');
  } finally {
    qmp?.close();
  }
}
