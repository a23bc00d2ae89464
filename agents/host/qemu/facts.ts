// What the QEMU binary on this host is: its version, what the `pc` machine alias resolves to,
// and the features of the CPU model guests are given. Each is asked of QEMU itself once.
import { readFile } from 'node:fs/promises';
import { run } from '../../../src/common/proc.ts';

function capture(argv: string[], input?: string): Promise<{ stdout: string }> {
  return run(argv, { timeoutMs: 15_000, ...(input !== undefined ? { input } : {}) });
}

export async function qemuVersion(binary: string): Promise<string> {
  const { stdout } = await capture([binary, '--version']);
  return /version\s+(\S+)/.exec(stdout)?.[1] ?? stdout.split('\n')[0]!.trim();
}

/** `pc` → e.g. `pc-i440fx-7.2`: a versioned type keeps the device model stable across upgrades. */
export async function resolveMachine(binary: string, alias: string): Promise<string> {
  const { stdout } = await capture([binary, '-machine', 'help']);
  for (const line of stdout.split('\n')) {
    const m = /^(\S+)\s+.*\(alias of (\S+)\)/.exec(line);
    if (m && m[1] === alias) return m[2]!;
  }
  return alias;
}

/** Features of a CPU model as QEMU expands it (query-cpu-model-expansion over QMP on stdio). */
export async function cpuModelFeatures(binary: string, accel: string, model: string): Promise<string[]> {
  const input = [
    { execute: 'qmp_capabilities' },
    { execute: 'query-cpu-model-expansion', arguments: { type: 'full', model: { name: model } } },
    { execute: 'quit' },
  ].map((m) => JSON.stringify(m)).join('\n') + '\n';
  const { stdout } = await capture([binary, '-machine', 'none', '-accel', accel, '-nodefaults', '-no-user-config', '-display', 'none', '-qmp', 'stdio'], input);
  for (const line of stdout.split('\n')) {
    if (!line.includes('"model"')) continue;
    const msg = JSON.parse(line) as { return?: { model?: { props?: Record<string, unknown> } } };
    const props = msg.return?.model?.props;
    if (props) return Object.keys(props).filter((k) => props[k] === true).sort();
  }
  return [];
}

/** The host CPU's flags (/proc/cpuinfo): what facts() reports when QEMU cannot expand its model. */
export async function hostCpuFlags(): Promise<string[]> {
  const info = await readFile('/proc/cpuinfo', 'utf8').catch(() => '');
  return (/^flags\s*:\s*(.*)$/m.exec(info)?.[1] ?? '').split(/\s+/).filter(Boolean).sort();
}
