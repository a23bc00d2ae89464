// A TEST DOUBLE of a network element driver: it keeps "circuits" in a Map and touches no
// network. It exists because unit tests cannot create namespaces; the lab tests use the real
// Linux driver (drivers/linux.ts). Faults can be injected to prove that a provision failure
// leaves the reservation in a defined state.
import type { NetworkElementDriver, ProvisionedSegment, SegmentRequest } from '../driver.ts';

export class MemoryDoubleDriver implements NetworkElementDriver {
  readonly name = 'memory-double';
  /** Circuits currently up, by connection id. */
  readonly active = new Map<string, SegmentRequest>();
  /** Every call, in order (tests assert on it, e.g. "no network element was touched"). */
  readonly calls: { op: 'provision' | 'release'; connectionId: string }[] = [];
  private failAll = false;
  private readonly failIds = new Set<string>();
  private closed = false;

  /** Make provision fail for one connection id (or, with no id, for every connection). */
  failProvision(connectionId?: string): void {
    if (connectionId === undefined) this.failAll = true;
    else this.failIds.add(connectionId);
  }

  clearFaults(): void {
    this.failAll = false;
    this.failIds.clear();
  }

  async provision(req: SegmentRequest): Promise<ProvisionedSegment> {
    this.calls.push({ op: 'provision', connectionId: req.connectionId });
    if (this.closed) throw new Error('driver closed');
    if (this.failAll || this.failIds.has(req.connectionId)) {
      // The contract: leave nothing behind when provision throws.
      this.active.delete(req.connectionId);
      throw new Error(`injected provision fault for ${req.connectionId}`);
    }
    this.active.set(req.connectionId, { ...req, path: [...req.path] });
    return { connectionId: req.connectionId, details: { driver: this.name, path: req.path, bandwidthMbps: req.bandwidthMbps } };
  }

  async release(connectionId: string): Promise<void> {
    this.calls.push({ op: 'release', connectionId });
    this.active.delete(connectionId);
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}
