// The host clock of the turntable's measurement probes (docs/design.md#seeing-it), one file per
// probe beside this one under lab/turntable/probes/, and the pure analysis of what they saw
// (analysis.ts).
//
// Every time here is epoch milliseconds on the lab machine's single clock (host and client
// namespaces share it), with sub-millisecond precision where the source has it:
//   - UDP echo (lab/probes/udp-echo-client.mjs, run in the client namespace): send and reply times;
//   - ping -D (iputils, 50 ms as in the paper's Table 3): reply times from ping's own gettimeofday;
//   - serial heartbeat: arrival of each `hb N` line at the host side of the guest's ttyS1 (a unix
//     socket per QEMU; during a migration first the source's, then the destination's);
//   - the guest's internal clock probe: VMTC-GAP lines in each QEMU's console.log.

let clockOffset = performance.timeOrigin;
/**
 * Epoch ms with sub-ms precision: performance.timeOrigin + performance.now() (µs, monotonic),
 * kept within 1 ms of Date.now() should the realtime clock be stepped. Date.now() truncates to
 * whole ms, so the offset only follows it upward, or downward after a backward step of ≥ 1 ms.
 * The UDP client uses the same rule, so all probes share one time base.
 */
export function hostNow(): number {
  const p = performance.now();
  const d = Date.now() - p;
  if (d > clockOffset || d <= clockOffset - 1) clockOffset = d;
  return clockOffset + p;
}

/** Round to 0.01 ms, the precision every probe figure is kept at. */
export const r2 = (x: number): number => Math.round(x * 100) / 100;
