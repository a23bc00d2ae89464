// Schemas of what an agent sends the controller over the agent link (the types are in
// agent-protocol.ts and tunnel-protocol.ts): its hello, its events and the results of the
// requests the controller reads. The hub checks every message against them before anything is
// stored or acted on (src/controller/hub.ts), so one broken or hostile agent cannot plant a
// record that later breaks a read for everyone. Objects stay open (an agent may send fields a
// newer version added); what the controller reads must be there with the right type, within
// bounds.
import { Type, type Static, type TSchema } from 'typebox';
import { Compile } from 'typebox/compile';
import type { ColdExport, ColdImportResult, ColdProgress, ColdVerifyProgress, ReachResult, ForceCompleteMode, Hello, ReplicaCheckpoint, ReplicaDigest, ReplicaTransfer, HostInventory, HostMethods, MigrationLimits, MigrationProgress, MigrationResult, StatsReport, VmInfo, VmSpec } from './agent-protocol.ts';
import type { TunnelState } from './tunnel-protocol.ts';

const Id = Type.String({ minLength: 1, maxLength: 256 });
const Text = Type.String({ maxLength: 4096 });
const Count = Type.Number({ minimum: 0 });
const Epoch = Type.Number({ minimum: 0 });
const Bytes = Type.Number({ minimum: 0 });
const ErrorBody = Type.Object({ code: Type.String({ maxLength: 256 }), message: Text, details: Type.Optional(Type.Record(Type.String(), Type.Unknown())) });

export const HelloSchema = Type.Object({
  kind: Type.Union([Type.Literal('host'), Type.Literal('tunnel')]),
  agentVersion: Type.String({ maxLength: 256 }),
});

export const VmSpecSchema = Type.Object({
  vmId: Id,
  project: Id,
  vcpus: Count,
  memoryMb: Count,
  diskGb: Count,
  kernel: Type.Optional(Text),
  initrd: Type.Optional(Text),
  append: Type.Optional(Text),
  disks: Type.Optional(Type.Array(Type.Object({ path: Text, format: Type.Union([Type.Literal('qcow2'), Type.Literal('raw')]), readonly: Type.Optional(Type.Boolean()) }), { maxItems: 64 })),
  nics: Type.Optional(Type.Array(Type.Object({ mac: Type.String({ maxLength: 64 }), bridge: Type.String({ maxLength: 64 }) }), { maxItems: 64 })),
  serialPorts: Type.Optional(Count),
  extra: Type.Optional(Type.Record(Type.String(), Type.Unknown())),
});

const VmStateSchema = Type.Union([
  Type.Literal('running'), Type.Literal('paused'), Type.Literal('migrating'), Type.Literal('postmigrate'), Type.Literal('incoming'), Type.Literal('stopped'), Type.Literal('crashed'),
]);

export const VmInfoSchema = Type.Object({
  vmId: Id,
  project: Id,
  state: VmStateSchema,
  vcpus: Count,
  memoryMb: Count,
  diskGb: Count,
  spec: VmSpecSchema,
  migrationId: Type.Optional(Id),
  resumedAt: Type.Optional(Epoch),
  pausedAt: Type.Optional(Epoch),
});

export const HostInventorySchema = Type.Object({
  hostId: Id,
  site: Type.Optional(Type.String({ maxLength: 256 })),
  hypervisor: Type.Object({ type: Type.Union([Type.Literal('qemu'), Type.Literal('xen'), Type.Literal('double')]), version: Type.String({ maxLength: 256 }), accelerator: Type.Optional(Type.String({ maxLength: 64 })) }),
  cpu: Type.Object({ model: Type.String({ maxLength: 256 }), features: Type.Array(Type.String({ maxLength: 128 }), { maxItems: 4096 }), vcpus: Count }),
  memoryMb: Count,
  diskGb: Count,
  sharedStorage: Type.Boolean(),
  migrationAddress: Type.Optional(Type.String({ maxLength: 256 })),
  vms: Type.Array(VmInfoSchema, { maxItems: 4096 }),
  agentVersion: Type.String({ maxLength: 256 }),
});

const MigrationStatus = Type.Union([
  Type.Literal('setup'), Type.Literal('active'), Type.Literal('pre-switchover'), Type.Literal('postcopy-active'), Type.Literal('device'),
  Type.Literal('completed'), Type.Literal('failed'), Type.Literal('cancelled'),
]);

