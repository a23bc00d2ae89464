// Tuning in flight in the turntable (`--retune-after-ms` with `--retune-bandwidth-mbps` and/or
// `--retune-max-downtime-ms`): `afterMs` after a live migration's copy started (state precopy),
// the turntable changes its limits once through the controller (PATCH /v1/migrations/:id, README
// "Force-complete and tune in flight") and records what came of it in turntable.json
// (`migrations[].retuned`, types.ts RetuneRecord). A 409 VMTC_MIGRATION_NOT_TUNABLE (the copy had
// already ended) is recorded like any answer: it does not fail the migration, whose verdict stays
// the guest's and the controller's.
import { sleep } from '../../src/common/clock.ts';
import type { RetunePlan, RetuneRecord } from './types.ts';

type Api = (method: string, path: string, body?: unknown) => Promise<{ status: number; body: any }>;

/** The PATCH body of a plan: only the limits it changes. */
export function retuneBody(plan: RetunePlan): { bandwidthMbps?: number; maxDowntimeMs?: number } {
  return {
    ...(plan.bandwidthMbps !== undefined ? { bandwidthMbps: plan.bandwidthMbps } : {}),
    ...(plan.maxDowntimeMs !== undefined ? { maxDowntimeMs: plan.maxDowntimeMs } : {}),
  };
}

/** The record of one retune from the controller's answer (pure). A 200 carries the migration
 *  record, whose last `tune` change has what the source read back from QEMU; an error carries
 *  `{ code, message, details? }` (docs/errors.md). */
export function retuneRecord(plan: RetunePlan, atMs: number, answer: { status: number; body: any } | { error: string }): RetuneRecord {
  const base = { atMs: Math.round(atMs), ...retuneBody(plan) };
  if ('error' in answer) return { ...base, ok: false, status: 0, code: 'NOT_SENT' };
  const b = answer.body ?? {};
  if (answer.status === 200) {
    const changes: any[] = Array.isArray(b.changes) ? b.changes : [];
    const last = [...changes].reverse().find((c) => c?.what === 'tune');
    return {
      ...base, ok: true, status: 200,
      ...(typeof b.state === 'string' ? { state: b.state } : {}),
      ...(last?.reported && typeof last.reported === 'object' ? { reported: retuneBody({ afterMs: 0, ...last.reported }) } : {}),
    };
  }
  const state = b.details?.state;
  return { ...base, ok: false, status: answer.status, code: typeof b.code === 'string' ? b.code : `HTTP_${answer.status}`, ...(typeof state === 'string' ? { state } : {}) };
}

/** Waits until `afterMs` after `copyStartedAt` (epoch ms), then PATCHes the migration once.
 *  Never throws: an abort before the PATCH, or a request that fails, is recorded (NOT_SENT). */
export async function retuneAfter(api: Api, migrationId: string, plan: RetunePlan, copyStartedAt: number, signal?: AbortSignal): Promise<RetuneRecord> {
  await sleep(Math.max(0, copyStartedAt + plan.afterMs - Date.now()), signal);
  const atMs = Date.now() - copyStartedAt;
  if (signal?.aborted) return retuneRecord(plan, atMs, { error: 'aborted' });
  try {
    return retuneRecord(plan, atMs, await api('PATCH', `/v1/migrations/${migrationId}`, retuneBody(plan)));
  } catch (e) {
    return retuneRecord(plan, atMs, { error: (e as Error).message });
  }
}

/** A retune in a few words (progress line, summary table). */
export function retuneWord(r: RetuneRecord | undefined): string {
  if (!r) return '–';
  const what = [r.bandwidthMbps !== undefined ? `${r.bandwidthMbps} Mbit/s` : '', r.maxDowntimeMs !== undefined ? `${r.maxDowntimeMs} ms` : ''].filter(Boolean).join(', ');
  return `${what} at ${r.atMs} ms: ${r.ok ? `ok${r.state ? ` (${r.state})` : ''}` : `${r.code ?? r.status}${r.state ? ` (${r.state})` : ''}`}`;
}
