// A reservation's deadlines on the injected clock (timers.ts): the hold timeout of a held
// reservation and the end of a committed reservation's window. (The activation at the start of
// the window belongs to the data plane: data-plane.ts.)
import { releaseDataPlane } from './data-plane.ts';
import { bestEffortPeer } from './downstream.ts';
import type { Runner } from './runner.ts';
import type { Reservation } from './store.ts';

export function armHold(rn: Runner, r: Reservation, ms: number): void {
  rn.timers.arm(r.id, 'hold', ms, () => onHoldTimeout(rn, r.id));
}

export function armEnd(rn: Runner, r: Reservation): void {
  rn.timers.arm(r.id, 'end', r.end * 1000 - rn.clock.now(), () => void onEndTime(rn, r.id));
}

/** GFD.212: a held reservation that is not committed in time times out and frees its capacity. */
function onHoldTimeout(rn: Runner, id: string): void {
  const r = rn.live.get(id);
  if (rn.closed || !r || r.reservationState !== 'ReserveHeld') return;
  rn.apply(r, 'reservation', 'timeout');
  if (r.downstream) void bestEffortPeer(rn, r, 'abort');
}

/** End of the window: life cycle PassedEndTime, calendar freed, data plane down. */
async function onEndTime(rn: Runner, id: string): Promise<void> {
  const r = rn.live.get(id);
  if (rn.closed || !r || r.lifecycleState !== 'Created') return;
  rn.apply(r, 'lifecycle', 'endTime');
  await releaseDataPlane(rn, r);
}
