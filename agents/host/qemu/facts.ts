// What the QEMU binary on this host is: its version, what the `pc` machine alias resolves to,
// and the features of the CPU model guests are given. Each is asked of QEMU itself once.
import { spawn } from 'node:child_process';

function capture(argv: string[], input?: string, timeoutMs = 15_000): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const c = spawn(argv[0]!, argv.slice(1), { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    const t = setTimeout(() => c.kill('SIGKILL'), timeoutMs);
    c.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
    c.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    c.on('error', (e) => { clearTimeout(t); reject(e); });
    c.on('close', (code) => { clearTimeout(t); resolve({ code, stdout, stderr }); });
    if (input !== undefined) c.stdin.end(input);
    else c.stdin.end();
  });
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
