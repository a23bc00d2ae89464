// The deployment file's check (src/deploy/schema.ts), the layering of --config under flags and
// over defaults (src/deploy/config-flags.ts), init's --ports parser, and the host agent's stored
// settings (agents/host/host-settings.ts). Pure but for a temp file or two.
import { describe, it, expect, afterEach } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VmtcError } from '../../src/common/errors.ts';
import type { Command } from '../../src/common/command.ts';
import { checkDeployment, fieldOf, loadDeployment, type Deployment } from '../../src/deploy/schema.ts';
import { controllerFlags, withDeploymentConfig } from '../../src/deploy/config-flags.ts';
import { parsePorts } from '../../src/deploy/init-command.ts';
import { mergeHostSettings, readHostSettings, settingsDiffer, writeHostSettings } from '../../agents/host/host-settings.ts';

const dirs: string[] = [];
afterEach(() => { for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true }); });
const temp = () => { const d = mkdtempSync(join(tmpdir(), 'vmtc-deploy-unit-')); dirs.push(d); return d; };

const FP = Array.from({ length: 32 }, () => 'AB').join(':');
function valid(): Deployment {
  return {
    version: 1, domain: 'a', sites: ['amsterdam', 'san-diego'],
    controller: { listen: '127.0.0.1:7700', agentListen: '127.0.0.1:7701', url: 'http://127.0.0.1:7700', dataDir: 'controller', agentCaFingerprint: FP },
    aaa: { listen: '127.0.0.1:7400', url: 'http://127.0.0.1:7400', dataDir: 'aaa', policy: 'aaa/policy.json' },
    broker: { listen: '127.0.0.1:7500', url: 'http://127.0.0.1:7500', dataDir: 'broker', topology: 'broker/topology.json', trust: 'broker/trust.json', driver: 'memory' },
  };
}

/** The code and the field of what `fn` throws. */
function refusal(fn: () => unknown): { code: string; field: unknown; reason: unknown } {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(VmtcError);
    const v = e as VmtcError;
    return { code: v.code, field: v.details?.field, reason: v.details?.reason };
  }
  throw new Error('expected a refusal');
}

describe('deployment file check', () => {
  it('accepts the file init writes', () => {
    expect(checkDeployment(valid())).toEqual(valid());
  });

  it('names the field of every kind of mistake with VMTC_CONFIG_INVALID', () => {
    const cases: [string, (d: any) => void, string][] = [
      ['unknown field', (d) => { d.aaa.polcy = 'x'; }, 'aaa.polcy'],
      ['missing field', (d) => { delete d.broker.trust; }, 'broker.trust'],
      ['missing section', (d) => { delete d.controller; }, 'controller'],
      ['wrong type in a list', (d) => { d.sites[1] = 7; }, 'sites[1]'],
      ['bad pattern', (d) => { d.domain = 'a b'; }, 'domain'],
      ['not HOST:PORT', (d) => { d.controller.listen = 'nope'; }, 'controller.listen'],
      ['port out of range', (d) => { d.broker.listen = '127.0.0.1:70000'; }, 'broker.listen'],
      ['site twice', (d) => { d.sites.push('amsterdam'); }, 'sites[2]'],
      ['https without tls', (d) => { d.controller.url = 'https://127.0.0.1:7700'; }, 'controller.tls'],
      ['tls without https', (d) => { d.controller.tls = { cert: 'c', key: 'k' }; }, 'controller.url'],
      ['wrong version', (d) => { d.version = 2; }, 'version'],
      ['bad fingerprint', (d) => { d.controller.agentCaFingerprint = 'AB'; }, 'controller.agentCaFingerprint'],
    ];
    for (const [what, edit, field] of cases) {
      const d = valid();
      edit(d);
      const r = refusal(() => checkDeployment(d));
      expect({ what, code: r.code, field: r.field }).toEqual({ what, code: 'VMTC_CONFIG_INVALID', field });
    }
  });

  it('reads a file, resolving relative paths against its directory, and refuses one that is not JSON', () => {
    const dir = temp();
    writeFileSync(join(dir, 'vmtc.json'), JSON.stringify(valid()));
    const d = loadDeployment(join(dir, 'vmtc.json'));
    expect(d.path(d.doc.aaa.policy)).toBe(join(dir, 'aaa', 'policy.json'));
    expect(d.path('/etc/x')).toBe('/etc/x');
    writeFileSync(join(dir, 'bad.json'), '{ "version": 1,');
    expect(refusal(() => loadDeployment(join(dir, 'bad.json')))).toMatchObject({ code: 'VMTC_CONFIG_INVALID', field: '(root)' });
    expect(refusal(() => loadDeployment(join(dir, 'absent.json')))).toMatchObject({ code: 'VMTC_CONFIG_INVALID', field: 'config' });
  });

  it('turns JSON pointers into field names', () => {
    expect(fieldOf('/controller/tls/cert')).toBe('controller.tls.cert');
    expect(fieldOf('/sites/2')).toBe('sites[2]');
    expect(fieldOf('')).toBe('');
  });
});