export const MigrationProgressSchema = Type.Object({
  migrationId: Id,
  vmId: Id,
  status: MigrationStatus,
  totalBytes: Bytes,
  transferredBytes: Bytes,
  remainingBytes: Bytes,
  dirtyPagesRate: Type.Optional(Type.Number()),
  pass: Type.Optional(Type.Number()),
  expectedDowntimeMs: Type.Optional(Type.Number()),
  throughputMbps: Type.Optional(Type.Number()),
  cpuThrottlePercent: Type.Optional(Type.Number({ minimum: 0, maximum: 100 })),
  phase: Type.Optional(Type.Union([Type.Literal('storage'), Type.Literal('ram')])),
});

export const MigrationResultSchema = Type.Object({
  migrationId: Id,
  vmId: Id,
  status: Type.Union([Type.Literal('completed'), Type.Literal('failed'), Type.Literal('cancelled')]),
  downtimeMs: Type.Optional(Type.Number()),
  totalTimeMs: Type.Optional(Type.Number()),
  transferredBytes: Type.Optional(Bytes),
  setupTimeMs: Type.Optional(Type.Number()),
  pausedAt: Type.Optional(Epoch),
  storageBytes: Type.Optional(Bytes),
  error: Type.Optional(ErrorBody),
});

export const ColdProgressSchema = Type.Object({
  migrationId: Id,
  vmId: Id,
  phase: Type.Union([Type.Literal('export'), Type.Literal('download'), Type.Literal('boot')]),
  transferredBytes: Bytes,
  totalBytes: Bytes,
});

export const ColdVerifyProgressSchema = Type.Object({
  migrationId: Id,
  vmId: Id,
  attempts: Count,
  lastError: Type.Optional(Type.String({ maxLength: 512 })),
  elapsedMs: Count,
  timeoutMs: Count,
});

const ReachProbeSchema = Type.Union([Type.Literal('open'), Type.Literal('refused'), Type.Literal('unreachable'), Type.Literal('no-answer')]);
export const ReachResultSchema = Type.Object({
  reachable: Type.Boolean(),
  reason: Type.String({ maxLength: 1024 }),
  route: Type.Union([Type.Literal('found'), Type.Literal('none'), Type.Literal('not-checked')]),
  probe: ReachProbeSchema,
  errno: Type.Optional(Type.String({ maxLength: 64 })),
});

const Serials = Type.Array(Type.String({ maxLength: 128 }), { maxItems: 256 });

export const ColdExportSchema = Type.Object({
  migrationId: Id,
  vmId: Id,
  sourceHostId: Id,
  destinationHostId: Id,
  destinationCertSerials: Type.Optional(Serials),
  sourceCertSerials: Type.Optional(Serials),
  spec: VmSpecSchema,
  priorState: VmStateSchema,
  disks: Type.Array(Type.Object({ index: Count, url: Text, format: Type.Union([Type.Literal('qcow2'), Type.Literal('raw')]), sizeBytes: Bytes, sha256: Type.String({ maxLength: 128 }) }), { maxItems: 64 }),
  expiresAt: Epoch,
  replica: Type.Optional(Type.Object({ replicaId: Type.String({ pattern: '^[A-Za-z0-9_-]{1,40}$' }) })),
});

export const ColdImportResultSchema = Type.Object({ vm: VmInfoSchema, bytes: Bytes, resumedBytes: Bytes, ms: Count });

export const TunnelStateSchema = Type.Object({
  driver: Type.String({ maxLength: 256 }),
  sites: Type.Array(Type.String({ maxLength: 256 }), { maxItems: 4096 }),
  vmSites: Type.Record(Type.String(), Type.Array(Type.String({ maxLength: 256 }))),
  history: Type.Array(Type.Object({
    at: Epoch,
    op: Type.Union([Type.Literal('add'), Type.Literal('remove')]),
    site: Type.String({ maxLength: 256 }),
    cause: Type.Union([Type.Literal('bicast'), Type.Literal('prune'), Type.Literal('initial')]),
    vmId: Type.Optional(Id),
    sites: Type.Array(Type.String({ maxLength: 256 })),
  })),
});

