// What the tunnel agent needs from the place where clients' traffic enters: a set of sites the
// client tunnel sends to. Make-before-break (docs/design.md#live-migration step 6, the paper's
// Figure 2) is built on it as "add the new site, later remove the old one"; the set may hold
// both for a while.
//
// Every implementation keeps the same rules, so the agent and its tests do not depend on which
// one runs:
// - add() of a site already present and remove() of a site already absent succeed (the controller
//   may retry after a lost reply);
// - a site the driver has no address for is VMTC_TUNNEL_UNKNOWN_SITE;
// - remove() of the last remaining site is VMTC_TUNNEL_LAST_SITE unless forced: a prune of the
//   wrong site must never leave the VM unreachable.

export interface RemoveOptions {
  /** Remove even if it is the last site (an operator taking the tunnel down on purpose). */
  force?: boolean;
}

export interface TunnelDriver {
  /** 'vxlan' (Linux) or 'memory' (the test double). */
  readonly type: string;
  /** Whether this driver can send to `site` (it has an address for it). */
  knows(site: string): boolean;
  /** The site names it has addresses for (undefined: any name, the test double's default). */
  knownSites(): string[] | undefined;
  /** Sites currently receiving, in the order the data plane lists them. A destination the driver
   *  has no site name for is listed by its address. */
  sites(): Promise<string[]>;
  /** Start sending to `site` as well. Present already: nothing to do. */
  add(site: string): Promise<void>;
  /** Stop sending to `site`. Absent already: nothing to do. */
  remove(site: string, opts?: RemoveOptions): Promise<void>;
  close(): Promise<void>;
}
