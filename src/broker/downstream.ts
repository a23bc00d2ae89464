// The peer side of a reservation (docs/broker.md "Inter-domain"): the segment the next domain
// holds for it, asked for while this domain checks a reserve, and the NSI operations passed on
// to that segment afterwards, either as a step that must succeed (commit, provision) or best
// effort (abort, release, terminate). Every call goes through PeerLinks (peer.ts).
import { toVmtcError } from '../common/errors.ts';
import type { ReserveInput } from './admission.ts';
import { brokerError } from './errors.ts';
import type { PeerReserveBody } from './peer.ts';
import { failReserve, type Runner } from './runner.ts';
import type { Reservation } from './store.ts';

export type SegmentOp = 'commit' | 'provision' | 'abort' | 'release' | 'terminate';

/**
 * Hold the next domain's segment with the holder's token (it recursively holds the rest). If the
 * next domain refuses or cannot be reached, the reserve fails here (VMTC_PEER_SEGMENT_FAILED,
 * naming the domain that refused) and that error is thrown.
 */
export async function holdNextSegment(rn: Runner, r: Reservation, input: ReserveInput, nextDomain: string, stpPeer: Map<string, string>, token: string): Promise<void> {
  const egress = r.path.nodes[r.path.nodes.length - 1]!;
  try {
    const body: PeerReserveBody = {
      src: stpPeer.get(egress)!,
      dst: input.dst,
      bandwidthMbps: input.bandwidthMbps,
      window: { start: input.start, end: input.end },
      upstream: { domain: rn.domain, reservationId: r.id },
    };
    if (input.migrationId) body.migrationId = input.migrationId;
    const seg = await rn.peers.call<{ id: string }>(nextDomain, 'POST', '/v1/reservations', body, token);
    r.downstream = { domain: nextDomain, reservationId: seg.id };
    rn.store.save(r);
  } catch (err) {
    const cause = toVmtcError(err);
    const e = brokerError('VMTC_PEER_SEGMENT_FAILED', { reservationId: r.id, domain: (cause.details?.domain as string | undefined) ?? nextDomain, peerCode: cause.code, peerMessage: cause.message, peerDetails: cause.details }, { cause: err });
    failReserve(rn, r, e);
    throw e;
  }
}

/** Pass an operation on to the next domain's segment, if there is one; a refusal is thrown. */
export async function callSegment(rn: Runner, r: Reservation, op: SegmentOp): Promise<void> {
  if (!r.downstream) return;
  await rn.peers.call(r.downstream.domain, 'POST', `/v1/reservations/${encodeURIComponent(r.downstream.reservationId)}/${op}`);
}

/** Pass an operation on, logging rather than throwing a failure: this domain goes on either way. */
export async function bestEffortPeer(rn: Runner, r: Reservation, op: 'abort' | 'release' | 'terminate'): Promise<void> {
  if (!r.downstream) return;
  try {
    await callSegment(rn, r, op);
  } catch (err) {
    const e = toVmtcError(err);
    // An illegal transition means the peer already is where we want it (e.g. it timed out).
    if (e.code !== 'VMTC_ILLEGAL_TRANSITION') rn.log.warn({ reservationId: r.id, domain: r.downstream.domain, op, code: e.code }, 'peer segment did not answer');
  }
}
