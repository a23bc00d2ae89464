// `vmtc evacuate HOST | --site SITE [--to SITE…]` and `vmtc evacuation list|show ID|cancel ID`:
// the controller's evacuations (docs/fleet.md) over POST/GET /v1/evacuations.
import type { Evacuation, EvacuationBody } from '../../controller/evacuation-routes.ts';
import { UsageError } from './usage.ts';
import { EXIT, intOpt, machine, out, str, verb, type Opts } from './verb.ts';

const ORDERS = ['smallest-first', 'priority'] as const;

/** The POST /v1/evacuations body from the command line (mistakes exit 2). */
export function evacuationBody(o: Opts, pos: string[]): EvacuationBody {
  const site = str(o, 'site');
  if (pos.length > 1) throw new UsageError(`expected at most one HOST, got ${pos.length}: ${pos.join(' ')}`);
  if ((pos[0] === undefined) === (site === undefined)) throw new UsageError('give a HOST or --site SITE (one of them)', { field: 'host' });
  const body: EvacuationBody = pos[0] !== undefined ? { host: pos[0] } : { site: site! };
  const to = o.to;
  const toSites = Array.isArray(to) ? to : typeof to === 'string' ? [to] : [];
  if (toSites.length) body.toSites = [...new Set(toSites)];
  const order = str(o, 'order');
  if (order !== undefined) {
    if (!(ORDERS as readonly string[]).includes(order)) throw new UsageError(`--order: '${order}' must be one of ${ORDERS.join(', ')}`, { field: 'order', value: order });
    body.order = order as NonNullable<EvacuationBody['order']>;
  }
  const limits: NonNullable<EvacuationBody['limits']> = {};
  const ps = intOpt(o, 'per-source', 1, 64); if (ps !== undefined) limits.perSourceHost = ps;
  const pd = intOpt(o, 'per-destination', 1, 64); if (pd !== undefined) limits.perDestinationHost = pd;
  const pl = intOpt(o, 'per-lightpath', 1, 64); if (pl !== undefined) limits.perLightpath = pl;
  if (Object.keys(limits).length) body.limits = limits;
  const prio = o.priority;
  const prios = Array.isArray(prio) ? prio : typeof prio === 'string' ? [prio] : [];
  if (prios.length) {
    body.priorities = {};
    for (const p of prios) {
      const m = /^([^=]+)=(\d{1,7})$/.exec(p);
      if (!m) throw new UsageError(`--priority: '${p}' must be VM_ID=N`, { field: 'priority', value: p });
      body.priorities[m[1]!] = Number(m[2]);
    }
  }
  if (o['allow-cold'] === true) body.allowCold = true;
  return body;
}

/** One evacuation as text: the header, the plan against its bound, one line per VM. */
export function formatEvacuation(e: Evacuation): string {
  const target = e.target.host !== undefined ? `host ${e.target.host}` : `site ${e.target.site}`;
  const counts = Object.entries(e.counts).map(([k, v]) => `${v} ${k}`).join(', ');
  const plan = e.plan as { makespanS?: number; bound?: { bound?: number }; batches?: unknown[] };
  const lines = [`evacuation ${e.id}: ${target}, ${e.state}${counts ? ` (${counts})` : ''}`];
  if (plan.makespanS !== undefined) lines.push(`plan: ${plan.batches?.length ?? 0} batches, makespan ${plan.makespanS} s (bound ${plan.bound?.bound ?? '?'} s)`);
  for (const i of e.items ?? []) {
    const to = i.destinationHostId ?? '-';
    const when = i.plannedStartS !== null ? ` at +${i.plannedStartS} s` : '';
    const mig = i.migrationId ? ` ${i.migrationId}${i.migration ? ` (${String((i.migration as { state?: string }).state)})` : ''}` : '';
    const why = i.error ? ` ${i.error.code}` : '';
    lines.push(`  ${i.vmId}  ${i.sourceHostId} -> ${to}  ${i.state}${when}${mig}${why}`);
  }
  return lines.join('\n');
}

export const evacuate = verb('evacuate', {
  summary: 'Drain a host or a site: maintenance, a destination and a start for every VM, the moves run under limits.',
  usage: [
    'POST /v1/evacuations. The hosts go into maintenance (no new VM placed there; vmtc evacuation',
    'cancel stops it, DELETE /v1/hosts/:id/maintenance ends the maintenance). Prints the plan; follow it',
    'with vmtc evacuation show ID.',
  ].join('\n'),
  positionals: '[HOST]',
  options: {
    site: { type: 'string', arg: 'SITE', help: 'every host at this site (instead of HOST)' },
    to: { type: 'string', multiple: true, arg: 'SITE', help: 'only to hosts at this site (repeat for several)' },
    order: { type: 'string', arg: 'smallest-first|priority', choices: ORDERS, help: 'smallest and least dirty first (default), or by priority' },
    priority: { type: 'string', multiple: true, arg: 'VM_ID=N', help: 'a VM\'s priority for --order priority (repeatable)' },
    'per-source': { type: 'string', arg: 'N', help: 'migrations out of one host at once (default 2)' },
    'per-destination': { type: 'string', arg: 'N', help: 'migrations into one host at once (default 2)' },
    'per-lightpath': { type: 'string', arg: 'N', help: 'migrations on one lightpath at once (default 4)' },
    'allow-cold': { type: 'boolean', help: 'a VM that cannot move live moves cold' },
  },
  async go(o, pos, c, output) {
    const e = await c.post<Evacuation>('/v1/evacuations', evacuationBody(o, pos));
    out(machine(output, e) ?? formatEvacuation(e));
    return EXIT.ok;
  },
});

export const evacuation = verb('evacuation', {
  summary: 'List evacuations, show one with its moves, or cancel one.',
  usage: 'list | show ID | cancel ID [--rollback] (running moves finish unless --rollback).',
  positionals: 'list|show|cancel [ID]',
  options: { rollback: { type: 'boolean', help: 'cancel: running moves roll back instead of finishing' } },
  async go(o, pos, c, output) {
    const [what, id, ...rest] = pos;
    if (rest.length) throw new UsageError(`unexpected arguments: ${rest.join(' ')}`);
    if (what === 'list' && id === undefined) {
      const r = await c.get<{ evacuations: Evacuation[] }>('/v1/evacuations');
      out(machine(output, r) ?? (r.evacuations.length ? r.evacuations.map(formatEvacuation).join('\n') : 'No evacuation.'));
      return EXIT.ok;
    }
    if ((what === 'show' || what === 'cancel') && id !== undefined) {
      const path = `/v1/evacuations/${encodeURIComponent(id)}`;
      const e = what === 'show' ? await c.get<Evacuation>(path) : await c.post<Evacuation>(`${path}/cancel`, { running: o.rollback === true ? 'rollback' : 'finish' });
      out(machine(output, e) ?? formatEvacuation(e));
      return EXIT.ok;
    }
    throw new UsageError("expected 'list', 'show ID' or 'cancel ID'", { field: 'evacuation', value: pos.join(' ') });
  },
});
