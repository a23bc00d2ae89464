// The streams of a migration that asks for multifd without saying how many (docs/lab.md
// "Throughput"): enough parallel TCP streams (QEMU multifd) to fill the reserved lightpath. One
// TCP flow carries at most one window per round trip; a host at Linux's default buffers
// (net.ipv4.tcp_wmem max 4 MiB) reaches ~2 MB of window, i.e. 78–81 Mbit/s at 198 ms RTT
// (bench/migration-throughput.ts --tcp-max-mb 4), where the lightpath is reserved at hundreds of
// Mbit/s. So: channels = ceil(bandwidth-delay product ÷ per-flow window), within [1, maxChannels].
// Pure: the caller passes the reserved bandwidth; the RTT and the per-flow window are assumptions
// (TUNING_DEFAULTS) until the controller learns them.
import type { MigrationTuning } from '../../common/agent-protocol.ts';
import type { MigrationRequest } from './record.ts';

export interface TuningDefaults {
  /** The path's round-trip time assumed when nothing says (ms): the long-haul case the controller
   *  is for (the paper's 198 ms). The broker's topology has per-link latencies but the reservation
   *  does not carry them to the controller, so it is not learned yet. Shorter real paths only get
   *  more streams than they need (an idle thread and socket each). */
  rttMs: number;
  /** The window one TCP flow between two hosts reaches (bytes): measured 2 MB with Linux's
   *  default buffers (78–81 Mbit/s × 198 ms). Hosts with larger buffers need fewer streams. */
  flowWindowBytes: number;
  /** At most this many streams (each a QEMU thread and a TCP connection at both ends). */
  maxChannels: number;
}

export const TUNING_DEFAULTS: TuningDefaults = { rttMs: 200, flowWindowBytes: 2 * 1024 * 1024, maxChannels: 16 };

/** Streams needed to fill `bandwidthMbps` over `rttMs` when one flow carries `flowWindowBytes`
 *  per round trip: ceil(BDP ÷ window), within [1, maxChannels]. Bad input (non-finite, ≤ 0) → 1. */
export function multifdChannelsFor(bandwidthMbps: number, rttMs: number, flowWindowBytes: number, maxChannels: number): number {
  if (![bandwidthMbps, rttMs, flowWindowBytes].every((v) => Number.isFinite(v) && v > 0)) return 1;
  const bdpBytes = (bandwidthMbps * 1e6 / 8) * (rttMs / 1000);
  const max = Math.max(1, Math.floor(maxChannels));
  return Math.min(max, Math.max(1, Math.ceil(bdpBytes / flowWindowBytes)));
}

/**
 * The multifd part of a migration's tuning, the request's winning:
 * - `multifd: false` asked, or nothing asked: nothing (one stream);
 * - `multifdChannels` asked: multifd with those (unless `multifd: false`);
 * - `multifd: true` asked without channels: multifd with the computed count.
 * Not on unless asked: measured at 198 ms (docs/lab.md "Throughput"), multifd's final sync of its
 * streams costs downtime (QEMU's own figure 16 ms with one stream; 35–75 ms with 6 streams,
 * 41–157 ms with 12), and on hosts whose TCP buffers let one flow fill the path (the lab's) it
 * shortens only the copy's slow start. Where hosts keep Linux's default buffers one flow carries
 * ~80 Mbit/s at 198 ms and multifd is what fills the lightpath: ask for it there.
 * Deterministic in the request, so the destination (vm.prepareIncoming) and the source (vm.migrate)
 * always get the same choice, which QEMU needs (the destination waits for that many streams).
 */
export function defaultMultifd(
  request: Pick<MigrationRequest, 'multifd' | 'multifdChannels' | 'postcopy'>,
  bandwidthMbps: number,
  d: TuningDefaults = TUNING_DEFAULTS,
): Pick<MigrationTuning, 'multifd' | 'multifdChannels'> {
  if (request.multifd === false) return {};
  if (request.multifdChannels !== undefined) return { multifd: true, multifdChannels: request.multifdChannels };
  if (request.multifd !== true) return {};
  return { multifd: true, multifdChannels: multifdChannelsFor(bandwidthMbps, d.rttMs, d.flowWindowBytes, d.maxChannels) };
}