// Limits of a running migration (vm.tuneMigration): what the controller asks for (checked by the
// agent) and what the agent answers (checked by the controller).
export const MigrationLimitsSchema = Type.Object({
  bandwidthMbps: Type.Optional(Type.Number({ minimum: 0 })),
  maxDowntimeMs: Type.Optional(Type.Number({ minimum: 0 })),
});
const ForceCompleteModeSchema = Type.Union([Type.Literal('postcopy'), Type.Literal('pause')]);
export const ForceCompleteResultSchema = Type.Object({ mode: ForceCompleteModeSchema });
export const TuneMigrationParamsSchema = Type.Object({
  vmId: Id,
  migrationId: Id,
  bandwidthMbps: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 1_000_000 })),
  maxDowntimeMs: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 600_000 })),
});
export const ForceCompleteParamsSchema = Type.Object({ vmId: Id, migrationId: Id, mode: ForceCompleteModeSchema });

// The 'stats' event (docs/monitoring.md): shares within 0..1, rates and sizes finite and >= 0.
const Share = Type.Number({ minimum: 0, maximum: 1 });
const Rate = Type.Number({ minimum: 0, maximum: 1e9 });
export const VmStatsSchema = Type.Object({
  vmId: Id, cpu: Share, memoryMb: Rate,
  memoryUsedMb: Type.Optional(Rate), swapMb: Type.Optional(Rate), balloonMb: Type.Optional(Rate),
  netRxMbps: Rate, netTxMbps: Rate, diskReadMBps: Rate, diskWriteMBps: Rate, dirtyRateMBps: Type.Optional(Rate),
});
export const StatsReportSchema = Type.Object({
  at: Epoch,
  intervalMs: Type.Number({ exclusiveMinimum: 0, maximum: 86_400_000 }),
  host: Type.Object({
    cpu: Share, vcpus: Count, memoryMb: Rate, memoryUsedMb: Rate, swapUsedMb: Type.Optional(Rate),
    netRxMbps: Rate, netTxMbps: Rate, diskReadMBps: Rate, diskWriteMBps: Rate,
  }),
  vms: Type.Array(VmStatsSchema, { maxItems: 4096 }),
});

const SitesResult = Type.Object({ sites: Type.Array(Type.String({ maxLength: 256 })) });
const NumOrNull = Type.Union([Type.Number(), Type.Null()]);
/** The tunnel agent's probe stream (tunnel-protocol.ts TunnelProbeBatch): bounded, so a broken
 *  agent cannot make the controller hold more than PROBE_STREAM allows. */
export const TunnelProbeBatchSchema = Type.Object({
  vmId: Id,
  periodMs: Type.Number({ minimum: 0, maximum: 10_000 }),
  samples: Type.Array(Type.Tuple([Type.Integer({ minimum: 0 }), Epoch, Type.Union([Type.Number({ minimum: 0, maximum: 3_600_000 }), Type.Null()])]), { maxItems: 500 }),
  final: Type.Optional(Type.Boolean()),
}, { additionalProperties: false });

/** tunnel.prune's client-seen downtime (src/common/tunnel-protocol.ts TunnelDowntime). */
export const TunnelDowntimeSchema = Type.Object({
  vmId: Type.String({ maxLength: 256 }), from: Type.Number(), to: Type.Number(),
  tunnelPassive: Type.Object({ gapMs: NumOrNull, gapFromAt: Type.Optional(Type.Number()), gapToAt: Type.Optional(Type.Number()), lastFromSourceAt: NumOrNull, firstFromDestinationAt: NumOrNull, switchMs: NumOrNull, samples: Type.Integer({ minimum: 0 }), method: Type.String({ maxLength: 256 }) }),
  tunnelProbe: Type.Optional(Type.Object({ gapMs: NumOrNull, sent: Type.Integer({ minimum: 0 }), received: Type.Integer({ minimum: 0 }), periodMs: Type.Number({ minimum: 0 }), method: Type.String({ maxLength: 256 }) })),
  error: Type.Optional(Type.Object({ code: Type.String({ maxLength: 256 }), message: Type.String({ maxLength: 4096 }) }, { additionalProperties: true })),
});
const PruneResult = Type.Object({ sites: Type.Array(Type.String({ maxLength: 256 })), downtime: Type.Optional(TunnelDowntimeSchema) });
const Prepared = Type.Object({ uri: Type.String({ minLength: 1, maxLength: 1024 }), storage: Type.Optional(Type.Record(Type.String(), Type.Unknown())) });

