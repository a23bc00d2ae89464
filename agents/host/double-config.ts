// The DoubleDriver's settings (agents/host/double-driver.ts): what it reports of its host, how
// its copies behave, and the faults a test injects.
import type { HypervisorType, VmSpec } from '../../src/common/agent-protocol.ts';
import type { DoubleLoadScript } from './stats-double.ts';

export interface DoubleDriverConfig {
  /** Reported as hypervisor.version (default '1.0.0': no known-bad release). */
  version?: string;
  /** Reported as hypervisor.type (default 'double'). 'qemu' with `version` and `accelerator`
   *  stands in for a QEMU release in the controller's known-bad checks
   *  (src/common/hypervisor-advisories.ts); nothing else of the double changes. */
  hypervisorType?: HypervisorType;
  /** Reported as hypervisor.accelerator (default: none reported, as an older agent). */
  accelerator?: string;
  cpu?: { model: string; features: readonly string[]; vcpus: number };
  memoryMb?: number;
  diskGb?: number;
  sharedStorage?: boolean;
  /** VMs running from construction. */
  vms?: readonly VmSpec[];
  /** The double's VM networks, as CIDRs (`10.1.1.0/24`, or one address): only addresses in them
   *  have a route for checkReach. Absent: every address has one. */
  networks?: readonly string[];
  /** Pace of migrate() when params.bandwidthMbps is absent (default 4000 Mbit/s). */
  defaultBandwidthMbps?: number;
  /** Pre-copy passes including the final stop-and-copy (default 3). */
  passes?: number;
  /** Bytes sent per MiB of guest memory (default 1 MiB: the real amount). Lower it to make big
   *  VMs migrate fast in tests; progress still reports the scaled totals. */
  bytesPerMb?: number;
  /** Mbit/s (on the wire) of memory a migrating guest dirties while it runs (default 0: every
   *  copy converges after `passes` passes). At or above the migration's bandwidth the copy never
   *  converges by itself (agents/host/double-copy.ts). */
  dirtyMbps?: number;
  /** Scripted use of its VMs, as stats() reports it (agents/host/stats-double.ts). */
  load?: DoubleLoadScript;
  /** Replicas (agents/host/replicas-double.ts): where stores go (default a temp dir) and the
   *  pace of seeds and deltas in Mbit/s (default unpaced). */
  replicas?: { dir?: string; bandwidthMbps?: number };
  /** Injected faults, for tests. */
  failures?: {
    /** Source: drop the stream after sending this many bytes (migration fails, VM back to running). */
    failMigrateAfterBytes?: number;
    /** Destination: drop the stream after receiving this many bytes. */
    dropIncomingAfterBytes?: number;
    failStart?: boolean;
    failPrepareIncoming?: boolean;
    /** Destination: waitRunning() fails although the VM runs (a destination that cannot say). */
    failWaitRunning?: boolean;
    /** destroy() fails and the VM stays (a host that cannot clean up). */
    failDestroy?: boolean;
  };
}
