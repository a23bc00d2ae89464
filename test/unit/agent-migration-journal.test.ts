// The host agent's migration journal (agents/host/migration-journal.ts): what a restarted agent
// knows of the migrations an earlier process of it ran, and what it then reports for them.
import { afterEach, describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ManualClock } from '../../src/common/clock.ts';
import { JOURNAL_FILE, MigrationJournal, inheritedOutcome } from '../../agents/host/migration-journal.ts';

const dirs: string[] = [];
afterEach(() => { for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true }); });
const tempDir = () => { const d = mkdtempSync(join(tmpdir(), 'vmtc-journal-')); dirs.push(d); return d; };
const progress = (status: 'active' | 'device', transferredBytes: number) => ({ migrationId: 'mig_1', vmId: 'vm1', status, totalBytes: 100, transferredBytes, remainingBytes: 100 - transferredBytes });

describe('migration journal', () => {
  it('survives a restart: the migration, its last status and, once known, its result', async () => {
    const dataDir = tempDir();
    const clock = new ManualClock();
    const j = await MigrationJournal.open({ dataDir, clock });
    await j.begin('vm1', 'mig_1');
    j.progress(progress('active', 10));
    j.progress(progress('active', 40)); // same status: memory only
    await j.close();

    const after = await MigrationJournal.open({ dataDir, clock });
    const e = after.get('vm1')!;
    expect(e).toMatchObject({ migrationId: 'mig_1', vmId: 'vm1', startedAt: clock.now(), progress: { status: 'active' } });
    expect(e.result).toBeUndefined();
    expect(after.isInherited('vm1')).toBe(true);
    expect(after.inheritedVms()).toEqual(['vm1']);
    // Written atomically: one well-formed file, no temporary left behind.
    expect(readdirSync(dataDir)).toEqual([JOURNAL_FILE]);
    expect(JSON.parse(readFileSync(join(dataDir, JOURNAL_FILE), 'utf8')).version).toBe(1);

    await after.finish({ migrationId: 'mig_1', vmId: 'vm1', status: 'failed', error: { code: 'VMTC_HOST_MIGRATION_INTERRUPTED', message: 'x' } });
    expect(after.isInherited('vm1')).toBe(false);
    await after.close();
    const third = await MigrationJournal.open({ dataDir, clock });
    expect(third.get('vm1')!.result).toMatchObject({ status: 'failed', error: { code: 'VMTC_HOST_MIGRATION_INTERRUPTED' } });
    expect(third.inheritedVms()).toEqual([]);
  });

  it('says what became of an inherited migration from the VM state the hypervisor reports, never null', async () => {
    const dataDir = tempDir();
    const clock = new ManualClock();
    const j = await MigrationJournal.open({ dataDir, clock });
    await j.begin('vm1', 'mig_1');
    j.progress(progress('device', 90));
    await j.close();
    const e = (await MigrationJournal.open({ dataDir, clock })).get('vm1')!;
    // Still running in the hypervisor (re-attached): its last progress.
    expect(inheritedOutcome(e, 'migrating')).toMatchObject({ migrationId: 'mig_1', status: 'device', totalBytes: 100 });
    // Paused because it completed.
    expect(inheritedOutcome(e, 'postmigrate')).toEqual({ migrationId: 'mig_1', vmId: 'vm1', status: 'completed' });
    // Its process is gone: failed, with the code and what was seen.
    for (const state of ['running', 'paused', 'crashed', undefined] as const) {
      const out = inheritedOutcome(e, state);
      expect(out).toMatchObject({ migrationId: 'mig_1', status: 'failed', error: { code: 'VMTC_HOST_MIGRATION_INTERRUPTED', details: { vmState: state ?? 'not found', lastStatus: 'device' } } });
      expect('totalBytes' in out).toBe(false);
    }
    // A recorded result wins over the VM's state.
    expect(inheritedOutcome({ ...e, result: { migrationId: 'mig_1', vmId: 'vm1', status: 'completed', downtimeMs: 5 } }, 'running')).toMatchObject({ status: 'completed', downtimeMs: 5 });
  });

  it('ignores reports of another migration, forgets on request, and prunes by age', async () => {
    const dataDir = tempDir();
    const clock = new ManualClock();
    const j = await MigrationJournal.open({ dataDir, clock, maxAgeMs: 60_000 });
    await j.begin('vm1', 'mig_1');
    j.progress({ ...progress('active', 50), migrationId: 'mig_other' });
    await j.finish({ migrationId: 'mig_other', vmId: 'vm1', status: 'completed' });
    expect(j.get('vm1')).toMatchObject({ migrationId: 'mig_1', progress: { status: 'setup' } });
    expect(j.get('vm1')!.result).toBeUndefined();
    // A migration still running is kept by a forget of finished ones only.
    await j.forget('vm1', { onlyFinished: true });
    expect(j.get('vm1')).toBeDefined();
    await j.finish({ migrationId: 'mig_1', vmId: 'vm1', status: 'completed' });
    await j.forget('vm1', { onlyFinished: true });
    expect(j.get('vm1')).toBeUndefined();

    await j.begin('vm2', 'mig_2');
    await j.begin('vm3', 'mig_3');
    await j.forget('vm3');
    clock.advance(30_000);
    await j.begin('vm4', 'mig_4');
    await j.close();
    clock.advance(40_000); // vm2 is now 70 s old, vm4 40 s
    const after = await MigrationJournal.open({ dataDir, clock, maxAgeMs: 60_000 });
    expect([after.get('vm2'), after.get('vm3'), after.get('vm4')?.migrationId]).toEqual([undefined, undefined, 'mig_4']);
    // The pruned file no longer holds it either.
    expect(readFileSync(join(dataDir, JOURNAL_FILE), 'utf8')).not.toContain('mig_2');
  });

  it('ignores changes once closed, and starts afresh from an unreadable file', async () => {
    const dataDir = tempDir();
    const clock = new ManualClock();
    const j = await MigrationJournal.open({ dataDir, clock });
    await j.begin('vm1', 'mig_1');
    await j.close();
    // A closed agent's migration ending in the background must not overwrite its successor's journal.
    await j.finish({ migrationId: 'mig_1', vmId: 'vm1', status: 'completed' });
    expect((await MigrationJournal.open({ dataDir, clock })).get('vm1')!.result).toBeUndefined();

    writeFileSync(join(dataDir, JOURNAL_FILE), '{ not json');
    const fresh = await MigrationJournal.open({ dataDir, clock });
    expect(fresh.get('vm1')).toBeUndefined();
    await fresh.begin('vm9', 'mig_9');
    expect(JSON.parse(readFileSync(join(dataDir, JOURNAL_FILE), 'utf8')).entries).toHaveLength(1);
    expect(existsSync(join(dataDir, `${JOURNAL_FILE}.tmp`))).toBe(false);
  });
});
