// What a host agent runs with — its site, lightpath address, hypervisor driver and the driver's
// settings — kept in DATA/host.json (docs/deploy.md#agents), so that a restart with only --data
// runs as the enrolment did. Without it a restarted agent fell back to the defaults: no site (the
// AAA then refuses the next lightpath with VMTC_AAA_SITE_UNKNOWN after the migration was
// accepted) and the QEMU driver. A flag given on a later start wins and is stored (the change is
// logged with the old and the new value): flags say what the operator wants now, the file
// remembers it for the starts that say nothing.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { commonError } from '../../src/common/errors.ts';
import { writeAtomic } from '../../src/common/pki.ts';

/** The settings, each under the name of the `vmtc agent` flag that sets it. */
export const HOST_SETTING_FLAGS = ['site', 'migration-address', 'driver', 'double-config', 'accel', 'netns', 'export-listen', 'metrics-listen', 'stats-interval'] as const;
export type HostSettingFlag = (typeof HOST_SETTING_FLAGS)[number];
export type HostSettings = Partial<Record<HostSettingFlag, string>>;

export const HOST_SETTINGS_FILE = 'host.json';

export function hostSettingsFile(dataDir: string): string {
  return join(dataDir, HOST_SETTINGS_FILE);
}

/** The stored settings, or undefined when none were stored (a data dir from before host.json). */
export function readHostSettings(dataDir: string): HostSettings | undefined {
  const file = hostSettingsFile(dataDir);
  if (!existsSync(file)) return undefined;
  let doc: unknown;
  try {
    doc = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw commonError('VMTC_CONFIG_INVALID', { field: 'data', file, reason: (e as Error).message }, { message: `${file} is not readable JSON` });
  }
  const settings = (doc as { settings?: unknown } | null)?.settings;
  if (!settings || typeof settings !== 'object' || Array.isArray(settings)) {
    throw commonError('VMTC_CONFIG_INVALID', { field: 'data', file, reason: 'no settings object' }, { message: `${file} holds no settings` });
  }
  const out: HostSettings = {};
  for (const [k, v] of Object.entries(settings)) {
    if (!(HOST_SETTING_FLAGS as readonly string[]).includes(k) || typeof v !== 'string') {
      throw commonError('VMTC_CONFIG_INVALID', { field: `settings.${k}`, file }, { message: `${file}: settings.${k} is not a known setting with a string value` });
    }
    out[k as HostSettingFlag] = v;
  }
  return out;
}

export function writeHostSettings(dataDir: string, settings: HostSettings, at: string): void {
  const ordered = Object.fromEntries(HOST_SETTING_FLAGS.filter((k) => settings[k] !== undefined).map((k) => [k, settings[k]]));
  writeAtomic(hostSettingsFile(dataDir), JSON.stringify({ version: 1, updatedAt: at, settings: ordered }, null, 2) + '\n', 0o600);
}

/**
 * The settings to run with: the stored ones, with the flags given on top. Pure. `changes` lists
 * each stored setting a flag changed.
 */
export function mergeHostSettings(stored: HostSettings | undefined, given: HostSettings): { settings: HostSettings; changes: { setting: HostSettingFlag; from: string; to: string }[] } {
  const settings: HostSettings = { ...(stored ?? {}) };
  const changes: { setting: HostSettingFlag; from: string; to: string }[] = [];
  for (const k of HOST_SETTING_FLAGS) {
    const g = given[k];
    if (g === undefined) continue;
    const s = stored?.[k];
    if (s !== undefined && s !== g) changes.push({ setting: k, from: s, to: g });
    settings[k] = g;
  }
  return { settings, changes };
}

/** Whether the file needs writing: no file yet, or a setting changed. */
export function settingsDiffer(stored: HostSettings | undefined, next: HostSettings): boolean {
  if (!stored) return true;
  return HOST_SETTING_FLAGS.some((k) => stored[k] !== next[k]);
}
