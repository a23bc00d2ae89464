import { describe, it, expect } from 'vitest';
import { COMMON_ERRORS, VmtcError, errorFactory, mergeCatalogues } from '../../src/common/errors.ts';

describe('error catalogue', () => {
  it('builds coded errors and serialises them as { code, message, details }', () => {
    const make = errorFactory(COMMON_ERRORS);
    const e = make('VMTC_VALIDATION', { field: 'x' });
    expect(e).toBeInstanceOf(VmtcError);
    expect(e.status).toBe(400);
    expect(e.toJSON()).toEqual({ code: 'VMTC_VALIDATION', message: COMMON_ERRORS.VMTC_VALIDATION.message, details: { field: 'x' } });
  });
  it('refuses a code defined twice', () => {
    expect(() => mergeCatalogues(COMMON_ERRORS, { VMTC_INTERNAL: { status: 500, message: 'x' } })).toThrow(/defined twice/);
  });
  it('rebuilds a remote error body and flags a garbage one', () => {
    expect(VmtcError.fromBody({ code: 'VMTC_X', message: 'm', status: 409 }).status).toBe(409);
    expect(VmtcError.fromBody('garbage').code).toBe('VMTC_PEER_BAD_REPLY');
  });
});
