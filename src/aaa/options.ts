// Every option of the AAA in one typed object, defaults in one place
// (docs/contributing.md#options).
import type { Clock, Ids } from '../common/clock.ts';
import type { Logger } from '../common/log.ts';

export interface AaaOptions {
  /** Where to listen (default 127.0.0.1, port 0 = any free port). */
  host?: string;
  port?: number;
  /** State directory: aaa.db (keys, accounting) and admin.token live here. */
  dataDir: string;
  /** This AAA's domain; the issuer is "aaa:<domain>". */
  domain: string;
  /** Path of the policy file (JSON, docs/aaa.md) … */
  policyFile?: string;
  /** … or the policy document itself (tests, the lab). Exactly one of the two. */
  policy?: unknown;
  /** Token lifetime in seconds (default 300; the policy's tokenLifetimeSec overrides the default but not an explicit option). */
  tokenLifetimeSec?: number;
  /** Oldest accepted DPoP proof, seconds (default 60). */
  proofMaxAgeSec?: number;
  /** Timeout of one consent request to a peer AAA, ms (default 5000). */
  peerTimeoutMs?: number;
  /** Longest lightpath window that can be authorised, seconds (default 7 days). */
  maxWindowSec?: number;
  /** How far in the past a window may start (an on-demand request says "now"), seconds (default 300). */
  maxWindowLagSec?: number;
  /**
   * The base URL clients use to reach this AAA (scheme://host:port), for checking a proof's htu
   * behind a proxy. Default: taken from each request's scheme and Host header.
   */
  publicUrl?: string;
  clock?: Clock;
  ids?: Ids;
  logger?: Logger;
}

export const AAA_DEFAULTS = {
  host: '127.0.0.1',
  port: 0,
  tokenLifetimeSec: 300,
  proofMaxAgeSec: 60,
  peerTimeoutMs: 5000,
  maxWindowSec: 7 * 86400,
  maxWindowLagSec: 300,
} as const;
