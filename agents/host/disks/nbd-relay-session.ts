// One client of the follow relay (nbd-relay.ts), from its connect to the end: the relay's own
// handshake with it (each option answered by nbd-relay-handshake.ts from what the store said when
// the relay started), then the store's connection (the idle one negotiated at the start, or, for
// a later client, a new one: nbd-relay-store.ts), then the transmission phase on the two
// (nbd-relay-conn.ts). The store's connection is taken only once the client asked for the export,
// so a client refused or cut before leaves the idle one to the next. Malformed input cuts the
// client; nothing here throws into the event loop.
import type { Socket } from 'node:net';
import { RelayConn, type RelayConnDeps } from './nbd-relay-conn.ts';
import { OPTION_HEADER, parseOptionHeader } from './nbd-relay-frames.ts';
import { answerOption, clientFlags, type ClientSession, type StoreExport } from './nbd-relay-handshake.ts';
import { Bytes, Valve, type ConnState } from './nbd-relay-plumbing.ts';
import { sameExport, type StoreDial, type StoreLink } from './nbd-relay-store.ts';
import { encodeGreeting } from './nbd-server-wire.ts';

export interface SessionDeps extends Omit<RelayConnDeps, 'structured'> {
  /** The store's export, from the relay's handshake with it at the start. */
  store: StoreExport;
  link: Pick<StoreLink, 'take' | 'dial' | 'discard'>;
}

/** Options one client may send before the transmission phase. */
const MAX_OPTIONS = 256;

type State =
  | { k: 'flags' } | { k: 'option' } | { k: 'data'; option: number; length: number }
  | { k: 'store' } | { k: 'closing' } | { k: 'handed' };

export class RelaySession {
  readonly done: Promise<void>;
  private st: State = { k: 'flags' };
  private session: ClientSession = { noZeroes: false, structured: false };
  private readonly cin = new Bytes();
  private readonly valve: Valve;
  private conn: RelayConn | undefined;
  private dialing: StoreDial | undefined;
  private options = 0;
  private ended = false;
  private timer: { cancel(): void } | undefined;
  private resolveDone!: () => void;
  // The client's listeners until the transmission phase (RelayConn then has its own).
  private readonly onData = (b: Buffer) => this.read(b);
  private readonly onEnd = () => this.gone();
  private readonly onError = (e: Error) => this.d.log.info({ conn: this.d.id, err: e.message }, 'nbd relay: the client\'s connection failed during the handshake');
  private readonly onClose = () => {
    this.gone();
    this.timer?.cancel();
    this.resolveDone();
  };

  constructor(private readonly client: Socket, private readonly d: SessionDeps) {
    this.done = new Promise((r) => { this.resolveDone = r; });
    this.valve = new Valve(client);
    client.setNoDelay?.(true);
    client.on('data', this.onData).on('end', this.onEnd).on('error', this.onError).on('close', this.onClose);
    client.write(encodeGreeting());
  }

  state(): ConnState {
    return this.conn?.state() ?? { id: this.d.id, phase: this.ended ? 'closed' : 'handshake', structured: this.session.structured, inflight: 0, queued: 0 };
  }

  release(): void {
    this.conn?.release();
  }

  /** The relay closes: a client in the transmission phase goes as RelayConn says; one still
   *  negotiating (or waiting for the store) is cut. */
  shutdown(): void {
    if (this.conn) return this.conn.shutdown();
    this.cut('the relay closes during the handshake', 'info');
  }

  cut(reason: string, level: 'info' | 'warn' = 'warn'): void {
    if (this.conn) return this.conn.cut(reason, level);
    if (this.ended) return;
    this.ended = true;
    this.dialing?.abort(reason);
    this.d.log[level]({ conn: this.d.id, reason }, 'nbd relay: connection cut');
    this.client.destroy();
  }

  /** The client went away before its transmission phase (after a refusal: as it should). */
  private gone(): void {
    if (this.st.k !== 'closing') return this.cut('the client left during the handshake', 'info');
    this.ended = true;
    this.client.destroy();
  }

