// `--config FILE` for the service commands (docs/deploy.md#one-service-per-machine): the command
// reads its section of the deployment file, a flag given on the command line overrides it, and
// the command's own defaults fill the rest. The common parser (src/common/command.ts) fills
// defaults and checks required options before a command runs, which would hide whether a flag
// was given; so the wrapped command's options carry neither, and both are applied here, after
// the file.
import { formatCliError, type Command, type OptionSpec } from '../common/command.ts';
import { commonError } from '../common/errors.ts';
import { loadDeployment, type LoadedDeployment } from './schema.ts';

export type OptionValues = Record<string, string | boolean | string[] | undefined>;

/** Options with their defaults and "required" moved into the help text, and the function that
 *  applies them to values once every other source has been merged. */
export function deferDefaults(options: Record<string, OptionSpec>, requiredNote = 'required') {
  const deferred: Record<string, OptionSpec> = {};
  for (const [k, spec] of Object.entries(options)) {
    const { default: def, required, ...rest } = spec;
    const note = def !== undefined && def !== false ? ` (default: ${String(def)})` : required ? ` (${requiredNote})` : '';
    deferred[k] = { ...rest, help: rest.help + note };
  }
  return {
    options: deferred,
    /** Fill defaults; a required option still missing is VMTC_CONFIG_INVALID naming it. */
    finish(values: OptionValues, command: string): OptionValues {
      const out: OptionValues = { ...values };
      for (const [k, spec] of Object.entries(options)) {
        if (out[k] === undefined && spec.default !== undefined) out[k] = spec.default;
        if (spec.required && out[k] === undefined) {
          throw commonError('VMTC_CONFIG_INVALID', { field: k }, { message: `vmtc ${command}: --${k} is required` });
        }
      }
      return out;
    },
  };
}

/** Only the values actually given (the parser leaves absent options undefined). */
export function given(values: OptionValues): OptionValues {
  return Object.fromEntries(Object.entries(values).filter(([, v]) => v !== undefined));
}

export const CONFIG_OPTION: Record<string, OptionSpec> = {
  config: { type: 'string', arg: 'FILE', help: "deployment file (vmtc.json, written by vmtc init): this command's section gives the options; flags override it" },
};

/**
 * `base` with `--config FILE`: its section of the deployment, as flag values (strings, as on a
 * command line), under the flags given, over the defaults. A required option missing from all
 * of them is a usage error (exit 2), as the common parser would have made it.
 */
export function withDeploymentConfig(base: Command, section: (d: LoadedDeployment) => OptionValues): Command {
  const { options, finish } = deferDefaults(base.options, 'required, unless --config gives it');
  return {
    ...base,
    options: { ...options, ...CONFIG_OPTION },
    async run(values, positionals) {
      const { config, ...flags } = values;
      const fromFile = typeof config === 'string' ? given(section(loadDeployment(config))) : {};
      let merged: OptionValues;
      try {
        merged = finish({ ...fromFile, ...given(flags) }, base.name);
      } catch (e) {
        process.stderr.write(`${formatCliError(e)}\nsee 'vmtc ${base.name} --help'\n`);
        return 2;
      }
      return base.run(merged, positionals);
    },
  };
}

/** The controller's options from its section (and the AAA's and broker's URLs). */
export function controllerFlags(d: LoadedDeployment): OptionValues {
  const c = d.doc.controller;
  return {
    listen: c.listen,
    'agent-listen': c.agentListen,
    data: d.path(c.dataDir),
    aaa: d.doc.aaa.url,
    broker: d.doc.broker.url,
    'broker-ca': c.brokerCa !== undefined ? d.path(c.brokerCa) : undefined,
    'heartbeat-ms': c.heartbeatMs !== undefined ? String(c.heartbeatMs) : undefined,
    'tls-cert': c.tls ? d.path(c.tls.cert) : undefined,
    'tls-key': c.tls ? d.path(c.tls.key) : undefined,
    'log-level': c.logLevel,
  };
}

/** The AAA's options; its URL is the public URL clients' DPoP proofs name. */
export function aaaFlags(d: LoadedDeployment): OptionValues {
  const a = d.doc.aaa;
  return {
    listen: a.listen,
    data: d.path(a.dataDir),
    domain: d.doc.domain,
    policy: d.path(a.policy),
    'public-url': a.url,
    'token-lifetime': a.tokenLifetimeSec !== undefined ? String(a.tokenLifetimeSec) : undefined,
    'log-level': a.logLevel,
  };
}

/** The broker's options; its URL is the public URL holders' DPoP proofs name. */
export function brokerFlags(d: LoadedDeployment): OptionValues {
  const b = d.doc.broker;
  return {
    listen: b.listen,
    data: d.path(b.dataDir),
    domain: d.doc.domain,
    topology: d.path(b.topology),
    trust: d.path(b.trust),
    driver: b.driver,
    'public-url': b.url,
    'hold-timeout-s': b.holdTimeoutSec !== undefined ? String(b.holdTimeoutSec) : undefined,
  };
}

/** What an agent takes from the deployment: where to enrol, and the CA to expect there. */
export function agentFlags(d: LoadedDeployment): OptionValues {
  return { controller: d.doc.controller.url, 'ca-fingerprint': d.doc.controller.agentCaFingerprint };
}
