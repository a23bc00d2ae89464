// Network element drivers by name, as `vmtc broker --driver NAME` and BrokerOptions.driver name
// them. The broker ships two: `memory` (the test double) and `linux` (plain VXLAN + htb between
// hosts' underlay addresses). Anything else is handed in from outside by whoever composes the
// process: the `vmtc` entry point (bin/main.ts) registers the lab's lightpath driver, which lives
// in lab/ because the broker must not depend on the lab.
import { commonError } from '../../common/errors.ts';
import type { Logger } from '../../common/log.ts';
import type { NetworkElementDriver } from '../driver.ts';

/** What a factory is given when the broker starts. */
export interface DriverContext {
  logger: Logger;
}

/** Builds a driver; loaded lazily, so a driver's dependencies are loaded only when it is chosen. */
export type NetworkDriverFactory = (ctx: DriverContext) => NetworkElementDriver | Promise<NetworkElementDriver>;

interface Entry {
  factory: NetworkDriverFactory;
  summary: string;
}

const DRIVERS = new Map<string, Entry>();

const NAME = /^[a-z][a-z0-9-]{0,31}$/;

/** Make `name` selectable; registering a name again replaces its factory. */
export function registerNetworkDriver(name: string, factory: NetworkDriverFactory, summary = ''): void {
  if (!NAME.test(name)) throw new Error(`network driver name '${name}' must be lower-case letters, digits and dashes`);
  DRIVERS.set(name, { factory, summary });
}

/** The registered names, in registration order. */
export function networkDriverNames(): string[] {
  return [...DRIVERS.keys()];
}

/** The drivers for --help: "name (summary), …". */
export function describeNetworkDrivers(): string {
  return [...DRIVERS].map(([k, v]) => (v.summary ? `${k} (${v.summary})` : k)).join(', ');
}

/** Build the driver registered as `name`; an unknown name is VMTC_CONFIG_INVALID listing the known. */
export async function createNetworkDriver(name: string, ctx: DriverContext): Promise<NetworkElementDriver> {
  const entry = DRIVERS.get(name);
  if (!entry) {
    throw commonError('VMTC_CONFIG_INVALID', { field: 'driver', value: name, known: networkDriverNames() }, {
      message: `unknown network driver '${name}' (known: ${networkDriverNames().join(', ')})`,
    });
  }
  return entry.factory(ctx);
}

// The broker's own drivers. The Linux driver is imported only when chosen: it needs root and
// iproute2, which the test double never does.
registerNetworkDriver('memory', () => import('./memory-double.ts').then((m) => new m.MemoryDoubleDriver()), 'test double, touches no network');
registerNetworkDriver('linux', ({ logger }) => import('./linux.ts').then((m) => new m.LinuxVxlanDriver({ log: logger })), 'VXLAN + htb between hosts, needs root');