describe('--config under flags, over defaults', () => {
  /** A command that records the options its run() got. */
  function recorder() {
    const seen: Record<string, unknown>[] = [];
    const base: Command = {
      name: 'controller', summary: 's',
      options: {
        listen: { type: 'string', default: '127.0.0.1:7700', help: 'l' },
        data: { type: 'string', required: true, help: 'd' },
        aaa: { type: 'string', help: 'a' },
        'heartbeat-ms': { type: 'string', default: '5000', help: 'h' },
      },
      async run(o) { seen.push(o); return 0; },
    };
    return { seen, cmd: withDeploymentConfig(base, (d) => { const f = controllerFlags(d); return { listen: f.listen, data: f.data, aaa: f.aaa }; }) };
  }

  it('takes the section, lets a flag override it, and fills the defaults last', async () => {
    const dir = temp();
    const doc = valid();
    doc.controller.listen = '127.0.0.1:9700';
    writeFileSync(join(dir, 'vmtc.json'), JSON.stringify(doc));
    const { seen, cmd } = recorder();
    // The wrapped spec has no defaults left for the parser to fill before the file is read.
    expect(cmd.options.listen!.default).toBeUndefined();
    expect(cmd.options.listen!.help).toContain('default: 127.0.0.1:7700');
    expect(await cmd.run({ config: join(dir, 'vmtc.json') }, [])).toBe(0);
    expect(seen[0]).toEqual({ listen: '127.0.0.1:9700', data: join(dir, 'controller'), aaa: 'http://127.0.0.1:7400', 'heartbeat-ms': '5000' });
    await cmd.run({ config: join(dir, 'vmtc.json'), listen: '127.0.0.1:1234' }, []);
    expect(seen[1]!.listen).toBe('127.0.0.1:1234');
    await cmd.run({ data: '/d' }, []);
    expect(seen[2]).toEqual({ listen: '127.0.0.1:7700', data: '/d', 'heartbeat-ms': '5000' });
  });

  it('is a usage error (exit 2) when neither the file nor a flag gives a required option', async () => {
    const { seen, cmd } = recorder();
    const write = process.stderr.write;
    let err = '';
    process.stderr.write = ((s: string) => { err += s; return true; }) as typeof process.stderr.write;
    try {
      expect(await cmd.run({}, [])).toBe(2);
    } finally {
      process.stderr.write = write;
    }
    expect(err).toContain('VMTC_CONFIG_INVALID');
    expect(err).toContain('--data is required');
    expect(seen).toHaveLength(0);
  });
});

describe('vmtc init --ports', () => {
  it('parses NAME=PORT lists and names a bad entry', () => {
    expect(parsePorts('controller=1,aaa=65535')).toEqual({ controller: 1, aaa: 65535 });
    for (const bad of ['controller=0', 'ctl=7700', 'aaa=70000', 'broker']) {
      expect(refusal(() => parsePorts(bad))).toMatchObject({ code: 'VMTC_CONFIG_INVALID', field: 'ports' });
    }
  });
});

describe('host agent settings (DATA/host.json)', () => {
  it('keeps what was stored for the flags not given, and lets a given flag replace it', () => {
    const stored = { site: 'amsterdam', 'migration-address': '192.0.2.1', driver: 'double' };
    expect(mergeHostSettings(stored, {})).toEqual({ settings: stored, changes: [] });
    expect(mergeHostSettings(stored, { site: 'amsterdam', netns: 'ns1' })).toEqual({ settings: { ...stored, netns: 'ns1' }, changes: [] });
    expect(mergeHostSettings(stored, { site: 'san-diego' })).toEqual({
      settings: { ...stored, site: 'san-diego' }, changes: [{ setting: 'site', from: 'amsterdam', to: 'san-diego' }],
    });
    expect(mergeHostSettings(undefined, { driver: 'qemu' })).toEqual({ settings: { driver: 'qemu' }, changes: [] });
  });

  it('round-trips through the file and refuses a damaged one naming it', () => {
    const dir = temp();
    expect(readHostSettings(dir)).toBeUndefined();
    const s = { site: 'amsterdam', driver: 'double', 'double-config': '/x.json' };
    writeHostSettings(dir, s, '2030-01-01T00:00:00.000Z');
    expect(readHostSettings(dir)).toEqual(s);
    expect(settingsDiffer(s, { ...s })).toBe(false);
    expect(settingsDiffer(s, { ...s, site: 'b' })).toBe(true);
    expect(settingsDiffer(undefined, s)).toBe(true);
    writeFileSync(join(dir, 'host.json'), JSON.stringify({ settings: { sight: 'x' } }));
    expect(refusal(() => readHostSettings(dir))).toMatchObject({ code: 'VMTC_CONFIG_INVALID', field: 'settings.sight' });
    writeFileSync(join(dir, 'host.json'), 'garbage');
    expect(refusal(() => readHostSettings(dir))).toMatchObject({ code: 'VMTC_CONFIG_INVALID', field: 'data' });
  });
});
