// Error codes of the guest image builder (docs/contributing.md#errors). Kept apart from
// lab/errors.ts (the namespaces' catalogue) so the two can be merged with mergeCatalogues where
// both are needed.
import { errorFactory, type Catalogue } from '../../src/common/errors.ts';

export const GUEST_ERRORS = {
  VMTC_GUEST_KERNEL_UNAVAILABLE: { status: 500, message: 'the Debian kernel package for the guest could not be found or downloaded' },
  VMTC_GUEST_BUILD_FAILED: { status: 500, message: 'a step of the guest image build failed' },
} as const satisfies Catalogue;

export const guestError = errorFactory(GUEST_ERRORS);
