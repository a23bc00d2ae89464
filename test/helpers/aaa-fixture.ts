// Shared by the AAA tests. Not a test file itself.
import { expect } from 'vitest';
import { VmtcError } from '../../src/common/errors.ts';

/** The coded error a refused call rejects with; fails the test if the call succeeds. */
export async function refusal(p: Promise<unknown>): Promise<VmtcError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(VmtcError);
    return e as VmtcError;
  }
  throw new Error('expected a refusal');
}