// Replicas (docs/disks.md#replicas): checkpoints, transfers, digests and the params an agent
// checks before it acts on them.
const CheckpointIdText = Type.String({ pattern: '^[A-Za-z0-9_.-]{1,48}$' });
export const ReplicaCheckpointSchema = Type.Object({ id: CheckpointIdText, seq: Type.Integer({ minimum: 0 }), takenAt: Epoch, ref: Type.String({ maxLength: 256 }) });
export const ReplicaTransferSchema = Type.Object({
  kind: Type.Union([Type.Literal('full'), Type.Literal('delta')]),
  checkpoint: ReplicaCheckpointSchema, from: Type.Optional(ReplicaCheckpointSchema),
  diskBytes: Bytes, bytes: Bytes, ms: Count, disks: Type.Integer({ minimum: 0, maximum: 64 }),
});
const ReplicaId = Type.String({ pattern: '^[A-Za-z0-9_-]{1,40}$' });
const Handoff = Type.Record(Type.String(), Type.Unknown());
const ChunkList = Type.Array(Type.Integer({ minimum: 0 }), { maxItems: 1 << 22 });
export const ReplicaDigestSchema = Type.Object({
  disks: Type.Array(Type.Object({ index: Count, size: Bytes, chunkBytes: Type.Number({ exclusiveMinimum: 0 }), root: Type.String({ maxLength: 128 }), leaves: Type.Array(Type.String({ maxLength: 128 }), { maxItems: 1 << 22 }), changed: Type.Optional(ChunkList) }), { maxItems: 64 }),
});
const ReplicaParams = {
  'replica.openStore': Type.Object({ replicaId: ReplicaId, spec: VmSpecSchema, listenHost: Type.String({ minLength: 1, maxLength: 256 }), expect: Type.Union([Type.Null(), ReplicaCheckpointSchema]) }),
  'replica.closeStore': Type.Object({ replicaId: ReplicaId, transfer: Type.Optional(ReplicaTransferSchema), waitClients: Type.Optional(Type.Boolean()), activateVmId: Type.Optional(Id) }),
  'replica.removeStore': Type.Object({ replicaId: ReplicaId, keepImages: Type.Optional(Type.Boolean()) }),
  'replica.storePaths': Type.Object({ replicaId: ReplicaId }),
  'replica.send': Type.Object({ replicaId: ReplicaId, vmId: Id, store: Handoff, from: Type.Union([Type.Null(), ReplicaCheckpointSchema]), checkpointId: CheckpointIdText, rateBytesPerS: Type.Optional(Type.Integer({ minimum: 0 })) }),
  'replica.limit': Type.Object({ replicaId: ReplicaId, rateBytesPerS: Type.Integer({ minimum: 0 }) }),
  'replica.follow': Type.Object({ replicaId: ReplicaId, vmId: Id, store: Handoff, from: ReplicaCheckpointSchema, checkpointId: CheckpointIdText }),
  'replica.unfollow': Type.Object({ replicaId: ReplicaId, vmId: Id }),
  'replica.preconnect': Type.Object({ replicaId: ReplicaId, vmId: Id, store: Handoff }),
  'replica.lag': Type.Object({ replicaId: ReplicaId, vmId: Id, from: ReplicaCheckpointSchema }),
  'replica.dropCheckpoints': Type.Object({ replicaId: ReplicaId, vmId: Id, keep: Type.Optional(ReplicaCheckpointSchema) }),
  'replica.digest': Type.Object({
    replicaId: ReplicaId, side: Type.Union([Type.Literal('source'), Type.Literal('store')]), vmId: Type.Optional(Id),
    keepAs: Type.Optional(ReplicaCheckpointSchema), since: Type.Optional(ReplicaCheckpointSchema), changed: Type.Optional(Type.Array(ChunkList, { maxItems: 64 })),
  }),
};
export type ReplicaMethod = keyof typeof ReplicaParams;

