// MemoryTunnelDriver: a TEST DOUBLE of TunnelDriver. It keeps the set of sites in memory and
// touches no network; it follows the same rules as the vxlan driver (idempotent add/remove,
// unknown site, last site refused) so tests of the agent and the controller port exercise the
// real decisions. `ops` records every call with the set after it, so tests can check the order
// of a switchover; `failAdd`/`failRemove` inject faults.
import { tunnelError } from '../../src/common/tunnel-protocol.ts';
import type { RemoveOptions, TunnelDriver } from './driver.ts';

export interface MemoryTunnelDriverOptions {
  /** Sites it may send to. Default: any name. */
  known?: string[];
  /** Sites receiving at start. */
  initial?: string[];
}

export interface MemoryOp {
  op: 'add' | 'remove';
  site: string;
  changed: boolean;
  /** The set of sites after this call. */
  after: string[];
}

export class MemoryTunnelDriver implements TunnelDriver {
  readonly type = 'memory';
  private readonly current: string[] = [];
  private readonly known?: Set<string>;
  readonly ops: MemoryOp[] = [];
  /** Sites whose add() throws VMTC_TUNNEL_COMMAND_FAILED (fault injection). */
  readonly failAdd = new Set<string>();
  readonly failRemove = new Set<string>();
  closed = false;

  constructor(opts: MemoryTunnelDriverOptions = {}) {
    if (opts.known) this.known = new Set(opts.known);
    for (const s of opts.initial ?? []) {
      this.check(s);
      if (!this.current.includes(s)) this.current.push(s);
    }
  }

  knows(site: string): boolean {
    return !this.known || this.known.has(site);
  }

  knownSites(): string[] | undefined {
    return this.known ? [...this.known] : undefined;
  }

  async sites(): Promise<string[]> {
    return [...this.current];
  }

  async add(site: string): Promise<void> {
    this.check(site);
    if (this.failAdd.has(site)) throw tunnelError('VMTC_TUNNEL_COMMAND_FAILED', { op: 'add', site, injected: true });
    const changed = !this.current.includes(site);
    if (changed) this.current.push(site);
    this.ops.push({ op: 'add', site, changed, after: [...this.current] });
  }

  async remove(site: string, opts: RemoveOptions = {}): Promise<void> {
    this.check(site);
    const i = this.current.indexOf(site);
    if (i >= 0 && this.current.length === 1 && !opts.force) throw tunnelError('VMTC_TUNNEL_LAST_SITE', { site, sites: [...this.current] });
    if (this.failRemove.has(site)) throw tunnelError('VMTC_TUNNEL_COMMAND_FAILED', { op: 'remove', site, injected: true });
    if (i >= 0) this.current.splice(i, 1);
    this.ops.push({ op: 'remove', site, changed: i >= 0, after: [...this.current] });
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  private check(site: string): void {
    if (this.known && !this.known.has(site)) throw tunnelError('VMTC_TUNNEL_UNKNOWN_SITE', { site, known: [...this.known] });
  }
}
