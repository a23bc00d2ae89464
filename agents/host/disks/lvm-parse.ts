// Reading what LVM and thin-provisioning-tools print (docs/disks.md#lvm-thin): `lvs
// --reportformat json` and `thin_delta`'s XML. Pure functions; the backend is lvm-thin.ts.
import { hostError } from '../errors.ts';

/** The `lvs` fields the backend asks for, in this order (`-o`). */
export const LVS_FIELDS = ['lv_name', 'vg_name', 'lv_attr', 'lv_size', 'pool_lv', 'origin', 'thin_id', 'lv_tags', 'data_percent', 'metadata_percent'] as const;

export interface LvReport {
  name: string;
  vg: string;
  /** lv_attr: 'V' thin volume, 't' thin pool as the first character; 'a' active as the fifth. */
  attr: string;
  sizeBytes: number;
  pool: string;
  origin: string;
  thinId: number | null;
  tags: string[];
  dataPercent: number | null;
  metadataPercent: number | null;
}

const bad = (what: string, reason: string, text: string) => hostError('VMTC_HOST_DISK_TOOL_FAILED', { tool: what, reason, output: text.slice(0, 500) });

/** `lvs --reportformat json --units b --nosuffix -o LVS_FIELDS`: {"report":[{"lv":[{...}]}]}. */
export function parseLvsJson(text: string): LvReport[] {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    throw bad('lvs', 'not JSON', text);
  }
  const report = (doc as { report?: unknown }).report;
  if (!Array.isArray(report)) throw bad('lvs', 'no "report" array', text);
  const out: LvReport[] = [];
  for (const r of report) {
    const lvs = (r as { lv?: unknown }).lv;
    if (!Array.isArray(lvs)) continue;
    for (const lv of lvs as Record<string, unknown>[]) {
      const str = (k: string) => (typeof lv[k] === 'string' ? (lv[k] as string).trim() : '');
      const num = (k: string) => (str(k) === '' ? null : Number(str(k)));
      const size = num('lv_size');
      if (!str('lv_name') || size === null || !Number.isSafeInteger(size)) throw bad('lvs', 'an LV without lv_name or a byte lv_size (--units b --nosuffix)', text);
      const thinId = num('thin_id');
      out.push({
        name: str('lv_name'), vg: str('vg_name'), attr: str('lv_attr'), sizeBytes: size, pool: str('pool_lv'), origin: str('origin'),
        thinId: thinId !== null && Number.isSafeInteger(thinId) ? thinId : null,
        tags: str('lv_tags') ? str('lv_tags').split(',') : [],
        dataPercent: num('data_percent'), metadataPercent: num('metadata_percent'),
      });
    }
  }
  return out;
}

export interface ThinDeltaRange {
  kind: 'same' | 'different' | 'left_only' | 'right_only';
  /** In the pool's data blocks. */
  begin: number;
  length: number;
}

export interface ThinDelta {
  /** Data block size in 512-byte sectors (the superblock's data_block_size). */
  dataBlockSectors: number;
  left: number;
  right: number;
  ranges: ThinDeltaRange[];
}

const attrsOf = (tag: string): Record<string, string> => Object.fromEntries([...tag.matchAll(/([a-z_0-9]+)="([^"]*)"/g)].map((m) => [m[1]!, m[2]!]));

/** `thin_delta --snap1 A --snap2 B`: `<superblock … data_block_size="N"><diff left="A"
 *  right="B"><different begin="b" length="n"/>…</diff></superblock>`; with --verbose the same
 *  kinds wrap `<range begin length …/>` elements instead. Both are read. */
export function parseThinDelta(xml: string): ThinDelta {
  const sb = xml.match(/<superblock\b[^>]*>/);
  if (!sb) throw bad('thin_delta', 'no <superblock>', xml);
  const dbs = Number(attrsOf(sb[0]).data_block_size);
  if (!(Number.isInteger(dbs) && dbs > 0)) throw bad('thin_delta', 'no data_block_size', xml);
  const diff = xml.match(/<diff\b[^>]*>/);
  if (!diff) throw bad('thin_delta', 'no <diff>', xml);
  const d = attrsOf(diff[0]);
  if (!/<\/diff>/.test(xml) && !/<diff\b[^>]*\/>/.test(xml)) throw bad('thin_delta', 'truncated: no </diff>', xml);
  const ranges: ThinDeltaRange[] = [];
  let current: ThinDeltaRange['kind'] | null = null;
  for (const m of xml.matchAll(/<(\/?)(same|different|left_only|right_only|range)\b([^>]*?)(\/?)>/g)) {
    const [, close, name, attrs, selfClose] = m;
    if (name !== 'range') {
      if (close) current = null;
      else if (!selfClose) current = name as ThinDeltaRange['kind'];
      else ranges.push(rangeOf(name as ThinDeltaRange['kind'], attrs!, xml));
    } else {
      if (!current) throw bad('thin_delta', '<range> outside a kind', xml);
      ranges.push(rangeOf(current, attrs!, xml));
    }
  }
  return { dataBlockSectors: dbs, left: Number(d.left), right: Number(d.right), ranges };
}

function rangeOf(kind: ThinDeltaRange['kind'], attrs: string, xml: string): ThinDeltaRange {
  const a = attrsOf(attrs);
  const begin = Number(a.begin);
  const length = Number(a.length);
  if (!(Number.isSafeInteger(begin) && begin >= 0 && Number.isSafeInteger(length) && length > 0)) throw bad('thin_delta', `bad ${kind} range`, xml);
  return { kind, begin, length };
}

/** The byte ranges to send between the two devices: what differs or is new in the right one,
 *  and what the right one no longer maps (discarded: zeros at the destination). Sorted. */
export function changedRanges(d: ThinDelta): { offset: number; length: number; zeroed?: boolean }[] {
  const bs = d.dataBlockSectors * 512;
  return d.ranges
    .filter((r) => r.kind !== 'same')
    .map((r) => ({ offset: r.begin * bs, length: r.length * bs, ...(r.kind === 'left_only' ? { zeroed: true } : {}) }))
    .sort((a, b) => a.offset - b.offset);
}

/** LVM's own words for the conditions the backend answers with its own codes. */
export const LVM_MESSAGES = {
  notFound: /Failed to find logical volume "([^"]+)"/,
  poolThreshold: /free space in thin pool \S+ reached threshold|Insufficient free space|out of data space/i,
  exists: /already exists in volume group/,
} as const;
