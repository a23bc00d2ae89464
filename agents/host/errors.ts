// Error codes of the host agent and its drivers. They reach the controller through the agent
// link as { code, message, details, status }; prefixed VMTC_HOST_ so they never collide with the
// controller's own codes when a catalogue is merged.
import { COMMON_ERRORS, errorFactory, mergeCatalogues, type Catalogue } from '../../src/common/errors.ts';

export const HOST_ERRORS = {
  VMTC_HOST_VM_NOT_FOUND: { status: 404, message: 'no such VM on this host' },
  VMTC_HOST_VM_EXISTS: { status: 409, message: 'a VM with this id already exists on this host' },
  VMTC_HOST_VM_STATE: { status: 409, message: 'the VM is not in a state that allows this' },
  VMTC_HOST_INSUFFICIENT_RESOURCES: { status: 409, message: 'this host lacks the memory, vCPUs or disk for the VM' },
  VMTC_HOST_MIGRATION_IN_PROGRESS: { status: 409, message: 'a migration of this VM is already running on this host' },
  VMTC_HOST_MIGRATION_NOT_FOUND: { status: 404, message: 'no migration of this VM is running on this host' },
  VMTC_HOST_MIGRATION_FAILED: { status: 502, message: 'the live migration failed' },
  VMTC_HOST_MIGRATION_INTERRUPTED: { status: 502, message: 'the agent restarted during the live migration and the hypervisor no longer runs it' },
  VMTC_HOST_MIGRATION_URI: { status: 400, message: 'the migration URI is not tcp:HOST:PORT' },
  VMTC_HOST_BAD_PARAMS: { status: 400, message: 'the request parameters are not valid' },
  VMTC_HOST_FAULT_INJECTED: { status: 500, message: 'a fault injected by the test double configuration' },
  // The cold path (agents/host/cold/; EGI-Engage D4.4's taxonomy in the comments).
  VMTC_HOST_COLD_EXPORT_NOT_FOUND: { status: 404, message: 'no such disk export on this host (never published, or withdrawn)' },
  VMTC_HOST_COLD_EXPORT_GONE: { status: 410, message: 'this disk export has expired or its single use is spent' },
  VMTC_HOST_COLD_FORBIDDEN: { status: 403, message: 'the client certificate does not name the destination of this export' }, // Unauthorized
  VMTC_HOST_COLD_RANGE: { status: 416, message: 'the requested byte range is not within the disk' },
  VMTC_HOST_COLD_DISK_UNREADABLE: { status: 500, message: 'a disk of the VM cannot be read for export, or changed size since' },
  VMTC_HOST_COLD_TRANSFER_FAILED: { status: 502, message: 'fetching a disk from the source host failed; a retry resumes it' }, // DataTransferError
  VMTC_HOST_COLD_CHECKSUM: { status: 502, message: 'a fetched disk does not match the checksum the source published' }, // DataTransferError
  VMTC_HOST_COLD_RELAY_FAILED: { status: 502, message: 'the relay that carries the disk transfer through the host\'s network namespace could not start (its lightpath address is not there?)' }, // DataTransferError
  VMTC_HOST_COLD_TCP_CHECK_FAILED: { status: 502, message: 'the service port of the VM did not accept a connection in time' }, // VerificationFailed
  // Disk state as checkpoints and deltas (agents/host/disks/; docs/disks.md).
  VMTC_HOST_DISK_NOT_FOUND: { status: 404, message: 'the disk, image, logical volume or destination store named does not exist' },
  VMTC_HOST_DISK_CHECKPOINT_MISSING: { status: 409, message: 'the checkpoint a delta should start from is gone (its snapshot or bitmap was removed): seed the replica again' },
  VMTC_HOST_DISK_CHECKPOINT_EXISTS: { status: 409, message: 'a checkpoint with this id already exists for the disk' },
  VMTC_HOST_DISK_POOL_FULL: { status: 507, message: 'the thin pool has no room for the snapshot or the copy' },
  VMTC_HOST_DISK_COPY_FAILED: { status: 502, message: 'copying the disk or a delta to the destination failed; the source checkpoint is kept and a retry starts from it' },
  VMTC_HOST_DISK_DELTA_REJECTED: { status: 409, message: 'the destination does not hold the checkpoint this delta starts from, or the delta does not match its checksum' },
  VMTC_HOST_DISK_DIGEST_MISMATCH: { status: 409, message: 'the destination disk differs from the source disk' },
  VMTC_HOST_DISK_UNREADABLE: { status: 500, message: 'a disk could not be read while computing its digest or a delta' },
  VMTC_HOST_DISK_BITMAP_IN_USE: { status: 409, message: 'the persistent dirty bitmap is marked in use in the image file (a QEMU holds the image read-write, or stopped without storing the bitmap): its contents cannot be trusted' },
  VMTC_HOST_DISK_UNSUPPORTED: { status: 501, message: "this host's hypervisor driver cannot keep replicas (it has no disk-state operations), or the VM has no disk it can copy" },
  VMTC_HOST_DISK_TOOL_FAILED: { status: 502, message: 'a storage tool (lvm, thin_delta, dmsetup, qemu-img, qemu-storage-daemon) failed or answered something unexpected' },
} as const satisfies Catalogue;

export const HOST_AGENT_ERRORS = mergeCatalogues(COMMON_ERRORS, HOST_ERRORS);
export const hostError = errorFactory(HOST_ERRORS);
