// The point of no return (docs/design.md#switchover) through a real controller and two host
// agents (DoubleDriver hypervisor test double, real TCP migration streams): cancels sent at many
// offsets around the end of the copy, at the moment the source says it is ready, while the
// controller's dispatch queue is held up, and after a stalled event loop. Every run must end
// either completed with the VM only at the destination, or cancelled with the VM only at the
// source and the destination never having received the final state; never with a destination
// destroyed after it got it.
import { describe, it, expect, afterEach, vi } from 'vitest';
import { startHarness, vmSpec, type Harness } from '../helpers/controller-harness.ts';
import type { DoubleDriver } from '../../agents/host/double-driver.ts';
import { hubError } from '../../src/controller/hub-errors.ts';

let h: Harness | undefined;
afterEach(async () => { vi.restoreAllMocks(); await h?.close(); h = undefined; });

const ENDED = ['completed', 'rolled_back', 'cancelled', 'failed'];
// 1.3 MB of stream for a 256 MB VM (bytesPerMb 4096) at 40 Mbit/s: about 270 ms of copy.
const BODY = { destinationHostId: 'B', bandwidthMbps: 40 };

interface Hosts { a: DoubleDriver; b: DoubleDriver }

async function setup(n: number): Promise<Hosts> {
  // Heartbeats far apart: a loaded machine (enrolment is CPU-bound) must not drop a link that
  // these runs need; links are not what is tested here.
  h = await startHarness({ heartbeatMs: 5000 });
  // Room at B for every VM that may arrive.
  const cpu = { model: 'double-cpu', features: ['sse2', 'sse4_2', 'avx'], vcpus: 64 };
  const a = await h.addHost('A', { cpu, vms: Array.from({ length: n }, (_, i) => vmSpec(`vm${i}`)) });
  const b = await h.addHost('B', { cpu });
  return { a, b };
}

/** Wait for the end and check the one thing that must hold, whatever the timing. */
async function checkOutcome(hosts: Hosts, id: string, vmId: string): Promise<string> {
  const done = await h!.waitState(id, ENDED, 30_000);
  const atA = (await hosts.a.list()).filter((v) => v.vmId === vmId);
  const atB = (await hosts.b.list()).filter((v) => v.vmId === vmId);
  const seen = { state: done.state, code: done.error?.code, atA: atA.map((v) => v.state), atB: atB.map((v) => v.state), landed: hosts.b.landed(id) };
  if (done.state === 'completed') {
    expect(seen).toEqual({ state: 'completed', code: undefined, atA: [], atB: ['running'], landed: true });
  } else {
    // Cancelled before the switchover: the source runs, the destination never got the final state.
    expect(seen).toEqual({ state: 'cancelled', code: 'VMTC_CANCELLED', atA: ['running'], atB: [], landed: false });
  }
  return done.state;
}

/** Calls `fn` once when the source reports `status` for migration `id` (hub events, in order). */
function onSourceStatus(status: string, fn: (migrationId: string) => void): void {
  const fired = new Set<string>();
  h!.controller.hub.on('event', (hostId: string, name: string, data: any) => {
    if (hostId !== 'A' || name !== 'migration.progress' || data?.status !== status || fired.has(data.migrationId)) return;
    fired.add(data.migrationId);
    fn(data.migrationId);
  });
}

const cancel = (id: string) => h!.api('POST', `/v1/migrations/${id}/cancel`);

