// What a QMP event means for a VM's record (agents/host/qemu/events.ts), the parts the
// replicas' live moves rely on: a held destination's landing (once), a migrating source's stop
// (its follows are released), and the block jobs that ended (a follow's mirror that failed).
import { describe, expect, it } from 'vitest';
import { applyEvent } from '../../agents/host/qemu/events.ts';
import type { VmRecord } from '../../agents/host/qemu/types.ts';

const rec = (o: Partial<VmRecord> = {}) => ({ migrating: false, quitting: false, stateWaiters: new Set(), ...o }) as unknown as VmRecord;

describe('QMP events applied to a VM record', () => {
  it('a held destination lands once: its disks are activated then, and not at a later completion', () => {
    const r = rec({ held: true });
    expect(applyEvent(r, { event: 'MIGRATION', data: { status: 'active' } }, 1).heldLanded).toBe(false);
    expect(applyEvent(r, { event: 'MIGRATION', data: { status: 'completed' } }, 2).heldLanded).toBe(true);
    // The same VM migrating out later: its completion is a source's.
    expect(applyEvent(r, { event: 'MIGRATION', data: { status: 'completed' } }, 3).heldLanded).toBe(false);
    expect(applyEvent(rec(), { event: 'MIGRATION', data: { status: 'completed' } }, 4).heldLanded).toBe(false);
  });

  it('a STOP while the VM migrates out is said (its follows are released), not otherwise; RESUME is said', () => {
    expect(applyEvent(rec({ migrating: true }), { event: 'STOP' }, 5).stoppedMigrating).toBe(true);
    expect(applyEvent(rec({ migrating: false }), { event: 'STOP' }, 5).stoppedMigrating).toBe(false);
    expect(applyEvent(rec({ migrating: true }), { event: 'RESUME' }, 6).resumed).toBe(true);
  });

  it('block jobs that ended are kept until one of the name is ready again; the completion time of a migration too', () => {
    const r = rec();
    applyEvent(r, { event: 'BLOCK_JOB_COMPLETED', data: { device: 'vmtc-follow.r.d', error: 'Input/output error' } }, 7);
    expect(r.endedJobs?.has('vmtc-follow.r.d')).toBe(true);
    applyEvent(r, { event: 'BLOCK_JOB_READY', data: { device: 'vmtc-follow.r.d' } }, 8);
    expect(r.endedJobs?.has('vmtc-follow.r.d')).toBe(false);
    applyEvent(r, { event: 'MIGRATION', data: { status: 'completed' }, timestamp: { seconds: 10, microseconds: 500_000 } }, 9);
    expect(r.migrationCompletedAt).toBe(10_500);
  });
});
