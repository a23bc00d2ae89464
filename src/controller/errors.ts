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
  VMTC_VM_TOO_LARGE: { status: 422, message: 'the VM asks for more memory or disk than any host has in all: it fits nowhere, whatever else runs (details.resource, details.need, details.largestHost)' },
  VMTC_HYPERVISOR_MISMATCH: { status: 409, message: 'source and destination run different hypervisors' },
  VMTC_HYPERVISOR_VERSION_INCOMPATIBLE: { status: 409, message: "a hypervisor version rules this migration out: the destination's is older than the source's, or a host's release has a known live-migration bug (details.reason, details.advisory)" },
  VMTC_CPU_INCOMPATIBLE: { status: 409, message: "the destination's CPU lacks features the source's has (live mode)" },
  VMTC_MIGRATION_IN_FLIGHT: { status: 409, message: 'the VM already has a migration in flight' },
  VMTC_IDEMPOTENCY_CONFLICT: { status: 409, message: 'this requestId was used before with a different request' },
  VMTC_DEADLINE_INVALID: { status: 400, message: 'the deadline is in the past or not a date' },
  VMTC_POLICY_CHECK_UNAVAILABLE: { status: 200, message: "a warning on a migration admitted without the AAA's policy check (the AAA did not answer in time, or failed): the AAA decides when the token is asked for; never an error response" },
  // Reading the API.
  VMTC_CURSOR_INVALID: { status: 400, message: 'the cursor is not one this controller gave out (take nextCursor from the previous page)' },
  VMTC_EVENT_ID_INVALID: { status: 400, message: 'Last-Event-ID (or lastEventId) is not an event id of this stream' },
  // Life cycle.
  VMTC_MIGRATION_NOT_FOUND: { status: 404, message: 'no such migration' },
  VMTC_ILLEGAL_TRANSITION: { status: 409, message: 'this event is not allowed in the current state' },
  VMTC_MIGRATION_NOT_CANCELLABLE: { status: 409, message: 'the migration can no longer be cancelled' },
  VMTC_CANCELLED: { status: 409, message: 'the migration was cancelled' },
  // An operator's control of a running copy (migration-control-routes.ts).
  VMTC_MIGRATION_NOT_FORCEABLE: { status: 409, message: 'the migration cannot be forced to complete: no copy runs (details.state), or not the way asked (details.reason: post-copy not allowed, already forced another way)' },
  VMTC_MIGRATION_NOT_TUNABLE: { status: 409, message: 'the limits of the migration cannot change: no copy runs (details.state), or more bandwidth than its lightpath reserved (details.reservedMbps)' },
  // Migration policies (migration/policy.ts, policy-routes.ts; docs/policy.md).
  VMTC_POLICY_INVALID: { status: 400, message: 'the migration policy is not valid (details.where, details.field, details.reason)' },
  VMTC_POLICY_GROUP_NOT_FOUND: { status: 404, message: 'no such policy group' },
  VMTC_MIGRATION_POLICY_TIMEOUT: { status: 504, message: "the migration's policy cancelled it: its copy made no progress, or did not complete, in the time the policy allows (details.trigger, details.timeoutS)" },
  VMTC_MIGRATION_NOT_CONVERGING: { status: 200, message: "a warning on a migration whose copy hit a policy timeout with no action left to take (details.trigger, details.waitedMs); never an error response" },
  VMTC_MIGRATION_THROTTLED: { status: 200, message: "a warning on a migration whose guest the hypervisor throttled at or above the policy's throttleWarnPercent (auto-converge; details.cpuThrottlePercent); never an error response" },
  VMTC_DOWNTIME_ABOVE_LIMIT: { status: 200, message: 'a warning on a migration whose measured downtime was above the maxDowntimeMs asked for (details.downtimeMs, details.maxDowntimeMs); never an error response' },
  // The cold path's failures, after EGI-Engage D4.4's taxonomy (details.cause has the agent's code).
  VMTC_COLD_EXPORT_FAILED: { status: 502, message: 'the source could not power the VM off and publish its disks (D4.4 UnableToMeetRequirements)' },
  VMTC_COLD_TRANSFER_FAILED: { status: 502, message: 'the destination could not fetch and check the disks (D4.4 DataTransferError / InsufficientResources)' },
  VMTC_COLD_BOOT_FAILED: { status: 502, message: 'the destination could not boot the VM from the copied disks (D4.4 UnableToResume)' },
  VMTC_COLD_VERIFICATION_FAILED: { status: 502, message: 'the VM booted at the destination but did not pass verification (D4.4 VerificationFailed)' },
  VMTC_VERIFY_TARGET_UNREACHABLE: { status: 422, message: "the verify address (verifyTcp) has no route from the destination's VM network: refused before the source was powered off, which still runs (details.host, details.port, details.reason)" },
  VMTC_DEADLINE_EXCEEDED: { status: 504, message: 'the migration did not finish before its deadline' },
  VMTC_CONTROLLER_RESTARTED: { status: 503, message: 'the controller restarted before anything moved; the migration was rolled back' },
  VMTC_AGENT_LOST: { status: 503, message: 'an agent taking part disconnected during the migration' },
  VMTC_MIGRATION_LOST: { status: 502, message: 'the source agent no longer knows the migration and the destination does not run the VM' },
  VMTC_MIGRATION_FAILED: { status: 502, message: 'the hypervisor reported the migration failed' },
  VMTC_DESTINATION_NOT_RUNNING: { status: 502, message: 'the destination did not report the VM running' },
  VMTC_ROLLBACK_FAILED: { status: 500, message: 'rolling back did not complete; an operator must look' },
  VMTC_AUTHORIZATION_FAILED: { status: 403, message: 'the AAA refused or failed to authorise the lightpath' },
  VMTC_LIGHTPATH_FAILED: { status: 502, message: 'the broker could not reserve or provision the lightpath' },
  // Placement and evacuation (src/controller/fleet/, docs/fleet.md).
  VMTC_NO_FEASIBLE_HOST: { status: 409, message: 'no host can take the VM: details.refused says why each host was refused (details.refused[].reason)' },
  VMTC_HOST_IN_MAINTENANCE: { status: 409, message: 'the destination host is in maintenance: nothing new is placed there (DELETE /v1/hosts/:id/maintenance ends it)' },
  VMTC_EVACUATION_NOT_FOUND: { status: 404, message: 'no such evacuation' },
  VMTC_EVACUATION_CONFLICT: { status: 409, message: 'a host of this evacuation is already being evacuated by another one (details.evacuationId)' },
  VMTC_EVACUATION_NOT_CANCELLABLE: { status: 409, message: 'the evacuation has ended (details.state)' },
  VMTC_EVACUATION_TARGET_INVALID: { status: 400, message: 'give exactly one of host or site, naming a known host or a site some host is at (details.field)' },
  // Replicas: disks pre-seeded at a destination (src/controller/replicas/, docs/disks.md#replicas).
  VMTC_REPLICA_NOT_FOUND: { status: 404, message: 'no such replica of this VM' },
  VMTC_REPLICA_STATE: { status: 409, message: 'the replica is not in a state that allows this (details.state)' },
  VMTC_REPLICA_INTERRUPTED: { status: 503, message: "the controller restarted while the replica was seeding; remove it and replicate again (the source's checkpoints are dropped on removal)" },
  // Credentials.
  VMTC_CREDENTIAL_NOT_FOUND: { status: 404, message: 'no such credential' },
  // The web dashboard (src/controller/dashboard/; docs/dashboard.md).
  VMTC_CSRF_REFUSED: { status: 403, message: "a request that changes something with the dashboard's session cookie must come from the dashboard's own page: the X-VMTC-Dashboard header and, when sent, the same Origin (details.reason)" },
  VMTC_DASHBOARD_UNAVAILABLE: { status: 503, message: "the dashboard's bundle could not be read or built (details.reason); the API is unaffected" },
} as const satisfies Catalogue;

export const CONTROLLER_ERRORS = mergeCatalogues(COMMON_ERRORS, MIGRATION_ERRORS);
export const err = errorFactory(CONTROLLER_ERRORS);
