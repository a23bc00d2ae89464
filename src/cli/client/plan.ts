// `vmtc plan hotspots|consolidate [--run] [--json]`: the controller's fleet plans
// (docs/monitoring.md): what it would move now and why (a dry run), or, with --run, run it
// (each move becomes an ordinary migration; the results say which started).
import { UsageError } from './usage.ts';
import { EXIT, machine, onePositional, out, verb } from './verb.ts';

const KINDS: Record<string, 'hotspots' | 'consolidation'> = { hotspots: 'hotspots', consolidate: 'consolidation', consolidation: 'consolidation' };

interface Move { vmId: string; from: string; to: string; reason: string; vsr: number; sizeMb: number }
interface Plan {
  kind: string;
  generatedAt: string;
  moves: Move[];
  hotspots?: { hostId: string; resources: { resource: string; over: number; of: number; latest: number; threshold: number }[]; detectedAt: string }[];
  unresolved?: { hostId: string; reason: string }[];
  fleetLoad?: number;
  powerDown?: string[];
  reason?: string;
  results?: { vmId: string; status: string; migrationId?: string; error?: { code: string; message: string } }[];
}

/** The plan as text: hot hosts or fleet load, then one line per move, then what it leaves. */
export function formatPlan(p: Plan): string {
  const lines: string[] = [];
  if (p.kind === 'hotspots') {
    lines.push(p.hotspots?.length ? 'Hotspots:' : 'No hotspot.');
    for (const h of p.hotspots ?? []) lines.push(`  ${h.hostId}  ${h.resources.map((r) => `${r.resource} ${r.latest} > ${r.threshold} in ${r.over}/${r.of}`).join(', ')}  since ${h.detectedAt}`);
  } else {
    lines.push(`Fleet load: ${p.fleetLoad ?? 0}${p.reason ? ` (${p.reason})` : ''}`);
  }
  if (p.moves.length) {
    lines.push('Moves:');
    for (const m of p.moves) lines.push(`  ${m.vmId}  ${m.from} -> ${m.to}  (${m.sizeMb} MiB, VSR ${m.vsr})  ${m.reason}`);
  }
  for (const u of p.unresolved ?? []) lines.push(`Not relieved: ${u.hostId}: ${u.reason}`);
  if (p.powerDown?.length) lines.push(`Can be powered down: ${p.powerDown.join(', ')}`);
  for (const r of p.results ?? []) lines.push(`  ${r.vmId}: ${r.status === 'started' ? `started ${r.migrationId}` : `refused ${r.error?.code}: ${r.error?.message}`}`);
  return lines.join('\n');
}

export const plan = verb('plan', {
  summary: 'Show what hotspot mitigation or consolidation would move now (a dry run), or run it with --run.',
  usage: 'hotspots: hosts over a threshold in k of the last n observations, and the moves that relieve them.\nconsolidate: the moves that empty lightly loaded hosts, and which hosts can then be powered down.',
  positionals: 'hotspots|consolidate',
  options: { run: { type: 'boolean', help: 'run the plan: each move is submitted as a migration (needs the orchestrator role)' } },
  async go(o, pos, c, output) {
    const what = onePositional(pos, 'hotspots|consolidate', true)!;
    const kind = KINDS[what];
    if (!kind) throw new UsageError(`'${what}' must be hotspots or consolidate`, { field: 'plan', value: what });
    const p = o.run === true ? await c.request<Plan>('POST', `/v1/plans/${kind}/run`) : await c.get<Plan>(`/v1/plans/${kind}`);
    out(machine(output, p) ?? formatPlan(p));
    return EXIT.ok;
  },
});
