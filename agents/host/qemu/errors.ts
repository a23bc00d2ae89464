// Error codes of the QEMU driver and its QMP client (docs/contributing.md#errors; documented in
// docs/qemu.md). The host agent's own catalogue merges this one (mergeCatalogues) beside
// COMMON_ERRORS; codes never change meaning.
import { errorFactory, type Catalogue } from '../../../src/common/errors.ts';

export const QEMU_ERRORS = {
  // QMP transport (qmp.ts)
  VMTC_QMP_CONNECT_FAILED: { status: 502, message: 'the QMP socket could not be opened' },
  VMTC_QMP_PROTOCOL: { status: 502, message: 'QEMU sent something that is not QMP' },
  VMTC_QMP_TIMEOUT: { status: 504, message: 'QEMU did not answer a QMP command in time' },
  VMTC_QMP_CLOSED: { status: 502, message: 'the QMP connection closed before QEMU answered' },
  VMTC_QMP_COMMAND_FAILED: { status: 502, message: 'QEMU refused a QMP command' },
  // The driver (driver.ts and the modules it wires)
  VMTC_QEMU_START_FAILED: { status: 500, message: 'QEMU did not start' },
  VMTC_QEMU_TAP_FAILED: { status: 500, message: 'the tap device for a VM NIC could not be set up' },
  VMTC_QEMU_VM_NOT_FOUND: { status: 404, message: 'no VM with this id on this host' },
  VMTC_QEMU_VM_EXISTS: { status: 409, message: 'a VM with this id already exists on this host' },
  VMTC_QEMU_BAD_STATE: { status: 409, message: 'the VM is not in a state that allows this operation' },
  VMTC_QEMU_BAD_SPEC: { status: 400, message: 'the VM spec cannot be turned into a QEMU command line' },
  VMTC_QEMU_MIGRATION_FAILED: { status: 502, message: 'the live migration failed; the source keeps running' },
  VMTC_QEMU_CANCEL_TOO_LATE: { status: 409, message: 'the migration is past its switchover (or completed) and can no longer be cancelled' },
  VMTC_QEMU_WAIT_TIMEOUT: { status: 504, message: 'the VM did not reach the running state in time' },
  VMTC_QEMU_VM_CRASHED: { status: 502, message: 'the QEMU process of this VM exited unexpectedly' },
} as const satisfies Catalogue;

export type QemuErrorCode = keyof typeof QEMU_ERRORS;

export const qemuError = errorFactory(QEMU_ERRORS);