// The schemas and the types say the same: a checked value is the type the code reads, and
// anything of the type passes (a field added to a type must be added here too).
type Assignable<S extends TSchema, T> = Static<S> extends T ? (T extends Static<S> ? true : never) : never;
const _typesAgree: [
  Assignable<typeof HelloSchema, Hello>, Assignable<typeof HostInventorySchema, HostInventory>, Assignable<typeof VmInfoSchema, VmInfo>,
  Assignable<typeof VmSpecSchema, VmSpec>, Assignable<typeof MigrationProgressSchema, MigrationProgress>, Assignable<typeof MigrationResultSchema, MigrationResult>,
  Assignable<typeof ColdProgressSchema, ColdProgress>, Assignable<typeof ColdExportSchema, ColdExport>, Assignable<typeof ColdImportResultSchema, ColdImportResult>,
  Assignable<typeof TunnelStateSchema, TunnelState>, Assignable<typeof MigrationLimitsSchema, MigrationLimits>,
  Assignable<typeof ForceCompleteResultSchema, { mode: ForceCompleteMode }>,
  Assignable<typeof TuneMigrationParamsSchema, HostMethods['vm.tuneMigration'][0]>, Assignable<typeof ForceCompleteParamsSchema, HostMethods['vm.forceComplete'][0]>,
  Assignable<typeof ColdVerifyProgressSchema, ColdVerifyProgress>, Assignable<typeof ReachResultSchema, ReachResult>,
  Assignable<typeof StatsReportSchema, StatsReport>,
  Assignable<typeof ReplicaCheckpointSchema, ReplicaCheckpoint>, Assignable<typeof ReplicaTransferSchema, ReplicaTransfer>, Assignable<typeof ReplicaDigestSchema, ReplicaDigest>,
] = [true, true, true, true, true, true, true, true, true, true, true, true, true, true, true, true, true, true, true, true];
void _typesAgree;

export interface Checker {
  /** The problems found (at most a few, each with its JSON pointer), or [] when the value fits. */
  problems(value: unknown): { path: string; message: string }[];
}

function checker(schema: TSchema): Checker {
  const compiled = Compile(schema);
  return {
    problems(value) {
      if (compiled.Check(value)) return [];
      const out: { path: string; message: string }[] = [];
      for (const e of compiled.Errors(value)) {
        out.push({ path: e.instancePath || '/', message: e.message });
        if (out.length >= 5) break;
      }
      return out.length ? out : [{ path: '/', message: 'does not match the schema' }];
    },
  };
}

export const HELLO = checker(HelloSchema);

/** Events an agent may send after its hello: name -> schema. Any other name is refused. */
export const AGENT_EVENTS: Record<string, Checker> = {
  inventory: checker(HostInventorySchema),
  'migration.progress': checker(MigrationProgressSchema),
  'migration.done': checker(MigrationResultSchema),
  'cold.progress': checker(ColdProgressSchema),
  'cold.verify': checker(ColdVerifyProgressSchema),
  'tunnel.state': checker(TunnelStateSchema),
  'tunnel.probe': checker(TunnelProbeBatchSchema),
  stats: checker(StatsReportSchema),
};

/** Results of the requests the controller reads: method -> schema. Others are not checked
 *  (acknowledgements such as { ok: true } that nothing reads). */
export const AGENT_RESULTS: Record<string, Checker> = (() => {
  const vm = checker(VmInfoSchema);
  const sites = checker(SitesResult);
  return {
    'host.inventory': AGENT_EVENTS.inventory!,
    'vm.start': vm, 'vm.describe': vm, 'vm.resume': vm, 'vm.waitRunning': vm, 'vm.coldAbort': vm, 'vm.coldVerify': vm,
    'vm.prepareIncoming': checker(Prepared),
    'vm.migrationStatus': checker(Type.Union([Type.Null(), MigrationProgressSchema, MigrationResultSchema])),
    'vm.coldExport': checker(ColdExportSchema),
    'vm.coldImport': checker(ColdImportResultSchema),
    'vm.coldChecksums': checker(Type.Object({ disks: Type.Array(Type.Object({ index: Count, sha256: Type.String({ pattern: '^[0-9a-f]{64}$' }) }), { maxItems: 64 }) })),
    'host.checkReach': checker(ReachResultSchema),
    'vm.tuneMigration': checker(MigrationLimitsSchema),
    'vm.forceComplete': checker(ForceCompleteResultSchema),
    'replica.openStore': checker(Type.Object({ store: Handoff })),
    'replica.closeStore': checker(Type.Object({ holds: Type.Union([Type.Null(), ReplicaCheckpointSchema]), activated: Type.Optional(Type.Union([Type.Object({ ms: Type.Number({ minimum: 0 }) }), Type.Object({ error: Type.String({ maxLength: 2000 }) })])) })),
    'replica.send': checker(ReplicaTransferSchema),
    'replica.follow': checker(ReplicaTransferSchema),
    'replica.unfollow': checker(Type.Object({ bytes: Bytes, following: Type.Boolean(), error: Type.Optional(Type.String({ maxLength: 4096 })), cut: Type.Optional(Type.Boolean()), stoppedAtCut: Type.Optional(Type.Boolean()) })),
    'replica.preconnect': checker(Type.Object({ relays: Count })),
    'replica.lag': checker(Type.Object({ bytes: Bytes })),
    'replica.digest': checker(ReplicaDigestSchema),
    'replica.storePaths': checker(Type.Object({ paths: Type.Array(Type.String({ minLength: 1, maxLength: 4096 }), { maxItems: 64 }) })),
    'tunnel.bicast': sites, 'tunnel.prune': checker(PruneResult), 'tunnel.state': AGENT_EVENTS['tunnel.state']!,
  };
})();

