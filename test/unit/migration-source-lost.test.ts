// The controller's decision when the source agent does not know a migration it was running
// (src/controller/migration/source-lost.ts): only a destination that cannot be running the VM
// is rolled back; any other state goes the commit path, which waits for it to run.
import { describe, expect, it } from 'vitest';
import { decideSourceLost } from '../../src/controller/migration/source-lost.ts';

describe('source does not know the migration', () => {
  it('rolls back only when the destination cannot be running the VM', () => {
    expect(decideSourceLost(undefined)).toBe('rollback');
    expect(decideSourceLost('incoming')).toBe('rollback');
    expect(decideSourceLost('stopped')).toBe('rollback');
    expect(decideSourceLost('crashed')).toBe('rollback');
  });
  it('never destroys a destination that may run the VM: it commits', () => {
    for (const s of ['running', 'paused', 'migrating', 'postmigrate'] as const) expect(decideSourceLost(s)).toBe('commit');
  });
});
