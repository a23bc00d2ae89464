// Error codes of the host agent and its drivers. They reach the controller through the agent
// link as { code, message, details, status }; prefixed VMTC_HOST_ so they never collide with the
// controller's own codes when a catalogue is merged.
import { COMMON_ERRORS, errorFactory, mergeCatalogues, type Catalogue } from '../../src/common/errors.ts';

export const HOST_ERRORS = {
  VMTC_HOST_VM_NOT_FOUND: { status: 404, message: 'no such VM on this host' },
  VMTC_HOST_VM_EXISTS: { status: 409, message: 'a VM with this id already exists on this host' },
  VMTC_HOST_VM_STATE: { status: 409, message: 'the VM is not in a state that allows this' },
  VMTC_HOST_INSUFFICIENT_RESOURCES: { status: 507, message: 'this host lacks the memory, vCPUs or disk for the VM' },
  VMTC_HOST_MIGRATION_IN_PROGRESS: { status: 409, message: 'a migration of this VM is already running on this host' },
  VMTC_HOST_MIGRATION_NOT_FOUND: { status: 404, message: 'no migration of this VM is running on this host' },
  VMTC_HOST_MIGRATION_FAILED: { status: 502, message: 'the live migration failed' },
  VMTC_HOST_MIGRATION_URI: { status: 400, message: 'the migration URI is not tcp:HOST:PORT' },
  VMTC_HOST_BAD_PARAMS: { status: 400, message: 'the request parameters are not valid' },
  VMTC_HOST_FAULT_INJECTED: { status: 500, message: 'a fault injected by the test double configuration' },
} as const satisfies Catalogue;

export const HOST_AGENT_ERRORS = mergeCatalogues(COMMON_ERRORS, HOST_ERRORS);
export const hostError = errorFactory(HOST_ERRORS);
