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

/** What one direction of a provisioned segment's data plane carries, where the driver can see it
 *  (the lab's delay line reports it; real switches would through their counters). */
export interface DataPlaneStats {
  connectionId: string;
  /** 'ab' = first end to last end of the path, 'ba' the other way. */
  direction: 'ab' | 'ba';
  /** Delivered rate over the driver's last reporting interval, Mbit/s. */
  deliveredMbps: number;
  /** Queueing delay of that interval: median and worst, ms. */
  queueP50Ms: number;
  queueMaxMs: number;
  /** Since the segment was provisioned. */
  packets: number;
  bytes: number;
  drops: number;
}

export interface NetworkElementDriver {
  readonly name: string;
  /** Make the data plane real. Must be idempotent for the same connectionId, and leave nothing
   *  behind if it throws. */
  provision(req: SegmentRequest): Promise<ProvisionedSegment>;
  /** Tear the data plane down; releasing an unknown or already-released id is not an error. */
  release(connectionId: string): Promise<void>;
  close(): Promise<void>;
  /** Optional: what each provisioned segment's data plane carries now (for /metrics). */
  dataPlaneStats?(): Promise<DataPlaneStats[]>;
}
