// Every option of the AAA in one typed object, defaults in one place
// (docs/contributing.md#options).
import type { Clock, Ids } from '../common/clock.ts';
import type { Logger } from '../common/log.ts';
import { RATE_LIMIT_DEFAULTS, type RateLimitOptions } from '../common/http.ts';

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
   * The base URL clients use to reach this AAA (scheme://host:port, optionally with a path prefix):
   * a proof's htu must be this plus the route's path, whatever Host header the request carries.
   * Default: http://HOST:PORT of the listen address (the port actually bound); required when
   * listening on a wildcard address (src/common/public-url.ts).
   */
  publicUrl?: string;
  /**
   * Refusals of keys the policy does not know (anyone can make a key) are written one row each for
   * the first `unknownRefusalsPerWindow` distinct keys of each fixed window of
   * `unknownRefusalWindowSec`; the rest of the window's such requests are counted and written as
   * one summary row when the window ends (docs/aaa.md#accounting). Defaults 10 and 60.
   */
  unknownRefusalsPerWindow?: number;
  unknownRefusalWindowSec?: number;
  /** Rate limits of the REST API per client address (README "Rate limits"; default RATE_LIMIT_DEFAULTS). */
  rateLimit?: Partial<RateLimitOptions>;
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
  unknownRefusalsPerWindow: 10,
  unknownRefusalWindowSec: 60,
  rateLimit: RATE_LIMIT_DEFAULTS,
  // publicUrl: http://HOST:PORT of the listen address, see AaaOptions.publicUrl.
} as const;
