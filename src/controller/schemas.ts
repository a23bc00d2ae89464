// The controller's REST types, declared once: the TypeBox schemas its routes validate and
// serialise with (api.ts, enroll-routes.ts), that its OpenAPI document is built from, and whose
// Static<> types the CLI client (src/cli/client/) and the lab (lab/stack.ts) read the API with.
// Response records are open (additionalProperties) where the controller passes through records
// that other parts own, so nothing they carry is dropped.
import { Type, type Static, StringEnum, Nullable, OpenObject, MapOf, ErrorBody } from '../common/schemas.ts';
import { STATES } from './machine.ts';
import type { MigrationRequest as StoredMigrationRequest } from './store.ts';
import type { PublicJwk } from '../common/dpop.ts';
import { POLICY_ACTIONS } from './migration/policy.ts';

export const Role = StringEnum(['admin', 'orchestrator', 'reader']);
export type Role = Static<typeof Role>;

export const MigrationStateSchema = StringEnum(STATES);
export const MigrationMode = StringEnum(['live', 'cold', 'auto']);

/** `:id` in a route path. */
export const IdParams = Type.Object({ id: Type.String({ maxLength: 128 }) });

// ---- migrations

/** A migration policy (migration/policy.ts; docs/policy.md): per request, per VM group, or the
 *  controller's; absent fields come from the next layer. */
export const MigrationPolicySchema = Type.Object({
  progressTimeoutS: Type.Optional(Type.Number({ minimum: 0, maximum: 86_400, description: 'no progress (the remaining bytes not falling, no smaller pass) for this long fires the next action; 0: never' })),
  completionTimeoutPerGiBS: Type.Optional(Type.Number({ minimum: 0, maximum: 86_400, description: "the copy may take this long per GiB of guest memory, then the next action fires (KubeVirt's completionTimeoutPerGiB); 0: no limit" })),
  onTimeout: Type.Optional(Type.Array(StringEnum(POLICY_ACTIONS), { maxItems: POLICY_ACTIONS.length, uniqueItems: true, description: 'the actions, in order: each firing takes the next that applies; raise-downtime repeats until maxDowntimeMs; cancel only last; none: a warning only' })),
  downtimeStepMs: Type.Optional(Type.Integer({ minimum: 1, maximum: 600_000, description: 'raise-downtime: by this much each firing' })),
  maxDowntimeMs: Type.Optional(Type.Integer({ minimum: 1, maximum: 600_000, description: 'raise-downtime: up to this limit' })),
  throttleWarnPercent: Type.Optional(Type.Number({ minimum: 0, maximum: 100, description: 'a warning once the hypervisor throttles the guest CPU this much (auto-converge); 0: never' })),
}, { additionalProperties: false });

export const MigrationRequestBody = Type.Object({
  vmId: Type.String({ minLength: 1, maxLength: 128 }),
  destinationHostId: Type.Optional(Type.String({ minLength: 1, maxLength: 128, description: 'absent: the controller chooses (docs/fleet.md "Placement"); the choice and why are in the record\'s placement' })),
  toSites: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 128 }), { minItems: 1, maxItems: 32, uniqueItems: true, description: 'without destinationHostId: choose only among hosts at these sites' })),
  mode: Type.Optional(StringEnum(['live', 'cold', 'auto'], { default: 'live' })),
  maxDowntimeMs: Type.Optional(Type.Integer({ minimum: 1, maximum: 600_000 })),
  bandwidthMbps: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 1_000_000 })),
  deadline: Type.Optional(Type.String({ format: 'date-time' })),
  requestId: Type.Optional(Type.String({ minLength: 1, maxLength: 128, description: 'idempotency key: a repeated request returns the first migration' })),
  autoConverge: Type.Optional(Type.Boolean()),
  postcopy: Type.Optional(Type.Boolean()),
  multifd: Type.Optional(Type.Boolean()),
  multifdChannels: Type.Optional(Type.Integer({ minimum: 1, maximum: 64, description: 'with multifd: its TCP streams (default: enough to fill the lightpath, docs/lab.md "Throughput")' })),
  suspend: Type.Optional(Type.Boolean({ description: 'non-live (suspend, copy, resume): the VM is paused for the whole copy; for comparison with live migration' })),
  verifyTcp: Type.Optional(Type.Object({
    host: Type.String({ minLength: 1, maxLength: 255 }),
    port: Type.Integer({ minimum: 1, maximum: 65535 }),
    timeoutMs: Type.Optional(Type.Integer({ minimum: 1_000, maximum: 600_000, description: 'how long the VM may take to run and the service to answer at the destination before the move rolls back (default: the controller\'s destinationRunTimeoutMs, 60 s)' })),
  }, {
    additionalProperties: false,
    description: 'cold path: after booting at the destination, this TCP service of the guest must answer before the source is removed (EGI D4.4 verification); before the source is powered off the destination checks it has a route to host (VMTC_VERIFY_TARGET_UNREACHABLE otherwise)',
  })),
  overrideAdvisories: Type.Optional(Type.Array(Type.String({ pattern: '^[a-z0-9][a-z0-9._-]{0,63}$' }), {
    maxItems: 32, uniqueItems: true,
    description: 'ids of known-bad hypervisor releases (GET /v1/hosts advisories; a VMTC_HYPERVISOR_VERSION_INCOMPATIBLE refusal names them in details.advisory) this live migration goes ahead with anyway; each becomes a warning on the record',
  })),
  policy: Type.Optional(MigrationPolicySchema),
}, { additionalProperties: false });
/** What a client sends to POST /v1/migrations. */
export type MigrationRequestBody = Static<typeof MigrationRequestBody>;
/** The request as the handler sees it and the store keeps it: validated, `mode` defaulted, and
 *  the destination the controller chose when the body named none (fleet/placement.ts). */
