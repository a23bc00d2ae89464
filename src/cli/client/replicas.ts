// `vmtc replicate VM --to HOST [--interval 60s]`, `vmtc replicate VM --remove REPLICA_ID` and
// `vmtc replicas VM`: a VM's disks pre-seeded at another host and kept warm with deltas
// (docs/disks.md#replicas) over /v1/vms/:id/replicas.
import type { Replica, ReplicaBody } from '../../controller/replicas/schemas.ts';
import { UsageError } from './usage.ts';
import { EXIT, machine, onePositional, out, str, verb, type Opts } from './verb.ts';

/** `60`, `60s`, `5m`, `1h` as seconds, 1 s .. 1 day (mistakes exit 2). */
export function intervalOpt(o: Opts): number | undefined {
  const v = str(o, 'interval');
  if (v === undefined) return undefined;
  const m = /^(\d{1,6})(s|m|h)?$/.exec(v.trim());
  const n = m ? Number(m[1]) * (m[2] === 'h' ? 3600 : m[2] === 'm' ? 60 : 1) : NaN;
  if (!(Number.isSafeInteger(n) && n >= 1 && n <= 86_400)) throw new UsageError(`--interval: '${v}' must be a duration such as 60s, 5m or 1h, from 1 s to 1 day`, { field: 'interval', value: v });
  return n;
}

const bytes = (n: number) => (n >= 1024 * 1024 ? `${(n / 1024 / 1024).toFixed(1)} MiB` : n >= 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${n} B`);

/** One replica as a line: where, state, what the store holds, sent, lag. */
export function formatReplica(r: Replica): string {
  const cp = r.checkpoint ? ` at checkpoint ${r.checkpoint.seq}` : '';
  const why = r.error ? ` (${r.error.code})` : '';
  const lent = r.lentTo ? `, lent to ${r.lentTo}` : '';
  return `${r.id}  ${r.vmId}  ${r.sourceHostId} -> ${r.destinationHostId}  ${r.state}${cp}${lent}${why}  every ${r.intervalS} s  seed ${bytes(r.seedBytes)}, ${r.deltas} deltas, ${bytes(r.bytesSent)} sent  lag ${bytes(r.lag.bytes)} / ${r.lag.seconds} s`;
}

export const replicate = verb('replicate', {
  summary: "Keep a copy of a VM's disks at another host (seeded while it runs, then a delta every interval), or remove one.",
  usage: [
    'POST /v1/vms/VM/replicas: the destination gets a full copy while the VM runs, then the blocks written',
    'since, every --interval; a migration there then moves only the last delta. --remove REPLICA_ID deletes',
    'the copy at the destination and the checkpoints at the source.',
  ].join('\n'),
  positionals: 'VM',
  options: {
    to: { type: 'string', arg: 'HOST', help: 'the host that keeps the copy' },
    interval: { type: 'string', arg: 'DURATION', help: 'between deltas: 60s (default), 5m, 1h' },
    remove: { type: 'string', arg: 'REPLICA_ID', help: 'remove this replica of the VM instead' },
  },
  async go(o, pos, c, output) {
    const vm = onePositional(pos, 'VM', true)!;
    const base = `/v1/vms/${encodeURIComponent(vm)}/replicas`;
    const remove = str(o, 'remove');
    if (remove !== undefined) {
      if (str(o, 'to') !== undefined || str(o, 'interval') !== undefined) throw new UsageError('--remove takes no --to or --interval', { field: 'remove' });
      const r = await c.request<Replica>('DELETE', `${base}/${encodeURIComponent(remove)}`);
      out(machine(output, r) ?? `${formatReplica(r)}\nremoving: the store at ${r.destinationHostId} and the checkpoints at ${r.sourceHostId} go`);
      return EXIT.ok;
    }
    const to = str(o, 'to');
    if (to === undefined) throw new UsageError('--to HOST is required (or --remove REPLICA_ID)', { field: 'to' });
    const body: ReplicaBody = { destinationHostId: to };
    const interval = intervalOpt(o);
    if (interval !== undefined) body.intervalS = interval;
    const r = await c.post<Replica>(base, body);
    out(machine(output, r) ?? formatReplica(r));
    return EXIT.ok;
  },
});

export const replicas = verb('replicas', {
  summary: "A VM's replicas: state, what each destination holds, bytes sent and the lag.",
  usage: 'GET /v1/vms/VM/replicas.',
  positionals: 'VM',
  options: {},
  async go(_o, pos, c, output) {
    const vm = onePositional(pos, 'VM', true)!;
    const r = await c.get<{ replicas: Replica[] }>(`/v1/vms/${encodeURIComponent(vm)}/replicas`);
    out(machine(output, r) ?? (r.replicas.length ? r.replicas.map(formatReplica).join('\n') : `No replica of ${vm}.`));
    return EXIT.ok;
  },
});
