// Hypervisor releases with known-bad live migration, and the pure matcher the controller's
// pre-check (src/controller/capacity.ts) and GET /v1/hosts use. A host agent reports its
// hypervisor's type, version and accelerator in its inventory (HostInventory.hypervisor); which of
// those releases are bad is decided here, on the controller's side, so an advisory added later
// applies to agents already deployed. docs/qemu.md "Known-bad versions" lists the entries.
import type { HypervisorType } from './agent-protocol.ts';

export interface HypervisorAdvisory {
  /** Stable id: named in refusals and warnings, and in a request's `overrideAdvisories`. */
  id: string;
  hypervisor: HypervisorType;
  /** The accelerator the bug needs (QEMU's `-accel`); a host that does not report one is not matched. */
  accelerator: string;
  /** Affected releases: every version below `below` (release candidates of `below` included). */
  affected: { below: string };
  fixedIn: string;
  /** The upstream commit that fixed it. */
  commit: string;
  summary: string;
  /** What it does to a live migration: 'refuse' (unless the request overrides it) or 'warn'
   *  (admitted, the record carries a warning). A cold migration is never affected. */
  live: 'refuse' | 'warn';
}

export const HYPERVISOR_ADVISORIES: readonly HypervisorAdvisory[] = [
  {
    // Seen in the lab with Debian 12's QEMU 7.2 and not with 10.0.2 (docs/qemu.md "Known-bad
    // versions"): busy TCG guests resumed at the destination with stale pages.
    id: 'qemu-tcg-dirty-bitmap',
    hypervisor: 'qemu',
    accelerator: 'tcg',
    affected: { below: '9.0.0' },
    fixedIn: '9.0.0',
    commit: '03bfc2188f061aa8381403f9280555f4e22c35a2',
    summary: 'TCG dirty tracking can miss pages written while live migration syncs its dirty bitmap: a busy guest resumes at the destination with stale memory (upstream "physmem: Fix migration dirty bitmap coherency with TCG memory access")',
    live: 'refuse',
  },
];

/** A release as [major, minor, micro, rc]: rc is the release-candidate number, or Infinity for
 *  the release itself (so 9.0.0-rc1 < 9.0.0). */
export type ParsedVersion = [number, number, number, number];

/**
 * The release a version string names, or undefined when it names none. Takes the leading
 * `MAJOR.MINOR[.MICRO]` of what `qemu-system-* --version` prints (agents/host/qemu/facts.ts reads
 * the word after "version": `7.2.19`), and also a whole version line or a Debian package version
 * (`7.2.19 (Debian 1:7.2+dfsg-7+deb12u18)`, `1:7.2+dfsg-7+deb12u18`, `10.0.2+ds-1~bpo12+1`): an
 * epoch is skipped and only `-rcN` / `~rcN` counts as a pre-release (a Debian revision does not).
 */
export function parseVersion(v: string): ParsedVersion | undefined {
  const m = /^\s*(?:QEMU emulator version\s+)?v?(?:\d+:)?(\d+)\.(\d+)(?:\.(\d+))?(?:[-~]rc(\d+))?/i.exec(v);
  if (!m) return undefined;
  return [Number(m[1]), Number(m[2]), Number(m[3] ?? 0), m[4] === undefined ? Infinity : Number(m[4])];
}

/** Negative, zero or positive as `a` is older than, the same as or newer than `b`. */
export function compareVersions(a: ParsedVersion, b: ParsedVersion): number {
  for (let i = 0; i < 4; i++) {
    if (a[i] !== b[i]) return a[i]! < b[i]! ? -1 : 1;
  }
  return 0;
}

/** The advisories a hypervisor matches: same type and accelerator, a version that parses and is
 *  in the affected range. A version that does not parse matches nothing. */
export function advisoriesFor(
  hv: { type: string; version: string; accelerator?: string | undefined },
  table: readonly HypervisorAdvisory[] = HYPERVISOR_ADVISORIES,
): HypervisorAdvisory[] {
  const version = parseVersion(hv.version);
  if (!version || !hv.accelerator) return [];
  return table.filter((a) => {
    if (a.hypervisor !== hv.type || a.accelerator !== hv.accelerator) return false;
    const below = parseVersion(a.affected.below);
    return below !== undefined && compareVersions(version, below) < 0;
  });
}
