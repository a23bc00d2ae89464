// Following a migration from the client verbs (`vmtc migrate`, `vmtc watch ID`, `vmtc status ID
// --watch`): the controller's event stream (events.ts) — `snapshot`, `transition`, `progress`,
// `end` — is shown as one line per recorded transition (from the controller's own timestamps, so
// a state shorter than any refresh is still shown) and one progress line (progress.ts) redrawn
// in place on a terminal, or printed every few seconds elsewhere. Ctrl-C asks for a cancel
// (migrate: first press; the second detaches) or detaches at once (watch). The controller's
// record is the truth; this only reports it.
import { VmtcError } from '../../common/errors.ts';
import type { ApiClient } from './http.ts';
import { fmtChange, fmtElapsed, fmtError, wrapText, type ChangeView, type MigrationView, type ProgressView, type TransitionView } from './format.ts';
import { fmtProgressLine } from './progress.ts';
import { followEvents, type FollowOptions } from './events.ts';

/** States whose progress (bytes copied of total) is worth a progress line. */
const PROGRESS_STATES = new Set(['precopy', 'cold_importing']);
const TERMINAL = new Set(['completed', 'rolled_back', 'cancelled', 'failed']);

export interface WatchIo {
  /** Where state and progress lines go (stderr): on a terminal (isTTY) the progress line is
   *  redrawn in place and fitted to `columns`; elsewhere plain lines, no control codes. */
  err: { write(s: string): unknown; isTTY?: boolean; columns?: number };
  /** Receives SIGINT (process, or an EventEmitter in tests). */
  signals: { on(sig: 'SIGINT', fn: () => void): unknown; off(sig: 'SIGINT', fn: () => void): unknown };
  now?: () => number;
}

export interface WatchOptions {
  /** What Ctrl-C does: `cancel` (first press asks the controller to cancel and keeps waiting,
   *  the second stops waiting) or `detach` (stop following at once). Default cancel. */
  interrupt?: 'cancel' | 'detach';
  /** Progress redraw interval on a terminal (in place) and elsewhere (one line each). */
  ttyProgressMs?: number;
  lineProgressMs?: number;
  /** The event stream's reconnect timing (tests shorten it). */
  stream?: Pick<FollowOptions, 'retryMs' | 'maxRetryMs' | 'giveUpMs' | 'idleMs'>;
}

export type WatchOutcome =
  | { kind: 'ended'; migration: MigrationView; cancelRequested: boolean }
  | { kind: 'detached'; migration: MigrationView };

/** Width of the terminal for a line that must not wrap: one column is kept free, since a line
 *  that fills the last column leaves some terminals' cursor in a pending wrap. */
export function usableWidth(columns: number | undefined): number {
  return Math.max(10, (columns && columns > 0 ? columns : 80) - 1);
}

/** State lines and the progress line on one stream, without mixing them up. */
export class StatusWriter {
  private progressShown = false;
  private lastProgressAt = -Infinity;

  constructor(private readonly io: WatchIo, private readonly o: { ttyProgressMs?: number; lineProgressMs?: number } = {}) {}

  private get tty(): boolean {
    return Boolean(this.io.err.isTTY);
  }

  private now(): number {
    return (this.io.now ?? Date.now)();
  }

  /** A full line; first wipes an in-place progress line. On a terminal, wrapped to its width. */
  line(s: string): void {
    this.clearProgress();
    this.io.err.write((this.tty ? wrapText(s, usableWidth(this.io.err.columns)) : s) + '\n');
  }

  /** The progress line, at most every ttyProgressMs (terminal) or lineProgressMs (elsewhere);
   *  `force` draws it now (a new state's first figures). */
  progress(render: (width: number) => string | undefined, force = false): void {
    const every = this.tty ? (this.o.ttyProgressMs ?? 500) : (this.o.lineProgressMs ?? 2000);
    if (!force && this.now() - this.lastProgressAt < every) return;
    const text = render(this.tty ? usableWidth(this.io.err.columns) : Infinity);
    if (!text) return;
    this.lastProgressAt = this.now();
    if (this.tty) {
      this.io.err.write(`\r\x1b[K${text}`);
      this.progressShown = true;
    } else {
      this.io.err.write(text + '\n');
    }
  }

  clearProgress(): void {
    if (this.progressShown) {
      this.io.err.write('\r\x1b[K');
      this.progressShown = false;
    }
  }

  resetThrottle(): void {
    this.lastProgressAt = -Infinity;
  }
}

/** What has been shown of one migration: transitions by seq, so a snapshot that repeats them
 *  after a reconnect shows nothing twice (a record without seqs falls back to list positions). */
class Shown {
  private seqs = new Set<number>();
  private count = 0;

