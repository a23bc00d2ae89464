// Entry point of the `vmtc` binary: `vmtc <command> [options]`, `vmtc --help`, `vmtc <command> --help`
// (or `vmtc help <command>`), `vmtc --version`.
// This is the composition root: the one place that knows every service, agent and lab tool, and
// plugs the lab's parts into the services (the lab's lightpath driver into the broker), so that
// src/ never imports agents/ or lab/ (test/unit/layers.test.ts checks it).
import { helpText, parseCommandArgs, formatCliError, type Command } from '../src/common/command.ts';
import type { CompletionEntry } from '../src/cli/completion.ts';

/** Hand the broker the lab's lightpath driver; the driver module loads only when chosen. */
async function loadBroker(): Promise<Command> {
  const { registerNetworkDriver } = await import('../src/broker/drivers/registry.ts');
  registerNetworkDriver('lab-lightpath', async ({ logger }) => {
    const { LabLightpathDriver } = await import('../lab/lightpath-driver.ts');
    return new LabLightpathDriver({ log: logger });
  }, "the lab's lightpath through the delay line, needs root and a lab");
  return (await import('../src/broker/command.ts')).command;
}

// Each command module is loaded only when used, so `vmtc --help` stays fast and a service's
// dependencies are not loaded by another's process.
const COMMANDS: Record<string, { summary: string; load: () => Promise<Command> }> = {
  controller: { summary: 'run the VM Traffic Controller (REST API, migrations, agent hub)', load: async () => (await import('../src/controller/command.ts')).command },
  agent: { summary: 'run a host agent on a hypervisor host', load: async () => (await import('../agents/host/command.ts')).command },
  tunnel: { summary: 'run a tunnel agent where clients enter: keeps IP tunnels pointed at the VM\'s site, make-before-break', load: async () => (await import('../agents/tunnel/command.ts')).command },
  aaa: { summary: 'run an AAA service: policy, capability tokens, peering, accounting', load: async () => (await import('../src/aaa/command.ts')).command },
  broker: { summary: 'run a lightpath broker: topology, calendar, NSI-style reservations', load: loadBroker },
  lab: { summary: 'build, inspect or remove the lab (namespaces, delay line, guest image): up|down|status', load: async () => (await import('../lab/command.ts')).command },
  turntable: { summary: "the lab's main job: move a VM back and forth over the emulated lightpath, measure downtime every way, write a report", load: async () => (await import('../lab/turntable/command.ts')).command },
  migrate: { summary: 'move a VM to another host through the controller and follow it to its end', load: async () => (await import('../src/cli/client/commands.ts')).migrate },
  status: { summary: 'show one migration in detail, or list migrations', load: async () => (await import('../src/cli/client/commands.ts')).status },
  cancel: { summary: 'ask the controller to cancel a migration', load: async () => (await import('../src/cli/client/commands.ts')).cancel },
  hosts: { summary: 'list hypervisor hosts and their capacity, or show one host', load: async () => (await import('../src/cli/client/commands.ts')).hosts },
  vms: { summary: 'list VMs where the host agents report them', load: async () => (await import('../src/cli/client/commands.ts')).vms },
  watch: { summary: 'follow one migration to its end over the event stream (Ctrl-C stops following; it goes on)', load: async () => (await import('../src/cli/client/commands.ts')).watch },
  'force-complete': { summary: 'make a migration that does not converge finish now (post-copy, or pause the VM)', load: async () => (await import('../src/cli/client/commands.ts')).forceComplete },
  tune: { summary: "change a running migration's bandwidth or largest acceptable downtime", load: async () => (await import('../src/cli/client/commands.ts')).tune },
  plan: { summary: 'show what hotspot mitigation or consolidation would move now (dry run), or run it: vmtc plan hotspots|consolidate [--run]', load: async () => (await import('../src/cli/client/plan.ts')).plan },
  evacuate: { summary: 'drain a host or a site: maintenance, a planned destination for every VM, moves under limits: vmtc evacuate HOST|--site SITE [--to SITE…]', load: async () => (await import('../src/cli/client/evacuate.ts')).evacuate },
  evacuation: { summary: 'list evacuations, show one with its moves, or cancel one: vmtc evacuation list|show ID|cancel ID', load: async () => (await import('../src/cli/client/evacuate.ts')).evacuation },
  replicate: { summary: "keep a copy of a VM's disks warm at another host, or remove one: vmtc replicate VM --to HOST [--interval 60s] | --remove REPLICA_ID", load: async () => (await import('../src/cli/client/replicas.ts')).replicate },
  replicas: { summary: "a VM's replicas with their state and lag: vmtc replicas VM", load: async () => (await import('../src/cli/client/replicas.ts')).replicas },
  completion: { summary: 'print a shell completion script: vmtc completion bash|zsh', load: async () => (await import('../src/cli/completion.ts')).completionCommand(completionEntries) },
  version: { summary: 'print the version of vmtc', load: async () => (await import('../src/cli/version.ts')).version },
  init: { summary: "write a domain's whole configuration (vmtc.json, keys, trust, AAA policy, topology) wired together", load: async () => (await import('../src/deploy/init-command.ts')).init },
  up: { summary: "start a domain's AAA, broker and controller on this machine from its deployment file", load: async () => (await import('../src/deploy/up.ts')).up },
  'enroll-token': { summary: 'mint a one-time enrolment token for a host or tunnel agent', load: async () => (await import('../src/deploy/enroll-token.ts')).enrollToken },
};

