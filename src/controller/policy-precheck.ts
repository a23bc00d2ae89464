// Refusing at admission what the AAA would refuse anyway (README "API (controller)", docs/aaa.md
// "Policy check"). Before a live migration is admitted, the AAA is asked whether its policy would
// grant this requester (the controller's key), the VM's project and the two sites the lightpath
// (POST /v1/policy/check: nothing is recorded, no token signed, no peer asked). A refusal is the
// answer to POST /v1/migrations, with the AAA's own code and status, and nothing is created. What
// only the token request can know (a peer domain's consent, quota used meanwhile, a policy
// reloaded) is still decided then, asynchronously, as before. An AAA that does not answer in time,
// or fails, does not stop admission: the migration goes on with a VMTC_POLICY_CHECK_UNAVAILABLE
// warning on its record, and the token request decides.
import { VmtcError, toVmtcError, type ErrorBody } from '../common/errors.ts';
import type { Clock } from '../common/clock.ts';
import type { Logger } from '../common/log.ts';
import type { HostInventory } from '../common/agent-protocol.ts';
import type { PolicyCheckRequest } from '../common/lightpath.ts';
import { err } from './errors.ts';
import { precheck } from './capacity.ts';
import { lightpathMbps, lightpathWindow } from './migration/request.ts';
import type { ControllerStore, MigrationRequest } from './store.ts';
import type { AuthorizationPort } from './ports.ts';

export const POLICY_PRECHECK_DEFAULTS = {
  /** How long admission waits for the AAA's answer before it goes on without it. */
  timeoutMs: 2000,
} as const;

export interface PolicyPrecheckDeps {
  store: ControllerStore;
  clock: Clock;
  logger: Logger;
  /** Absent, or an AAA port without check(): nothing is asked. */
  admission?: { aaa?: AuthorizationPort; timeoutMs: number; defaultDeadlineMs: number };
}

/** Refusals of the caller itself that the token request would meet as well. */
const CALLER_REFUSED = new Set(['VMTC_AAA_REQUESTER_UNKNOWN']);

/**
 * Ask the AAA about a migration request before it is admitted. Throws the AAA's refusal for a
 * live-only request; returns the warnings to record otherwise (none when the AAA allows it or is
 * not asked; VMTC_POLICY_CHECK_UNAVAILABLE when it could not answer; for mode=auto, the refusal
 * itself, since the refused live attempt falls back to the cold path, which needs no token).
 * Requests the pre-checks refuse, cold ones, and repeats of an admitted requestId are not asked
 * about: the route answers them as before.
 */
export async function checkPolicyUpFront(d: PolicyPrecheckDeps, body: MigrationRequest, hosts: { inventory: HostInventory; connected: boolean }[]): Promise<ErrorBody[]> {
  const a = d.admission;
  if (!a?.aaa?.check) return [];
  if (body.requestId !== undefined && d.store.migrationByRequestId(body.requestId)) return [];
  const mode = body.mode ?? 'live';
  let pc: ReturnType<typeof precheck>;
  try {
    pc = precheck({ vmId: body.vmId, mode, destinationHostId: body.destinationHostId, hosts, holds: d.store.holds(), inFlight: undefined, overrideAdvisories: body.overrideAdvisories ?? [] });
  } catch {
    return [];
  }
  if (pc.path !== 'live') return [];
  const req: PolicyCheckRequest = {
    vmId: body.vmId, project: pc.vm.project, src: pc.source.site ?? pc.source.hostId, dst: pc.dest.site ?? pc.dest.hostId,
    bandwidthMbps: lightpathMbps(body),
    // As the token request will ask (migration/effects-live.ts): from now to the deadline.
    window: lightpathWindow(body, d.clock.now(), d.clock.now(), a.defaultDeadlineMs),
  };
  let refusal: { code: string; message: string; status: number; details?: Record<string, unknown> };
  try {
    const decision = await a.aaa.check(req, { timeoutMs: a.timeoutMs });
    if (decision.allowed) return [];
    refusal = decision.refusal ?? { code: 'VMTC_AAA_POLICY_DENIED', message: 'the policy does not allow this request', status: 403 };
  } catch (e) {
    const ve = toVmtcError(e);
    if (!CALLER_REFUSED.has(ve.code)) {
      d.logger.warn({ vmId: body.vmId, code: ve.code }, 'policy check unavailable: admitted, the token request decides');
      return [err('VMTC_POLICY_CHECK_UNAVAILABLE', { step: 'policy-check', cause: ve.code, ...(ve.details?.timeoutMs !== undefined ? { timeoutMs: ve.details.timeoutMs } : {}) }).toJSON()];
    }
    refusal = { ...ve.toJSON(), status: ve.status };
  }
  const details = { ...(refusal.details ?? {}), step: 'policy-check' };
  if (mode === 'live') throw new VmtcError(refusal.code, refusal.status, refusal.message, details);
  return [{ code: refusal.code, message: refusal.message, details: { ...details, coldExpected: true } }];
}
