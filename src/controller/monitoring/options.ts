// Options of the controller's monitoring, hotspot mitigation and consolidation
// (docs/monitoring.md), with every default in one place (docs/contributing.md#options).
import { commonError } from '../../common/errors.ts';

export type Resource = 'cpu' | 'memory' | 'net';
export const RESOURCES: readonly Resource[] = ['cpu', 'memory', 'net'];

export interface MonitoringOptions {
  /** History kept per host and per VM: samples older than this are deleted... */
  retentionMs: number;
  /** ...and at most this many samples per host and per VM. */
  retentionSamples: number;
  /** A host's resource is hot when its use is above this share... */
  thresholds: Record<Resource, number>;
  /** ...in at least k of the last n observations (SandPiper's sustain window). */
  sustain: { k: number; n: number };
  /** A host's network capacity (Mbit/s, each way summed): network use is a share of it. */
  netCapacityMbps: number;
  /** Consolidation runs only while the fleet's mean use (the larger of CPU and memory) is below
   *  this; it packs hosts up to `packTo` of each resource. */
  consolidateBelow: number;
  packTo: number;
  /** "Follow the moon": prefer sites whose local time is night. Each site's offset from UTC in
   *  minutes; night is from nightStartHour to nightEndHour local time. */
  followTheMoon: boolean;
  siteUtcOffsetMinutes: Record<string, number>;
  nightStartHour: number;
  nightEndHour: number;
  /** Run hotspot plans as soon as a hotspot is detected (off by default), at most once per
   *  host per cooldown. */
  autoMitigate: boolean;
  autoCooldownMs: number;
}

export const MONITORING_DEFAULTS: MonitoringOptions = {
  retentionMs: 24 * 3_600_000,
  retentionSamples: 2000,
  thresholds: { cpu: 0.75, memory: 0.9, net: 0.75 },
  sustain: { k: 3, n: 5 },
  netCapacityMbps: 1000,
  consolidateBelow: 0.3,
  packTo: 0.6,
  followTheMoon: false,
  siteUtcOffsetMinutes: {},
  nightStartHour: 22,
  nightEndHour: 6,
  autoMitigate: false,
  autoCooldownMs: 120_000,
};

const invalid = (field: string, value: unknown, reason: string) =>
  commonError('VMTC_CONFIG_INVALID', { field: `monitoring.${field}`, value: value ?? null }, { message: `monitoring.${field}: ${reason}` });

/** The defaults with `given` over them, checked (VMTC_CONFIG_INVALID naming the field). */
export function monitoringOptions(given: Partial<MonitoringOptions> = {}): MonitoringOptions {
  // A file's typo or a wrong shape is refused by name, not silently ignored.
  for (const k of Object.keys(given)) if (!(k in MONITORING_DEFAULTS)) throw invalid(k, (given as Record<string, unknown>)[k], 'unknown option');
  for (const k of ['thresholds', 'sustain', 'siteUtcOffsetMinutes'] as const) {
    const v = given[k] as unknown;
    if (v !== undefined && (!v || typeof v !== 'object' || Array.isArray(v))) throw invalid(k, v, 'must be an object');
  }
  for (const k of Object.keys(given.thresholds ?? {})) if (!(RESOURCES as readonly string[]).includes(k)) throw invalid(`thresholds.${k}`, null, `unknown resource (${RESOURCES.join(', ')})`);
  const o: MonitoringOptions = {
    ...MONITORING_DEFAULTS, ...given,
    thresholds: { ...MONITORING_DEFAULTS.thresholds, ...(given.thresholds ?? {}) },
    sustain: { ...MONITORING_DEFAULTS.sustain, ...(given.sustain ?? {}) },
    siteUtcOffsetMinutes: { ...(given.siteUtcOffsetMinutes ?? {}) },
  };
  const positive = (field: string, v: unknown) => { if (!(typeof v === 'number' && Number.isFinite(v) && v > 0)) throw invalid(field, v, 'must be a positive number'); };
  const shareOf = (field: string, v: unknown) => { if (!(typeof v === 'number' && v > 0 && v <= 1)) throw invalid(field, v, 'must be a share in (0, 1]'); };
  positive('retentionMs', o.retentionMs);
  if (!(Number.isInteger(o.retentionSamples) && o.retentionSamples >= 1)) throw invalid('retentionSamples', o.retentionSamples, 'must be an integer >= 1');
  for (const r of RESOURCES) shareOf(`thresholds.${r}`, o.thresholds[r]);
  const { k, n } = o.sustain;
  if (!(Number.isInteger(n) && n >= 1 && n <= 1000)) throw invalid('sustain.n', n, 'must be an integer from 1 to 1000');
  if (!(Number.isInteger(k) && k >= 1 && k <= n)) throw invalid('sustain.k', k, 'must be an integer from 1 to sustain.n');
  if (o.retentionSamples < n) throw invalid('retentionSamples', o.retentionSamples, 'must be at least sustain.n');
  positive('netCapacityMbps', o.netCapacityMbps);
  shareOf('consolidateBelow', o.consolidateBelow);
  shareOf('packTo', o.packTo);
  for (const [site, m] of Object.entries(o.siteUtcOffsetMinutes)) {
    if (!(Number.isInteger(m) && m >= -14 * 60 && m <= 14 * 60)) throw invalid(`siteUtcOffsetMinutes.${site}`, m, 'must be whole minutes from -840 to 840');
  }
  for (const f of ['nightStartHour', 'nightEndHour'] as const) {
    if (!(Number.isInteger(o[f]) && o[f] >= 0 && o[f] <= 23)) throw invalid(f, o[f], 'must be an hour from 0 to 23');
  }
  for (const f of ['followTheMoon', 'autoMitigate'] as const) if (typeof o[f] !== 'boolean') throw invalid(f, o[f], 'must be true or false');
  if (!(typeof o.autoCooldownMs === 'number' && o.autoCooldownMs >= 0)) throw invalid('autoCooldownMs', o.autoCooldownMs, 'must be a number >= 0');
  return o;
}
