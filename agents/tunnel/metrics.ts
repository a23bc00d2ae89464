// The tunnel agent's Prometheus metrics (README "Metrics"), served on `--metrics-listen` when
// given: the sites the tunnel sends to, the switches it made, and its link to the controller.
// Read from the agent's state (the tunnel.state answer) when Prometheus scrapes.
import { Gauge, createRegistry, type Registry } from '../../src/common/metrics.ts';
import type { TunnelAgent } from './index.ts';

export function tunnelAgentRegistry(agent: Pick<TunnelAgent, 'state' | 'link'>): Registry {
  const registry = createRegistry('tunnel');
  const registers = [registry];
  new Gauge({
    name: 'vmtc_tunnel_sites', help: 'Sites the tunnel sends clients\' traffic to now.', registers,
    async collect() { this.set((await agent.state()).sites.length); },
  });
  new Gauge({
    name: 'vmtc_tunnel_vm_sites', help: 'Sites each VM is reached at now (2 while bicasting).', labelNames: ['vm'], registers,
    async collect() {
      const s = await agent.state();
      this.reset();
      for (const [vm, sites] of Object.entries(s.vmSites)) this.set({ vm }, sites.length);
    },
  });
  new Gauge({
    name: 'vmtc_tunnel_site_changes', help: "Site changes in the agent's history (tunnel.state), by operation (add, remove) and cause (bicast, prune, initial).", labelNames: ['op', 'cause'], registers,
    async collect() {
      const s = await agent.state();
      this.reset();
      for (const c of s.history) this.inc({ op: c.op, cause: c.cause });
    },
  });
  new Gauge({
    name: 'vmtc_agent_link_up', help: "1 while the agent's link to the controller is connected.", registers,
    collect() { this.set(agent.link.connected ? 1 : 0); },
  });
  return registry;
}