export type MigrationRequest = Omit<MigrationRequestBody, 'destinationHostId'> & { destinationHostId: string; mode: NonNullable<MigrationRequestBody['mode']> };

// The store keeps the request as it was accepted: tsc fails here if its declaration drifts.
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
type Assert<T extends true> = T;
export type StoredRequestIsTheSchema = Assert<Same<MigrationRequest, StoredMigrationRequest>>;

/** `state=S[,S]`: one state or several, comma-separated. */
const StateList = Type.String({ pattern: `^(${STATES.join('|')})(,(${STATES.join('|')}))*$`, maxLength: 1024, description: `one state or several, comma-separated: ${STATES.join(', ')}` });

/** What a list and the fleet stream are about (the same filters on both). */
const MigrationFilterQuery = {
  state: Type.Optional(StateList),
  vmId: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })),
  hostId: Type.Optional(Type.String({ minLength: 1, maxLength: 128, description: 'the source or the destination' })),
  since: Type.Optional(Type.String({ format: 'date-time', description: 'at or after (lists: created; the stream: the event)' })),
  until: Type.Optional(Type.String({ format: 'date-time', description: 'before (lists: created; the stream: the event)' })),
};

export const MigrationListQuery = Type.Object({
  ...MigrationFilterQuery,
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 500, default: 50, description: 'migrations per page' })),
  cursor: Type.Optional(Type.String({ minLength: 1, maxLength: 512, description: 'nextCursor of the previous page' })),
}, { additionalProperties: false });
export type MigrationListQuery = Static<typeof MigrationListQuery>;

/** `Last-Event-ID` as a query parameter, for clients that cannot set headers (a browser's EventSource sets it itself on reconnecting). */
const LastEventId = Type.String({ minLength: 1, maxLength: 64, description: 'resume after this event id (as the Last-Event-ID header)' });

/** GET /v1/migrations/:id/events. */
export const MigrationEventsQuery = Type.Object({ lastEventId: Type.Optional(LastEventId) }, { additionalProperties: false });

/** GET /v1/events: the list's filters, and where to resume. */
export const FleetEventsQuery = Type.Object({ ...MigrationFilterQuery, lastEventId: Type.Optional(LastEventId) }, { additionalProperties: false });
export type FleetEventsQuery = Static<typeof FleetEventsQuery>;

