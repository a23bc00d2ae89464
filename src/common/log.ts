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

export function createLogger(opts: LogOptions): Logger {
  const level = opts.level ?? process.env.VMTC_LOG_LEVEL ?? 'info';
  const base = { svc: opts.svc };
  if (opts.destination) return pino({ level, base }, opts.destination as pino.DestinationStream);
  return pino({ level, base });
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
