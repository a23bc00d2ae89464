// The host agent's journal of the live migrations it runs as a source, kept in its data
// directory (DIR/migrations.json) so that a restarted agent still answers vm.migrationStatus
// truthfully: the controller acts on that answer, and a migration the agent forgot would otherwise
// hold its capacity and lightpath until the deadline (docs/design.md#restart). One entry per VM
// (the last migration of it): which migration, its last known progress, and the result once
// known. Written atomically (temporary file, fsync, rename) whenever the status changes; byte
// counts between status changes stay in memory. Time comes from the injected clock.
import { mkdir, open, readFile, rename } from 'node:fs/promises';
import { join } from 'node:path';
import type { MigrationProgress, MigrationResult, VmState } from '../../src/common/agent-protocol.ts';
import type { Clock } from '../../src/common/clock.ts';
import type { Logger } from '../../src/common/log.ts';
import { HOST_ERRORS } from './errors.ts';

export const JOURNAL_FILE = 'migrations.json';

export const JOURNAL_DEFAULTS = {
  /** Entries not touched for this long are dropped (at open and at every write). */
  maxAgeMs: 7 * 24 * 3_600_000,
} as const;

export interface JournalEntry {
  migrationId: string;
  vmId: string;
  startedAt: number;
  updatedAt: number;
  /** The last progress the hypervisor reported. */
  progress?: MigrationProgress;
  /** How it ended, once known. */
  result?: MigrationResult;
}

export interface JournalOptions {
  dataDir: string;
  clock: Clock;
  maxAgeMs?: number;
  logger?: Logger;
}

interface FileShape {
  version: 1;
  entries: JournalEntry[];
}

export class MigrationJournal {
  private readonly entries = new Map<string, JournalEntry>();
  /** VMs whose unfinished migration an earlier process of the agent started: nobody here
   *  awaits its end, so it is settled from what the hypervisor says (inheritedOutcome). */
  private readonly inherited = new Set<string>();
  private readonly file: string;
  private readonly maxAgeMs: number;
  private writing: Promise<void> = Promise.resolve();
  private closed = false;

  private constructor(private readonly o: JournalOptions) {
    this.file = join(o.dataDir, JOURNAL_FILE);
    this.maxAgeMs = o.maxAgeMs ?? JOURNAL_DEFAULTS.maxAgeMs;
  }

