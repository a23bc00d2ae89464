// The hypervisor driver interface (DESIGN.md: QEMU/KVM over QMP; libvirt and Xen behind the same
// interface). The host agent only ever talks to a hypervisor through this.
import type { MigrationParams, MigrationProgress, MigrationResult, VmInfo, VmSpec, HypervisorType } from '../../src/common/agent-protocol.ts';

export interface HostFacts {
  hypervisor: { type: HypervisorType; version: string };
  cpu: { model: string; features: string[]; vcpus: number };
  memoryMb: number;
  diskGb: number;
  sharedStorage: boolean;
}

export interface HypervisorDriver {
  readonly type: HypervisorType;
  facts(): Promise<HostFacts>;
  list(): Promise<VmInfo[]>;
  describe(vmId: string): Promise<VmInfo>;
  start(spec: VmSpec): Promise<VmInfo>;
  /** Power the VM off. */
  stop(vmId: string): Promise<void>;
  /** Remove the VM and its host-side resources (after a committed migration, or a failed incoming). */
  destroy(vmId: string): Promise<void>;
  resume(vmId: string): Promise<VmInfo>;
  prepareIncoming(spec: VmSpec, migrationId: string, listenHost: string, port?: number): Promise<{ uri: string }>;
  /** Run a live migration to `uri`; onProgress is called as it goes; resolves when it ends. */
  migrate(vmId: string, uri: string, params: MigrationParams, onProgress: (p: MigrationProgress) => void): Promise<MigrationResult>;
  cancelMigration(vmId: string): Promise<void>;
  waitRunning(vmId: string, timeoutMs: number): Promise<VmInfo>;
  /** Called whenever a VM's state changes, so the agent can re-send its inventory. */
  onChange(listener: () => void): void;
  close(): Promise<void>;
}
