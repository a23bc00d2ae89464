// The lab's error catalogue. The lab is a tool rather than a service, but its failures still
// cross into the broker (through the lab's lightpath driver, lab/lightpath-driver.ts) and the
// CLI, so they carry stable codes like everything else. The lightpath codes themselves
// (VMTC_LIGHTPATH_*) are the broker drivers' (src/broker/drivers/errors.ts).
import { COMMON_ERRORS, errorFactory, mergeCatalogues } from '../src/common/errors.ts';

export const LAB_ERRORS = mergeCatalogues(COMMON_ERRORS, {
  VMTC_LAB_COMMAND_FAILED: { status: 500, message: 'a network command failed in the lab' },
  VMTC_LAB_BAD_PREFIX: { status: 400, message: 'the lab prefix must be 1-4 lower-case letters or digits' },
  VMTC_LAB_NOT_FOUND: { status: 404, message: 'no lab with this prefix is recorded' },
  VMTC_LAB_NO_SUCH_SITE: { status: 404, message: 'the lab has no site of this name' },
  VMTC_LAB_DELAY_LINE_FAILED: { status: 500, message: 'the delay line process did not start' },
  // The guest after a migration (lab/guest/verify.ts, lab/turntable/measure.ts).
  VMTC_LAB_GUEST_SILENT: { status: 502, message: "the migration committed but the guest's heartbeat at the destination stopped or never came" },
  VMTC_LAB_GUEST_CORRUPTED: { status: 502, message: 'after the migration the guest reported damage: a page of its memory check changed, its kernel panicked or reported a BUG, oops or corruption, or it booted again' },
  VMTC_LAB_GUEST_UNVERIFIED: { status: 502, message: "the guest's dirty load reported no whole verifying pass after the migration" },
  // The turntable's `--accel kvm` (lab/turntable/instrument.ts).
  VMTC_LAB_KVM_UNAVAILABLE: { status: 400, message: 'KVM was asked for but does not work on this host (/dev/kvm missing or not usable, or a guest kernel under -accel kvm prints nothing in time)' },
});

export const labError = errorFactory(LAB_ERRORS);