  /** Read the journal a previous process left (a missing file is an empty journal; an
   *  unreadable one is logged and replaced). */
  static async open(o: JournalOptions): Promise<MigrationJournal> {
    const j = new MigrationJournal(o);
    await mkdir(o.dataDir, { recursive: true });
    let text: string | undefined;
    try {
      text = await readFile(j.file, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    if (text !== undefined) {
      try {
        const f = JSON.parse(text) as FileShape;
        for (const e of f.entries ?? []) {
          if (typeof e?.vmId === 'string' && typeof e.migrationId === 'string' && typeof e.updatedAt === 'number') j.entries.set(e.vmId, e);
        }
      } catch (e) {
        o.logger?.warn({ file: j.file, err: String(e) }, 'migration journal unreadable; starting a new one');
      }
    }
    for (const e of j.entries.values()) if (!e.result) j.inherited.add(e.vmId);
    if (j.prune()) await j.persist();
    return j;
  }

  get(vmId: string): JournalEntry | undefined {
    const e = this.entries.get(vmId);
    return e ? structuredClone(e) : undefined;
  }

  /** An unfinished migration of this VM that an earlier agent process started. */
  isInherited(vmId: string): boolean {
    return this.inherited.has(vmId) && !this.entries.get(vmId)?.result;
  }

  /** VMs with an inherited unfinished migration. */
  inheritedVms(): string[] {
    return [...this.inherited].filter((vmId) => this.isInherited(vmId));
  }

  /** Record a migration before the hypervisor is asked to start it (it replaces the VM's last
   *  entry). Resolves once it is on disk. */
  async begin(vmId: string, migrationId: string): Promise<void> {
    if (this.closed) return;
    const now = this.o.clock.now();
    this.inherited.delete(vmId);
    this.entries.set(vmId, {
      migrationId, vmId, startedAt: now, updatedAt: now,
      progress: { migrationId, vmId, status: 'setup', totalBytes: 0, transferredBytes: 0, remainingBytes: 0 },
    });
    await this.persist();
  }

  /** The latest progress; written to disk when its status differs from the last one. */
  progress(p: MigrationProgress): void {
    const e = this.entries.get(p.vmId);
    if (this.closed || !e || e.migrationId !== p.migrationId || e.result) return;
    const changed = e.progress?.status !== p.status;
    e.progress = structuredClone(p);
    if (changed) {
      e.updatedAt = this.o.clock.now();
      void this.persist().catch(() => undefined);
    }
  }

  /** The migration ended: record its result. Resolves once it is on disk. */
  async finish(r: MigrationResult): Promise<void> {
    const e = this.entries.get(r.vmId);
    if (this.closed || !e || e.migrationId !== r.migrationId) return;
    e.result = structuredClone(r);
    e.updatedAt = this.o.clock.now();
    this.inherited.delete(r.vmId);
    await this.persist();
  }

  /** Drop the VM's entry (the VM was destroyed here, or resumed after its migration ended: the
   *  controller no longer asks). With `onlyFinished`, an entry still running is kept. */
  async forget(vmId: string, opts: { onlyFinished?: boolean } = {}): Promise<void> {
    const e = this.entries.get(vmId);
    if (this.closed || !e || (opts.onlyFinished && !e.result)) return;
    this.entries.delete(vmId);
    this.inherited.delete(vmId);
    await this.persist();
  }

  /** Wait for pending writes; later changes are ignored (a closed agent's migration ending
   *  in the background must not overwrite what its successor wrote). */
  async close(): Promise<void> {
    this.closed = true;
    await this.writing.catch(() => undefined);
  }

  private prune(): boolean {
    const cutoff = this.o.clock.now() - this.maxAgeMs;
    let dropped = false;
    for (const [vmId, e] of this.entries) {
      if (e.updatedAt < cutoff) {
        this.entries.delete(vmId);
        this.inherited.delete(vmId);
        dropped = true;
      }
    }
    return dropped;
  }

  /** Queue a write of the whole journal (writes run one at a time, each of the latest state). */
  private persist(): Promise<void> {
    const run = this.writing.then(() => this.write());
    this.writing = run.catch((e: unknown) => this.o.logger?.warn({ file: this.file, err: String(e) }, 'migration journal write failed'));
    return run;
  }

  private async write(): Promise<void> {
    this.prune();
    const body: FileShape = { version: 1, entries: [...this.entries.values()] };
    const tmp = `${this.file}.tmp`;
    const fh = await open(tmp, 'w', 0o600);
    try {
      await fh.writeFile(JSON.stringify(body) + '\n');
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, this.file);
  }
}

/**
 * What an agent reports for a migration an earlier process of it started and did not see end
 * (pure): the hypervisor still runs it (the VM is 'migrating': the QEMU driver re-attaches to its
 * running VMs) → its last progress; the VM paused because the migration completed
 * ('postmigrate') → completed; anything else (running again, gone, crashed, paused) → failed
 * with VMTC_HOST_MIGRATION_INTERRUPTED. Never null for a migration the journal holds. A
 * 'failed' that was in fact a late success is still safe: the controller's rollback removes the
 * destination's copy before it resumes the source (docs/design.md#rollback).
 */
export function inheritedOutcome(e: JournalEntry, vmState: VmState | undefined): MigrationProgress | MigrationResult {
  const { migrationId, vmId } = e;
  if (e.result) return e.result;
  if (vmState === 'migrating') {
    const p = e.progress ?? { migrationId, vmId, status: 'setup', totalBytes: 0, transferredBytes: 0, remainingBytes: 0 };
    return { ...p, migrationId, vmId };
  }
  if (vmState === 'postmigrate') return { migrationId, vmId, status: 'completed' };
  const code = 'VMTC_HOST_MIGRATION_INTERRUPTED';
  return {
    migrationId, vmId, status: 'failed',
    error: { code, message: HOST_ERRORS[code].message, details: { vmId, vmState: vmState ?? 'not found', lastStatus: e.progress?.status ?? 'setup' } },
  };
}
