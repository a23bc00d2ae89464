// Restart recovery of the broker's reservations: reload the live ones from the store, rebuild the
// calendar and the timers, and settle the operations a crash interrupted half-way, each by the
// transition its machine (nsi.ts) has for it. The driver is idempotent, so a data plane that was
// active is applied again.
import { brokerError } from './errors.ts';
import { armActivation, deactivate, onActivate, releaseDataPlane } from './data-plane.ts';
import { armEnd, armHold } from './deadlines.ts';
import { endUncommitted, failReserve, type Runner } from './runner.ts';

export async function restore(rn: Runner): Promise<void> {
  // In creation order: background reservations share what migrations leave in that order.
  for (const r of rn.store.live().sort((x, y) => x.createdAt - y.createdAt || (x.id < y.id ? -1 : 1))) {
    rn.live.set(r.id, r);
    if (!r.booked) continue;
    if (r.class === 'background') rn.calendar.forceBackground({ id: r.id, links: r.path.links, start: r.start, end: r.end, mbps: r.bandwidthMbps, minMbps: r.minMbps ?? 0 });
    else rn.calendar.force({ id: r.id, links: r.path.links, start: r.start, end: r.end, mbps: r.bandwidthMbps });
  }
  for (const r of [...rn.live.values()]) {
    try {
      switch (r.reservationState) {
        case 'ReserveChecking':
          failReserve(rn, r, brokerError('VMTC_SHUTTING_DOWN', { reason: 'the broker restarted while checking' }));
          continue;
        case 'ReserveCommitting':
          rn.apply(r, 'reservation', 'commitFailed', { error: brokerError('VMTC_SHUTTING_DOWN', { reason: 'the broker restarted while committing' }) });
          endUncommitted(rn, r);
          continue;
        case 'ReserveAborting':
          rn.apply(r, 'reservation', 'abortConfirmed');
          endUncommitted(rn, r);
          continue;
        case 'ReserveHeld':
          armHold(rn, r, (r.heldAt ?? 0) + rn.holdTimeoutMs - rn.clock.now());
          break;
      }
      if (r.lifecycleState === 'Terminating') {
        await releaseDataPlane(rn, r);
        rn.apply(r, 'lifecycle', 'terminateConfirmed');
        continue;
      }
      if (r.provisionState === 'Provisioning') rn.apply(r, 'provision', 'provisionFailed', { error: brokerError('VMTC_SHUTTING_DOWN', { reason: 'the broker restarted while provisioning' }) });
      if (r.provisionState === 'Releasing') {
        await deactivate(rn, r);
        rn.apply(r, 'provision', 'releaseConfirmed');
      }
      if (r.lifecycleState === 'Created' && r.committed) armEnd(rn, r);
      if (r.provisionState === 'Provisioned' && r.lifecycleState === 'Created') {
        if (r.dataPlane.active) {
          r.dataPlane.active = false; // re-apply: the driver is idempotent
          await onActivate(rn, r.id);
        } else armActivation(rn, r);
      }
    } catch (err) {
      rn.log.error({ err, reservationId: r.id }, 'could not restore reservation');
    }
  }
}