describe('the switchover is the point of no return', () => {
  it('cancels at increasing offsets around the end of the copy either win cleanly or lose cleanly', async () => {
    const N = 12;
    const hosts = await setup(N + 1);
    const answers = new Map<string, Promise<{ status: number; body: any }>>();
    const delay = new Map<string, number>();
    const started = new Map<string, number>();
    // The clock of each run starts when the source reports the stream set up.
    onSourceStatus('setup', (mid) => {
      started.set(mid, Date.now());
      const d = delay.get(mid);
      if (d !== undefined) setTimeout(() => answers.set(mid, cancel(mid)), d);
    });
    // How long a copy takes on this machine now, from set-up to the source's end: the cancels
    // are spread over one and a half times that.
    let copyMs = 0;
    h!.controller.hub.on('event', (hostId: string, name: string, data: any) => {
      if (hostId === 'A' && name === 'migration.done' && started.has(data?.migrationId) && !copyMs) copyMs = Date.now() - started.get(data.migrationId)!;
    });
    const calibration = await h!.api('POST', '/v1/migrations', { vmId: `vm${N}`, ...BODY });
    expect(await checkOutcome(hosts, calibration.body.id, `vm${N}`)).toBe('completed');
    expect(copyMs).toBeGreaterThan(0);
    const outcomes: string[] = [];
    for (let i = 0; i < N; i++) {
      const res = await h!.api('POST', '/v1/migrations', { vmId: `vm${i}`, ...BODY });
      expect({ status: res.status, body: res.status === 202 ? undefined : res.body }).toEqual({ status: 202, body: undefined });
      // Half of them from 0 (certainly in pre-copy) to 1.5 copies (certainly after it), the
      // other half close around the end of the copy.
      const at = i % 2 === 0 ? (i / (N - 2)) * 1.5 : 0.85 + ((i - 1) / (N - 2)) * 0.3;
      delay.set(res.body.id, Math.round(at * copyMs));
      const state = await checkOutcome(hosts, res.body.id, `vm${i}`);
      const answer = await h!.waitFor(() => answers.get(res.body.id), `the cancel of run ${i}`);
      const r = await answer;
      // A cancel the controller accepted ends cancelled; a refused one names why.
      if (r.status === 202) expect(state).toBe('cancelled');
      else expect({ status: r.status, code: r.body.code }).toEqual({ status: 409, code: 'VMTC_MIGRATION_NOT_CANCELLABLE' });
      outcomes.push(state);
    }
    expect(outcomes[0]).toBe('cancelled');
    expect(outcomes.at(-2)).toBe('completed');
  }, 120_000);

  it('a cancel sent the moment the source says it is ready wins or loses cleanly', async () => {
    const hosts = await setup(1);
    const answers: Promise<{ status: number; body: any }>[] = [];
    onSourceStatus('pre-switchover', (mid) => { answers.push(cancel(mid)); });
    const res = await h!.api('POST', '/v1/migrations', { vmId: 'vm0', ...BODY });
    expect({ status: res.status, body: res.status === 202 ? undefined : res.body }).toEqual({ status: 202, body: undefined });
    const state = await checkOutcome(hosts, res.body.id, 'vm0');
    const r = await answers[0]!;
    if (r.status === 202) expect(state).toBe('cancelled');
    else expect(r.body.code).toBe('VMTC_MIGRATION_NOT_CANCELLABLE');
  }, 60_000);

  it('a cancel queued while the controller is busy with the source\'s readiness or end is applied in order', async () => {
    const hosts = await setup(2);
    const runner = h!.controller.runner;
    const dispatch = runner.dispatch.bind(runner);
    const answers = new Map<string, Promise<{ status: number; body: any }>>();
    let hold: string[] = ['SWITCHOVER_READY', 'MIGRATION_COMPLETED'];
    // The controller is slow to apply the source's news: the cancel gets in first (the news is
    // held until the cancel has been answered, so it was applied, or refused, before).
    vi.spyOn(runner, 'dispatch').mockImplementation(((id: string, event: { type: string }, ...rest: unknown[]) => {
      if (hold.includes(event.type) && !answers.has(id)) {
        const answer = cancel(id);
        answers.set(id, answer);
        return answer.then(() => dispatch(id, event as never, ...(rest as [])));
      }
      return dispatch(id, event as never, ...(rest as []));
    }) as typeof runner.dispatch);

    // Held at the source's readiness: the cancel is applied first and wins.
    const first = await h!.api('POST', '/v1/migrations', { vmId: 'vm0', ...BODY });
    expect(await checkOutcome(hosts, first.body.id, 'vm0')).toBe('cancelled');
    expect((await answers.get(first.body.id)!).status).toBe(202);

    // Held at the end of a copy past the switchover: the cancel is refused, the migration completes.
    hold = ['MIGRATION_COMPLETED'];
    const second = await h!.api('POST', '/v1/migrations', { vmId: 'vm1', ...BODY });
    expect(await checkOutcome(hosts, second.body.id, 'vm1')).toBe('completed');
    const refused = await answers.get(second.body.id)!;
    expect({ status: refused.status, code: refused.body.code, state: refused.body.details?.state }).toEqual({ status: 409, code: 'VMTC_MIGRATION_NOT_CANCELLABLE', state: 'switchover' });
  }, 60_000);

  it('a source that cannot be reached when the switchover is decided is asked again: the decision stands', async () => {
    const hosts = await setup(1);
    const hub = h!.controller.hub;
    const request = hub.request.bind(hub);
    let refused = 0;
    // The first two continues find the source's link down (as the hub answers then).
    vi.spyOn(hub, 'request').mockImplementation(((hostId: string, method: string, params: unknown, t?: number) => {
      if (method === 'vm.continueMigration' && refused < 2) {
        refused++;
        return Promise.reject(hubError('VMTC_AGENT_NOT_CONNECTED', { hostId, method }));
      }
      return request(hostId as never, method as never, params as never, t);
    }) as typeof hub.request);
    const res = await h!.api('POST', '/v1/migrations', { vmId: 'vm0', ...BODY });
    expect(await checkOutcome(hosts, res.body.id, 'vm0')).toBe('completed');
    expect(refused).toBe(2);
  }, 60_000);

  it('a stalled event loop at the source\'s readiness or end changes nothing', async () => {
    const hosts = await setup(2);
    const block = (ms: number) => { const until = Date.now() + ms; while (Date.now() < until) { /* the whole process stalls */ } };
    const answers: Promise<unknown>[] = [];
    const ids: string[] = [];
    onSourceStatus('pre-switchover', (mid) => { if (mid === ids[0]) { block(200); answers.push(cancel(mid)); } });
    h!.controller.hub.on('event', (hostId: string, name: string, data: any) => {
      if (hostId === 'A' && name === 'migration.done' && data?.migrationId === ids[1]) { answers.push(cancel(data.migrationId)); block(200); }
    });
    for (let i = 0; i < 2; i++) {
      const res = await h!.api('POST', '/v1/migrations', { vmId: `vm${i}`, ...BODY });
      ids.push(res.body.id);
      await checkOutcome(hosts, res.body.id, `vm${i}`);
    }
    await Promise.all(answers);
  }, 60_000);
});