/** Copy progress as the host agent last reported it (live: QEMU's figures; cold: the download). */
export const Progress = Type.Object({
  migrationId: Type.Optional(Type.String()),
  vmId: Type.Optional(Type.String()),
  status: Type.Optional(Type.String({ description: 'setup, active, pre-switchover, postcopy-active, device, completed, failed, cancelled' })),
  phase: Type.Optional(Type.String({ description: 'live with storage copy: storage, then ram; cold: export, download, boot, verify' })),
  totalBytes: Type.Optional(Type.Number()),
  transferredBytes: Type.Optional(Type.Number()),
  remainingBytes: Type.Optional(Type.Number()),
  dirtyPagesRate: Type.Optional(Type.Number()),
  pass: Type.Optional(Type.Number()),
  throughputMbps: Type.Optional(Type.Number()),
  expectedDowntimeMs: Type.Optional(Type.Number()),
  verify: Type.Optional(Type.Object({
    attempts: Type.Number(),
    lastError: Type.Optional(Type.String()),
    elapsedMs: Type.Number(),
    timeoutMs: Type.Number(),
  }, { additionalProperties: true, description: 'cold path, phase verify: the TCP attempts so far that did not connect' })),
  at: Type.Optional(Type.Number({ description: 'epoch ms when the controller stored it' })),
}, { additionalProperties: true });
export type Progress = Static<typeof Progress>;

export const Transition = Type.Object({
  seq: Type.Number(),
  from: Nullable(MigrationStateSchema),
  to: MigrationStateSchema,
  event: Type.String(),
  at: Type.String({ format: 'date-time' }),
  detail: Type.Optional(Type.Unknown()),
}, { additionalProperties: true });
export type Transition = Static<typeof Transition>;

/** What the hypervisor reported about the copy (times in ms, instants in epoch ms). */
export const MigrationResult = Type.Object({
  downtimeMs: Type.Optional(Type.Number({ description: "the hypervisor's own downtime figure" })),
  totalTimeMs: Type.Optional(Type.Number()),
  transferredBytes: Type.Optional(Type.Number()),
  setupTimeMs: Type.Optional(Type.Number()),
  pausedAt: Type.Optional(Type.Number()),
  resumedAt: Type.Optional(Type.Number()),
  storageBytes: Type.Optional(Type.Number()),
  postcopy: Type.Optional(Type.Boolean({ description: 'the copy switched to post-copy: the destination ran before all memory arrived' })),
  postcopyRequests: Type.Optional(Type.Number({ description: 'with post-copy: pages the destination fetched on demand' })),
}, { additionalProperties: true });

/** What each step of the sequence did (pre-checks, token, lightpath, incoming, tunnel, cold). */
export const MigrationSteps = Type.Object({
  checks: Type.Optional(Type.Array(Type.String())),
  token: Type.Optional(Type.Object({
    jti: Type.Optional(Type.String()),
    expiresAt: Type.Optional(Type.Number({ description: 'epoch seconds' })),
    audience: Type.Optional(Type.Array(Type.String())),
    skipped: Type.Optional(Type.String({ description: 'why no token was needed' })),
  }, { additionalProperties: true })),
  lightpath: Type.Optional(Type.Object({
    key: Type.Optional(Type.String({ description: "the idempotency key the broker knows the reservation by, recorded before the broker was asked" })),
    reservationId: Type.Optional(Type.String()),
    provisioned: Type.Optional(Type.Boolean()),
    released: Type.Optional(Type.Boolean()),
    skipped: Type.Optional(Type.String()),
    details: Type.Optional(OpenObject<{ path?: unknown; dataPlane?: { active?: boolean; details?: Record<string, unknown> } }>({
      description: "the broker's path and data plane for the reservation",
    })),
  }, { additionalProperties: true })),
  incoming: Type.Optional(Type.Object({
    uri: Type.Optional(Type.String()),
    prepared: Type.Optional(Type.Boolean()),
    storage: Type.Optional(OpenObject({ description: "non-shared storage: where the destination's disk copies are (the hypervisor driver's own terms)" })),
  }, { additionalProperties: true })),
  tunnel: Type.Optional(Type.Object({
    bicast: Type.Optional(Type.Boolean()),
    pruned: Type.Optional(Type.Boolean()),
    skipped: Type.Optional(Type.String()),
  }, { additionalProperties: true })),
  cold: Type.Optional(OpenObject({ description: 'the cold path: export, transfer, boot and verification' })),
}, { additionalProperties: true });

const Warning = Type.Object({
  code: Type.String(),
  message: Type.String(),
  details: Type.Optional(OpenObject()),
}, { additionalProperties: true });

