// The hypervisor driver interface (DESIGN.md: QEMU/KVM over QMP; libvirt and Xen behind the same
// interface). The host agent only ever talks to a hypervisor through this.
import net from 'node:net';
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
  /** Destination side. With spec.extra.migration.copyStorage the driver also creates empty copies
   *  of the disks (same format and virtual size) in a directory it owns and exports them for the
   *  source to mirror into; `storage` says where (MigrationParams.storage). */
  prepareIncoming(spec: VmSpec, migrationId: string, listenHost: string, port?: number): Promise<{ uri: string; storage?: MigrationParams['storage'] }>;
  /** Run a live migration to `uri`; onProgress is called as it goes; resolves when it ends. */
  migrate(vmId: string, uri: string, params: MigrationParams, onProgress: (p: MigrationProgress) => void): Promise<MigrationResult>;
  cancelMigration(vmId: string): Promise<void>;
  waitRunning(vmId: string, timeoutMs: number): Promise<VmInfo>;
  /** One attempt to open a TCP connection to host:port from where the VM's network is (its
   *  namespace, for a driver that runs guests in one): true if it was accepted within timeoutMs.
   *  Used by the cold path's verification (D4.4: "a service port answers"); without it the agent
   *  connects from its own namespace. */
  checkTcp?(vmId: string, host: string, port: number, timeoutMs: number): Promise<boolean>;
  /** Called whenever a VM's state changes, so the agent can re-send its inventory. */
  onChange(listener: () => void): void;
  close(): Promise<void>;
}

/** One TCP connection attempt from this process: true if accepted within timeoutMs. */
export function tcpConnectCheck(host: string, port: number, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = net.connect({ host, port });
    const done = (ok: boolean) => {
      clearTimeout(t);
      sock.destroy();
      resolve(ok);
    };
    const t = setTimeout(() => done(false), Math.max(1, timeoutMs));
    sock.once('connect', () => done(true));
    sock.once('error', () => done(false));
  });
}
