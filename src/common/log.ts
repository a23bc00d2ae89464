// pino loggers. Child loggers carry { svc, hostId, vmId, migrationId } so one migration can be
// followed across services with one grep (docs/contributing.md#logs).
import { pino, type Logger } from 'pino';

export type { Logger };

export interface LogOptions {
  svc: string;
  level?: string;
  /** Write to this destination instead of stdout (tests pass a file or a silent stream). */
  destination?: NodeJS.WritableStream;
}

const { chindingsSym } = pino.symbols;

/**
 * pino's child() appends its bindings to the parent's as JSON text, so a key bound again lower
 * down (a module binding `mod` on a logger its caller had already bound it on, a migration's
 * logger binding `hostId` under an agent's) came out twice in every line, which JSON readers
 * resolve differently (jq and JSON.parse keep the last, others the first or refuse the line).
 * Every child of a logger made here drops the earlier occurrence: one key, the innermost value,
 * at the place the key was first bound.
 */
export function dedupeBindings(child: Logger): void {
  const holder = child as unknown as Record<symbol, string>;
  const text = holder[chindingsSym];
  if (typeof text !== 'string' || text.length < 2) return;
  let parsed: Record<string, unknown>;
  try {
    parsed = JSON.parse(`{${text.slice(1)}}`) as Record<string, unknown>;
  } catch {
    return; // not plain JSON (a custom stringifier): leave pino's text alone
  }
  const canonical = JSON.stringify(parsed);
  // Same length: no key was dropped by the parse, so there was no duplicate to remove.
  if (canonical.length - 2 + 1 === text.length) return;
  holder[chindingsSym] = `,${canonical.slice(1, -1)}`;
}

export function createLogger(opts: LogOptions): Logger {
  const level = opts.level ?? process.env.VMTC_LOG_LEVEL ?? 'info';
  const base = { svc: opts.svc };
  const options = { level, base, onChild: dedupeBindings };
  if (opts.destination) return pino(options, opts.destination as pino.DestinationStream);
  return pino(options);
}

/** A logger that drops everything: for tests and library use that did not pass one. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}

/** The service's logger: `logger` (or a silent one) bound to `svc` and `extra`. A logger that
 *  already carries this svc (the one `vmtc <svc>` makes) is not bound again, so each JSON line
 *  has one `svc` key. */
export function serviceLogger(logger: Logger | undefined, svc: string, extra: Record<string, unknown> = {}): Logger {
  const base = logger ?? silentLogger();
  const bound = base.bindings() as { svc?: unknown };
  return base.child({ ...(bound.svc === svc ? {} : { svc }), ...extra });
}