/** One change an operator made to a running migration (the record's `changes`). */
export const MigrationChange = Type.Object({
  at: Type.String({ format: 'date-time' }),
  by: Type.String({ description: 'the name of the credential that asked' }),
  what: StringEnum(['tune', 'force-complete']),
  mode: Type.Optional(StringEnum(['postcopy', 'pause'])),
  limits: Type.Optional(OpenObject({ description: 'tune: the limits asked for' })),
  previous: Type.Optional(OpenObject({ description: 'tune: the limits in effect before' })),
  reported: Type.Optional(OpenObject({ description: 'tune: the limits in effect after, as the source agent read them back from the hypervisor' })),
}, { additionalProperties: true });

/** A migration record: POST /v1/migrations, GET /v1/migrations[/:id], cancel, and the events. */
export const Migration = Type.Object({
  id: Type.String(),
  vmId: Type.String(),
  project: Type.String(),
  mode: MigrationMode,
  state: MigrationStateSchema,
  sourceHostId: Type.String(),
  destinationHostId: Type.String(),
  path: StringEnum(['live', 'cold'], { description: 'the path taken (auto may become cold)' }),
  request: OpenObject<MigrationRequest>({ description: 'the request as accepted' }),
  progress: Nullable(Progress),
  error: Nullable(ErrorBody),
  steps: MigrationSteps,
  timings: MapOf(Type.Number(), { description: 'milliseconds spent in each state, by state name' }),
  result: MigrationResult,
  downtime: Type.Optional(OpenObject({ description: "client-seen downtime: hypervisor (the hypervisor's figure, ms), tunnelPassive { gapMs, lastFromSourceAt, firstFromDestinationAt, switchMs, samples, method } and tunnelProbe { gapMs, sent, received, periodMs, method } measured by the tunnel agent between bicast and prune, tunnel { agent, from, to, error? } (docs/tunnel.md)" })),
  warnings: Type.Array(Warning, { description: 'problems after the commit point (no way back then), and known-bad hypervisor releases accepted or avoided at admission (details.step precheck)' }),
  kept: Type.Optional(Type.Array(Type.String(), { description: 'what the end state deliberately left in place for an operator, and why (everything else was released)' })),
  placement: Type.Optional(OpenObject({ description: 'the request named no destination: how the controller chose it (chosen, candidates with their scores, refused hosts with why; docs/fleet.md "Placement")' })),
  evacuationId: Type.Optional(Type.String({ description: 'the evacuation that started this migration' })),
  transitions: Type.Optional(Type.Array(Transition, { description: 'every state change (not in lists)' })),
  tuning: Type.Optional(OpenObject({ description: 'how the migration runs: the request\'s bandwidthMbps, maxDowntimeMs, postcopy… with the limits operators changed since (PATCH)' })),
  changes: Type.Optional(Type.Array(MigrationChange, { description: 'what operators changed while the copy ran (PATCH, force-complete), oldest first' })),
  policy: Type.Optional(OpenObject({ description: 'the migration policy in effect once the copy started (policy, and from: the layer each field came from) and what it fired: fired [{ at, trigger, action, outcome, skipped?, maxDowntimeMs?, error? }], firings (docs/policy.md)' })),
  createdAt: Type.String({ format: 'date-time' }),
  updatedAt: Type.String({ format: 'date-time' }),
  terminal: Type.Boolean({ description: 'the state is final' }),
}, { additionalProperties: true });
export type Migration = Static<typeof Migration>;

// ---- VM groups' migration policies (policy-routes.ts)

export const PolicyGroupParams = Type.Object({ group: Type.String({ pattern: '^[a-z0-9][a-z0-9._-]{0,63}$', description: 'the group; `default` applies to every VM in no group' }) });
export const PolicyGroupBody = Type.Object({
  policy: MigrationPolicySchema,
  vmIds: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 128 }), { maxItems: 10_000, uniqueItems: true, description: "the group's VMs (a VM listed leaves its former group)" })),
}, { additionalProperties: false });
export type PolicyGroupBody = Static<typeof PolicyGroupBody>;
export const PolicyGroup = Type.Object({
  group: Type.String(),
  policy: MigrationPolicySchema,
  vmIds: Type.Array(Type.String()),
  updatedAt: Type.String({ format: 'date-time' }),
}, { additionalProperties: false });
export const PolicyGroupList = Type.Object({
  groups: Type.Array(PolicyGroup),
  controller: Type.Object({}, { additionalProperties: true, description: "the controller's configured policy (runner.policy), over the built-in defaults" }),
  defaults: Type.Object({}, { additionalProperties: true, description: 'the built-in defaults (docs/policy.md)' }),
});

// ---- an operator's control of a running migration (migration-control-routes.ts)

