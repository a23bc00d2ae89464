// Evacuation planning on a synthetic fleet (docs/fleet.md "Benchmark").
//
//   npm run bench:fleet -- [--vms 1000] [--hosts 50] [--seed 7] [--per-lightpath 4] [--order smallest-first|priority]
//
// 1,000 VMs on 50 hosts at 3 sites (a, b, c); lightpaths a~b 1 Gbit/s, a~c 1 Gbit/s and
// b~c 10 Gbit/s. Site c is evacuated: every VM there is placed (src/controller/fleet/placement.ts)
// and scheduled (src/controller/fleet/evacuation-plan.ts). Prints the planning time, the plan's
// makespan against the lower bound (total bytes ÷ total bandwidth into the receiving sites, and
// the longest single migration at a whole lightpath), and two baselines on the same destinations:
// one migration at a time, and all at once sharing each lightpath.
import { parseArgs } from 'node:util';
import type { HostInventory, VmInfo } from '../src/common/agent-protocol.ts';
import { labelsOf, placeVm, type SiteLink } from '../src/controller/fleet/placement.ts';
import { allAtOnceMakespan, oneAtATimeMakespan, planEvacuation, type PlanVm } from '../src/controller/fleet/evacuation-plan.ts';
import { hostUsage } from '../src/controller/capacity.ts';

const { values } = parseArgs({ options: {
  vms: { type: 'string', default: '1000' }, hosts: { type: 'string', default: '50' }, seed: { type: 'string', default: '7' },
  'per-lightpath': { type: 'string', default: '4' }, order: { type: 'string', default: 'smallest-first' },
} });
const NV = Number(values.vms), NH = Number(values.hosts), K = Number(values['per-lightpath']);
const order = values.order === 'priority' ? 'priority' : 'smallest-first';
let seed = Number(values.seed);
const rnd = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
const SITES = ['a', 'b', 'c'];
const links: SiteLink[] = [{ id: 'lp-ab', a: 'a', b: 'b', mbps: 1000 }, { id: 'lp-ac', a: 'a', b: 'c', mbps: 1000 }, { id: 'lp-bc', a: 'b', b: 'c', mbps: 10_000 }];
const SIZES = [1024, 2048, 4096, 8192, 16384];

const hosts: HostInventory[] = Array.from({ length: NH }, (_, i) => ({
  hostId: `h${String(i).padStart(2, '0')}`, site: SITES[Math.floor((i * SITES.length) / NH)]!, hypervisor: { type: 'qemu', version: '10.0.2' },
  cpu: { model: 'x', features: ['sse4_2', 'avx2'], vcpus: 256 }, memoryMb: 512 * 1024, diskGb: 20_000, sharedStorage: true, vms: [], agentVersion: 'bench',
}));
for (let i = 0; i < NV; i++) {
  const memoryMb = SIZES[Math.floor(rnd() * SIZES.length)]!;
  // Mostly quiet guests, some busy ones (Mbit/s of memory dirtied while running).
  const dirtyMbps = rnd() < 0.8 ? Math.round(rnd() * 50) : Math.round(100 + rnd() * 400);
  const vm: VmInfo = { vmId: `vm${i}`, project: 'p', state: 'running', vcpus: 2, memoryMb, diskGb: 20, spec: { vmId: `vm${i}`, project: 'p', vcpus: 2, memoryMb, diskGb: 20, extra: { placement: { dirtyMbps, priority: Math.floor(rnd() * 3) } } } };
  hosts[i % NH]!.vms.push(vm);
}

const t0 = performance.now();
const evacuated = hosts.filter((h) => h.site === 'c');
const maintenance = new Set(evacuated.map((h) => h.hostId));
const entries = hosts.map((inventory) => ({ inventory, connected: true }));
const planVms: PlanVm[] = [];
const usage = new Map<string, ReturnType<typeof hostUsage>>();
for (const src of evacuated) {
  for (const vm of src.vms) {
    const d = placeVm({ vm, source: src, mode: 'auto', hosts: entries, holds: [], maintenance, links, usage });
    const dirty = d.dirtyMbps;
    planVms.push({ vmId: vm.vmId, sourceHostId: src.hostId, memoryMb: vm.memoryMb, vcpus: vm.vcpus, diskGb: 0, dirtyMbps: dirty, priority: labelsOf(vm).priority ?? 0, candidates: d.candidates.map((c) => ({ hostId: c.hostId, path: c.path })) });
  }
}
const tPlaced = performance.now();
const plan = planEvacuation({
  vms: planVms, links, order, allowCold: true, limits: { perSourceHost: 4, perDestinationHost: 4, perLightpath: K },
  hosts: hosts.map((h) => ({ hostId: h.hostId, site: h.site!, free: hostUsage(h, []).available })),
});
const planMs = performance.now() - t0;
const byId = new Map(planVms.map((v) => [v.vmId, v]));
const one = oneAtATimeMakespan(plan, byId, K);
const all = allAtOnceMakespan(plan, byId, K);
const gb = planVms.reduce((s, v) => s + v.memoryMb, 0) / 1024;
const perLink = new Map<string, number>();
for (const it of plan.items) perLink.set(it.link, (perLink.get(it.link) ?? 0) + 1);
const cold = plan.items.filter((i) => i.path === 'cold').length;
const f = (s: number) => `${s.toFixed(1)} s`;
console.log(`fleet: ${NV} VMs on ${NH} hosts at ${SITES.length} sites; evacuating site c: ${planVms.length} VMs, ${gb.toFixed(0)} GiB of memory`);
console.log(`lightpaths: ${links.map((l) => `${l.id} ${l.mbps / 1000} Gbit/s`).join(', ')}; limits perSourceHost 4, perDestinationHost 4, perLightpath ${K}; order ${order}`);
console.log(`planning time: ${planMs.toFixed(1)} ms (placement ${(tPlaced - t0).toFixed(1)} ms, schedule ${(t0 + planMs - tPlaced).toFixed(1)} ms)`);
console.log(`plan: ${plan.items.length} moves (${cold} cold) in ${plan.batches.length} batches, unplaced ${plan.unplaced.length}; per lightpath ${[...perLink].map(([k, v]) => `${k} ${v}`).join(', ')}`);
console.log(`lower bound: max(bytes ${f(plan.bound.bytesBound)}, longest ${f(plan.bound.longest)}) = ${f(plan.bound.bound)}`);
console.log(`| schedule | makespan | × bound |`);
console.log(`|---|---|---|`);
console.log(`| plan (${order}) | ${f(plan.makespan)} | ${(plan.makespan / plan.bound.bound).toFixed(3)} |`);
console.log(`| one at a time | ${f(one)} | ${(one / plan.bound.bound).toFixed(3)} |`);
console.log(`| all at once | ${Number.isFinite(all.makespan) ? f(all.makespan) : 'never'}${all.stalled ? ` (${all.stalled} never converge)` : ''} | ${(all.makespan / plan.bound.bound).toFixed(3)} |`);
