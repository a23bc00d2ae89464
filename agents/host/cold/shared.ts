// What the cold path's export, import and server share: its options, the record of one export,
// the agent's TLS credentials, checksums and progress throttling.
import { createHash, type Hash } from 'node:crypto';
import { createReadStream, readFileSync } from 'node:fs';
import type { ServerResponse } from 'node:http';
import type { PeerCertificate } from 'node:tls';
import type { ColdDisk, ColdExport, ColdProgress } from '../../../src/common/agent-protocol.ts';
import type { Clock, Ids } from '../../../src/common/clock.ts';
import { commonError } from '../../../src/common/errors.ts';
import type { Logger } from '../../../src/common/log.ts';
import { identityFiles } from '../../common/agent-link.ts';
import type { HypervisorDriver } from '../driver.ts';

/** Options of the cold path; defaults in one place (docs/contributing.md#options). */
export interface ColdOptions {
  /** The agent's data dir: its credentials (agent.key, agent.crt, ca.crt) and the disk store
   *  `<dataDir>/disks/<vmId>/`. */
  dataDir: string;
  /** This host's id (its certificate's CN). */
  hostId: string;
  driver: HypervisorDriver;
  logger?: Logger;
  /** HOST:PORT (or [V6]:PORT) the disk export server listens on, started at the first export.
   *  Default '127.0.0.1:0'. */
  exportListen?: string;
  /** Host put in the URLs when exportListen is a wildcard address. Default: os.hostname(). */
  exportHost?: string;
  /** Expiry of exports, progress intervals, the verify loop (default: keepAliveClock). */
  clock?: Clock;
  /** Secrets of the URLs (default: 32 random bytes, base64url). */
  ids?: Ids;
  /** Free bytes for the disk store (default: statfs). Injectable for tests. */
  freeSpace?: (dir: string) => Promise<number>;
  /** A download that receives nothing for this long fails (default 30 s). */
  stallMs?: number;
  /** Minimum interval between cold.progress callbacks (default 250 ms). */
  progressEveryMs?: number;
  /** The driver's network namespace, where the lightpath is (the QEMU driver's `netns`: the lab),
   *  and this host's lightpath address in it (the agent's migrationAddress): the disks are served
   *  on that address and fetched from inside the namespace, through relays (relay.ts), so their
   *  bytes cross the lightpath. Without it the agent serves and fetches in its own namespace. */
  relay?: { netns: string; host?: string };
}

export const COLD_DEFAULTS = {
  exportListen: '127.0.0.1:0',
  stallMs: 30_000,
  progressEveryMs: 250,
} as const;

export type ColdProgressListener = (p: ColdProgress) => void;

/** What vm.coldExport asks for (agent-protocol.ts HostMethods). */
export interface ExportParams {
  vmId: string;
  migrationId: string;
  destinationHostId: string;
  ttlMs: number;
  destinationCertSerials?: string[];
  sourceCertSerials?: string[];
  /** 'later': publish without the disks' sha256 (empty), computed only when asked
   *  (vm.coldChecksums): a move that expects to boot from a replica fetches nothing, and the
   *  checksums would be downtime for nothing (docs/design.md#cold-path). Default 'now'. */
  checksums?: 'now' | 'later';
}

export interface ExportedDisk {
  disk: ColdDisk;
  path: string;
  secret: string;
  spent: boolean;
}

/** One published export: its disks' URLs answer until it is withdrawn or expires. */
export interface ExportRec {
  exp: ColdExport;
  /** Where the URLs are served from; closed when the export is withdrawn (a relay stops). */
  route: ExportRoute;
  disks: ExportedDisk[];
  withdrawn: boolean;
  /** Responses being streamed, cut when the export is withdrawn. */
  active: Set<ServerResponse>;
}

/** The base URL of an export's disks, and how to stop serving there. */
export interface ExportRoute {
  url: string;
  close(): Promise<void>;
}

export interface Credentials {
  key: string;
  cert: string;
  ca: string;
}

/** Names of files in the disk store: no separators, no dot-names. */
export const SAFE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

/** The agent's certificate, key and the deployment CA, from its data dir. */
export function loadCredentials(dataDir: string): Credentials {
  const f = identityFiles(dataDir);
  try {
    return { key: readFileSync(f.key, 'utf8'), cert: readFileSync(f.cert, 'utf8'), ca: readFileSync(f.ca, 'utf8') };
  } catch (e) {
    throw commonError('VMTC_CONFIG_INVALID', { field: 'data', dir: dataDir, reason: (e as Error).message }, { message: 'the agent credentials are unreadable', cause: e });
  }
}

/** The CN of a peer certificate: the host id the deployment CA gave it at enrolment. */
export function peerCn(cert: PeerCertificate | undefined): string | undefined {
  const raw = cert?.subject?.CN as string | string[] | undefined;
  return Array.isArray(raw) ? raw[0] : raw;
}

/** A progress callback that fires at most every `everyMs` (always when forced). */
export function progressReporter(clock: Clock, everyMs: number, onProgress: ColdProgressListener | undefined, base: Omit<ColdProgress, 'transferredBytes'>): (n: number, force?: boolean) => void {
  let last = 0;
  return (n, force = false) => {
    if (!onProgress) return;
    const now = clock.now();
    if (!force && now - last < everyMs) return;
    last = now;
    try {
      onProgress({ ...base, transferredBytes: n });
    } catch {
      /* a listener's failure must not break the transfer */
    }
  };
}

async function feed(stream: AsyncIterable<unknown>, hash: Hash, onBytes?: (n: number) => void): Promise<void> {
  for await (const chunk of stream) {
    hash.update(chunk as Buffer);
    onBytes?.((chunk as Buffer).length);
  }
}

/** Feed the first `bytes` of a file into `hash` (a resumed download's part already here). */
export async function hashFile(path: string, hash: Hash, bytes: number, onBytes?: (n: number) => void): Promise<void> {
  if (bytes > 0) await feed(createReadStream(path, { start: 0, end: bytes - 1 }), hash, onBytes);
}

/** sha256 of a whole file, streamed; onBytes gets each chunk's length. */
export async function sha256File(path: string, onBytes?: (n: number) => void): Promise<string> {
  const hash = createHash('sha256');
  await feed(createReadStream(path), hash, onBytes);
  return hash.digest('hex');
}