export const ForceCompleteBody = Type.Object({
  mode: Type.Optional(StringEnum(['postcopy', 'pause'], {
    description: 'postcopy: switch to post-copy (the migration must have started with postcopy: true); pause: pause the VM so that its copy ends. Default: postcopy when allowed, else pause',
  })),
}, { additionalProperties: false });
export type ForceCompleteBody = Static<typeof ForceCompleteBody>;

export const TuneMigrationBody = Type.Object({
  bandwidthMbps: Type.Optional(Type.Integer({ minimum: 1, maximum: 1_000_000, description: 'the migration stream\'s bandwidth from now on, Mbit/s (not above its lightpath\'s)' })),
  maxDowntimeMs: Type.Optional(Type.Integer({ minimum: 1, maximum: 600_000, description: 'the longest pause the hypervisor may plan for its stop-and-copy from now on' })),
}, { additionalProperties: false, minProperties: 1 });
export type TuneMigrationBody = Static<typeof TuneMigrationBody>;

export const MigrationList = Type.Object({
  migrations: Type.Array(Migration),
  nextCursor: Type.Optional(Type.String({ description: 'there may be more: pass it as cursor for the next page' })),
});
export type MigrationList = Static<typeof MigrationList>;

// ---- hosts and VMs

const Resources = Type.Object({ vcpus: Type.Number(), memoryMb: Type.Number(), diskGb: Type.Number() });

/** A known-bad hypervisor release (src/common/hypervisor-advisories.ts) a host runs. */
const HostAdvisory = Type.Object({
  id: Type.String(),
  summary: Type.String(),
  accelerator: Type.String(),
  affectedBelow: Type.String({ description: 'every version below this one is affected' }),
  fixedIn: Type.String(),
  commit: Type.String({ description: 'the upstream commit that fixed it' }),
  live: StringEnum(['refuse', 'warn'], { description: 'what it does to a live migration (a cold one is never affected)' }),
});

export const Host = Type.Object({
  hostId: Type.String(),
  connected: Type.Boolean(),
  totals: Resources,
  used: Resources,
  held: Resources,
  available: Resources,
  site: Type.Optional(Type.String()),
  lastSeen: Type.Optional(Type.String({ format: 'date-time' })),
  hypervisor: Type.Optional(Type.Object({ type: Type.String(), version: Type.String(), accelerator: Type.Optional(Type.String({ description: "how it runs guests (QEMU's -accel); absent from older agents" })) })),
  advisories: Type.Optional(Type.Array(HostAdvisory, { description: 'known-bad releases this host runs: a live migration to or from it is refused (or warned about) unless the request accepts them in overrideAdvisories' })),
  cpu: Type.Optional(Type.Object({ model: Type.String(), vcpus: Type.Number(), features: Type.Number({ description: 'how many CPU features' }) })),
  sharedStorage: Type.Optional(Type.Boolean()),
  migrationAddress: Type.Optional(Type.String()),
  byProject: Type.Optional(MapOf(Type.Object({ vcpus: Type.Number(), memoryMb: Type.Number(), diskGb: Type.Number(), vms: Type.Number() }))),
  vms: Type.Optional(Type.Array(Type.Object({ vmId: Type.String(), project: Type.String(), state: Type.String() }))),
}, { additionalProperties: true, description: 'totals, used, held (for incoming migrations) and available vCPU, memory MB and disk GB' });
export type Host = Static<typeof Host>;
export const HostList = Type.Object({ hosts: Type.Array(Host) });

export const Vm = Type.Object({
  vmId: Type.String(),
  project: Type.String(),
  state: Type.String(),
  hostId: Type.String(),
  site: Type.Optional(Type.String()),
  hostConnected: Type.Optional(Type.Boolean()),
  vcpus: Type.Number(),
  memoryMb: Type.Number(),
  diskGb: Type.Optional(Type.Number()),
  migrationId: Type.Optional(Type.String()),
}, { additionalProperties: true });
export type Vm = Static<typeof Vm>;
export const VmList = Type.Object({ vms: Type.Array(Vm) });

