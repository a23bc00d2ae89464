// The host agent's Prometheus metrics (README "Metrics"), served on `--metrics-listen` when
// given: its VMs by state, the migrations it takes part in, and its link to the controller.
// Read from the driver when Prometheus scrapes.
import { Gauge, createRegistry, type Registry } from '../../src/common/metrics.ts';
import type { HypervisorDriver } from './driver.ts';

/** VM states in which a migration is under way on this host (source or destination side). */
const MIGRATING = { migrating: 'source', incoming: 'destination' } as const;

export function hostAgentRegistry(driver: Pick<HypervisorDriver, 'list'>, link: { readonly connected: boolean }): Registry {
  const registry = createRegistry('agent');
  const registers = [registry];
  new Gauge({
    name: 'vmtc_agent_vms', help: "VMs on this host, by the hypervisor driver's state.", labelNames: ['state'], registers,
    async collect() {
      const vms = await driver.list();
      this.reset();
      for (const state of ['running', 'paused', 'migrating', 'postmigrate', 'incoming', 'stopped', 'crashed']) this.set({ state }, 0);
      for (const v of vms) this.inc({ state: v.state });
    },
  });
  new Gauge({
    name: 'vmtc_agent_migrations_in_progress', help: 'Migrations this host takes part in now, by role (source, destination).', labelNames: ['role'], registers,
    async collect() {
      const vms = await driver.list();
      this.reset();
      for (const role of Object.values(MIGRATING)) this.set({ role }, 0);
      for (const v of vms) if (v.state in MIGRATING) this.inc({ role: MIGRATING[v.state as keyof typeof MIGRATING] });
    },
  });
  new Gauge({
    name: 'vmtc_agent_link_up', help: "1 while the agent's link to the controller is connected.", registers,
    collect() { this.set(link.connected ? 1 : 0); },
  });
  return registry;
}
