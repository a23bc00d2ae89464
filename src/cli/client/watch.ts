// `vmtc migrate` waiting for its migration: poll GET /v1/migrations/:id, print every transition
// the controller recorded (from its own timestamps, so a state shorter than the poll interval is
// still shown), show copy progress, and turn Ctrl-C into a cancel request (first) or a detach
// (second). The controller's record is the truth; this loop only reports it.
import { VmtcError } from '../../common/errors.ts';
import type { ApiClient } from './http.ts';
import { fmtElapsed, fmtError, fmtProgress, type MigrationView } from './format.ts';

/** States whose progress (bytes copied of total) is worth a progress line. */
const PROGRESS_STATES = new Set(['precopy', 'cold_importing']);
const TERMINAL = new Set(['completed', 'rolled_back', 'cancelled', 'failed']);

export interface WatchIo {
  /** Where state and progress lines go (stderr); isTTY decides in-place rewriting. */
  err: { write(s: string): unknown; isTTY?: boolean };
  /** Receives SIGINT (process, or an EventEmitter in tests). */
  signals: { on(sig: 'SIGINT', fn: () => void): unknown; off(sig: 'SIGINT', fn: () => void): unknown };
  now?: () => number;
}

export interface WatchOptions {
  pollMs?: number;
  /** Progress redraw interval on a terminal (in place) and elsewhere (one line each). */
  ttyProgressMs?: number;
  lineProgressMs?: number;
  /** How long the controller may be unreachable before the wait gives up. */
  unreachableGiveUpMs?: number;
}

export type WatchOutcome =
  | { kind: 'ended'; migration: MigrationView; cancelRequested: boolean }
  | { kind: 'detached'; migration: MigrationView };

export async function watchMigration(client: ApiClient, first: MigrationView, io: WatchIo, o: WatchOptions = {}): Promise<WatchOutcome> {
  const pollMs = o.pollMs ?? 250;
  const tty = Boolean(io.err.isTTY);
  const progressEvery = tty ? (o.ttyProgressMs ?? 500) : (o.lineProgressMs ?? 2000);
  const giveUpMs = o.unreachableGiveUpMs ?? 60_000;
  const now = io.now ?? Date.now;
  const id = first.id;
  const created = Date.parse(first.createdAt);

  let shownTransitions = 0;
  let progressOnLine = false;
  let lastProgressAt = -Infinity;
  let lastState = '';
  let interrupts = 0;
  let cancelRequested = false;
  let detach!: () => void;
  const detached = new Promise<'detached'>((r) => { detach = () => r('detached'); });

  /** A full line on stderr; first wipe an in-place progress line so the two do not mix. */
  const line = (s: string) => {
    if (progressOnLine) { io.err.write('\r\x1b[K'); progressOnLine = false; }
    io.err.write(s + '\n');
  };

  const show = (m: MigrationView) => {
    const ts = m.transitions ?? [];
    for (; shownTransitions < ts.length; shownTransitions++) {
      const t = ts[shownTransitions]!;
      line(`[${fmtElapsed(Date.parse(t.at) - created)}] ${t.to}`);
    }
    if (ts.length === 0 && m.state !== lastState) line(`[${fmtElapsed(Date.parse(m.updatedAt) - created)}] ${m.state}`);
    if (m.state !== lastState) lastProgressAt = -Infinity;
    lastState = m.state;
    if (!PROGRESS_STATES.has(m.state)) return;
    const p = fmtProgress(m.state, m.progress);
    if (!p || now() - lastProgressAt < progressEvery) return;
    lastProgressAt = now();
    if (tty) { io.err.write(`\r\x1b[K${p}`); progressOnLine = true; } else line(p);
  };

  const onSigint = () => {
    interrupts++;
    if (interrupts >= 2) {
      line(`vmtc: stopped waiting; migration ${id} goes on (follow it with: vmtc status ${id})`);
      detach();
      return;
    }
    line(`vmtc: cancel requested for migration ${id}; waiting for it to end (Ctrl-C again to stop waiting)`);
    client.post(`/v1/migrations/${encodeURIComponent(id)}/cancel`).then(
      () => { cancelRequested = true; },
      (e) => line(`vmtc: the cancel was refused: ${e instanceof VmtcError ? fmtError(e) : String(e)}; still waiting`),
    );
  };
  io.signals.on('SIGINT', onSigint);

  let current = first;
  let unreachableSince: number | undefined;
  try {
    for (;;) {
      show(current);
      if (TERMINAL.has(current.state)) {
        if (progressOnLine) { io.err.write('\r\x1b[K'); progressOnLine = false; }
        return { kind: 'ended', migration: current, cancelRequested };
      }
      let timer: NodeJS.Timeout | undefined;
      const slept = await Promise.race([detached, new Promise<'tick'>((r) => { timer = setTimeout(() => r('tick'), pollMs); })]);
      clearTimeout(timer);
      if (slept === 'detached') return { kind: 'detached', migration: current };
      try {
        const next = await Promise.race([detached, client.get<MigrationView>(`/v1/migrations/${encodeURIComponent(id)}`)]);
        if (next === 'detached') return { kind: 'detached', migration: current };
        current = next;
        if (unreachableSince !== undefined) line('vmtc: the controller answers again');
        unreachableSince = undefined;
      } catch (e) {
        // A controller restart must not end the wait: the migration's record survives it.
        const transient = e instanceof VmtcError && (e.code === 'VMTC_PEER_UNREACHABLE' || e.code === 'VMTC_TIMEOUT' || e.status >= 502);
        if (!transient) throw e;
        if (unreachableSince === undefined) {
          unreachableSince = now();
          line(`vmtc: ${fmtError(e as VmtcError)}; retrying for up to ${Math.round(giveUpMs / 1000)} s`);
        } else if (now() - unreachableSince > giveUpMs) throw e;
      }
    }
  } finally {
    io.signals.off('SIGINT', onSigint);
    if (progressOnLine) io.err.write('\n');
  }
}