export const VmSpecSchema = Type.Object({
  vmId: Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$' }),
  project: Type.String({ minLength: 1, maxLength: 64 }),
  vcpus: Type.Integer({ minimum: 1, maximum: 256 }),
  memoryMb: Type.Integer({ minimum: 16, maximum: 4_194_304 }),
  diskGb: Type.Number({ minimum: 0 }),
  kernel: Type.Optional(Type.String()),
  initrd: Type.Optional(Type.String()),
  append: Type.Optional(Type.String({ maxLength: 4096 })),
  disks: Type.Optional(Type.Array(Type.Object({
    path: Type.String(),
    format: StringEnum(['qcow2', 'raw']),
    readonly: Type.Optional(Type.Boolean()),
  }, { additionalProperties: false }), { maxItems: 16 })),
  nics: Type.Optional(Type.Array(Type.Object({
    mac: Type.String({ pattern: '^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$' }),
    bridge: Type.String({ maxLength: 15 }),
  }, { additionalProperties: false }), { maxItems: 8 })),
  serialPorts: Type.Optional(Type.Integer({ minimum: 0, maximum: 4 })),
  extra: Type.Optional(OpenObject()),
}, { additionalProperties: false });

export const StartVmBody = Type.Object({
  hostId: Type.String({ minLength: 1, maxLength: 128 }),
  spec: VmSpecSchema,
}, { additionalProperties: false });
export type StartVmBody = Static<typeof StartVmBody>;
export const StartedVm = Type.Object({ hostId: Type.String(), vmId: Type.String(), state: Type.String() });

// ---- identity and credentials

export const Identity = Type.Object({
  jkt: Type.String({ description: "RFC 7638 thumbprint of the controller's key" }),
  publicJwk: OpenObject<PublicJwk>({ description: "the controller's public key (JWK)" }),
}, { additionalProperties: true });

export const CredentialBody = Type.Object({
  name: Type.String({ minLength: 1, maxLength: 64 }),
  role: Role,
}, { additionalProperties: false });
export const NewCredential = Type.Object({
  id: Type.String(),
  name: Type.String(),
  role: Type.String(),
  token: Type.String({ description: 'the bearer credential; shown only here' }),
});
export const CredentialList = Type.Object({
  credentials: Type.Array(Type.Object({
    id: Type.String(),
    name: Type.String(),
    role: Type.String(),
    createdAt: Type.String({ format: 'date-time' }),
    revokedAt: Nullable(Type.String({ format: 'date-time' })),
  }, { additionalProperties: true })),
});

// ---- agent enrolment (enroll-routes.ts)

export const AgentHostId = Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$' });
export const AgentKind = StringEnum(['host', 'tunnel']);

export const EnrollBody = Type.Object({
  token: Type.String({ minLength: 1, maxLength: 256 }),
  csr: Type.String({ minLength: 1, maxLength: 16384 }),
}, { additionalProperties: false });
export const Enrolled = Type.Object({
  hostId: Type.String(),
  kind: AgentKind,
  certificate: Type.String({ description: 'PEM client certificate; CN is the host id' }),
  caCertificate: Type.String({ description: 'PEM certificate of the deployment CA, to pin' }),
  agentUrl: Type.String({ description: 'wss:// URL of the agent hub' }),
}, { additionalProperties: false });

export const EnrollTokenBody = Type.Object({
  kind: AgentKind,
  hostId: AgentHostId,
  ttlSeconds: Type.Optional(Type.Integer({ minimum: 1, maximum: 30 * 86400 })),
}, { additionalProperties: false });
export const EnrollToken = Type.Object({
  token: Type.String(),
  hostId: Type.String(),
  kind: AgentKind,
  expiresAt: Type.String({ format: 'date-time' }),
  caFingerprint: Type.String({ description: 'sha256 of the CA certificate, for the agent to check' }),
}, { additionalProperties: false });
export type EnrollToken = Static<typeof EnrollToken>;

export const Agent = Type.Object({
  hostId: Type.String(),
  kind: AgentKind,
  connected: Type.Boolean(),
  connectedAt: Type.Optional(Type.String({ format: 'date-time' })),
  lastSeen: Type.Optional(Type.String({ format: 'date-time' })),
  agentVersion: Type.Optional(Type.String()),
  certSerials: Type.Array(Type.String()),
}, { additionalProperties: false });
export const AgentList = Type.Object({ agents: Type.Array(Agent) }, { additionalProperties: false });

export const AgentParams = Type.Object({ hostId: AgentHostId }, { additionalProperties: false });
export const AgentRevoked = Type.Object({ hostId: Type.String(), revoked: Type.Integer() }, { additionalProperties: false });