  private fail(reason: string): void {
    if (this.ended) return;
    this.d.counters.protocolErrors++;
    this.cut(`malformed input from the client: ${reason}`);
  }

  private read(b: Buffer): void {
    if (this.ended || this.st.k === 'closing') return;
    this.cin.push(b);
    try {
      this.pump();
    } catch (e) {
      this.fail(`the relay failed on the client's input: ${(e as Error).message}`);
    }
  }

  private pump(): void {
    for (;;) {
      if (this.ended) return;
      const st = this.st;
      switch (st.k) {
        case 'flags': {
          if (this.cin.length < 4) return;
          const f = clientFlags(this.cin.take(4).readUInt32BE(0));
          if (typeof f === 'string') return this.fail(f);
          this.session = f;
          this.st = { k: 'option' };
          break;
        }
        case 'option': {
          if (this.cin.length < OPTION_HEADER) return;
          const h = parseOptionHeader(this.cin.take(OPTION_HEADER));
          if (typeof h === 'string') return this.fail(h);
          if (++this.options > MAX_OPTIONS) return this.fail(`more than ${MAX_OPTIONS} options`);
          this.st = { k: 'data', option: h.option, length: h.length };
          break;
        }
        case 'data': {
          if (this.cin.length < st.length) return;
          const a = answerOption(this.d.store, this.session, st.option, this.cin.take(st.length));
          if ('count' in a && a.count) this.d.counters[a.count]++;
          if (a.next === 'options') {
            this.session = a.session;
            this.send(a.out);
            this.st = { k: 'option' };
            break;
          }
          if (a.next === 'close') return this.close(a.out, a.why);
          return this.takeStore(a.out);
        }
        default:
          return; // waiting for the store, closing, or handed over
      }
    }
  }

  private send(out: Buffer[]): void {
    for (const b of out) this.client.write(b);
  }

  /** The handshake ends here (an abort, a refused NBD_OPT_EXPORT_NAME): what is owed, then the end. */
  private close(out: Buffer[], why: string): void {
    this.st = { k: 'closing' };
    this.cin.clear();
    this.send(out);
    this.d.log.info({ conn: this.d.id, why }, 'nbd relay: the handshake ended without a transmission phase');
    this.client.end();
    this.timer = this.d.clock.setTimeout(() => this.cut('the client did not close after its handshake ended', 'info'), this.d.closeWaitMs);
  }

  /** The client asked for the export: its answer goes out once a store connection is there. */
  private takeStore(out: Buffer[]): void {
    this.st = { k: 'store' };
    this.valve.set('store', true);
    const idle = this.d.link.take();
    if (idle) return this.handover(idle, out);
    this.d.log.info({ conn: this.d.id }, 'nbd relay: no idle store connection: negotiating a new one (across the path)');
    const dial = this.d.link.dial();
    this.dialing = dial;
    dial.done.then(
      (c) => {
        this.dialing = undefined;
        if (this.ended) return void this.d.link.discard(c.socket);
        if (!sameExport(c.export, this.d.store)) {
          void this.d.link.discard(c.socket);
          return this.cut(`the store's export changed since the relay started (size ${c.export.size}, flags ${c.export.flags}, structured ${c.export.structured})`);
        }
        this.handover(c.socket, out);
      },
      (e: Error & { details?: { nbd?: string } }) => {
        this.dialing = undefined;
        this.cut(`no connection to the store: ${e.details?.nbd ?? e.message}`);
      },
    );
  }

  private handover(store: Socket, out: Buffer[]): void {
    this.client.off('data', this.onData).off('end', this.onEnd).off('error', this.onError).off('close', this.onClose);
    this.st = { k: 'handed' };
    this.send(out);
    // Resumed first: its data events come on a later turn, to RelayConn's listeners, which may
    // pause it again.
    this.valve.set('store', false);
    const { store: _store, link: _link, ...deps } = this.d;
    this.conn = new RelayConn(this.client, store, this.cin, { ...deps, structured: this.session.structured });
    void this.conn.done.then(() => this.resolveDone());
  }
}