/** Parameters of the requests an agent checks against a schema before it acts on them (the
 *  older methods are checked field by field in agents/host/index.ts): method -> schema. */
export const AGENT_PARAMS: Record<string, Checker> = {
  'vm.tuneMigration': checker(TuneMigrationParamsSchema),
  'vm.forceComplete': checker(ForceCompleteParamsSchema),
  ...Object.fromEntries(Object.entries(ReplicaParams).map(([k, v]) => [k, checker(v)])),
};

const num = (v: unknown, d = 0): number => (typeof v === 'number' && Number.isFinite(v) ? v : d);
const str = (v: unknown, d: string): string => (typeof v === 'string' ? v : d);
const rec = (v: unknown): Record<string, unknown> => (v && typeof v === 'object' && !Array.isArray(v) ? v as Record<string, unknown> : {});
const VM_STATES = new Set(['running', 'paused', 'migrating', 'postmigrate', 'incoming', 'stopped', 'crashed']);

/**
 * An inventory as the controller's store kept it, made safe to read: a row written before the
 * hub checked inventories (or damaged) may lack fields or have wrong types. Missing numbers
 * read as 0, missing strings as 'unknown', a VM without an id is left out; the host id is the
 * store's, never the row's. Never throws.
 */
export function inventoryFromStore(raw: unknown, hostId: string): HostInventory {
  const r = rec(raw);
  const hv = rec(r.hypervisor);
  const cpu = rec(r.cpu);
  const vms: VmInfo[] = [];
  for (const v of Array.isArray(r.vms) ? r.vms : []) {
    const vm = rec(v);
    if (typeof vm.vmId !== 'string' || !vm.vmId) continue;
    const spec = rec(vm.spec);
    const info: VmInfo = {
      vmId: vm.vmId, project: str(vm.project, 'unknown'),
      state: (VM_STATES.has(vm.state as string) ? vm.state : 'crashed') as VmInfo['state'],
      vcpus: num(vm.vcpus), memoryMb: num(vm.memoryMb), diskGb: num(vm.diskGb),
      spec: { ...spec, vmId: vm.vmId, project: str(spec.project, str(vm.project, 'unknown')), vcpus: num(spec.vcpus, num(vm.vcpus)), memoryMb: num(spec.memoryMb, num(vm.memoryMb)), diskGb: num(spec.diskGb, num(vm.diskGb)) },
    };
    if (typeof vm.migrationId === 'string') info.migrationId = vm.migrationId;
    vms.push(info);
  }
  const inv: HostInventory = {
    hostId,
    hypervisor: { type: str(hv.type, 'unknown') as HostInventory['hypervisor']['type'], version: str(hv.version, 'unknown'), ...(typeof hv.accelerator === 'string' ? { accelerator: hv.accelerator } : {}) },
    cpu: { model: str(cpu.model, 'unknown'), features: Array.isArray(cpu.features) ? cpu.features.filter((f): f is string => typeof f === 'string') : [], vcpus: num(cpu.vcpus) },
    memoryMb: num(r.memoryMb), diskGb: num(r.diskGb), sharedStorage: r.sharedStorage === true, vms, agentVersion: str(r.agentVersion, 'unknown'),
  };
  if (typeof r.site === 'string') inv.site = r.site;
  if (typeof r.migrationAddress === 'string') inv.migrationAddress = r.migrationAddress;
  return inv;
}