export function register(name: string, summary: string, load: () => Promise<Command>): void {
  COMMANDS[name] = { summary, load };
}

/** Every command with its spec, for the completion scripts (src/cli/completion.ts); `help` is
 *  main()'s own and takes a command name. */
async function completionEntries(): Promise<CompletionEntry[]> {
  const entries: CompletionEntry[] = [];
  for (const [name, e] of Object.entries(COMMANDS)) entries.push({ name, summary: e.summary, command: await e.load() });
  entries.push({ name: 'help', summary: "show a command's options", command: { name: 'help', summary: "show a command's options", options: {}, positionals: '[COMMAND]', run: async () => 0 } });
  return entries;
}

function usage(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((k) => k.length)) + 2;
  return [
    'vmtc — the VM Traffic Controller',
    '',
    'usage: vmtc <command> [options]     (vmtc help <command>, or vmtc <command> --help, for its options)',
    '',
    'commands:',
    ...Object.entries(COMMANDS).map(([k, v]) => `  ${k.padEnd(width)}${v.summary}`),
  ].join('\n');
}

export async function main(argv: string[]): Promise<number> {
  // `vmtc help COMMAND` is `vmtc COMMAND --help`; `vmtc --version` is `vmtc version`.
  if (argv[0] === 'help' && argv.length > 1) argv = [argv[1]!, '--help'];
  if (argv[0] === '--version' || argv[0] === '-V') argv = ['version', ...argv.slice(1)];
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(usage() + '\n');
    return name ? 0 : 2;
  }
  const entry = COMMANDS[name];
  if (!entry) {
    process.stderr.write(`vmtc: unknown command '${name}'\n\n${usage()}\n`);
    return 2;
  }
  try {
    const cmd = await entry.load();
    let parsed: ReturnType<typeof parseCommandArgs>;
    try {
      parsed = parseCommandArgs(cmd, rest);
    } catch (e) {
      // A usage error (unknown option, missing value or required option): exit 2, as --help says.
      process.stderr.write(`${formatCliError(e)}\nsee 'vmtc ${name} --help'\n`);
      return 2;
    }
    if (parsed.help) {
      process.stdout.write(helpText(cmd) + '\n');
      return 0;
    }
    return await cmd.run(parsed.values, parsed.positionals);
  } catch (e) {
    process.stderr.write(formatCliError(e) + '\n');
    return 1;
  }
}
