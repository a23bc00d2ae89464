// A reservation's data plane: bringing its lightpath up and down through the network element
// driver (driver.ts), recording each change (a 'dataPlane' transition row and a
// dataPlaneStateChange event), walking the provision machine back when it goes down, and the
// deferred activation at the start of a provisioned advance reservation's window.
import { toVmtcError } from '../common/errors.ts';
import { brokerError } from './errors.ts';
import { publishError, type BrokerEvent, type Runner } from './runner.ts';
import type { Reservation } from './store.ts';

export async function activate(rn: Runner, r: Reservation): Promise<void> {
  const nodes: Record<string, Record<string, unknown>> = {};
  for (const n of r.path.nodes) nodes[n] = { ...(rn.topology.nodes.get(n)?.driver ?? {}) };
  const seg = await rn.driver.provision({ connectionId: r.id, path: [...r.path.nodes], nodes, bandwidthMbps: r.bandwidthMbps });
  setDataPlane(rn, r, true, seg.details);
}

export async function deactivate(rn: Runner, r: Reservation): Promise<void> {
  if (!r.dataPlane.active) return;
  try {
    await rn.driver.release(r.id);
  } catch (err) {
    // The driver contract says release must not fail for a known id; if it does, say so loudly
    // but still consider the data plane gone from the broker's point of view.
    publishError(rn, r, toVmtcError(err));
  }
  setDataPlane(rn, r, false);
}

/** Take the data plane down and walk the provision machine back to Released. */
export async function releaseDataPlane(rn: Runner, r: Reservation): Promise<void> {
  rn.timers.cancel(r.id, 'activate');
  if (r.provisionState === 'Provisioned') rn.apply(r, 'provision', 'release');
  await deactivate(rn, r);
  if (r.provisionState === 'Releasing') rn.apply(r, 'provision', 'releaseConfirmed');
}

export function armActivation(rn: Runner, r: Reservation): void {
  rn.timers.arm(r.id, 'activate', r.start * 1000 - rn.clock.now(), () => void onActivate(rn, r.id));
}

/** Start of the window of a provisioned advance reservation: bring the data plane up. */
export async function onActivate(rn: Runner, id: string): Promise<void> {
  const r = rn.live.get(id);
  if (rn.closed || !r || r.provisionState !== 'Provisioned' || r.dataPlane.active || r.lifecycleState !== 'Created') return;
  try {
    await activate(rn, r);
  } catch (err) {
    const e = brokerError('VMTC_PROVISION_FAILED', { reservationId: r.id, domain: rn.domain, reason: toVmtcError(err).message }, { cause: err });
    if (r.provisionState === 'Provisioned') rn.apply(r, 'provision', 'activationFailed', { error: e });
    publishError(rn, r, e);
  }
}

function setDataPlane(rn: Runner, r: Reservation, active: boolean, details?: Record<string, unknown>): void {
  const before = r.dataPlane.active;
  r.dataPlane = { ...r.dataPlane, active, version: r.dataPlane.version + 1 };
  if (active) {
    delete r.dataPlane.error;
    if (details) r.dataPlane.details = details;
  } else delete r.dataPlane.details;
  const at = rn.clock.now();
  r.updatedAt = at;
  rn.store.save(r, [{ reservationId: r.id, machine: 'dataPlane', from: before ? 'active' : 'inactive', to: active ? 'active' : 'inactive', event: active ? 'activated' : 'deactivated', at }]);
  const evt: BrokerEvent = { type: 'dataPlaneStateChange', reservationId: r.id, active, version: r.dataPlane.version, at };
  if (details) evt.details = details;
  rn.publish(evt);
}
