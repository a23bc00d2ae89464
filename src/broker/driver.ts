// Network element drivers (docs/broker.md, "Drivers"): the broker touches the network only
// through this.
// The Linux driver makes a lightpath real in the lab (VXLAN between two site namespaces, its
// underlay through the user-space delay line, plus an htb rate limit equal to the reserved
// bandwidth); the in-memory driver is a test double and is named as one.

export interface SegmentRequest {
  /** The broker's reservation (connection) id. */
  connectionId: string;
  /** Node ids along the path in this domain, first to last, as in the topology file. */
  path: string[];
  /** Per-node settings copied from the topology file (driver-specific, e.g. namespace names). */
  nodes: Record<string, Record<string, unknown>>;
  bandwidthMbps: number;
}

export interface ProvisionedSegment {
  connectionId: string;
  /** Driver-specific facts a caller may need (device names, addresses, VNI). */
  details: Record<string, unknown>;
}

export interface NetworkElementDriver {
  readonly name: string;
  /** Make the data plane real. Must be idempotent for the same connectionId, and leave nothing
   *  behind if it throws. */
  provision(req: SegmentRequest): Promise<ProvisionedSegment>;
  /** Tear the data plane down; releasing an unknown or already-released id is not an error. */
  release(connectionId: string): Promise<void>;
  close(): Promise<void>;
}