  /** Whether `t` (at index `i` of a record's list; none for a single event) is new; marks it shown. */
  take(t: TransitionView, i?: number): boolean {
    if (typeof t.seq === 'number') {
      if (this.seqs.has(t.seq)) return false;
      this.seqs.add(t.seq);
      if (i !== undefined) this.count = Math.max(this.count, i + 1);
      return true;
    }
    if (i === undefined) return true;
    if (i < this.count) return false;
    this.count = i + 1;
    return true;
  }
}

export async function watchMigration(client: ApiClient, first: MigrationView, io: WatchIo, o: WatchOptions = {}): Promise<WatchOutcome> {
  const id = first.id;
  const created = Date.parse(first.createdAt);
  const out = new StatusWriter(io, o);
  const shown = new Shown();
  let current: MigrationView = first;
  let lastState = '';
  let interrupts = 0;
  let cancelRequested = false;
  let detached = false;
  let shownChanges = 0;
  const ac = new AbortController();

  const stateLine = (to: string, at: string) => out.line(`[${fmtElapsed(Date.parse(at) - created)}] ${to}`);
  const changeLine = (c: ChangeView) => out.line(`[${fmtElapsed(Date.parse(c.at) - created)}] ${fmtChange(c)}`);
  const drawProgress = (force: boolean) => {
    if (!PROGRESS_STATES.has(current.state)) return;
    out.progress((w) => fmtProgressLine(current.state, current.progress as ProgressView | null, w), force);
  };
  const enterState = (state: string) => {
    if (state === lastState) return;
    lastState = state;
    out.resetThrottle();
  };
  const showRecord = (m: MigrationView) => {
    current = m;
    const ts = m.transitions ?? [];
    ts.forEach((t, i) => { if (shown.take(t, i)) stateLine(t.to, t.at); });
    if (ts.length === 0 && m.state !== lastState) stateLine(m.state, m.updatedAt);
    const changes = (m as { changes?: ChangeView[] }).changes ?? [];
    for (; shownChanges < changes.length; shownChanges++) changeLine(changes[shownChanges]!);
    enterState(m.state);
    drawProgress(true);
  };
  const showTransition = (t: TransitionView) => {
    if (!shown.take(t)) return;
    stateLine(t.to, t.at);
    current = { ...current, state: t.to as MigrationView['state'], updatedAt: t.at };
    enterState(t.to);
  };

  const onSigint = () => {
    interrupts++;
    if (o.interrupt === 'detach' || interrupts >= 2) {
      out.line(`vmtc: ${o.interrupt === 'detach' ? 'stopped following' : 'stopped waiting'}; migration ${id} goes on (follow it again with: vmtc watch ${id})`);
      detached = true;
      ac.abort();
      return;
    }
    out.line(`vmtc: cancel requested for migration ${id}; waiting for it to end (Ctrl-C again to stop waiting)`);
    client.post(`/v1/migrations/${encodeURIComponent(id)}/cancel`).then(
      () => { cancelRequested = true; },
      (e) => out.line(`vmtc: the cancel was refused: ${e instanceof VmtcError ? fmtError(e) : String(e)}; still waiting`),
    );
  };
  io.signals.on('SIGINT', onSigint);

  try {
    showRecord(first);
    if (TERMINAL.has(first.state) && first.transitions !== undefined) return { kind: 'ended', migration: first, cancelRequested };
    const how = await followEvents(client.config, `/v1/migrations/${encodeURIComponent(id)}/events`, {
      ...(o.stream ?? {}),
      signal: ac.signal,
      onEvent: (e) => {
        switch (e.event) {
          case 'snapshot':
          case 'end': {
            const m = JSON.parse(e.data) as MigrationView;
            showRecord(m);
            return e.event === 'end' || TERMINAL.has(m.state);
          }
          case 'transition':
            showTransition(JSON.parse(e.data) as TransitionView);
            return false;
          case 'forced':
          case 'tuned': {
            changeLine(JSON.parse(e.data) as ChangeView);
            shownChanges++;
            return false;
          }
          case 'progress':
            current = { ...current, progress: JSON.parse(e.data) as ProgressView };
            drawProgress(false);
            return false;
          default:
            return false; // an event this client does not know yet
        }
      },
      onRetry: (e, attempt) => {
        if (attempt === 1) out.line(`vmtc: ${fmtError(e)}; reconnecting`);
      },
      onResumed: () => out.line('vmtc: following again'),
    });
    if (how === 'aborted' || detached) return { kind: 'detached', migration: current };
    return { kind: 'ended', migration: current, cancelRequested };
  } finally {
    io.signals.off('SIGINT', onSigint);
    out.clearProgress();
  }
}
