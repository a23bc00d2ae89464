// The controller's error catalogue (docs/contributing.md#errors). Codes never change meaning; a
// test checks that every code is documented in docs/errors.md.
import { COMMON_ERRORS, errorFactory, mergeCatalogues, type Catalogue } from '../common/errors.ts';

export const MIGRATION_ERRORS = {
  // Pre-checks (docs/design.md#live-migration, step 2): each failing check has its own code and
  // changes nothing.
  VMTC_VM_NOT_FOUND: { status: 404, message: 'no host reports this VM' },
  VMTC_VM_NOT_RUNNING: { status: 409, message: 'the VM is not running' },
  VMTC_HOST_NOT_FOUND: { status: 404, message: 'no such host' },
  VMTC_HOST_NOT_CONNECTED: { status: 409, message: 'a host taking part is not connected' },
  VMTC_SAME_HOST: { status: 409, message: 'source and destination are the same host' },
  VMTC_INSUFFICIENT_MEMORY: { status: 409, message: 'the destination does not have enough free memory' },
  VMTC_INSUFFICIENT_VCPUS: { status: 409, message: 'the destination does not have enough free vCPUs' },
  VMTC_INSUFFICIENT_DISK: { status: 409, message: 'the destination does not have enough free disk (storage is not shared)' },
  VMTC_HYPERVISOR_MISMATCH: { status: 409, message: 'source and destination run different hypervisors' },
  VMTC_HYPERVISOR_VERSION_INCOMPATIBLE: { status: 409, message: "the destination's hypervisor is older than the source's" },
  VMTC_CPU_INCOMPATIBLE: { status: 409, message: "the destination's CPU lacks features the source's has (live mode)" },
  VMTC_MIGRATION_IN_FLIGHT: { status: 409, message: 'the VM already has a migration in flight' },
  VMTC_IDEMPOTENCY_CONFLICT: { status: 409, message: 'this requestId was used before with a different request' },
  VMTC_DEADLINE_INVALID: { status: 400, message: 'the deadline is in the past or not a date' },
  // Life cycle.
  VMTC_MIGRATION_NOT_FOUND: { status: 404, message: 'no such migration' },
  VMTC_ILLEGAL_TRANSITION: { status: 409, message: 'this event is not allowed in the current state' },
  VMTC_MIGRATION_NOT_CANCELLABLE: { status: 409, message: 'the migration can no longer be cancelled' },
  VMTC_CANCELLED: { status: 409, message: 'the migration was cancelled' },
  // The cold path's failures, after EGI-Engage D4.4's taxonomy (details.cause has the agent's code).
  VMTC_COLD_EXPORT_FAILED: { status: 502, message: 'the source could not power the VM off and publish its disks (D4.4 UnableToMeetRequirements)' },
  VMTC_COLD_TRANSFER_FAILED: { status: 502, message: 'the destination could not fetch and check the disks (D4.4 DataTransferError / InsufficientResources)' },
  VMTC_COLD_BOOT_FAILED: { status: 502, message: 'the destination could not boot the VM from the copied disks (D4.4 UnableToResume)' },
  VMTC_COLD_VERIFICATION_FAILED: { status: 502, message: 'the VM booted at the destination but did not pass verification (D4.4 VerificationFailed)' },
  VMTC_DEADLINE_EXCEEDED: { status: 504, message: 'the migration did not finish before its deadline' },
  VMTC_CONTROLLER_RESTARTED: { status: 503, message: 'the controller restarted before anything moved; the migration was rolled back' },
  VMTC_AGENT_LOST: { status: 503, message: 'an agent taking part disconnected during the migration' },
  VMTC_MIGRATION_LOST: { status: 502, message: 'the source agent no longer knows the migration and the destination does not run the VM' },
  VMTC_MIGRATION_FAILED: { status: 502, message: 'the hypervisor reported the migration failed' },
  VMTC_DESTINATION_NOT_RUNNING: { status: 502, message: 'the destination did not report the VM running' },
  VMTC_ROLLBACK_FAILED: { status: 500, message: 'rolling back did not complete; an operator must look' },
  VMTC_AUTHORIZATION_FAILED: { status: 403, message: 'the AAA refused or failed to authorise the lightpath' },
  VMTC_LIGHTPATH_FAILED: { status: 502, message: 'the broker could not reserve or provision the lightpath' },
  // Credentials.
  VMTC_CREDENTIAL_NOT_FOUND: { status: 404, message: 'no such credential' },
} as const satisfies Catalogue;

export const CONTROLLER_ERRORS = mergeCatalogues(COMMON_ERRORS, MIGRATION_ERRORS);
export const err = errorFactory(CONTROLLER_ERRORS);
